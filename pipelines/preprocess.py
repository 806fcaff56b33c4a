"""Spatial preprocessing of clips as pure TF functions.

Everything here works inside tf.data and inside a SavedModel `tf.function` whose
height/width are unknown until run time. Frames are channels-last, either one clip
(T, H, W, 3) or a batch (N, T, H, W, 3) (any leading dims for the crop functions).
Resizing is bilinear with half-pixel centres and no antialiasing (`tf.image.resize`).
"""

import tensorflow as tf

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def eval_short_side(crop_size):
    """Short side frames are resized to before an evaluation crop: 256 for 224 (crop * 8 / 7)."""
    return round(crop_size * 8 / 7)


def train_short_side_range(crop_size):
    """Default (min, max) of the training scale jitter's short side: (256, 320) for 224 (crop * 8/7, * 10/7)."""
    return round(crop_size * 8 / 7), round(crop_size * 10 / 7)


def normalize(frames):
    """uint8 or float frames in [0, 255] -> float32 (x / 255 - MEAN) / STD."""
    frames = tf.cast(frames, tf.float32)
    if frames.shape.rank is not None and frames.shape[-1] not in (None, 3):
        raise ValueError(f"normalize expects 3 channels last. Received: shape={frames.shape}")
    scale = tf.constant([1.0 / (255.0 * s) for s in STD], tf.float32)
    offset = tf.constant([m / s for m, s in zip(MEAN, STD, strict=True)], tf.float32)
    # x * scale - offset on rows of W * 3 values: broadcasting a length-3 vector over
    # the channel axis is ~4x slower on CPU than broadcasting one long row.
    shape = tf.shape(frames)
    width3 = shape[-2] * 3
    rows = tf.reshape(frames, tf.stack([-1, width3]))
    rows = rows * tf.tile(scale, shape[-2:-1]) - tf.tile(offset, shape[-2:-1])
    out = tf.reshape(rows, shape)
    out.set_shape(frames.shape)
    return out


def resized_shape(height, width, short_side):
    """(new_height, new_width) int32 so the short side is `short_side`, aspect kept.

    The long side is round(long * short_side / short) (round half to even).
    """
    height = tf.cast(height, tf.float64)
    width = tf.cast(width, tf.float64)
    short_side = tf.cast(short_side, tf.float64)
    short = tf.minimum(height, width)
    new_h = tf.where(height <= width, short_side, tf.round(height * short_side / short))
    new_w = tf.where(height <= width, tf.round(width * short_side / short), short_side)
    return tf.cast(new_h, tf.int32), tf.cast(new_w, tf.int32)


def _flatten_images(frames):
    """(..., H, W, C) -> (N, H, W, C) plus the leading shape to restore."""
    shape = tf.shape(frames)
    lead = shape[:-3]
    flat = tf.reshape(frames, tf.concat([[-1], shape[-3:]], 0))
    return flat, lead


def _restore(flat, lead):
    return tf.reshape(flat, tf.concat([lead, tf.shape(flat)[1:]], 0))


def resize_short_side(frames, size):
    """Resizes (T, H, W, 3) or (N, T, H, W, 3) so the short side is `size`.

    Args:
      frames: uint8 or float tensor, rank >= 4, channels last.
      size: int or scalar int tensor.

    Returns:
      float32 frames (..., new_H, new_W, 3), see `resized_shape`.
    """
    frames = tf.convert_to_tensor(frames)
    shape = tf.shape(frames)
    new_h, new_w = resized_shape(shape[-3], shape[-2], size)
    flat, lead = _flatten_images(frames)
    out = tf.image.resize(flat, tf.stack([new_h, new_w]), method="bilinear")
    return _restore(tf.cast(out, tf.float32), lead)


def _crop(frames, size, offset_y, offset_x):
    shape = tf.shape(frames)
    tf.debugging.assert_greater_equal(
        tf.minimum(shape[-3], shape[-2]), size, message="crop size is larger than the frame"
    )
    return frames[..., offset_y : offset_y + size, offset_x : offset_x + size, :]


