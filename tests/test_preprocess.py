"""Tests of pipelines/preprocess.py against NumPy references."""

import numpy as np
import pytest
import tensorflow as tf

from pipelines import preprocess


def np_resize_bilinear(images, out_h, out_w):
    """Reference bilinear resize, half-pixel centres, edge clamped: (..., H, W, C)."""
    images = np.asarray(images, np.float64)
    h, w = images.shape[-3], images.shape[-2]

    def taps(n_in, n_out):
        pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
        lo = np.floor(pos).astype(int)
        frac = pos - lo
        return np.clip(lo, 0, n_in - 1), np.clip(lo + 1, 0, n_in - 1), frac

    y0, y1, fy = taps(h, out_h)
    x0, x1, fx = taps(w, out_w)
    rows = images[..., y0, :, :] * (1 - fy)[:, None, None] + images[..., y1, :, :] * fy[:, None, None]
    return rows[..., x0, :] * (1 - fx)[:, None] + rows[..., x1, :] * fx[:, None]


def test_normalize_matches_formula_for_uint8_and_float():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (2, 3, 4, 3)).astype(np.uint8)
    want = (x / 255.0 - np.array(preprocess.MEAN)) / np.array(preprocess.STD)
    got = preprocess.normalize(x)
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5)
    np.testing.assert_allclose(preprocess.normalize(x.astype(np.float32)).numpy(), want, atol=1e-5)
    with pytest.raises(ValueError, match="3 channels"):
        preprocess.normalize(np.zeros((2, 4, 4, 4)))


@pytest.mark.parametrize(
    "shape,size,want_hw",
    [
        ((2, 10, 15, 3), 6, (6, 9)),  # landscape, one clip
        ((2, 3, 15, 10, 3), 6, (9, 6)),  # portrait, batch of clips
        ((1, 8, 8, 3), 12, (12, 12)),  # square, upsampling
    ],
)
def test_resize_short_side_shape_and_values(shape, size, want_hw):
    x = np.random.default_rng(1).integers(0, 256, shape).astype(np.uint8)
    got = preprocess.resize_short_side(x, size).numpy()
    assert got.shape == shape[:-3] + want_hw + (3,)
    np.testing.assert_allclose(got, np_resize_bilinear(x, *want_hw), atol=1e-3)


def test_functions_trace_with_unknown_height_width():
    spec = tf.TensorSpec([None, None, None, None, 3], tf.uint8)

    @tf.function(input_signature=[spec])
    def serve(clips):
        return preprocess.normalize(preprocess.center_crop(preprocess.resize_short_side(clips, 8), 6))

    x = np.random.default_rng(2).integers(0, 256, (2, 3, 12, 20, 3)).astype(np.uint8)
    got = serve(tf.constant(x)).numpy()
    ref = np_resize_bilinear(x, 8, 13)[:, :, 1:7, 3:9]
    want = (ref / 255.0 - np.array(preprocess.MEAN)) / np.array(preprocess.STD)
    assert got.shape == (2, 3, 6, 6, 3)
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_center_crop_offsets():
    x = np.arange(2 * 7 * 10 * 3).reshape(2, 7, 10, 3)
    np.testing.assert_array_equal(preprocess.center_crop(x, 4).numpy(), x[:, 1:5, 3:7])


def test_center_crop_larger_than_frame_raises():
    with pytest.raises(tf.errors.InvalidArgumentError, match="crop size"):
        preprocess.center_crop(np.zeros((1, 4, 9, 3)), 5)


def test_random_crop_is_one_window_for_all_frames_and_seeded():
    x = np.arange(3 * 9 * 11 * 1).reshape(3, 9, 11, 1) * np.ones(3, int)
    seen = set()
    for s in range(40):
        got = preprocess.random_crop(x, 5, seed=[7, s]).numpy()
        # The top-left value locates the window; every frame uses the same one.
        y, x0 = divmod(int(got[0, 0, 0, 0]) % 99, 11)
        assert 0 <= y <= 4 and 0 <= x0 <= 6
        np.testing.assert_array_equal(got, x[:, y : y + 5, x0 : x0 + 5])
        np.testing.assert_array_equal(got, preprocess.random_crop(x, 5, seed=[7, s]))
        seen.add((y, x0))
    assert len(seen) > 15  # offsets vary with the seed


@pytest.mark.parametrize(
    "h,w,n,want_y,want_x",
    [
        (8, 20, 3, [1, 1, 1], [0, 7, 14]),
        (20, 8, 3, [0, 7, 14], [1, 1, 1]),
        (8, 20, 1, [1], [7]),
        (6, 6, 2, [0, 0], [0, 0]),
    ],
)
def test_multi_crop_offsets_exact(h, w, n, want_y, want_x):
    oy, ox = preprocess.multi_crop_offsets(h, w, 6, n)
    assert oy.numpy().tolist() == want_y and ox.numpy().tolist() == want_x
    x = np.random.default_rng(3).random((2, h, w, 3))
    crops = preprocess.multi_crop(x, 6, n).numpy()
    assert crops.shape == (n, 2, 6, 6, 3)
    for i in range(n):
        np.testing.assert_array_equal(crops[i], x[:, want_y[i] : want_y[i] + 6, want_x[i] : want_x[i] + 6])


def test_flip_left_right():
    x = np.random.default_rng(4).random((2, 3, 5, 3))
    np.testing.assert_array_equal(preprocess.flip_left_right(x).numpy(), x[:, :, ::-1])


@pytest.mark.parametrize("h,w,short,crop", [(36, 64, 40, 32), (64, 36, 30, 24), (50, 50, 50, 50)])
def test_resized_crop_from_source_window_equals_resize_then_crop(h, w, short, crop):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, (2, h, w, 3)).astype(np.uint8)
    new_h, new_w = [int(v) for v in preprocess.resized_shape(h, w, short)]
    full = np_resize_bilinear(x, new_h, new_w)
    corners = [(0, 0), (new_h - crop, new_w - crop)]
    corners += [tuple(rng.integers(0, [new_h - crop + 1, new_w - crop + 1])) for _ in range(4)]
    for oy, ox in corners:
        y0, x0, wh, ww = [int(v) for v in preprocess.source_window(h, w, new_h, new_w, crop, oy, ox)]
        assert 0 <= y0 and y0 + wh <= h and 0 <= x0 and x0 + ww <= w
        window = x[:, y0 : y0 + wh, x0 : x0 + ww]
        got = preprocess.resized_crop(window, h, w, new_h, new_w, crop, oy, ox, y0, x0).numpy()
        np.testing.assert_allclose(got, full[:, oy : oy + crop, ox : ox + crop], atol=2e-2)
        # Whole frames (window offset 0) give the same crop.
        whole = preprocess.resized_crop(x, h, w, new_h, new_w, crop, oy, ox).numpy()
        np.testing.assert_allclose(whole, got, atol=1e-3)


@pytest.mark.parametrize(
    "crop, short, low, high", [(224, 256, 256, 320), (160, 183, 183, 229), (112, 128, 128, 160)]
)
def test_short_side_rules(crop, short, low, high):
    # The one home of the crop * 8/7 (eval) and crop * 8/7 .. 10/7 (train jitter) rules.
    assert preprocess.eval_short_side(crop) == short
    assert preprocess.train_short_side_range(crop) == (low, high)
