"""Training: `python -m cost_tf.train --dataset=... --model_dir=...` (model.compile + model.fit, tf.distribute).

Library: `train(TrainConfig(...)) -> metrics`, `resolve_config`, `make_callbacks`, `distributed_dataset`;
`define_flags` / `config_from_flags` for the absl main (flags are defined only when run as a main).

Defaults follow the spec's recipe (section 3) for the named dataset; --dataset=synthetic (the default) is the
demo: the embedded order-only dataset (pipelines/synthetic.py), CoST(b) tiny, minutes on 2 CPU cores.

Outputs in --model_dir: model.keras (final model), metrics.json (top-1/top-5 on the eval set, centre clip),
best.keras (+ best.keras.json) by validation top-1, config.json, training_log.csv, tensorboard/, and while
training backup/ (removed once the outputs are written). A run killed at any moment and started again with the
same command resumes from the last backup (every --backup_steps batches and every epoch end), mid-epoch
included, and ends after the same number of epochs and optimizer steps. A run that finds no backup starts
afresh and first removes an earlier run's outputs from --model_dir.
"""

import dataclasses
import importlib.util
import json
import math
import os
import sys
import warnings

import keras
import tensorflow as tf

from cost_tf import checkpoint, distribute, metrics, optim
from cost_tf.autotune import AUTOTUNE_HELP, autotune_for_main
from cost_tf.resnet import ARCHS, build_model, parse_arch
from pipelines import files, readers, synthetic

DATASETS = ("synthetic", "tfrecord", "kinetics", "moments")
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
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

_KINETICS = dict(
    arch="cost_b_r50",
    epochs=160,
    lr_steps=(80, 120),
    lr_schedule="step",
    batch_size=64,
    lr=0.01,
    warmup_epochs=0.0,
    num_frames=8,
    frame_stride=8,
    crop_size=224,
    num_classes=400,
    backup_steps=500,
    validation_freq=5,
)
# Dataset -> defaults of the fields left None. Kinetics/Moments: the public code's recipe (spec section 3);
# tfrecord: the Kinetics recipe (num_classes from classes.txt beside the shards when present).
RECIPES = {
    "kinetics": _KINETICS,
    "tfrecord": _KINETICS,
    "moments": dict(_KINETICS, epochs=48, lr_steps=(24, 36), num_classes=339),
    # The demo: 20-frame 64-px clips, 8 frames one every 2nd, 56-px crops, CoST(b) tiny. 12 epochs (900 steps):
    # at 8 the validation top-1 was still rising at the last epoch and landed anywhere in 81-96 %.
    "synthetic": dict(
        arch="cost_b_tiny",
        epochs=12,
        lr_steps=(),
        lr_schedule="cosine",
        batch_size=16,
        lr=0.05,
        warmup_epochs=0.5,
        num_frames=8,
        frame_stride=2,
        crop_size=56,
        num_classes=None,
        backup_steps=50,
        validation_freq=1,
    ),
}


@dataclasses.dataclass
class TrainConfig:
    """Training settings; None means the dataset's recipe default (RECIPES). Field names = flag names."""

    model_dir: str = None
    dataset: str = "synthetic"
    arch: str = None
    # Data sources.
    train_pattern: str = None
    eval_pattern: str = None
    annotations: str = None
    eval_annotations: str = None
    video_dir: str = None
    eval_video_dir: str = None
    classes: str = None
    skip_bad_rows: bool = False
    num_classes: int = None
    data_dir: str = None  # synthetic data folder (default {model_dir}/data)
    synthetic_train: int = synthetic.NUM_TRAIN
    synthetic_eval: int = synthetic.NUM_EVAL
    # Schedule.
    epochs: int = None
    steps_per_epoch: int = None
    batch_size: int = None
    accumulate_steps: int = 1  # update once every this many batches: effective batch batch_size x this
    lr: float = None
    lr_schedule: str = None
    lr_steps: tuple = None
    lr_decay: float = 0.1
    warmup_epochs: float = None
    momentum: float = 0.9
    weight_decay: float = 1e-4
    clipnorm: float = 40.0
    dropout: float = None  # None: the architecture's own (0.5 ResNets, 0.2 S3D-G)
    # Clips.
    num_frames: int = None
    frame_stride: int = None
    crop_size: int = None
    min_resize: int = None
    max_resize: int = None
    eval_resize: int = None
    flip: bool = True
    shuffle_buffer: int = 256
    # Training augmentations and targets (all off: the spec's recipes; pipelines/augment.py).
    randaugment: str = None  # "N,M": N RandAugment ops of magnitude M (0..10), the same for every frame
    random_erasing: float = 0.0  # probability of erasing one box (the same in every frame) of a clip
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    label_smoothing: float = 0.0
    multilabel: bool = False  # several labels per clip: sigmoid cross-entropy, mAP
    # Run.
    imagenet_weights: str = None
    precision: str = "float32"
    strategy: str = "auto"
    tpu: str = None
    seed: int = 0
    # tf.config.experimental.enable_op_determinism(): the same clips, weights and updates on every run on the
    # same machine (needs a seed; process-wide, TF has no public way back).
    deterministic: bool = False
    backup_steps: int = None
    validation_freq: int = None
    verbose: object = "auto"
    autotune: bool = False  # the main's --autotune (default on): time the CoST implementations first


