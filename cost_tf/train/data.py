"""The data of a training run: TFRecord or raw-video sources per split, and what the raw-video reader skipped."""

import dataclasses
import os

import tensorflow as tf

from pipelines import dataset, readers, synthetic


def flag_error(name, value, message):
    """ValueError "--NAME: MESSAGE. Received: NAME=VALUE" (how every training-flag error reads)."""
    return ValueError(f"--{name}: {message}. Received: {name}={value!r}")


def glob_files(name, pattern):
    """The sorted files of the --NAME glob; ValueError naming the flag when none match."""
    if not pattern:
        raise flag_error(name, pattern, "a TFRecord file pattern is required for this dataset")
    files = tf.io.gfile.glob(pattern)
    if not files:
        raise flag_error(name, pattern, "no files match this pattern")
    return sorted(files)


@dataclasses.dataclass
class DataSource:
    """Arguments of pipelines.dataset.make_dataset for one split, and what is known about it."""

    kwargs: dict
    count: int = None  # examples (None: unknown)
    num_units: int = 1  # files or videos it can be sharded by
    report: object = None  # raw videos: the annotation reader's AnnotationReport


def class_names(c, train_files=None):
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
        raise flag_error(
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
    videos are those pipelines.dataset.raw_video_skips() lists after its first `skips_before`, each once (a
    video skipped again in every epoch counts once)."""
    if not reports:
        return None
    out = {
        split: {
            "annotations": report.annotations,
            "videos": count,
            "missing": report.missing,
            "bad_rows": report.own_bad_rows(),
        }
        for split, (report, count) in reports.items()
    }
    out["unreadable"] = dataset.unreadable_videos(since=skips_before)
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
            glob_files("train_pattern", c.train_pattern),
            glob_files("eval_pattern", c.eval_pattern),
        )
        names = class_names(c, train_files)
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

    def dataset_fn(context):
        shard = context.num_input_pipelines > 1 and (
            mode == "train" or source.num_units >= context.num_input_pipelines
        )
        return dataset.make_dataset(
            mode=mode,
            batch_size=context.get_per_replica_batch_size(global_batch_size),
            seed=None if seed is None else seed + 100_003 * context.input_pipeline_id,
            input_context=context if shard else None,
            **source.kwargs,
            **kwargs,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)
