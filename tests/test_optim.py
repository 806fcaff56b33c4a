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


# -- the coefficient logits' learning rate --------------------------------------------------------------------


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_alpha_lr_multiplier_scales_only_the_cost_a_coefficient_step(momentum):
    """Two SGD steps with the same gradients: alpha moves `multiplier` times as far, every other variable alike
    (kernels with coupled decay through the momentum, as torch's param-group lr would do); float32 steps."""
    model = _small_model()
    grads = [
        np.random.default_rng(i).normal(size=v.shape).astype("float32")
        for i, v in enumerate(model.trainable_variables)
    ]
    start = [v.numpy() for v in model.trainable_variables]
    moved = {}
    for multiplier in (1.0, 30.0):
        for v, w in zip(model.trainable_variables, start, strict=True):
            v.assign(w)
        optimizer = optim.build_optimizer(
            model, 0.01, momentum=momentum, weight_decay=1e-2, clipnorm=None, alpha_lr_multiplier=multiplier
        )
        for _ in range(2):
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        moved[multiplier] = {
            v.path: v.numpy().astype(np.float64) - w
            for v, w in zip(model.trainable_variables, start, strict=True)
        }
    for path, delta in moved[1.0].items():
        assert np.abs(delta).max() > 0, path
        expected = 30.0 * delta if path == "cost_a/alpha" else delta
        np.testing.assert_allclose(moved[30.0][path], expected, rtol=1e-5, atol=1e-5, err_msg=path)
    assert [v.path for v in model.trainable_variables if optim.is_alpha(v)] == ["cost_a/alpha"]


def test_alpha_lr_multiplier_must_be_positive():
    optimizer = optim.build_optimizer(_small_model(), 0.1)
    with pytest.raises(ValueError, match="Received: multiplier=0"):
        optimizer.scale_learning_rate([], 0)


# -- gradient accumulation ------------------------------------------------------------------------------------