@dataclasses.dataclass
class DataSource:
    """Arguments of pipelines.dataset.make_dataset for one split, and what is known about it."""

    kwargs: dict
    count: int = None  # examples (None: unknown)
    num_units: int = 1  # files or videos it can be sharded by
    report: object = None  # raw videos: the annotation reader's AnnotationReport


def _flag_error(name, value, message):
    return ValueError(f"--{name}: {message}. Received: {name}={value!r}")


def _glob(name, pattern):
    if not pattern:
        raise _flag_error(name, pattern, "a TFRecord file pattern is required for this dataset")
    files = tf.io.gfile.glob(pattern)
    if not files:
        raise _flag_error(name, pattern, "no files match this pattern")
    return sorted(files)


def _check_readable(name, path):
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            f.read(1)
    except (OSError, tf.errors.OpError) as e:
        raise _flag_error(name, path, f"cannot read this file ({type(e).__name__}: {e})") from None


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _flag_error(name, value, "must be a positive integer")


def resolve_config(config):
    """Validates `config` and fills the dataset's recipe defaults. No model is built, no TF device touched.

    Raises ValueError naming the flag: unknown arch (listing the valid ones), dataset, precision, strategy,
    no files matching a pattern, missing annotation/video folders, unreadable weights file, bad numbers.
    """
    if config.dataset not in DATASETS:
        raise _flag_error("dataset", config.dataset, f"must be one of {', '.join(DATASETS)}")
    recipe = RECIPES[config.dataset]
    filled = {
        k: (recipe[k] if v is None and k in recipe and k != "num_classes" else v)
        for k, v in dataclasses.asdict(config).items()
    }
    if config.lr_steps is None and filled["lr_schedule"] != "step":
        filled["lr_steps"] = ()  # the recipe's decay epochs belong to its step schedule
    elif config.lr_steps is None and filled["epochs"] != recipe["epochs"]:
        # Other epochs than the recipe's: its decay points at the same fractions of training.
        epochs = filled["epochs"]
        scaled = {round(e * epochs / recipe["epochs"]) for e in recipe["lr_steps"]} if epochs else set()
        filled["lr_steps"] = tuple(sorted(e for e in scaled if 0 < e < epochs))
    c = TrainConfig(**filled)
    if not c.model_dir:
        raise _flag_error("model_dir", c.model_dir, "an output folder is required")
    if c.arch not in ARCHS:
        raise _flag_error("arch", c.arch, f"unknown architecture; valid names: {', '.join(ARCHS)}")
    parse_arch(c.arch)
    if c.precision not in PRECISIONS:
        raise _flag_error("precision", c.precision, f"must be one of {', '.join(PRECISIONS)}")
    if c.strategy not in distribute.STRATEGIES:
        raise _flag_error("strategy", c.strategy, f"must be one of {', '.join(distribute.STRATEGIES)}")
    if c.lr_schedule not in optim.SCHEDULES:
        raise _flag_error("lr_schedule", c.lr_schedule, f"must be one of {', '.join(optim.SCHEDULES)}")
    for name in (
        "epochs",
        "batch_size",
        "num_frames",
        "frame_stride",
        "crop_size",
        "synthetic_train",
        "synthetic_eval",
        "shuffle_buffer",
        "accumulate_steps",
    ):
        _positive_int(name, getattr(c, name))
    for name in (
        "steps_per_epoch",
        "backup_steps",
        "validation_freq",
        "num_classes",
        "min_resize",
        "max_resize",
        "eval_resize",
    ):
        if getattr(c, name) is not None:
            _positive_int(name, getattr(c, name))
    if c.steps_per_epoch is not None and c.steps_per_epoch % c.accumulate_steps:
        raise _flag_error(
            "steps_per_epoch",
            c.steps_per_epoch,
            f"must be a multiple of --accumulate_steps={c.accumulate_steps} (every epoch ends on an update)",
        )
    if not c.lr > 0:
        raise _flag_error("lr", c.lr, "must be > 0")
    c.lr_steps = tuple(int(e) for e in (c.lr_steps or ()))
    if list(c.lr_steps) != sorted(set(c.lr_steps)) or any(not 0 < e < c.epochs for e in c.lr_steps):
        raise _flag_error("lr_steps", c.lr_steps, f"must be increasing epochs in (0, epochs={c.epochs})")
    if c.lr_steps and c.lr_schedule != "step":
        raise _flag_error("lr_steps", c.lr_steps, "only applies to --lr_schedule=step")
    if not 0 <= c.warmup_epochs < c.epochs:
        raise _flag_error("warmup_epochs", c.warmup_epochs, f"must be in [0, epochs={c.epochs})")
    _check_augmentations(c)
    if c.deterministic and c.seed is None:
        raise _flag_error("deterministic", c.deterministic, "needs a --seed (random draws must repeat too)")
    if c.dataset == "tfrecord":
        _glob("train_pattern", c.train_pattern)
        _glob("eval_pattern", c.eval_pattern)
    elif c.dataset in ("kinetics", "moments"):
        for name in ("annotations", "eval_annotations"):
            _check_readable(name, getattr(c, name))
        for name in ("video_dir", "eval_video_dir"):
            value = getattr(c, name) or (c.video_dir if name == "eval_video_dir" else None)
            if not value or not tf.io.gfile.isdir(value):
                raise _flag_error(name, value, "must be an existing folder of videos")
        c.eval_video_dir = c.eval_video_dir or c.video_dir
    if c.classes:
        _check_readable("classes", c.classes)
    if c.dataset in ("kinetics", "moments"):
        # Read both splits now: a bad row or an empty split fails before anything is built.
        reports = [read_split(c, split)[1] for split in ("train", "eval")]
        names = reports[0].classes
    if c.num_classes is None:  # the class list when there is one, else the recipe's
        if c.dataset == "synthetic":
            names = synthetic.CLASSES
        elif c.dataset == "tfrecord":
            names = _class_names(c, _glob("train_pattern", c.train_pattern))
        c.num_classes = len(names) if names else RECIPES[c.dataset]["num_classes"]
    if c.imagenet_weights and parse_arch(c.arch)[0] == "s3dg":
        raise _flag_error(
            "imagenet_weights",
            c.imagenet_weights,
            f"--arch={c.arch} (S3D-G, Inception-v1 layout) has no ImageNet initialisation: "
            "keras.applications has no Inception-v1 to inflate; omit the flag to train from scratch",
        )
    if c.imagenet_weights:
        _check_readable("imagenet_weights", c.imagenet_weights)
        try:
            from cost_tf import inflate  # noqa: F401
        except ImportError as e:
            raise _flag_error(
                "imagenet_weights", c.imagenet_weights, f"ImageNet inflation is unavailable ({e})"
            ) from None
    return c


