"""cost_tf.train: flag validation, recipe defaults, one epoch of real training, resume after SIGKILL."""

import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from absl import flags

from cost_tf import checkpoint, train
from cost_tf import metrics as cost_metrics
from cost_tf.train import TrainConfig
from cost_tf.train import run as train_run
from pipelines import mains

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """32 training clips (2 shards) and 8 eval clips of 12 frames at 32 px, with classes.txt."""
    from pipelines.synthetic import write_synthetic

    folder = str(tmp_path_factory.mktemp("synthetic"))
    write_synthetic(folder, num_train=32, num_eval=8, num_frames=12, size=32, num_shards=2)
    return folder


def tiny(model_dir, data_dir, **overrides):
    """The smallest real run: c2d_tiny on 4 frames x 32 px, 4 steps of 8 clips per epoch."""
    values = dict(
        model_dir=str(model_dir),
        dataset="tfrecord",
        train_pattern=os.path.join(data_dir, "train-*"),
        eval_pattern=os.path.join(data_dir, "eval-*"),
        arch="c2d_tiny",
        num_frames=4,
        frame_stride=2,
        crop_size=32,
        batch_size=8,
        steps_per_epoch=4,
        epochs=1,
        lr=0.4,
        lr_schedule="cosine",
        warmup_epochs=0.0,
        backup_steps=2,
        validation_freq=1,
        dropout=0.0,
        verbose=0,
        seed=0,
        shuffle_buffer=32,
        strategy="one_device",
    )
    values.update(overrides)
    return TrainConfig(**values)


# -- validation, before anything is built ---------------------------------------------------------------------


def test_unknown_arch_lists_the_valid_ones(tmp_path, data_dir):
    with pytest.raises(ValueError) as error:
        train.resolve_config(tiny(tmp_path, data_dir, arch="cost_c_r50"))
    message = str(error.value)
    assert "--arch" in message and "cost_c_r50" in message
    for arch in ("c2d_r50", "cost_a_r101", "cost_b_tiny", "r2plus1d_r50"):
        assert arch in message


def test_no_files_matching_a_pattern(tmp_path, data_dir):
    with pytest.raises(ValueError, match=r"--train_pattern: no files match"):
        train.resolve_config(tiny(tmp_path, data_dir, train_pattern=str(tmp_path / "nothing-*.tfrecord")))
    with pytest.raises(ValueError, match=r"--eval_pattern: a TFRecord file pattern is required"):
        train.resolve_config(tiny(tmp_path, data_dir, eval_pattern=None))


def test_unreadable_weights_file(tmp_path, data_dir):
    missing = str(tmp_path / "resnet50.weights.h5")
    with pytest.raises(ValueError, match=r"--imagenet_weights: cannot read this file .*resnet50.weights.h5"):
        train.resolve_config(tiny(tmp_path, data_dir, imagenet_weights=missing))
    with pytest.raises(ValueError, match=r"--imagenet_weights: cannot read"):
        train.resolve_config(tiny(tmp_path, data_dir, imagenet_weights=str(tmp_path)))  # a folder


def test_bad_numbers_and_missing_raw_video_inputs(tmp_path, data_dir):
    with pytest.raises(ValueError, match="--lr_steps"):
        train.resolve_config(tiny(tmp_path, data_dir, epochs=3, lr_steps=(2, 5)))
    with pytest.raises(ValueError, match="--batch_size: must be a positive integer"):
        train.resolve_config(tiny(tmp_path, data_dir, batch_size=0))
    with pytest.raises(ValueError, match="--alpha_lr_multiplier: must be > 0"):
        train.resolve_config(tiny(tmp_path, data_dir, alpha_lr_multiplier=0.0))
    with pytest.raises(ValueError, match="--annotations: cannot read"):
        train.resolve_config(
            TrainConfig(model_dir=str(tmp_path), dataset="kinetics", annotations=str(tmp_path / "train.csv"))
        )


def test_global_batch_not_divisible_by_replicas_fails_before_any_model(tmp_path, data_dir):
    class ThreeReplicas:
        num_replicas_in_sync = 3

    model_dir = tmp_path / "never"
    with pytest.raises(ValueError, match=r"global batch_size=8 is not divisible by the 3 replicas"):
        train.train(tiny(model_dir, data_dir), strategy=ThreeReplicas())
    assert not model_dir.exists()  # nothing was written, read or built


