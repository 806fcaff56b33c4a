"""cost_tf.checkpoint: crash-safe BackupAndRestore (consistent pair, mid-epoch offsets, no NaN
backups) and a ModelCheckpoint that keeps its best value across restarts."""

import json
import os

import keras
import numpy as np
import pytest

from cost_tf import checkpoint
from pipelines import files


def test_read_backup_state(tmp_path):
    assert checkpoint.read_backup_state(str(tmp_path)) is None
    files.write_json(
        str(tmp_path / checkpoint.STATE_FILE), {"epoch": 3, "step": 7, "weights": "gone.weights.h5"}
    )
    with pytest.raises(ValueError, match="gone.weights.h5, which does not exist"):
        checkpoint.read_backup_state(str(tmp_path))


def _model(seed):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(4, activation="relu"), keras.layers.Dense(2)]
    )
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    return model


class _Spy(checkpoint.AtomicBackupAndRestore):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.saved = []

    def _save(self, epoch, step):
        self.saved.append((epoch, step))
        super()._save(epoch, step)


def test_backup_saves_consistent_pairs_and_restores_them(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(40, 3)), np.zeros((40, 2))
    model = _model(0)
    backup = _Spy(str(tmp_path), save_freq=2)
    model.fit(x, y, batch_size=8, epochs=2, callbacks=[backup], verbose=0)  # 5 batches per epoch
    # Every 2nd batch except the epoch's last (the epoch-end save follows), and every epoch end.
    assert backup.saved == [(0, 2), (0, 4), (1, 0), (1, 2), (1, 4), (2, 0)]
    assert sorted(os.listdir(tmp_path)) == ["ckpt-e00002-s00000000.weights.h5", checkpoint.STATE_FILE]
    state = checkpoint.read_backup_state(str(tmp_path))
    assert (state["epoch"], state["step"]) == (2, 0)

    # Debris a crash could leave: a half-written temporary file and an unreferenced newer-looking file.
    (tmp_path / ".tmp-999.weights.h5").write_bytes(b"\x89HDF\r\n half")
    (tmp_path / "ckpt-e00009-s00000001.weights.h5").write_bytes(b"garbage")
    restored = _model(1)
    assert not all(
        np.array_equal(a, b) for a, b in zip(restored.get_weights(), model.get_weights(), strict=True)
    )
    resume = checkpoint.AtomicBackupAndRestore(str(tmp_path), save_freq=2)
    resume.set_model(restored)
    resume.on_train_begin()
    assert resume.restored == (2, 0) and restored._initial_epoch == 2
    for a, b in zip(restored.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(restored.optimizer.iterations.numpy()) == 10  # optimizer state travels with the weights


def test_backup_step_offset_and_nan_guard(tmp_path):
    x, y = np.random.default_rng(0).normal(size=(16, 3)), np.zeros((16, 2))
    model = _model(0)
    backup = _Spy(str(tmp_path), save_freq=2)
    backup.step_offset = 3  # this fit finishes an epoch whose first 3 batches ran before a restart
    model.fit(x, y, batch_size=8, epochs=1, callbacks=[backup], verbose=0)  # batches 4 and 5 of the epoch
    assert backup.saved == [(0, 4), (1, 0)]
    backup.saved.clear()
    backup.on_train_batch_end(0, {"loss": float("nan")})
    backup.on_epoch_end(1, {"loss": float("inf")})
    assert backup.saved == []


def test_model_checkpoint_keeps_the_best_across_restarts(tmp_path):
    model = _model(0)
    path = str(tmp_path / "best.keras")

    def checkpoint_callback():
        callback = checkpoint.AtomicModelCheckpoint(path, monitor="val_top1", mode="max", save_best_only=True)
        callback.set_model(model)
        return callback

    def best():
        with open(path + ".json") as f:
            return json.load(f)

    first = checkpoint_callback()
    first.on_epoch_end(0, {"val_top1": 0.5})
    assert best() == {"monitor": "val_top1", "best": 0.5, "epoch": 1}
    first.on_epoch_end(1, {"val_top1": 0.4})
    first.on_epoch_end(2, {"loss": 1.0})  # no validation this epoch: Keras would save; this does not
    assert best()["epoch"] == 1
    restarted = checkpoint_callback()  # a new process: starts from the recorded best, not from -inf
    restarted.on_epoch_end(3, {"val_top1": 0.45})
    assert best()["epoch"] == 1
    restarted.on_epoch_end(4, {"val_top1": 0.6})
    assert best() == {"monitor": "val_top1", "best": 0.6, "epoch": 5}
    assert keras.models.load_model(path, compile=False).output_shape == (None, 2)
    assert sorted(os.listdir(tmp_path)) == ["best.keras", "best.keras.json"]
