"""Tests of pipelines/synthetic: determinism, time-reversal pairs, read back."""

import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from pipelines import dataset, preprocess, synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_same_seed_same_clips_other_seed_differs():
    labels = np.arange(8)
    a = synthetic.generate_clips(labels, seed=3, num_frames=10, size=32)
    assert a.shape == (8, 10, 32, 32, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, synthetic.generate_clips(labels, seed=3, num_frames=10, size=32))
    assert not np.array_equal(a, synthetic.generate_clips(labels, seed=4, num_frames=10, size=32))
    # Clip i depends on (seed, stream, first_index + i) only, not on its batch.
    np.testing.assert_array_equal(
        a[5:], synthetic.generate_clips(labels[5:], seed=3, num_frames=10, size=32, first_index=5)
    )


def test_partner_class_is_the_time_reversed_clip():
    assert [synthetic.partner(c) for c in range(8)] == [1, 0, 3, 2, 5, 4, 7, 6]
    forward = synthetic.generate_clips([0, 2, 4, 6], seed=9, num_frames=12, size=48)
    backward = synthetic.generate_clips([1, 3, 5, 7], seed=9, num_frames=12, size=48)
    np.testing.assert_array_equal(backward, forward[:, ::-1])
    # ... so per-frame statistics (all a frame-averaging model sees) are identical.
    np.testing.assert_allclose(backward.mean(axis=1), forward.mean(axis=1))


def _object_tracks(clips):
    """Per frame: centroid y, area, horizontal spread and total contrast of the
    pixels that differ from the (flat) background colour."""
    bg = clips[:, :, :1, :1].astype(np.float64)  # corner pixel, (N, T, 1, 1, 3)
    diff = np.abs(clips - bg).sum(-1)  # (N, T, H, W)
    mask = diff > 30
    ys, xs = np.mgrid[0 : clips.shape[2], 0 : clips.shape[3]]
    area = mask.sum((2, 3))
    cy = (mask * ys).sum((2, 3)) / np.maximum(area, 1)
    cx = (mask * xs).sum((2, 3)) / np.maximum(area, 1)
    spread = np.sqrt((mask * (xs - cx[..., None, None]) ** 2).sum((2, 3)) / np.maximum(area, 1))
    return dict(cy=cy, area=area, spread=spread, contrast=diff.sum((2, 3)))


def _trend(values):
    """Least-squares slope of each row over time."""
    t = np.arange(values.shape[1]) - (values.shape[1] - 1) / 2
    return (values * t).sum(1) / (t * t).sum()


def test_motion_direction_of_each_class_from_centroid_tracks():
    labels = np.repeat(np.arange(8), 6)
    clips = synthetic.generate_clips(labels, seed=1, num_frames=16, clutter=False)
    tracks = _object_tracks(clips)
    measure = {
        0: -_trend(tracks["cy"]),  # up: y decreases
        2: _trend(tracks["area"]),  # growing: area increases
        4: _trend(tracks["contrast"]),  # fading in: contrast increases
        6: _trend(tracks["spread"]),
    }  # separating: spread increases
    for pair, values in measure.items():
        assert np.all(values[labels == pair] > 0), (pair, values[labels == pair])
        assert np.all(values[labels == pair + 1] < 0), (pair, values[labels == pair + 1])


def test_clutter_changes_background_not_labels():
    clean = synthetic.generate_clips([0, 6], seed=2, num_frames=8, clutter=False)
    busy = synthetic.generate_clips([0, 6], seed=2, num_frames=8)
    assert np.abs(busy.astype(int) - clean).mean() > 1  # noise + texture + distractors
    # Flat background: all corner-region pixels of a clean clip share one colour.
    assert np.ptp(clean[:, :, :2, :2].reshape(2, -1, 3), axis=1).max() == 0


def test_bad_labels_raise():
    with pytest.raises(ValueError, match="labels"):
        synthetic.generate_clips([8])


