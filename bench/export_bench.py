"""Inference latency of the deployment paths: Keras, the TF Serving SavedModel and onnxruntime, folded or not.

    python -m bench.export_bench [--archs=cost_a_r50,cost_b_r50] [--batch_sizes=1,8] [--runs=3,2] [--out=PATH]
    python -m bench.export_bench --mode=memory [--archs=...] [--formats=onnx,saved_model] [--max_rss_gb=7.5]
    python -m bench.export_bench --mode=tflite [--archs=c2d_r50,...] [--quantize=none,float16,dynamic] [--runs=5]

--mode=memory: each export runs as its own `python -m export.onnx|export.saved_model` process on a
.keras file written beforehand (by another process); the summed RSS of that process and all its children
(tf2onnx's steps) is sampled from /proc every 0.1 s. Reported: the peak of that sum (the target's measure),
each process's RSS at that moment (RssAnon + RssFile: file pages are mostly TF's shared libraries, mapped by
every process of the tree), the largest single process's peak, the peak of the summed PSS (smaps_rollup: a
page shared by k processes counts 1/k, so TF's library pages count once; an extra figure, smaller than the
summed RSS), the wall time. An export whose tree passes --max_rss_gb is killed (the machine is shared).

--mode=tflite: `python -m export.tflite` for each arch and --quantize (its own process; peak RSS as above),
then the stock tf.lite.Interpreter (XNNPACK, all cores) on the float32 clip signature at batch 1: one warm-up
call, then --runs[0] interleaved rounds (median), with the file size and the error vs Keras.

Default mode (serving):

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
import subprocess
import sys
import tempfile
import time

import keras
import tensorflow as tf
from absl import app, flags, logging

from bench import timing
from cost_tf.resnet import build_model
from export import onnx as onnx_export
from export import parity, saved_model, tflite
from pipelines import files, mains

_ARCHS = flags.DEFINE_list("archs", ["cost_a_r50", "cost_b_r50"], "Archs to time.")
_BATCH_SIZES = flags.DEFINE_list("batch_sizes", ["1", "8"], "Batch sizes to time.")
_RUNS = flags.DEFINE_list(
    "runs",
    ["3", "2"],
    "Timed rounds per batch size, in --batch_sizes order, after one "
    "warm-up call per runner (median reported). Batch 8 at R50 is ~10 s a call on 2 cores.",
)
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 8, "Clip length.")
_SIZE = flags.DEFINE_integer("size", 224, "Crop side.")
_OUT = flags.DEFINE_string("out", None, "Also write the markdown table here.")
_MODE = flags.DEFINE_enum("mode", "serving", ["serving", "memory", "tflite"], "What to measure (see above).")
_FORMATS = flags.DEFINE_list("formats", ["onnx", "saved_model"], "--mode=memory: the exporters to run.")
_MAX_RSS_GB = flags.DEFINE_float(
    "max_rss_gb", 7.5, "--mode=memory: kill an export whose process tree passes this."
)
_QUANTIZE = flags.DEFINE_list("quantize", ["none", "float16", "dynamic"], "--mode=tflite: variants to time.")

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
        version, _ = saved_model.export(
            model, os.path.join(workdir, f"{arch}_{form}"), fold=fold, validate=False
        )
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
    times = timing.interleaved({key: lambda run=run: run(clip) for key, run in runners.items()}, runs)
    return {key: (statistics.median(t["wall"]), statistics.median(t["cpu"])) for key, t in times.items()}


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
        lines.append(
            f"| {arch} | {batch} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(f"{r:.2f}" for r in ratios)
            + " |"
        )
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


def _children():
    """{pid: parent pid} of every process, from /proc."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parents[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    return parents


def _process_memory(pid):
    """{"rss", "anon", "file", "pss"} bytes of one process (0 where it is gone): VmRSS, RssAnon and
    RssFile + RssShmem from /proc/PID/status; Pss from /proc/PID/smaps_rollup (each shared page divided by
    the number of processes mapping it, so TF's shared library pages count once over the tree)."""
    out = {"rss": 0, "anon": 0, "file": 0, "pss": 0}
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssFile:": "file", "RssShmem:": "file"}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key = keys.get(line.split(":", 1)[0] + ":")
                if key:
                    out[key] += int(line.split()[1]) * 1024
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    out["pss"] = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    return out


