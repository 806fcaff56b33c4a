"""export.bn_fold: BatchNorm moves into the conv before it only where that is exact; outputs unchanged."""

import keras
import numpy as np
import pytest

from cost_tf.fold import fold as fold_cost
from cost_tf.resnet import build_model
from export.bn_fold import fold_batchnorm, foldable_pairs


def _randomize(model, seed=0):
    """Random weights and BatchNorm statistics, so folding is far from the identity."""
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "moving_variance" in w.path or "gamma" in w.path:
            w.assign(rng.uniform(0.3, 2.0, w.shape).astype("float32"))
        elif "moving_mean" in w.path or "beta" in w.path or "bias" in w.path:
            w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
        else:
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    return model


def _graph():
    """Every case: foldable pairs and the ones that must stay (nonlinearity, shared output, wrong axis...)."""
    layers = keras.layers
    inp = keras.Input((4, 6, 6, 3), name="clip")
    a = layers.Conv3D(5, 3, padding="same", name="a_conv")(inp)  # with bias
    a = layers.BatchNormalization(name="a_bn")(a)
    a = layers.ReLU(name="a_relu")(a)
    b = layers.Conv3D(5, (1, 3, 3), padding="same", use_bias=False, name="b_conv")(a)  # no bias
    b = layers.BatchNormalization(epsilon=1e-3, name="b_bn")(b)
    c = layers.Conv3D(5, 1, activation="relu", name="c_conv")(b)  # nonlinearity in between: stays
    c = layers.BatchNormalization(name="c_bn")(c)
    d = layers.Conv3D(5, 1, name="d_conv")(c)  # output also read by the Add: stays
    d_bn = layers.BatchNormalization(name="d_bn")(d)
    d = layers.Add(name="d_add")([d, d_bn])
    e = layers.Conv3D(5, 1, name="e_conv")(d)  # BatchNorm over another axis: stays
    e = layers.BatchNormalization(axis=1, name="e_bn")(e)
    f = layers.Conv3D(5, 1, name="f_conv")(e)
    f = layers.BatchNormalization(center=False, scale=False, name="f_bn")(f)  # no gamma/beta: folds
    g = layers.Reshape((4 * 6 * 6, 5), name="g_flat")(f)
    g = layers.Conv1D(4, 1, name="g_conv")(g)  # other ranks fold too
    g = layers.BatchNormalization(name="g_bn")(g)
    pooled = layers.GlobalAveragePooling1D(name="pool")(g)
    h = layers.Dense(3, name="h_dense")(pooled)  # Dense is not a conv: stays
    h = layers.BatchNormalization(name="h_bn")(h)
    return _randomize(keras.Model(inp, h))


@pytest.fixture(scope="module")
def model():
    return _graph()


def test_only_exact_pairs_are_found(model):
    assert foldable_pairs(model) == [
        ("a_conv", "a_bn"),
        ("b_conv", "b_bn"),
        ("f_conv", "f_bn"),
        ("g_conv", "g_bn"),
    ]


def test_folded_network_matches_unfolded(model):
    folded = fold_batchnorm(model)
    names = {layer.name for layer in folded.layers}
    assert not names & {"a_bn", "b_bn", "f_bn", "g_bn"}
    assert {"c_bn", "d_bn", "e_bn", "h_bn"} <= names
    assert folded.get_layer("b_conv").use_bias  # gained the folded shift
    x = np.random.default_rng(1).normal(size=(3, 4, 6, 6, 3)).astype("float32")
    ref = np.asarray(model(x, training=False), np.float64)
    out = np.asarray(folded(x, training=False), np.float64)
    assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) < 1e-5
    # Copies, not shared variables: changing the folded model leaves the source alone.
    assert folded.get_layer("c_conv").kernel is not model.get_layer("c_conv").kernel


def test_folded_kernel_formula(model):
    """kernel * gamma / sqrt(var + eps) and (bias - mean) * gamma / sqrt(var + eps) + beta, in float64."""
    folded = fold_batchnorm(model)
    conv, bn = model.get_layer("a_conv"), model.get_layer("a_bn")
    scale = np.asarray(bn.gamma, np.float64) / np.sqrt(
        np.asarray(bn.moving_variance, np.float64) + bn.epsilon
    )
    want_kernel = np.asarray(conv.kernel, np.float64) * scale
    want_bias = (
        np.asarray(conv.bias, np.float64) - np.asarray(bn.moving_mean, np.float64)
    ) * scale + np.asarray(bn.beta, np.float64)
    np.testing.assert_allclose(
        np.asarray(folded.get_layer("a_conv").kernel), want_kernel, rtol=1e-6, atol=1e-7
    )
    np.testing.assert_allclose(np.asarray(folded.get_layer("a_conv").bias), want_bias, rtol=1e-6, atol=1e-6)
    # f_bn has no gamma/beta: only the moving statistics fold.
    f_conv, f_bn = model.get_layer("f_conv"), model.get_layer("f_bn")
    f_scale = 1.0 / np.sqrt(np.asarray(f_bn.moving_variance, np.float64) + f_bn.epsilon)
    np.testing.assert_allclose(
        np.asarray(folded.get_layer("f_conv").bias),
        (np.asarray(f_conv.bias) - np.asarray(f_bn.moving_mean)) * f_scale,
        rtol=1e-5,
        atol=1e-6,
    )


def test_cost_b_network_keeps_the_batchnorm_after_cost_b():
    model = _randomize(build_model("cost_b_tiny", num_classes=4, num_frames=4, input_size=32), seed=2)
    cost_folded = fold_cost(model)
    folded = fold_batchnorm(cost_folded)
    bns = [layer.name for layer in folded.layers if isinstance(layer, keras.layers.BatchNormalization)]
    # CoST(b)'s coefficients come from the unscaled views, so the BatchNorm after it cannot move in.
    assert bns == [f"conv{i}_block1_2_bn" for i in range(2, 6)]
    x = np.random.default_rng(3).normal(size=(2, 4, 32, 32, 3)).astype("float32")
    ref = np.asarray(model(x, training=False), np.float64)
    out = np.asarray(folded(x, training=False), np.float64)
    assert np.max(np.abs(out - ref)) / np.max(np.abs(ref)) < 1e-5


def test_nothing_to_fold_returns_the_model_and_bad_input_is_rejected():
    inp = keras.Input((4,))
    plain = keras.Model(inp, keras.layers.Dense(2)(inp))
    assert fold_batchnorm(plain) is plain

    class Sub(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="functional keras.Model"):
        fold_batchnorm(Sub())
