"""Video decoding with PyAV: frames by index or timestamp, probing, full decode.

Frame index `i` is the i-th decoded frame of the first video stream in presentation
order, counted from the first frame the decoder outputs, so a stream whose pts start
above zero still has a frame 0. Timestamps are seconds relative to that first frame.
Container frame counts are never used as the frame count: `probe` counts demuxed
packets and every decode checks what it actually got.

Index reads demux the packet timestamps once (cheap, no decoding), map each wanted
index to its pts, seek to the keyframe at or before it and decode forward. Every
decoded frame is checked against that map (its pts must be the next expected one);
when anything disagrees (packets without pts, a decoder that drops frames, a seek
that lands late or garbles timestamps, as MPEG-PS does) the read starts over as one
sequential decode from the start, which is always right.

Every failure to read a file (missing, empty, not a video, corrupt, truncated, index
or time past the end) raises `DecodeError`, a ValueError whose message starts with
the path and says why. Truncation is detected where the container declares a length:
mp4/mov/avi frame counts and the Matroska/WebM duration (not for MPEG-PS/TS).

`decode_available` is the lenient whole-video decode (used by pipelines/convert):
it keeps every frame that decodes cleanly (up to the end of the data, the first
packet the demuxer flags as cut short, or the first decoder error) and reports how
that falls short of what the container declares (a truncated download, a header
that lies) instead of raising.

Paths with a scheme (gs://..., any filesystem tf.io.gfile knows) are read whole into memory
through tf.io.gfile (one read per open: a clip is a few MB) and PyAV decodes that buffer;
TensorFlow is imported only for them. A filesystem error other than a missing file (no
permission, the store unreachable) is raised as it is, not as a DecodeError, so the caller
fails (and a Beam runner retries) instead of skipping a video that exists.
"""

import bisect
import dataclasses
import fractions
import io
import math
import os

import av
import numpy as np

# What PyAV raises on bad media: av.error.FFmpegError covers InvalidDataError,
# EOFError, ...; some errors also derive from OSError, ValueError or EOFError.
_AV_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError, UnicodeDecodeError)
_EPS = 1e-6  # seconds; absorbs float error when comparing timestamps


class DecodeError(ValueError):
    """A video could not be read; the message names the file and the cause."""


@dataclasses.dataclass(frozen=True)
class VideoInfo:
    """What `probe` learns about a video.

    Attributes:
      path: the file.
      num_frames: frames in the video stream (demuxed packets with a pts; counted by
        decoding when packets carry none). Not the container header's count.
      fps: average frame rate in frames per second (0.0 when the file gives none).
      width, height: coded frame size of the video stream.
      start_time: pts of frame 0 in seconds (non-zero for offset streams).
      duration: seconds from the start of frame 0 to the end of the last frame.
      codec: decoder name, e.g. "h264", "vp9", "mjpeg", "mpeg4", "mpeg2video".
    """

    path: str
    num_frames: int
    fps: float
    width: int
    height: int
    start_time: float
    duration: float
    codec: str


@dataclasses.dataclass(frozen=True)
class _Index:
    """Demuxed packet timeline of the video stream."""

    pts: list  # ascending pts (stream time_base units); position = frame index
    keyframes: list  # ascending frame indices of keyframe packets
    complete: bool  # False when packets lack pts or repeat one: no index -> pts map
    time_base: fractions.Fraction
    rate: fractions.Fraction  # average frame rate or None


def _error(path, cause, exc=None):
    message = f"{os.fspath(path)}: {cause}"
    if exc is not None:
        message += f" ({type(exc).__name__}: {exc})"
    return DecodeError(message)


class _NamedBytes(io.BytesIO):
    """A remote video's bytes; PyAV names `name` in its errors, as it names a local path."""

    def __init__(self, data, name):
        super().__init__(data)
        self.name = name