def _process_name(pid):
    """The Python module a process runs (`-m NAME`), else its program name."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().decode(errors="replace").split("\0")
    except OSError:
        return "?"
    if "-m" in argv[:-1]:
        return argv[argv.index("-m") + 1]
    return os.path.basename(argv[0]) if argv and argv[0] else "?"


def tree_memory(root):
    """{pid: _process_memory(pid)} of `root` and all its descendants now."""
    parents = _children()
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        kids = [child for child, parent in parents.items() if parent == pid and child not in tree]
        tree.update(kids)
        frontier.extend(kids)
    return {pid: _process_memory(pid) for pid in tree}


def measure_peak_rss(command, limit_bytes, interval=0.1, env=None):
    """Runs `command`, sampling its process tree every `interval` s; kills the tree (returncode "killed")
    once the summed RSS passes `limit_bytes`.

    Returns a dict: "code", "peak" (the largest summed RSS of the tree), "peak_one" (the largest single
    process's RSS), "at_peak" ([(process name, RSS, RssAnon, RssFile)] when the sum peaked), "peak_pss"
    (the largest summed PSS), "wall" (s), "tail" (the last output lines).
    """
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
    )
    result = {"peak": 0, "peak_one": 0, "at_peak": [], "peak_pss": 0}
    import threading

    lines = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    reader.start()
    code = None
    while code is None:
        sizes = tree_memory(process.pid)
        total = sum(m["rss"] for m in sizes.values())
        result["peak_pss"] = max(result["peak_pss"], sum(m["pss"] for m in sizes.values()))
        result["peak_one"] = max([result["peak_one"]] + [m["rss"] for m in sizes.values()])
        if total > result["peak"]:
            result["peak"] = total
            result["at_peak"] = [
                (_process_name(pid), m["rss"], m["anon"], m["file"])
                for pid, m in sorted(sizes.items())
                if m["rss"]
            ]
        if total > limit_bytes:
            os.killpg(process.pid, 9)
            process.wait()
            code = "killed"
            break
        time.sleep(interval)
        code = process.poll()
    reader.join(timeout=5)
    result.update(code=code, wall=time.perf_counter() - start, tail="".join(lines[-5:]))
    return result


def memory_markdown(archs, formats, num_frames, size, limit_gb, log):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    lines = [
        f"Peak RSS of one export (the exporter's process tree, sampled every 0.1 s); {timing.cpu_model()}, "
        f"{os.cpu_count()} cores, TF {tf.__version__}; T={num_frames}, crop {size}, untrained weights.",
        "",
        "Peak RSS, tree: the target's measure (each process's VmRSS, summed). At that peak, per process: RSS "
        "(RssAnon + RssFile). Peak PSS, tree: smaps_rollup Pss summed, which counts the TF library pages both "
        "processes map once; an extra figure, not the target's measure.",
        "",
        "| arch | export | peak RSS, tree (GB) | at the peak: process RSS (anon + file), GB | largest process "
        "(GB) | peak PSS, tree (GB) | wall (s) | load before | result |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory(prefix="export-memory-") as workdir:
        for arch in archs:
            model_path = os.path.join(workdir, f"{arch}.keras")
            # Built and saved by another process, so this one stays small and only the export is measured.
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from cost_tf.resnet import build_model; "
                    "build_model(sys.argv[1], num_frames=int(sys.argv[2]), input_size=int(sys.argv[3]))"
                    ".save(sys.argv[4])",
                    arch,
                    str(num_frames),
                    str(size),
                    model_path,
                ],
                check=True,
                env=env,
            )
            for fmt in formats:
                if fmt == "onnx":
                    command = [
                        sys.executable,
                        "-m",
                        "export.onnx",
                        f"--model={model_path}",
                        f"--output={os.path.join(workdir, arch + '.onnx')}",
                    ]
                else:
                    command = [
                        sys.executable,
                        "-m",
                        "export.saved_model",
                        f"--model={model_path}",
                        f"--export_dir={os.path.join(workdir, arch + '_serving')}",
                    ]
                load = os.getloadavg()[0]  # the machine may be shared: each row says how busy it was
                m = measure_peak_rss(command, limit_gb * 2**30, env=env)
                code = m["code"]
                result = (
                    "ok"
                    if code == 0
                    else (f"killed over {limit_gb} GB" if code == "killed" else f"exit {code}")
                )
                gb = 2**30
                at_peak = "; ".join(
                    f"{name} {rss / gb:.2f} ({anon / gb:.2f} + {file / gb:.2f})"
                    for name, rss, anon, file in m["at_peak"]
                )
                log(
                    f"{arch} {fmt}: peak {m['peak'] / gb:.2f} GB ({result}; {at_peak}; PSS "
                    f"{m['peak_pss'] / gb:.2f}) in {m['wall']:.0f} s\n{m['tail'] if code else ''}"
                )
                lines.append(
                    f"| {arch} | {fmt} | {m['peak'] / gb:.2f} | {at_peak} | {m['peak_one'] / gb:.2f} | "
                    f"{m['peak_pss'] / gb:.2f} | {m['wall']:.0f} | {load:.1f} | {result} |"
                )
    return "\n".join(lines)


# --- --mode=tflite -----------------------------------------------------------------------------------


def tflite_markdown(archs, quantize, num_frames, size, runs, limit_gb, log):
    """Each export as its own `python -m export.tflite` process (peak RSS measured as in --mode=memory), then
    every file timed in this process with the stock interpreter, interleaved."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    lines = [
        f"TFLite (`export.tflite`): each export its own process (peak RSS of its tree); then the stock "
        f"tf.lite.Interpreter with XNNPACK on {os.cpu_count()} threads, clip signature, batch 1, T={num_frames}, "
        f"crop {size}, untrained weights; median of {runs} interleaved rounds after 1 warm-up call; "
        f"{timing.cpu_model()}; TF {tf.__version__}.",
        "",
        "| arch | quantize | size (MiB) | latency (ms, wall) | CPU (ms) | max rel. error vs Keras | export (s) | "
        "export peak RSS (GB) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    clip = parity.random_clip(1, num_frames, size)
    rows, runners = {}, {}
    with tempfile.TemporaryDirectory(prefix="tflite-bench-") as workdir:
        for arch in archs:
            model_path = os.path.join(workdir, f"{arch}.keras")
            subprocess.run(
                [
                    sys.executable,
                    "-c",
                    "import sys; from cost_tf.resnet import build_model; "
                    "build_model(sys.argv[1], num_frames=int(sys.argv[2]), input_size=int(sys.argv[3]))"
                    ".save(sys.argv[4])",
                    arch,
                    str(num_frames),
                    str(size),
                    model_path,
                ],
                check=True,
                env=env,
            )
            for q in quantize:
                output = os.path.join(workdir, f"{arch}_{q}.tflite")
                command = [
                    sys.executable,
                    "-m",
                    "export.tflite",
                    f"--model={model_path}",
                    f"--output={output}",
                    f"--quantize={q}",
                ]
                m = measure_peak_rss(command, limit_gb * 2**30, env=env)
                code, peak, wall, tail = m["code"], m["peak"], m["wall"], m["tail"]
                error = tail.split("max relative error ")[-1].split(" ")[0] if code == 0 else "-"
                log(
                    f"{arch} {q}: exit {code}, peak {peak / 2**30:.2f} GB, {wall:.0f} s, error {error}\n"
                    f"{tail if code else ''}"
                )
                rows[(arch, q)] = (code, peak, wall, error, os.path.getsize(output) if code == 0 else 0)
                if code == 0:
                    interpreter = tf.lite.Interpreter(model_path=output, num_threads=os.cpu_count())
                    runners[(arch, q)] = lambda c, i=interpreter: tflite.run_signature(i, c)
        measured = time_runners(runners, clip, runs)
    for (arch, q), (code, peak, wall, error, size_bytes) in rows.items():
        timed = measured.get((arch, q))
        cells = (
            [f"{size_bytes / 2**20:.1f}", f"{timed[0] * 1000:.0f}", f"{timed[1] * 1000:.0f}"]
            if timed
            else ["-", "-", "-"]
        )
        status = "" if code == 0 else f" ({'killed' if code == 'killed' else 'exit ' + str(code)})"
        lines.append(
            f"| {arch} | {q} | "
            + " | ".join(cells)
            + f" | {error} | {wall:.0f}{status} | {peak / 2**30:.2f} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # the exporters' INFO lines (assets written, ...) are noise here
    tf.get_logger().setLevel("ERROR")

    def log(message):
        print(message, file=sys.stderr, flush=True)

    if _MODE.value != "serving":
        load_before = os.getloadavg()[0]
        if _MODE.value == "memory":
            table = memory_markdown(
                _ARCHS.value, _FORMATS.value, _NUM_FRAMES.value, _SIZE.value, _MAX_RSS_GB.value, log
            )
        else:
            table = tflite_markdown(
                _ARCHS.value,
                _QUANTIZE.value,
                _NUM_FRAMES.value,
                _SIZE.value,
                int(_RUNS.value[0]),
                _MAX_RSS_GB.value,
                log,
            )
        table += (
            f"\n\nLoad average before/after: {load_before:.1f}/{os.getloadavg()[0]:.1f} (shared machine)."
        )
        print(table)
        _write(table)
        return
    batch_sizes = [int(b) for b in _BATCH_SIZES.value]
    if len(_RUNS.value) != len(batch_sizes):
        mains.fail(
            f"--runs needs one count per batch size ({len(batch_sizes)}). Received: --runs={','.join(_RUNS.value)}"
        )
    runs = dict(zip(batch_sizes, (int(r) for r in _RUNS.value), strict=True))
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
    _write(table)


def _write(table):
    if _OUT.value:
        files.write_atomic(_OUT.value, table + "\n")


if __name__ == "__main__":
    app.run(main)
