"""cost_tf.fold: CoST(a) layers become plain Conv3D layers, outputs unchanged."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cost_tf.cost import CoST
from cost_tf.fold import AUTO_FORM, fold


def _model():
    inp = keras.Input((None, 10, 10, 3), name="clip")
    x = CoST(6, name="c1", use_bias=True)(inp)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU(name="relu1")(x)
    skip = x
    x = CoST(6, name="c2")(x)
    x = keras.layers.Add(name="add")([x, skip])
    x = CoST(8, strides=(1, 2, 2), name="c3")(x)
    x = CoST(8, variant="b", name="c4")(x)
    x = keras.layers.GlobalAveragePooling3D(name="pool")(x)
    return keras.Model(inp, keras.layers.Dense(5, name="head")(x))


@pytest.fixture(scope="module")
def model():
    m = _model()
    rng = np.random.default_rng(0)
    for w in m.weights:
        if "moving_variance" in w.path or "gamma" in w.path:
            w.assign(rng.uniform(0.5, 1.5, w.shape).astype("float32"))
        else:
            w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    return m


@pytest.mark.parametrize("form", ["merged", "sparse", "auto"])
def test_fold_is_exact(model, form):
    folded = fold(model, form=form)
    kinds = {layer.name: type(layer).__name__ for layer in folded.layers}
    assert not any(isinstance(layer, CoST) and layer.variant == "a" for layer in folded.layers)
    assert kinds["c4"] == "CoST"  # CoST(b) stays
    assert kinds["c3"] == "Conv3D"  # strided: always the merged kernel
    if (AUTO_FORM if form == "auto" else form) == "sparse":
        assert kinds["c1"] == "Add" and kinds["c1_hw"] == kinds["c1_tw"] == kinds["c1_th"] == "Conv3D"
        taps = sum(int(np.prod(folded.get_layer(f"c1_{v}").kernel.shape[:3])) for v in ("hw", "tw", "th"))
        assert taps == 19
    else:
        assert kinds["c1"] == "Conv3D" and tuple(folded.get_layer("c1").kernel.shape) == (3, 3, 3, 3, 6)
    # Parameters of the folded model are independent copies.
    assert folded.get_layer("head").kernel is not model.get_layer("head").kernel
    x = np.random.default_rng(1).normal(size=(2, 5, 10, 10, 3)).astype("float32")
    ref = np.asarray(model(x), np.float64)
    out = np.asarray(folded(x), np.float64)
    assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) < 1e-5
    fn = tf.function(folded, input_signature=[tf.TensorSpec((None, None, 10, 10, 3))])
    assert tuple(fn(tf.zeros((3, 7, 10, 10, 3))).shape) == (3, 5)


def test_merged_kernel_planes(model):
    # The merged kernel holds a_hw*w on t=1, a_tw*w on h=1, a_th*w on w=1, and zero at the 8 corners.
    layer = model.get_layer("c2")
    k3 = np.asarray(fold(model, "merged").get_layer("c2").kernel)
    w = np.asarray(layer.kernel)
    a = np.asarray(layer.coefficients())
    expect = np.zeros_like(k3)
    expect[1] += a[0] * w
    expect[:, 1] += a[1] * w
    expect[:, :, 1] += a[2] * w
    np.testing.assert_allclose(k3, expect, rtol=1e-6, atol=1e-7)
    corners = k3[[0, 0, 0, 0, 2, 2, 2, 2], [0, 0, 2, 2, 0, 0, 2, 2], [0, 2, 0, 2, 0, 2, 0, 2]]
    assert np.count_nonzero(corners) == 0


def test_fold_rejects_bad_arguments(model):
    with pytest.raises(ValueError, match="Received: form='dense'"):
        fold(model, form="dense")
    with pytest.raises(ValueError, match="functional keras.Model"):
        fold(CoST(4))


@pytest.mark.parametrize("form", ["merged", "sparse"])
def test_fold_keeps_symmetric_padding(form):
    """A strided CoST(a) with padding="symmetric" (the authors' (1, 1)) folds to ZeroPadding3D + 'valid' Conv3D."""
    inp = keras.Input((4, 8, 8, 3), name="clip")  # even sizes at stride 2: where 'same' would pad (0, 1)
    x = CoST(4, strides=2, use_bias=True, padding="symmetric", name="strided")(inp)
    x = CoST(4, padding="symmetric", name="plain")(x)
    model = keras.Model(inp, x)
    rng = np.random.default_rng(3)
    for w in model.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    folded = fold(model, form=form)
    assert type(folded.get_layer("strided_pad")).__name__ == "ZeroPadding3D"
    assert folded.get_layer("strided").padding == "valid"
    x = rng.normal(size=(2, 4, 8, 8, 3)).astype("float32")
    ref = np.asarray(model(x), np.float64)
    assert np.max(np.abs(np.asarray(folded(x), np.float64) - ref)) / np.max(np.abs(ref)) < 1e-5
