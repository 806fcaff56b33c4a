"""Tests of pipelines/tfrecord.py: shard names, labels in the SequenceExample,
compression detection."""

import gzip
import zlib

import pytest
import tensorflow as tf

from pipelines import tfrecord


def test_shard_names():
    assert tfrecord.shard_name("train", 3, 12) == "train-00003-of-00012.tfrecord"
    assert tfrecord.shard_name("val", 0, 1, "gzip") == "val-00000-of-00001.tfrecord.gz"


@pytest.mark.parametrize(
    "label,stored", [(5, [5]), (-1, [-1]), ([2, 0, 7], [2, 0, 7]), ([], []), (None, None)]
)
def test_labels_round_trip(label, stored):
    example = tfrecord.make_sequence_example([b"a", b"b"], label, "x", "vid", 25.0, 4, 6)
    parsed = tf.train.SequenceExample.FromString(example.SerializeToString())
    feature = parsed.context.feature
    if stored is None:
        assert tfrecord.LABEL_INDEX not in feature
    else:
        assert list(feature[tfrecord.LABEL_INDEX].int64_list.value) == stored
    assert feature[tfrecord.NUM_FRAMES].int64_list.value == [2]
    assert [
        f.bytes_list.value[0] for f in parsed.feature_lists.feature_list[tfrecord.IMAGE_ENCODED].feature
    ] == [b"a", b"b"]


def _write(path, records, compression=""):
    with tf.io.TFRecordWriter(path, options=tf.io.TFRecordOptions(compression_type=compression)) as writer:
        for record in records:
            writer.write(record)
    return path


@pytest.mark.parametrize("compression", ["", "GZIP", "ZLIB"])
def test_detect_compression_of_tf_written_files(tmp_path, compression):
    path = _write(str(tmp_path / "x.tfrecord"), [b"hello" * 50, b"!"], compression)
    assert tfrecord.detect_compression(path) == compression
    got = [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type=compression)]
    assert got == [b"hello" * 50, b"!"]


def test_detect_compression_is_not_fooled_by_a_gzip_like_length(tmp_path):
    # A record of 0x8b1f bytes: an uncompressed file starting with 1f 8b, the GZIP
    # magic. The record header's CRC tells them apart.
    path = _write(str(tmp_path / "x.tfrecord"), [b"z" * 0x8B1F])
    with open(path, "rb") as f:
        assert f.read(2) == b"\x1f\x8b"
    assert tfrecord.detect_compression(path) == ""


def test_detect_compression_of_other_writers_and_bad_files(tmp_path):
    raw = open(_write(str(tmp_path / "raw.tfrecord"), [b"abc"]), "rb").read()
    (tmp_path / "py.gz").write_bytes(gzip.compress(raw))  # Python's gzip, mtime set
    (tmp_path / "py.z").write_bytes(zlib.compress(raw, 9))
    assert tfrecord.detect_compression(str(tmp_path / "py.gz")) == "GZIP"
    assert tfrecord.detect_compression(str(tmp_path / "py.z")) == "ZLIB"
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "py.gz"), compression_type="GZIP")] == [
        b"abc"
    ]
    (tmp_path / "empty").write_bytes(b"")
    assert tfrecord.detect_compression(str(tmp_path / "empty")) == ""
    (tmp_path / "notes.txt").write_text("some notes about the data set\n")
    with pytest.raises(ValueError, match=r"notes.txt: not a TFRecord file"):
        tfrecord.detect_compression(str(tmp_path / "notes.txt"))
