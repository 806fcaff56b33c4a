"""The temporal benchmark's report: the table rows and the mean coefficients of a saved model."""

import types

import keras
import numpy as np
import pytest

from cost_tf import compare
from cost_tf.cost import CoST


def _config():
    return types.SimpleNamespace(
        synthetic_train=1200,
        synthetic_eval=240,
        epochs=8,
        batch_size=16,
        num_frames=8,
        frame_stride=2,
        crop_size=56,
        lr=0.05,
        lr_schedule="cosine",
        warmup_epochs=0.5,
        seed=0,
    )


def test_results_markdown_table():
    rows = [
        dict(
            arch="c2d_tiny",
            top1=0.4042,
            top5=0.9958,
            params=517736,
            step_s=0.5,
            train_s=300.4,
            epochs=8,
            steps=600,
            coefficients=None,
            config=_config(),
        ),
        dict(
            arch="cost_a_tiny",
            top1=0.5,
            top5=1.0,
            params=518456,
            step_s=0.61234,
            train_s=400.0,
            epochs=8,
            steps=600,
            coefficients=(0.668, 0.166, 0.1655),
            config=_config(),
        ),
    ]
    text = compare.results_markdown(rows, "python -m cost_tf.compare")
    table = [line for line in text.splitlines() if line.startswith("| c2d") or line.startswith("| cost_a")]
    assert table == [
        "| c2d_tiny | 40.4 % | 99.6 % | 517,736 | 0.500 | 300 | — |",
        "| cost_a_tiny | 50.0 % | 100.0 % | 518,456 | 0.612 | 400 | 0.668 / 0.166 / 0.166 |",
    ]
    assert "8 epochs x 75 steps of 16 clips" in text and "1200 training clips" in text


def test_mean_coefficients_of_saved_models(tmp_path):
    inp = keras.Input((4, 6, 6, 2), name="clip")
    first, second = CoST(3, name="first"), CoST(2, name="second")
    model = keras.Model(inp, second(first(inp)))
    first.alpha.assign(np.zeros((3, 3), np.float32))  # 1/3 each
    second.alpha.assign(np.array([[np.log(2.0)] * 2, [0.0] * 2, [0.0] * 2], np.float32))  # 1/2, 1/4, 1/4
    path = str(tmp_path / "a" / "model.keras")
    (tmp_path / "a").mkdir()
    model.save(path)
    got = compare.mean_coefficients(path, eval_pattern=None)
    assert got == pytest.approx(((1 / 3 + 1 / 2) / 2, (1 / 3 + 1 / 4) / 2, (1 / 3 + 1 / 4) / 2), abs=1e-6)
    assert (tmp_path / "a" / "coefficients" / "layers.png").stat().st_size > 0

    plain = keras.Model(inp, keras.layers.Conv3D(2, 3, name="conv")(inp))
    plain_path = str(tmp_path / "plain.keras")
    plain.save(plain_path)
    assert compare.mean_coefficients(plain_path, eval_pattern=None) is None
