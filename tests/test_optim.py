"""cost_tf.optim: schedules against closed forms, weight decay only on kernels (torch-style), clipping."""

import math

import keras
import numpy as np
import pytest

from cost_tf import optim
from cost_tf.cost import CoST


def _lr(schedule, step):
    return float(schedule(step)) if callable(schedule) else float(schedule)


def test_scaled_learning_rate():
    assert optim.scaled_learning_rate(0.01, 64) == pytest.approx(0.01)
    assert optim.scaled_learning_rate(0.01, 8) == pytest.approx(0.00125)
    assert optim.scaled_learning_rate(0.01, 256) == pytest.approx(0.04)


def test_step_schedule_decays_at_the_first_step_of_each_lr_step_epoch():
    schedule = optim.build_schedule(1.0, steps_per_epoch=10, epochs=6, schedule="step", lr_steps=(2, 4))
    expected = {0: 1.0, 19: 1.0, 20: 0.1, 39: 0.1, 40: 0.01, 59: 0.01}
    for step, value in expected.items():
        assert _lr(schedule, step) == pytest.approx(value, rel=1e-6), step


def test_step_schedule_with_linear_warmup():
    schedule = optim.build_schedule(
        2.0, steps_per_epoch=10, epochs=4, schedule="step", lr_steps=(3,), warmup_epochs=1
    )
    for step in (0, 3, 5, 9, 10, 29, 30):
        ramp = min(optim.WARMUP_START + (1 - optim.WARMUP_START) * step / 10, 1.0)
        base = 2.0 if step < 30 else 0.2
        assert _lr(schedule, step) == pytest.approx(base * ramp, rel=1e-6), step


def test_cosine_schedule_closed_form():
    total = 40
    schedule = optim.build_schedule(0.5, steps_per_epoch=10, epochs=4, schedule="cosine")
    for step in (0, 7, 20, 33, 40):
        assert _lr(schedule, step) == pytest.approx(0.25 * (1 + math.cos(math.pi * step / total)), abs=1e-7)


def test_cosine_schedule_with_warmup():
    schedule = optim.build_schedule(1.0, steps_per_epoch=10, epochs=4, schedule="cosine", warmup_epochs=1)
    assert _lr(schedule, 0) == pytest.approx(optim.WARMUP_START)
    assert _lr(schedule, 5) == pytest.approx(optim.WARMUP_START + (1 - optim.WARMUP_START) * 0.5)
    assert _lr(schedule, 10) == pytest.approx(1.0)
    assert _lr(schedule, 25) == pytest.approx(0.5 * (1 + math.cos(math.pi * 15 / 30)), abs=1e-6)
    assert _lr(schedule, 40) == pytest.approx(0.0, abs=1e-7)


