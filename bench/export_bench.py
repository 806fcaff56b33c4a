"""Inference latency of the deployment paths: Keras, the TF Serving SavedModel and onnxruntime, folded or not.

    python -m bench.export_bench [--archs=cost_a_r50,cost_b_r50] [--batch_sizes=1,8] [--runs=3,2] [--out=PATH]

For each arch at 8 x 224^2 (random weights: speed does not depend on them) six runners are built from one
model: Keras (`predict_on_batch`), the SavedModel `logits` signature run in a TF1 session as TF Serving does,
and onnxruntime (CPU), each unfolded and folded (CoST(a) -> Conv3D, BatchNorm -> conv; export.parity), as
the exporters produce them (CoST(a) folded as the merged 3x3x3 kernel for TF, as its 19 taps for ONNX).
Per arch and batch size every runner is called once to warm up, then --runs rounds call each runner once
(so load drift hits all alike); the median is reported (of 2 rounds: their mean), as wall-clock latency and
as this process's CPU time (steadier on a shared machine). Prints markdown tables with the ratios
onnxruntime / SavedModel and folded / unfolded, and writes them to --out.
"""

import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402
import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from cost_tf.resnet import build_model  # noqa: E402
from export import onnx as onnx_export  # noqa: E402
from export import parity  # noqa: E402
from export import saved_model  # noqa: E402