def _remote_source(path):
    """A remote (scheme://) video read through tf.io.gfile -> _NamedBytes, or DecodeError."""
    import tensorflow as tf  # only for remote paths: local decoding needs no TensorFlow

    path = os.fspath(path)
    if not tf.io.gfile.exists(path):
        raise _error(path, "file not found")
    if tf.io.gfile.isdir(path):
        raise _error(path, "is a directory, not a video file")
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            data = f.read()
    except tf.errors.NotFoundError as e:  # deleted since the check; other errors propagate
        raise _error(path, "file not found") from e
    if not data:
        raise _error(path, "empty file (0 bytes)")
    return _NamedBytes(data, path)


def _open(path):
    """Opens `path`; returns (container, first video stream) or raises DecodeError."""
    if "://" in os.fspath(path):
        source = _remote_source(path)
    else:
        if not os.path.exists(path):
            raise _error(path, "file not found")
        if os.path.isdir(path):
            raise _error(path, "is a directory, not a video file")
        if os.path.getsize(path) == 0:
            raise _error(path, "empty file (0 bytes)")
        source = os.fspath(path)
    try:
        container = av.open(source, mode="r", metadata_errors="ignore")
    except _AV_ERRORS as e:
        raise _error(path, "cannot open: not a media file, or corrupt or truncated", e) from e
    if not container.streams.video:
        container.close()
        raise _error(path, "no video stream in the file")
    return container, container.streams.video[0]