def _no_bn_model():
    """Conv3D -> CoST(b) -> pool -> Dense, no BatchNorm: a step depends only on the batch's mean gradient."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((2, 4, 4, 2))
    x = keras.layers.Conv3D(3, (1, 3, 3), padding="same", activation="relu", name="conv")(inputs)
    x = CoST(3, variant="b", name="cost_b")(x)
    x = keras.layers.GlobalAveragePooling3D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, name="logits")(x))


def _fit(accumulate_steps, x, y, batch_size, momentum=0.0, model=None, callbacks=()):
    """Trains a fresh (or the given) _no_bn_model on (x, y) in order: lr 0.3 per 64 clips at the effective
    batch, a 2-update-per-epoch step schedule x0.5 after epoch 1, coupled decay, an active clip."""
    model = model or _no_bn_model()
    effective = batch_size * accumulate_steps
    schedule = optim.build_schedule(
        optim.scaled_learning_rate(0.3 * 64, effective), 2, 2, "step", lr_steps=(1,), lr_decay=0.5
    )
    model.compile(
        optimizer=optim.build_optimizer(
            model,
            schedule,
            momentum=momentum,
            weight_decay=0.05,
            clipnorm=0.5,
            accumulate_steps=accumulate_steps,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0, callbacks=list(callbacks))
    return model


def _data(n):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 2, 4, 4, 2)).astype("float32"), rng.integers(0, 3, n)


def test_accumulating_k_batches_is_one_step_on_the_k_times_batch():
    """SGD without momentum, 3 updates of 8 clips (the lr schedule decays before the 3rd): 4 batches of 2
    accumulated per update give the weights and the learning rate of 1 batch of 8 per update."""
    x, y = _data(24)
    big = _fit(1, x, y, batch_size=8)
    small = _fit(4, x, y, batch_size=2)
    assert small.optimizer.gradient_accumulation_steps == 4
    assert int(small.optimizer.iterations) == int(big.optimizer.iterations) == 3  # updates, not batches
    assert float(small.optimizer.learning_rate) == pytest.approx(float(big.optimizer.learning_rate))
    assert float(big.optimizer.learning_rate) == pytest.approx(0.3 * 8 * 0.5)  # decayed at update 2
    moved = max(
        float(np.abs(a - b).max())
        for a, b in zip(big.get_weights(), _no_bn_model().get_weights(), strict=True)
    )
    assert moved > 0.05
    for a, b in zip(small.get_weights(), big.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_accumulation_resumes_exactly_from_a_backup_between_micro_batches(tmp_path):
    """With momentum 0.9: a backup (cost_tf.checkpoint) after 6 batches of 2 (1 update + 2 accumulated
    batches) restored into a fresh model and optimizer, then the last 6 batches: the same weights and
    momentum as 3 updates of 8 without interruption."""
    from cost_tf.checkpoint import AtomicBackupAndRestore

    x, y = _data(24)
    big = _fit(1, x, y, batch_size=8, momentum=0.9)
    backup_dir = str(tmp_path / "backup")
    first = _fit(
        4, x[:12], y[:12], batch_size=2, momentum=0.9, callbacks=[AtomicBackupAndRestore(backup_dir)]
    )
    assert int(first.optimizer._iterations) == 6 and int(first.optimizer.iterations) == 1
    accumulated = [a.numpy() for a in first.optimizer._accumulated_gradients]
    assert max(float(np.abs(a).max()) for a in accumulated) > 0  # killed with gradients pending

    model = _no_bn_model()
    restore = AtomicBackupAndRestore(backup_dir)
    model.compile(
        optimizer=optim.build_optimizer(
            model,
            optim.build_schedule(
                optim.scaled_learning_rate(0.3 * 64, 8), 2, 2, "step", lr_steps=(1,), lr_decay=0.5
            ),
            momentum=0.9,
            weight_decay=0.05,
            clipnorm=0.5,
            accumulate_steps=4,
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    restore.set_model(model)
    restore.on_train_begin()
    assert int(model.optimizer._iterations) == 6
    for a, b in zip(model.optimizer._accumulated_gradients, accumulated, strict=True):
        np.testing.assert_array_equal(a.numpy(), b)
    model.fit(x[12:], y[12:], batch_size=2, initial_epoch=1, epochs=2, shuffle=False, verbose=0)
    assert int(model.optimizer.iterations) == 3
    for a, b in zip(model.get_weights(), big.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    for a, b in zip(model.optimizer.momentums, big.optimizer.momentums, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


_MIRRORED = """
import json, sys
import numpy as np, tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from tests import test_optim as t
x, y = t._data(16)
big = t._fit(1, x, y, batch_size=8, momentum=0.9)
with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    small = t._fit(2, x, y, batch_size=4, momentum=0.9)
copies = [[c.numpy() for c in a.value.values] for a in small.optimizer._accumulated_gradients]
print(json.dumps({
    "diff": max(float(np.abs(a - b).max()) for a, b in zip(small.get_weights(), big.get_weights())),
    "moved": max(float(np.abs(a - b).max()) for a, b in zip(big.get_weights(), t._no_bn_model().get_weights())),
    "replicas": len(copies[0]), "copies_equal": all(np.array_equal(c[0], c[1]) for c in copies),
    "updates": int(small.optimizer.iterations.numpy()),
}))
"""


def test_accumulation_under_mirrored_strategy_on_two_logical_cpus():
    """Keras 3.15's own accumulation fails under MirroredStrategy (merge_call inside a cond); ours: 2 batches
    of 4 split over 2 replicas per update = one step on 8 clips on one device; replicas' accumulators agree."""
    import json
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2")
    run = subprocess.run(
        [sys.executable, "-c", _MIRRORED], cwd=root, env=env, capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out["replicas"] == 2 and out["copies_equal"] and out["updates"] == 2
    assert out["moved"] > 0.05 and out["diff"] < 1e-5


def test_accumulate_steps_validation_and_config_round_trip():
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="accumulate_steps"):
            optim.build_optimizer(model, 0.1, accumulate_steps=bad)
    assert optim.build_optimizer(model, 0.1).gradient_accumulation_steps is None
    optimizer = optim.build_optimizer(model, 0.1, accumulate_steps=3)
    restored = optim.CoupledWeightDecaySGD.from_config(optimizer.get_config())
    assert restored.gradient_accumulation_steps == 3
