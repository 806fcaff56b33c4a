"""A training run: model.compile + model.fit under a tf.distribute strategy, resumable after a kill."""

import dataclasses
import importlib.util
import json
import math
import os
import warnings

import keras
import tensorflow as tf

from cost_tf import checkpoint, distribute, metrics, optim
from cost_tf.autotune import autotune_for_main
from cost_tf.inflate import inflate_imagenet
from cost_tf.resnet import build_model
from cost_tf.train.config import mixing, resolve_config
from cost_tf.train.data import data_report, distributed_dataset, flag_error, prepare_data
from pipelines import dataset, files

# What a run writes in model_dir (besides config.json, backup/ and the synthetic data/); a fresh run (no
# backup to resume) removes them first.
RUN_OUTPUTS = (
    "model.keras",
    "metrics.json",
    "best.keras",
    "best.keras.json",
    "training_log.csv",
    "tensorboard",
    "data_report.json",
)


def make_callbacks(c, write_dir, backup_dir, strategy):
    """The Keras callbacks of a run, in the order they must see epoch ends (the backup last).

    Returns (callbacks, backup): BN-statistics averaging, TerminateOnNaN, CSVLogger, TensorBoard,
    ModelCheckpoint (best by val_top1), and the crash-safe BackupAndRestore every c.backup_steps batches.
    """
    backup = checkpoint.AtomicBackupAndRestore(
        backup_dir,
        save_freq=c.backup_steps or "epoch",
        write_dir=backup_dir if write_dir == c.model_dir else os.path.join(write_dir, "backup"),
    )
    callbacks = [
        distribute.AverageBatchNormStatistics(strategy),
        keras.callbacks.TerminateOnNaN(),
        keras.callbacks.CSVLogger(os.path.join(write_dir, "training_log.csv"), append=True),
        keras.callbacks.TensorBoard(
            os.path.join(write_dir, "tensorboard"), update_freq="epoch", profile_batch=0
        ),
        checkpoint.AtomicModelCheckpoint(
            os.path.join(write_dir, "best.keras"),
            monitor="val_mAP" if c.multilabel else "val_top1",
            mode="max",
            save_best_only=True,
        ),
        backup,
    ]
    return callbacks, backup


def compile_model(c, num_classes, steps_per_epoch):
    """Builds (and, given --imagenet_weights, inflates) and compiles the model in the current scope."""
    model = build_model(
        c.arch, num_classes=num_classes, num_frames=c.num_frames, input_size=c.crop_size, dropout=c.dropout
    )
    if c.imagenet_weights:
        inflate_imagenet(model, c.imagenet_weights)
    # The lr scales with the effective batch; with accumulation the schedule counts optimizer updates.
    k = c.accumulate_steps
    learning_rate = optim.scaled_learning_rate(c.lr, c.batch_size * k)
    schedule = optim.build_schedule(
        learning_rate, steps_per_epoch // k, c.epochs, c.lr_schedule, c.lr_steps, c.lr_decay, c.warmup_epochs
    )
    optimizer = optim.build_optimizer(
        model,
        schedule,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        clipnorm=c.clipnorm,
        accumulate_steps=k,
        alpha_lr_multiplier=c.alpha_lr_multiplier,
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    metric_list = [
        keras.metrics.SparseCategoricalAccuracy(name="top1"),
        keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
    ]
    if c.multilabel or c.label_smoothing or mixing(c):  # soft, packed or multi-hot targets
        loss = metrics.ClipLoss(num_classes, multilabel=c.multilabel, label_smoothing=c.label_smoothing)
        if c.multilabel:
            metric_list = [metrics.MeanAveragePrecision(num_classes)]
        elif mixing(c):
            metric_list = [metrics.TopK(num_classes, k=1), metrics.TopK(num_classes, k=5)]
    model.compile(optimizer=optimizer, loss=loss, metrics=metric_list)
    return model


def check_resumable(c, state, config_path):
    """A backup holds the optimizer state of its run's accumulate_steps (accumulators or none): resuming it
    with another value would silently drop them, so that is an error naming the flag."""
    if state is None or not tf.io.gfile.exists(config_path):
        return
    with tf.io.gfile.GFile(config_path) as f:
        before = json.load(f).get("accumulate_steps", 1)
    if before != c.accumulate_steps:
        raise flag_error(
            "accumulate_steps",
            c.accumulate_steps,
            f"the backup in {os.path.dirname(config_path)}/backup was written with --accumulate_steps="
            f"{before}; resume with that value or remove the backup folder to start over",
        )


def fit_segments(state, epochs, steps):
    """(initial_epoch, end_epoch, steps_per_epoch, step_offset) fits that complete the run from `state`."""
    if state is None:
        return [(0, epochs, steps, 0)]
    epoch, step = state["epoch"], state["step"]
    if epoch >= epochs:
        return []
    if 0 < step < steps:
        rest = [(epoch + 1, epochs, steps, 0)] if epoch + 1 < epochs else []
        return [(epoch, epoch + 1, steps - step, step)] + rest
    return [(epoch, epochs, steps, 0)]


def setup(config):
    """Validates the config and creates the strategy: (resolved config, strategy). Fails fast (ValueError)
    on bad flags and on a global batch the replicas cannot share, before any data is read or model built."""
    c = resolve_config(config)
    if importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            "The TensorBoard callback needs the tensorboard package (pinned in requirements.txt): "
            "pip install -r requirements.txt"
        )
    strategy = distribute.create_strategy(c.strategy, tpu=c.tpu)
    distribute.check_global_batch(c.batch_size, strategy.num_replicas_in_sync)
    if c.precision == "mixed_float16" and (c.strategy == "tpu" or not tf.config.list_logical_devices("GPU")):
        raise flag_error(
            "precision",
            c.precision,
            "float16 needs a GPU (TensorFlow has no float16 CPU "
            "kernel for 3D pooling); use mixed_bfloat16 on CPU/TPU",
        )
    return c, strategy


