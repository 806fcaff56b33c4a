"""Tests of pipelines/dataset.py: exact sampling, views, determinism, both sources."""

import dataclasses
import itertools
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from pipelines import dataset, decode, preprocess, tfrecord
from tests.test_preprocess import np_resize_bilinear
from tests.video_clips import CARPHONE

H, W, N = 24, 40, 30  # tiny test videos: 30 frames of 24x40


def indexed_video(num_frames=N, height=H, width=W, seed=0):
    """Frames whose red value encodes the frame index (10 + 8 i), green a horizontal
    ramp and blue a vertical ramp plus a per-video offset (to locate crops)."""
    frames = np.zeros((num_frames, height, width, 3), np.uint8)
    frames[..., 0] = (10 + 8 * np.arange(num_frames))[:, None, None]
    frames[..., 1] = np.round(np.linspace(0, 255, width))[None, None, :]
    frames[..., 2] = np.round(np.linspace(0, 200, height) + 10 * seed)[None, :, None]
    return frames


def write_records(path, videos, labels, quality=100):
    with tf.io.TFRecordWriter(path) as writer:
        for i, (frames, label) in enumerate(zip(videos, labels, strict=True)):
            jpegs = [tf.io.encode_jpeg(f, quality=quality, chroma_downsampling=False).numpy() for f in frames]
            writer.write(
                tfrecord.make_sequence_example(
                    jpegs, label, f"class{label}", f"video{i}", 25.0, frames.shape[1], frames.shape[2]
                ).SerializeToString()
            )
    return path


def unnormalize(clips):
    return (np.asarray(clips) * np.array(preprocess.STD) + np.array(preprocess.MEAN)) * 255


def frame_ids(clips):
    """Frame index of every frame from its red value: (..., T)."""
    red = unnormalize(clips)[..., 0].mean(axis=(-1, -2))
    return np.round((red - 10) / 8).astype(int)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    d = tmp_path_factory.mktemp("records")
    write_records(
        str(d / "a-00000-of-00002.tfrecord"), [indexed_video(seed=1), indexed_video(seed=2)], [0, 3]
    )
    write_records(str(d / "a-00001-of-00002.tfrecord"), [indexed_video(seed=3)], [5])
    return str(d / "a-*.tfrecord")


# --- sample_indices: exact index vectors. ---


def test_sample_indices_train_with_fixed_start():
    got = dataset.sample_indices(100, 8, 8, "train", start=3)
    assert got.dtype == tf.int32
    assert got.numpy().tolist() == [3, 11, 19, 27, 35, 43, 51, 59]


def test_sample_indices_short_video_wraps_around():
    got = dataset.sample_indices(20, 8, 8, "train", start=3).numpy().tolist()
    assert got == [3, 11, 19, 7, 15, 3, 11, 19]
    assert dataset.sample_indices(20, 8, 8, "eval").numpy().tolist() == [0, 8, 16, 4, 12, 0, 8, 16]


def test_sample_indices_eval_is_centre_clip():
    # span 57 of 100 frames: start (100 - 57) // 2 = 21.
    assert dataset.sample_indices(100, 8, 8, "eval").numpy().tolist() == [21, 29, 37, 45, 53, 61, 69, 77]


def test_sample_indices_test_clips_evenly_spaced():
    got = dataset.sample_indices(100, 4, 2, "test", num_clips=3).numpy()
    # span 7, slack 93: starts 0, 46, 93 (last clip ends on the last frame).
    np.testing.assert_array_equal(got, [[0, 2, 4, 6], [46, 48, 50, 52], [93, 95, 97, 99]])
    np.testing.assert_array_equal(
        dataset.sample_indices(100, 4, 2, "test", num_clips=1).numpy(), [[46, 48, 50, 52]]
    )


def test_sample_indices_train_random_start_covers_range_and_is_seeded():
    starts = {int(dataset.sample_indices(60, 8, 8, "train", seed=[1, s])[0]) for s in range(100)}
    assert starts == {0, 1, 2, 3}  # span 57 of 60 frames
    short = {int(dataset.sample_indices(20, 8, 8, "train", seed=[1, s])[0]) for s in range(200)}
    assert short == set(range(20))  # shorter than the span: any phase
    a = dataset.sample_indices(1000, 8, 8, "train", seed=[4, 2])
    np.testing.assert_array_equal(a, dataset.sample_indices(1000, 8, 8, "train", seed=[4, 2]))


