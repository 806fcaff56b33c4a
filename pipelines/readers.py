"""One entry point to the annotation readers: `read_annotations(dataset, ...)` -> (records, report).

The converter, the raw-video tf.data source and the training main all read Kinetics / Moments in Time
annotations through this function, so a split's class indices and skipped rows are the same everywhere.
"""

from pipelines import kinetics, moments

DATASETS = ("kinetics", "moments")


def read_annotations(
    dataset, annotations, video_dir, classes=None, train_annotations=None, skip_bad_rows=False
):
    """Dispatches to read_kinetics / read_moments.

    Args:
      dataset: "kinetics" or "moments".
      annotations, video_dir: the split's annotation file and the folder of its videos.
      classes: class list file or names (Kinetics: one name per line; Moments: the categories file).
      train_annotations: Kinetics only: the training CSV whose sorted labels give the class indices of
        another split (so a validation CSV that lacks a class keeps the training indices).
      skip_bad_rows: record malformed rows in the report instead of raising.

    Returns:
      (records, report): `annotations.VideoRecord`s of the videos found and an `AnnotationReport`.
    """
    if dataset == "kinetics":
        return kinetics.read_kinetics(
            annotations,
            video_dir,
            classes=classes,
            train_annotations=train_annotations,
            skip_bad_rows=skip_bad_rows,
        )
    if dataset == "moments":
        if train_annotations is not None:
            raise ValueError(
                "train_annotations applies to kinetics only; Moments in Time classes come "
                "from the categories file."
            )
        return moments.read_moments(annotations, video_dir, categories=classes, skip_bad_rows=skip_bad_rows)
    raise ValueError(f"dataset must be one of {DATASETS}. Received: dataset={dataset!r}")