def _frame_rate(stream, pts=None):
    """Average frame rate as a Fraction, else one from the pts span, else None."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return fractions.Fraction(rate)
    if pts and len(pts) > 1 and stream.time_base:
        span = (pts[-1] - pts[0]) * stream.time_base
        if span > 0:
            return fractions.Fraction(len(pts) - 1) / span
    return None


def _declared_length(container, stream):
    """(frames, end seconds) the container claims for the video, each or None.

    mp4/mov/avi store an exact frame count; Matroska/WebM a segment duration (which
    may include a longer audio track, hence the tolerance in `_check_complete`).
    MPEG-PS/TS durations are bitrate estimates and are not used.
    """
    if stream.frames:
        return stream.frames, None
    if "matroska" in container.format.name and container.duration:
        return None, container.duration / av.time_base
    return None, None


def _shortfall(declared, count, end):
    """Why `count` frames ending at `end` s fall short of `declared`, or None.

    Tolerates 2% (at least 2) missing frames and 10% (+ 0.05 s) of the duration:
    edit lists and a longer audio track make honest files differ that much.
    """
    frames, seconds = declared
    if frames and frames - count > max(2, 0.02 * frames):
        return f"truncated or corrupt: only {count} of the {frames} frames the container declares are present"
    if seconds and end is not None and seconds - end > 0.1 * seconds + 0.05:
        return f"truncated or corrupt: video ends at {end:.3f} s but the container declares {seconds:.3f} s"
    return None


def _check_complete(path, declared, count, end):
    """Raises DecodeError if `count` frames ending at `end` s fall short of `declared`."""
    cause = _shortfall(declared, count, end)
    if cause:
        raise _error(path, cause)


def _scan(path):
    """Demuxes all video packets (no decoding) into an _Index; checks truncation."""
    container, stream = _open(path)
    try:
        pts, key_pts, complete = [], [], True
        try:
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:  # flush / edit-list cut
                    continue
                if packet.pts is None:
                    complete = False
                    continue
                pts.append(packet.pts)
                if packet.is_keyframe:
                    key_pts.append(packet.pts)
        except _AV_ERRORS as e:
            raise _error(path, "corrupt or truncated container", e) from e
        declared = _declared_length(container, stream)
        time_base, rate = stream.time_base, _frame_rate(stream, sorted(pts))
    finally:
        container.close()
    pts.sort()
    position = {p: i for i, p in enumerate(pts)}
    complete = complete and len(position) == len(pts) and bool(time_base)
    keyframes = sorted(position[p] for p in set(key_pts))
    if complete:
        if not pts:
            raise _error(path, "the video stream has no frames")
        end = float(pts[-1] * time_base) + (1 / float(rate) if rate else 0.0)
        _check_complete(path, declared, len(pts), end)
    return _Index(pts=pts, keyframes=keyframes, complete=complete, time_base=time_base, rate=rate)


class _Tally:
    """What a lenient sequential decode (`_frames(path, tally)`) found."""

    def __init__(self):
        self.count = 0  # frames decoded
        self.declared = (None, None)  # _declared_length
        self.rate = None  # stream frame rate (Fraction) or None
        self.end = None  # seconds: end of the last decoded frame, when known
        self.stop = None  # what stopped the decode early (damaged data), if anything
        self.shortfall = None  # why the decode falls short of the declared length


def _flush(stream):
    """Frames the decoder still buffers (B-frame reordering) after a failed packet."""
    try:
        return list(stream.codec_context.decode(None))
    except _AV_ERRORS:
        return []


def _frames(path, tally=None):
    """Yields (frame, seconds since frame 0) for every frame, decoding sequentially.

    Checks truncation when the stream is exhausted (not when the caller stops early).
    Strict (tally None): a decoder error or a shortfall raises DecodeError. Lenient
    (a _Tally): stops before the first packet the demuxer flags corrupt (a packet cut
    short by the end of the file decodes to a damaged frame) or at the first decoder
    error after frame 0, and records that and any shortfall in `tally` instead; a
    file where no frame decodes still raises.
    """
    container, stream = _open(path)
    try:
        declared = _declared_length(container, stream)
        rate = _frame_rate(stream)
        count, first_pts, time, abs_time = 0, None, 0.0, None

        def timed(frame):
            nonlocal count, first_pts, time, abs_time
            if count == 0:
                first_pts = frame.pts
            if frame.pts is not None and first_pts is not None:
                time = float((frame.pts - first_pts) * frame.time_base)
                abs_time = float(frame.pts * frame.time_base)
            elif rate:  # no timestamps: assume a constant rate
                time, abs_time = count / float(rate), None
            else:
                raise _error(path, "frames have no timestamps and the stream no frame rate")
            count += 1
            return frame, time

        try:
            for packet in container.demux(stream):
                if tally is not None and packet.is_corrupt and packet.size:
                    tally.stop = "a corrupt (cut short) packet"
                    break
                for frame in packet.decode():
                    yield timed(frame)
        except _AV_ERRORS as e:
            if isinstance(e, DecodeError) or tally is None or count == 0:
                if isinstance(e, DecodeError):
                    raise
                raise _error(path, "corrupt or truncated video data", e) from e
            tally.stop = f"{type(e).__name__}: {e}"
        if tally is not None and tally.stop is not None:
            for frame in _flush(stream):  # keep what decoded before the damage
                yield timed(frame)
    finally:
        container.close()
    if count == 0:
        raise _error(path, "no frame could be decoded")
    end = abs_time + 1 / float(rate) if abs_time is not None and rate else None
    if tally is None:
        _check_complete(path, declared, count, end)
        return
    tally.count, tally.declared, tally.rate, tally.end = count, declared, rate, end
    causes = [_shortfall(declared, count, end)]
    if tally.stop is not None:
        causes.append(f"decoding stopped after {count} frames at {tally.stop}")
    tally.shortfall = "; ".join(c for c in causes if c) or None


def probe(path):
    """Returns a `VideoInfo` for `path` (demuxes packets; decodes only if no pts)."""
    index = _scan(path)
    container, stream = _open(path)
    try:
        codec = stream.codec_context.name
        width, height = stream.codec_context.width, stream.codec_context.height
    finally:
        container.close()
    fps = float(index.rate) if index.rate else 0.0
    if index.complete:
        num_frames = len(index.pts)
        start = float(index.pts[0] * index.time_base)
        duration = float((index.pts[-1] - index.pts[0]) * index.time_base)
    else:
        times = [t for _, t in _frames(path)]
        num_frames, start, duration = len(times), 0.0, times[-1]
    duration += 1 / fps if fps else 0.0
    return VideoInfo(
        path=os.fspath(path),
        num_frames=num_frames,
        fps=fps,
        width=width,
        height=height,
        start_time=start,
        duration=duration,
        codec=codec,
    )


def _target_size(frame, short_side):
    """(width, height) of the output: the frame's size, or resized to `short_side`."""
    width, height = frame.width, frame.height
    if short_side is None:
        return width, height
    if width <= height:
        return short_side, max(1, round(height * short_side / width))
    return max(1, round(width * short_side / height)), short_side