def center_crop(frames, size):
    """Central size x size crop of (..., H, W, C) frames; offsets (H - size) // 2."""
    frames = tf.convert_to_tensor(frames)
    shape = tf.shape(frames)
    return _crop(frames, size, (shape[-3] - size) // 2, (shape[-2] - size) // 2)


def random_offsets(height, width, size, seed=None):
    """Uniform crop offsets (y, x) in [0, H - size] x [0, W - size], int32.

    `seed`: stateless seed (shape [2] int) for reproducible offsets; None uses the
    global (stateful) generator.
    """
    maxvals = tf.stack([height - size + 1, width - size + 1])
    if seed is None:
        u = tf.random.uniform([2], dtype=tf.float32)
    else:
        u = tf.random.stateless_uniform([2], seed=seed, dtype=tf.float32)
    offsets = tf.minimum(tf.cast(u * tf.cast(maxvals, tf.float32), tf.int32), maxvals - 1)
    return offsets[0], offsets[1]


def random_crop(frames, size, seed=None):
    """Random size x size crop, the same window for every frame of the clip(s)."""
    frames = tf.convert_to_tensor(frames)
    shape = tf.shape(frames)
    offset_y, offset_x = random_offsets(shape[-3], shape[-2], size, seed)
    return _crop(frames, size, offset_y, offset_x)


def multi_crop_offsets(height, width, size, num_crops):
    """Offsets of `num_crops` crops evenly spaced along the long side.

    Crop i starts at (i * (L - size)) // (num_crops - 1) along the long side L
    (first flush with one end, last with the other), centred on the short side;
    num_crops == 1 is the centre crop. Landscape/square frames are cropped
    left..right, portrait frames top..bottom.

    Returns:
      (offsets_y, offsets_x), int32 vectors of length num_crops.
    """
    if num_crops < 1:
        raise ValueError(f"num_crops must be >= 1. Received: num_crops={num_crops}")
    height = tf.convert_to_tensor(height, tf.int32)
    width = tf.convert_to_tensor(width, tf.int32)
    landscape = width >= height
    long_side = tf.where(landscape, width, height)
    short_side = tf.where(landscape, height, width)
    if num_crops == 1:
        along = tf.reshape((long_side - size) // 2, [1])
    else:
        along = (tf.range(num_crops) * (long_side - size)) // (num_crops - 1)
    across = tf.fill([num_crops], (short_side - size) // 2)
    return tf.where(landscape, across, along), tf.where(landscape, along, across)


def multi_crop(frames, size, num_crops=3):
    """Stacks `num_crops` crops along the long side: (num_crops, ..., size, size, C).

    Test-time views: with the short side already resized (e.g. to 256), crops of
    `size` are evenly spaced along the long side (see `multi_crop_offsets`). The
    public CoST code uses size == short side (3 crops of 256 at short side 256).
    """
    frames = tf.convert_to_tensor(frames)
    shape = tf.shape(frames)
    offsets_y, offsets_x = multi_crop_offsets(shape[-3], shape[-2], size, num_crops)
    return tf.stack([_crop(frames, size, offsets_y[i], offsets_x[i]) for i in range(num_crops)])


def flip_left_right(frames):
    """Mirrors (..., H, W, C) frames horizontally."""
    return tf.reverse(frames, axis=[-2])


# --- Fused "resize the short side, then crop" for the input pipeline. ---
# A crop of the resized frame only depends on a small window of the source frame, so
# the pipeline decodes just that window (tf.image.decode_and_crop_jpeg) and resamples
# it with ScaleAndTranslate, which uses the same bilinear half-pixel-centre sampling
# (edge pixels clamped) as tf.image.resize: the result equals
# resize_short_side(...)[..., y:y + crop, x:x + crop, :] up to float rounding.


def source_window(height, width, new_height, new_width, crop_size, offset_y, offset_x):
    """Window of the source frame a resized crop reads.

    Args:
      height, width: source frame size.
      new_height, new_width: resized size (see `resized_shape`).
      crop_size: side of the crop in the resized frame.
      offset_y, offset_x: top-left of the crop in the resized frame.

    Returns:
      int32 (y0, x0, h, w): every source pixel the bilinear taps touch, clipped to
      the frame.
    """

    def axis(size, new_size, offset):
        size_f = tf.cast(size, tf.float32)
        inv_scale = size_f / tf.cast(new_size, tf.float32)
        first = (tf.cast(offset, tf.float32) + 0.5) * inv_scale - 0.5
        last = (tf.cast(offset + crop_size, tf.float32) - 0.5) * inv_scale - 0.5
        # One pixel of margin on each side covers both taps and float rounding.
        start = tf.maximum(tf.cast(tf.floor(first), tf.int32) - 1, 0)
        end = tf.minimum(tf.cast(tf.math.ceil(last), tf.int32) + 2, size)
        return start, end - start

    y0, h = axis(height, new_height, offset_y)
    x0, w = axis(width, new_width, offset_x)
    return y0, x0, h, w


def resized_crop(
    window, height, width, new_height, new_width, crop_size, offset_y, offset_x, window_y=0, window_x=0
):
    """Crop of the resized frame computed from a source window.

    Args:
      window: (..., h, w, C) uint8/float frames: the source frames cut at
        (window_y, window_x) (e.g. the `source_window`), or whole frames (offset 0).
      height, width: size of the whole source frame.
      new_height, new_width: the resized size the crop is taken from.
      crop_size: output side.
      offset_y, offset_x: top-left of the crop in the resized frame.

    Returns:
      float32 (..., crop_size, crop_size, C) equal to
      tf.image.resize(source, (new_height, new_width))[..., offset_y:+crop, offset_x:+crop, :].
    """
    scale_y = tf.cast(new_height, tf.float32) / tf.cast(height, tf.float32)
    scale_x = tf.cast(new_width, tf.float32) / tf.cast(width, tf.float32)
    translation = tf.stack(
        [
            tf.cast(window_y, tf.float32) * scale_y - tf.cast(offset_y, tf.float32),
            tf.cast(window_x, tf.float32) * scale_x - tf.cast(offset_x, tf.float32),
        ]
    )
    flat, lead = _flatten_images(window)
    out = tf.raw_ops.ScaleAndTranslate(
        images=flat,
        size=tf.constant([crop_size, crop_size], tf.int32),
        scale=tf.stack([scale_y, scale_x]),
        translation=translation,
        kernel_type="triangle",
        antialias=False,
    )
    return _restore(out, lead)
