"""Training losses and metrics for soft (mixed / smoothed) and multi-label targets.

Targets reach the loss and metrics as the pipeline makes them (pipelines.dataset): int (N,) class indices,
float (N, K) multi-hot rows, or, with MixUp/CutMix, packed float rows (N, K + 1) = [soft labels, hard
index] or (N, 2K) = [soft, multi-hot] (pipelines.augment.pack_targets). The loss takes the soft part,
top-1/top-5 and mAP the hard one, so mixing never changes what accuracy means.

- `ClipLoss`: softmax cross-entropy (keras.losses.categorical_crossentropy, with its label_smoothing) or,
  multilabel, sigmoid cross-entropy (keras.losses.binary_crossentropy from logits, label_smoothing too).
- `TopK`: keras' sparse top-k accuracy on the hard index.
- `MeanAveragePrecision`: mAP as multi-label users mean it: the mean over classes (with at least one
  positive) of average precision, AP = sum_n (R_n - R_{n-1}) P_n over the score thresholds
  (sklearn.metrics.average_precision_score's definition). keras.metrics.AUC(curve="PR", multi_label=True)
  is not that: it interpolates the PR curve between 200 thresholds (Davis & Goadrich) and gives other
  numbers (tests/test_metrics.py shows one). Here scores (sigmoid probabilities) are binned into
  `num_bins` equal bins per class and AP is exact for the binned scores (a bin is one threshold).
- `average_precision` / `mean_average_precision`: the exact NumPy versions (cost_tf.evaluate).
"""

import keras
import numpy as np
import tensorflow as tf


def split_targets(y_true, num_classes, multilabel):
    """(soft targets float (N, K), hard targets: int (N,) indices or float (N, K) multi-hot)."""
    k = num_classes
    if not multilabel:
        if y_true.shape.rank == 1 or (y_true.shape.rank == 2 and y_true.shape[-1] == 1):
            hard = tf.cast(tf.reshape(y_true, [-1]), tf.int32)
            return tf.one_hot(hard, k), hard
        return tf.cast(y_true[:, :k], tf.float32), tf.cast(y_true[:, k], tf.int32)
    y_true = tf.cast(y_true, tf.float32)
    if y_true.shape[-1] == 2 * k:
        return y_true[:, :k], y_true[:, k:]
    return y_true, y_true


