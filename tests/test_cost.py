"""CoST layer against a NumPy reference written here (explicit per-tap sums, TF 'SAME' padding)."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from cost_tf.cost import CoST

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the reference ----------------------------------------------------------------------------------


def _same_pad(n, s, k=3):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return out, total // 2, total - total // 2


def ref_views(x, w, strides):
    """The three view outputs (hw, tw, th) by explicit sums over the 9 taps of each view (float64)."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    n, t, h, wd, _ = x.shape
    dims = [_same_pad(size, s) for size, s in zip((t, h, wd), strides, strict=True)]
    xp = np.pad(x, [(0, 0)] + [(b, a) for _, b, a in dims] + [(0, 0)])
    (ot, _, _), (oh, _, _), (ow, _, _) = dims
    st, sh, sw = strides

    def tap(dt, dh, dw):
        # Input under the window position offset (dt, dh, dw) in {0,1,2}^3 for every output.
        return xp[
            :,
            dt : dt + (ot - 1) * st + 1 : st,
            dh : dh + (oh - 1) * sh + 1 : sh,
            dw : dw + (ow - 1) * sw + 1 : sw,
        ]

    outs = []
    for view in ("hw", "tw", "th"):
        acc = np.zeros((n, ot, oh, ow, w.shape[-1]))
        for i in range(3):
            for j in range(3):
                offsets = {"hw": (1, i, j), "tw": (i, 1, j), "th": (i, j, 1)}[view]
                acc += tap(*offsets) @ w[i, j]
        outs.append(acc)
    return outs


def ref_b_coefficients(views, dense, mix):
    pooled = np.stack([v.max(axis=(1, 2, 3)) for v in views], axis=1)  # (N, 3, C)
    z = pooled @ dense  # shared C->C
    z = np.einsum("nic,ij->njc", z, mix)  # per-channel 3->3
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def ref_cost(x, layer):
    return ref_cost_params(x, {w.name: np.asarray(w) for w in layer.weights}, layer.variant, layer.strides)


def ref_cost_params(x, params, variant, strides):
    """ref_cost from a {weight name: array} dict (the layer's weight names; "bias" optional)."""
    views = ref_views(x, params["kernel"], strides)
    if variant == "a":
        alpha = np.asarray(params["alpha"], np.float64)
        a = np.exp(alpha) / np.exp(alpha).sum(axis=0)
        y = sum(a[i] * v for i, v in enumerate(views))
    else:
        a = ref_b_coefficients(
            views, np.asarray(params["view_dense"], np.float64), np.asarray(params["view_mix"], np.float64)
        )
        y = sum(a[:, i, None, None, None, :] * v for i, v in enumerate(views))
    if "bias" in params:
        y = y + np.asarray(params["bias"], np.float64)
    return y


def _randomize(layer, rng):
    for weight in layer.weights:
        scale = 1.0 if weight.name in ("alpha", "view_mix") else 0.5
        weight.assign(rng.normal(0, scale, weight.shape).astype("float32"))


def _rel(a, b):
    return float(np.max(np.abs(np.asarray(a, np.float64) - b)) / np.max(np.abs(b)))


CASES = [
    ("a", "frames"),
    ("a", "views"),
    ("a", "fused"),
    ("a", "sparse"),
    ("a", "flat"),
    ("a", "auto"),
    ("b", "frames"),
    ("b", "views"),
    ("b", "flat"),
    ("b", "auto"),
]


@pytest.mark.parametrize("variant,implementation", CASES)
@pytest.mark.parametrize("strides", [1, (1, 2, 2), 2])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9, 3), (2, 4, 8, 6, 3)], ids=["odd", "even"])
@pytest.mark.parametrize("training", [False, True])
def test_matches_numpy_reference(variant, implementation, strides, shape, training):
    if implementation == "sparse" and strides != 1:
        # 'sparse' has no strided form: the case is the error, not a result.
        with pytest.raises(ValueError, match=r"implementation='sparse' needs strides 1.*Received: strides="):
            CoST(5, variant=variant, strides=strides, implementation=implementation)
        return
    rng = np.random.default_rng(0)
    layer = CoST(5, variant=variant, strides=strides, use_bias=True, implementation=implementation)
    x = rng.normal(size=shape).astype("float32")
    layer.build(x.shape)
    _randomize(layer, rng)
    y = layer(x, training=training)
    ref = ref_cost(x, layer)
    assert tuple(y.shape) == ref.shape == layer.compute_output_shape(x.shape)
    assert _rel(y, ref) < 1e-5