def test_recipe_defaults(tmp_path, data_dir):
    kinetics_like = train.resolve_config(
        TrainConfig(
            model_dir=str(tmp_path),
            dataset="tfrecord",
            train_pattern=os.path.join(data_dir, "train-*"),
            eval_pattern=os.path.join(data_dir, "eval-*"),
        )
    )
    assert (kinetics_like.arch, kinetics_like.epochs, kinetics_like.lr_steps, kinetics_like.lr_schedule) == (
        "cost_b_r50",
        160,
        (80, 120),
        "step",
    )
    assert (
        kinetics_like.batch_size,
        kinetics_like.lr,
        kinetics_like.num_frames,
        kinetics_like.frame_stride,
        kinetics_like.crop_size,
    ) == (64, 0.01, 8, 8, 224)
    assert (kinetics_like.momentum, kinetics_like.weight_decay, kinetics_like.clipnorm) == (0.9, 1e-4, 40.0)
    # A Moments in Time folder as released: 339 categories beside the CSVs (no header), a listed video present.
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "a.mp4").write_bytes(b"")  # found on disk; nothing is decoded here
    (tmp_path / "moments_categories.txt").write_text("".join(f"category_{i},{i}\n" for i in range(339)))
    for name in ("train.csv", "val.csv"):
        (tmp_path / name).write_text("a.mp4,category_0,3,0\n")
    moments = train.resolve_config(
        TrainConfig(
            model_dir=str(tmp_path),
            dataset="moments",
            annotations=str(tmp_path / "train.csv"),
            eval_annotations=str(tmp_path / "val.csv"),
            video_dir=str(tmp_path / "videos"),
        )
    )
    assert (moments.epochs, moments.lr_steps, moments.num_classes) == (48, (24, 36), 339)
    assert moments.eval_video_dir == str(tmp_path / "videos")
    shorter = train.resolve_config(dataclasses.replace(moments, epochs=12, lr_steps=None, num_classes=None))
    assert shorter.lr_steps == (6, 9)  # the recipe's decay points at the same fractions of training
    demo = train.resolve_config(TrainConfig(model_dir=str(tmp_path)))
    assert (demo.dataset, demo.arch, demo.crop_size, demo.num_frames) == ("synthetic", "cost_b_tiny", 56, 8)


def test_flags_parse_into_a_config():
    holders = mains.define_flags(
        train.TrainConfig, defaults=train.FLAG_DEFAULTS, flag_values=flags.FlagValues()
    )
    fv = holders["arch"]._flagvalues
    fv(
        [
            "train",
            "--model_dir=/tmp/x",
            "--dataset=tfrecord",
            "--arch=cost_a_r50",
            "--lr_steps=10,20",
            "--noflip",
            "--batch_size=32",
            "--precision=mixed_bfloat16",
            "--strategy=mirrored",
            "--verbose=2",
        ]
    )
    config = mains.config_from_flags(train.TrainConfig, holders)
    assert config.arch == "cost_a_r50" and config.dataset == "tfrecord" and config.batch_size == 32
    assert config.lr_steps == ("10", "20") and config.flip is False and config.verbose == 2
    assert config.precision == "mixed_bfloat16" and config.strategy == "mirrored"
    assert config.epochs is None  # recipe default, filled by resolve_config
    assert set(holders) == {f.name for f in dataclasses.fields(TrainConfig)}


def test_fit_segments():
    assert train_run.fit_segments(None, 5, 10) == [(0, 5, 10, 0)]
    assert train_run.fit_segments({"epoch": 2, "step": 0}, 5, 10) == [(2, 5, 10, 0)]
    assert train_run.fit_segments({"epoch": 2, "step": 3}, 5, 10) == [(2, 3, 7, 3), (3, 5, 10, 0)]
    assert train_run.fit_segments({"epoch": 4, "step": 6}, 5, 10) == [(4, 5, 4, 6)]
    assert train_run.fit_segments({"epoch": 5, "step": 0}, 5, 10) == []


# -- real training ----------------------------------------------------------------------------------------------


class FixedBatchLoss(keras.callbacks.Callback):
    """Training-mode loss on one fixed batch of training clips, at train begin and at train end."""

    def __init__(self, clips, labels):
        super().__init__()
        self.clips, self.labels, self.losses = clips, labels, []

    def _loss(self):
        logits = self.model(self.clips, training=True)
        return float(keras.losses.SparseCategoricalCrossentropy(from_logits=True)(self.labels, logits))

    def on_train_begin(self, logs=None):
        self.losses.append(self._loss())

    def on_train_end(self, logs=None):
        self.losses.append(self._loss())