def _check_augmentations(c):
    from pipelines import augment

    try:
        parsed = augment.parse_randaugment(c.randaugment)
    except ValueError as e:
        raise _flag_error("randaugment", c.randaugment, str(e).split(". Received")[0]) from None
    c.randaugment = None if parsed is None else f"{parsed[0]},{parsed[1]:g}"
    for name, low, high in (
        ("random_erasing", 0.0, 1.0),
        ("mixup_alpha", 0.0, math.inf),
        ("cutmix_alpha", 0.0, 1.0),  # keras.layers.CutMix's bound
        ("label_smoothing", 0.0, 0.999),
    ):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise _flag_error(name, value, f"must be a number in [{low}, {high}]")
    if c.multilabel and c.dataset in ("kinetics", "moments"):
        raise _flag_error(
            "multilabel", c.multilabel, "needs TFRecords with several labels per clip (--dataset=tfrecord)"
        )


def _mixing(c):
    return c.mixup_alpha > 0 or c.cutmix_alpha > 0


def _class_names(c, train_files=None):
    """Class names when known: --classes file, the synthetic list, or classes.txt beside the TFRecords."""
    path = c.classes
    if path is None and train_files:
        beside = os.path.join(os.path.dirname(train_files[0]), "classes.txt")
        path = beside if tf.io.gfile.exists(beside) else None
    if path is None:
        return None
    return readers.read_class_names(path)


