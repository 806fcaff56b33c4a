"""Converts Kinetics / Moments in Time videos to SequenceExample TFRecord shards.

  python -m pipelines.convert --dataset=kinetics --annotations=train.csv \\
      --video_dir=videos/train --output_dir=tfrecords/train [--classes=FILE] \\
      [--short_side=256] [--fps=keep|N] [--num_shards=N] [--workers=N] \\
      [--skip_bad_rows] [--min_frames=8] [--compression=none|gzip] \\
      [--engine=local|beam [Beam pipeline options]]

Writes `{prefix}-{i:05d}-of-{n:05d}.tfrecord` shards, `classes.txt` and `report.json` (converted,
skipped, incomplete, missing, bad rows) to --output_dir; a rerun resumes with the shards not yet
finished. The output layout and the skip rules: pipelines/convert/__init__.py.
"""

import tensorflow as tf
from absl import app, flags, logging

from pipelines import convert, mains
from pipelines.readers import DATASETS

_DATASET = flags.DEFINE_enum("dataset", None, list(DATASETS), "Annotation format.", required=True)
_ANNOTATIONS = flags.DEFINE_string("annotations", None, "Split CSV as released.", required=True)
_VIDEO_DIR = flags.DEFINE_string("video_dir", None, "Folder of the videos.", required=True)
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder for the shards.", required=True)
_CLASSES = flags.DEFINE_string(
    "classes",
    None,
    "Kinetics: classes file, one name per line (default: sorted "
    "labels of --train_annotations or --annotations). Moments: categories file "
    "(default: moments_categories.txt beside --annotations).",
)
_TRAIN_ANNOTATIONS = flags.DEFINE_string(
    "train_annotations",
    None,
    "Kinetics training CSV whose sorted labels are the classes when --classes is not given.",
)
_SHORT_SIDE = flags.DEFINE_integer(
    "short_side", 256, "Short side of stored frames; 0 keeps the original size.", lower_bound=0
)
_FPS = flags.DEFINE_string("fps", "keep", "'keep' or frames per second to resample to.")
_NUM_SHARDS = flags.DEFINE_integer(
    "num_shards", 0, f"Shard count; 0 = one per {convert.VIDEOS_PER_SHARD} videos.", lower_bound=0
)
_WORKERS = flags.DEFINE_integer("workers", 1, "Processes writing shards.", lower_bound=1)
_SKIP_BAD_ROWS = flags.DEFINE_bool(
    "skip_bad_rows", False, "Count malformed annotation rows instead of failing."
)
_PREFIX = flags.DEFINE_string("prefix", None, "Shard prefix (default: CSV file stem).")
_JPEG_QUALITY = flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality.", lower_bound=1, upper_bound=100)
_MIN_FRAMES = flags.DEFINE_integer(
    "min_frames",
    convert.MIN_FRAMES,
    "Skip (and report) videos that would store fewer "
    "frames; truncated videos with at least this many are kept.",
    lower_bound=1,
)
_COMPRESSION = flags.DEFINE_enum(
    "compression",
    "none",
    list(convert.COMPRESSIONS),
    "TFRecord compression; gzip shards are named *.tfrecord.gz.",
)
_ENGINE = flags.DEFINE_enum(
    "engine",
    "local",
    list(convert.ENGINES),
    "local: a process pool on this machine (--workers). beam: an Apache Beam pipeline "
    "(pipelines/beam_convert.py); flags this main does not define are Beam pipeline options "
    "(--runner=DataflowRunner, --direct_num_workers=N, ...).",
)


@flags.validator(_FPS.name, "--fps must be 'keep' or a positive number")
def _valid_fps(text):
    try:
        convert.parse_fps(text)
    except ValueError:
        return False
    return True


def parse_flags(argv):
    """absl flags; with --engine=beam the flags left over are Beam pipeline options."""
    return flags.FLAGS(argv, known_only=True)


def main(argv):
    beam = _ENGINE.value == "beam"
    if not beam:
        mains.no_arguments(argv)
    if beam and _WORKERS.value != 1:
        mains.fail(
            "--workers is the local engine's; with --engine=beam the runner's options set the "
            "parallelism (--direct_num_workers, --num_workers / --max_num_workers, --parallelism)"
        )
    if beam:
        from pipelines import beam_convert  # Beam only for this engine

        run, extra = beam_convert.convert, {"pipeline_args": argv[1:]}
    else:
        run, extra = convert.convert, {"workers": _WORKERS.value}
    # Bad flags, annotation rows (file:line), folders, storage errors (gs://...): one line.
    with mains.usage_errors(ValueError, OSError, tf.errors.OpError):
        report = run(
            _DATASET.value,
            _ANNOTATIONS.value,
            _VIDEO_DIR.value,
            _OUTPUT_DIR.value,
            classes=_CLASSES.value,
            train_annotations=_TRAIN_ANNOTATIONS.value,
            short_side=_SHORT_SIDE.value or None,
            fps=convert.parse_fps(_FPS.value),
            num_shards=_NUM_SHARDS.value or None,
            skip_bad_rows=_SKIP_BAD_ROWS.value,
            prefix=_PREFIX.value,
            jpeg_quality=_JPEG_QUALITY.value,
            min_frames=_MIN_FRAMES.value,
            compression=_COMPRESSION.value,
            **extra,
        )
    logging.info(
        "converted %d videos (%d incomplete), skipped %d, missing %d, bad rows %d -> %s",
        report["converted"],
        len(report["incomplete"]),
        len(report["skipped"]),
        len(report["missing"]),
        len(report["bad_rows"]),
        _OUTPUT_DIR.value,
    )


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