def test_sample_indices_of_the_model_garden_comparison_in_the_docs():
    # docs/ARCHITECTURE.md, "Sampling conventions": 250 frames, 8 x 8.
    assert dataset.sample_indices(250, 8, 8, "eval").numpy().tolist() == [
        96,
        104,
        112,
        120,
        128,
        136,
        144,
        152,
    ]
    assert dataset.sample_indices(250, 8, 8, "test", num_clips=10).numpy()[:, 0].tolist() == [
        0,
        21,
        42,
        64,
        85,
        107,
        128,
        150,
        171,
        193,
    ]


def test_sample_indices_bad_mode():
    with pytest.raises(ValueError, match="mode"):
        dataset.sample_indices(10, 2, 2, "validation")


# --- make_dataset over TFRecords. ---


def test_eval_reads_centre_clip_with_exact_frames(records):
    ds = dataset.make_dataset(
        records, "eval", batch_size=2, num_frames=4, frame_stride=3, crop_size=16, eval_resize=20
    )
    batches = list(ds)
    assert [b[0].shape for b in batches] == [(2, 4, 16, 16, 3), (1, 4, 16, 16, 3)]
    clips = np.concatenate([b[0].numpy() for b in batches])
    labels = np.concatenate([b[1].numpy() for b in batches])
    assert batches[0][1].dtype == tf.int32
    assert sorted(labels.tolist()) == [0, 3, 5]
    # span 10 of 30 frames: start 10.
    np.testing.assert_array_equal(frame_ids(clips), [[10, 13, 16, 19]] * 3)
    seed = {0: 1, 3: 2, 5: 3}
    for clip, label in zip(clips, labels, strict=True):
        ref = np_resize_bilinear(indexed_video(seed=seed[label])[[10, 13, 16, 19]], 20, 33)
        # JPEG at quality 100: a few levels.
        np.testing.assert_allclose(unnormalize(clip), ref[:, 2:18, 8:24], atol=6)


def test_test_mode_views_are_clip_major(records):
    ds = dataset.make_dataset(
        records,
        "test",
        batch_size=3,
        num_frames=4,
        frame_stride=2,
        crop_size=16,
        eval_resize=20,
        num_clips=3,
        num_crops=3,
    )
    assert ds.element_spec[0].shape.as_list() == [None, 9, 4, 16, 16, 3]
    clips, labels = next(iter(ds))
    assert clips.shape == (3, 9, 4, 16, 16, 3)
    # span 7 of 30 frames: clip starts 0, 11, 23; resized 20x33: crops at x 0, 8, 17.
    starts, xs = [0, 11, 23], [0, 8, 17]
    seed = {0: 1, 3: 2, 5: 3}
    for b in range(3):
        frames = np_resize_bilinear(indexed_video(seed=seed[int(labels[b])]), 20, 33)
        for v in range(9):
            c, k = divmod(v, 3)
            idx = [starts[c] + 2 * t for t in range(4)]
            assert frame_ids(clips[b, v]).tolist() == idx
            ref = frames[idx][:, 2:18, xs[k] : xs[k] + 16]
            np.testing.assert_allclose(unnormalize(clips[b, v]), ref, atol=6)


def _match_train_crop(clip, video, min_resize, max_resize, crop):
    """Best (error, flipped) over every short side / offset / flip the train mode may
    pick, for a clip whose frame indices are known."""
    best = (np.inf, None)
    for short in range(min_resize, max_resize + 1):
        new_h, new_w = short, int(round(W * short / H))
        full = np_resize_bilinear(video, new_h, new_w)
        for oy, ox in itertools.product(range(new_h - crop + 1), range(new_w - crop + 1)):
            ref = full[:, oy : oy + crop, ox : ox + crop]
            for flipped, cand in ((False, ref), (True, ref[:, :, ::-1])):
                err = np.abs(cand - clip).max()
                if err < best[0]:
                    best = (err, flipped)
    return best


