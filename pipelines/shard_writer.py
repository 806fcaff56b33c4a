"""Writes one TFRecord shard of videos: the unit of work of pipelines/convert.py.

Kept apart from convert.py (which defines absl flags) so pool worker processes can
import it, and the worker pool can preload it once, without the flags.
"""

import json
import os

import tensorflow as tf

from pipelines import decode
from pipelines import tfrecord

_progress_queue = None  # pool workers report each finished video here
_videos_written = 0  # in this process, for the crash test hook


def init_worker(queue):
    """Pool initializer: where to report progress."""
    global _progress_queue
    _progress_queue = queue


def atomic_write_text(path, text):
    """Writes `text` to a hidden temporary name beside `path`, then renames it."""
    tmp = os.path.join(os.path.dirname(path),
                       f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def sidecar(shard_path):
    """Hidden stats file of a finished shard: `.{shard}.json`."""
    return os.path.join(os.path.dirname(shard_path),
                        f".{os.path.basename(shard_path)}.json")


def tmp_name(shard_path, pid=None):
    """Hidden temporary name a shard is written under: `.{shard}.tmp-{pid}`."""
    return os.path.join(os.path.dirname(shard_path),
                        f".{os.path.basename(shard_path)}.tmp-{pid or os.getpid()}")


def video_example(record, short_side, fps, jpeg_quality):
    """Decodes one video -> serialized SequenceExample; raises DecodeError."""
    info = decode.probe(record.video_path)  # fails fast on truncated files
    frames = decode.decode_all(record.video_path, short_side=short_side, fps=fps)
    jpegs = [tf.io.encode_jpeg(frame, quality=jpeg_quality).numpy()
             for frame in frames]
    example = tfrecord.make_sequence_example(
        jpegs, label=record.label_index, label_text=record.label_text,
        video_id=record.video_id, fps=fps if fps else info.fps,
        height=frames.shape[1], width=frames.shape[2])
    return example.SerializeToString()


def write_shard(job, progress=None):
    """Writes one shard under a temporary name, renames it, then writes its stats.

    Args:
      job: dict with output_dir, name, records (VideoRecord list), short_side, fps,
        jpeg_quality and optionally crash_after (test hook: exit the process
        abruptly after this many videos, as a killed worker would).
      progress: callable(count) when run in-process; pool workers use the queue
        given to `init_worker`.

    Returns:
      {"shard": name, "converted": int, "skipped": [{"video", "reason"}]}.
    """
    global _videos_written
    final = os.path.join(job["output_dir"], job["name"])
    tmp = tmp_name(final)
    stats = {"shard": job["name"], "converted": 0, "skipped": []}
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for record in job["records"]:
                try:
                    writer.write(video_example(record, job["short_side"], job["fps"],
                                               job["jpeg_quality"]))
                    stats["converted"] += 1
                except decode.DecodeError as e:
                    stats["skipped"].append({"video": record.video_id,
                                             "reason": str(e)})
                _videos_written += 1
                if progress is not None:
                    progress(1)
                elif _progress_queue is not None:
                    _progress_queue.put(1)
                if job.get("crash_after") and _videos_written >= job["crash_after"]:
                    os._exit(17)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, final)
    # A crash before this line leaves a shard without stats; reruns redo it.
    atomic_write_text(sidecar(final), json.dumps(stats))
    return stats
