"""Whole-model numbers for every arch at 8 x 224^2: parameters, multiply-adds, CPU inference clips/s; and the
SGD training step time and peak memory of every R50 family.

    python -m bench.model_bench [--runs=5] [--timed=c2d_r50,...] [--train=c2d_r50,...] [--output_json=PATH]

Parameters and multiply-adds (cost_tf.resnet.count_macs, analytic from layer shapes) for all r50/r101
archs; CPU inference at batch 1 for the --timed models (r50 and the folded CoST(a)), measured side by
side in one run: one warm-up call each, then --runs rounds that time every model once per round (so load
drift hits all models alike). Reported: clips/s from the best (least disturbed) round, and the median
process CPU seconds per clip (all TF threads; robust when other jobs share the cores), each with its ratio
to c3d_r50. Prints a markdown table.

Training (--train): one SGD (momentum) step at batch --train_batch, 8 x --train_size^2, gradients of every
trainable weight (checked: none is None), all --train models in one process in interleaved rounds, median
of --train_runs after one warm-up step; CoST models run implementation="auto" after cost_tf.autotune
(training mode, at that shape; its time is reported) and, as "(defaults)", without it.

Peak RSS (--rss): each model in its own subprocess, one after the other (never two at once: each needs a few
GB), that builds it, autotunes it (training mode; from the cache when the timing phase ran) and runs two SGD
steps at batch --rss_batch; reported: ru_maxrss of that process and the training implementation of its CoST
layers. "cost_a_r50:fused" runs every CoST layer of cost_a_r50 as "fused" (what holds the memory).

    python -m bench.model_bench --skip_inference --train= --rss=c3d_r50,cost_a_r50,cost_a_r50:fused
"""

import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags

from bench import timing
from cost_tf import cost
from cost_tf.autotune import autotune, cost_layers, machine
from cost_tf.fold import fold
from cost_tf.resnet import ARCHS, build_model, count_macs
from pipelines import files, mains

FOLDED = {
    "cost_a_r50 folded (merged)": "merged",
    "cost_a_r50 folded (sparse)": "sparse",
}  # name: cost_tf.fold form
_RUNS = flags.DEFINE_integer("runs", 5, "Timed rounds after one warm-up call per model (median reported).")
_TIMED = flags.DEFINE_list(
    "timed",
    [a for a in ARCHS if a.endswith("_r50")] + list(FOLDED),
    f"Models to time: arch names or {list(FOLDED)}.",
)
_OUTPUT_JSON = flags.DEFINE_string("output_json", None, "Also write the rows here (JSON).")
_TRAIN = flags.DEFINE_list(
    "train",
    [f"{b}_r50" for b in ("c2d", "i3d", "c3d", "r2plus1d", "cost_a", "cost_b")],
    "Models whose training step is timed and whose peak RSS is measured ('' for none).",
)
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 2, "Training step batch.")
_TRAIN_SIZE = flags.DEFINE_integer("train_size", 160, "Training crop side.")
_TRAIN_RUNS = flags.DEFINE_integer("train_runs", 3, "Timed training rounds after one warm-up step.")
_RSS_BATCH = flags.DEFINE_integer("rss_batch", 4, "Batch of the two SGD steps of the peak-RSS subprocess.")
_RSS = flags.DEFINE_list(
    "rss",
    ["c2d_r50", "c3d_r50", "cost_a_r50", "cost_b_r50"],
    "Models whose peak RSS of two SGD steps is measured, each in its own subprocess, in turn ('' for "
    "none); ARCH:IMPL runs every CoST layer of ARCH with implementation IMPL in training.",
)
_RSS_TIMEOUT = flags.DEFINE_integer("rss_timeout", 1200, "Seconds before a peak-RSS subprocess is given up.")
_RSS_ONLY = flags.DEFINE_string(
    "rss_only", None, "Internal: run two SGD steps of this --rss entry and print peak RSS."
)
_DEFAULTS = flags.DEFINE_bool(
    "defaults", True, "Also time the CoST models without autotuning (the defaults)."
)
_SKIP_INFERENCE = flags.DEFINE_bool("skip_inference", False, "Only the training part.")