def _count_records(files):
    print(
        f"Counting the records of {len(files)} TFRecord files (pass --steps_per_epoch to skip) ...",
        flush=True,
    )
    return int(tf.data.TFRecordDataset(files).reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))


def _raw_source(c, split):
    """make_dataset's raw-video arguments for a split of --dataset=kinetics|moments."""
    train_split = split == "train"
    return dict(
        dataset=c.dataset,
        classes=c.classes,
        skip_bad_rows=c.skip_bad_rows,
        annotations=c.annotations if train_split else c.eval_annotations,
        video_dir=c.video_dir if train_split else (c.eval_video_dir or c.video_dir),
        # Kinetics without --classes: every split takes the training CSV's class indices.
        train_annotations=None if train_split or c.dataset != "kinetics" or c.classes else c.annotations,
    )


def read_split(c, split):
    """(records, report) of a raw-video split ("train" | "eval"), read as make_dataset reads it.

    Raises ValueError naming the flag when no listed video is found (AnnotationError, a ValueError naming
    file:line, for a bad row without --skip_bad_rows).
    """

    source = _raw_source(c, split)
    records, report = readers.read_annotations(
        source["dataset"],
        source["annotations"],
        source["video_dir"],
        classes=source["classes"],
        train_annotations=source["train_annotations"],
        skip_bad_rows=source["skip_bad_rows"],
    )
    if not records:
        name = "annotations" if split == "train" else "eval_annotations"
        raise _flag_error(
            name,
            source["annotations"],
            f"none of its {report.num_rows} rows names a video found "
            f"under {source['video_dir']} ({len(report.missing)} missing, "
            f"{len(report.bad_rows)} bad rows)",
        )
    return records, report


def data_report(reports, skips_before=0):
    """What the raw-video source skipped: {split: {videos, missing, bad_rows}, "unreadable": [...]}; None for
    TFRecord sources. `reports`: {split: (AnnotationReport, record count)} from prepare_data; the unreadable
    videos are those pipelines.dataset.raw_video_skips() lists after its first `skips_before`."""
    if not reports:
        return None
    from pipelines.dataset import raw_video_skips

    unreadable = {}
    for path, reason in raw_video_skips()[skips_before:]:  # a video skipped again in every epoch counts once
        unreadable.setdefault(path, reason)
    # A split read with the training CSV's class indices also reports that CSV's bad rows: keep its own.
    out = {
        split: {
            "annotations": report.annotations,
            "videos": count,
            "missing": report.missing,
            "bad_rows": [row for row in report.bad_rows if row["file"] == report.annotations],
        }
        for split, (report, count) in reports.items()
    }
    out["unreadable"] = [{"path": path, "reason": reason} for path, reason in sorted(unreadable.items())]
    return out


