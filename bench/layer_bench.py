"""CoST layer speed: every implementation and the autotuned choice against a dense Conv3D (C3D), side by side.

    python -m bench.layer_bench [--runs=10] [--shapes=res2,res3,res4,res5] [--dtype=float32] [--onnx]

Shapes are the R50 CoST shapes at 8 frames, batch 2 (224² clips). For each shape, in interleaved rounds (every
case once per round, so a change of load hits all alike), the median ms of the forward pass (inference) and
of forward+backward with gradients w.r.t. the input AND every weight (training), and the ratio of each to
C3D. "autotuned" rows are CoST layers with implementation="auto" after cost_tf.autotune at that shape (fresh
measurement at autotune's default batch 1, cache in a temporary folder). --dtype=mixed_bfloat16 feeds the
same float32 clips (the layers cast them); on a CPU without bfloat16 instructions its Conv3D cases take
10-30 s per call (docs/PERFORMANCE.md). Also times merged_kernel (forward+backward) built from three
padded planes against the former 27 stacked taps, and with --onnx the folded CoST(a) forms in onnxruntime
(which decide `cost_tf.fold`'s default form).
"""

import os
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from absl import app, flags
from keras import ops

from bench import timing
from cost_tf.autotune import autotune, machine, step_function
from cost_tf.cost import CoST, merged_kernel, valid_implementations
from cost_tf.fold import fold
from cost_tf.resnet import FramewiseConv3D

_RUNS = flags.DEFINE_integer("runs", 10, "Timed rounds per case (median reported), after 2 warm-up rounds.")
_SHAPES = flags.DEFINE_list("shapes", ["res2", "res3", "res4", "res5"], "Which R50 CoST shapes to time.")
_DTYPE = flags.DEFINE_enum(
    "dtype", "float32", ["float32", "mixed_bfloat16"], "Keras dtype policy of the layers."
)
_MODES = flags.DEFINE_list("modes", ["inference", "training"], "inference (forward), training (fwd+bwd).")
_ONNX = flags.DEFINE_bool("onnx", True, "Also time the folded forms in onnxruntime.")
_LAYERS = flags.DEFINE_bool("layers", True, "Time the layers (--nolayers with --merged_kernel: that only).")
_MERGED = flags.DEFINE_bool(
    "merged_kernel", True, "Also time merged_kernel against the stacked-taps version."
)

# name: (batch, T, H, W, C_in, C_out)
SHAPES = {
    "res2": (2, 8, 56, 56, 64, 64),
    "res3": (2, 8, 28, 28, 128, 128),
    "res4": (2, 8, 14, 14, 256, 256),
    "res5": (2, 8, 7, 7, 512, 512),
}
BASE = "c3d (Conv3D 3x3x3)"


def layers_for(c_out, dtype):
    """{name: layer}: C3D, C2D, every CoST implementation, and the two layers autotune will set."""
    cases = {
        BASE: keras.layers.Conv3D(c_out, 3, padding="same", use_bias=False, dtype=dtype),
        "c2d (1x3x3 as Conv2D)": FramewiseConv3D(
            c_out, (1, 3, 3), padding="same", use_bias=False, dtype=dtype
        ),
    }
    for variant in ("a", "b"):
        for impl in valid_implementations(variant):
            cases[f"cost_{variant} {impl}"] = CoST(c_out, variant, implementation=impl, dtype=dtype)
        cases[f"cost_{variant} autotuned"] = CoST(c_out, variant, dtype=dtype)
    return cases


def layer_fns(layer, x):
    """{mode: fn} of one layer on x as tf.functions returning a NumPy scalar (cost_tf.autotune.step_function:
    training takes the gradients w.r.t. x and every weight, none of them None)."""
    layer(x)
    steps = {mode: step_function(layer, x, mode) for mode in ("inference", "training")}
    return {mode: (lambda step=step: step().numpy()) for mode, step in steps.items()}


def interleaved_medians_ms(fns, runs, warmup=2):
    """Median wall ms of each fn in `fns` (a dict), in interleaved rounds (bench.timing)."""
    return {name: 1000 * s for name, s in timing.medians(fns, runs, warmup).items()}


def time_shape(shape, runs, dtype, modes):
    """({mode: {case: median ms}}, autotune report) at one shape."""
    n, t, h, w, c_in, c_out = shape
    x = tf.constant(np.random.default_rng(0).normal(size=(n, t, h, w, c_in)).astype("float32"))
    cases = layers_for(c_out, dtype)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        report = {
            name: autotune(layer, x.shape, modes=modes, cache_dir=cache)[layer.name]
            for name, layer in cases.items()
            if name.endswith("autotuned")
        }
        seconds = time.perf_counter() - start
    fns = {name: layer_fns(layer, x) for name, layer in cases.items()}
    return (
        {mode: interleaved_medians_ms({name: f[mode] for name, f in fns.items()}, runs) for mode in modes},
        report,
        seconds,
    )


