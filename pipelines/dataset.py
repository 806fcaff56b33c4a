"""tf.data input pipeline: TFRecord SequenceExamples or raw videos -> clip batches.

`make_dataset` runs, in this order and as pure TF functions: list files -> shuffle
shards (train) -> interleave -> parse SequenceExample -> sample frame indices on the
encoded frames -> decode only the sampled JPEGs (only the crop window of each) ->
crop/flip -> [RandAugment] -> normalise -> [random erasing] -> batch -> [MixUp/CutMix]
-> prefetch. In train mode a shuffle buffer sits between sampling and decoding, where an
element is only its sampled JPEG strings. The bracketed training augmentations
(pipelines.augment) are off unless asked for.

Files: a glob matches shards only; hidden files, folders and the converter's own
`report.json` / `classes.txt` are skipped (so `DIR/*` works on a converted folder).
Each shard's compression (none, GZIP, ZLIB) is detected from its first bytes.
Frames may be JPEG (decoded with the crop-window fast path) or any format
tf.io.decode_image reads (PNG, BMP, GIF). Labels: `clip/label/index`, one per clip
(int32, -1 when absent) or, with multilabel=True, any number as a multi-hot vector.

`make_dataset` is the one entry (every argument, documented); it dispatches to `tfrecord_dataset` or
`video_dataset`, the two sources over one clip pipeline whose options are a `ClipOptions`.

The raw-video source (`annotations=...`) reads (path, label) rows with the Kinetics or
Moments reader, probes each video's frame count with PyAV, samples the same indices
and decodes only those frames (`pipelines.decode.read_frames`), then shares the
crop/flip/normalise code with the TFRecord source.
"""

import concurrent.futures
import dataclasses
import os
import random
import threading

import numpy as np
import tensorflow as tf
from absl import logging

from pipelines import augment, decode, preprocess, readers, tfrecord

MODES = ("train", "eval", "test")
COMPRESSIONS = {"auto": None, "none": "", "gzip": "GZIP", "zlib": "ZLIB"}
# Files pipelines/convert (and pipelines/synthetic) write next to their shards.
CONVERTER_FILES = ("report.json", "classes.txt", "_COMPLETE.json")
_AUTOTUNE = tf.data.AUTOTUNE


def sample_indices(num_available, num_frames, stride, mode, num_clips=1, start=None, seed=None):
    """Frame indices of the clip(s) to read from a video of `num_available` frames.

    A clip is `num_frames` frames, one every `stride`, spanning
    span = (num_frames - 1) * stride + 1 frames from `start`; indices past the end wrap
    around (index mod num_available), so videos shorter than the span repeat.

    - train: `start` uniform in [0, num_available - span] (in [0, num_available) when
      the video is shorter than the span); stateless when `seed` (shape [2]) is given.
    - eval: the centre clip, start = max(num_available - span, 0) // 2.
    - test: `num_clips` clips with starts (i * max(num_available - span, 0)) //
      (num_clips - 1), i = 0..num_clips - 1 (first flush with the start, last with the
      end; identical clips when the video is shorter than the span); num_clips == 1 is
      the centre clip.
    An explicit `start` (train/eval) overrides the rule above.

    Returns:
      int32 (num_frames,) for train/eval, (num_clips, num_frames) for test.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}. Received: mode={mode!r}")
    for name, value in (("num_frames", num_frames), ("stride", stride), ("num_clips", num_clips)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
    n = tf.convert_to_tensor(num_available, tf.int32)
    span = (num_frames - 1) * stride + 1
    offsets = tf.range(num_frames, dtype=tf.int32) * stride
    slack = tf.maximum(n - span, 0)
    if mode == "test":
        if num_clips == 1:
            starts = tf.reshape(slack // 2, [1])
        else:
            starts = (tf.range(num_clips, dtype=tf.int32) * slack) // (num_clips - 1)
        return tf.math.floormod(starts[:, None] + offsets[None, :], n)
    if start is None:
        if mode == "eval":
            start = slack // 2
        else:
            maxval = tf.where(n >= span, slack + 1, n)
            if seed is None:
                start = tf.random.uniform([], 0, maxval, dtype=tf.int32)
            else:
                start = tf.random.stateless_uniform([], seed, 0, maxval, dtype=tf.int32)
    return tf.math.floormod(tf.cast(start, tf.int32) + offsets, n)


def _skipped_name(path):
    """Hidden files and the converter's report.json / classes.txt (by name)."""
    name = os.path.basename(path)
    return name.startswith(".") or name in CONVERTER_FILES