def test_train_clips_are_random_resized_crops_with_flips(records):
    ds = dataset.make_dataset(
        records,
        "train",
        batch_size=4,
        num_frames=4,
        frame_stride=3,
        crop_size=16,
        min_resize=18,
        max_resize=21,
        seed=11,
    )
    assert ds.element_spec[0].shape.as_list() == [4, 4, 16, 16, 3]
    clips, labels = next(iter(ds))
    assert clips.shape == (4, 4, 16, 16, 3) and labels.shape == (4,)
    assert clips.dtype == tf.float32 and labels.dtype == tf.int32
    seed = {0: 1, 3: 2, 5: 3}
    flips = []
    for clip, label in zip(unnormalize(clips), labels.numpy(), strict=True):
        ids = np.round((clip[..., 0].mean(axis=(1, 2)) - 10) / 8).astype(int)
        assert 0 <= ids[0] <= N - 10 and np.all(np.diff(ids) == 3)
        err, flipped = _match_train_crop(clip, indexed_video(seed=seed[label])[ids], 18, 21, 16)
        assert err < 6
        flips.append(flipped)
    # Horizontal flips happen (p = 0.5): over 4 batches both orientations show up.
    for clips, _ in ds.take(3):
        ramp = unnormalize(clips)[..., 1].mean(axis=(1, 2))  # (B, W) green ramp
        flips += list(ramp[:, 0] > ramp[:, -1])
    assert any(flips) and not all(flips)


def test_same_seed_same_batches_other_seed_differs(records):
    def first(seed):
        ds = dataset.make_dataset(
            records,
            "train",
            batch_size=2,
            num_frames=4,
            frame_stride=2,
            crop_size=16,
            seed=seed,
            shuffle_buffer=8,
        )
        return [(x.numpy(), y.numpy()) for x, y in ds.take(3)]

    a, b, c = first(7), first(7), first(8)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c, strict=True))


def test_input_context_shards_by_file(records):
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2)
    ds = dataset.make_dataset(
        records, "eval", batch_size=4, num_frames=2, frame_stride=1, crop_size=16, input_context=ctx
    )
    assert np.concatenate([y.numpy() for _, y in ds]).tolist() == [5]


def test_bad_arguments(records, tmp_path):
    pattern = str(tmp_path / "nothing-*.tfrecord")
    with pytest.raises(ValueError, match="nothing-"):
        dataset.make_dataset(pattern, "train")
    with pytest.raises(ValueError, match="mode"):
        dataset.make_dataset(records, "validate")
    with pytest.raises(ValueError, match="exactly one"):
        dataset.make_dataset(records, "eval", annotations="x.csv")
    with pytest.raises(ValueError, match="min_resize"):
        dataset.make_dataset(records, "train", crop_size=224, min_resize=200)
    with pytest.raises(ValueError, match="dataset"):
        dataset.make_dataset(annotations="x.csv", video_dir=str(tmp_path), dataset="ucf")


def _fields(options):
    return {field.name: getattr(options, field.name) for field in dataclasses.fields(options)}


def test_each_source_alone_gives_what_make_dataset_gives(records, carphone_sources):
    options = dataset.ClipOptions(batch_size=2, num_frames=4, frame_stride=3, crop_size=16, seed=7)
    alone = list(dataset.tfrecord_dataset(records, options, shuffle_buffer=4).take(3))
    entry = list(dataset.make_dataset(records, shuffle_buffer=4, **_fields(options)).take(3))
    assert [x.shape for x, _ in alone] == [(2, 4, 16, 16, 3)] * 3
    for (xa, ya), (xb, yb) in zip(alone, entry, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert set(ya.numpy()) <= {0, 3, 5}
    _, raw = carphone_sources
    options = dataclasses.replace(options, mode="eval", batch_size=1, crop_size=64)
    video = next(
        iter(
            dataset.video_dataset(
                raw["annotations"], raw["video_dir"], "kinetics", options, classes=raw["classes"]
            )
        )
    )
    entry = next(iter(dataset.make_dataset(**raw, **_fields(options))))
    assert video[0].shape == (1, 4, 64, 64, 3) and video[1].numpy().tolist() == [0]
    np.testing.assert_array_equal(video[0], entry[0])
    # The options: checked on construction, frozen, train-mode defaults.
    with pytest.raises(ValueError, match="mode must be one of"):
        dataset.ClipOptions(mode="validate")
    with pytest.raises(ValueError, match="batch_size must be a positive int. Received: batch_size=0"):
        dataset.ClipOptions(batch_size=0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.mode = "train"
    assert dataset.ClipOptions().repeats and not options.repeats
    assert dataclasses.replace(options, repeat=True).repeats


def test_the_public_stages_compute_what_the_source_does(records):
    serialized = next(iter(tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(records))[:1])))
    encoded, label = dataset.parse_record(serialized)
    assert encoded.shape == (N,) and encoded.dtype == tf.string and label.numpy() == 0
    _, multi_hot = dataset.parse_record(serialized, multilabel=True, num_classes=4)
    np.testing.assert_array_equal(multi_hot, [1.0, 0.0, 0.0, 0.0])
    options = dataset.ClipOptions(mode="eval", batch_size=1, num_frames=4, frame_stride=3, crop_size=16)
    indices = dataset.sample_indices(N, 4, 3, "eval")
    clip = dataset.decode_clip(tf.gather(encoded, indices), options)
    first = next(iter(dataset.tfrecord_dataset(records, options)))[0][0]  # file order: this record
    assert clip.shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(clip, first)
    np.testing.assert_array_equal(frame_ids(clip), [10, 13, 16, 19])
    # Test mode: 2 clips x 3 crops from the frames given in view order.
    options = dataclasses.replace(options, mode="test", num_clips=2, num_crops=3)
    indices = tf.reshape(dataset.sample_indices(N, 4, 3, "test", num_clips=2), [-1])
    views = dataset.decode_clip(tf.gather(encoded, indices), options)
    assert views.shape == (6, 4, 16, 16, 3)
    np.testing.assert_array_equal(frame_ids(views), [[0, 3, 6, 9]] * 3 + [[20, 23, 26, 29]] * 3)
    np.testing.assert_array_equal(views, next(iter(dataset.tfrecord_dataset(records, options)))[0][0])