def _to_rgb(frame, size):
    """Any pixel format -> RGB uint8 (H, W, 3) at `size` = (width, height)."""
    width, height = size
    if (frame.width, frame.height) != size or frame.format.name != "rgb24":
        frame = frame.reformat(width=width, height=height, format="rgb24", interpolation="BILINEAR")
    return frame.to_ndarray()


def check_short_side(short_side):
    """`short_side` as an int (or None); raises ValueError naming it unless a positive int or None."""
    if short_side is None:
        return None
    if isinstance(short_side, bool) or not isinstance(short_side, (int, np.integer)) or short_side < 1:
        raise ValueError(f"short_side must be a positive int or None. Received: short_side={short_side!r}")
    return int(short_side)


def check_fps(fps):
    """`fps` as a float (or None); raises ValueError naming it unless a positive finite number or None."""
    if fps is None:
        return None
    if (
        isinstance(fps, bool)
        or not isinstance(fps, (int, float, np.number))
        or not math.isfinite(fps)
        or fps <= 0
    ):
        raise ValueError(f"fps must be a positive number or None. Received: fps={fps!r}")
    return float(fps)


def decode_all(path, short_side=None, fps=None):
    """Decodes a whole video to RGB frames.

    Args:
      path: video file readable by FFmpeg.
      short_side: if given, resize every frame so its short side has this many
        pixels (aspect ratio kept; size taken from frame 0).
      fps: None keeps every frame. A positive number resamples by timestamp: output
        frame k is the frame on screen at time k / fps (the last frame with time
        <= k / fps, relative to frame 0), for every k / fps before the end of the
        video (last frame's time plus one source frame duration).

    Returns:
      uint8 array (n, H, W, 3). Raises DecodeError if the file cannot be read or
      is truncated (see `decode_available` to keep what decodes).
    """
    return _decode(path, short_side, fps, None)


@dataclasses.dataclass(frozen=True)
class Decoded:
    """What `decode_available` got from a video.

    Attributes:
      frames: uint8 (n, H, W, 3), as `decode_all` returns for a complete file.
      fps: frame rate of the source stream (0.0 when the file gives none).
      decoded_frames: source frames that decoded (before any fps resampling).
      declared_frames: frame count the container declares (mp4/mov/avi), or None.
      declared_seconds: duration the container declares (Matroska/WebM), or None.
      shortfall: None for a complete video, else why it is short of the declared
        length ("truncated or corrupt: only 18 of the 40 frames ...") and/or where
        decoding stopped on damaged data.
    """

    frames: np.ndarray
    fps: float
    decoded_frames: int
    declared_frames: object
    declared_seconds: object
    shortfall: object


def decode_available(path, short_side=None, fps=None):
    """Decodes every frame of a video that decodes cleanly; never fails on a short file.

    Like `decode_all` (same arguments and frames), but a file that ends early or
    whose header declares more frames than it holds gives the frames that are there
    (up to the end of the data, a packet cut short, or the first decoder error:
    never a damaged frame it can detect) and says so in
    `Decoded.shortfall`. Raises DecodeError only when no frame decodes (or the file
    is missing, not a video, ...).
    """
    tally = _Tally()
    frames = _decode(path, short_side, fps, tally)
    rate = float(tally.rate) if tally.rate else 0.0
    frames_declared, seconds_declared = tally.declared
    return Decoded(
        frames=frames,
        fps=rate,
        decoded_frames=tally.count,
        declared_frames=frames_declared or None,
        declared_seconds=seconds_declared,
        shortfall=tally.shortfall,
    )


