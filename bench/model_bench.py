"""Whole-model numbers for every arch at 8 x 224^2: parameters, multiply-adds, CPU inference clips/s.

    python -m bench.model_bench [--runs=5] [--timed=c2d_r50,...] [--output_json=PATH]

Parameters and multiply-adds (cost_tf.resnet.count_macs, analytic from layer shapes) for all r50/r101
archs; CPU inference at batch 1 for the --timed models (r50 and the folded CoST(a)), measured side by
side in one run: one warm-up call each, then --runs rounds that time every model once per round (so load
drift hits all models alike). Reported: clips/s from the best (least disturbed) round, and the median
process CPU seconds per clip (all TF threads; robust when other jobs share the cores), each with its ratio
to c3d_r50. Prints a markdown table.
"""

import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cost_tf.fold import fold  # noqa: E402
from cost_tf.resnet import ARCHS, count_macs, build_model  # noqa: E402

FOLDED = {"cost_a_r50 folded (merged)": "merged", "cost_a_r50 folded (sparse)": "sparse"}  # name: cost_tf.fold form
_RUNS = flags.DEFINE_integer("runs", 5, "Timed rounds after one warm-up call per model (median reported).")
_TIMED = flags.DEFINE_list("timed", [a for a in ARCHS if a.endswith("_r50")] + list(FOLDED),
                           f"Models to time: arch names or {list(FOLDED)}.")
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Also write the rows here (JSON).")

NUM_FRAMES, SIZE, BASE = 8, 224, "c3d_r50"


def measure(archs, timed, runs):
    """Rows {name: {params, gmacs, gmacs_sparse, clips_per_s, seconds}} for `archs` and the FOLDED models
    named in `timed` (clips_per_s and seconds only for the `timed` ones)."""
    rows, models = {}, {}
    for arch in archs:
        model = build_model(arch, num_frames=NUM_FRAMES, input_size=SIZE)
        rows[arch] = {"params": model.count_params(), "gmacs": count_macs(model) / 1e9,
                      "gmacs_sparse": count_macs(model, cost_taps=19) / 1e9}
        if arch in timed:
            models[arch] = model
        for name, form in FOLDED.items():
            if name.startswith(arch + " ") and name in timed:
                folded = fold(model, form)
                rows[name] = {"params": folded.count_params(), "gmacs": count_macs(folded) / 1e9,
                              "gmacs_sparse": count_macs(folded) / 1e9}
                models[name] = folded
    x = tf.constant(np.random.default_rng(0).normal(size=(1, NUM_FRAMES, SIZE, SIZE, 3)).astype("float32"))
    forwards = {name: tf.function(lambda clip, m=m: m(clip, training=False)) for name, m in models.items()}
    for fn in forwards.values():
        fn(x).numpy()  # trace + warm-up
    wall = {name: [] for name in forwards}
    cpu = {name: [] for name in forwards}
    for _ in range(runs):
        for name, fn in forwards.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn(x).numpy()
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    for name in forwards:
        rows[name].update(clips_per_s=1.0 / min(wall[name]), cpu_s_per_clip=statistics.median(cpu[name]),
                          wall_s=wall[name], cpu_s=cpu[name])
    return rows


def table(rows):
    base = rows.get(BASE, {})
    lines = ["| model | params (M) | GMACs / clip (CoST 27 taps) | GMACs (CoST 19 taps) | clips/s (best) | "
             "vs c3d_r50 | CPU s / clip (median) | speed vs c3d_r50 by CPU time |",
             "|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        timed = "clips_per_s" in r and "clips_per_s" in base
        speed = (f"{r['clips_per_s']:.3f} | {r['clips_per_s'] / base['clips_per_s']:.2f}x | "
                 f"{r['cpu_s_per_clip']:.2f} | {base['cpu_s_per_clip'] / r['cpu_s_per_clip']:.2f}x" if timed
                 else "- | - | - | -")
        lines.append(f"| {name} | {r['params'] / 1e6:.2f} | {r['gmacs']:.1f} | {r['gmacs_sparse']:.1f} | {speed} |")
    return "\n".join(lines)


def main(argv):
    del argv
    unknown = [name for name in _TIMED.value if name not in ARCHS and name not in FOLDED]
    if unknown:
        raise app.UsageError(f"--timed: unknown names {unknown}; valid: {', '.join(ARCHS)}, {list(FOLDED)}")
    tf.get_logger().setLevel("ERROR")  # one tf.function per model trips the retracing warning
    load_before = os.getloadavg()
    start = time.time()
    archs = [a for a in ARCHS if not a.endswith("_tiny")]
    rows = measure(archs, set(_TIMED.value), _RUNS.value)
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores; batch 1, "
          f"{NUM_FRAMES}x{SIZE}x{SIZE}; {_RUNS.value} timed rounds after 1 warm-up; load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; {time.time() - start:.0f} s total\n")
    print(table(rows))
    if _OUTPUT_JSON.value:
        directory = os.path.dirname(os.path.abspath(_OUTPUT_JSON.value))
        with tempfile.NamedTemporaryFile("w", dir=directory, suffix=".tmp", delete=False) as f:
            json.dump({"load_before": load_before, "rows": rows}, f, indent=1)
        os.replace(f.name, _OUTPUT_JSON.value)


if __name__ == "__main__":
    app.run(main)
