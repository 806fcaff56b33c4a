"""cost_tf.loading: the one model loader (clear errors, every cost_tf class registered), resizing, config.json."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from cost_tf import loading, optim
from export import parity
from tests.test_parity import _small_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_load_model_round_trip_and_clear_errors(tmp_path):
    model = _small_model()
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = loading.load_model(path)
    x = parity.random_clip(2, 4, 8)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)

    with pytest.raises(FileNotFoundError, match="no such file: .*missing.keras"):
        loading.load_model(tmp_path / "missing.keras")
    weights = tmp_path / "m.weights.h5"
    model.save_weights(weights)
    with pytest.raises(ValueError, match=r"must be a \.keras file"):
        loading.load_model(weights)
    corrupt = tmp_path / "corrupt.keras"
    corrupt.write_bytes(path.read_bytes()[:200])  # a truncated zip
    with pytest.raises(ValueError, match="--model: cannot load the Keras model .*corrupt.keras"):
        loading.load_model(corrupt)


def test_a_model_saved_with_the_training_optimizer_loads_in_a_fresh_process(tmp_path):
    """cost_tf.train saves the compiled model: its .keras names CoupledWeightDecaySGD and the schedule, which a
    process that has not imported cost_tf.optim cannot deserialise unless the loader registers them."""
    model = _small_model()
    schedule = optim.build_schedule(0.1, 10, 2, "cosine", (), 0.1, 0.5)
    model.compile(
        optimizer=optim.build_optimizer(model, schedule, momentum=0.9, weight_decay=1e-4, clipnorm=40.0),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = parity.random_clip(2, 4, 8)
    model.train_on_batch(x, np.array([0, 2]))
    path = str(tmp_path / "trained.keras")
    model.save(path)
    with open(os.path.join(tmp_path, "clip.npy"), "wb") as f:
        np.save(f, x)
    script = (
        f"import numpy as np; from cost_tf.loading import load_model; m = load_model({path!r}); "
        f"import json; print(json.dumps(np.asarray(m(np.load({str(tmp_path / 'clip.npy')!r}))).tolist()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(outputs, np.asarray(model(x)), rtol=1e-5, atol=1e-6)


def test_resize_model_keeps_the_model_or_rebuilds_with_the_same_weights():
    from cost_tf.resnet import build_model

    model = build_model("c2d_tiny", num_classes=5, num_frames=4, input_size=32)
    assert loading.resize_model(model) is model and loading.resize_model(model, 4, 32) is model
    larger = loading.resize_model(model, num_frames=8, input_size=40)
    assert larger.input_shape == (None, 8, 40, 40, 3)
    for a, b in zip(larger.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="Cannot rebuild model 'tiny'"):
        loading.resize_model(
            keras.Sequential([keras.Input((4, 8, 8, 3)), keras.layers.Flatten()], name="tiny"), 8
        )


def test_training_config_beside_the_model(tmp_path):
    assert loading.training_config(str(tmp_path / "model.keras")) == {}
    with open(tmp_path / "config.json", "w") as f:
        json.dump({"dataset": "kinetics", "crop_size": 32}, f)
    assert loading.training_config(str(tmp_path / "model.keras")) == {"dataset": "kinetics", "crop_size": 32}
