"""Crash-safe files: atomic writes, and Keras checkpoint callbacks that never leave a half-written file.

Keras 3.15's BackupAndRestore writes `latest.weights.h5` in place (h5py) and then, separately,
`training_metadata.json`: a SIGKILL during the first leaves a truncated HDF5 file that the next run loads
(and fails on), and one between the two pairs new weights with the old epoch. Its ModelCheckpoint also
writes in place. The subclasses here write to a temporary name in the same folder and rename
(tf.io.gfile.rename: rename(2) locally, so atomic), and the backup's metadata file names the weights file it
belongs to, so a reader always sees a complete, consistent pair.
"""

import json
import math
import os
import re

import keras
import tensorflow as tf

from pipelines import files

STATE_FILE = "training_metadata.json"
_WEIGHTS_RE = re.compile(r"^ckpt-e(\d+)-s(\d+)\.weights\.h5$")
_TMP_PREFIX = files.TMP_PREFIX


def save_model(model, path):
    """model.save to `path` (a .keras file) atomically."""
    with files.atomic_path(path) as tmp:  # keeps the .keras suffix Keras requires
        model.save(tmp)


def _finite(logs):
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


def read_backup_state(backup_dir):
    """The last complete backup in `backup_dir`: {"epoch", "step", "weights"} or None.

    epoch: the epoch in progress (== epochs done); step: batches of it already trained (0 at an epoch end).
    """
    path = os.path.join(backup_dir, STATE_FILE)
    if not tf.io.gfile.exists(path):
        return None
    with tf.io.gfile.GFile(path) as f:
        state = json.load(f)
    weights = os.path.join(backup_dir, state["weights"])
    if not tf.io.gfile.exists(weights):
        raise ValueError(
            f"Backup state {path} names {weights}, which does not exist; the backup folder was "
            "modified by hand. Remove the folder to start over."
        )
    return {"epoch": int(state["epoch"]), "step": int(state["step"]), "weights": weights}


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """keras.callbacks.BackupAndRestore that writes crash-safely and can resume in the middle of an epoch.

    Saves every `save_freq` batches (int) and always at the end of each epoch, as
    `ckpt-e{epoch}-s{step}.weights.h5` (weights + optimizer state, renamed into place) followed by
    `training_metadata.json` naming it (renamed into place); older weights files are then deleted. On train
    begin it loads the state named by the metadata and sets the initial epoch, as Keras does.

    Mid-epoch resume: Keras' fit cannot start inside an epoch, so the caller runs the rest of an interrupted
    epoch as its own `fit(initial_epoch=e, epochs=e + 1, steps_per_epoch=steps - s)` with
    `step_offset = s` (see cost_tf.train), and the step counts written stay those of the full epoch.

    Args:
      backup_dir: where backups are read from (the chief's folder).
      save_freq: "epoch" or a number of batches.
      write_dir: where this process writes (defaults to backup_dir; a temporary folder on non-chief workers).
    """

    def __init__(self, backup_dir, save_freq="epoch", write_dir=None):
        super().__init__(backup_dir, save_freq=save_freq, double_checkpoint=False, delete_checkpoint=False)
        self.write_dir = write_dir or backup_dir
        self.step_offset = 0
        self.restored = None  # (epoch, step) of the state loaded by the last on_train_begin
        self._epoch = 0

    def on_train_begin(self, logs=None):
        self._load_model()

    def _load_model(self):
        state = read_backup_state(self.backup_dir)
        self.restored = None
        if state is None:
            return
        if not self.model.built:
            raise ValueError("Build the model before fit() to restore a backup.")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(state["weights"])
        self.model._initial_epoch = state["epoch"]  # how Keras' BackupAndRestore resumes
        self.restored = (state["epoch"], state["step"])

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        step = self.step_offset + batch + 1
        steps = (self.params or {}).get("steps")
        last = steps is not None and batch + 1 >= steps  # the epoch-end save follows at once
        if self.save_freq != "epoch" and step % self.save_freq == 0 and not last and _finite(logs):
            self._save(self._epoch, step)

    def on_epoch_end(self, epoch, logs=None):
        self.step_offset = 0
        if _finite(logs):  # never back up a diverged state (TerminateOnNaN stops right after)
            self._save(epoch + 1, 0)

    def on_train_end(self, logs=None):
        pass  # the caller deletes the backup once the final outputs are written

    def _save(self, epoch, step):
        tf.io.gfile.makedirs(self.write_dir)
        name = f"ckpt-e{epoch:05d}-s{step:08d}.weights.h5"
        final = os.path.join(self.write_dir, name)
        tmp = os.path.join(self.write_dir, f"{_TMP_PREFIX}{os.getpid()}.weights.h5")
        self.model.save_weights(tmp, overwrite=True)
        files.replace(tmp, final)
        files.write_json(
            os.path.join(self.write_dir, STATE_FILE), {"epoch": epoch, "step": step, "weights": name}
        )
        for other in tf.io.gfile.listdir(self.write_dir):
            if (_WEIGHTS_RE.match(other) and other != name) or other.startswith(_TMP_PREFIX):
                tf.io.gfile.remove(os.path.join(self.write_dir, other))


class AtomicModelCheckpoint(keras.callbacks.ModelCheckpoint):
    """keras.callbacks.ModelCheckpoint that saves through a temporary file + rename.

    With save_best_only, the best value is also kept in `{filepath}.json` (written atomically) and read back
    on construction, so a restarted run does not overwrite a better checkpoint; epochs without the monitored
    value (no validation that epoch) save nothing (Keras would save unconditionally).
    """

    def __init__(self, filepath, **kwargs):
        self.best_path = filepath + ".json"
        if kwargs.get("save_best_only") and tf.io.gfile.exists(self.best_path):
            with tf.io.gfile.GFile(self.best_path) as f:
                kwargs.setdefault("initial_value_threshold", json.load(f)["best"])
        super().__init__(filepath, **kwargs)

    def _should_save_model(self, epoch, batch, logs, filepath):
        if self.save_best_only and (logs or {}).get(self.monitor) is None:
            return False
        return super()._should_save_model(epoch, batch, logs, filepath)

    def _save_model(self, epoch, batch, logs):
        final = self._get_file_path(epoch, batch, logs)
        tmp = files.tmp_path(final)
        template, self.filepath = self.filepath, tmp
        try:
            super()._save_model(epoch, batch, logs)
        finally:
            self.filepath = template
        if tf.io.gfile.exists(tmp):
            files.replace(tmp, final)
            if self.save_best_only:
                files.write_json(
                    self.best_path, {"monitor": self.monitor, "best": float(self.best), "epoch": epoch + 1}
                )
