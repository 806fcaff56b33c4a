"""Shared pieces of the annotation readers (pipelines/kinetics.py, moments.py).

A reader returns `(records, report)`: one `VideoRecord` per annotated video whose
file exists, and an `AnnotationReport` with the class list, rows that were skipped
(`bad_rows`, only with skip_bad_rows=True; otherwise a bad row raises
`AnnotationError` naming file:line) and the videos whose file was not found.

Annotation files and video folders may be local or on any filesystem tf.io.gfile knows
(paths with a scheme: gs://...); TensorFlow is imported only for those.
"""

import csv
import dataclasses
import io
import os

# Extensions accepted for video files found on disk (lower case).
VIDEO_EXTENSIONS = (
    ".mp4",
    ".webm",
    ".mkv",
    ".avi",
    ".mov",
    ".m4v",
    ".flv",
    ".mpg",
    ".mpeg",
    ".ts",
    ".3gp",
    ".ogv",
    ".wmv",
)


class AnnotationError(ValueError):
    """An annotation or classes file is unreadable or has a bad row (file:line)."""


@dataclasses.dataclass(frozen=True)
class VideoRecord:
    """One annotated video.

    Attributes:
      video_path: path of the video file.
      label_index: class index, -1 when unlabelled (e.g. Kinetics test split).
      label_text: class name, "" when unlabelled.
      video_id: dataset id ("{youtube_id}_{start:06d}_{end:06d}" for Kinetics, the
        released relative filename for Moments in Time).
    """

    video_path: str
    label_index: int
    label_text: str
    video_id: str


@dataclasses.dataclass
class AnnotationReport:
    """What a reader found besides the records.

    Attributes:
      annotations: the annotation file read.
      classes: class names; the position is the label index.
      num_rows: data rows read (header and blank lines excluded).
      bad_rows: [{"file", "line", "reason"}] rows skipped with skip_bad_rows=True.
      missing: video ids whose file is not under the video directory.
    """

    annotations: str
    classes: list
    num_rows: int = 0
    bad_rows: list = dataclasses.field(default_factory=list)
    missing: list = dataclasses.field(default_factory=list)

    def own_bad_rows(self):
        """The bad rows of this report's own file (a split read with the training CSV's class indices also
        reports that CSV's rows)."""
        return [row for row in self.bad_rows if row["file"] == self.annotations]

    def to_dict(self):
        return dataclasses.asdict(self)


class BadRows:
    """Raises AnnotationError for a bad row, or records it when skipping."""

    def __init__(self, report, skip_bad_rows):
        self.report = report
        self.skip = bool(skip_bad_rows)

    def __call__(self, path, line, reason):
        if not self.skip:
            raise AnnotationError(f"{path}:{line}: {reason}")
        self.report.bad_rows.append({"file": os.fspath(path), "line": line, "reason": reason})


def _remote(path):
    return "://" in os.fspath(path)


def _read_remote(path, what):
    """The bytes of a remote (scheme://) file, read through tf.io.gfile, or AnnotationError."""
    import tensorflow as tf  # only for remote paths: local annotations stay TensorFlow-free

    try:
        if tf.io.gfile.isdir(path):
            raise AnnotationError(f"cannot read {what} {os.fspath(path)}: is a directory")
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.OpError as e:
        raise AnnotationError(f"cannot read {what} {os.fspath(path)}: {e.message}") from e


def open_text(path, what):
    """Opens a UTF-8 text file (BOM tolerated), local or remote, or raises AnnotationError.

    A remote file is read whole (annotation files are a few MB) and wrapped like a local one (decoded
    as it is read), so its errors are the local file's.
    """
    if _remote(path):
        data = io.BytesIO(_read_remote(path, what))
        return io.TextIOWrapper(data, newline="", encoding="utf-8-sig")
    if os.path.isdir(path):
        raise AnnotationError(f"cannot read {what} {os.fspath(path)}: is a directory")
    try:
        return open(path, newline="", encoding="utf-8-sig")
    except OSError as e:
        raise AnnotationError(f"cannot read {what} {os.fspath(path)}: {e}") from e


def csv_rows(path, what, bad_rows):
    """Yields (line number, fields) for non-blank CSV rows of `path`.

    Undecodable bytes raise AnnotationError (file:line); malformed CSV quoting is a
    bad row.
    """
    with open_text(path, what) as f:
        reader = csv.reader(f)
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as e:
                raise AnnotationError(f"{os.fspath(path)}:{reader.line_num + 1}: not UTF-8 text ({e})") from e
            except csv.Error as e:
                bad_rows(path, reader.line_num, f"malformed CSV ({e})")
                continue
            if any(field.strip() for field in row):
                yield reader.line_num, [field.strip() for field in row]


def read_lines(path, what):
    """The lines of a UTF-8 text file (BOM tolerated), local or on any filesystem tf.io.gfile knows (gs://...).

    Raises AnnotationError naming `what` and the file if it cannot be read or is not UTF-8.
    """
    try:
        if _remote(path):
            return _read_remote(path, what).decode("utf-8-sig").splitlines()
        with open_text(path, what) as f:
            return f.read().splitlines()
    except UnicodeDecodeError as e:
        raise AnnotationError(f"cannot read {what} {os.fspath(path)}: not UTF-8 text ({e})") from e


def load_classes(path, lines=None):
    """Reads class names, one per line (blank lines ignored); index = position.

    `lines`: the file's lines when the caller has read them already (`path` then only names it in errors).
    Raises AnnotationError if the file cannot be read, is empty, or repeats a name.
    """
    names, seen = [], {}
    lines = read_lines(path, "classes file") if lines is None else lines
    for line_number, line in enumerate(lines, start=1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise AnnotationError(
                f"{os.fspath(path)}:{line_number}: class {name!r} repeats line {seen[name]}"
            )
        seen[name] = line_number
        names.append(name)
    if not names:
        raise AnnotationError(f"classes file {os.fspath(path)} lists no classes")
    return names


def index_videos(video_dir):
    """Maps relative path without extension (posix) -> path, for video files.

    Walks `video_dir` recursively (flat or per-class layouts; a remote folder through
    tf.io.gfile.walk: one listing per folder). Raises AnnotationError if the directory
    does not exist.
    """
    remote, top = _remote(video_dir), os.fspath(video_dir)
    if remote:
        import tensorflow as tf  # only for remote paths

        top = top.rstrip("/")
        if not tf.io.gfile.isdir(top):
            raise AnnotationError(f"video directory {top} does not exist")
    elif not os.path.isdir(top):
        raise AnnotationError(f"video directory {top} does not exist")
    found = {}
    for root, dirs, files in tf.io.gfile.walk(top) if remote else os.walk(top):
        dirs.sort()
        folder = root[len(top) :].strip("/") if remote else os.path.relpath(root, top).replace(os.sep, "/")
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() not in VIDEO_EXTENSIONS or name.startswith("."):
                continue
            rel = stem if folder in ("", ".") else f"{folder}/{stem}"
            found.setdefault(rel, os.path.join(root, name))
    return found


def parse_count(text):
    """Parses a non-negative integer field; returns None if it is not one."""
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value >= 0 else None
