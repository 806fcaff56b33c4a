"""TrainConfig (every field a flag of the main), the datasets' recipes (spec section 3) and their validation."""

import dataclasses
import math

import tensorflow as tf

from cost_tf import distribute, optim
from cost_tf.autotune import AUTOTUNE_HELP
from cost_tf.resnet import ARCHS, parse_arch
from cost_tf.train.data import class_names, flag_error, glob_files, read_split
from pipelines import augment, synthetic
from pipelines.mains import option

DATASETS = ("synthetic", "tfrecord", "kinetics", "moments")

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


def _verbosity(value):
    return value if value == "auto" else int(value)


_RECIPE = "default: the dataset's recipe"


@dataclasses.dataclass
class TrainConfig:
    """Training settings; None means the dataset's recipe default (RECIPES). Each field is a flag of the
    main (`python -m cost_tf.train --FIELD=...`), with the help text given here."""

    model_dir: str = option(None, "Output folder (checkpoints, logs, model).")
    dataset: str = option(
        "synthetic",
        "synthetic (embedded, needs nothing), tfrecord (--train_pattern/--eval_pattern), kinetics or moments "
        "(raw videos: --annotations, --eval_annotations, --video_dir).",
        choices=DATASETS,
    )
    arch: str = option(None, f"One of {', '.join(ARCHS)} ({_RECIPE}).")
    # Data sources.
    train_pattern: str = option(None, "Glob of training TFRecord shards.")
    eval_pattern: str = option(None, "Glob of evaluation TFRecord shards.")
    annotations: str = option(None, "Training annotation file (Kinetics CSV / Moments CSV).")
    eval_annotations: str = option(None, "Evaluation annotation file.")
    video_dir: str = option(None, "Folder of the training videos.")
    eval_video_dir: str = option(None, "Folder of the evaluation videos (default --video_dir).")
    classes: str = option(None, "Class list file (Kinetics: one name per line; Moments: category,index).")
    skip_bad_rows: bool = option(
        False, "Raw videos: skip malformed annotation rows (listed in data_report.json) instead of failing."
    )
    num_classes: int = option(None, "Classifier width (default from the dataset / class list).")
    data_dir: str = option(None, "Synthetic dataset folder (default {model_dir}/data).")
    synthetic_train: int = option(synthetic.NUM_TRAIN, "Synthetic training clips.")
    synthetic_eval: int = option(synthetic.NUM_EVAL, "Synthetic evaluation clips.")
    # Schedule.
    epochs: int = option(None, f"Training epochs ({_RECIPE}).")
    steps_per_epoch: int = option(None, "Batches per epoch (default: training clips // batch_size).")
    batch_size: int = option(None, f"GLOBAL batch over all replicas ({_RECIPE}).")
    accumulate_steps: int = option(
        1,
        "Gradient accumulation: one optimizer update every this many batches, with their mean gradient, "
        "as one step on batch_size x accumulate_steps clips (the lr scales with that effective batch; "
        "steps_per_epoch counts batches and must be a multiple of it).",
    )
    lr: float = option(
        None,
        "Learning rate per 64 clips, scaled linearly with --batch_size x --accumulate_steps "
        f"({_RECIPE}: 0.01 for Kinetics/Moments).",
    )
    lr_schedule: str = option(None, f"Schedule ({_RECIPE}).", choices=optim.SCHEDULES)
    lr_steps: tuple = option(
        None,
        f"Epochs where the step schedule decays ({_RECIPE}: 80,120 Kinetics, 24,36 Moments; at the same "
        "fractions of --epochs when that differs).",
    )
    lr_decay: float = option(0.1, "Step schedule factor.")
    warmup_epochs: float = option(None, f"Linear warmup epochs ({_RECIPE}).")
    momentum: float = option(0.9, "SGD momentum.")
    weight_decay: float = option(1e-4, "L2 on kernels only (torch-style, through the momentum).")
    clipnorm: float = option(40.0, "Global gradient norm clip (0: off).")
    alpha_lr_multiplier: float = option(
        1.0,
        "Learning-rate multiplier of CoST(a)'s coefficient logits alpha only (1: the paper's recipe; "
        "docs/RESULTS.md measures 30 on the synthetic benchmark).",
    )
    dropout: float = option(
        None,
        "Dropout before the classifier (default: the architecture's: 0.5 ResNets as the spec, 0.2 S3D-G as "
        "its reference).",
    )
    # Clips.
    num_frames: int = option(None, f"Frames per clip ({_RECIPE}).")
    frame_stride: int = option(None, f"Take one frame every frame_stride ({_RECIPE}).")
    crop_size: int = option(None, f"Crop side in pixels ({_RECIPE}).")
    min_resize: int = option(None, "Train short side, lower bound (default crop*8/7: 256 at 224).")
    max_resize: int = option(None, "Train short side, upper bound (default crop*10/7: 320 at 224).")
    eval_resize: int = option(None, "Eval short side (default crop*8/7: 256 at 224).")
    flip: bool = option(True, "Random horizontal flips in training (--noflip).")
    shuffle_buffer: int = option(256, "Training shuffle buffer (clips).")
    # Training augmentations and targets (all off: the spec's recipes; pipelines/augment.py).
    randaugment: str = option(
        None,
        "N,M: N of keras.layers.RandAugment's ops of magnitude M (0..10, timm's scale: 2,9 ~ PySlowFast "
        "rand-m9) per training clip, the same ops and parameters for every frame (default: off).",
    )
    random_erasing: float = option(
        0.0,
        "Probability of erasing one random box of a training clip, the same in every frame. Default: off.",
    )
    mixup_alpha: float = option(
        0.0, "MixUp within each batch, Beta(alpha, alpha) weights (0: off; PySlowFast 0.8). Default: off."
    )
    cutmix_alpha: float = option(
        0.0,
        "CutMix within each batch, alpha <= 1 (0: off; PySlowFast 1.0). With MixUp: one or the other per "
        "batch. Default: off.",
    )
    label_smoothing: float = option(0.0, "Label smoothing of the cross-entropy (0: off). Default: off.")
    multilabel: bool = option(
        False,
        "Several labels per clip (TFRecords' clip/label/index as multi-hot): sigmoid cross-entropy, mAP as "
        "the headline metric (val_mAP picks best.keras).",
    )
    # Run.
    imagenet_weights: str = option(None, "Local keras.applications ResNet .weights.h5 to inflate.")
    precision: str = option("float32", "Keras dtype policy.", choices=PRECISIONS)
    strategy: str = option(
        "auto",
        "tf.distribute strategy (auto: multi_worker under a multi-task TF_CONFIG, mirrored with several GPUs, "
        "else one_device).",
        choices=distribute.STRATEGIES,
    )
    tpu: str = option(None, "TPU name or address for --strategy=tpu.")
    seed: int = option(0, "Random seed (weights and data).")
    # The same clips, weights and updates on every run on the same machine (needs a seed; process-wide, TF
    # has no public way back).
    deterministic: bool = option(
        False,
        "tf.config.experimental.enable_op_determinism(): bit-identical runs on one machine (may be slower).",
    )
    backup_steps: int = option(None, f"Back up every this many batches, and at every epoch end ({_RECIPE}).")
    validation_freq: int = option(None, f"Validate every this many epochs ({_RECIPE}).")
    verbose: object = option(
        "auto",
        "Keras fit verbosity (1: progress bar, 2: one line per epoch).",
        choices=("auto", "0", "1", "2"),
        convert=_verbosity,
    )
    autotune: bool = option(False, AUTOTUNE_HELP)  # off in the library; the main's default is FLAG_DEFAULTS