def _decode(path, short_side, fps, tally):
    """decode_all (tally None) / decode_available (a _Tally filled in)."""
    short_side, fps = check_short_side(short_side), check_fps(fps)
    out, size = [], None
    if fps is None:
        for frame, _ in _frames(path, tally):
            size = size or _target_size(frame, short_side)
            out.append(_to_rgb(frame, size))
        return np.stack(out)
    # Stream the decode and convert only the frames picked at times k / fps.
    step, previous, previous_time, rate = 0, None, 0.0, None
    for frame, time in _frames(path, tally):
        size = size or _target_size(frame, short_side)
        # `previous` is on screen during [previous_time, time).
        while previous is not None and step / fps < time - _EPS:
            out.append(_to_rgb(previous, size))
            step += 1
        previous, previous_time = frame, time
    rate = _rate_of(path)
    last = None
    while step / fps < previous_time + 1 / rate - _EPS:
        last = last if last is not None else _to_rgb(previous, size)
        out.append(last)
        step += 1
    return np.stack(out)


def _rate_of(path):
    container, stream = _open(path)
    try:
        rate = _frame_rate(stream)
    finally:
        container.close()
    if not rate:
        raise _error(path, "frame rate unknown")
    return float(rate)


def read_frames(path, indices=None, times=None, short_side=None):
    """Reads selected frames of a video as RGB uint8.

    Args:
      path: video file readable by FFmpeg.
      indices: frame indices (any order, repeats allowed); 0 = first decoded frame.
      times: instead of `indices`, seconds relative to frame 0; each picks the frame
        on screen at that time (the last frame with time <= t).
      short_side: if given, resize so the short side has this many pixels.
      With neither `indices` nor `times`, returns every frame (as `decode_all`).

    Returns:
      uint8 array (len(indices or times), H, W, 3), in the order asked for.
      An index >= the number of frames or a time at/after the end raises
      DecodeError (no clamping: pick indices from `probe(path).num_frames`).
    """
    frames, _ = _read(path, indices, times, short_side)
    return frames


def _read(path, indices, times, short_side):
    """`read_frames` plus the number of frames decoded (tests check the seek path)."""
    short_side = check_short_side(short_side)
    if indices is not None and times is not None:
        raise ValueError(f"Pass indices or times, not both. Received: indices={indices!r}, times={times!r}")
    if indices is None and times is None:
        frames = decode_all(path, short_side=short_side)
        return frames, len(frames)
    if times is not None:
        wanted = [float(t) for t in np.asarray(times, np.float64).reshape(-1)]
        if any(not math.isfinite(t) or t < 0 for t in wanted):
            raise ValueError(f"times must be finite and >= 0. Received: times={times!r}")
    else:
        array = np.asarray(indices)
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"indices must be integers. Received: indices={indices!r}")
        wanted = [int(i) for i in array.reshape(-1)]
        if any(i < 0 for i in wanted):
            raise ValueError(f"indices must be >= 0. Received: indices={indices!r}")
    index = _scan(path)
    if index.complete:
        positions = wanted
        if times is not None:
            seconds = [float((p - index.pts[0]) * index.time_base) for p in index.pts]
            positions = _times_to_indices(path, seconds, index.rate, wanted)
        for i in positions:
            if i >= len(index.pts):
                raise _past_end(path, "frame index", i, len(index.pts))
        try:
            return _read_seeking(path, index, positions, short_side)
        except _Fallback:
            pass
    return _read_sequential(path, wanted, times is not None, short_side)