# Every candidate and stride it accepts ('sparse' rejects strides: test_matches_numpy_reference checks that).
GRADIENT_CASES = [
    (v, i, s) for v, i in CASES if i != "auto" for s in (1, (1, 2, 2), 2) if i != "sparse" or s == 1
]


@pytest.mark.parametrize("variant,implementation,strides", GRADIENT_CASES)
@pytest.mark.parametrize("shape", [(2, 5, 7, 9, 3), (2, 4, 8, 6, 3)], ids=["odd", "even"])
def test_gradients_match_numpy_reference(variant, implementation, strides, shape):
    """Input and weight gradients of sum(y * probe) against central differences of the NumPy reference."""
    rng = np.random.default_rng(7)
    layer = CoST(4, variant=variant, strides=strides, use_bias=True, implementation=implementation)
    x = rng.normal(size=shape).astype("float32")
    layer.build(x.shape)
    _randomize(layer, rng)
    probe = rng.normal(size=layer.compute_output_shape(x.shape)).astype("float32")
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        loss = tf.reduce_sum(layer(xt, training=True) * probe)
    grads = tape.gradient(loss, [xt] + layer.trainable_weights)
    assert all(g is not None for g in grads)
    params = {w.name: np.asarray(w, np.float64) for w in layer.weights}
    values = dict(params, x=x.astype(np.float64))
    for name, grad in zip(["x"] + [w.name for w in layer.trainable_weights], grads, strict=True):
        g = np.asarray(grad, np.float64)
        # The largest-gradient entry and two random ones; float64 central differences of the reference.
        flat = [int(np.abs(g).argmax())] + list(rng.integers(0, g.size, 2))
        for index in flat:
            idx = np.unravel_index(index, g.shape)
            eps = 1e-4
            diffs = []
            for sign in (1, -1):
                bumped = {k: v.copy() for k, v in values.items()}
                bumped[name][idx] += sign * eps
                y = ref_cost_params(bumped.pop("x"), bumped, variant, layer.strides)
                diffs.append(float(np.sum(y * probe)))
            numeric = (diffs[0] - diffs[1]) / (2 * eps)
            scale = np.abs(g).max()
            assert abs(numeric - g[idx]) <= 1e-4 * scale, (name, idx, numeric, g[idx])


def test_weights_names_shapes_and_init():
    a = CoST(6, variant="a")
    a.build((None, 4, 8, 8, 3))
    assert [(w.name, tuple(w.shape)) for w in a.weights] == [("kernel", (3, 3, 3, 6)), ("alpha", (3, 6))]
    np.testing.assert_array_equal(
        np.asarray(a.alpha), np.repeat(np.float32([[0.7], [-0.7], [-0.7]]), 6, axis=1)
    )
    coeffs = np.asarray(a.coefficients())
    assert coeffs.shape == (3, 6)
    e = np.exp([0.7, -0.7, -0.7])
    np.testing.assert_allclose(coeffs[:, 0], e / e.sum(), rtol=1e-6)

    b = CoST(6, variant="b", use_bias=True)
    b.build((None, 4, 8, 8, 3))
    names = [(w.name, tuple(w.shape)) for w in b.weights]
    assert names == [("kernel", (3, 3, 3, 6)), ("view_dense", (6, 6)), ("view_mix", (3, 3)), ("bias", (6,))]
    dense = np.asarray(b.view_dense)
    assert 0.005 < dense.std() < 0.02 and abs(dense.mean()) < 0.01