def _list_shards(file_pattern, compression="auto"):
    """(sorted shard paths, TFRecordDataset compression_type of each).

    Skips hidden files, the converter's files and folders. compression "auto"
    detects each file's type from its first bytes (tfrecord.detect_compression).
    """
    key = "none" if compression is None else str(compression).lower()
    if key not in COMPRESSIONS:
        raise ValueError(
            f"compression must be one of {tuple(COMPRESSIONS)}. Received: compression={compression!r}"
        )
    patterns = [file_pattern] if isinstance(file_pattern, (str, bytes, os.PathLike)) else list(file_pattern)
    matched = sorted({f for p in patterns for f in tf.io.gfile.glob(os.fspath(p))})
    if not matched:
        raise ValueError(f"No files match file_pattern={file_pattern!r}")

    def inspect(path):  # None: not a shard
        if _skipped_name(path) or tf.io.gfile.isdir(path):
            return None
        fixed = COMPRESSIONS[key]
        return tfrecord.detect_compression(path) if fixed is None else fixed

    # One stat (and 12 bytes) per file; threads hide remote file systems' latency.
    with concurrent.futures.ThreadPoolExecutor(min(16, len(matched))) as pool:
        kinds = list(pool.map(inspect, matched))
    shards = [(path, kind) for path, kind in zip(matched, kinds, strict=True) if kind is not None]
    if not shards:
        raise ValueError(
            f"No TFRecord shard in file_pattern={file_pattern!r}: it matches only "
            "hidden files, folders or the converter's report.json/classes.txt, which "
            f"are skipped: {matched[:5]}{' ...' if len(matched) > 5 else ''}"
        )
    if len(shards) < len(matched):
        logging.info(
            "file_pattern=%r: skipped %d hidden files, folders or converter files",
            file_pattern,
            len(matched) - len(shards),
        )
    return [path for path, _ in shards], [kind for _, kind in shards]


def _element_seed(seed, index, salt):
    """Stateless seed for one random draw of element `index`."""
    return tf.stack([tf.constant(seed, tf.int64), index * 8 + salt])


@dataclasses.dataclass(frozen=True)
class ClipOptions:
    """What both sources share: which clips a video gives, how they are cropped, flipped, augmented,
    labelled and batched. Each field is the `make_dataset` argument of the same name (documented there).

    `mode` and `batch_size` are checked here; the rest when a source builds its pipeline (a ValueError
    naming the argument).
    """

    mode: str = "train"
    batch_size: int = 8
    num_frames: int = 8
    frame_stride: int = 8
    crop_size: int = 224
    num_clips: int = 10
    num_crops: int = 3
    seed: int | None = None
    min_resize: int | None = None
    max_resize: int | None = None
    eval_resize: int | None = None
    flip: bool = True
    deterministic: bool | None = None
    drop_remainder: bool | None = None
    repeat: bool | None = None
    multilabel: bool = False
    num_classes: int | None = None
    randaugment: object = None
    random_erasing: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}. Received: mode={self.mode!r}")
        if not isinstance(self.batch_size, (int, np.integer)) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive int. Received: batch_size={self.batch_size!r}")

    @property
    def train(self):
        return self.mode == "train"

    @property
    def repeats(self):
        """Whether the source repeats forever (default: in train mode)."""
        return self.train if self.repeat is None else bool(self.repeat)


class _Stages:
    """The per-element and per-batch stages of `ClipOptions`, validated: sampling and views (_Config),
    labels (_Labels) and the train-mode batch mixer (None when off)."""

    def __init__(self, options):
        self.options = options
        self.clip = _Config(
            options.mode,
            options.num_frames,
            options.frame_stride,
            options.crop_size,
            options.num_clips,
            options.num_crops,
            options.seed,
            options.min_resize,
            options.max_resize,
            options.eval_resize,
            options.flip,
            randaugment=options.randaugment,
            random_erasing=options.random_erasing,
        )
        self.labels = _Labels(options.multilabel, options.num_classes)
        mixer = augment.BatchMixer(options.mixup_alpha, options.cutmix_alpha) if options.train else None
        num_classes = options.num_classes
        if mixer and (
            isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1
        ):
            raise ValueError(
                f"mixup_alpha/cutmix_alpha need num_classes, a positive int. Received: num_classes={num_classes!r}"
            )
        self.mixer = mixer or None

    def batches(self, ds):
        """(views, label) elements -> batch -> [MixUp/CutMix] -> prefetch, with the order determinism."""
        options = self.options
        drop_remainder = options.train if options.drop_remainder is None else bool(options.drop_remainder)
        ds = ds.batch(options.batch_size, drop_remainder=drop_remainder)
        if self.mixer is not None:
            mixer, seed, num_classes = self.mixer, self.clip.seed, options.num_classes
            ds = ds.enumerate().map(
                lambda index, batch: _mix(mixer, seed, index, *batch, num_classes),
                num_parallel_calls=_AUTOTUNE,
            )
        ds = ds.prefetch(_AUTOTUNE)
        tf_options = tf.data.Options()
        deterministic = options.deterministic
        if deterministic is None:  # evaluation order is reproducible; training only if seeded
            deterministic = options.seed is not None or not options.train
        tf_options.deterministic = bool(deterministic)
        return ds.with_options(tf_options)


