"""tf.distribute strategies for training, chief/worker file placement, and the Keras multi-worker fix.

`create_strategy(name)`: "one_device", "mirrored" (all local GPUs, else all logical CPUs), "multi_worker"
(MultiWorkerMirroredStrategy from TF_CONFIG), "tpu" (TPUStrategy via TPUClusterResolver; untested here, no
TPU), or "auto" (multi_worker when TF_CONFIG lists more than one task, mirrored with several GPUs, else
one_device).

Keras 3.15.1's `model.fit` fails under MultiWorkerMirroredStrategy (https://github.com/keras-team/keras/issues/20585,
open), in two spots of keras/src/backend/tensorflow/trainer.py:
  1. `_maybe_symbolic_build` all-reduces the first DATA batch across workers (strategy.reduce "MEAN") only to
     learn its shapes; that fails on the per-worker inputs. The fix builds from this worker's first replica's
     batch (same shapes everywhere). The same reduce fails under MirroredStrategy when the first global batch
     is partial (an evaluation set smaller than the global batch: a replica gets an empty batch, and
     AddN refuses [2, T, H, W, 3] + [0, T, H, W, 3]), so the fix applies to every strategy of several
     replicas.
  2. `reduce_per_replica` reduces the step's scalar logs with `strategy.reduce("MEAN", v, axis=0)`, which fails
     on rank-0 values ("Invalid reduction dimension 0"). The fix reduces rank-0 values with axis=None: the
     mean over all replicas of all workers, so every worker logs the same numbers (and callbacks such as
     TerminateOnNaN decide the same way on every worker).
`patch_keras_for_multi_worker()` applies both, only on that exact Keras version (elsewhere it warns and does
nothing), and the patched functions defer to the originals unless the strategy has several replicas (fix 1)
or is multi-worker (fix 2); create_strategy applies it for "mirrored" and "multi_worker".
"""

import json
import os
import shutil
import tempfile
import warnings
import weakref

import keras
import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker", "tpu")
PATCHED_KERAS_VERSION = "3.15.1"
UPSTREAM_ISSUE = "https://github.com/keras-team/keras/issues/20585"


def tf_config_cluster():
    """(cluster dict, task dict) parsed from the TF_CONFIG environment variable ({} , {} if unset)."""
    text = os.environ.get("TF_CONFIG", "")
    if not text:
        return {}, {}
    try:
        config = json.loads(text)
    except ValueError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON: {e}. Received: TF_CONFIG={text!r}") from None
    return config.get("cluster", {}), config.get("task", {})


def _num_tasks(cluster):
    return sum(len(v) for k, v in cluster.items() if k in ("chief", "worker"))


def create_strategy(name="auto", tpu=None):
    """Returns a tf.distribute.Strategy (see module docstring). Multi-worker also patches Keras."""
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}. Received: strategy={name!r}")
    if name == "auto":
        if _num_tasks(tf_config_cluster()[0]) > 1:
            name = "multi_worker"
        elif len(tf.config.list_logical_devices("GPU")) > 1:
            name = "mirrored"
        else:
            name = "one_device"
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        patch_keras_for_multi_worker()
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if name == "multi_worker":
        cluster, task = tf_config_cluster()
        if not cluster or not task:
            raise ValueError(
                "strategy='multi_worker' needs TF_CONFIG with a cluster and this task, e.g. "
                '{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker", '
                '"index": 0}}. Received: TF_CONFIG=' + repr(os.environ.get("TF_CONFIG"))
            )
        patch_keras_for_multi_worker()
        return tf.distribute.MultiWorkerMirroredStrategy()
    # TPU: not runnable on this project's machines; kept to the documented minimum.
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def check_global_batch(global_batch_size, num_replicas):
    """ValueError unless the global batch splits evenly over the replicas; returns the per-replica batch."""
    if not isinstance(global_batch_size, int) or global_batch_size < 1:
        raise ValueError(f"batch_size must be a positive int. Received: batch_size={global_batch_size!r}")
    if global_batch_size % num_replicas:
        raise ValueError(
            f"The global batch_size={global_batch_size} is not divisible by the "
            f"{num_replicas} replicas of the strategy; use a multiple of {num_replicas}."
        )
    return global_batch_size // num_replicas


