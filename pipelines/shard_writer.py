"""Writes one TFRecord shard of videos: the unit of work of pipelines/convert (both engines).

Kept apart from the converter's planning so pool worker processes import only what
writing a shard needs, and the forkserver preloads it once. A shard is written as
`.convert/{shard}.tmp-{pid or tag}` and renamed into place (pipelines.files.replace);
its stats file goes through pipelines.files.write_atomic.

Only finished shards and the user-facing `classes.txt` / `report.json` live in the
output folder. The converter's bookkeeping (per-shard stats, the manifest, shards
being written) lives in its hidden subfolder `.convert/`, which no shard glob
(`DIR/*.tfrecord*`, `DIR/{prefix}-*`) reaches; `pipelines.dataset.make_dataset`
also skips it (and every other folder or hidden file) for `DIR/*`.
"""

import json
import os

import tensorflow as tf

from pipelines import decode, files, tfrecord

BOOKKEEPING = ".convert"  # subfolder of the output folder
COMPRESSIONS = {"none": "", "gzip": "GZIP"}  # --compression -> TFRecordOptions

_progress_queue = None  # pool workers report each finished video here


def init_worker(queue):
    """Pool initializer: where to report progress."""
    global _progress_queue
    _progress_queue = queue


def bookkeeping_dir(output_dir):
    """`{output_dir}/.convert`: the converter's own files."""
    return os.path.join(output_dir, BOOKKEEPING)


def sidecar(shard_path):
    """Stats file of a finished shard: `.convert/{shard}.json` beside the shard."""
    return os.path.join(bookkeeping_dir(os.path.dirname(shard_path)), f"{os.path.basename(shard_path)}.json")


def old_sidecar(shard_path):
    """Where converters before `.convert/` kept the stats: `.{shard}.json`."""
    return os.path.join(os.path.dirname(shard_path), f".{os.path.basename(shard_path)}.json")


def tmp_name(shard_path, pid=None):
    """Temporary name a shard is written under: `.convert/{shard}.tmp-{pid}` (pid: this
    process's id, or another tag)."""
    return os.path.join(
        bookkeeping_dir(os.path.dirname(shard_path)),
        f"{os.path.basename(shard_path)}.tmp-{pid or os.getpid()}",
    )


class TooShort(decode.DecodeError):
    """A video decodes to fewer than min_frames frames; `.decoded` has the counts."""

    def __init__(self, message, decoded):
        super().__init__(message)
        self.decoded = decoded


def video_example(record, short_side, fps, jpeg_quality, min_frames=1):
    """Decodes one video -> (serialized SequenceExample, decode.Decoded).

    Keeps every frame that decodes (a truncated file or a header that declares more
    frames gives what is there, see decode.decode_available). Raises DecodeError
    when nothing decodes or fewer than `min_frames` frames would be stored.
    """
    decoded = decode.decode_available(record.video_path, short_side=short_side, fps=fps)
    frames = decoded.frames
    if len(frames) < min_frames:
        raise TooShort(
            f"{record.video_path}: too short: {len(frames)} frames"
            f"{' (' + decoded.shortfall + ')' if decoded.shortfall else ''}, "
            f"fewer than min_frames={min_frames}",
            decoded,
        )
    jpegs = [tf.io.encode_jpeg(frame, quality=jpeg_quality).numpy() for frame in frames]
    example = tfrecord.make_sequence_example(
        jpegs,
        label=record.label_index,
        label_text=record.label_text,
        video_id=record.video_id,
        fps=fps if fps else decoded.fps,
        height=frames.shape[1],
        width=frames.shape[2],
    )
    # deterministic: the context map in key order, so every process (pool worker, Beam worker)
    # writes the same bytes for a video.
    return example.SerializeToString(deterministic=True), decoded


def _incomplete_entry(record, decoded, stored):
    return {
        "video": record.video_id,
        "declared_frames": decoded.declared_frames,
        "declared_seconds": decoded.declared_seconds,
        "decoded_frames": decoded.decoded_frames,
        "stored_frames": stored,
        "reason": decoded.shortfall,
    }


def write_shard(job, progress=None):
    """Writes one shard under a temporary name, renames it, then writes its stats.

    Args:
      job: dict with output_dir, name, records (VideoRecord list), short_side, fps,
        jpeg_quality, min_frames and compression ("none" | "gzip"); optional
        tmp_tag: the temporary name's suffix instead of the pid (the Beam engine's
        attempts need names unique across machines).
      progress: callable(count) when run in-process; pool workers use the queue
        given to `init_worker`.

    Returns:
      {"shard": name, "converted": int, "skipped": [{"video", "reason"} (plus the
       counts below for videos skipped as too short)],
       "incomplete": [{"video", "declared_frames", "declared_seconds",
       "decoded_frames", "stored_frames", "reason"}]}.
    """
    final = os.path.join(job["output_dir"], job["name"])
    tmp = tmp_name(final, job.get("tmp_tag"))
    tf.io.gfile.makedirs(os.path.dirname(tmp))  # local or remote (gs://...)
    stats = {"shard": job["name"], "converted": 0, "skipped": [], "incomplete": []}
    options = tf.io.TFRecordOptions(compression_type=COMPRESSIONS[job.get("compression", "none")])
    try:
        with tf.io.TFRecordWriter(tmp, options=options) as writer:
            for record in job["records"]:
                try:
                    serialized, decoded = video_example(
                        record, job["short_side"], job["fps"], job["jpeg_quality"], job.get("min_frames", 1)
                    )
                    writer.write(serialized)
                    stats["converted"] += 1
                    if decoded.shortfall:
                        stats["incomplete"].append(_incomplete_entry(record, decoded, len(decoded.frames)))
                except TooShort as e:
                    entry = _incomplete_entry(record, e.decoded, len(e.decoded.frames))
                    stats["skipped"].append(dict(entry, reason=str(e)))
                except decode.DecodeError as e:
                    stats["skipped"].append({"video": record.video_id, "reason": str(e)})
                if progress is not None:
                    progress(1)
                elif _progress_queue is not None:
                    _progress_queue.put(1)
    except BaseException:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.remove(tmp)
        raise
    files.replace(tmp, final)
    # A crash before this line leaves a shard without stats; reruns redo it.
    files.write_atomic(sidecar(final), json.dumps(stats))
    return stats