class _Config:
    """Validated arguments shared by the map functions."""

    def __init__(
        self,
        mode,
        num_frames,
        frame_stride,
        crop_size,
        num_clips,
        num_crops,
        seed,
        min_resize,
        max_resize,
        eval_resize,
        flip,
        randaugment=None,
        random_erasing=0.0,
    ):
        for name, value in (
            ("num_frames", num_frames),
            ("frame_stride", frame_stride),
            ("crop_size", crop_size),
            ("num_clips", num_clips),
            ("num_crops", num_crops),
        ):
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ValueError(f"{name} must be a positive int. Received: {name}={value!r}")
        self.mode = mode
        self.num_frames = int(num_frames)
        self.stride = int(frame_stride)
        self.crop = int(crop_size)
        self.num_clips = int(num_clips) if mode == "test" else 1
        self.num_crops = int(num_crops) if mode == "test" else 1
        self.seed = int(seed) if seed is not None else random.SystemRandom().randrange(2**31)
        low, high = preprocess.train_short_side_range(crop_size)
        self.min_resize = int(min_resize) if min_resize is not None else low
        self.max_resize = int(max_resize) if max_resize is not None else high
        self.eval_resize = (
            int(eval_resize) if eval_resize is not None else preprocess.eval_short_side(crop_size)
        )
        self.flip = bool(flip)
        train = mode == "train"
        randaugment = augment.parse_randaugment(randaugment)
        self.rand_augment = augment.rand_augment_layer(*randaugment) if randaugment and train else None
        self.random_erasing = (
            augment.random_erasing_layer(random_erasing) if random_erasing and train else None
        )
        if not crop_size <= self.min_resize <= self.max_resize:
            raise ValueError(
                "Need crop_size <= min_resize <= max_resize. Received: "
                f"crop_size={crop_size}, min_resize={self.min_resize}, "
                f"max_resize={self.max_resize}"
            )
        if self.eval_resize < crop_size:
            raise ValueError(
                "eval_resize must be >= crop_size. Received: "
                f"eval_resize={self.eval_resize}, crop_size={crop_size}"
            )

    def sample(self, num_available, index):
        """Indices to read: (T,) train/eval; test: unique indices + inverse (C*T,)."""
        tf.debugging.assert_positive(num_available, message="video has no frames")
        indices = sample_indices(
            num_available,
            self.num_frames,
            self.stride,
            self.mode,
            num_clips=self.num_clips,
            seed=_element_seed(self.seed, index, 0),
        )
        if self.mode != "test":
            return indices, tf.zeros([0], tf.int32)
        # Test clips overlap: read each frame once.
        unique, inverse = tf.unique(tf.reshape(indices, [-1]))
        return unique, inverse

    def spatial(self, read_window, read_all, height, width, inverse, index):
        """Crop/flip/normalise. Train/eval read only the crop window of each frame.

        read_window(y0, x0, h, w) -> (T, h, w, 3) source pixels; read_all() -> all
        sampled frames (U, H, W, 3); height/width: source frame size.
        """
        if self.mode == "test":
            return self._test_views(read_all(), inverse)
        if self.mode == "train":
            short = tf.random.stateless_uniform(
                [], _element_seed(self.seed, index, 1), self.min_resize, self.max_resize + 1, dtype=tf.int32
            )
        else:
            short = tf.constant(self.eval_resize, tf.int32)
        new_h, new_w = preprocess.resized_shape(height, width, short)
        if self.mode == "train":
            offset_y, offset_x = preprocess.random_offsets(
                new_h, new_w, self.crop, _element_seed(self.seed, index, 2)
            )
        else:
            offset_y, offset_x = (new_h - self.crop) // 2, (new_w - self.crop) // 2
        y0, x0, h, w = preprocess.source_window(height, width, new_h, new_w, self.crop, offset_y, offset_x)
        window = read_window(y0, x0, h, w)
        if self.mode == "train" and self.flip:
            # Flip the small uint8 window instead of the float crop (~4x cheaper): the
            # flipped crop is the crop at the mirrored offset of the mirrored frame.
            coin = tf.random.stateless_uniform([], _element_seed(self.seed, index, 3))
            flipped = coin < 0.5
            window = tf.cond(flipped, lambda: preprocess.flip_left_right(window), lambda: window)
            offset_x = tf.where(flipped, new_w - offset_x - self.crop, offset_x)
            x0 = tf.where(flipped, width - x0 - w, x0)
        clip = preprocess.resized_crop(
            window, height, width, new_h, new_w, self.crop, offset_y, offset_x, y0, x0
        )
        clip.set_shape([self.num_frames, self.crop, self.crop, 3])
        if self.rand_augment is not None:  # on the crop's pixel values, rounded to uint8
            clip = augment.rand_augment(clip, self.rand_augment, _element_seed(self.seed, index, 4))
        clip = preprocess.normalize(clip)
        if self.random_erasing is not None:  # after normalising: the box is filled with the mean colour
            clip = augment.random_erase(clip, self.random_erasing, _element_seed(self.seed, index, 5))
        clip.set_shape([self.num_frames, self.crop, self.crop, 3])
        return clip

    def _test_views(self, frames, inverse):
        """(U, H, W, 3) -> (C * K, T, crop, crop, 3), clip-major.

        Equals multi_crop(resize_short_side(frames, eval_resize)) but only computes the
        crops (no float copy of the whole resized frames).
        """
        shape = tf.shape(frames)
        new_h, new_w = preprocess.resized_shape(shape[1], shape[2], self.eval_resize)
        offsets_y, offsets_x = preprocess.multi_crop_offsets(new_h, new_w, self.crop, self.num_crops)
        crops = tf.stack(
            [
                preprocess.resized_crop(
                    frames, shape[1], shape[2], new_h, new_w, self.crop, offsets_y[k], offsets_x[k]
                )
                for k in range(self.num_crops)
            ]
        )  # (K, U, crop, crop, 3)
        views = tf.gather(crops, inverse, axis=1)  # (K, C * T, crop, crop, 3)
        views = tf.reshape(views, [self.num_crops, self.num_clips, self.num_frames, self.crop, self.crop, 3])
        views = tf.transpose(views, [1, 0, 2, 3, 4, 5])
        views = tf.reshape(views, [self.num_clips * self.num_crops, self.num_frames, self.crop, self.crop, 3])
        return preprocess.normalize(views)


