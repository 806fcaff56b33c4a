"""Training augmentations of clips as pure TF functions over Keras 3's own image layers.

Clips are (T, H, W, 3), batches (N, T, H, W, 3). Every op is the Keras layer's (keras.layers.RandAugment's
eleven ops, RandomErasing, MixUp, CutMix); this module only makes them video ops and stateless:

- Video: the SAME op and the SAME random parameters for every frame of a clip. Keras image layers draw
  their parameters per image, so a clip's frames fed as a "batch" would each get their own rotation,
  brightness, erased box ... (tests/test_augment.py shows it). RandAugment draws the parameters for one
  frame and repeats them over the T frames; RandomErasing, MixUp and CutMix see a clip as one image with
  its frames folded into the channels, (H, W, T * 3): one box for all frames.
- Stateless: the Keras layers draw from a stateful SeedGenerator, which tf.data's parallel map would
  advance in a run-dependent order. Every draw here is seeded from the caller's (2,) seed instead
  (`StatelessSeeds`), so a seeded pipeline gives the same clips on every run.

Order in pipelines.dataset: crop/flip -> rand_augment (on uint8 pixel values) -> normalise ->
random_erase (per clip) -> batch -> mix_batch (MixUp / CutMix within the batch: under tf.distribute each
replica's batch is mixed on its own) -> prefetch.
"""

import keras
import tensorflow as tf

# keras.layers.RandAugment's ops, in its order (its attributes of the same names).
RAND_AUGMENT_OPS = tuple(keras.layers.RandAugment._AUGMENT_LAYERS)
# RandAugment's magnitude M is on timm/PySlowFast's scale (rand-m9: M = 9 of 10); Keras takes M / 10.
MAX_MAGNITUDE = 10


class StatelessSeeds(keras.random.SeedGenerator):
    """A keras SeedGenerator whose `next()` derives seeds from a (2,) seed tensor (no state variable).

    Each call folds in a counter, so the draws of one traced function differ from each other but are a
    pure function of `seed`: the seeded Keras layers become stateless random ops.
    """

    def __init__(self, seed):  # no super().__init__: it would create the state variable
        self._seed = tf.cast(tf.convert_to_tensor(seed), tf.int64)
        self._count = 0

    def next(self, ordered=True):
        self._count += 1
        return tf.random.experimental.stateless_fold_in(self._seed, self._count)


def parse_randaugment(value):
    """ "N,M" (or (N, M)) -> (N, M): N ops per clip, magnitude M in [0, 10]; None/"" -> None."""
    if value is None or value == "" or value == ():
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        num_ops, magnitude = int(parts[0]), float(parts[1])
        if len(parts) != 2:
            raise ValueError
    except (ValueError, IndexError, TypeError):
        raise ValueError(
            f"randaugment must be N,M (N ops of magnitude M, e.g. 2,9). Received: randaugment={value!r}"
        ) from None
    if num_ops < 1 or not 0 <= magnitude <= MAX_MAGNITUDE:
        raise ValueError(
            f"randaugment needs N >= 1 and 0 <= M <= {MAX_MAGNITUDE}. Received: randaugment={value!r}"
        )
    return num_ops, magnitude


def rand_augment_layer(num_ops, magnitude):
    """keras.layers.RandAugment for uint8 pixel values; its sub-layers are the ops rand_augment applies."""
    return keras.layers.RandAugment(
        value_range=(0, 255), num_ops=int(num_ops), factor=float(magnitude) / MAX_MAGNITUDE
    )


def _repeat_batch(transformation, count):
    """Repeats every tensor of a Keras transformation drawn for one image over `count` images."""

    def repeat(x):
        if isinstance(x, tf.Tensor) and x.shape.rank and x.shape[0] == 1:
            return tf.repeat(x, count, axis=0)
        return x

    return tf.nest.map_structure(repeat, transformation)


def rand_augment(clip, layer, seed, ops=None):
    """RandAugment of one clip: `layer.num_ops` ops, each with parameters shared by all frames.

    Args:
      clip: (T, H, W, 3) pixel values in [0, 255] (uint8 or float; rounded to uint8 first).
      layer: from rand_augment_layer (built here on first use).
      seed: int (2,) stateless seed of this clip.
      ops: optional int (num_ops,) indices into RAND_AUGMENT_OPS (default: drawn uniformly from seed).

    Returns:
      float32 (T, H, W, 3) in [0, 255].
    """
    clip = tf.convert_to_tensor(clip)
    if clip.dtype != tf.uint8:
        clip = tf.saturate_cast(tf.round(clip), tf.uint8)
    images = tf.cast(clip, tf.float32)
    if not layer.built:
        layer.build(images.shape)
    seeds = StatelessSeeds(seed)
    if ops is None:
        ops = tf.random.stateless_uniform([layer.num_ops], seeds.next(), 0, len(RAND_AUGMENT_OPS), tf.int32)
    count = tf.shape(images)[0]
    for i in range(layer.num_ops):
        branch_seed = seeds.next()

        def branch(name, images=images, branch_seed=branch_seed):
            op = getattr(layer, name)
            op.backend.set_backend("tensorflow")  # as RandAugment does inside a tf graph
            params = op.get_random_transformation(images[:1], training=True, seed=StatelessSeeds(branch_seed))
            out = op.transform_images(images, _repeat_batch(params, count), training=True)
            return tf.cast(out, tf.float32)

        # Only the drawn op runs (keras.layers.RandAugment computes all eleven and selects).
        images = tf.switch_case(ops[i], [lambda n=n: branch(n) for n in RAND_AUGMENT_OPS])
        images.set_shape(clip.shape)
    return tf.clip_by_value(images, 0.0, 255.0)