def test_write_is_deterministic_skips_when_complete_and_atomic(tmp_path):
    kwargs = dict(num_train=12, num_eval=8, seed=5, num_frames=10, size=32, num_shards=2)
    train, evaluation = synthetic.write_synthetic(tmp_path / "a", **kwargs)
    synthetic.write_synthetic(tmp_path / "b", **kwargs)
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == [
        "_COMPLETE.json",
        "classes.txt",
        "eval-00000-of-00001.tfrecord",
        "train-00000-of-00002.tfrecord",
        "train-00001-of-00002.tfrecord",
    ]
    assert sorted(os.listdir(tmp_path / "b")) == names
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    shard0 = (tmp_path / "a" / "train-00000-of-00002.tfrecord").read_bytes()
    assert (tmp_path / "a" / "classes.txt").read_text().split() == list(synthetic.CLASSES)
    assert len(glob.glob(train)) == 2 and len(glob.glob(evaluation)) == 1
    # A complete output is not rewritten.
    stamp = {n: os.stat(tmp_path / "a" / n).st_mtime_ns for n in names}
    synthetic.write_synthetic(tmp_path / "a", **kwargs)
    assert {n: os.stat(tmp_path / "a" / n).st_mtime_ns for n in names} == stamp
    # Other arguments regenerate and leave no stale shard behind.
    train3, _ = synthetic.write_synthetic(tmp_path / "a", **dict(kwargs, num_shards=3))
    assert sorted(glob.glob(str(tmp_path / "a" / "train-*"))) == sorted(glob.glob(train3))
    assert len(glob.glob(train3)) == 3
    # An output without its completion marker (crash) is regenerated, and the
    # crashed run's temporary file removed.
    os.remove(tmp_path / "b" / "_COMPLETE.json")
    (tmp_path / "b" / "train-00000-of-00002.tfrecord").write_bytes(b"truncated")
    crashed = tmp_path / "b" / ".train-00001-of-00002.tfrecord.tmp-999999999"
    crashed.write_bytes(b"partial")
    crashed_now = tmp_path / "b" / ".tmp-999999999-0a1b2c3d-train-00001-of-00002.tfrecord"  # files.tmp_path
    crashed_now.write_bytes(b"partial")
    synthetic.write_synthetic(tmp_path / "b", **kwargs)
    assert (tmp_path / "b" / "train-00000-of-00002.tfrecord").read_bytes() == shard0
    assert os.path.exists(tmp_path / "b" / "_COMPLETE.json")
    assert sorted(os.listdir(tmp_path / "b")) == names


def test_read_back_through_make_dataset(tmp_path):
    train, evaluation = synthetic.write_synthetic(
        tmp_path, num_train=16, num_eval=8, seed=4, num_frames=20, size=64, num_shards=2
    )
    ds = dataset.make_dataset(
        train, "train", batch_size=4, crop_size=56, frame_stride=2, seed=0, shuffle_buffer=16
    )
    for clips, labels in ds.take(2):
        assert clips.shape == (4, 8, 56, 56, 3) and clips.dtype == tf.float32
        assert labels.dtype == tf.int32 and set(labels.numpy()) <= set(range(8))
    # Eval: file order, centre clip (start (20 - 15) // 2 = 2), no resize at 64, centre
    # crop at offset 4: equal to the generated frames up to JPEG error.
    ds = dataset.make_dataset(evaluation, "eval", batch_size=8, crop_size=56, frame_stride=2)
    clips, labels = next(iter(ds))
    want_labels = synthetic.split_labels(8, 4, 1)
    np.testing.assert_array_equal(labels.numpy(), want_labels)
    frames = synthetic.generate_clips(want_labels, seed=4, num_frames=20, stream=1)
    # Each output frame is closest to the generated frame it should come from.
    got = clips.numpy() * np.array(preprocess.STD) * 255  # pixel levels, offset aside
    candidates = (
        preprocess.normalize(frames[:, :, 4:60, 4:60]).numpy() * np.array(preprocess.STD) * 255
    )  # (8, 20, 56, 56, 3)
    err = np.abs(got[:, :, None] - candidates[:, None]).mean(axis=(3, 4, 5))  # (8, 8, 20)
    np.testing.assert_array_equal(err.argmin(-1), np.tile(np.arange(2, 17, 2), (8, 1)))
    assert err.min(-1).mean() < 5  # JPEG quality 90 of noisy frames


def test_the_main_writes_the_set_and_refuses_bad_flags_in_one_line(tmp_path):
    def main(*flags):
        command = [sys.executable, "-m", "pipelines.synthetic", f"--output_dir={tmp_path}", *flags]
        return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)

    tiny = ["--num_train=2", "--num_eval=1", "--num_frames=2", "--size=16", "--num_shards=2"]
    written = main(*tiny)
    assert written.returncode == 0, written.stderr[-2000:]
    train, evaluation = (
        os.path.join(tmp_path, "train-*-of-00002.tfrecord"),
        os.path.join(tmp_path, "eval-*-of-00001.tfrecord"),
    )
    assert written.stdout == f"train: {train}\neval: {evaluation}\n"
    assert len(glob.glob(train)) == 2 and len(glob.glob(evaluation)) == 1
    refused = main(*tiny, "--num_shards=3")
    assert (refused.returncode, refused.stdout) == (2, "")
    assert refused.stderr.splitlines()[-1] == (
        "pipelines.synthetic: error: num_shards must be <= num_train. Received: num_shards=3, num_train=2"
    )