# --- Raw-video source gives the same clips as the TFRecord of the same video. ---


@pytest.fixture(scope="module")
def carphone_sources(tmp_path_factory):
    d = tmp_path_factory.mktemp("raw")
    video_dir = d / "videos"
    os.makedirs(video_dir)
    shutil.copy(CARPHONE, video_dir / "carphone_000000_000010.mp4")
    csv = d / "val.csv"
    csv.write_text("label,youtube_id,time_start,time_end,split\ntalking,carphone,0,10,validate\n")
    frames = decode.decode_all(CARPHONE)  # (120, 144, 176, 3)
    pattern = write_records(str(d / "carphone-00000-of-00001.tfrecord"), [frames], [0], quality=95)
    raw = dict(annotations=str(csv), video_dir=str(video_dir), dataset="kinetics", classes=["talking"])
    return pattern, raw


@pytest.mark.parametrize(
    "mode,kwargs",
    [
        # No shuffle buffer: both sources see the video at the same element index.
        ("train", dict(seed=3, frame_stride=8, shuffle_buffer=0, batch_size=2)),
        ("test", dict(num_clips=2, num_crops=3, frame_stride=16, batch_size=1)),
    ],
)
def test_raw_video_source_matches_tfrecord_source(carphone_sources, mode, kwargs):
    pattern, raw = carphone_sources
    common = dict(mode=mode, num_frames=4, crop_size=96, **kwargs)
    from_records = next(iter(dataset.make_dataset(pattern, **common)))
    from_video = next(iter(dataset.make_dataset(**raw, **common)))
    a, b = unnormalize(from_records[0]), unnormalize(from_video[0])
    assert a.shape == b.shape
    assert a.shape == ((2, 4, 96, 96, 3) if mode == "train" else (1, 6, 4, 96, 96, 3))
    np.testing.assert_array_equal(from_records[1], from_video[1])
    diff = np.abs(a - b).mean()
    assert diff < 2.0, diff  # JPEG quality 95
    # The comparison can fail: a clip of other frames is far off.
    assert np.abs(a - np.roll(b, 1, axis=-4)).mean() > 3 * diff


def test_raw_video_source_skips_and_reports_unreadable_videos(carphone_sources, tmp_path):
    _, raw = carphone_sources
    broken = os.path.join(raw["video_dir"], "broken_000000_000010.mp4")
    with open(broken, "wb") as f:
        f.write(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 4)  # not decodable
    csv = tmp_path / "val.csv"
    csv.write_text(
        "label,youtube_id,time_start,time_end,split\n"
        "other,broken,0,10,validate\n"
        "talking,carphone,0,10,validate\n"
    )
    before = len(dataset.raw_video_skips())
    ds = dataset.make_dataset(
        annotations=str(csv),
        video_dir=raw["video_dir"],
        dataset="kinetics",
        classes=["other", "talking"],
        mode="eval",
        batch_size=4,
        num_frames=2,
        crop_size=64,
    )
    labels = np.concatenate([y.numpy() for _, y in ds])
    os.remove(broken)
    assert labels.tolist() == [1]
    skips = dataset.raw_video_skips()[before:]
    assert [path for path, _ in skips] == [broken]
    assert broken in skips[0][1]  # the reason names the file