NUM_FRAMES, SIZE, BASE = 8, 224, "c3d_r50"


def measure(archs, timed, runs):
    """Rows {name: {params, gmacs, gmacs_sparse, clips_per_s, seconds}} for `archs` and the FOLDED models
    named in `timed` (clips_per_s and seconds only for the `timed` ones)."""
    rows, models = {}, {}
    for arch in archs:
        model = build_model(arch, num_frames=NUM_FRAMES, input_size=SIZE)
        rows[arch] = {
            "params": model.count_params(),
            "gmacs": count_macs(model) / 1e9,
            "gmacs_sparse": count_macs(model, cost_taps=19) / 1e9,
        }
        if arch in timed:
            models[arch] = model
        for name, form in FOLDED.items():
            if name.startswith(arch + " ") and name in timed:
                folded = fold(model, form)
                rows[name] = {
                    "params": folded.count_params(),
                    "gmacs": count_macs(folded) / 1e9,
                    "gmacs_sparse": count_macs(folded) / 1e9,
                }
                models[name] = folded
    x = tf.constant(np.random.default_rng(0).normal(size=(1, NUM_FRAMES, SIZE, SIZE, 3)).astype("float32"))
    forwards = {name: tf.function(lambda clip, m=m: m(clip, training=False)) for name, m in models.items()}
    times = timing.interleaved({name: lambda fn=fn: fn(x).numpy() for name, fn in forwards.items()}, runs)
    for name, t in times.items():
        rows[name].update(
            clips_per_s=1.0 / min(t["wall"]),
            cpu_s_per_clip=statistics.median(t["cpu"]),
            wall_s=t["wall"],
            cpu_s=t["cpu"],
        )
    return rows


def train_step_fn(model, batch, size, seed=0):
    """A zero-argument SGD step of `model` on fixed random clips (returns the loss as a NumPy scalar)."""
    rng = np.random.default_rng(seed)
    x = tf.constant(rng.normal(size=(batch, NUM_FRAMES, size, size, 3)).astype("float32"))
    y = tf.constant(rng.integers(0, model.output_shape[-1], size=(batch,)))
    optimizer = keras.optimizers.SGD(0.01, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables  # by closure: as tf.function arguments they would be constants

    @tf.function(autograph=False)
    def step():
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, variables)
        missing = [v.path for v, g in zip(variables, grads, strict=True) if g is None]
        assert not missing, f"no gradient for {missing}"
        optimizer.apply_gradients(zip(grads, variables, strict=True))
        return loss

    return lambda: step().numpy()


def _train_model(name, size, tune):
    """(model, autotune seconds or None) for a --train row name ("cost_a_r50" or "cost_a_r50 (defaults)")."""
    arch = name.split(" ")[0]
    model = build_model(arch, num_frames=NUM_FRAMES, input_size=size)
    if not tune or not arch.startswith("cost"):
        return model, None
    start = time.perf_counter()
    autotune(model, (_TRAIN_BATCH.value, NUM_FRAMES, size, size, 3), modes=("training",))
    return model, time.perf_counter() - start


def measure_training(archs, batch, size, runs):
    """{name: {"step_s": median, "steps_s": [...], "autotune_s"}}, all models interleaved in one process."""
    names = []
    for arch in archs:
        names.append(arch)
        if arch.startswith("cost") and _DEFAULTS.value:
            names.append(f"{arch} (defaults)")
    rows, steps = {}, {}
    for name in names:
        model, tune_s = _train_model(name, size, tune=not name.endswith("(defaults)"))
        if name.endswith("(defaults)"):
            cost.TUNED.clear()  # the tuned copy of this arch must not lend its choices to this one
        steps[name] = train_step_fn(model, batch, size)
        steps[name]()  # trace + warm-up
        rows[name] = {"autotune_s": tune_s, "steps_s": []}
    for _ in range(runs):
        for name, fn in steps.items():
            start = time.perf_counter()
            fn()
            rows[name]["steps_s"].append(time.perf_counter() - start)
    for row in rows.values():
        row["step_s"] = statistics.median(row["steps_s"])
    return rows