def test_warmup_schedule_serialization_round_trip():
    schedule = optim.build_schedule(1.0, steps_per_epoch=5, epochs=3, lr_steps=(2,), warmup_epochs=1)
    assert isinstance(schedule, optim.Warmup)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert isinstance(restored, optim.Warmup)
    for step in range(15):
        assert _lr(restored, step) == pytest.approx(_lr(schedule, step), rel=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(schedule="linear"), "schedule must be one of"),
        (dict(lr_steps=(3, 2)), "lr_steps"),
        (dict(lr_steps=(6,)), "lr_steps"),
        (dict(warmup_epochs=6), "warmup_epochs"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        optim.build_schedule(0.1, steps_per_epoch=10, epochs=6, **kwargs)


def _small_model():
    """Conv3D (+bias) -> BN -> CoST(a) (+bias) -> CoST(b) -> pool -> Dense: every kind of variable."""
    inputs = keras.Input((4, 8, 8, 3))
    x = keras.layers.Conv3D(4, (1, 3, 3), padding="same", name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = CoST(4, variant="a", use_bias=True, name="cost_a")(x)
    x = CoST(4, variant="b", name="cost_b")(x)
    x = keras.layers.GlobalAveragePooling3D()(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs)


def test_only_kernels_are_decayed():
    model = _small_model()
    optimizer = optim.build_optimizer(model, 0.1)
    decayed = sorted(v.path for v in model.trainable_variables if optimizer._use_weight_decay(v))
    assert decayed == ["conv/kernel", "cost_a/kernel", "cost_b/kernel", "logits/kernel"]
    not_decayed = sorted(v.path for v in model.trainable_variables if not optimizer._use_weight_decay(v))
    assert not_decayed == [
        "bn/beta",
        "bn/gamma",
        "conv/bias",
        "cost_a/alpha",
        "cost_a/bias",
        "cost_b/view_dense",
        "cost_b/view_mix",
        "logits/bias",
    ]


def test_zero_gradient_steps_change_only_kernels_by_coupled_decay():
    """Two SGD steps with zero gradients: kernels follow torch's L2-through-momentum update, nothing else moves."""
    lr, wd, momentum = 0.5, 0.01, 0.9
    model = _small_model()
    optimizer = optim.build_optimizer(model, lr, momentum=momentum, weight_decay=wd, clipnorm=40.0)
    variables = model.trainable_variables
    w0 = [v.numpy().astype(np.float64) for v in variables]
    zeros = [np.zeros(v.shape, "float32") for v in variables]
    optimizer.apply_gradients(zip(zeros, variables, strict=True))
    w1 = [v.numpy().astype(np.float64) for v in variables]
    optimizer.apply_gradients(zip(zeros, variables, strict=True))
    w2 = [v.numpy().astype(np.float64) for v in variables]
    for v, a0, a1, a2 in zip(variables, w0, w1, w2, strict=True):
        if v.path.endswith("/kernel"):
            # torch SGD: buf = momentum * buf + (g + wd * w); w -= lr * buf.
            buf1 = wd * a0
            ref1 = a0 - lr * buf1
            ref2 = ref1 - lr * (momentum * buf1 + wd * ref1)
            np.testing.assert_allclose(a1, ref1, rtol=1e-6, atol=1e-9, err_msg=v.path)
            np.testing.assert_allclose(a2, ref2, rtol=1e-6, atol=1e-9, err_msg=v.path)
            assert np.abs(a1 - a0).max() > 0, v.path
        else:
            np.testing.assert_array_equal(a1, a0, err_msg=v.path)
            np.testing.assert_array_equal(a2, a0, err_msg=v.path)


def test_gradients_are_clipped_to_the_global_norm():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2, use_bias=True)])
    optimizer = optim.build_optimizer(model, 1.0, momentum=0.0, weight_decay=0.0, clipnorm=40.0)
    kernel, bias = model.trainable_variables
    k0, b0 = kernel.numpy(), bias.numpy()
    g_kernel = np.full((2, 2), 30.0, "float32")  # norm 60
    g_bias = np.array([0.0, 80.0], "float32")  # global norm sqrt(60^2 + 80^2) = 100
    optimizer.apply_gradients([(g_kernel, kernel), (g_bias, bias)])
    np.testing.assert_allclose(kernel.numpy(), k0 - g_kernel * 0.4, rtol=1e-6)
    np.testing.assert_allclose(bias.numpy(), b0 - g_bias * 0.4, rtol=1e-6)


def test_optimizer_rejects_keras_decoupled_decay_and_unbuilt_models():
    with pytest.raises(ValueError, match="coupled_weight_decay"):
        optim.CoupledWeightDecaySGD(weight_decay=1e-4)
    unbuilt = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="Build the model"):
        optim.build_optimizer(unbuilt, 0.1)


def test_optimizer_config_round_trip():
    optimizer = optim.CoupledWeightDecaySGD(
        coupled_weight_decay=3e-4, learning_rate=0.2, momentum=0.9, global_clipnorm=40.0
    )
    restored = optim.CoupledWeightDecaySGD.from_config(optimizer.get_config())
    assert restored.coupled_weight_decay == pytest.approx(3e-4)
    assert restored.momentum == pytest.approx(0.9)
    assert restored.global_clipnorm == pytest.approx(40.0)
