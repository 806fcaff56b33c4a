"""Converts Kinetics / Moments in Time videos to SequenceExample TFRecord shards (the library; the
command line is pipelines/convert/__main__.py: `python -m pipelines.convert --help`).

Each annotated video becomes one SequenceExample (pipelines/tfrecord.py): every
frame (or frames resampled by timestamp to --fps) resized to --short_side and JPEG
encoded. Videos are assigned to shards deterministically (ordered by a hash of the
video id, then round robin), each worker process writes whole shards to a temporary
name in the hidden bookkeeping folder (`.convert/{shard}.tmp-{pid}`) and renames it
into the output folder when complete, so a reader never sees a partial shard and a
rerun skips finished shards.

A video whose container declares more frames than decode (a truncated download, a
wrong header) keeps every frame that decodes and is listed under "incomplete" in the
report with its declared and decoded counts. A video is skipped only when no frame
decodes or fewer than --min_frames (default 8, one 8-frame clip) frames would be
stored. `report.json` = {"converted", "skipped", "incomplete", "missing",
"bad_rows", "shards", ...} is written atomically once every shard is done.

The output folder holds only the shards, `classes.txt` and `report.json`; the
converter's bookkeeping (per-shard stats, the manifest that lets reruns resume,
shards being written) lives in `output_dir/.convert/`, where no shard glob reaches
it (pipelines.dataset.make_dataset also skips folders, hidden files, classes.txt and
report.json for a glob like `output_dir/*`). Output folders written by earlier
versions (bookkeeping as hidden `.{shard}.json` / `.{prefix}.manifest.json` beside
the shards) are moved to the new layout when a rerun resumes them.
`--compression=gzip` writes GZIP TFRecords named `*.tfrecord.gz` (make_dataset
detects the compression; other readers need compression_type="GZIP"). Use one
output_dir per split.
"""

import concurrent.futures
import dataclasses
import hashlib
import json
import math
import multiprocessing
import os
import sys
import time

import numpy as np
import tensorflow as tf
from absl import logging

from pipelines import decode, files, shard_writer, tfrecord
from pipelines.readers import DATASETS, read_annotations

VIDEOS_PER_SHARD = 100  # for num_shards=None
MIN_FRAMES = 8  # default --min_frames: enough for one 8-frame clip
COMPRESSIONS = tuple(shard_writer.COMPRESSIONS)  # "none", "gzip"
ENGINES = ("local", "beam")  # --engine


def assign_shards(records, num_shards):
    """Deterministic shard lists: records ordered by sha1(video_id), round robin.

    Hash order mixes classes (CSVs are sorted by class) and does not depend on the
    order of the annotation file.
    """
    ordered = sorted(
        records, key=lambda r: (hashlib.sha1(r.video_id.encode("utf-8")).hexdigest(), r.video_id)
    )
    return [ordered[i::num_shards] for i in range(num_shards)]