def test_one_epoch_of_training_writes_the_outputs(tmp_path):
    """Two epochs on 8 clips read whole (no crop, flip or temporal jitter): every batch is the same 8 clips,
    so SGD with a small lr must lower their training loss."""
    from pipelines.dataset import make_dataset
    from pipelines.synthetic import write_synthetic

    data_dir = str(tmp_path / "data")
    write_synthetic(data_dir, num_train=8, num_eval=8, num_frames=4, size=32, num_shards=1)
    whole = dict(num_frames=4, frame_stride=1, crop_size=32, min_resize=32, max_resize=32, eval_resize=32)
    clips, labels = next(
        iter(make_dataset(os.path.join(data_dir, "train-*"), mode="eval", batch_size=8, **whole))
    )
    probe = FixedBatchLoss(clips, labels)
    model_dir = tmp_path / "run"
    model_dir.mkdir()  # holding an earlier run's outputs, which a fresh run must not mix with its own
    (model_dir / "best.keras.json").write_text('{"monitor": "val_top1", "best": 2.0, "epoch": 9}')
    (model_dir / "training_log.csv").write_text("epoch,loss\n8,0.1\n")
    metrics = train.train(
        tiny(model_dir, data_dir, epochs=2, lr=0.08, flip=False, **whole), callbacks=[probe]
    )
    assert probe.losses[1] < probe.losses[0] - 0.05  # training moved the model towards the labels
    tmp_path = model_dir

    with open(tmp_path / "metrics.json") as f:
        written = json.load(f)
    assert written == metrics
    assert {"top1", "top5", "epochs", "arch"} <= set(written)
    assert written["epochs"] == 2 and written["steps"] == 8 and written["arch"] == "c2d_tiny"
    assert 0.0 <= written["top1"] <= written["top5"] <= 1.0
    model = keras.models.load_model(tmp_path / "model.keras", compile=False)
    assert model.output_shape == (None, 8)
    with open(tmp_path / "training_log.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1] and "val_top1" in rows[0]
    assert (tmp_path / "best.keras").exists() and (tmp_path / "tensorboard").is_dir()
    assert not (tmp_path / "backup").exists()  # removed once the outputs are written
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".tmp-")]


