"""Kinetics-400/600/700 annotations (the released train/validate/test CSVs).

CSV header `label,youtube_id,time_start,time_end,split` (some releases add `is_cc`;
test CSVs may lack `label`); class names may hold spaces, parentheses, quotes and
commas (CSV quoting). Clips are files named `{youtube_id}_{start:06d}_{end:06d}.<ext>`
(any video extension; a file named just `{youtube_id}.<ext>` is accepted too), flat
or in one folder per class, found by walking the video directory.

Class index: position in a classes file (one name per line), else the sorted class
names of the training CSV (`train_annotations`), else of the CSV read.
"""

import os

from pipelines import annotations as ann

REQUIRED_COLUMNS = ("youtube_id", "time_start", "time_end")
OPTIONAL_COLUMNS = ("label", "split", "is_cc")


def clip_id(youtube_id, time_start, time_end):
    """`{youtube_id}_{time_start:06d}_{time_end:06d}`, the released clip name."""
    return f"{youtube_id}_{int(time_start):06d}_{int(time_end):06d}"


def _seconds(text):
    """Whole seconds from "12" or "12.0"; None if not a non-negative whole number."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not value.is_integer() or value < 0:
        return None
    return int(value)


def _parse(path, bad_rows):
    """Yields (line, youtube_id, time_start, time_end, label or "") of good rows."""
    rows = ann.csv_rows(path, "Kinetics annotations", bad_rows)
    header = next(rows, None)
    if header is None:
        raise ann.AnnotationError(f"{os.fspath(path)}: empty annotations file")
    line, names = header[0], [name.lower() for name in header[1]]
    if any(column not in names for column in REQUIRED_COLUMNS):
        raise ann.AnnotationError(
            f"{os.fspath(path)}:{line}: expected a header with columns "
            f"{','.join(REQUIRED_COLUMNS)} (and optionally "
            f"{','.join(OPTIONAL_COLUMNS)}). Received: {','.join(header[1])}"
        )
    column = {name: i for i, name in enumerate(names)}
    for line, fields in rows:
        if len(fields) != len(names):
            bad_rows(path, line, f"expected {len(names)} fields ({','.join(names)}), got {len(fields)}")
            continue
        youtube_id = fields[column["youtube_id"]]
        start = _seconds(fields[column["time_start"]])
        end = _seconds(fields[column["time_end"]])
        if not youtube_id:
            bad_rows(path, line, "empty youtube_id")
        elif start is None or end is None:
            bad_rows(
                path,
                line,
                "time_start/time_end must be whole seconds >= 0. "
                f"Received: {fields[column['time_start']]!r}, "
                f"{fields[column['time_end']]!r}",
            )
        elif end <= start:
            bad_rows(path, line, f"time_end {end} is not after time_start {start}")
        else:
            label = fields[column["label"]] if "label" in column else ""
            yield line, youtube_id, start, end, label


def _class_list(classes, train_annotations, rows, bad_rows):
    """Class names from a file / list, the training CSV, or the rows read."""
    if classes is not None:
        if isinstance(classes, (str, os.PathLike)):
            return ann.load_classes(classes), os.fspath(classes)
        names = [str(name) for name in classes]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"classes must be distinct names. Received: classes={classes!r}")
        return names, "the classes given"
    if train_annotations is not None:
        labels = {row[4] for row in _parse(train_annotations, bad_rows)}
        return sorted(labels - {""}), os.fspath(train_annotations)
    return sorted({row[4] for row in rows} - {""}), "the annotations"


def _find(videos_by_stem, vid, youtube_id, label):
    """Path of the clip file; prefers the one in its class folder when several."""
    candidates = videos_by_stem.get(vid) or videos_by_stem.get(youtube_id)
    if not candidates:
        return None
    folders = {label, label.replace(" ", "_")}
    for _rel, path in candidates:
        if os.path.basename(os.path.dirname(path)) in folders:
            return path
    return candidates[0][1]


def read_kinetics(annotations, video_dir, classes=None, train_annotations=None, skip_bad_rows=False):
    """Reads a Kinetics CSV and finds its clips under `video_dir`.

    Args:
      annotations: train/validate/test CSV as released.
      video_dir: folder holding the clips (flat or one folder per class).
      classes: classes file (one name per line) or list of names; index = position.
      train_annotations: training CSV whose sorted labels define the classes when
        `classes` is None (default: the sorted labels of `annotations`).
      skip_bad_rows: record malformed rows / unknown labels in the report instead of
        raising AnnotationError("file:line: ...").

    Returns:
      (records, report): `VideoRecord`s of the clips found, in CSV order, and an
      `AnnotationReport` (classes, bad_rows, missing video ids).
    """
    report = ann.AnnotationReport(annotations=os.fspath(annotations), classes=[])
    bad_rows = ann.BadRows(report, skip_bad_rows)
    rows = []
    for row in _parse(annotations, bad_rows):
        rows.append(row)
    report.num_rows = len(rows) + len(report.bad_rows)
    report.classes, source = _class_list(classes, train_annotations, rows, bad_rows)
    label_index = {name: i for i, name in enumerate(report.classes)}
    videos_by_stem = {}
    for rel, path in ann.index_videos(video_dir).items():
        stem = rel.rsplit("/", 1)[-1]
        videos_by_stem.setdefault(stem, []).append((rel, path))
    records, seen = [], {}
    for line, youtube_id, start, end, label in rows:
        vid = clip_id(youtube_id, start, end)
        if label and label not in label_index:
            bad_rows(
                annotations,
                line,
                f"unknown label {label!r} (not among the {len(report.classes)} classes of {source})",
            )
            continue
        if vid in seen:
            bad_rows(annotations, line, f"clip {vid} repeats line {seen[vid]}")
            continue
        seen[vid] = line
        path = _find(videos_by_stem, vid, youtube_id, label)
        if path is None:
            report.missing.append(vid)
            continue
        records.append(
            ann.VideoRecord(
                video_path=path, label_index=label_index.get(label, -1), label_text=label, video_id=vid
            )
        )
    return records, report