class _Labels:
    """How `clip/label/index` becomes the label of a clip."""

    def __init__(self, multilabel, num_classes):
        self.multilabel = bool(multilabel)
        if self.multilabel and (
            isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1
        ):
            raise ValueError(
                f"multilabel=True needs num_classes, a positive int. Received: num_classes={num_classes!r}"
            )
        self.num_classes = int(num_classes) if self.multilabel else None

    def from_indices(self, indices):
        """int64 (n,) label indices of one record -> int32 () or multi-hot float32 (K,).

        Single label: the index, -1 when the record has none; several raise. Multi-label:
        1.0 at each index, all zeros when the record has none (or only -1, the
        converter's "unlabelled").
        """
        indices = tf.cast(indices, tf.int32)
        if not self.multilabel:
            check = tf.debugging.assert_less_equal(
                tf.size(indices),
                1,
                message="a record holds several labels in "
                f"{tfrecord.LABEL_INDEX}; read it with multilabel=True, num_classes=K",
            )
            with tf.control_dependencies([check]):
                return tf.concat([indices, [-1]], 0)[0]
        k = self.num_classes
        checks = [
            tf.debugging.assert_less(
                indices, k, message=f"a label index in {tfrecord.LABEL_INDEX} is >= num_classes={k}"
            ),
            tf.debugging.assert_greater_equal(
                indices, -1, message=f"a label index in {tfrecord.LABEL_INDEX} is < -1"
            ),
        ]
        with tf.control_dependencies(checks):
            # one_hot(-1) is all zeros: unlabelled entries add nothing.
            return tf.minimum(tf.reduce_sum(tf.one_hot(indices, k), axis=0), 1.0)


def parse_record(serialized, multilabel=False, num_classes=None):
    """The TFRecord source's parse stage: one serialized SequenceExample -> (encoded frames string (N,),
    label: int32 () (-1 when the record has none), or multi-hot float32 (num_classes,) with multilabel)."""
    return _parse(serialized, _Labels(multilabel, num_classes))


def _parse(serialized, labels=None):
    """One SequenceExample -> (encoded frames (N,), label as `labels` says)."""
    labels = labels or _Labels(False, None)
    context, sequence = tf.io.parse_single_sequence_example(
        serialized,
        context_features={tfrecord.LABEL_INDEX: tf.io.VarLenFeature(tf.int64)},
        sequence_features={tfrecord.IMAGE_ENCODED: tf.io.FixedLenSequenceFeature([], tf.string)},
    )
    indices = context[tfrecord.LABEL_INDEX].values
    return sequence[tfrecord.IMAGE_ENCODED], labels.from_indices(indices)


