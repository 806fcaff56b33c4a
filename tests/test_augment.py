"""pipelines.augment: video RandAugment / RandomErasing / MixUp / CutMix over Keras' layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipelines import augment


def _blocky_frame(seed=0, h=16, w=20):
    """A frame of 4x4 blocks of random colours (edges for shear/rotation/sharpness to change)."""
    rng = np.random.default_rng(seed)
    return np.kron(rng.integers(0, 256, (h // 4, w // 4, 3)), np.ones((4, 4, 1))).astype(np.uint8)


def test_parse_randaugment():
    assert augment.parse_randaugment("2,9") == (2, 9.0)
    assert augment.parse_randaugment(None) is None and augment.parse_randaugment("") is None
    for bad in ("2", "0,9", "2,11", "a,b", "1,2,3"):
        with pytest.raises(ValueError, match="randaugment"):
            augment.parse_randaugment(bad)


def test_rand_augment_same_op_and_parameters_for_every_frame():
    """A static clip stays static under every one of the eleven ops, and each op changes the frames;
    Keras' own layer on the frames as a batch draws per-frame parameters and does not."""
    frame = _blocky_frame()
    static = tf.constant(np.repeat(frame[None], 4, axis=0))
    layer = augment.rand_augment_layer(2, 9)
    for k, name in enumerate(augment.RAND_AUGMENT_OPS):
        out = augment.rand_augment(static, layer, tf.constant([1, k]), ops=tf.constant([k, k])).numpy()
        assert out.shape == (4, 16, 20, 3) and out.dtype == np.float32
        np.testing.assert_array_equal(out, np.repeat(out[:1], 4, axis=0), err_msg=name)
        assert np.abs(out - frame).mean() > 0.5, name  # the op did something
        assert 0 <= out.min() and out.max() <= 255
    naive = keras.layers.RandAugment(value_range=(0, 255), num_ops=2, factor=0.9, seed=1)
    spread = [np.abs(o - o[:1]).max() for o in (naive(tf.cast(static, tf.float32)).numpy() for _ in range(3))]
    assert max(spread) > 10  # parameters per frame: why augment.rand_augment exists


def test_rand_augment_preserves_frame_differences_of_a_moving_clip_under_colour_ops():
    """Brightness is one added delta: frame differences of a moving clip are kept exactly."""
    frames = np.stack([np.roll(_blocky_frame(1), 4 * t, axis=1) for t in range(3)]).astype(np.float32)
    frames = np.clip(frames, 40, 200)  # no clipping at 0/255 for a delta within +-40
    layer = augment.rand_augment_layer(1, 1.5)  # brightness delta <= 0.15 * 255 ~ 38
    k = augment.RAND_AUGMENT_OPS.index("random_brightness")
    out = augment.rand_augment(frames, layer, tf.constant([0, 7]), ops=tf.constant([k])).numpy()
    np.testing.assert_allclose(np.diff(out, axis=0), np.diff(frames, axis=0), atol=1e-3)
    assert np.abs(out - frames).max() > 1


def test_rand_augment_is_a_function_of_the_seed():
    clip = tf.constant(np.stack([_blocky_frame(s) for s in range(3)]))
    layer = augment.rand_augment_layer(2, 9)
    run = tf.function(lambda seed: augment.rand_augment(clip, layer, seed))
    a, b, c = run(tf.constant([3, 4])), run(tf.constant([3, 4])), run(tf.constant([3, 5]))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0


def test_random_erase_one_box_in_every_frame():
    clip = tf.random.stateless_normal((4, 16, 16, 3), [0, 1]) + 5.0  # no pixel is 0
    layer = augment.random_erasing_layer(1.0)
    out = augment.random_erase(clip, layer, tf.constant([0, 2])).numpy()
    erased = out == 0.0  # filled with 0 (the mean colour), all channels
    assert erased.any()
    np.testing.assert_array_equal(erased, np.repeat(erased[:1], 4, axis=0))  # same box in every frame
    np.testing.assert_array_equal(erased, np.repeat(erased[..., :1], 3, axis=-1))
    rows, cols = np.nonzero(erased[0, ..., 0])
    assert erased[0, rows.min() : rows.max() + 1, cols.min() : cols.max() + 1, 0].all()  # a rectangle
    np.testing.assert_array_equal(out[~erased], clip.numpy()[~erased])
    never = augment.random_erase(clip, augment.random_erasing_layer(0.0), tf.constant([0, 2]))
    np.testing.assert_array_equal(never, clip)
    with pytest.raises(ValueError, match="random_erasing"):
        augment.random_erasing_layer(1.5)