# --- Readable shards only; what other writers produce (GZIP, PNG, several labels). ---


def write_variant(path, videos, labels, image_format="jpeg", compression=""):
    """Records of `videos` (frames as JPEG q100 / PNG / alternating), labels as given
    (int, list of ints or None = no label feature), TFRecord compression as given."""

    def encode(frame, t):
        png = image_format == "png" or (image_format == "mixed" and t % 2)
        return (
            tf.io.encode_png(frame)
            if png
            else tf.io.encode_jpeg(frame, quality=100, chroma_downsampling=False)
        ).numpy()

    options = tf.io.TFRecordOptions(compression_type=compression)
    with tf.io.TFRecordWriter(path, options=options) as writer:
        for i, (frames, label) in enumerate(zip(videos, labels, strict=True)):
            writer.write(
                tfrecord.make_sequence_example(
                    [encode(f, t) for t, f in enumerate(frames)],
                    label,
                    "",
                    f"video{i}",
                    25.0,
                    frames.shape[1],
                    frames.shape[2],
                ).SerializeToString()
            )
    return path


def test_globs_reaching_bookkeeping_files_read_only_shards(records, tmp_path):
    d = os.path.dirname(records)
    out = tmp_path / "converted"
    os.makedirs(out / ".convert")
    for name in os.listdir(d):
        shutil.copy(os.path.join(d, name), out / name)
    # What a converter (this one or an older one) leaves beside its shards.
    for name in [
        ".a-00000-of-00002.tfrecord.json",
        ".a.manifest.json",
        ".a-00001-of-00002.tfrecord.tmp-123",
        "report.json",
        "classes.txt",
        ".convert/a-00000-of-00002.tfrecord.json",
    ]:
        (out / name).write_text('{"shard": "a-00000-of-00002.tfrecord"}\n')
    os.makedirs(out / "subfolder.tfrecord")
    for pattern in ["*", "*.tfrecord*", "a-*"]:
        assert dataset._list_shards(str(out / pattern)) == (
            [str(out / "a-00000-of-00002.tfrecord"), str(out / "a-00001-of-00002.tfrecord")],
            ["", ""],
        )
    ds = dataset.make_dataset(
        str(out / "*"), "eval", batch_size=4, num_frames=2, frame_stride=1, crop_size=16
    )
    assert sorted(np.concatenate([y.numpy() for _, y in ds]).tolist()) == [0, 3, 5]
    # Only skipped files left: the error names the pattern and why.
    for name in os.listdir(out):
        if name.startswith("a-"):
            os.remove(out / name)
    with pytest.raises(
        ValueError,
        match=r"No TFRecord shard in file_pattern='.*"
        r"converted/\*': it matches only hidden files, "
        r"folders or the converter's report.json",
    ):
        dataset.make_dataset(str(out / "*"), "eval")


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """The same two videos as JPEG, GZIP/ZLIB-compressed JPEG, PNG and mixed frames."""
    d = tmp_path_factory.mktemp("variants")
    videos, labels = [indexed_video(seed=1), indexed_video(seed=2)], [0, 3]
    paths = {}
    for name, fmt, compression in [
        ("jpeg", "jpeg", ""),
        ("gzip", "jpeg", "GZIP"),
        ("zlib", "jpeg", "ZLIB"),
        ("png", "png", ""),
        ("mixed", "mixed", ""),
    ]:
        paths[name] = write_variant(str(d / f"{name}.tfrecord"), videos, labels, fmt, compression)
    return paths


MODE_ARGS = {
    "train": dict(
        batch_size=2,
        num_frames=4,
        frame_stride=3,
        crop_size=16,
        min_resize=18,
        max_resize=21,
        seed=5,
        shuffle_buffer=0,
    ),
    "eval": dict(batch_size=2, num_frames=4, frame_stride=3, crop_size=16, eval_resize=20),
    "test": dict(
        batch_size=2, num_frames=4, frame_stride=2, crop_size=16, eval_resize=20, num_clips=3, num_crops=3
    ),
}