def test_b_coefficients_match_reference():
    rng = np.random.default_rng(1)
    layer = CoST(4, variant="b")
    x = rng.normal(size=(3, 4, 6, 6, 2)).astype("float32")
    layer.build(x.shape)
    _randomize(layer, rng)
    coeffs = np.asarray(layer.coefficients(x))
    assert coeffs.shape == (3, 3, 4)
    np.testing.assert_allclose(coeffs.sum(axis=1), 1.0, rtol=1e-6)
    ref = ref_b_coefficients(
        ref_views(x, np.asarray(layer.kernel), (1, 1, 1)),
        np.asarray(layer.view_dense, np.float64),
        np.asarray(layer.view_mix, np.float64),
    )
    np.testing.assert_allclose(coeffs, ref, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="pass `inputs`"):
        layer.coefficients()


@pytest.mark.parametrize("implementation", ["frames", "views"])
@pytest.mark.parametrize("variant", ["a", "b"])
def test_gradients_flow_and_match_finite_differences(variant, implementation):
    rng = np.random.default_rng(2)
    layer = CoST(3, variant=variant, dtype="float64", implementation=implementation)
    x = tf.constant(rng.normal(size=(2, 3, 5, 5, 2)))
    layer.build(x.shape)
    _randomize(layer, rng)
    probe = tf.constant(rng.normal(size=(2, 3, 5, 5, 3)))
    loss = lambda: tf.reduce_sum(layer(x, training=True) * probe)  # noqa: E731
    with tf.GradientTape() as tape:
        value = loss()
    grads = tape.gradient(value, layer.trainable_weights)
    for weight, grad in zip(layer.trainable_weights, grads, strict=True):
        g = np.asarray(grad)
        assert np.all(np.isfinite(g)) and np.abs(g).max() > 0, weight.name
        # Central difference on the largest-gradient entry of each weight.
        idx = np.unravel_index(np.abs(g).argmax(), g.shape)
        eps = 1e-6
        base = np.asarray(weight)
        for sign in (1, -1):
            bumped = base.copy()
            bumped[idx] += sign * eps
            weight.assign(bumped)
            if sign == 1:
                up = float(loss())
            else:
                down = float(loss())
        weight.assign(base)
        np.testing.assert_allclose((up - down) / (2 * eps), g[idx], rtol=1e-5, err_msg=weight.name)


def _small_model(variant):
    inp = keras.Input((None, 8, 8, 3), name="clip")
    x = CoST(4, variant=variant, name="cost1", use_bias=True)(inp)
    x = keras.layers.ReLU()(x)
    x = CoST(4, variant=variant, strides=(1, 2, 2), name="cost2")(x)
    x = keras.layers.GlobalAveragePooling3D()(x)
    out = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inp, out)


