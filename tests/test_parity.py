"""export.parity: the error measure, reshaping and folding for export."""

import keras
import numpy as np
import pytest

from cost_tf.cost import CoST
from cost_tf.resnet import build_model
from export import parity


def test_max_relative_error_and_check():
    ref = np.array([[1.0, -4.0], [2.0, 0.0]])
    out = ref + np.array([[0.0, 0.0], [0.0, -0.002]])
    assert parity.max_relative_error(out, ref) == pytest.approx(0.002 / 4.0)
    assert parity.max_relative_error(ref, ref) == 0.0
    assert parity.max_relative_error(ref * np.nan, ref) == float("inf")
    assert parity.check_parity(out, ref, "x", tolerance=1e-3) == pytest.approx(5e-4)
    with pytest.raises(parity.ParityError, match=r"my export: max relative error 0\.0005 exceeds"):
        parity.check_parity(out, ref, "my export", tolerance=1e-4)
    with pytest.raises(parity.ParityError, match=r"shapes differ: \(2,\) vs the reference \(2, 2\)"):
        parity.max_relative_error(ref[0], ref)


def test_random_clip():
    clip = parity.random_clip(2, 3, 8, seed=5)
    assert clip.shape == (2, 3, 8, 8, 3) and clip.dtype == np.float32
    np.testing.assert_array_equal(clip, parity.random_clip(2, 3, 8, seed=5))
    assert abs(float(clip.mean())) < 0.3 and 0.7 < float(clip.std()) < 1.3


def _small_model():
    inp = keras.Input((4, 8, 8, 3), name="clip")
    x = CoST(4, use_bias=True, name="cost")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling3D(name="pool")(x)
    return keras.Model(inp, keras.layers.Dense(3, name="logits")(x))


def test_with_input_shape_shares_weights():
    model = _small_model()
    same, frames, size = parity.with_input_shape(model)
    assert same is model and (frames, size) == (4, 8)
    any_t, frames, size = parity.with_input_shape(model, num_frames=0, crop_size=12)
    assert any_t.input_shape == (None, None, 12, 12, 3) and (frames, size) == (None, 12)
    assert any_t.get_layer("cost").kernel is model.get_layer("cost").kernel
    x = parity.random_clip(2, 4, 8)
    model.get_layer("cost").kernel.assign(model.get_layer("cost").kernel * 2.0)  # visible through both
    np.testing.assert_allclose(np.asarray(any_t.get_layer("cost")(x)), np.asarray(model.get_layer("cost")(x)))
    assert any_t(parity.random_clip(1, 7, 12)).shape == (1, 3)
    for kwargs, message in (({"num_frames": -1}, "num_frames"), ({"crop_size": 0}, "crop_size")):
        with pytest.raises(ValueError, match=message):
            parity.with_input_shape(model, **kwargs)
    inp = keras.Input((None, None, None, 3))
    free = keras.Model(inp, keras.layers.GlobalAveragePooling3D()(inp))
    with pytest.raises(ValueError, match="pass --crop_size"):
        parity.with_input_shape(free)


def test_fold_for_inference_leaves_plain_convolutions():
    rng = np.random.default_rng(0)
    model = build_model("cost_a_tiny", num_classes=4, num_frames=4, input_size=32)
    for w in model.weights:
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
        elif "moving_mean" in w.path:
            w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
    assert "FramewiseConv3D" in {type(layer).__name__ for layer in model.layers}
    folded = parity.fold_for_inference(model)
    kinds = {type(layer).__name__ for layer in folded.layers}
    assert not kinds & {"CoST", "BatchNormalization", "FramewiseConv3D", "FramewiseMaxPooling3D"}
    assert {"Conv3D", "MaxPooling3D"} <= kinds
    x = parity.random_clip(2, 4, 32)
    assert parity.max_relative_error(folded(x), model(x, training=False)) < 1e-5
    plain = parity.plain_convolutions(model)  # unfolded, only the conv class changes
    assert [type(layer).__name__ for layer in plain.layers].count("CoST") == 4
    assert not {"FramewiseConv3D", "FramewiseMaxPooling3D"} & {type(layer).__name__ for layer in plain.layers}
    assert parity.max_relative_error(plain(x, training=False), model(x, training=False)) < 1e-5
    assert parity.plain_convolutions(plain) is plain


def test_reference_logits_one_clip_at_a_time_matches_the_batch():
    """The exporters' Keras reference, computed clip by clip, equals the batched forward pass."""
    model = build_model("cost_a_tiny", num_classes=3, num_frames=4, input_size=32)
    clip = parity.random_clip(3, 4, 32, seed=2)
    out = parity.reference_logits(model, clip)
    assert out.shape == (3, 3)
    np.testing.assert_allclose(out, np.asarray(model(clip, training=False)), rtol=1e-5, atol=1e-6)
    parity.release_memory()  # callable again, returns nothing