class _Progress:
    """Prints `done/total videos, rate, ETA` to stderr (\\r line on a terminal)."""

    def __init__(self, total, enabled=True, stream=None):
        self.total, self.done, self.enabled = total, 0, enabled and total > 0
        self.stream = stream or sys.stderr
        self.start = self.last = time.monotonic()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()

    def update(self, count=1, final=False):
        self.done += count
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < (0.5 if self.tty else 10)):
            return
        self.last = now
        rate = self.done / max(now - self.start, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        eta_text = time.strftime("%H:%M:%S", time.gmtime(eta)) if math.isfinite(eta) else "?"
        line = (
            f"convert: {self.done}/{self.total} videos "
            f"({100 * self.done / self.total:.1f}%) {rate:.2f} videos/s "
            f"ETA {eta_text}"
        )
        end = "\n" if final or not self.tty else ""
        self.stream.write(("\r" if self.tty else "") + line + end)
        self.stream.flush()


def _migrate(old, new):
    """Moves a bookkeeping file of the old layout (beside the shards) to `new`
    (dropped if `new` exists already: the new layout's file is the current one)."""
    if tf.io.gfile.exists(old):  # tf.io.gfile: local or remote output folders
        if tf.io.gfile.exists(new):
            tf.io.gfile.remove(old)
        else:
            tf.io.gfile.rename(old, new, overwrite=True)


def _finished_stats(output_dir, name):
    """Stats of a shard finished by an earlier run, or None to (re)write it."""
    path = os.path.join(output_dir, name)
    # Old layout: out of the shards' way first (even when the shard is to be redone).
    _migrate(shard_writer.old_sidecar(path), shard_writer.sidecar(path))
    if not tf.io.gfile.exists(path):
        return None
    try:
        with tf.io.gfile.GFile(shard_writer.sidecar(path)) as f:
            stats = json.load(f)
    except (OSError, ValueError, tf.errors.OpError):
        return None  # renamed but its stats were not written: redo the shard
    if stats.get("shard") != name:
        return None
    stats.setdefault("incomplete", [])  # stats of the old layout
    return stats


def _remove_stale_tmp(output_dir):
    """Deletes the temporary files of writers that no longer run: in `.convert/` and, hidden, in
    output_dir itself (the old layout's `.{shard}.tmp-{pid}`, a crashed `report.json` write)."""
    files.remove_stale_tmp(output_dir, hidden_only=True)
    files.remove_stale_tmp(shard_writer.bookkeeping_dir(output_dir))


def _check_manifest(output_dir, prefix, settings, shards):
    """Writes or verifies `.convert/{prefix}.manifest.json` so reruns resume safely.

    Raises ValueError if output_dir holds shards of a different conversion (other
    settings or videos), since skipping its finished shards would then be wrong.
    """
    content = {key: settings[key] for key in sorted(settings)}
    content["shards"] = hashlib.sha256(
        json.dumps([[(r.video_id, r.label_index) for r in shard] for shard in shards]).encode("utf-8")
    ).hexdigest()
    path = os.path.join(shard_writer.bookkeeping_dir(output_dir), f"{prefix}.manifest.json")
    _migrate(os.path.join(output_dir, f".{prefix}.manifest.json"), path)
    if tf.io.gfile.exists(path):
        with tf.io.gfile.GFile(path) as f:
            previous = json.load(f)
        # Manifests of older versions lack the newer settings: compression was
        # none; their skip rule (no truncated video) is not a min_frames value, so
        # resuming takes today's (its skips stay listed in the report).
        previous = dict({"compression": "none", "min_frames": content["min_frames"]}, **previous)
        if previous != content:
            changed = sorted(k for k in content if previous.get(k) != content[k])
            raise ValueError(
                f"{output_dir} holds '{prefix}' shards of a different conversion "
                f"(differs in: {', '.join(changed)}); use a new output_dir or "
                f"delete the old shards and {path}"
            )
        return
    files.write_atomic(path, json.dumps(content, indent=1))


def _run_jobs(jobs, workers, progress):
    """Runs shard jobs in this process (workers=1) or over a process pool."""
    if workers == 1 or len(jobs) <= 1:
        return [shard_writer.write_shard(job, progress.update) for job in jobs]
    # forkserver: children fork from a clean server process that imported TF
    # once (fork from a process running TF is unsafe; spawn re-imports TF in each).
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["pipelines.shard_writer"])
    queue = context.Queue()
    results = []
    with concurrent.futures.ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)),
        mp_context=context,
        initializer=shard_writer.init_worker,
        initargs=(queue,),
    ) as executor:
        pending = {executor.submit(shard_writer.write_shard, job) for job in jobs}
        try:
            while pending:
                done, pending = concurrent.futures.wait(pending, timeout=0.2)
                while not queue.empty():
                    progress.update(queue.get())
                for future in done:
                    results.append(future.result())
        except concurrent.futures.process.BrokenProcessPool as e:
            raise RuntimeError(
                "a conversion worker died; finished shards are kept and a rerun resumes with the others"
            ) from e
        finally:
            for future in pending:
                future.cancel()
    while not queue.empty():
        progress.update(queue.get())
    return results


@dataclasses.dataclass
class Plan:
    """What both engines convert, built by `prepare` where the conversion is launched.

    The local engine (`convert`) and the Beam engine (pipelines/beam_convert.py) run
    `jobs` through shard_writer.write_shard and hand the results to `finish`.

    Attributes:
      output_dir: the output folder.
      names: every shard's file name, in shard order.
      jobs: write_shard jobs of the shards still to write.
      finished: {name: stats} of the shards an earlier run finished.
      annotation_report: annotations.AnnotationReport (classes, missing, bad rows).
      settings: the conversion's settings (as in the manifest).
      annotations: the annotation file.
    """

    output_dir: str
    names: list
    jobs: list
    finished: dict
    annotation_report: object
    settings: dict
    annotations: str