def prepare_data(c, data_dir=None):
    """(train DataSource, eval DataSource, class names) for a resolved config; writes the synthetic set.

    data_dir: where the synthetic dataset goes (default c.data_dir or {model_dir}/data).
    """
    clip = dict(
        num_frames=c.num_frames,
        frame_stride=c.frame_stride,
        crop_size=c.crop_size,
        min_resize=c.min_resize,
        max_resize=c.max_resize,
        eval_resize=c.eval_resize,
    )
    names = None
    if c.dataset == "synthetic":
        folder = data_dir or c.data_dir or os.path.join(c.model_dir, "data")
        train_pattern, eval_pattern = synthetic.write_synthetic(
            folder, num_train=c.synthetic_train, num_eval=c.synthetic_eval
        )
        names = list(synthetic.CLASSES)
        train_files, eval_files = tf.io.gfile.glob(train_pattern), tf.io.gfile.glob(eval_pattern)
        counts = (c.synthetic_train, c.synthetic_eval)
    elif c.dataset == "tfrecord":
        train_files, eval_files = (
            _glob("train_pattern", c.train_pattern),
            _glob("eval_pattern", c.eval_pattern),
        )
        names = _class_names(c, train_files)
        counts = (None if c.steps_per_epoch else _count_records(train_files), None)
    if c.dataset in ("synthetic", "tfrecord"):
        train = DataSource(dict(clip, file_pattern=train_files), counts[0], len(train_files))
        evaluation = DataSource(dict(clip, file_pattern=eval_files), counts[1], len(eval_files))
    else:
        (train_records, train_report), (eval_records, eval_report) = (
            read_split(c, s) for s in ("train", "eval")
        )
        names = train_report.classes
        train = DataSource(dict(clip, **_raw_source(c, "train")), len(train_records), len(train_records))
        evaluation = DataSource(dict(clip, **_raw_source(c, "eval")), len(eval_records), len(eval_records))
        train.report, evaluation.report = train_report, eval_report
    return train, evaluation, names