def _tfrecord_elements(files, compressions, stages, input_context, shuffle_buffer):
    """Dataset of (views float32, label) read from TFRecord shards."""
    cfg, labels = stages.clip, stages.labels
    train, repeat = stages.options.train, stages.options.repeats
    ds = tf.data.Dataset.from_tensor_slices((files, compressions))
    if input_context is not None:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if train:
        ds = ds.shuffle(len(files), seed=cfg.seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.interleave(
        lambda path, compression: tf.data.TFRecordDataset(path, compression_type=compression),
        cycle_length=min(len(files), 16),
        block_length=1,
        num_parallel_calls=_AUTOTUNE,
    )
    ds = ds.enumerate()

    def parse_and_sample(index, serialized):
        encoded, label = _parse(serialized, labels)
        indices, inverse = cfg.sample(tf.shape(encoded)[0], index)
        return tf.gather(encoded, indices), inverse, label, index

    ds = ds.map(parse_and_sample, num_parallel_calls=_AUTOTUNE)
    if train and shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=cfg.seed, reshuffle_each_iteration=True)

    def decode(encoded, inverse, label, index):
        return _decode_jpegs(cfg, encoded, inverse, index), label

    return ds.map(decode, num_parallel_calls=_AUTOTUNE)


def decode_clip(encoded, options, index=0, inverse=None):
    """The TFRecord source's decode-and-view stage for one element, as `tfrecord_dataset` runs it.

    Args:
      encoded: string (U,): the sampled encoded frames (JPEG: only each crop window is decoded).
      options: ClipOptions (mode, crop, resize, flip, augmentations; their seed with `index` fixes the
        random draws).
      index: int64 scalar, the element's position in the source (seeds its random crop and flip).
      inverse: test mode: int32 (num_clips * num_frames,), each view frame's position in `encoded`
        (default: `encoded` holds them in order).

    Returns:
      float32 views, normalised: (num_frames, crop, crop, 3) in train/eval mode,
      (num_clips * num_crops, num_frames, crop, crop, 3) in test mode.
    """
    cfg = _Stages(options).clip
    if inverse is None:
        inverse = tf.range(cfg.num_clips * cfg.num_frames) if cfg.mode == "test" else tf.zeros([0], tf.int32)
    return _decode_jpegs(cfg, encoded, inverse, tf.cast(index, tf.int64))


def _decode_jpegs(cfg, encoded, inverse, index):
    """Sampled encoded frames (JPEG or other formats) -> views (see _Config.spatial)."""
    shape = frame_shape(encoded[0])
    all_jpeg = tf.reduce_all(tf.strings.substr(encoded, 0, 3) == _JPEG_MAGIC)

    def read_window(y0, x0, h, w):
        window = tf.stack([y0, x0, h, w])
        return decode_frames(encoded, all_jpeg, window, cfg.num_frames)

    def read_all():
        return decode_frames(encoded, all_jpeg)

    return cfg.spatial(read_window, read_all, shape[0], shape[1], inverse, index)


# --- Frame formats: JPEG fast path, anything tf.io.decode_image reads otherwise. ---

_JPEG_MAGIC = b"\xff\xd8\xff"


def _decode_image(encoded):
    return tf.io.decode_image(encoded, channels=3, expand_animations=False)


def frame_shape(encoded):
    """(height, width, channels) int32 of one encoded frame (JPEG: from its header)."""
    return tf.cond(
        tf.io.is_jpeg(encoded),
        lambda: tf.image.extract_jpeg_shape(encoded),
        lambda: tf.shape(_decode_image(encoded), out_type=tf.int32),
    )


def decode_frame(encoded, window=None):
    """One encoded frame (JPEG, PNG, BMP, GIF) -> uint8 (h, w, 3).

    window: int32 [y0, x0, h, w] to return only that window; a JPEG then decodes only
    the window (decode_and_crop_jpeg), other formats decode whole and are sliced.
    """

    def jpeg():
        if window is None:
            return tf.io.decode_jpeg(encoded, channels=3)
        return tf.image.decode_and_crop_jpeg(encoded, window, channels=3)

    def other():
        image = _decode_image(encoded)
        if window is None:
            return image
        return image[window[0] : window[0] + window[2], window[1] : window[1] + window[3]]

    return tf.cond(tf.io.is_jpeg(encoded), jpeg, other)