def _check_positive_int(name, value, optional=False):
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name} must be a positive int{' or None' if optional else ''}. Received: {name}={value!r}"
        )


def check_arguments(dataset, short_side, fps, num_shards, workers, jpeg_quality, min_frames, compression):
    """Raises ValueError naming the first bad argument of `convert` (before anything is read or written;
    short_side and fps by decode.py's own checks, which every decode repeats)."""
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}. Received: dataset={dataset!r}")
    decode.check_short_side(short_side)
    decode.check_fps(fps)
    _check_positive_int("num_shards", num_shards, optional=True)
    _check_positive_int("workers", workers)
    if isinstance(jpeg_quality, bool) or not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be an int in 1..100. Received: jpeg_quality={jpeg_quality!r}")
    _check_positive_int("min_frames", min_frames)
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}. Received: compression={compression!r}")


def shard_prefix(prefix, annotations):
    """The shards' name prefix: `prefix`, or the annotation file's stem; raises ValueError unless a plain
    file name."""
    prefix = prefix or os.path.splitext(os.path.basename(os.fspath(annotations)))[0]
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise ValueError(f"prefix must be a plain file name. Received: prefix={prefix!r}")
    return prefix


def _plain(number):
    """A NumPy scalar as the Python number the manifest's JSON can hold (None and Python numbers as they are)."""
    return number.item() if isinstance(number, np.generic) else number


def _split_jobs(output_dir, names, shards, encoding):
    """({name: stats} of the shards an earlier run finished, write_shard jobs of the others).

    encoding: the jobs' short_side, fps, jpeg_quality, min_frames and compression.
    """
    finished, jobs = {}, []
    for name, shard in zip(names, shards, strict=True):
        previous = _finished_stats(output_dir, name)
        if previous is not None:
            finished[name] = previous
        else:
            jobs.append(dict(encoding, output_dir=output_dir, name=name, records=shard))
    return finished, jobs


def prepare(
    dataset,
    annotations,
    video_dir,
    output_dir,
    classes=None,
    train_annotations=None,
    short_side=256,
    fps=None,
    num_shards=None,
    workers=1,
    skip_bad_rows=False,
    prefix=None,
    jpeg_quality=90,
    min_frames=MIN_FRAMES,
    compression="none",
):
    """Validates the arguments (see `convert`), reads the annotations, assigns the
    shards, checks / writes the manifest and removes dead writers' temporary files.

    Returns:
      A `Plan`.
    """
    check_arguments(dataset, short_side, fps, num_shards, workers, jpeg_quality, min_frames, compression)
    prefix = shard_prefix(prefix, annotations)
    records, annotation_report = read_annotations(
        dataset,
        annotations,
        video_dir,
        classes=classes,
        train_annotations=train_annotations,
        skip_bad_rows=skip_bad_rows,
    )
    num_shards = num_shards or max(1, math.ceil(len(records) / VIDEOS_PER_SHARD))
    shards = assign_shards(records, num_shards)
    names = [tfrecord.shard_name(prefix, i, num_shards, compression) for i in range(num_shards)]
    encoding = {
        "short_side": _plain(short_side),
        "fps": _plain(fps),
        "jpeg_quality": jpeg_quality,
        "min_frames": min_frames,
        "compression": compression,
    }
    settings = dict(
        encoding, dataset=dataset, prefix=prefix, num_shards=num_shards, classes=annotation_report.classes
    )
    tf.io.gfile.makedirs(shard_writer.bookkeeping_dir(output_dir))
    _check_manifest(output_dir, prefix, settings, shards)
    _remove_stale_tmp(output_dir)
    finished, jobs = _split_jobs(output_dir, names, shards, encoding)
    logging.info(
        "%d videos in %d shards (%d already finished), %d missing files",
        len(records),
        num_shards,
        num_shards - len(jobs),
        len(annotation_report.missing),
    )
    return Plan(output_dir, names, jobs, finished, annotation_report, settings, annotations)