_ARCHS = flags.DEFINE_list("archs", ["cost_a_r50", "cost_b_r50"], "Archs to time.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to time.")
_RUNS = flags.DEFINE_list("runs", ["3", "2"], "Timed rounds per batch size, in --batch_sizes order, after one "
                         "warm-up call per runner (median reported). Batch 8 at R50 is ~10 s a call on 2 cores.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 8, "Clip length.")
_SIZE = flags.DEFINE_integer("size", 224, "Crop side.")
_OUT = flags.DEFINE_string("out", None, "Also write the markdown table here.")

RUNTIMES = ("Keras", "SavedModel", "onnxruntime")
FORMS = ("unfolded", "folded")


class _SessionRunner:
    """The `logits` signature of a SavedModel in a TF1 session, loaded once (TF Serving's path)."""

    def __init__(self, path):
        self.graph = tf.Graph()
        with self.graph.as_default():
            self.session = tf.compat.v1.Session()
            meta_graph = tf.compat.v1.saved_model.loader.load(self.session, [tf.saved_model.SERVING], path)
        sig = meta_graph.signature_def[saved_model.LOGITS_KEY]
        self.feed, self.fetch = sig.inputs["clip"].name, sig.outputs["logits"].name

    def __call__(self, clip):
        return self.session.run(self.fetch, {self.feed: clip})

    def close(self):
        self.session.close()


def _ort_runner(path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    # Idle intra-op threads sleep instead of spinning: on a shared machine spinning only burns CPU that the
    # other runners (and the CPU-time column) would be charged for.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    return lambda clip: session.run([onnx_export.OUTPUT_NAME], {onnx_export.INPUT_NAME: clip})[0]


def build_runners(arch, workdir, num_frames, size, log):
    """{(runtime, form): callable clip -> logits} for one arch, plus setup seconds per step."""
    model = build_model(arch, num_classes=400, num_frames=num_frames, input_size=size)
    runners, setup = {}, {}
    for form in FORMS:
        fold = form == "folded"
        keras_model = parity.fold_for_inference(model) if fold else model
        runners[("Keras", form)] = lambda clip, m=keras_model: m.predict_on_batch(clip)
        start = time.perf_counter()
        version, _ = saved_model.export(model, os.path.join(workdir, f"{arch}_{form}"), fold=fold, validate=False)
        setup[f"SavedModel {form}"] = time.perf_counter() - start
        runners[("SavedModel", form)] = _SessionRunner(version)
        start = time.perf_counter()
        output = os.path.join(workdir, f"{arch}_{form}.onnx")
        # From Keras, as `python -m export.onnx` does (its own fold form: onnx_export.FOLD_FORM).
        report = onnx_export.export(model, output, fold=fold, timeout=900)
        setup[f"ONNX {form}"] = time.perf_counter() - start
        log(f"{arch} {form}: onnxruntime vs Keras max relative error {report['max_relative_error']:.1e}")
        runners[("onnxruntime", form)] = _ort_runner(output)
    return runners, setup


def time_runners(runners, clip, runs):
    """{key: (median wall s, median CPU s)} per call: one warm-up call each, then `runs` interleaved rounds.

    CPU time is this process's (all threads): on a machine shared with other jobs it varies far less than
    wall time, which grows with the load.
    """
    for run in runners.values():
        run(clip)
    wall, cpu = {key: [] for key in runners}, {key: [] for key in runners}
    for _ in range(runs):
        for key, run in runners.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            run(clip)
            wall[key].append(time.perf_counter() - start)
            cpu[key].append(time.process_time() - start_cpu)
    return {key: (statistics.median(wall[key]), statistics.median(cpu[key])) for key in runners}


def _table(results, column, title):
    lines = [
        f"**{title}**",
        "",
        "| arch | batch | Keras unfolded | Keras folded | SavedModel unfolded | SavedModel folded | onnxruntime "
        "unfolded | onnxruntime folded | ORT / SavedModel (folded) | folded / unfolded (SavedModel) | "
        "folded / unfolded (ORT) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (arch, batch), measured in results.items():
        ms = {key: value[column] * 1000 for key, value in measured.items()}
        cells = [f"{ms[(r, f)]:.0f}" for r in RUNTIMES for f in FORMS]
        ratios = (
            ms[("onnxruntime", "folded")] / ms[("SavedModel", "folded")],
            ms[("SavedModel", "folded")] / ms[("SavedModel", "unfolded")],
            ms[("onnxruntime", "folded")] / ms[("onnxruntime", "unfolded")],
        )
        lines.append(f"| {arch} | {batch} | " + " | ".join(cells) + " | " + " | ".join(f"{r:.2f}" for r in ratios)
                     + " |")
    return lines


def markdown(results, runs, load):
    """Two tables (wall-clock latency, process CPU time) in ms per call, with the target ratios."""
    rounds = ", ".join(f"{n} at batch {b}" for b, n in runs.items())
    lines = [
        f"Median of interleaved rounds ({rounds}) after 1 warm-up call; {os.cpu_count()} CPU cores, load "
        f"average before/after {load[0]:.1f}/{load[1]:.1f}; TF {tf.__version__}, Keras {keras.__version__}.",
        "",
    ]
    lines += _table(results, 0, "Latency, ms per call (wall clock)")
    lines += [""] + _table(results, 1, "CPU time, ms per call (all threads of the process)")
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # the exporters' INFO lines (assets written, ...) are noise here
    tf.get_logger().setLevel("ERROR")

    def log(message):
        print(message, file=sys.stderr, flush=True)

    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
    if len(_RUNS.value) != len(batch_sizes):
        sys.exit(f"export_bench: --runs needs one count per batch size ({len(batch_sizes)}). "
                 f"Received: --runs={','.join(_RUNS.value)}")
    runs = dict(zip(batch_sizes, (int(r) for r in _RUNS.value)))
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    results = {}
    with tempfile.TemporaryDirectory(prefix="export-bench-") as workdir:
        for arch in _ARCHS.value:
            runners, setup = build_runners(arch, workdir, _NUM_FRAMES.value, _SIZE.value, log)
            log(f"{arch} setup seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in setup.items()))
            for batch in batch_sizes:
                clip = parity.random_clip(batch, _NUM_FRAMES.value, _SIZE.value)
                start = time.perf_counter()
                results[(arch, batch)] = time_runners(runners, clip, runs[batch])
                log(f"{arch} batch {batch}: timed in {time.perf_counter() - start:.0f} s")
            for run in runners.values():
                if isinstance(run, _SessionRunner):
                    run.close()
            del runners
    table = markdown(results, runs, (load_before, os.getloadavg()[0]))
    table += f"\n\nWhole bench (exports included): {time.perf_counter() - started:.0f} s."
    print(table)
    if _OUT.value:
        tmp = f"{_OUT.value}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(table + "\n")
        os.replace(tmp, _OUT.value)


if __name__ == "__main__":
    app.run(main)