def train(config, callbacks=(), strategy=None):
    """Trains, evaluates on the eval split (centre clip) and writes the outputs (see module docstring).

    Args:
      config: TrainConfig (validated and completed by resolve_config here).
      callbacks: extra Keras callbacks (run before the backup).
      strategy: a strategy from `setup` (default: created from config.strategy).

    Returns:
      metrics dict, also written to {model_dir}/metrics.json: top1, top5, loss, epochs (completed), steps
      (optimizer iterations), arch, dataset, num_eval (eval clips, when known).
    """
    if strategy is None:
        c, strategy = setup(config)
    else:
        c = resolve_config(config)
        distribute.check_global_batch(c.batch_size, strategy.num_replicas_in_sync)
    if c.seed is not None:
        keras.utils.set_random_seed(c.seed)
    if c.deterministic:
        tf.config.experimental.enable_op_determinism()
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(c.precision)
    try:
        with distribute.WriteDir(c.model_dir, strategy) as out:
            return _train(c, strategy, out, list(callbacks))
    finally:
        keras.config.set_dtype_policy(previous_policy)


def _train(c, strategy, out, extra_callbacks):
    skips_before = len(dataset.raw_video_skips())  # videos this process skipped before this run
    tf.io.gfile.makedirs(out.path)
    train_source, eval_source, names = prepare_data(c, None if out.chief else os.path.join(out.path, "data"))
    num_classes = c.num_classes
    if names and len(names) != num_classes:
        names = None  # --num_classes overrides the list; report indices
    steps = _steps_per_epoch(c, train_source)
    backup_dir = os.path.join(c.model_dir, "backup")
    state = _start(c, out, backup_dir, steps)
    files.write_json(
        os.path.join(out.path, "config.json"),
        dict(
            dataclasses.asdict(c),
            num_classes=num_classes,
            steps_per_epoch=steps,
            class_names=names,
            eval_pattern=eval_source.kwargs.get("file_pattern", c.eval_pattern),
        ),
    )
    train_ds, eval_ds = _datasets(c, strategy, train_source, eval_source, num_classes, state, steps)
    with strategy.scope():
        model = compile_model(c, num_classes, steps)
    if c.autotune:
        autotune_for_main(
            model, (c.batch_size // strategy.num_replicas_in_sync, c.num_frames, c.crop_size, c.crop_size, 3)
        )
    callbacks, backup = make_callbacks(c, out.path, backup_dir, strategy)
    callbacks[-1:-1] = extra_callbacks
    completed = _fit(c, model, train_ds, eval_ds, callbacks, backup, state, steps, backup_dir)
    metrics_ = _finish(c, model, strategy, out, eval_ds, completed, (train_source, eval_source), skips_before)
    if out.chief and tf.io.gfile.exists(backup_dir):
        tf.io.gfile.rmtree(backup_dir)
    return metrics_


def _steps_per_epoch(c, train_source):
    """Batches per epoch: whole accumulated updates of batch_size x accumulate_steps clips."""
    k = c.accumulate_steps
    steps = c.steps_per_epoch or train_source.count // (c.batch_size * k) * k
    if steps < 1:
        raise ValueError(
            f"{train_source.count} training clips make no batch of batch_size={c.batch_size}"
            + (f" x accumulate_steps={k}." if k > 1 else ".")
        )
    return steps


def _start(c, out, backup_dir, steps):
    """The backup state to resume from (None: a fresh run, whose folder is first cleared of an earlier run's
    outputs, which would mix with this one's)."""
    state = checkpoint.read_backup_state(backup_dir)
    check_resumable(c, state, os.path.join(out.path, "config.json"))
    if state is not None:
        print(
            f"Resuming from {backup_dir}: epoch {state['epoch']} done, step {state['step']}/{steps} of the "
            "next one.",
            flush=True,
        )
        return state
    for name in RUN_OUTPUTS:
        path = os.path.join(out.path, name)
        if tf.io.gfile.isdir(path):
            tf.io.gfile.rmtree(path)
        elif tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)
    return None