def is_chief(strategy):
    """True on the process that writes checkpoints and logs (always, except non-chief multi-worker tasks)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return task_type == "worker" and task_id == 0 and not has_chief


class WriteDir:
    """Where this process writes: `model_dir` on the chief, a fresh temporary folder elsewhere.

    Every worker must take part in saving (reading synchronised variables can be a collective op), so
    non-chief workers save too, into a folder `cleanup()` removes. Use as a context manager.
    """

    def __init__(self, model_dir, strategy):
        self.chief = is_chief(strategy)
        self.path = model_dir if self.chief else tempfile.mkdtemp(prefix="cost_tf_worker_")

    def cleanup(self):
        if not self.chief:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()


# -- Keras 3.15.1 multi-worker fix (keras-team/keras#20585) --------------------------------------------------

_ORIGINALS = {}


def _is_multi_worker(strategy):
    return (
        isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
        and strategy.extended._in_multi_worker_mode()
    )


def patch_keras_for_multi_worker():
    """Applies the two-spot fix described in the module docstring. Idempotent.

    Returns True when patched (or already patched), False (with a warning) on another Keras version.
    """
    if keras.__version__ != PATCHED_KERAS_VERSION:
        warnings.warn(
            f"cost_tf.distribute: the multi-worker fix for {UPSTREAM_ISSUE} targets keras=="
            f"{PATCHED_KERAS_VERSION}; found keras=={keras.__version__}, so it is NOT applied. "
            "model.fit under MultiWorkerMirroredStrategy may fail if that Keras still has the bug.",
            stacklevel=2,
        )
        return False
    if _ORIGINALS:
        return True
    from keras.src.backend.tensorflow import trainer as tf_trainer

    original_build = tf_trainer.TensorFlowTrainer._maybe_symbolic_build
    original_reduce = tf_trainer.reduce_per_replica

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        strategy = self._distribute_strategy
        if strategy is None or iterator is None or strategy.num_replicas_in_sync < 2:
            return original_build(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            # Fix 1: this worker's first replica's batch; only its shapes matter (the first replica gets
            # data whenever any replica does).
            data_batch = tf.nest.map_structure(
                lambda x: (
                    strategy.experimental_local_results(x)[0]
                    if isinstance(x, tf.distribute.DistributedValues)
                    else x
                ),
                batch,
            )
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def reduce_per_replica(values, strategy, reduction):
        if reduction in ("auto", "mean") and _is_multi_worker(strategy):
            # Fix 2: rank-0 logs are averaged over all replicas with axis=None (upstream: axis=0).
            def _reduce(v):
                if isinstance(v, (tf.Tensor, tf.distribute.DistributedValues)) and _rank(v) == 0:
                    return strategy.reduce("MEAN", v, axis=None)
                return original_reduce(v, strategy, reduction)

            return tf.nest.map_structure(_reduce, values)
        return original_reduce(values, strategy, reduction)

    _ORIGINALS.update(build=original_build, reduce=original_reduce)
    tf_trainer.TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    tf_trainer.reduce_per_replica = reduce_per_replica
    return True


def _rank(value):
    if isinstance(value, tf.distribute.DistributedValues):
        value = value.values[0]
    return value.shape.rank


# -- BatchNorm moving statistics ------------------------------------------------------------------------------

_AVERAGE_FNS = weakref.WeakKeyDictionary()  # model -> (strategy, traced averaging function)


def batchnorm_statistics(model):
    """The moving mean/variance variables of every BatchNormalization layer of `model`."""
    variables = []
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.BatchNormalization):
            variables += [layer.moving_mean, layer.moving_variance]
    return variables


def average_batchnorm_statistics(model, strategy):
    """Sets every replica's BatchNorm moving statistics to their mean over all replicas (all workers).

    Keras updates these non-trainable variables on each replica from its own batches only, so replicas
    drift apart (validation would then mix models, and workers would save different statistics). Averaging
    them before evaluation and saving keeps every replica identical; a collective op under multi-worker, so
    every worker must call it at the same point. No-op with a single replica.
    """
    if strategy.num_replicas_in_sync == 1:
        return
    variables = batchnorm_statistics(model)
    if not variables:
        return
    strategy_and_fn = _AVERAGE_FNS.get(model)
    fn = strategy_and_fn[1] if strategy_and_fn and strategy_and_fn[0] is strategy else None
    if fn is None:

        @tf.function
        def fn():
            def replica_fn():
                context = tf.distribute.get_replica_context()
                means = context.all_reduce("MEAN", [tf.identity(v.value) for v in variables])
                for variable, mean in zip(variables, means, strict=True):
                    variable.value.assign(mean)
                return means

            strategy.run(replica_fn)

        _AVERAGE_FNS[model] = (strategy, fn)
    fn()


class AverageBatchNormStatistics(keras.callbacks.Callback):
    """Calls average_batchnorm_statistics before every evaluation (including fit's validation)."""

    def __init__(self, strategy):
        super().__init__()
        self.strategy = strategy

    def on_test_begin(self, logs=None):
        average_batchnorm_statistics(self.model, self.strategy)