def peak_rss_gb(entry, batch, size, timeout):
    """(peak RSS GB, CoST training implementations {impl: layers}, seconds) of a fresh process that builds
    the --rss `entry` ("arch" or "arch:impl"), autotunes it (cached) and runs two SGD steps; None on a
    failure or timeout (reported, the other models still run)."""
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "bench.model_bench", f"--rss_only={entry}", f"--rss_batch={batch}"]
    cmd += [f"--train_size={size}", f"--train_batch={_TRAIN_BATCH.value}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"peak RSS run of {entry}: no result within {timeout} s (--rss_timeout)", flush=True)
        return None
    if proc.returncode != 0:
        print(f"peak RSS run of {entry} failed:\n{proc.stderr[-2000:]}", flush=True)
        return None
    *_, impls, gb = proc.stdout.strip().splitlines()
    return float(gb), json.loads(impls), time.perf_counter() - start


def _rss_only(entry, batch, size):
    arch, _, impl = entry.partition(":")
    model, _ = _train_model(arch, size, tune=not impl)
    layers = cost_layers(model)
    if impl:
        for layer in layers:
            layer.set_tuned_implementations(training=impl)
    chosen = {}
    for layer in layers:
        name = layer.resolved_implementation(training=True)
        chosen[name] = chosen.get(name, 0) + 1
    step = train_step_fn(model, batch, size)
    step()
    step()
    print(json.dumps(chosen, sort_keys=True))
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2)


def measure_rss(entries, batch, size, timeout):
    """{entry: (GB, implementations, s)} of peak_rss_gb, one subprocess at a time, with progress lines."""
    out = {}
    for entry in entries:
        result = peak_rss_gb(entry, batch, size, timeout)
        if result is not None:
            out[entry] = result
            print(
                f"peak RSS {entry}: {result[0]:.2f} GB (CoST training implementations {result[1] or '-'}; "
                f"{result[2]:.0f} s, load average {os.getloadavg()[0]:.1f})",
                flush=True,
            )
    return out


def rss_table(rss):
    base = rss.get(BASE, (None,))[0]
    lines = [
        f"| model | peak RSS GB (batch {_RSS_BATCH.value}, 8x{_TRAIN_SIZE.value}², 2 SGD steps) | vs c3d_r50 | "
        "CoST training implementations |",
        "|---|---|---|---|",
    ]
    for name, (gb, impls, _) in rss.items():
        ratio = f"{gb / base:.2f}x" if base else "-"
        chosen = ", ".join(f"{k} x{v}" for k, v in sorted(impls.items())) or "-"
        lines.append(f"| {name} | {gb:.2f} | {ratio} | {chosen} |")
    return "\n".join(lines)