def _fold_frames(clips):
    """(..., T, H, W, C) -> (..., H, W, T * C): the frames of a clip as channels of one image."""
    rank = clips.shape.rank
    perm = list(range(rank - 4)) + [rank - 3, rank - 2, rank - 4, rank - 1]
    moved = tf.transpose(clips, perm)
    shape = tf.shape(moved)
    return tf.reshape(moved, tf.concat([shape[:-2], [shape[-2] * shape[-1]]], 0)), tf.shape(clips)


def _unfold_frames(folded, shape):
    """Inverse of _fold_frames; `shape`: the clips' shape it returned."""
    rank = shape.shape[0]  # the clips' rank (a layer may have added a batch axis of 1)
    lead = shape[:-4]
    t, h, w, c = shape[-4], shape[-3], shape[-2], shape[-1]
    images = tf.reshape(folded, tf.concat([lead, [h, w, t, c]], 0))
    perm = list(range(rank - 4)) + [rank - 2, rank - 4, rank - 3, rank - 1]
    return tf.transpose(images, perm)


def random_erasing_layer(probability):
    """keras.layers.RandomErasing erasing with `probability` (Keras' factor=p draws the probability in
    [0, p]: (p, p) makes it p) and filling with 0: the ImageNet mean colour on normalised clips."""
    if not 0 <= probability <= 1:
        raise ValueError(f"random_erasing must be a probability in [0, 1]. Received: {probability!r}")
    return keras.layers.RandomErasing(
        factor=(float(probability), float(probability)), fill_value=0.0, value_range=(-1.0, 1.0)
    )


def random_erase(clip, layer, seed):
    """Random erasing of one normalised clip (T, H, W, 3): one box, at the same place in every frame."""
    clip = tf.convert_to_tensor(clip, tf.float32)
    folded, shape = _fold_frames(clip)
    params = layer.get_random_transformation(folded, training=True, seed=StatelessSeeds(seed))
    out = _unfold_frames(tf.cast(layer.transform_images(folded, params, training=True), tf.float32), shape)
    out.set_shape(clip.shape)
    return out


class BatchMixer:
    """MixUp and/or CutMix of a batch of clips with soft labels (keras.layers.MixUp / CutMix).

    Each clip draws its own weight and partner in the batch (Keras' per-sample rule); a CutMix box is the
    same in every frame, and the label weight is the exact fraction of pixels kept (Keras' own weight
    is the unrounded box area). With both on, each batch is one or the other with probability 1/2
    (PySlowFast's MIXUP.SWITCH_PROB).
    """

    def __init__(self, mixup_alpha=0.0, cutmix_alpha=0.0):
        if not mixup_alpha >= 0:
            raise ValueError(f"mixup_alpha must be >= 0. Received: mixup_alpha={mixup_alpha!r}")
        if not 0 <= cutmix_alpha <= 1:
            # keras.layers.CutMix bounds its factor (the Beta distribution's alpha) to [0, 1].
            raise ValueError(f"cutmix_alpha must be in [0, 1]. Received: cutmix_alpha={cutmix_alpha!r}")
        self.mixup = keras.layers.MixUp(alpha=float(mixup_alpha)) if mixup_alpha > 0 else None
        self.cutmix = (
            keras.layers.CutMix(factor=(float(cutmix_alpha), float(cutmix_alpha)))
            if cutmix_alpha > 0
            else None
        )

    def __bool__(self):
        return self.mixup is not None or self.cutmix is not None

    def _apply(self, layer, folded, labels, seed, cut):
        params = layer.get_random_transformation(folded, training=True, seed=StatelessSeeds(seed))
        if cut:  # the label weight of the pixels actually kept (the mask is on the pixel grid)
            kept = 1.0 - tf.reduce_mean(tf.cast(params["batch_masks"][..., 0], tf.float32), axis=[1, 2])
            params = dict(params, mix_weight=kept)
        images = tf.cast(layer.transform_images(folded, params, training=True), tf.float32)
        return images, tf.cast(layer.transform_labels(labels, params, training=True), tf.float32)

    def __call__(self, clips, labels, seed):
        """(N, T, H, W, 3) clips, float (N, K) labels (one-hot or multi-hot), (2,) seed -> mixed pair."""
        clips = tf.convert_to_tensor(clips, tf.float32)
        labels = tf.convert_to_tensor(labels, tf.float32)
        folded, shape = _fold_frames(clips)
        seeds = StatelessSeeds(seed)
        layers = [(self.mixup, False), (self.cutmix, True)]
        layers = [(layer, cut) for layer, cut in layers if layer is not None]
        if len(layers) == 1:
            ((layer, cut),) = layers
            images, mixed = self._apply(layer, folded, labels, seeds.next(), cut)
        else:
            use_cutmix = tf.random.stateless_uniform([], seeds.next()) < 0.5
            branch_seed = seeds.next()
            images, mixed = tf.cond(
                use_cutmix,
                lambda: self._apply(self.cutmix, folded, labels, branch_seed, True),
                lambda: self._apply(self.mixup, folded, labels, branch_seed, False),
            )
        out = _unfold_frames(images, shape)
        out.set_shape(clips.shape)
        mixed.set_shape(labels.shape)
        return out, mixed


def pack_targets(soft, hard):
    """Training targets carrying both labels: float (N, K + 1) = [soft (N, K), hard index (N,)], or
    (N, 2K) = [soft, multi-hot] for multi-label data: the loss reads the soft part, top-1/top-5/mAP
    the hard one (cost_tf.metrics.split_targets)."""
    hard = tf.cast(hard, tf.float32)
    if hard.shape.rank == 1:
        hard = hard[:, None]
    return tf.concat([tf.cast(soft, tf.float32), hard], axis=-1)
