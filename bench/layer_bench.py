"""CoST layer speed against dense Conv3D (C3D) and 1x3x3 Conv3D (C2D), side by side in one run.

    python -m bench.layer_bench [--runs=20] [--shapes=res3,res4] [--onnx]

Shapes are the R50 CoST shapes at 8 frames, batch 2. Prints median ms for forward and forward+backward and
the ratio of each to C3D. With --onnx, also the folded CoST(a) forms (merged 3x3x3 vs 19-tap sparse) in
onnxruntime, which decides `cost_tf.fold`'s default form.
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from cost_tf.cost import CoST  # noqa: E402
from cost_tf.resnet import FramewiseConv3D  # noqa: E402

_RUNS = flags.DEFINE_integer("runs", 20, "Timed runs per case (median reported), after 3 warm-up runs.")
_SHAPES = flags.DEFINE_list("shapes", ["res3", "res4"], "Which R50 CoST shapes to time.")
_ONNX = flags.DEFINE_bool("onnx", True, "Also time the folded forms in onnxruntime.")

# name: (batch, T, H, W, C_in, C_out)
SHAPES = {"res3": (2, 8, 28, 28, 128, 128), "res4": (2, 8, 14, 14, 256, 256)}
# The authors' public PyTorch CoST layer and TF's Conv3D, measured on this machine at res3 (issue 2):
# (forward ms, forward+backward ms).
PYTORCH_ANCHOR = {"cost_a": (26.2, 55.0), "cost_b": (25.4, 57.5), "tf_conv3d": (20.8, 41.0)}


def _layers(c_out):
    return {
        "c3d (Conv3D 3x3x3)": lambda: keras.layers.Conv3D(c_out, 3, padding="same", use_bias=False),
        "c2d (1x3x3 as Conv2D)": lambda: FramewiseConv3D(c_out, (1, 3, 3), padding="same", use_bias=False),
        "cost_a frames": lambda: CoST(c_out, "a", implementation="frames"),
        "cost_a views": lambda: CoST(c_out, "a", implementation="views"),
        "cost_a fused": lambda: CoST(c_out, "a", implementation="fused"),
        "cost_a sparse": lambda: CoST(c_out, "a", implementation="sparse"),
        "cost_a auto": lambda: CoST(c_out, "a", implementation="auto"),
        "cost_b frames": lambda: CoST(c_out, "b", implementation="frames"),
        "cost_b views": lambda: CoST(c_out, "b", implementation="views"),
        "cost_b auto": lambda: CoST(c_out, "b", implementation="auto"),
    }


def _median_ms(fn, runs):
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def _interleaved_medians_ms(fns, runs):
    """Median ms of each fn in `fns` (a dict), timed in rounds that run every fn once, so a change of load
    during the run hits every case alike; 3 warm-up rounds."""
    times = {name: [] for name in fns}
    for round_ in range(runs + 3):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if round_ >= 3:
                times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(t) for name, t in times.items()}


def layer_fns(layer, x):
    """(forward, forward+backward) of one layer on x as tf.functions that return NumPy results."""
    layer(x)

    @tf.function
    def forward():
        return layer(x, training=False)

    @tf.function
    def train_step():
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, [x] + layer.trainable_weights)

    return (lambda: forward().numpy()), (lambda: [g.numpy() for g in train_step()])


def time_layers(layers, x, runs):
    """{name: (forward ms, forward+backward ms)} for a dict of layers, interleaved."""
    fns = {name: layer_fns(layer, x) for name, layer in layers.items()}
    fwd = _interleaved_medians_ms({name: f[0] for name, f in fns.items()}, runs)
    bwd = _interleaved_medians_ms({name: f[1] for name, f in fns.items()}, runs)
    return {name: (fwd[name], bwd[name]) for name in layers}


def time_onnx_forms(shape, runs):
    """Median ms in onnxruntime of a CoST(a) layer folded to the merged and to the sparse form."""
    import onnxruntime as ort
    import tf2onnx

    from cost_tf.fold import fold

    n, t, h, w, c_in, c_out = shape
    inp = keras.Input((t, h, w, c_in), name="clip")
    model = keras.Model(inp, CoST(c_out, "a")(inp))
    x = np.random.default_rng(0).normal(size=(n, t, h, w, c_in)).astype("float32")
    results = {}
    for form in ("merged", "sparse"):
        folded = fold(model, form)
        spec = [tf.TensorSpec((None, t, h, w, c_in), tf.float32, name="clip")]
        fn = tf.function(lambda clip, m=folded: m(clip, training=False), input_signature=spec)
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
        options = ort.SessionOptions()
        sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        name = sess.get_inputs()[0].name
        results[form] = (
            _median_ms(lambda: sess.run(None, {name: x}), runs),
            _median_ms(lambda: folded(x, training=False).numpy(), runs),
        )
    return results


def main(argv):
    del argv
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPU cores, "
          f"oneDNN={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')}; median of {_RUNS.value} runs")
    for shape_name in _SHAPES.value:
        shape = SHAPES[shape_name]
        n, t, h, w, c_in, c_out = shape
        x = tf.constant(np.random.default_rng(0).normal(size=(n, t, h, w, c_in)).astype("float32"))
        print(f"\n## {shape_name}: input {n}x{t}x{h}x{w}x{c_in} -> {c_out} channels")
        print(f"| layer | forward ms | fwd+bwd ms | forward / C3D | fwd+bwd / C3D |")
        print("|---|---|---|---|---|")
        rows = time_layers({name: make() for name, make in _layers(c_out).items()}, x, _RUNS.value)
        base = rows["c3d (Conv3D 3x3x3)"]
        for name, (fwd, bwd) in rows.items():
            print(f"| {name} | {fwd:.1f} | {bwd:.1f} | {fwd / base[0]:.2f} | {bwd / base[1]:.2f} |")
        if shape_name == "res3":
            # The PyTorch anchor was measured beside a TF Conv3D on this machine; scale through it.
            ref_fwd, ref_bwd = PYTORCH_ANCHOR["tf_conv3d"]
            for ours, theirs in (("cost_a auto", "cost_a"), ("cost_b auto", "cost_b")):
                pt_fwd, pt_bwd = PYTORCH_ANCHOR[theirs]
                fwd = rows[ours][0] / base[0] * ref_fwd
                bwd = rows[ours][1] / base[1] * ref_bwd
                print(f"speed-up of {ours} over the public PyTorch {theirs} (via the Conv3D anchor): "
                      f"forward {pt_fwd / fwd:.2f}x, fwd+bwd {pt_bwd / bwd:.2f}x")
        if _ONNX.value:
            forms = time_onnx_forms(shape, _RUNS.value)
            for form, (ort_ms, tf_ms) in forms.items():
                print(f"folded {form}: onnxruntime {ort_ms:.1f} ms, TF {tf_ms:.1f} ms (inference)")


if __name__ == "__main__":
    app.run(main)