def first_batch(pattern, mode, **kwargs):
    clips, labels = next(iter(dataset.make_dataset(pattern, mode, **MODE_ARGS[mode], **kwargs)))
    return clips.numpy(), labels.numpy()


@pytest.mark.parametrize("mode", ["train", "eval", "test"])
def test_gzip_zlib_png_and_mixed_frames_read_in_every_mode(variants, mode):
    clips, labels = first_batch(variants["jpeg"], mode)
    assert labels.tolist() == [0, 3]
    for name in ["gzip", "zlib"]:  # detected: the very same clips
        got = first_batch(variants[name], mode)
        np.testing.assert_array_equal(got[0], clips)
        np.testing.assert_array_equal(got[1], labels)
    # PNG is lossless: exactly the frames, up to float rounding of the resize.
    png, png_labels = first_batch(variants["png"], mode)
    assert png.shape == clips.shape and png_labels.tolist() == [0, 3]
    frames = [indexed_video(seed=1), indexed_video(seed=2)]
    if mode == "eval":  # span 10 of 30 frames: start 10, short side 20 -> 20x33
        for b in range(2):
            ref = np_resize_bilinear(frames[b][[10, 13, 16, 19]], 20, 33)[:, 2:18, 8:24]
            np.testing.assert_allclose(unnormalize(png[b]), ref, atol=0.01)
    if mode == "test":
        for b, v in itertools.product(range(2), range(9)):
            c, k = divmod(v, 3)
            idx = [[0, 11, 23][c] + 2 * t for t in range(4)]
            x = [0, 8, 17][k]
            ref = np_resize_bilinear(frames[b][idx], 20, 33)[:, 2:18, x : x + 16]
            np.testing.assert_allclose(unnormalize(png[b, v]), ref, atol=0.01)
    if mode == "train":  # same seed, same crop: PNG and JPEG q100 differ by JPEG error
        assert np.abs(unnormalize(png) - unnormalize(clips)).max() < 6
    # Mixed (odd frames PNG, even JPEG): PNG exactly where the frame was a PNG.
    mixed = first_batch(variants["mixed"], mode)[0]
    assert np.abs(unnormalize(mixed) - unnormalize(png)).max() < 6
    png_frames = frame_ids(mixed) % 2 == 1
    assert png_frames.any() and (~png_frames).any()
    np.testing.assert_allclose(unnormalize(mixed)[png_frames], unnormalize(png)[png_frames], atol=0.01)