@pytest.mark.parametrize("variant", ["a", "b"])
def test_keras_round_trip(variant, tmp_path):
    model = _small_model(variant)
    rng = np.random.default_rng(3)
    for layer in model.layers:
        if isinstance(layer, CoST):
            _randomize(layer, rng)
    x = rng.normal(size=(2, 4, 8, 8, 3)).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    layer = loaded.get_layer("cost2")
    assert isinstance(layer, CoST) and layer.variant == variant and layer.strides == (1, 2, 2)
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_fit_and_unknown_batch_and_time():
    model = _small_model("b")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    rng = np.random.default_rng(4)
    x = rng.normal(size=(8, 4, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 3, size=(8,))
    before = [np.asarray(w).copy() for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    changed = [
        not np.array_equal(b, np.asarray(w)) for b, w in zip(before, model.trainable_weights, strict=True)
    ]
    assert all(changed)
    fn = tf.function(model, input_signature=[tf.TensorSpec((None, None, 8, 8, 3), tf.float32)])
    for n, t in ((1, 3), (3, 6)):
        assert tuple(fn(tf.zeros((n, t, 8, 8, 3))).shape) == (n, 3)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("variant", ["a", "b"])
def test_mixed_precision(policy, variant):
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 4, 6, 6, 3)).astype("float32")
    ref_layer = CoST(4, variant=variant)
    ref_layer.build(x.shape)
    _randomize(ref_layer, rng)
    layer = CoST(4, variant=variant, dtype=policy)
    layer.build(x.shape)
    layer.set_weights(ref_layer.get_weights())
    assert all(w.dtype == "float32" for w in layer.weights)
    y = layer(x)
    assert y.dtype == policy.split("_")[1]
    tol = 2e-2 if policy == "mixed_float16" else 6e-2
    assert _rel(tf.cast(y, tf.float32), np.asarray(ref_layer(x), np.float64)) < tol


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(filters=4, variant="c"), "Received: variant='c'"),
        (dict(filters=0), "Received: filters=0"),
        (dict(filters=4, strides=(1, 2)), r"Received: strides=\(1, 2\)"),
        (dict(filters=4, strides=0), "Received: strides=0"),
        (dict(filters=4, strides="x"), "Received: strides=x"),
        (dict(filters=4, implementation="winograd"), "Received: implementation='winograd'"),
        (dict(filters=4, variant="b", implementation="fused"), "Received: implementation='fused'"),
        (dict(filters=4, implementation="sparse", strides=2), "Received: strides=2"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CoST(**kwargs)


def test_wrong_rank():
    with pytest.raises(ValueError, match=r"rank 5.*Received: input_shape=\(2, 8, 8, 3\)"):
        CoST(4).build((2, 8, 8, 3))
    layer = CoST(4)
    layer(np.zeros((1, 2, 4, 4, 3), "float32"))
    with pytest.raises(ValueError, match="ndim=5|expected ndim"):
        layer(np.zeros((1, 4, 4, 3), "float32"))


_ONNX_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, keras, tensorflow as tf, tf2onnx, onnxruntime as ort
    import cost_tf  # registers CoST for load_model
    model = keras.models.load_model(sys.argv[1])
    x = np.load(sys.argv[2])
    spec = [tf.TensorSpec((None, None) + x.shape[2:], tf.float32, name="clip")]
    fn = tf.function(lambda clip: model(clip, training=False), input_signature=spec)
    proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=17)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.save(sys.argv[3], out)
    print(json.dumps({"ops": sorted({n.op_type for n in proto.graph.node})}))
    """
)


@pytest.mark.parametrize(
    "variant,implementation",
    [
        ("a", "frames"),
        ("a", "views"),
        ("a", "fused"),
        ("a", "sparse"),
        ("a", "flat"),
        ("b", "frames"),
        ("b", "views"),
        ("b", "flat"),
    ],
)
def test_tf2onnx_matches_keras(variant, implementation, tmp_path):
    # In a subprocess: a converter crash (grappler CHECK failure) kills the whole process.
    inp = keras.Input((None, 8, 8, 3), name="clip")
    x = CoST(4, variant=variant, use_bias=True, implementation=implementation)(inp)
    x = CoST(4, variant=variant, implementation=implementation)(keras.layers.ReLU()(x))
    model = keras.Model(inp, x)
    rng = np.random.default_rng(6)
    for layer in model.layers:
        if isinstance(layer, CoST):
            _randomize(layer, rng)
    clip = rng.normal(size=(2, 4, 8, 8, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", clip)
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            _ONNX_SCRIPT,
            str(tmp_path / "m.keras"),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npy"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ops_used = json.loads(proc.stdout.strip().splitlines()[-1])["ops"]
    assert "Conv" in ops_used
    assert _rel(np.load(tmp_path / "y.npy"), np.asarray(model(clip), np.float64)) < 1e-5


# ---- padding="symmetric": the authors' PyTorch padding (1, 1) on every axis --------------------------------


def ref_views_symmetric(x, w, strides):
    """The three view outputs with (1, 1) zero padding on T, H and W, by explicit sums over 9 taps (float64)."""
    x = x.astype(np.float64)
    w = w.astype(np.float64)
    xp = np.pad(x, [(0, 0), (1, 1), (1, 1), (1, 1), (0, 0)])
    out = [
        (size - 1) // s + 1 for size, s in zip(x.shape[1:4], strides, strict=True)
    ]  # floor((size + 2 - 3) / s) + 1
    outs = []
    for view in ("hw", "tw", "th"):
        acc = np.zeros((x.shape[0], *out, w.shape[-1]))
        for i in range(3):
            for j in range(3):
                dt, dh, dw = {"hw": (1, i, j), "tw": (i, 1, j), "th": (i, j, 1)}[view]
                window = xp[:, dt :: strides[0], dh :: strides[1], dw :: strides[2]][
                    :, : out[0], : out[1], : out[2]
                ]
                acc += window @ w[i, j]
        outs.append(acc)
    return outs


def ref_cost_symmetric(x, layer):
    views = ref_views_symmetric(x, np.asarray(layer.kernel), layer.strides)
    if layer.variant == "a":
        alpha = np.asarray(layer.alpha, np.float64)
        a = np.exp(alpha) / np.exp(alpha).sum(axis=0)
        y = sum(a[i] * v for i, v in enumerate(views))
    else:
        a = ref_b_coefficients(
            views, np.asarray(layer.view_dense, np.float64), np.asarray(layer.view_mix, np.float64)
        )
        y = sum(a[:, i, None, None, None, :] * v for i, v in enumerate(views))
    return y + np.asarray(layer.bias) if layer.use_bias else y


@pytest.mark.parametrize("variant,implementation", CASES)
@pytest.mark.parametrize("strides", [1, (1, 2, 2), 2])
@pytest.mark.parametrize("shape", [(2, 5, 7, 9, 3), (2, 4, 8, 6, 3)], ids=["odd", "even"])
@pytest.mark.parametrize("training", [False, True])
def test_symmetric_padding_matches_numpy_reference(variant, implementation, strides, shape, training):
    if implementation == "sparse" and strides != 1:
        # 'sparse' has no strided form: the case is the error, not a result.
        with pytest.raises(ValueError, match=r"implementation='sparse' needs strides 1.*Received: strides="):
            CoST(5, variant=variant, strides=strides, implementation=implementation, padding="symmetric")
        return
    rng = np.random.default_rng(7)
    layer = CoST(
        5, variant=variant, strides=strides, use_bias=True, implementation=implementation, padding="symmetric"
    )
    x = rng.normal(size=shape).astype("float32")
    layer.build(x.shape)
    _randomize(layer, rng)
    y = layer(x, training=training)
    ref = ref_cost_symmetric(x, layer)
    assert tuple(y.shape) == ref.shape == layer.compute_output_shape(x.shape)
    assert _rel(y, ref) < 1e-5
    # TF 'SAME' is the other reference: equal at stride 1 and on odd sizes, a shifted grid otherwise.
    same = ref_cost(x, layer)
    assert same.shape == ref.shape
    if strides == 1 or shape[1] % 2 == 1:
        np.testing.assert_allclose(same, ref, rtol=1e-9, atol=1e-9)
    else:
        assert _rel(same, ref) > 1e-2


def test_symmetric_padding_config_and_errors(tmp_path):
    layer = CoST(4, variant="b", strides=(1, 2, 2), padding="symmetric")
    assert layer.get_config()["padding"] == "symmetric"
    assert CoST.from_config(layer.get_config()).padding == "symmetric"
    assert CoST(4).padding == "same" and CoST(4).get_config()["padding"] == "same"
    with pytest.raises(ValueError, match="Received: padding='valid'"):
        CoST(4, padding="valid")
    # Saved and loaded with the padding (a strided even-size layer, where the two paddings differ).
    inp = keras.Input((4, 8, 8, 3), name="clip")
    model = keras.Model(inp, CoST(4, strides=(1, 2, 2), use_bias=True, padding="symmetric", name="cost")(inp))
    _randomize(model.get_layer("cost"), np.random.default_rng(8))
    x = np.random.default_rng(9).normal(size=(2, 4, 8, 8, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    restored = keras.saving.load_model(tmp_path / "m.keras")
    assert restored.get_layer("cost").padding == "symmetric"
    np.testing.assert_allclose(np.asarray(restored(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    assert _rel(restored(x), ref_cost_symmetric(x, model.get_layer("cost"))) < 1e-5