def _indexed_batch(n=6, t=3, h=8, w=10, k=5):
    """Clip i is constant i + 1: a mixed pixel tells which clips it came from and with which weight."""
    clips = np.broadcast_to(np.arange(1, n + 1, dtype=np.float32)[:, None, None, None, None], (n, t, h, w, 3))
    labels = np.eye(k, dtype=np.float32)[np.arange(n) % k]
    return tf.constant(clips), tf.constant(labels)


def test_mixup_labels_sum_to_one_and_match_the_pixel_weight():
    clips, labels = _indexed_batch()
    mixed, soft = augment.BatchMixer(mixup_alpha=0.8)(clips, labels, tf.constant([5, 6]))
    mixed, soft = mixed.numpy(), soft.numpy()
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    for i in range(len(soft)):
        value = mixed[i, 0, 0, 0, 0]
        assert np.all(mixed[i] == value)  # one weight for the whole clip, every frame
        # value = lam * (i + 1) + (1 - lam) * (j + 1); the soft label says lam on i's class, 1 - lam on j's.
        own = soft[i, i % 5]
        partner = value - own * (i + 1)
        if own < 1 - 1e-6:
            j = round(partner / (1 - own)) - 1
            np.testing.assert_allclose(partner, (1 - own) * (j + 1), rtol=1e-4)
            if j % 5 != i % 5:
                np.testing.assert_allclose(soft[i, j % 5], 1 - own, atol=1e-5)
    assert not np.allclose(soft, labels.numpy())


def test_cutmix_labels_sum_to_one_and_match_the_pasted_area():
    clips, labels = _indexed_batch(n=8, h=12, w=16)
    mixed, soft = augment.BatchMixer(cutmix_alpha=1.0)(clips, labels, tf.constant([1, 9]))
    mixed, soft = mixed.numpy(), soft.numpy()
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, atol=1e-6)
    pasted_any = False
    for i in range(len(soft)):
        np.testing.assert_array_equal(mixed[i], np.repeat(mixed[i, :1], 3, axis=0))  # same box every frame
        foreign = mixed[i, 0, ..., 0] != i + 1
        kept, expected_own = 1.0 - foreign.mean(), 1.0
        if foreign.any():
            pasted_any = True
            (j,) = set(mixed[i, 0, ..., 0][foreign].astype(int) - 1)  # one partner clip
            if j % 5 != i % 5:  # (a partner of the same class leaves the label one-hot)
                np.testing.assert_allclose(soft[i, j % 5], 1 - kept, atol=1e-6)
                expected_own = kept
        np.testing.assert_allclose(soft[i, i % 5], expected_own, atol=1e-6)
    assert pasted_any


def test_mixup_and_cutmix_switch_per_batch_and_multi_hot_labels_mix():
    clips, _ = _indexed_batch(n=4)
    multi_hot = tf.constant([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1]], tf.float32)
    mixer = augment.BatchMixer(mixup_alpha=1.0, cutmix_alpha=1.0)
    kinds = set()
    for s in range(8):
        mixed, soft = mixer(clips, multi_hot, tf.constant([2, s]))
        # every mixed label row is a convex combination of two rows: between 0 and 1, total in [1, 2]
        assert soft.shape == (4, 3) and np.all((soft >= -1e-6) & (soft <= 1 + 1e-6))
        values = np.unique(mixed.numpy()[:, 0])
        kinds.add("cutmix" if np.all(np.isin(values, [1, 2, 3, 4])) else "mixup")
    assert kinds == {"cutmix", "mixup"}
    with pytest.raises(ValueError, match="cutmix_alpha"):
        augment.BatchMixer(cutmix_alpha=2.0)


def test_pack_targets():
    packed = augment.pack_targets(tf.constant([[0.3, 0.7]]), tf.constant([1]))
    np.testing.assert_allclose(packed, [[0.3, 0.7, 1.0]])
    packed = augment.pack_targets(tf.constant([[0.3, 0.7]]), tf.constant([[0.0, 1.0]]))
    np.testing.assert_allclose(packed, [[0.3, 0.7, 0.0, 1.0]])
