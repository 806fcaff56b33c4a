r"""Converts Kinetics / Moments in Time videos to SequenceExample TFRecord shards.

  python -m pipelines.convert --dataset=kinetics --annotations=train.csv \\
      --video_dir=videos/train --output_dir=tfrecords/train [--classes=FILE] \\
      [--short_side=256] [--fps=keep|N] [--num_shards=N] [--workers=N] \\
      [--skip_bad_rows] [--min_frames=8] [--compression=none|gzip]

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

import tensorflow as tf
from absl import app, flags, logging

from pipelines import shard_writer, tfrecord
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
    """Deletes `*.tmp-{pid}` files whose writer process no longer runs.

    Looks in `.convert/` and, for the old layout, at hidden `.*.tmp-{pid}` files in
    output_dir itself.
    """
    folders = [(output_dir, True), (shard_writer.bookkeeping_dir(output_dir), False)]
    for folder, hidden_only in folders:
        for name in tf.io.gfile.listdir(folder):
            pid_text = name.rsplit(".tmp-", 1)[-1]
            if ".tmp-" not in name or not pid_text.isdigit() or (hidden_only and not name.startswith(".")):
                continue
            pid = int(pid_text)
            if pid != os.getpid() and tfrecord.writer_alive(pid):
                continue  # e.g. an orphaned worker of a killed run still writes it
            tf.io.gfile.remove(os.path.join(folder, name))


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
    shard_writer.atomic_write_text(path, json.dumps(content, indent=1))


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
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}. Received: dataset={dataset!r}")
    if short_side is not None and (
        isinstance(short_side, bool) or not isinstance(short_side, int) or short_side < 1
    ):
        raise ValueError(f"short_side must be a positive int or None. Received: short_side={short_side!r}")
    if fps is not None and (
        isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0
    ):
        raise ValueError(f"fps must be a positive number or None. Received: fps={fps!r}")
    if num_shards is not None and (
        isinstance(num_shards, bool) or not isinstance(num_shards, int) or num_shards < 1
    ):
        raise ValueError(f"num_shards must be a positive int or None. Received: num_shards={num_shards!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int. Received: workers={workers!r}")
    if not isinstance(jpeg_quality, int) or not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be an int in 1..100. Received: jpeg_quality={jpeg_quality!r}")
    if isinstance(min_frames, bool) or not isinstance(min_frames, int) or min_frames < 1:
        raise ValueError(f"min_frames must be a positive int. Received: min_frames={min_frames!r}")
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {COMPRESSIONS}. Received: compression={compression!r}")
    prefix = prefix or os.path.splitext(os.path.basename(os.fspath(annotations)))[0]
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise ValueError(f"prefix must be a plain file name. Received: prefix={prefix!r}")

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
    tf.io.gfile.makedirs(shard_writer.bookkeeping_dir(output_dir))
    settings = {
        "dataset": dataset,
        "prefix": prefix,
        "short_side": short_side,
        "fps": fps,
        "jpeg_quality": jpeg_quality,
        "num_shards": num_shards,
        "classes": annotation_report.classes,
        "compression": compression,
        "min_frames": min_frames,
    }
    _check_manifest(output_dir, prefix, settings, shards)
    _remove_stale_tmp(output_dir)

    finished, jobs = {}, []
    for name, shard in zip(names, shards, strict=True):
        previous = _finished_stats(output_dir, name)
        if previous is not None:
            finished[name] = previous
        else:
            jobs.append(
                {
                    "output_dir": output_dir,
                    "name": name,
                    "records": shard,
                    "short_side": short_side,
                    "fps": fps,
                    "jpeg_quality": jpeg_quality,
                    "min_frames": min_frames,
                    "compression": compression,
                }
            )
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
    shard_writer.atomic_write_text(
        os.path.join(plan.output_dir, "classes.txt"),
        "".join(f"{name}\n" for name in plan.annotation_report.classes),
    )
    shard_writer.atomic_write_text(os.path.join(plan.output_dir, "report.json"), json.dumps(report, indent=1))
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


def _valid_fps(text):
    try:
        parse_fps(text)
    except ValueError:
        return False
    return True


def define_flags():
    """Defines the command-line flags (only when run as a main: tests import this module beside others)."""
    global _DATASET, _ANNOTATIONS, _VIDEO_DIR, _OUTPUT_DIR, _CLASSES, _TRAIN_ANNOTATIONS
    global _SHORT_SIDE, _FPS, _NUM_SHARDS, _WORKERS, _SKIP_BAD_ROWS, _PREFIX, _JPEG_QUALITY
    global _MIN_FRAMES, _COMPRESSION, _ENGINE
    _DATASET = flags.DEFINE_enum("dataset", None, list(DATASETS), "Annotation format.")
    _ANNOTATIONS = flags.DEFINE_string("annotations", None, "Split CSV as released.")
    _VIDEO_DIR = flags.DEFINE_string("video_dir", None, "Folder of the videos.")
    _OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Folder for the shards.")
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
        "num_shards", 0, f"Shard count; 0 = one per {VIDEOS_PER_SHARD} videos.", lower_bound=0
    )
    _WORKERS = flags.DEFINE_integer("workers", 1, "Processes writing shards.", lower_bound=1)
    _SKIP_BAD_ROWS = flags.DEFINE_bool(
        "skip_bad_rows", False, "Count malformed annotation rows instead of failing."
    )
    _PREFIX = flags.DEFINE_string("prefix", None, "Shard prefix (default: CSV file stem).")
    _JPEG_QUALITY = flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality.", lower_bound=1, upper_bound=100)
    _MIN_FRAMES = flags.DEFINE_integer(
        "min_frames",
        MIN_FRAMES,
        "Skip (and report) videos that would store fewer "
        "frames; truncated videos with at least this many are kept.",
        lower_bound=1,
    )
    _COMPRESSION = flags.DEFINE_enum(
        "compression",
        "none",
        list(COMPRESSIONS),
        "TFRecord compression; gzip shards are named *.tfrecord.gz.",
    )
    _ENGINE = flags.DEFINE_enum(
        "engine",
        "local",
        list(ENGINES),
        "local: a process pool on this machine (--workers). beam: an Apache Beam pipeline "
        "(pipelines/beam_convert.py); flags this main does not define are Beam pipeline options "
        "(--runner=DataflowRunner, --direct_num_workers=N, ...).",
    )
    flags.register_validator("fps", _valid_fps, "--fps must be 'keep' or a positive number")


def parse_flags(argv):
    """absl flags; with --engine=beam the flags left over are Beam pipeline options."""
    return flags.FLAGS(argv, known_only=True)


def main(argv):
    beam = _ENGINE.value == "beam"
    if len(argv) > 1 and not beam:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if beam and _WORKERS.value != 1:
        raise app.UsageError(
            "--workers is the local engine's; with --engine=beam the runner's options set the "
            "parallelism (--direct_num_workers, --num_workers / --max_num_workers, --parallelism)"
        )
    try:
        if beam:
            from pipelines import beam_convert  # Beam only for this engine

            run, extra = beam_convert.convert, {"pipeline_args": argv[1:]}
        else:
            run, extra = convert, {"workers": _WORKERS.value}
        report = run(
            _DATASET.value,
            _ANNOTATIONS.value,
            _VIDEO_DIR.value,
            _OUTPUT_DIR.value,
            classes=_CLASSES.value,
            train_annotations=_TRAIN_ANNOTATIONS.value,
            short_side=_SHORT_SIDE.value or None,
            fps=parse_fps(_FPS.value),
            num_shards=_NUM_SHARDS.value or None,
            skip_bad_rows=_SKIP_BAD_ROWS.value,
            prefix=_PREFIX.value,
            jpeg_quality=_JPEG_QUALITY.value,
            min_frames=_MIN_FRAMES.value,
            compression=_COMPRESSION.value,
            **extra,
        )
    except (ValueError, OSError, tf.errors.OpError) as e:  # bad flags, rows (file:line), folders: one line
        sys.exit(f"error: {e}")
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
    define_flags()
    flags.mark_flags_as_required(["dataset", "annotations", "video_dir", "output_dir"])
    app.run(main, flags_parser=parse_flags)