def build_report(plan, stats):
    """The report of a conversion from every shard's stats ({name: write_shard result})."""
    names, settings, annotation_report = plan.names, plan.settings, plan.annotation_report
    return {
        "converted": sum(stats[name]["converted"] for name in names),
        "skipped": [item for name in names for item in stats[name]["skipped"]],
        "incomplete": [item for name in names for item in stats[name]["incomplete"]],
        "missing": annotation_report.missing,
        "bad_rows": annotation_report.bad_rows,
        "shards": names,
        "dataset": settings["dataset"],
        "annotations": os.fspath(plan.annotations),
        "num_rows": annotation_report.num_rows,
        "num_classes": len(annotation_report.classes),
        "short_side": settings["short_side"],
        "fps": settings["fps"],
        "min_frames": settings["min_frames"],
        "compression": settings["compression"],
    }


def finish(plan, stats):
    """Writes `classes.txt` and `report.json` (atomically) once every shard is done.

    Args:
      plan: the `Plan`.
      stats: write_shard results of the shards written now (any order); the shards
        an earlier run finished come from `plan.finished`.

    Returns:
      The report dict.
    """
    stats = dict(plan.finished, **{s["shard"]: s for s in stats})
    report = build_report(plan, stats)
    files.write_atomic(
        os.path.join(plan.output_dir, "classes.txt"),
        "".join(f"{name}\n" for name in plan.annotation_report.classes),
    )
    files.write_atomic(os.path.join(plan.output_dir, "report.json"), json.dumps(report, indent=1))
    return report


def convert(
    dataset,
    annotations,
    video_dir,
    output_dir,
    classes=None,
    train_annotations=None,
    short_side=256,
    fps=None,
    num_shards=None,
    workers=1,
    skip_bad_rows=False,
    prefix=None,
    jpeg_quality=90,
    show_progress=True,
    min_frames=MIN_FRAMES,
    compression="none",
):
    """Converts annotated videos to `{prefix}-{i:05d}-of-{n:05d}.tfrecord` shards.

    Args:
      dataset: "kinetics" or "moments".
      annotations: the split's CSV as released.
      video_dir: folder of the videos (see pipelines/kinetics.py, moments.py).
      output_dir: where shards, `classes.txt` and `report.json` go.
      classes: kinetics classes file (one name per line) / moments categories file
        (default for moments: moments_categories.txt next to `annotations`).
      train_annotations: kinetics training CSV defining the classes (sorted).
      short_side: resize frames so the short side has this many pixels; None keeps.
      fps: None keeps every frame; a number resamples to that rate by timestamp.
      num_shards: shard count (default ceil(videos / 100)).
      workers: processes writing shards in parallel (1 = this process).
      skip_bad_rows: count malformed rows in the report instead of raising.
      prefix: shard name prefix (default: the annotation file's stem).
      jpeg_quality: JPEG quality 1..100.
      show_progress: print a progress line (rate, ETA) to stderr.
      min_frames: skip (and report) a video that would store fewer frames (after
        --fps resampling); every video with at least this many is kept, including
        truncated ones (listed under "incomplete").
      compression: "none" (`*.tfrecord`) or "gzip" (`*.tfrecord.gz`).

    Returns:
      The report dict, also written to `output_dir/report.json`.
    """
    plan = prepare(
        dataset,
        annotations,
        video_dir,
        output_dir,
        classes=classes,
        train_annotations=train_annotations,
        short_side=short_side,
        fps=fps,
        num_shards=num_shards,
        workers=workers,
        skip_bad_rows=skip_bad_rows,
        prefix=prefix,
        jpeg_quality=jpeg_quality,
        min_frames=min_frames,
        compression=compression,
    )
    progress = _Progress(sum(len(job["records"]) for job in plan.jobs), show_progress)
    results = _run_jobs(plan.jobs, workers, progress)
    progress.update(0, final=True)
    return finish(plan, results)


def parse_fps(text):
    """--fps value: "keep" (any case) -> None, else a positive number."""
    if str(text).strip().lower() == "keep":
        return None
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"--fps must be 'keep' or a positive number. Received: {text!r}")
    return value
