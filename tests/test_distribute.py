"""cost_tf.distribute: strategies for real — mirrored on 2 logical CPUs and 2 multi-worker processes on
loopback (subprocesses, so device settings and TF_CONFIG never leak into other tests) — and the Keras patch."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

from cost_tf import checkpoint, distribute

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Shared by the subprocess scripts: the tiny training run of tests/test_train.py.
_PRELUDE = """
import json, os, sys
import numpy as np
from cost_tf import checkpoint, distribute, train
from cost_tf.train import TrainConfig
from pipelines import files

def tiny(model_dir, data_dir, strategy):
    return TrainConfig(model_dir=model_dir, dataset="tfrecord", train_pattern=os.path.join(data_dir, "train-*"),
                       eval_pattern=os.path.join(data_dir, "eval-*"), arch="c2d_tiny", num_frames=4,
                       frame_stride=2, crop_size=32, batch_size=8, steps_per_epoch=3, epochs=1, lr=0.4,
                       lr_schedule="cosine", warmup_epochs=0.0, backup_steps=2, validation_freq=1, verbose=0,
                       seed=0, shuffle_buffer=32, strategy=strategy)

import keras

class Grab(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.initial = [np.array(v.numpy()) for v in self.model.trainable_variables]
"""


def _run_python(script, env=None, timeout=600):
    return subprocess.run(
        [sys.executable, "-c", _PRELUDE + textwrap.dedent(script)],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2", **(env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _last_json(stdout):
    return json.loads([line for line in stdout.splitlines() if line.startswith("{")][-1])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from pipelines.synthetic import write_synthetic

    folder = str(tmp_path_factory.mktemp("synthetic"))
    write_synthetic(folder, num_train=32, num_eval=8, num_frames=12, size=32, num_shards=2)
    return folder


# -- in-process units ---------------------------------------------------------------------------------------


def test_check_global_batch():
    assert distribute.check_global_batch(64, 8) == 8
    assert distribute.check_global_batch(8, 1) == 8
    with pytest.raises(ValueError, match=r"batch_size=12 is not divisible by the 8 replicas.*multiple of 8"):
        distribute.check_global_batch(12, 8)
    with pytest.raises(ValueError, match="positive int"):
        distribute.check_global_batch(0, 1)


def test_strategy_argument_errors(monkeypatch):
    with pytest.raises(ValueError, match="strategy must be one of"):
        distribute.create_strategy("horovod")
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(ValueError, match="needs TF_CONFIG"):
        distribute.create_strategy("multi_worker")
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG is not valid JSON"):
        distribute.tf_config_cluster()


def test_one_device_strategy_and_chief():
    strategy = distribute.create_strategy("one_device")
    assert strategy.num_replicas_in_sync == 1
    assert distribute.is_chief(strategy)
    with distribute.WriteDir("/some/model_dir", strategy) as out:
        assert out.chief and out.path == "/some/model_dir"


def test_patch_refuses_another_keras_version(monkeypatch):
    from keras.src.backend.tensorflow import trainer

    before = (trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica)
    monkeypatch.setattr(keras, "__version__", "3.99.0")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert distribute.patch_keras_for_multi_worker() is False
    message = str(caught[-1].message)
    assert "3.99.0" in message and distribute.UPSTREAM_ISSUE in message and "NOT applied" in message
    assert (trainer.TensorFlowTrainer._maybe_symbolic_build, trainer.reduce_per_replica) == before


# -- mirrored on two logical CPUs (subprocess) --------------------------------------------------------------


def test_mirrored_on_two_logical_cpus(tmp_path, data_dir):
    result = _run_python(f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        strategy = distribute.create_strategy("mirrored")
        out = {{"replicas": strategy.num_replicas_in_sync}}
        config = tiny({str(tmp_path / "run")!r}, {data_dir!r}, "mirrored")
        try:
            import dataclasses
            train.train(dataclasses.replace(config, batch_size=3), strategy=strategy)
        except ValueError as e:
            out["batch_error"] = str(e)
        c = train.resolve_config(config)
        source, _, _ = train.prepare_data(c)
        batch = next(iter(train.distributed_dataset(strategy, source, "train", 8, seed=0)))
        clips = [v.numpy() for v in strategy.experimental_local_results(batch[0])]
        out["per_replica_shapes"] = [list(x.shape) for x in clips]
        out["replicas_differ"] = bool(np.abs(clips[0] - clips[1]).max() > 0)
        mixed = train.distributed_dataset(strategy, source, "train", 8, seed=0, mixup_alpha=1.0, num_classes=8)
        # MixUp within each replica's batch: a clip's soft label holds only classes of its own replica's clips.
        out["mixed_within_replica"] = all(
            set(np.nonzero(y[:, :8].sum(axis=0) > 1e-6)[0]) <= set(y[:, 8].astype(int)) and y.shape == (4, 9)
            for y in (t.numpy() for t in strategy.experimental_local_results(next(iter(mixed))[1]))
        )
        grab = Grab()
        out["metrics"] = train.train(config, callbacks=[grab], strategy=strategy)
        model = grab.model
        out["max_replica_difference"] = max(
            float(np.abs(v.value.values[0].numpy() - v.value.values[1].numpy()).max()) for v in model.weights
            if hasattr(v.value, "values"))
        out["distributed_variables"] = sum(hasattr(v.value, "values") for v in model.weights)
        out["num_weights"] = len(model.weights)
        out["trained"] = any(np.abs(a - v.numpy()).max() > 0
                             for a, v in zip(grab.initial, model.trainable_variables))
        print(json.dumps(out))
    """)
    assert result.returncode == 0, result.stderr[-4000:]
    out = _last_json(result.stdout)
    assert out["replicas"] == 2
    assert "global batch_size=3 is not divisible by the 2 replicas" in out["batch_error"]
    assert out["per_replica_shapes"] == [[4, 4, 32, 32, 3], [4, 4, 32, 32, 3]]  # 8 split in two
    assert out["replicas_differ"]
    assert out["mixed_within_replica"]
    assert out["metrics"]["epochs"] == 1 and out["metrics"]["steps"] == 3
    assert out["distributed_variables"] == out["num_weights"]  # every weight is mirrored ...
    assert out["max_replica_difference"] == 0.0  # ... and identical on both devices (BN statistics included)
    assert out["trained"]


