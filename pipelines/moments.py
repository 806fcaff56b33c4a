"""Moments in Time annotations (trainingSet.csv / validationSet.csv as released).

CSV rows without header: `filename,label,positive_responses,negative_responses`,
filename relative to the video folder (e.g. `blocking/getty-....mp4`). Classes come
from `moments_categories.txt`, lines `category,index`; the index is the label index.
A file with the same relative path but another video extension is accepted.
"""

import os

from pipelines import annotations as ann

CATEGORIES_FILE = "moments_categories.txt"


def load_categories(path, lines=None):
    """Reads `category,index` lines -> class names ordered by index.

    `lines`: the file's lines when the caller has read them already (`path` then only names it in errors).
    Raises AnnotationError (file:line) for a malformed line, a repeated name or
    index, or indices that are not exactly 0..n-1.
    """
    by_index, names = {}, {}
    lines = ann.read_lines(path, "categories file") if lines is None else lines
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{os.fspath(path)}:{line_number}"
        name, _, index_text = line.rpartition(",")
        name, index = name.strip(), ann.parse_count(index_text.strip())
        if not name or index is None:
            raise ann.AnnotationError(
                f"{where}: expected 'category,index' with an integer index >= 0. Received: {line!r}"
            )
        if name in names or index in by_index:
            raise ann.AnnotationError(f"{where}: category {name!r} or index {index} is listed twice")
        names[name], by_index[index] = index, name
    if not by_index:
        raise ann.AnnotationError(f"categories file {os.fspath(path)} lists no classes")
    if sorted(by_index) != list(range(len(by_index))):
        gaps = sorted(set(range(max(by_index) + 1)) - set(by_index))
        raise ann.AnnotationError(
            f"{os.fspath(path)}: category indices must be 0..{len(by_index) - 1}; missing {gaps[:10]}"
        )
    return [by_index[i] for i in range(len(by_index))]


def read_moments(annotations, video_dir, categories=None, skip_bad_rows=False):
    """Reads a Moments in Time CSV and finds its videos under `video_dir`.

    Args:
      annotations: trainingSet.csv / validationSet.csv as released.
      video_dir: folder the CSV filenames are relative to (e.g. `.../training`).
      categories: `moments_categories.txt` path or list of names (index =
        position); default: moments_categories.txt next to `annotations`.
      skip_bad_rows: record malformed rows / unknown labels in the report instead of
        raising AnnotationError("file:line: ...").

    Returns:
      (records, report): `VideoRecord`s of the videos found (video_id = the CSV
      filename), in CSV order, and an `AnnotationReport`.
    """
    if categories is None:
        categories = os.path.join(os.path.dirname(os.fspath(annotations)), CATEGORIES_FILE)
    if isinstance(categories, (str, os.PathLike)):
        classes = load_categories(categories)
    else:
        classes = [str(name) for name in categories]
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"categories must be distinct names. Received: categories={categories!r}")
    report = ann.AnnotationReport(annotations=os.fspath(annotations), classes=classes)
    bad_rows = ann.BadRows(report, skip_bad_rows)
    label_index = {name: i for i, name in enumerate(classes)}
    videos = ann.index_videos(video_dir)
    records, seen = [], {}
    for line, fields in ann.csv_rows(annotations, "Moments in Time annotations", bad_rows):
        report.num_rows += 1
        if len(fields) != 4:
            bad_rows(
                annotations,
                line,
                "expected 4 fields (filename,label,"
                f"positive_responses,negative_responses), got {len(fields)}",
            )
            continue
        filename, label, positive, negative = fields
        if not filename:
            bad_rows(annotations, line, "empty filename")
            continue
        if ann.parse_count(positive) is None or ann.parse_count(negative) is None:
            bad_rows(
                annotations,
                line,
                f"positive/negative responses must be integers >= 0. Received: {positive!r}, {negative!r}",
            )
            continue
        if label not in label_index:
            bad_rows(annotations, line, f"unknown label {label!r} (not among the {len(classes)} categories)")
            continue
        if filename in seen:
            bad_rows(annotations, line, f"video {filename} repeats line {seen[filename]}")
            continue
        seen[filename] = line
        path = os.path.join(video_dir, filename)
        if not os.path.isfile(path):
            path = videos.get(os.path.splitext(filename)[0].replace("\\", "/"))
        if path is None:
            report.missing.append(filename)
            continue
        records.append(
            ann.VideoRecord(
                video_path=path, label_index=label_index[label], label_text=label, video_id=filename
            )
        )
    return records, report