def _datasets(c, strategy, train_source, eval_source, num_classes, state, steps):
    """The distributed training and evaluation datasets of the run."""
    # A resumed run draws other clips than the run it continues (same seed, shifted by the resume point).
    offset = 0 if state is None else state["epoch"] * steps + state["step"]
    seed = None if c.seed is None else c.seed + 7919 * offset
    labels = dict(multilabel=True, num_classes=num_classes) if c.multilabel else {}
    augmentations = dict(
        randaugment=c.randaugment,
        random_erasing=c.random_erasing,
        mixup_alpha=c.mixup_alpha,
        cutmix_alpha=c.cutmix_alpha,
        num_classes=num_classes,
    )
    train_ds = distributed_dataset(
        strategy,
        train_source,
        "train",
        c.batch_size,
        seed=seed,
        flip=c.flip,
        shuffle_buffer=c.shuffle_buffer,
        **dict(augmentations, **labels),
    )
    eval_ds = distributed_dataset(strategy, eval_source, "eval", c.batch_size, **labels)
    return train_ds, eval_ds


def _fit(c, model, train_ds, eval_ds, callbacks, backup, state, steps, backup_dir):
    """model.fit over the segments left from `state`; returns the epochs completed (all of them)."""
    completed = state["epoch"] if state else 0
    segments = fit_segments(state, c.epochs, steps)
    if not segments:
        backup.set_model(model)
        backup.on_train_begin()
    for initial_epoch, end_epoch, segment_steps, step_offset in segments:
        backup.step_offset = step_offset
        with warnings.catch_warnings():
            # Keras warns whenever a dataset of unknown length ends; only the (finite) validation data
            # does here: the training data repeats forever.
            warnings.filterwarnings("ignore", message="Your input ran out of data")
            history = model.fit(
                train_ds,
                initial_epoch=initial_epoch,
                epochs=end_epoch,
                steps_per_epoch=segment_steps,
                validation_data=eval_ds,
                validation_freq=c.validation_freq,
                callbacks=callbacks,
                shuffle=False,
                verbose=c.verbose,
            )
        losses = history.history.get("loss", [])
        if losses and not math.isfinite(losses[-1]):
            raise RuntimeError(
                f"Training diverged (loss {losses[-1]}) in epoch {initial_epoch + len(losses)}; "
                f"the last finite state is kept in {backup_dir}."
            )
        completed = initial_epoch + len(losses)
    if completed != c.epochs:
        raise RuntimeError(f"Training stopped after {completed} of {c.epochs} epochs.")
    return completed


def _finish(c, model, strategy, out, eval_ds, completed, sources, skips_before):
    """Evaluates the final model, saves it and writes metrics.json (+ data_report.json); returns the metrics."""
    train_source, eval_source = sources
    distribute.average_batchnorm_statistics(model, strategy)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        results = model.evaluate(eval_ds, return_dict=True, verbose=0)
    checkpoint.save_model(model, os.path.join(out.path, "model.keras"))
    headline = ("mAP",) if c.multilabel else ("top1", "top5")
    scores = {
        **{name: float(results[name]) for name in headline},
        "loss": float(results["loss"]),
        "epochs": completed,
        "steps": int(model.optimizer.iterations.numpy()),
        "arch": c.arch,
        "dataset": c.dataset,
        "num_eval": eval_source.count,
    }
    skipped = _skipped_videos(c, out, train_source, eval_source, skips_before)
    if skipped is not None:
        scores["skipped_videos"] = skipped
    files.write_json(os.path.join(out.path, "metrics.json"), scores)
    summary = (
        f"mAP {scores['mAP']:.4f}"
        if c.multilabel
        else f"top-1 {scores['top1']:.4f}, top-5 {scores['top5']:.4f}"
    )
    print(
        f"Wrote {os.path.join(c.model_dir, 'model.keras')} and metrics.json: {summary} after {completed} "
        f"epochs ({scores['steps']} steps).",
        flush=True,
    )
    return scores


def _skipped_videos(c, out, train_source, eval_source, skips_before):
    """Raw-video sources: writes data_report.json and returns the skip counts (None for TFRecords)."""
    skipped = data_report(
        {
            split: (source.report, source.count)
            for split, source in (("train", train_source), ("eval", eval_source))
            if source.report is not None
        },
        skips_before,
    )
    if skipped is None:
        return None
    files.write_json(os.path.join(out.path, "data_report.json"), skipped)
    counts = {
        "missing": sum(len(skipped[s]["missing"]) for s in ("train", "eval")),
        "bad_rows": sum(len(skipped[s]["bad_rows"]) for s in ("train", "eval")),
        "unreadable": len(skipped["unreadable"]),
    }
    if any(counts.values()):
        print(
            f"Skipped videos: {counts['missing']} missing on disk, {counts['bad_rows']} bad annotation rows, "
            f"{counts['unreadable']} unreadable; listed in {os.path.join(c.model_dir, 'data_report.json')}.",
            flush=True,
        )
    return counts