# The main's defaults where they differ from the library's: a command-line run autotunes.
FLAG_DEFAULTS = {"autotune": True}


def _check_readable(name, path):
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            f.read(1)
    except (OSError, tf.errors.OpError) as e:
        raise flag_error(name, path, f"cannot read this file ({type(e).__name__}: {e})") from None


def _positive_int(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise flag_error(name, value, "must be a positive integer")


def resolve_config(config):
    """Validates `config` and fills the dataset's recipe defaults. No model is built, no TF device touched.

    Raises ValueError naming the flag: unknown arch (listing the valid ones), dataset, precision, strategy,
    no files matching a pattern, missing annotation/video folders, unreadable weights file, bad numbers.
    """
    c = _with_recipe(config)
    _check_choices(c)
    _check_numbers(c)
    _check_schedule(c)
    _check_augmentations(c)
    if c.deterministic and c.seed is None:
        raise flag_error("deterministic", c.deterministic, "needs a --seed (random draws must repeat too)")
    raw_video_classes = _check_sources(c)
    if c.num_classes is None:  # the class list when there is one, else the recipe's
        names = raw_video_classes or _listed_class_names(c)
        c.num_classes = len(names) if names else RECIPES[c.dataset]["num_classes"]
    _check_imagenet_weights(c)
    return c


def _with_recipe(config):
    """A copy of `config` with the fields left None taken from its dataset's recipe."""
    if config.dataset not in DATASETS:
        raise flag_error("dataset", config.dataset, f"must be one of {', '.join(DATASETS)}")
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
    return TrainConfig(**filled)


def _check_choices(c):
    if not c.model_dir:
        raise flag_error("model_dir", c.model_dir, "an output folder is required")
    if c.arch not in ARCHS:
        raise flag_error("arch", c.arch, f"unknown architecture; valid names: {', '.join(ARCHS)}")
    parse_arch(c.arch)
    for name, valid in (
        ("precision", PRECISIONS),
        ("strategy", distribute.STRATEGIES),
        ("lr_schedule", optim.SCHEDULES),
    ):
        if getattr(c, name) not in valid:
            raise flag_error(name, getattr(c, name), f"must be one of {', '.join(valid)}")


def _check_numbers(c):
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
        raise flag_error(
            "steps_per_epoch",
            c.steps_per_epoch,
            f"must be a multiple of --accumulate_steps={c.accumulate_steps} (every epoch ends on an update)",
        )


def _check_schedule(c):
    if not c.lr > 0:
        raise flag_error("lr", c.lr, "must be > 0")
    if not c.alpha_lr_multiplier > 0:
        raise flag_error("alpha_lr_multiplier", c.alpha_lr_multiplier, "must be > 0")
    c.lr_steps = tuple(int(e) for e in (c.lr_steps or ()))
    if list(c.lr_steps) != sorted(set(c.lr_steps)) or any(not 0 < e < c.epochs for e in c.lr_steps):
        raise flag_error("lr_steps", c.lr_steps, f"must be increasing epochs in (0, epochs={c.epochs})")
    if c.lr_steps and c.lr_schedule != "step":
        raise flag_error("lr_steps", c.lr_steps, "only applies to --lr_schedule=step")
    if not 0 <= c.warmup_epochs < c.epochs:
        raise flag_error("warmup_epochs", c.warmup_epochs, f"must be in [0, epochs={c.epochs})")


def _check_augmentations(c):
    try:
        parsed = augment.parse_randaugment(c.randaugment)
    except ValueError as e:
        raise flag_error("randaugment", c.randaugment, str(e).split(". Received")[0]) from None
    c.randaugment = None if parsed is None else f"{parsed[0]},{parsed[1]:g}"
    for name, low, high in (
        ("random_erasing", 0.0, 1.0),
        ("mixup_alpha", 0.0, math.inf),
        ("cutmix_alpha", 0.0, 1.0),  # keras.layers.CutMix's bound
        ("label_smoothing", 0.0, 0.999),
    ):
        value = getattr(c, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise flag_error(name, value, f"must be a number in [{low}, {high}]")
    if c.multilabel and c.dataset in ("kinetics", "moments"):
        raise flag_error(
            "multilabel", c.multilabel, "needs TFRecords with several labels per clip (--dataset=tfrecord)"
        )


def _check_sources(c):
    """Checks the data flags (files exist and read; raw-video splits parse); returns the raw-video splits'
    class names (None for the other datasets)."""
    if c.dataset == "tfrecord":
        glob_files("train_pattern", c.train_pattern)
        glob_files("eval_pattern", c.eval_pattern)
    elif c.dataset in ("kinetics", "moments"):
        for name in ("annotations", "eval_annotations"):
            _check_readable(name, getattr(c, name))
        for name in ("video_dir", "eval_video_dir"):
            value = getattr(c, name) or (c.video_dir if name == "eval_video_dir" else None)
            if not value or not tf.io.gfile.isdir(value):
                raise flag_error(name, value, "must be an existing folder of videos")
        c.eval_video_dir = c.eval_video_dir or c.video_dir
    if c.classes:
        _check_readable("classes", c.classes)
    if c.dataset in ("kinetics", "moments"):
        # Read both splits now: a bad row or an empty split fails before anything is built.
        reports = [read_split(c, split)[1] for split in ("train", "eval")]
        return reports[0].classes
    return None


def _listed_class_names(c):
    """The synthetic classes, or a TFRecord dataset's class list (--classes or classes.txt beside it)."""
    if c.dataset == "synthetic":
        return synthetic.CLASSES
    if c.dataset == "tfrecord":
        return class_names(c, glob_files("train_pattern", c.train_pattern))
    return None


def _check_imagenet_weights(c):
    if not c.imagenet_weights:
        return
    if parse_arch(c.arch)[0] == "s3dg":
        raise flag_error(
            "imagenet_weights",
            c.imagenet_weights,
            f"--arch={c.arch} (S3D-G, Inception-v1 layout) has no ImageNet initialisation: "
            "keras.applications has no Inception-v1 to inflate; omit the flag to train from scratch",
        )
    _check_readable("imagenet_weights", c.imagenet_weights)


def mixing(c):
    return c.mixup_alpha > 0 or c.cutmix_alpha > 0