def merged_kernel_stacked(kernel, coefficients):
    """The former merged_kernel: 27 taps placed one by one with nested stacks (for the comparison)."""
    a_hw, a_tw, a_th = coefficients[0], coefficients[1], coefficients[2]
    zeros = ops.zeros_like(kernel)
    hw, tw, th = kernel * a_hw, kernel * a_tw, kernel * a_th
    planes = []
    for t in range(3):
        rows = []
        for h in range(3):
            cols = []
            for w in range(3):
                tap = zeros[0, 0]
                if t == 1:
                    tap = tap + hw[h, w]
                if h == 1:
                    tap = tap + tw[t, w]
                if w == 1:
                    tap = tap + th[t, h]
                cols.append(tap)
            rows.append(ops.stack(cols, axis=0))
        planes.append(ops.stack(rows, axis=0))
    return ops.stack(planes, axis=0)


def _merged_kernel_step(build, kernel, alpha):
    """A tf.function of build's forward+backward; the variables are captured by closure (never as arguments,
    which would turn them into constants with None gradients)."""

    @tf.function(autograph=False)
    def step():
        with tf.GradientTape() as tape:
            k3 = build(kernel, tf.nn.softmax(alpha, axis=0))
            loss = tf.reduce_sum(k3 * k3)
        grads = tape.gradient(loss, [kernel, alpha])
        assert all(g is not None for g in grads)
        return tf.add_n([tf.reduce_sum(g) for g in grads])

    return lambda: step().numpy()


def time_merged_kernel(channels, runs):
    """{C: (padded planes ms, stacked taps ms)} of merged_kernel forward+backward (kernel and coefficients)."""
    out = {}
    rng = np.random.default_rng(0)
    for c in channels:
        kernel = tf.Variable(rng.normal(size=(3, 3, c, c)).astype("float32"))
        alpha = tf.Variable(rng.normal(size=(3, c)).astype("float32"))
        fns = {
            name: _merged_kernel_step(build, kernel, alpha)
            for name, build in (("planes", merged_kernel), ("stacked", merged_kernel_stacked))
        }
        ms = interleaved_medians_ms(fns, runs)
        out[c] = (ms["planes"], ms["stacked"])
    return out


def time_onnx_forms(shape, runs):
    """Median ms in onnxruntime (and TF) of a CoST(a) layer folded to the merged and to the sparse form."""
    import onnxruntime as ort
    import tf2onnx

    n, t, h, w, c_in, c_out = shape
    inp = keras.Input((t, h, w, c_in), name="clip")
    model = keras.Model(inp, CoST(c_out, "a")(inp))
    x = np.random.default_rng(0).normal(size=(n, t, h, w, c_in)).astype("float32")
    fns = {}
    for form in ("merged", "sparse"):
        folded = fold(model, form)
        spec = [tf.TensorSpec((None, t, h, w, c_in), tf.float32, name="clip")]
        fn = tf.function(lambda clip, m=folded: m(clip, training=False), input_signature=spec)
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        fns[f"{form} onnxruntime"] = lambda sess=sess, name=name: sess.run(None, {name: x})
        fns[f"{form} TF"] = lambda fn=fn: fn(x).numpy()
    return interleaved_medians_ms(fns, runs)


def main(argv):
    del argv
    dtype, modes = _DTYPE.value, _MODES.value
    print(
        f"{machine()}\ndtype policy {dtype}; median of {_RUNS.value} interleaved rounds after 2 warm-up rounds; "
        "batch 2, 8 frames; training = forward+backward with input and weight gradients"
    )
    for shape_name in _SHAPES.value if _LAYERS.value else ():
        shape = SHAPES[shape_name]
        n, t, h, w, c_in, c_out = shape
        start = time.perf_counter()
        ms, report, tune_s = time_shape(shape, _RUNS.value, dtype, modes)
        print(
            f"\n## {shape_name}: input {n}x{t}x{h}x{w}x{c_in} -> {c_out} channels ({time.perf_counter() - start:.0f} s, "
            f"load average {os.getloadavg()[0]:.1f})\n"
        )
        header = " | ".join(f"{m} ms | {m} / C3D" for m in modes)
        print(f"| layer | {header} |\n|---|" + "---|---|" * len(modes))
        for name in ms[modes[0]]:
            cells = " | ".join(f"{ms[m][name]:.1f} | {ms[m][name] / ms[m][BASE]:.2f}" for m in modes)
            print(f"| {name} | {cells} |")
        for name, entry in report.items():
            chosen = ", ".join(f"{m}: {entry[m]}" for m in modes)
            print(
                f"\n{name} chose {chosen} (autotune took {tune_s:.1f} s for both variants; its own timings: "
                + "; ".join(
                    f"{m} "
                    + ", ".join(
                        f"{k} {v:.0f}" for k, v in sorted(entry["ms"][m].items(), key=lambda kv: kv[1])
                    )
                    for m in modes
                )
                + " ms)"
            )
        if _ONNX.value:
            forms = time_onnx_forms(shape, _RUNS.value)
            print("\nfolded CoST(a), inference ms: " + ", ".join(f"{k} {v:.1f}" for k, v in forms.items()))
    if _MERGED.value:
        print("\n## merged_kernel, forward+backward (kernel and coefficient gradients)\n")
        print(
            "| C_in = C_out | three padded planes ms | 27 stacked taps (before) ms | ratio |\n|---|---|---|---|"
        )
        for c, (planes, stacked) in time_merged_kernel(
            [SHAPES[s][-1] for s in _SHAPES.value], _RUNS.value
        ).items():
            print(f"| {c} | {planes:.2f} | {stacked:.2f} | {planes / stacked:.2f} |")


if __name__ == "__main__":
    app.run(main)