def decode_frames(encoded, all_jpeg, window=None, count=None):
    """Frames (U,) encoded -> uint8 (U, h, w, 3); `count` = U when static.

    all_jpeg: bool scalar, every frame is a JPEG: the fast path with no per-frame
    format check; else each frame goes through `decode_frame`.
    """

    def jpegs():
        if window is None:
            return tf.map_fn(
                lambda s: tf.io.decode_jpeg(s, channels=3), encoded, fn_output_signature=tf.uint8
            )
        return tf.stack([tf.image.decode_and_crop_jpeg(encoded[t], window, channels=3) for t in range(count)])

    def any_format():
        if window is None:
            return tf.map_fn(decode_frame, encoded, fn_output_signature=tf.uint8)
        return tf.stack([decode_frame(encoded[t], window) for t in range(count)])

    return tf.cond(all_jpeg, jpegs, any_format)


def _read_annotations(annotations, video_dir, dataset, classes, train_annotations, skip_bad_rows):
    """(paths, labels) of the videos found, read with the Kinetics/Moments reader."""
    records, report = readers.read_annotations(
        dataset,
        annotations,
        video_dir,
        classes=classes,
        train_annotations=train_annotations,
        skip_bad_rows=skip_bad_rows,
    )
    if report.missing:
        logging.warning(
            "%d of the videos listed in %s are not under %s (skipped), e.g. %s",
            len(report.missing),
            annotations,
            video_dir,
            report.missing[:3],
        )
    if report.bad_rows:
        logging.warning(
            "%d bad rows of %s skipped, e.g. %s", len(report.bad_rows), annotations, report.bad_rows[:3]
        )
    if not records:
        raise ValueError(f"No video of annotations={annotations!r} was found under video_dir={video_dir!r}")
    return [r.video_path for r in records], [r.label_index for r in records]


_skips_lock = threading.Lock()
_skips = []  # (path, reason) of raw videos skipped because they failed to decode
_bad_paths = set()  # their paths: a later epoch skips them without trying again


def raw_video_skips():
    """(path, reason) of every video the raw source skipped so far in this process, in order; a video that
    failed is not tried again by later epochs (a frame read failing after a good probe can repeat it)."""
    with _skips_lock:
        return list(_skips)


def unreadable_videos(since=0):
    """[{"path", "reason"}] of the videos the raw source skipped after its first `since` skips (see
    raw_video_skips), each once (the first reason), sorted by path."""
    first = {}
    for path, reason in raw_video_skips()[since:]:
        first.setdefault(path, reason)
    return [{"path": path, "reason": reason} for path, reason in sorted(first.items())]


def _skip(path, error):
    with _skips_lock:
        _skips.append((path, str(error)))
        _bad_paths.add(path)
        count = len(_bad_paths)
    logging.warning("Skipping unreadable video (%d distinct so far): %s", count, error)


def _probe_num_frames(path):
    """Frame count, or 0 (counted skip) for a video that cannot be read."""
    path = path.decode()
    with _skips_lock:
        if path in _bad_paths:  # failed before (an earlier epoch): not opened, logged or counted again
            return np.int32(0)
    try:
        return np.int32(decode.probe(path).num_frames)
    except decode.DecodeError as e:
        _skip(path, e)
        return np.int32(0)


def _read_frames(path, indices):
    """Frames at `indices`, or an empty array (counted skip) if decoding fails."""
    path = path.decode()
    try:
        return decode.read_frames(path, indices=indices)
    except decode.DecodeError as e:
        _skip(path, e)
        return np.zeros((0, 1, 1, 3), np.uint8)