def test_resume_after_sigkill(tmp_path, data_dir):
    """A real process is SIGKILLed mid-epoch; the same command resumes mid-epoch and ends after 3 epochs."""
    model_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "cost_tf.train",
        f"--model_dir={model_dir}",
        "--dataset=tfrecord",
        f"--train_pattern={os.path.join(data_dir, 'train-*')}",
        f"--eval_pattern={os.path.join(data_dir, 'eval-*')}",
        "--arch=c2d_tiny",
        "--num_frames=4",
        "--frame_stride=2",
        "--crop_size=32",
        "--batch_size=8",
        "--steps_per_epoch=4",
        "--epochs=3",
        "--lr=0.1",
        "--backup_steps=1",
        "--validation_freq=3",
        "--strategy=one_device",
        "--verbose=2",
    ]
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    state_path = model_dir / "backup" / checkpoint.STATE_FILE
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    try:
        while True:
            assert first.poll() is None, first.stderr.read().decode()[-3000:]
            assert time.time() < deadline, "the first run never reached epoch 1"
            if state_path.exists():
                state = json.loads(state_path.read_text())
                if state["epoch"] == 1 and state["step"] >= 2:
                    os.kill(first.pid, signal.SIGKILL)
                    break
            time.sleep(0.02)
    finally:
        if first.poll() is None:
            os.kill(first.pid, signal.SIGKILL)
        first.wait()
        first.stderr.close()
    killed_at = checkpoint.read_backup_state(str(model_dir / "backup"))
    assert killed_at["epoch"] == 1 and 2 <= killed_at["step"] <= 3  # mid-epoch (3 is the last batch save)
    import h5py

    with h5py.File(killed_at["weights"], "r"):  # the file the metadata names is complete
        pass
    assert not (model_dir / "metrics.json").exists()

    second = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-3000:]
    assert f"epoch 1 done, step {killed_at['step']}/4 of the next one" in second.stdout
    with open(model_dir / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["epochs"] == 3
    assert metrics["steps"] == 12  # 3 epochs x 4 steps: the resumed epoch ran only its missing steps
    with open(model_dir / "training_log.csv") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [0, 1, 2]
    assert not (model_dir / "backup").exists()
    np.testing.assert_array_equal(
        keras.models.load_model(model_dir / "model.keras", compile=False).output_shape, (None, 8)
    )


# -- gradient accumulation ------------------------------------------------------------------------------------


def test_alpha_lr_multiplier_reaches_the_optimizer_of_every_cost_a_alpha(tmp_path, data_dir):
    c = train.resolve_config(tiny(tmp_path, data_dir, arch="cost_a_tiny", alpha_lr_multiplier=30.0))
    model = train.compile_model(c, 8, c.steps_per_epoch)
    optimizer = model.optimizer
    scaled = {v.path for v in model.trainable_variables if optimizer._var_key(v) in optimizer._lr_multipliers}
    alphas = {v.path for v in model.trainable_variables if v.path.endswith("/alpha")}
    assert len(alphas) == 4 and scaled == alphas  # one per CoST layer of cost_a_tiny, nothing else
    assert set(optimizer._lr_multipliers.values()) == {30.0}
    default = train.compile_model(train.resolve_config(tiny(tmp_path, data_dir, arch="cost_a_tiny")), 8, 4)
    assert default.optimizer._lr_multipliers == {}


def test_accumulate_steps_validation_and_lr_of_the_effective_batch(tmp_path, data_dir):
    with pytest.raises(ValueError, match="--accumulate_steps: must be a positive integer"):
        train.resolve_config(tiny(tmp_path, data_dir, accumulate_steps=0))
    with pytest.raises(ValueError, match="--steps_per_epoch: must be a multiple of --accumulate_steps=3"):
        train.resolve_config(tiny(tmp_path, data_dir, accumulate_steps=3))  # 4 batches per epoch
    c = train.resolve_config(
        tiny(tmp_path, data_dir, accumulate_steps=2, epochs=2, lr=0.64, lr_schedule="step", lr_steps=(1,))
    )
    optimizer = train.compile_model(c, 8, c.steps_per_epoch).optimizer
    assert optimizer.gradient_accumulation_steps == 2
    # lr 0.64 per 64 clips at 8 x 2 clips per update: 0.16; 4 batches = 2 updates per epoch, x0.1 at epoch 1.
    lrs = {}
    for batch in range(8):
        optimizer._iterations.assign(batch)
        lrs[batch] = float(optimizer.learning_rate)
    assert lrs == pytest.approx({0: 0.16, 1: 0.16, 2: 0.16, 3: 0.16, 4: 0.016, 5: 0.016, 6: 0.016, 7: 0.016})


def test_training_with_accumulation_counts_updates_and_records_it(tmp_path, data_dir):
    """4 batches of 8 per epoch with --accumulate_steps=2: 2 updates; config.json records the value, and a
    backup written with it refuses to resume under another value."""
    model_dir = tmp_path / "run"
    metrics = train.train(tiny(model_dir, data_dir, accumulate_steps=2))
    assert metrics["epochs"] == 1 and metrics["steps"] == 2
    config = json.loads((model_dir / "config.json").read_text())
    assert config["accumulate_steps"] == 2 and config["steps_per_epoch"] == 4 and config["batch_size"] == 8
    state = {"epoch": 0, "step": 3, "weights": "x"}
    train_run.check_resumable(
        train.resolve_config(tiny(model_dir, data_dir, accumulate_steps=2)),
        state,
        str(model_dir / "config.json"),
    )
    with pytest.raises(
        ValueError, match="--accumulate_steps: the backup .* was written with --accumulate_steps=2"
    ):
        train_run.check_resumable(
            train.resolve_config(tiny(model_dir, data_dir)), state, str(model_dir / "config.json")
        )


# -- augmentations and multi-label targets ----------------------------------------------------------------------


class _Spy:
    """Records make_dataset's arguments and the compiled loss, calling through."""

    def __init__(self, monkeypatch):
        from pipelines import dataset

        self.calls, real = [], dataset.make_dataset

        def spy(**kwargs):
            self.calls.append(kwargs)
            return real(**kwargs)

        monkeypatch.setattr(dataset, "make_dataset", spy)

    def mode(self, mode):
        return [call for call in self.calls if call["mode"] == mode][0]


class _Targets(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.loss = self.model.loss

    def on_epoch_end(self, epoch, logs=None):
        self.metrics = set(logs)


def test_augmentation_flags_reach_the_pipeline_and_loss_and_config(tmp_path, data_dir, monkeypatch):
    with pytest.raises(ValueError, match=r"--randaugment: .*Received: randaugment='2'"):
        train.resolve_config(tiny(tmp_path, data_dir, randaugment="2"))
    with pytest.raises(ValueError, match=r"--cutmix_alpha: must be a number in \[0.0, 1.0\]"):
        train.resolve_config(tiny(tmp_path, data_dir, cutmix_alpha=2.0))
    default = train.resolve_config(tiny(tmp_path, data_dir))
    assert (default.randaugment, default.random_erasing, default.mixup_alpha, default.cutmix_alpha) == (
        None,
        0.0,
        0.0,
        0.0,
    )
    assert default.label_smoothing == 0.0 and default.multilabel is False
    spy, targets = _Spy(monkeypatch), _Targets()
    flags_on = dict(randaugment="1,9", random_erasing=0.25, mixup_alpha=0.8, cutmix_alpha=1.0)
    metrics = train.train(
        tiny(tmp_path / "run", data_dir, steps_per_epoch=2, label_smoothing=0.1, **flags_on),
        callbacks=[targets],
    )
    assert {k: spy.mode("train")[k] for k in flags_on} == flags_on
    assert spy.mode("train")["num_classes"] == 8
    assert not set(flags_on) & set(spy.mode("eval"))  # evaluation clips are never augmented
    assert isinstance(targets.loss, cost_metrics.ClipLoss) and targets.loss.label_smoothing == 0.1
    assert {"top1", "top5", "val_top1", "val_top5"} <= targets.metrics
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["top1"] <= metrics["top5"] <= 1
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert {k: config[k] for k in flags_on} == flags_on and config["label_smoothing"] == 0.1


def test_multilabel_training_reports_map(tmp_path, monkeypatch):
    from tests.test_dataset import indexed_video, write_variant

    folder = tmp_path / "data"
    folder.mkdir()
    labels = [[0, 2], [1], [2, 3], [3, 0]] * 2
    videos = [indexed_video(num_frames=6, height=32, width=32, seed=i) for i in range(len(labels))]
    for split in ("train", "eval"):
        write_variant(str(folder / f"{split}-0.tfrecord"), videos, labels)
    spy, targets = _Spy(monkeypatch), _Targets()
    metrics = train.train(
        tiny(
            tmp_path / "run", str(folder), num_classes=4, multilabel=True, mixup_alpha=0.5, steps_per_epoch=1
        ),
        callbacks=[targets],
    )
    assert spy.mode("train")["multilabel"] and spy.mode("eval")["multilabel"]
    assert targets.loss.multilabel and {"mAP", "val_mAP"} <= targets.metrics
    assert 0 < metrics["mAP"] <= 1 and "top1" not in metrics
    with open(tmp_path / "run" / "training_log.csv") as f:
        assert "val_mAP" in next(csv.DictReader(f))
    assert json.loads((tmp_path / "run" / "config.json").read_text())["multilabel"] is True
    assert json.loads((tmp_path / "run" / "best.keras.json").read_text())["monitor"] == "val_mAP"


def test_deterministic_runs_are_bit_identical(tmp_path, data_dir):
    """--deterministic (enable_op_determinism is process-wide, so in a child process): two seeded runs with
    crops, flips and shuffling give bit-identical weights, and config.json records the setting."""
    script = f"""
import dataclasses, json, sys
import numpy as np
from tensorflow.python.framework import config as tf_config
from cost_tf import train
from tests.test_train import tiny
runs = []
for name in ("first", "second"):
    c = tiny({str(tmp_path)!r} + "/" + name, {data_dir!r}, epochs=2, deterministic=True)
    train.train(c)
    import keras
    model = keras.models.load_model(c.model_dir + "/model.keras", compile=False)
    runs.append([w.copy() for w in model.get_weights()])
same = all(np.array_equal(a, b) for a, b in zip(runs[0], runs[1], strict=True))
print(json.dumps(dict(same=same, enabled=tf_config.is_op_determinism_enabled())))
"""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"same": True, "enabled": True}
    for name in ("first", "second"):
        with open(tmp_path / name / "config.json") as f:
            assert json.load(f)["deterministic"] is True
    with pytest.raises(ValueError, match="--deterministic: needs a --seed"):
        train.resolve_config(tiny(tmp_path, data_dir, deterministic=True, seed=None))
