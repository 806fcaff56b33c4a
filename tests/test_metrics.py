"""cost_tf.metrics: soft-target loss (keras' own losses), hard-label top-k, multi-label mAP vs NumPy."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from cost_tf import metrics


def reference_ap(labels, scores):
    """AP of distinct scores, plainly: the mean over positives of the precision at their rank."""
    order = np.argsort(-scores)
    hits = labels[order]
    ranks = np.nonzero(hits)[0] + 1
    return np.mean(np.arange(1, len(ranks) + 1) / ranks)


def test_mean_average_precision_against_numpy():
    rng = np.random.default_rng(0)
    n, k, bins = 40, 6, 1000
    # Distinct scores at bin centres: binning keeps their order, so the binned metric is exact.
    scores = (rng.permutation(n * k).reshape(n, k) + 0.5) / bins
    labels = (rng.random((n, k)) < 0.3).astype(np.float32)
    labels[:, 5] = 0  # a class without positives is left out of the mean
    labels[0, 0] = 1
    expected = np.mean([reference_ap(labels[:, c], scores[:, c]) for c in range(5)])

    metric = metrics.MeanAveragePrecision(k, num_bins=bins, from_logits=False)
    metric.update_state(labels[:25], scores[:25])  # streamed over two batches
    metric.update_state(labels[25:], scores[25:])
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-5)
    exact, per_class = metrics.mean_average_precision(labels, scores)
    np.testing.assert_allclose(exact, expected, rtol=1e-12)
    assert np.isnan(per_class[5]) and not np.isnan(per_class[:5]).any()
    # Tied scores: one threshold (sklearn's rule): 2 positives, 1 negative all tied -> AP = 2/3.
    assert metrics.average_precision([1, 1, 0], [0.5, 0.5, 0.5]) == pytest.approx(2 / 3)

    # From logits, packed [soft, multi-hot] targets: the hard multi-hot half is what counts.
    logits = np.log(scores / (1 - scores))
    packed = np.concatenate([np.full_like(labels, 0.5), labels], axis=1)
    from_logits = metrics.MeanAveragePrecision(k, num_bins=bins)
    from_logits.update_state(packed, logits)
    np.testing.assert_allclose(float(from_logits.result()), expected, rtol=1e-4)

    # keras.metrics.AUC(curve="PR", multi_label=True) is another number: not the mAP users mean.
    auc = keras.metrics.AUC(curve="PR", multi_label=True, num_labels=5)
    auc.update_state(labels[:, :5], scores[:, :5])
    assert abs(float(auc.result()) - expected) > 1e-3


def test_label_smoothing_and_soft_targets_against_keras_losses():
    rng = np.random.default_rng(1)
    logits = tf.constant(rng.normal(size=(6, 5)), tf.float32)
    hard = tf.constant([0, 1, 2, 3, 4, 1])
    one_hot = tf.one_hot(hard, 5)
    keras_loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)
    ours = metrics.ClipLoss(5, label_smoothing=0.1)
    np.testing.assert_allclose(ours(hard, logits), keras_loss(one_hot, logits), rtol=1e-6)
    soft = tf.constant(rng.dirichlet(np.ones(5), size=6), tf.float32)
    packed = tf.concat([soft, tf.cast(hard, tf.float32)[:, None]], axis=1)
    np.testing.assert_allclose(ours(packed, logits), keras_loss(soft, logits), rtol=1e-6)
    multi_hot = tf.constant(rng.random((6, 5)) < 0.4, tf.float32)
    bce = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=0.2)
    multi = metrics.ClipLoss(5, multilabel=True, label_smoothing=0.2)
    np.testing.assert_allclose(multi(multi_hot, logits), bce(multi_hot, logits), rtol=1e-6)
    np.testing.assert_allclose(multi(tf.concat([soft, multi_hot], 1), logits), bce(soft, logits), rtol=1e-6)
    with pytest.raises(ValueError, match="label_smoothing"):
        metrics.ClipLoss(5, label_smoothing=1.0)


def test_top_k_reads_the_hard_label_of_packed_targets():
    logits = tf.constant([[3.0, 2.0, 1.0], [1.0, 3.0, 2.0]])
    hard = tf.constant([1, 1])
    packed = tf.constant([[0.2, 0.8, 0.0, 1.0], [0.9, 0.1, 0.0, 1.0]])  # soft argmax says class 0 for row 2
    for k, expected in ((1, 0.5), (2, 1.0)):
        for targets in (hard, packed):
            metric = metrics.TopK(3, k=k)
            metric.update_state(targets, logits)
            assert float(metric.result()) == expected and metric.name == f"top{k}"