def test_compression_argument(variants):
    with pytest.raises(ValueError, match="compression must be one of"):
        dataset.make_dataset(variants["jpeg"], "eval", compression="lz4")
    np.testing.assert_array_equal(
        first_batch(variants["gzip"], "eval", compression="GZIP")[0], first_batch(variants["jpeg"], "eval")[0]
    )
    with pytest.raises(tf.errors.DataLossError):  # GZIP read as uncompressed
        first_batch(variants["gzip"], "eval", compression="none")
    bad = os.path.join(os.path.dirname(variants["jpeg"]), "notes.txt")
    with open(bad, "w") as f:
        f.write("not a record\n")
    try:
        with pytest.raises(ValueError, match=r"notes.txt: not a TFRecord file"):
            dataset.make_dataset(os.path.join(os.path.dirname(bad), "*"), "eval")
    finally:
        os.remove(bad)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Five records: several labels, one, none (no feature), -1 (unlabelled), two
    equal labels."""
    d = tmp_path_factory.mktemp("labels")
    labels = [[1, 3], [4], None, [-1], [2, 2]]
    videos = [indexed_video(seed=i) for i in range(len(labels))]
    return write_variant(str(d / "multi.tfrecord"), videos, labels), labels


@pytest.mark.parametrize("mode", ["train", "eval", "test"])
def test_multilabel_multi_hot_in_every_mode(labelled, mode):
    pattern, _ = labelled
    args = dict(MODE_ARGS[mode], batch_size=5)
    if mode == "train":
        args["drop_remainder"] = False
    ds = dataset.make_dataset(pattern, mode, multilabel=True, num_classes=5, **args)
    assert ds.element_spec[1].shape.as_list() == [None, 5]
    clips, labels = next(iter(ds))
    assert labels.dtype == tf.float32 and labels.shape == (5, 5)
    np.testing.assert_array_equal(
        labels.numpy(), [[0, 1, 0, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0], [0, 0, 0, 0, 0], [0, 0, 1, 0, 0]]
    )
    assert clips.shape[0] == 5


@pytest.mark.parametrize("mode", ["train", "eval", "test"])
def test_single_label_mode_gives_minus_one_without_label(labelled, mode, tmp_path):
    videos = [indexed_video(seed=i) for i in range(3)]
    pattern = write_variant(str(tmp_path / "nolabel.tfrecord"), videos, [None, -1, 2])
    args = dict(MODE_ARGS[mode], batch_size=3, drop_remainder=False)
    labels = next(iter(dataset.make_dataset(pattern, mode, **args)))[1]
    assert labels.dtype == tf.int32
    assert labels.numpy().tolist() == [-1, -1, 2]
    # Several labels in single-label mode: an error that says what to do.
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match="several labels in clip/label/index; read it with multilabel=True",
    ):
        next(iter(dataset.make_dataset(labelled[0], mode, **args)))


def test_multilabel_arguments_and_out_of_range_labels(labelled, tmp_path):
    for bad in (None, 0, 2.5, True):
        with pytest.raises(ValueError, match="multilabel=True needs num_classes"):
            dataset.make_dataset(labelled[0], "eval", multilabel=True, num_classes=bad)
    with pytest.raises(tf.errors.InvalidArgumentError, match=">= num_classes=4"):
        list(dataset.make_dataset(labelled[0], "eval", multilabel=True, num_classes=4, **MODE_ARGS["eval"]))
    pattern = write_variant(str(tmp_path / "neg.tfrecord"), [indexed_video()], [[-2]])
    with pytest.raises(tf.errors.InvalidArgumentError, match="is < -1"):
        list(dataset.make_dataset(pattern, "eval", multilabel=True, num_classes=4, **MODE_ARGS["eval"]))


def test_raw_video_source_multilabel_is_one_hot(carphone_sources):
    _, raw = carphone_sources
    ds = dataset.make_dataset(
        **raw, mode="eval", batch_size=1, num_frames=2, crop_size=64, multilabel=True, num_classes=3
    )
    labels = next(iter(ds))[1]
    np.testing.assert_array_equal(labels.numpy(), [[1.0, 0.0, 0.0]])


def test_training_augmentations_seeded_mixed_after_batching_and_off_in_eval(records):
    """RandAugment + random erasing per clip and MixUp/CutMix per batch: a seeded pipeline repeats itself;
    the mixed labels carry the soft label (rows sum to 1) and the batch's hard index; eval ignores them."""
    common = dict(batch_size=3, num_frames=4, frame_stride=2, crop_size=16, seed=3, shuffle_buffer=4)
    augmented = dict(randaugment="1,9", random_erasing=0.5, mixup_alpha=0.8, cutmix_alpha=1.0, num_classes=6)

    def batches(mode="train", **kwargs):
        ds = dataset.make_dataset(records, mode, **common, **kwargs)
        return [(x.numpy(), y.numpy()) for x, y in ds.take(1)]

    plain, (first, again) = batches(), (batches(**augmented), batches(**augmented))
    for (xa, ya), (xb, yb), (xp, yp) in zip(first, again, plain, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        assert ya.shape == (3, 7) and ya.dtype == np.float32
        np.testing.assert_allclose(ya[:, :6].sum(axis=1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(ya[:, 6], yp)  # the hard label of the same clips, unmixed
        assert not np.allclose(xa, xp)
    with pytest.raises(ValueError, match="need num_classes"):
        dataset.make_dataset(records, "train", mixup_alpha=0.2)
    eval_plain, eval_augmented = batches("eval"), batches("eval", **augmented)
    for (xa, ya), (xb, yb) in zip(eval_plain, eval_augmented, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_unreadable_videos_lists_each_video_once_after_the_mark(monkeypatch):
    skips = [
        ("b.mp4", "first"),
        ("a.mp4", "bad header"),
        ("b.mp4", "again"),
        ("c.mp4", "no stream"),
        ("a.mp4", "x"),
    ]
    monkeypatch.setattr(dataset, "_skips", skips)
    assert dataset.unreadable_videos(since=1) == [
        {"path": "a.mp4", "reason": "bad header"},
        {"path": "b.mp4", "reason": "again"},  # its skip before the mark belongs to an earlier run
        {"path": "c.mp4", "reason": "no stream"},
    ]
    assert dataset.unreadable_videos(since=len(skips)) == []