class _Fallback(Exception):
    """The seek path could not verify a frame; decode sequentially instead."""


def _past_end(path, what, value, num_frames):
    return _error(path, f"{what} {value} is past the end of the video ({num_frames} frames)")


def _times_to_indices(path, seconds, rate, times):
    """Maps times (s since frame 0) to the index of the frame on screen then."""
    end = seconds[-1] + (1 / float(rate) if rate else _EPS)
    out = []
    for t in times:
        if t > end - _EPS:
            raise _past_end(path, "time", t, len(seconds))
        out.append(max(0, bisect.bisect_right(seconds, t + _EPS) - 1))
    return out


def _decoded(container, stream):
    """Yields frames decoded from the container's current position."""
    for packet in container.demux(stream):
        yield from packet.decode()


def _read_seeking(path, index, wanted, short_side):
    """Seeks to the keyframe before each needed run and decodes forward.

    Each decoded frame's pts must map to the next expected index; else _Fallback.
    """
    position = {p: i for i, p in enumerate(index.pts)}
    target_set = set(wanted)
    targets = sorted(target_set)
    got, decoded = {}, 0
    container, stream = _open(path)
    try:
        frames = _decoded(container, stream)
        first = next(frames, None)
        decoded += 1
        # Frame 0 must carry the smallest pts, else the decoder drops or reorders.
        if first is None or first.pts != index.pts[0]:
            raise _Fallback()
        size = _target_size(first, short_side)
        if targets and targets[0] == 0:
            got[0] = _to_rgb(first, size)
        current = 0  # index of the last frame decoded since the last seek/start
        for target in targets:
            if target in got:
                continue
            k = bisect.bisect_right(index.keyframes, target) - 1
            key = index.keyframes[k] if k >= 0 else 0
            if current is None or key > current + 1:
                # A keyframe lies between here and the target: seek, don't decode.
                container.seek(index.pts[key], stream=stream, backward=True)
                frames, current = _decoded(container, stream), None
            for frame in frames:
                decoded += 1
                i = position.get(frame.pts)
                if i is None:
                    raise _Fallback()
                if current is None:
                    if i > target:  # the seek landed after the target
                        raise _Fallback()
                    if i < key:  # frames before the keyframe may lack references
                        continue
                elif i != current + 1:
                    raise _Fallback()
                current = i
                if i in target_set and i not in got:
                    got[i] = _to_rgb(frame, size)
                if i == target:
                    break
            else:  # the packets promised this frame but the decoder never gave it
                raise _Fallback()
    except (DecodeError, _Fallback):
        raise
    except _AV_ERRORS as e:
        raise _error(path, "corrupt or truncated video data", e) from e
    finally:
        container.close()
    return _stack(got, wanted, size), decoded


def _read_sequential(path, wanted, by_time, short_side):
    """Decodes from the start counting frames; always correct, maybe slower."""
    got, size, decoded, seconds, kept = {}, None, 0, [], []
    wanted_set = set(wanted)
    last = -1 if by_time else max(wanted, default=0)
    for i, (frame, time) in enumerate(_frames(path)):
        decoded += 1
        size = size or _target_size(frame, short_side)
        if by_time:  # which frames are wanted is known only once times are
            seconds.append(time)
            kept.append(frame)
            continue
        if i in wanted_set:
            got[i] = _to_rgb(frame, size)
        if i >= last:
            break
    if by_time:
        wanted = _times_to_indices(path, seconds, _rate_of(path), wanted)
        got = {i: _to_rgb(kept[i], size) for i in set(wanted)}
    for i in wanted:
        if i not in got:
            raise _past_end(path, "frame index", i, decoded)
    return _stack(got, wanted, size), decoded


def _stack(got, wanted, size):
    """Frames in the order asked for; (0, H, W, 3) when none were asked."""
    if not wanted:
        width, height = size
        return np.zeros((0, height, width, 3), np.uint8)
    return np.stack([got[i] for i in wanted])
