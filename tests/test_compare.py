"""The temporal benchmark's report: the table rows and the mean coefficients of a saved model."""

import types

import keras
import numpy as np
import pytest

from cost_tf import compare
from cost_tf.autotune import cpu_model
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


def _row(arch, seed, top1, best_top1, best_epoch, time_to_target_s, step_s, coefficients=None):
    return dict(
        arch=arch,
        seed=seed,
        top1=top1,
        top5=1.0,
        best_top1=best_top1,
        best_epoch=best_epoch,
        time_to_target_s=time_to_target_s,
        params=518456 if arch.startswith("cost") else 517736,
        step_s=step_s,
        train_s=400.0,
        epochs=8,
        steps=600,
        coefficients=coefficients,
        config=_config(),
    )


def test_results_markdown_table_over_seeds():
    rows = [
        _row("c2d_tiny", 0, 0.4042, 0.45, 3, None, 0.5),
        _row("c2d_tiny", 1, 0.5, 0.5, 2, None, 0.7),
        _row("cost_a_tiny", 0, 0.9, 0.925, 7, 120.0, 0.6, (0.6, 0.2, 0.2)),
        _row("cost_a_tiny", 1, 0.8, 0.85, 4, None, 0.62, (0.7, 0.1, 0.2)),
    ]
    text = compare.results_markdown(rows, "python -m cost_tf.compare")
    table = [line for line in text.splitlines() if line.startswith("| c2d") or line.startswith("| cost_a")]
    assert table == [
        "| c2d_tiny | 47.5 (45.0–50.0) % | 3, 2 | 45.2 (40.4–50.0) % | not reached (2 of 2 seeds) | 517,736 "
        "| 0.600 | — |",
        # best epoch 7 of 8 is within PLATEAU_EPOCHS of the end; one seed of two reached 90 %.
        "| cost_a_tiny | 88.8 (85.0–92.5) % | 7, 4 (late) | 85.0 (80.0–90.0) % | 120 (1 of 2 seeds) "
        "| 518,456 | 0.610 | 0.650 / 0.150 / 0.200 |",
    ]
    assert "8 epochs x 75 steps of 16 clips" in text and "1200 training clips" in text
    assert "once per seed (0, 1;" in text
    assert (
        f"CPU {cpu_model()}, TensorFlow" in text
    )  # the machine's own model name, as the benchmarks print it


def test_summarize_marks_plateaued_runs():
    rows = [_row("c3d_tiny", 0, 0.9, 0.95, 3, 50.0, 0.4), _row("c3d_tiny", 1, 0.9, 0.9, 3, 70.0, 0.4)]
    (summary,) = compare.summarize(rows)
    assert summary["plateaued"] and summary["time_to_target"] == "60 (50–70)"
    assert summary["best_epoch"] == "3, 3" and summary["seeds"] == 2


def test_training_clock_best_epoch_and_time_to_target():
    clock = compare.TrainingClock()
    for epoch, (batch_times, val_top1) in enumerate([((1.0, 2.0), 0.5), ((1.5,), 0.92), ((0.5,), 0.92)]):
        for t in batch_times:
            clock.times.append(t)  # what on_train_batch_end records
        clock.on_epoch_end(epoch, {"val_top1": val_top1, "loss": 1.0})
    assert clock.best() == (0.92, 2)  # the first epoch with the best value
    assert clock.time_to(0.9) == pytest.approx(4.5) and clock.time_to(0.95) is None
    assert compare.TrainingClock().best() == (None, None)


def test_training_clock_times_batches():
    clock = compare.TrainingClock()
    for batch in range(7):
        clock.on_train_batch_begin(batch)
        clock.on_train_batch_end(batch)
    assert len(clock.times) == 7 and all(t >= 0 for t in clock.times)
    clock.times[:] = [9.0] * 5 + [1.0, 3.0]
    assert clock.median() == 2.0  # the 5 tracing batches are skipped


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


def test_entries_with_train_settings():
    assert compare.parse_entry("c3d_tiny") == ("c3d_tiny", {})
    arch, overrides = compare.parse_entry("cost_a_tiny:alpha_lr_multiplier=30:flip=false:batch_size=8")
    assert arch == "cost_a_tiny" and overrides == {
        "alpha_lr_multiplier": 30.0,
        "flip": False,
        "batch_size": 8,
    }
    assert isinstance(overrides["alpha_lr_multiplier"], float) and isinstance(overrides["batch_size"], int)
    assert compare.run_dir("cost_a_tiny:alpha_lr_multiplier=30") == "cost_a_tiny_alpha_lr_multiplier30"
    with pytest.raises(ValueError, match="Received: 'cost_a_tiny:no_such_field=1'"):
        compare.parse_entry("cost_a_tiny:no_such_field=1")
    with pytest.raises(ValueError, match="other than model_dir"):
        compare.parse_entry("cost_a_tiny:seed=3")  # compare sets the seed
    with pytest.raises(ValueError, match="batch_size='x' is not of type int"):
        compare.parse_entry("cost_a_tiny:batch_size=x")
    with pytest.raises(ValueError, match="lr_steps is not a scalar train setting"):
        compare.parse_entry("cost_a_tiny:lr_steps=1,2")
    assert all(compare.parse_entry(entry) for entry in compare.ARCHS)
