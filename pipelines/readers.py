"""One entry point to the annotation readers: `read_annotations(dataset, ...)` -> (records, report).

The converter, the raw-video tf.data source and the training main all read Kinetics / Moments in Time
annotations through this function, so a split's class indices and skipped rows are the same everywhere.
"""

import re

from pipelines import annotations, kinetics, moments

DATASETS = ("kinetics", "moments")
_CATEGORY_LINE = re.compile(r"^.*\S\s*,\s*\d+\s*$")


def read_class_names(path):
    """Class names of a class-list file, index = position, whichever of the two layouts it has.

    A Moments in Time categories file (every line `category,index`) is ordered by its indices; anything else
    is one name per line, as `classes.txt` beside converted shards (Kinetics names may hold commas).
    Local or remote (gs://...) paths. Raises AnnotationError (a ValueError) naming the file and line.
    """
    lines = annotations.read_lines(path, "classes file")  # read once; the loaders parse these lines
    named = [line for line in lines if line.strip()]
    if named and all(_CATEGORY_LINE.match(line) for line in named):
        return moments.load_categories(path, lines)
    return annotations.load_classes(path, lines)


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