def training_table(rows, rss):
    base = rows.get(BASE, {}).get("step_s")
    lines = [
        f"| model | SGD step s (median) | vs c3d_r50 | peak RSS GB (batch {_RSS_BATCH.value}, 2 steps) | "
        "vs c3d_r50 | autotune s |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        ratio = f"{r['step_s'] / base:.2f}x" if base else "-"
        mem = rss.get(name)
        mem_cells = (
            f"{mem:.2f} | {mem / rss[BASE]:.2f}x"
            if mem is not None and BASE in rss
            else (f"{mem:.2f} | -" if mem is not None else "- | -")
        )
        tune = f"{r['autotune_s']:.0f}" if r.get("autotune_s") is not None else "-"
        lines.append(f"| {name} | {r['step_s']:.2f} | {ratio} | {mem_cells} | {tune} |")
    return "\n".join(lines)


def table(rows):
    base = rows.get(BASE, {})
    lines = [
        "| model | params (M) | GMACs / clip (CoST 27 taps) | GMACs (CoST 19 taps) | clips/s (best) | "
        "vs c3d_r50 | CPU s / clip (median) | speed vs c3d_r50 by CPU time |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        timed = "clips_per_s" in r and "clips_per_s" in base
        speed = (
            f"{r['clips_per_s']:.3f} | {r['clips_per_s'] / base['clips_per_s']:.2f}x | "
            f"{r['cpu_s_per_clip']:.2f} | {base['cpu_s_per_clip'] / r['cpu_s_per_clip']:.2f}x"
            if timed
            else "- | - | - | -"
        )
        lines.append(
            f"| {name} | {r['params'] / 1e6:.2f} | {r['gmacs']:.1f} | {r['gmacs_sparse']:.1f} | {speed} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    if _RSS_ONLY.value:
        _rss_only(_RSS_ONLY.value, _RSS_BATCH.value, _TRAIN_SIZE.value)
        return
    rss_archs = [entry.partition(":")[0] for entry in _RSS.value]
    unknown = [
        name for name in _TIMED.value + _TRAIN.value + rss_archs if name not in ARCHS and name not in FOLDED
    ]
    if unknown:
        mains.fail(
            f"--timed/--train/--rss: unknown names {unknown}; valid: {', '.join(ARCHS)}, {list(FOLDED)}"
        )
    bad = [entry for entry in _RSS.value if entry.partition(":")[2] not in ("",) + cost.IMPLEMENTATIONS[1:]]
    if bad:
        mains.fail(f"--rss: unknown implementations in {bad}; valid: {', '.join(cost.IMPLEMENTATIONS[1:])}")
    tf.get_logger().setLevel("ERROR")  # one tf.function per model trips the retracing warning
    print(machine() + "\n")
    out = {}
    if not _SKIP_INFERENCE.value:
        load_before = os.getloadavg()
        start = time.time()
        archs = [a for a in ARCHS if not a.endswith("_tiny")]
        rows = measure(archs, set(_TIMED.value), _RUNS.value)
        print(
            f"Inference: batch 1, {NUM_FRAMES}x{SIZE}x{SIZE}; {_RUNS.value} timed rounds after 1 warm-up; load "
            f"average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; {time.time() - start:.0f} s\n"
        )
        print(table(rows))
        out.update(load_before=load_before, rows=rows)
    if _TRAIN.value:
        load_before = os.getloadavg()
        start = time.time()
        train_rows = measure_training(_TRAIN.value, _TRAIN_BATCH.value, _TRAIN_SIZE.value, _TRAIN_RUNS.value)
        print(
            f"\nTraining: one SGD step at batch {_TRAIN_BATCH.value}, {NUM_FRAMES}x{_TRAIN_SIZE.value}x"
            f"{_TRAIN_SIZE.value}, median of {_TRAIN_RUNS.value} interleaved rounds after 1 warm-up; load average "
            f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after; {time.time() - start:.0f} s\n"
        )
        print(training_table(train_rows, {}), flush=True)
        out.update(train_rows=train_rows)
    if _RSS.value:
        gc.collect()  # the timed models are gone before the subprocesses start
        start = time.time()
        rss = measure_rss(_RSS.value, _RSS_BATCH.value, _TRAIN_SIZE.value, _RSS_TIMEOUT.value)
        print(
            f"\nPeak RSS: a separate process per model, one at a time (CoST autotuned for training, from the "
            f"cache where the timing phase ran), two SGD steps at batch {_RSS_BATCH.value}; "
            f"{time.time() - start:.0f} s\n"
        )
        print(rss_table(rss))
        out.update(
            rss_gb={k: v[0] for k, v in rss.items()}, rss_implementations={k: v[1] for k, v in rss.items()}
        )
    if _OUTPUT_JSON.value:
        files.write_json(_OUTPUT_JSON.value, out, indent=1)


if __name__ == "__main__":
    app.run(main)