@keras.saving.register_keras_serializable(package="cost_tf")
class ClipLoss(keras.losses.Loss):
    """Cross-entropy from logits on the soft part of the targets (see module docstring)."""

    def __init__(self, num_classes, multilabel=False, label_smoothing=0.0, name="clip_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0 <= label_smoothing < 1:
            raise ValueError(
                f"label_smoothing must be in [0, 1). Received: label_smoothing={label_smoothing!r}"
            )
        self.num_classes = int(num_classes)
        self.multilabel = bool(multilabel)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        soft, _ = split_targets(y_true, self.num_classes, self.multilabel)
        y_pred = tf.cast(y_pred, tf.float32)
        if self.multilabel:  # mean over classes, as keras.losses.BinaryCrossentropy
            return keras.losses.binary_crossentropy(
                soft, y_pred, from_logits=True, label_smoothing=self.label_smoothing
            )
        return keras.losses.categorical_crossentropy(
            soft, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return dict(
            super().get_config(),
            num_classes=self.num_classes,
            multilabel=self.multilabel,
            label_smoothing=self.label_smoothing,
        )


@keras.saving.register_keras_serializable(package="cost_tf")
class TopK(keras.metrics.SparseTopKCategoricalAccuracy):
    """Top-k accuracy against the hard class index of (possibly packed) targets."""

    def __init__(self, num_classes, k=1, name=None, **kwargs):
        super().__init__(k=k, name=name or f"top{k}", **kwargs)
        self.num_classes = int(num_classes)

    def update_state(self, y_true, y_pred, sample_weight=None):
        _, hard = split_targets(tf.convert_to_tensor(y_true), self.num_classes, False)
        return super().update_state(hard, y_pred, sample_weight)

    def get_config(self):
        return dict(super().get_config(), num_classes=self.num_classes)


@keras.saving.register_keras_serializable(package="cost_tf")
class MeanAveragePrecision(keras.metrics.Metric):
    """Multi-label mAP over binned sigmoid scores (see module docstring); logits in, multi-hot targets.

    State: positives and negatives per (class, score bin), summed over batches and replicas.
    """

    def __init__(self, num_classes, num_bins=1000, from_logits=True, name="mAP", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes, self.num_bins, self.from_logits = int(num_classes), int(num_bins), bool(from_logits)
        shape = (self.num_classes, self.num_bins)
        self.positives = self.add_variable(shape=shape, initializer="zeros", name="positives")
        self.negatives = self.add_variable(shape=shape, initializer="zeros", name="negatives")

    def update_state(self, y_true, y_pred, sample_weight=None):
        _, hard = split_targets(tf.convert_to_tensor(y_true), self.num_classes, True)
        scores = tf.cast(y_pred, tf.float32)
        if self.from_logits:
            scores = tf.sigmoid(scores)
        bins = tf.clip_by_value(
            tf.cast(tf.floor(scores * self.num_bins), tf.int32), 0, self.num_bins - 1
        )  # (N, K)
        flat = tf.reshape(bins + tf.range(self.num_classes)[None, :] * self.num_bins, [-1])
        weight = tf.ones_like(hard) if sample_weight is None else tf.cast(sample_weight, tf.float32)[:, None]
        size = self.num_classes * self.num_bins
        pos = tf.math.unsorted_segment_sum(tf.reshape(hard * weight, [-1]), flat, size)
        neg = tf.math.unsorted_segment_sum(tf.reshape((1.0 - hard) * weight, [-1]), flat, size)
        self.positives.assign_add(tf.reshape(pos, self.positives.shape))
        self.negatives.assign_add(tf.reshape(neg, self.negatives.shape))

    def result(self):
        # Thresholds from the highest bin down: true/false positives above each threshold.
        tp = tf.cumsum(self.positives, axis=1, reverse=True)
        fp = tf.cumsum(self.negatives, axis=1, reverse=True)
        total = tp[:, :1]
        precision = tf.math.divide_no_nan(tp, tp + fp)
        ap = tf.reduce_sum(tf.math.divide_no_nan(self.positives, total) * precision, axis=1)
        has_positive = tf.cast(total[:, 0] > 0, tf.float32)
        return tf.math.divide_no_nan(tf.reduce_sum(ap * has_positive), tf.reduce_sum(has_positive))

    def reset_state(self):
        for v in (self.positives, self.negatives):
            v.assign(tf.zeros_like(v))

    def get_config(self):
        return dict(
            super().get_config(),
            num_classes=self.num_classes,
            num_bins=self.num_bins,
            from_logits=self.from_logits,
        )


def average_precision(labels, scores):
    """Exact AP of one class: labels (N,) 0/1, scores (N,); tied scores are one threshold. NaN without
    positives."""
    labels, scores = np.asarray(labels, np.float64), np.asarray(scores, np.float64)
    if labels.sum() == 0:
        return float("nan")
    order = np.argsort(-scores, kind="stable")
    labels, scores = labels[order], scores[order]
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]  # a threshold after each distinct score
    tp = np.cumsum(labels)[last_of_tie]
    seen = np.arange(1, len(labels) + 1)[last_of_tie]
    recall_gain = np.diff(np.r_[0.0, tp]) / labels.sum()
    return float(np.sum(recall_gain * tp / seen))


def mean_average_precision(labels, scores):
    """(mAP over classes with a positive, per-class AP (NaN: no positive)) of (N, K) labels and scores."""
    labels, scores = np.asarray(labels), np.asarray(scores)
    per_class = np.array([average_precision(labels[:, k], scores[:, k]) for k in range(labels.shape[1])])
    valid = ~np.isnan(per_class)
    return (float(per_class[valid].mean()) if valid.any() else float("nan")), per_class