def distributed_dataset(strategy, source, mode, global_batch_size, seed=None, **kwargs):
    """strategy.distribute_datasets_from_function over pipelines.dataset.make_dataset.

    Each worker's input pipeline reads its own shard of the files (or videos) in train mode; evaluation
    data with fewer files than workers is read whole by every worker (the metrics, summed over workers,
    are then unchanged). `seed` differs per input pipeline so workers draw different crops.
    """
    from pipelines.dataset import make_dataset

    def dataset_fn(context):
        shard = context.num_input_pipelines > 1 and (
            mode == "train" or source.num_units >= context.num_input_pipelines
        )
        return make_dataset(
            mode=mode,
            batch_size=context.get_per_replica_batch_size(global_batch_size),
            seed=None if seed is None else seed + 100_003 * context.input_pipeline_id,
            input_context=context if shard else None,
            **source.kwargs,
            **kwargs,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


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
        from cost_tf.inflate import inflate_imagenet

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
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    metric_list = [
        keras.metrics.SparseCategoricalAccuracy(name="top1"),
        keras.metrics.SparseTopKCategoricalAccuracy(k=5, name="top5"),
    ]
    if c.multilabel or c.label_smoothing or _mixing(c):  # soft, packed or multi-hot targets
        loss = metrics.ClipLoss(num_classes, multilabel=c.multilabel, label_smoothing=c.label_smoothing)
        if c.multilabel:
            metric_list = [metrics.MeanAveragePrecision(num_classes)]
        elif _mixing(c):
            metric_list = [metrics.TopK(num_classes, k=1), metrics.TopK(num_classes, k=5)]
    model.compile(optimizer=optimizer, loss=loss, metrics=metric_list)
    return model


def _check_resumable(c, state, config_path):
    """A backup holds the optimizer state of its run's accumulate_steps (accumulators or none): resuming it
    with another value would silently drop them, so that is an error naming the flag."""
    if state is None or not tf.io.gfile.exists(config_path):
        return
    with tf.io.gfile.GFile(config_path) as f:
        before = json.load(f).get("accumulate_steps", 1)
    if before != c.accumulate_steps:
        raise _flag_error(
            "accumulate_steps",
            c.accumulate_steps,
            f"the backup in {os.path.dirname(config_path)}/backup was written with --accumulate_steps="
            f"{before}; resume with that value or remove the backup folder to start over",
        )


def _fit_segments(state, epochs, steps):
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
        raise _flag_error(
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
    from pipelines.dataset import raw_video_skips

    skips_before = len(raw_video_skips())  # videos this process skipped before this run
    tf.io.gfile.makedirs(out.path)
    train_source, eval_source, names = prepare_data(c, None if out.chief else os.path.join(out.path, "data"))
    num_classes = c.num_classes
    if names and len(names) != num_classes:
        names = None  # --num_classes overrides the list; report indices
    # Batches per epoch: whole accumulated updates of batch_size x accumulate_steps clips.
    k = c.accumulate_steps
    steps = c.steps_per_epoch or train_source.count // (c.batch_size * k) * k
    if steps < 1:
        raise ValueError(
            f"{train_source.count} training clips make no batch of batch_size={c.batch_size}"
            + (f" x accumulate_steps={k}." if k > 1 else ".")
        )
    backup_dir = os.path.join(c.model_dir, "backup")
    state = checkpoint.read_backup_state(backup_dir)
    _check_resumable(c, state, os.path.join(out.path, "config.json"))
    if state is not None:
        print(
            f"Resuming from {backup_dir}: epoch {state['epoch']} done, step {state['step']}/{steps} of the "
            "next one.",
            flush=True,
        )
    else:  # a fresh run: outputs of an earlier run in this folder would mix with this one's
        for name in RUN_OUTPUTS:
            path = os.path.join(out.path, name)
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            elif tf.io.gfile.exists(path):
                tf.io.gfile.remove(path)
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

    with strategy.scope():
        model = compile_model(c, num_classes, steps)
    if c.autotune:
        autotune_for_main(
            model, (c.batch_size // strategy.num_replicas_in_sync, c.num_frames, c.crop_size, c.crop_size, 3)
        )
    callbacks, backup = make_callbacks(c, out.path, backup_dir, strategy)
    callbacks[-1:-1] = extra_callbacks
    completed = state["epoch"] if state else 0
    segments = _fit_segments(state, c.epochs, steps)
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

    distribute.average_batchnorm_statistics(model, strategy)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Your input ran out of data")
        results = model.evaluate(eval_ds, return_dict=True, verbose=0)
    checkpoint.save_model(model, os.path.join(out.path, "model.keras"))
    headline = ("mAP",) if c.multilabel else ("top1", "top5")
    metrics = {
        **{name: float(results[name]) for name in headline},
        "loss": float(results["loss"]),
        "epochs": completed,
        "steps": int(model.optimizer.iterations.numpy()),
        "arch": c.arch,
        "dataset": c.dataset,
        "num_eval": eval_source.count,
    }
    skipped = data_report(
        {
            split: (source.report, source.count)
            for split, source in (("train", train_source), ("eval", eval_source))
            if source.report is not None
        },
        skips_before,
    )
    if skipped is not None:
        files.write_json(os.path.join(out.path, "data_report.json"), skipped)
        metrics["skipped_videos"] = counts = {
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
    files.write_json(os.path.join(out.path, "metrics.json"), metrics)
    if out.chief and tf.io.gfile.exists(backup_dir):
        tf.io.gfile.rmtree(backup_dir)
    scores = (
        f"mAP {metrics['mAP']:.4f}"
        if c.multilabel
        else f"top-1 {metrics['top1']:.4f}, top-5 {metrics['top5']:.4f}"
    )
    print(
        f"Wrote {os.path.join(c.model_dir, 'model.keras')} and metrics.json: {scores} after {completed} "
        f"epochs ({metrics['steps']} steps).",
        flush=True,
    )
    return metrics


# -- absl main ------------------------------------------------------------------------------------------------


def define_flags(flag_values=None):
    """Defines the training flags on `flag_values` (default absl's FLAGS); returns {name: FlagHolder}."""
    from absl import flags

    fv = flag_values if flag_values is not None else flags.FLAGS
    defaults = TrainConfig()
    recipe = "default: the dataset's recipe"
    h = {}
    h["model_dir"] = flags.DEFINE_string(
        "model_dir", None, "Output folder (checkpoints, logs, model).", flag_values=fv
    )
    h["dataset"] = flags.DEFINE_enum(
        "dataset",
        "synthetic",
        DATASETS,
        "synthetic (embedded, needs nothing), tfrecord (--train_pattern/"
        "--eval_pattern), kinetics or moments (raw videos: --annotations, "
        "--eval_annotations, --video_dir).",
        flag_values=fv,
    )
    h["arch"] = flags.DEFINE_string("arch", None, f"One of {', '.join(ARCHS)} ({recipe}).", flag_values=fv)
    for name, help_ in (
        ("train_pattern", "Glob of training TFRecord shards."),
        ("eval_pattern", "Glob of evaluation TFRecord shards."),
        ("annotations", "Training annotation file (Kinetics CSV / Moments CSV)."),
        ("eval_annotations", "Evaluation annotation file."),
        ("video_dir", "Folder of the training videos."),
        ("eval_video_dir", "Folder of the evaluation videos (default --video_dir)."),
        ("classes", "Class list file (Kinetics: one name per line; Moments: category,index)."),
        ("data_dir", "Synthetic dataset folder (default {model_dir}/data)."),
        ("imagenet_weights", "Local keras.applications ResNet .weights.h5 to inflate."),
        ("tpu", "TPU name or address for --strategy=tpu."),
    ):
        h[name] = flags.DEFINE_string(name, None, help_, flag_values=fv)
    for name, help_ in (
        ("num_classes", "Classifier width (default from the dataset / class list)."),
        ("epochs", f"Training epochs ({recipe})."),
        ("steps_per_epoch", "Batches per epoch (default: training clips // batch_size)."),
        ("batch_size", f"GLOBAL batch over all replicas ({recipe})."),
        ("num_frames", f"Frames per clip ({recipe})."),
        ("frame_stride", f"Take one frame every frame_stride ({recipe})."),
        ("crop_size", f"Crop side in pixels ({recipe})."),
        ("min_resize", "Train short side, lower bound (default crop*8/7: 256 at 224)."),
        ("max_resize", "Train short side, upper bound (default crop*10/7: 320 at 224)."),
        ("eval_resize", "Eval short side (default crop*8/7: 256 at 224)."),
        ("backup_steps", f"Back up every this many batches, and at every epoch end ({recipe})."),
        ("validation_freq", f"Validate every this many epochs ({recipe})."),
    ):
        h[name] = flags.DEFINE_integer(name, None, help_, flag_values=fv)
    h["accumulate_steps"] = flags.DEFINE_integer(
        "accumulate_steps",
        defaults.accumulate_steps,
        "Gradient accumulation: one optimizer update every this many batches, with their mean gradient, "
        "as one step on batch_size x accumulate_steps clips (the lr scales with that effective batch; "
        "steps_per_epoch counts batches and must be a multiple of it).",
        flag_values=fv,
    )
    h["synthetic_train"] = flags.DEFINE_integer(
        "synthetic_train", defaults.synthetic_train, "Synthetic training clips.", flag_values=fv
    )
    h["synthetic_eval"] = flags.DEFINE_integer(
        "synthetic_eval", defaults.synthetic_eval, "Synthetic evaluation clips.", flag_values=fv
    )
    h["shuffle_buffer"] = flags.DEFINE_integer(
        "shuffle_buffer", defaults.shuffle_buffer, "Training shuffle buffer (clips).", flag_values=fv
    )
    h["lr"] = flags.DEFINE_float(
        "lr",
        None,
        f"Learning rate per 64 clips, scaled linearly with --batch_size x --accumulate_steps "
        f"({recipe}: 0.01 for Kinetics/Moments).",
        flag_values=fv,
    )
    h["lr_schedule"] = flags.DEFINE_enum(
        "lr_schedule", None, optim.SCHEDULES, f"Schedule ({recipe}).", flag_values=fv
    )
    h["lr_steps"] = flags.DEFINE_list(
        "lr_steps",
        None,
        f"Epochs where the step schedule decays ({recipe}: "
        "80,120 Kinetics, 24,36 Moments; at the same fractions of --epochs when "
        "that differs).",
        flag_values=fv,
    )
    h["lr_decay"] = flags.DEFINE_float("lr_decay", defaults.lr_decay, "Step schedule factor.", flag_values=fv)
    h["warmup_epochs"] = flags.DEFINE_float(
        "warmup_epochs", None, f"Linear warmup epochs ({recipe}).", flag_values=fv
    )
    h["momentum"] = flags.DEFINE_float("momentum", defaults.momentum, "SGD momentum.", flag_values=fv)
    h["weight_decay"] = flags.DEFINE_float(
        "weight_decay",
        defaults.weight_decay,
        "L2 on kernels only (torch-style, through the momentum).",
        flag_values=fv,
    )
    h["clipnorm"] = flags.DEFINE_float(
        "clipnorm", defaults.clipnorm, "Global gradient norm clip (0: off).", flag_values=fv
    )
    h["dropout"] = flags.DEFINE_float(
        "dropout",
        defaults.dropout,
        "Dropout before the classifier (default: the "
        "architecture's: 0.5 ResNets as the spec, 0.2 S3D-G as its reference).",
        flag_values=fv,
    )
    h["skip_bad_rows"] = flags.DEFINE_bool(
        "skip_bad_rows",
        defaults.skip_bad_rows,
        "Raw videos: skip malformed annotation rows (listed in data_report.json) instead of failing.",
        flag_values=fv,
    )
    h["flip"] = flags.DEFINE_bool(
        "flip", defaults.flip, "Random horizontal flips in training (--noflip).", flag_values=fv
    )
    h["randaugment"] = flags.DEFINE_string(
        "randaugment",
        None,
        "N,M: N of keras.layers.RandAugment's ops of magnitude M (0..10, timm's scale: 2,9 ~ PySlowFast "
        "rand-m9) per training clip, the same ops and parameters for every frame (default: off).",
        flag_values=fv,
    )
    for name, help_ in (
        (
            "random_erasing",
            "Probability of erasing one random box of a training clip, the same in every frame.",
        ),
        ("mixup_alpha", "MixUp within each batch, Beta(alpha, alpha) weights (0: off; PySlowFast 0.8)."),
        (
            "cutmix_alpha",
            "CutMix within each batch, alpha <= 1 (0: off; PySlowFast 1.0). With MixUp: "
            "one or the other per batch.",
        ),
        ("label_smoothing", "Label smoothing of the cross-entropy (0: off)."),
    ):
        h[name] = flags.DEFINE_float(name, getattr(defaults, name), help_ + " Default: off.", flag_values=fv)
    h["multilabel"] = flags.DEFINE_bool(
        "multilabel",
        defaults.multilabel,
        "Several labels per clip (TFRecords' clip/label/index as multi-hot): sigmoid cross-entropy, "
        "mAP as the headline metric (val_mAP picks best.keras).",
        flag_values=fv,
    )
    h["precision"] = flags.DEFINE_enum(
        "precision", defaults.precision, PRECISIONS, "Keras dtype policy.", flag_values=fv
    )
    h["strategy"] = flags.DEFINE_enum(
        "strategy",
        defaults.strategy,
        distribute.STRATEGIES,
        "tf.distribute strategy (auto: multi_worker under a multi-task TF_CONFIG, "
        "mirrored with several GPUs, else one_device).",
        flag_values=fv,
    )
    h["seed"] = flags.DEFINE_integer("seed", defaults.seed, "Random seed (weights and data).", flag_values=fv)
    h["deterministic"] = flags.DEFINE_bool(
        "deterministic",
        defaults.deterministic,
        "tf.config.experimental.enable_op_determinism(): bit-identical runs on one machine (may be slower).",
        flag_values=fv,
    )
    h["verbose"] = flags.DEFINE_enum(
        "verbose",
        "auto",
        ("auto", "0", "1", "2"),
        "Keras fit verbosity (1: progress bar, 2: one line per epoch).",
        flag_values=fv,
    )
    h["autotune"] = flags.DEFINE_bool("autotune", True, AUTOTUNE_HELP, flag_values=fv)
    return h


def config_from_flags(holders):
    """TrainConfig from parsed FlagHolders (see define_flags)."""
    values = {name: holder.value for name, holder in holders.items()}
    if values["verbose"] != "auto":
        values["verbose"] = int(values["verbose"])
    return TrainConfig(**values)


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {argv[1:]}")
    try:
        config, strategy = setup(config_from_flags(_FLAGS))
    except ValueError as e:
        sys.exit(f"error: {e}")
    train(config, strategy=strategy)


if __name__ == "__main__":
    from absl import app

    _FLAGS = define_flags()
    app.run(main)