# -- two workers on loopback (subprocesses) -----------------------------------------------------------------


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


_WORKER = """
    index, model_dir, data_dir, out_path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    config = tiny(model_dir, data_dir, "multi_worker")
    c, strategy = train.setup(config)
    written = []
    original_replace = files.replace  # every atomic write of the run (checkpoints, json, model) ends here
    def logged_replace(src, dst):
        written.append(os.path.abspath(dst))
        original_replace(src, dst)
    files.replace = logged_replace
    source, _, _ = train.prepare_data(c, data_dir=None)
    batch = next(iter(train.distributed_dataset(strategy, source, "train", 8, seed=0)))
    local_clips = strategy.experimental_local_results(batch[0])[0].numpy()
    grab = Grab()
    metrics = train.train(config, callbacks=[grab], strategy=strategy)
    np.savez(out_path, clips=local_clips,
             **{f"w{i}": v.numpy() for i, v in enumerate(grab.model.weights)},
             **{f"init{i}": a for i, a in enumerate(grab.initial)})
    print(json.dumps({"metrics": metrics, "written": written, "replicas": strategy.num_replicas_in_sync,
                      "chief": distribute.is_chief(strategy)}))
"""


def test_two_workers_train_identically_and_only_the_chief_writes(tmp_path, data_dir):
    ports = _free_ports(2)
    model_dir = str(tmp_path / "run")
    worker_tmp = tmp_path / "worker_tmp"
    worker_tmp.mkdir()
    script = _PRELUDE + textwrap.dedent(_WORKER)
    processes = []
    for index in range(2):
        tf_config = {
            "cluster": {"worker": [f"127.0.0.1:{p}" for p in ports]},
            "task": {"type": "worker", "index": index},
        }
        env = dict(
            os.environ,
            PYTHONPATH=ROOT,
            TF_CPP_MIN_LOG_LEVEL="2",
            TF_CONFIG=json.dumps(tf_config),
            TMPDIR=str(worker_tmp),
        )
        processes.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    script,
                    str(index),
                    model_dir,
                    data_dir,
                    str(tmp_path / f"w{index}.npz"),
                ],
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = []
    try:
        for p in processes:
            stdout, stderr = p.communicate(timeout=600)
            assert p.returncode == 0, stderr[-4000:]
            outputs.append(_last_json(stdout))
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.communicate()
    chief, other = outputs
    assert chief["chief"] and not other["chief"]
    assert chief["replicas"] == other["replicas"] == 2
    assert chief["metrics"] == other["metrics"] and chief["metrics"]["steps"] == 3
    w0, w1 = np.load(tmp_path / "w0.npz"), np.load(tmp_path / "w1.npz")
    assert np.abs(w0["clips"] - w1["clips"]).max() > 0  # each worker read its own shard
    weights = [k for k in w0.files if k.startswith("w")]
    for key in weights:  # identical after training, BatchNorm statistics included
        np.testing.assert_array_equal(w0[key], w1[key], err_msg=key)
    assert any(
        np.abs(w0[f"init{i}"] - w0[f"w{i}"]).max() > 0 for i in range(len(w0.files)) if f"init{i}" in w0
    )

    # The chief finalised every file in model_dir; the other worker only in its temporary folder, now gone.
    assert chief["written"] and all(path.startswith(model_dir + os.sep) for path in chief["written"])
    assert {os.path.basename(p) for p in chief["written"]} >= {
        "model.keras",
        "metrics.json",
        "best.keras",
        "config.json",
        checkpoint.STATE_FILE,
    }
    assert other["written"] and not any(path.startswith(model_dir + os.sep) for path in other["written"])
    assert all(path.startswith(str(worker_tmp)) for path in other["written"])
    assert os.listdir(worker_tmp) == []
    assert sorted(os.listdir(model_dir)) == [
        "best.keras",
        "best.keras.json",
        "config.json",
        "metrics.json",
        "model.keras",
        "tensorboard",
        "training_log.csv",
    ]
