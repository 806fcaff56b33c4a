"""The TFRecord interchange format: one tf.train.SequenceExample per video.

Context: `clip/label/index` int64 (-1 = unlabelled), `clip/label/text` bytes,
`video/id` bytes, `video/num_frames` int64, `video/fps` float, `image/height` int64,
`image/width` int64. Sequence: `image/encoded`, one JPEG per frame.
Shards are named `{prefix}-{i:05d}-of-{n:05d}.tfrecord` (`.tfrecord.gz` when GZIP
compressed). Several labels per clip: `clip/label/index` holds them all (as TF Model
Garden's multi-label video datasets do); an unlabelled clip holds -1.
"""

import struct

import numpy as np
import tensorflow as tf

LABEL_INDEX = "clip/label/index"
LABEL_TEXT = "clip/label/text"
VIDEO_ID = "video/id"
NUM_FRAMES = "video/num_frames"
FPS = "video/fps"
HEIGHT = "image/height"
WIDTH = "image/width"
IMAGE_ENCODED = "image/encoded"

# Specs for tf.io.parse_single_sequence_example / parse_sequence_example.
CONTEXT_FEATURES = {
    LABEL_INDEX: tf.io.FixedLenFeature([], tf.int64),
    LABEL_TEXT: tf.io.FixedLenFeature([], tf.string, default_value=""),
    VIDEO_ID: tf.io.FixedLenFeature([], tf.string, default_value=""),
    NUM_FRAMES: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    FPS: tf.io.FixedLenFeature([], tf.float32, default_value=0.0),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
    WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}
SEQUENCE_FEATURES = {IMAGE_ENCODED: tf.io.FixedLenSequenceFeature([], tf.string)}


SUFFIXES = {"none": ".tfrecord", "gzip": ".tfrecord.gz"}


def shard_name(prefix, index, num_shards, compression="none"):
    """`{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord`, `.tfrecord.gz` for gzip."""
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{SUFFIXES[compression]}"


def _bytes(value):
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def make_sequence_example(frames_jpeg_list, label, label_text, video_id, fps, height, width):
    """Builds the interchange SequenceExample of one video.

    Args:
      frames_jpeg_list: list of encoded frames, one per frame (`video/num_frames` =
        len): JPEG, or any format tf.io.decode_image reads (PNG, BMP, GIF).
      label: int class index (-1 when unlabelled), a list of class indices (several
        labels per clip), or None to leave `clip/label/index` out.
      label_text: class name (str or bytes), "" when unlabelled.
      video_id: str or bytes id of the video.
      fps: frame rate of the stored frames.
      height, width: size of the stored frames in pixels.

    Returns:
      tf.train.SequenceExample (call `.SerializeToString()` to write it).
    """
    example = tf.train.SequenceExample()
    context = example.context.feature
    if label is not None:
        labels = [label] if isinstance(label, (int, np.integer)) else list(label)
        context[LABEL_INDEX].int64_list.value.extend(int(v) for v in labels)
    context[LABEL_TEXT].bytes_list.value.append(_bytes(label_text))
    context[VIDEO_ID].bytes_list.value.append(_bytes(video_id))
    context[NUM_FRAMES].int64_list.value.append(len(frames_jpeg_list))
    context[FPS].float_list.value.append(float(fps))
    context[HEIGHT].int64_list.value.append(int(height))
    context[WIDTH].int64_list.value.append(int(width))
    frames = example.feature_lists.feature_list[IMAGE_ENCODED]
    for jpeg in frames_jpeg_list:
        frames.feature.add().bytes_list.value.append(_bytes(jpeg))
    return example


def parse_sequence_example(serialized):
    """Parses one serialized SequenceExample -> (context dict, sequence dict) tensors."""
    return tf.io.parse_single_sequence_example(
        serialized, context_features=CONTEXT_FEATURES, sequence_features=SEQUENCE_FEATURES
    )


def detect_compression(path):
    """TFRecordDataset compression_type of a file: "" (none), "GZIP" or "ZLIB".

    Reads the first 12 bytes: an uncompressed TFRecord starts with a record length
    and its masked CRC32C (the check TF's reader does), GZIP with 1f 8b, ZLIB with a
    deflate header. An empty file reads as uncompressed (no records). Raises
    ValueError naming the file when it is none of these.
    """
    from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

    with tf.io.gfile.GFile(path, "rb") as f:
        head = f.read(12)
    if not head:
        return ""
    if len(head) == 12 and struct.unpack("<I", head[8:])[0] == masked_crc32c(head[:8]):
        return ""
    if head[:2] == b"\x1f\x8b":
        return "GZIP"
    if len(head) >= 2 and head[0] & 0x0F == 8 and (head[0] * 256 + head[1]) % 31 == 0:
        return "ZLIB"
    raise ValueError(
        f"{path}: not a TFRecord file (no uncompressed record header, "
        f"no GZIP or ZLIB header); it starts with {head!r}"
    )