def _raw_elements(paths, labels, cfg, train, repeat, input_context):
    """Dataset of (views, label) decoded from video files with PyAV.

    Videos PyAV cannot read are dropped, logged and listed by raw_video_skips().
    """
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths, tf.string), tf.constant(labels, tf.int32)))
    if input_context is not None:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    if train:
        ds = ds.shuffle(len(paths), seed=cfg.seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    ds = ds.enumerate()

    def probe(index, element):
        path, label = element
        num = tf.numpy_function(_probe_num_frames, [path], tf.int32, stateful=False)
        num.set_shape([])
        return index, path, label, num

    def read(index, path, label, num):
        indices, inverse = cfg.sample(num, index)
        frames = tf.numpy_function(_read_frames, [path, indices], tf.uint8, stateful=False)
        frames.set_shape([None, None, None, 3])
        return index, label, frames, inverse

    def crop(index, label, frames, inverse):
        shape = tf.shape(frames)
        views = cfg.spatial(
            lambda y0, x0, h, w: frames[:, y0 : y0 + h, x0 : x0 + w, :],
            lambda: frames,
            shape[1],
            shape[2],
            inverse,
            index,
        )
        return views, label

    ds = ds.map(probe, num_parallel_calls=_AUTOTUNE)
    ds = ds.filter(lambda index, path, label, num: num > 0)
    ds = ds.map(read, num_parallel_calls=_AUTOTUNE)
    ds = ds.filter(lambda index, label, frames, inverse: tf.shape(frames)[0] > 0)
    return ds.map(crop, num_parallel_calls=_AUTOTUNE)


def make_dataset(
    file_pattern=None,
    mode="train",
    batch_size=8,
    num_frames=8,
    frame_stride=8,
    crop_size=224,
    num_clips=10,
    num_crops=3,
    seed=None,
    min_resize=None,
    max_resize=None,
    eval_resize=None,
    flip=True,
    deterministic=None,
    annotations=None,
    video_dir=None,
    dataset=None,
    classes=None,
    input_context=None,
    drop_remainder=None,
    repeat=None,
    shuffle_buffer=256,
    compression="auto",
    multilabel=False,
    num_classes=None,
    train_annotations=None,
    skip_bad_rows=False,
    randaugment=None,
    random_erasing=0.0,
    mixup_alpha=0.0,
    cutmix_alpha=0.0,
):
    """Batched clips for training or evaluation: the documented entry to both sources.

    Pass `file_pattern` (TFRecord shards: `tfrecord_dataset`) or `annotations` (video files:
    `video_dataset`); the clip arguments shared by both become a `ClipOptions`.

    Args:
      file_pattern: glob (or list of globs) of TFRecord shards of SequenceExamples.
        Hidden files, folders and the converter's report.json / classes.txt are
        skipped; a pattern matching nothing else raises ValueError naming it. Frames
        may be JPEG (fast crop-window decode) or PNG/BMP/GIF.
      mode: "train" (random clip, short side uniform in [min_resize, max_resize],
        random crop, horizontal flip p=0.5), "eval" (centre clip, short side
        eval_resize, centre crop) or "test" (num_clips clips x num_crops crops).
      batch_size: clips per batch (per replica or global, as the caller needs).
      num_frames, frame_stride: T frames one every `frame_stride` (see sample_indices).
      crop_size: output height/width.
      num_clips, num_crops: test mode views; crops are evenly spaced along the long
        side after resizing the short side to eval_resize (preprocess.multi_crop).
        The public CoST code's 30 views: num_clips=10, num_crops=3, crop_size=256
        with eval_resize=256 (full short side; the networks are fully convolutional).
      seed: int -> identical batches on every run (and deterministic order); None ->
        a random seed.
      min_resize, max_resize: train short-side range; default crop*8/7, crop*10/7
        (256, 320 at 224).
      eval_resize: eval/test short side; default crop*8/7 (256 at 224).
      flip: random horizontal flip in train mode.
      deterministic: tf.data order determinism; default True in eval/test mode, and
        in train mode `seed is not None` (unseeded training trades order for speed).
      annotations, video_dir, dataset, classes: raw-video source instead of
        file_pattern: annotation file of `dataset` ("kinetics" | "moments"), the video
        folder and optional class list for the label indices (Kinetics: classes
        file or names; Moments: categories file or names). Videos PyAV cannot read
        are skipped, logged and listed by raw_video_skips(); videos missing on
        disk are skipped and logged.
      train_annotations: raw Kinetics source: the training CSV whose sorted labels
        give the class indices (for another split read without `classes`).
      skip_bad_rows: raw source: skip (and log) malformed annotation rows instead
        of raising.
      input_context: tf.distribute.InputContext: shard by input files (or videos).
      drop_remainder: default True in train mode.
      repeat: repeat forever; default True in train mode.
      shuffle_buffer: train-mode shuffle buffer of sampled (still encoded) clips.
      compression: of the TFRecord files: "auto" (detected per file from its first
        bytes), "none", "gzip" or "zlib".
      multilabel: labels as multi-hot float32 (B, num_classes) from every index in
        `clip/label/index` (TF Model Garden's multi-label layout); a record without
        labels (or holding only -1) gives an all-zero row. Off: int32 (B,), -1 for a
        record without a label, an error for a record with several.
      num_classes: K, required with multilabel=True or mixing (ignored otherwise).
      randaugment: train mode: "N,M" or (N, M): N of keras.layers.RandAugment's ops
        of magnitude M (0..10, timm's scale) per clip, the same ops and parameters for
        every frame, on the crop's uint8 pixel values (pipelines.augment.rand_augment).
      random_erasing: train mode: probability of erasing one random box of a clip,
        the same box in every frame, filled with the mean colour (0 after normalising).
      mixup_alpha, cutmix_alpha: train mode: MixUp (Beta(alpha, alpha) weights) and/or
        CutMix (alpha <= 1) within each batch (after batching: a replica's own batch
        under tf.distribute); both on: one or the other per batch. Labels then become
        float (B, K + 1) [soft labels, hard index], or (B, 2K) [soft, multi-hot] with
        multilabel=True (augment.pack_targets; cost_tf.metrics.split_targets).

    Returns:
      tf.data.Dataset of (clips, labels): train/eval clips float32
      (B, num_frames, crop, crop, 3); test clips float32
      (B, V, num_frames, crop, crop, 3) with V = num_clips * num_crops, clip-major:
      view v is clip v // num_crops, crop v % num_crops. labels int32 (B,) (-1 when
      the record has none), or float32 (B, num_classes) with multilabel=True. Clips
      are ImageNet-normalised (preprocess.normalize).
    """
    options = ClipOptions(
        mode=mode,
        batch_size=batch_size,
        num_frames=num_frames,
        frame_stride=frame_stride,
        crop_size=crop_size,
        num_clips=num_clips,
        num_crops=num_crops,
        seed=seed,
        min_resize=min_resize,
        max_resize=max_resize,
        eval_resize=eval_resize,
        flip=flip,
        deterministic=deterministic,
        drop_remainder=drop_remainder,
        repeat=repeat,
        multilabel=multilabel,
        num_classes=num_classes,
        randaugment=randaugment,
        random_erasing=random_erasing,
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
    )
    if (file_pattern is None) == (annotations is None):
        raise ValueError(
            "Pass exactly one of file_pattern or annotations. Received: "
            f"file_pattern={file_pattern!r}, annotations={annotations!r}"
        )
    if file_pattern is not None:
        return tfrecord_dataset(
            file_pattern,
            options,
            compression=compression,
            shuffle_buffer=shuffle_buffer,
            input_context=input_context,
        )
    return video_dataset(
        annotations,
        video_dir,
        dataset,
        options,
        classes=classes,
        train_annotations=train_annotations,
        skip_bad_rows=skip_bad_rows,
        input_context=input_context,
    )


def tfrecord_dataset(
    file_pattern, options=None, *, compression="auto", shuffle_buffer=256, input_context=None
):
    """Batched clips read from TFRecord shards of SequenceExamples (the `file_pattern` source of
    `make_dataset`, which documents the arguments and the result).

    Args:
      file_pattern: glob or list of globs of the shards.
      options: ClipOptions (default ClipOptions()).
      compression: "auto", "none", "gzip" or "zlib".
      shuffle_buffer: train-mode shuffle buffer of sampled, still encoded clips.
      input_context: tf.distribute.InputContext: shard by input files.
    """
    stages = _Stages(options or ClipOptions())
    files, compressions = _list_shards(file_pattern, compression)
    _check_shardable(len(files), input_context, "files")
    ds = _tfrecord_elements(files, compressions, stages, input_context, shuffle_buffer)
    return stages.batches(ds)


def video_dataset(
    annotations,
    video_dir,
    dataset,
    options=None,
    *,
    classes=None,
    train_annotations=None,
    skip_bad_rows=False,
    input_context=None,
):
    """Batched clips decoded from video files with PyAV (the `annotations` source of `make_dataset`, which
    documents the arguments and the result).

    Args:
      annotations, video_dir, dataset: the annotation file of `dataset` ("kinetics" | "moments") and the
        folder of its videos.
      options: ClipOptions (default ClipOptions()).
      classes, train_annotations, skip_bad_rows: as pipelines.readers.read_annotations takes them.
      input_context: tf.distribute.InputContext: shard by videos.
    """
    stages = _Stages(options or ClipOptions())
    paths, labels = _read_annotations(
        annotations, video_dir, dataset, classes, train_annotations, skip_bad_rows
    )
    _check_shardable(len(paths), input_context, "videos")
    ds = _raw_elements(
        paths, labels, stages.clip, stages.options.train, stages.options.repeats, input_context
    )
    if stages.labels.multilabel:
        label_spec = stages.labels
        ds = ds.map(
            lambda views, label: (views, label_spec.from_indices(label[None])),
            num_parallel_calls=_AUTOTUNE,
        )
    return stages.batches(ds)


def _mix(mixer, seed, index, clips, labels, num_classes):
    """MixUp/CutMix of batch `index`: (clips, packed [soft, hard] labels)."""
    hard = labels
    if labels.shape.rank == 1:  # int indices (-1: unlabelled, an all-zero row)
        labels = tf.one_hot(labels, num_classes)
    clips, soft = mixer(clips, labels, _element_seed(seed, index, 6))
    return clips, augment.pack_targets(soft, hard)


def _check_shardable(count, input_context, what):
    if input_context is not None and count < input_context.num_input_pipelines:
        raise ValueError(
            f"Cannot shard {count} {what} over {input_context.num_input_pipelines} input pipelines."
        )
