"""S3D-G (Xie et al., "Rethinking Spatiotemporal Feature Learning", ECCV 2018) after TF-slim nets/s3dg.py.

`build_s3dg()` returns a Keras functional model on clips (N, T, H, W, 3). Layout, widths and choices are the
reference's (tensorflow/models research/slim/nets/s3dg.py with i3d_utils.py), default arguments included:

  Conv2d_1a_7x7   full k x 7 x 7 conv, stride 2 on T, H and W (k = 3 there, 7 in the paper)
  MaxPool_2a_3x3  1x3x3 max-pool, stride (1, 2, 2)
  Conv2d_2b_1x1   64;  Conv2d_2c_3x3 192, separable and gated
  MaxPool_3a_3x3  1x3x3, stride (1, 2, 2);  Mixed_3b, Mixed_3c
  MaxPool_4a_3x3  3x3x3, stride 2;          Mixed_4b ... Mixed_4f
  MaxPool_5a_2x2  2x2x2, stride 2;          Mixed_5b, Mixed_5c
  avg_pool, dropout, logits

Every conv is conv (no bias) -> BatchNorm -> ReLU, as slim's conv3d with normalizer_fn=batch_norm. A
separable t x 3 x 3 conv is the 1x3x3 conv -> BatchNorm -> ReLU, then the t x 1 x 1 `_temporal` conv WITH a
bias and ReLU but NO BatchNorm (i3d_utils passes normalizer_fn=None to it), initialised as the identity in
time (`TemporalIdentity`, i3d_utils.center_initializer). Self-gating (`self_gating`) follows every branch
output and Conv2d_2c_3x3: sigmoid(W . global-average-pool(x)) * x with W a C x C 1x1x1 conv without bias.
BatchNorm: slim's defaults under s3dg_arg_scope: centre only (no gamma: slim's scale=False), decay 0.999,
epsilon 1e-3. Conv kernels N(0, 0.01) truncated at 2 std; logits Glorot-uniform (slim's default) + zero bias.
Layer names are the slim scopes with "/" -> "_" (Keras names cannot hold "/"): Mixed_4b_Branch_1_Conv2d_0b_3x3,
..._temporal, ..._self_gating_transformer_W, Conv2d_1a_7x7_BatchNorm. docs/MODELS.md lists the deviations.
"""

import keras
import numpy as np
from keras import layers

from cost_tf.resnet import FramewiseConv3D, FramewiseMaxPooling3D, check_build_args

# After Conv2d_2c_3x3, in order: Inception blocks (name, branch widths of slim inception_block_v1_3d: 1x1;
# 3x3 reduce, 3x3; 3x3 reduce, 3x3; pool projection) and the max-pools between them (name, pool, strides).
LAYOUT = (
    ("MaxPool_3a_3x3", (1, 3, 3), (1, 2, 2)),
    ("Mixed_3b", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64)),
    ("MaxPool_4a_3x3", (3, 3, 3), (2, 2, 2)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128)),
    ("MaxPool_5a_2x2", (2, 2, 2), (2, 2, 2)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128)),
)
STEM_TEMPORAL_KERNELS = (1, 3, 5, 7)  # the reference's first_temporal_kernel_size choices
TINY_DEPTH_MULTIPLIER = 0.25  # "s3dg_tiny": tests and the CPU comparison
BN_MOMENTUM = 0.999  # slim batch_norm decay in s3dg_arg_scope
# "s3dg_tiny" trains for 900-1500 steps on the synthetic benchmark: with 0.999 its moving statistics lag the
# batch statistics so far that evaluation sat at chance (12.5 %) while training reached 97 % (docs/RESULTS.md);
# 0.99 is the tiny ResNets' (Keras') value.
TINY_BN_MOMENTUM = 0.99
_BN_EPSILON = 1e-3


def _weights():
    return keras.initializers.TruncatedNormal(stddev=0.01)  # slim trunc_normal(0.01): cut at 2 std, as Keras


@keras.saving.register_keras_serializable(package="cost_tf")
class TemporalIdentity(keras.initializers.Initializer):
    """A (t, 1, 1, C, C) kernel that is the identity in time: the centre tap is the C x C identity, the others 0.

    i3d_utils.center_initializer: the separable conv's temporal part starts as a no-op (t odd, C_in = C_out).
    """

    def __call__(self, shape, dtype=None):
        shape = tuple(shape)
        if len(shape) != 5 or shape[1:3] != (1, 1) or shape[3] != shape[4] or shape[0] % 2 == 0:
            raise ValueError(f"TemporalIdentity needs a (t odd, 1, 1, C, C) kernel. Received: shape={shape}")
        kernel = np.zeros(shape, np.float32)
        kernel[shape[0] // 2, 0, 0] = np.eye(shape[3], dtype=np.float32)
        return keras.ops.convert_to_tensor(kernel, dtype=dtype or "float32")

    def get_config(self):
        return {}


def unit(x, filters, kernel_size, name, strides=1):
    """slim conv3d under s3dg_arg_scope: 'same' conv without bias -> BatchNorm (centre only) -> ReLU."""
    x = FramewiseConv3D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=False,
        kernel_initializer=_weights(),
        name=name,
    )(x)
    x = layers.BatchNormalization(
        momentum=BN_MOMENTUM, epsilon=_BN_EPSILON, scale=False, name=name + "_BatchNorm"
    )(x)
    return layers.Activation("relu", name=name + "_relu")(x)


def separable(x, filters, temporal_kernel, name):
    """i3d_utils.conv3d_spatiotemporal(separable=True) of a t x 3 x 3 kernel: `unit` 1x3x3, then a t x 1 x 1
    conv with bias and ReLU and no BatchNorm, starting as the identity in time. t = 1: the 1x3x3 unit only."""
    x = unit(x, filters, (1, 3, 3), name)
    if temporal_kernel == 1:
        return x
    x = layers.Conv3D(
        filters,
        (temporal_kernel, 1, 1),
        padding="same",
        use_bias=True,
        kernel_initializer=TemporalIdentity(),
        name=name + "_temporal",
    )(x)
    return layers.Activation("relu", name=name + "_temporal_relu")(x)


def self_gating(x, name):
    """S3D-G feature gating: x * sigmoid(W . mean over (T, H, W) of x), W a C x C 1x1x1 conv without bias.

    Args:
      x: (N, T, H, W, C). name: the slim scope of the gated op, e.g. "Mixed_3b_Branch_0_Conv2d_0a_1x1".
    Returns (N, T, H, W, C); the gate is one weight per clip and channel, broadcast over T, H, W.
    """
    channels = x.shape[-1]
    gate = layers.GlobalAveragePooling3D(keepdims=True, name=name + "_self_gating_avg_pool3d")(x)
    gate = layers.Conv3D(
        channels, 1, use_bias=False, kernel_initializer=_weights(), name=name + "_self_gating_transformer_W"
    )(gate)
    gate = layers.Activation("sigmoid", name=name + "_self_gating_sigmoid")(gate)
    return layers.Multiply(name=name + "_self_gating")([x, gate])


def inception_block(x, widths, name, temporal_kernel=3, gating=True):
    """i3d_utils.inception_block_v1_3d: four branches concatenated on channels (output layer `name`).

    widths: (1x1, 3x3 reduce, 3x3, 3x3 reduce, 3x3, pool projection) output channels.
    """
    w0, w1a, w1b, w2a, w2b, w3 = widths
    gate = self_gating if gating else (lambda tensor, _: tensor)
    b0 = gate(unit(x, w0, 1, f"{name}_Branch_0_Conv2d_0a_1x1"), f"{name}_Branch_0_Conv2d_0a_1x1")
    b1 = unit(x, w1a, 1, f"{name}_Branch_1_Conv2d_0a_1x1")
    b1 = gate(
        separable(b1, w1b, temporal_kernel, f"{name}_Branch_1_Conv2d_0b_3x3"),
        f"{name}_Branch_1_Conv2d_0b_3x3",
    )
    b2 = unit(x, w2a, 1, f"{name}_Branch_2_Conv2d_0a_1x1")
    b2 = gate(
        separable(b2, w2b, temporal_kernel, f"{name}_Branch_2_Conv2d_0b_3x3"),
        f"{name}_Branch_2_Conv2d_0b_3x3",
    )
    b3 = layers.MaxPooling3D(3, strides=1, padding="same", name=f"{name}_Branch_3_MaxPool_0a_3x3")(x)
    b3 = gate(unit(b3, w3, 1, f"{name}_Branch_3_Conv2d_0b_1x1"), f"{name}_Branch_3_Conv2d_0b_1x1")
    return layers.Concatenate(axis=-1, name=name)([b0, b1, b2, b3])


def _max_pool(x, pool, strides, name):
    return FramewiseMaxPooling3D(pool, strides=strides, padding="same", name=name)(x)


def build_s3dg(
    num_classes=400,
    num_frames=64,
    input_size=224,
    dropout=0.2,
    stem_temporal_kernel=3,
    depth_multiplier=1.0,
    min_depth=16,
    bn_momentum=BN_MOMENTUM,
    name="s3dg",
):
    """Builds S3D-G.

    Args:
      num_classes: classifier width; None returns the pooled (N, 1024 x depth_multiplier) features.
      num_frames: clip length T (None: unknown). The stem, MaxPool_4a and MaxPool_5a each halve T.
      input_size: crop side H = W (None: unknown); the features are 1/32 of it ('same' padding: ceil).
      dropout: rate before the classifier (the reference keeps 0.8: rate 0.2).
      stem_temporal_kernel: k of the k x 7 x 7 stem, one of 1, 3, 5, 7 (reference 3, paper 7).
      depth_multiplier, min_depth: every conv width d becomes max(int(d * depth_multiplier), min_depth), as
        the reference's `depth`; depth_multiplier 0.25 is "s3dg_tiny".
      bn_momentum: every BatchNormalization's moving-average momentum (slim's decay 0.999; "s3dg_tiny" 0.99).
      name: the model's name.
    Returns:
      keras.Model: input "clip" (N, T, H, W, 3) float32 -> float32 logits (N, num_classes), no softmax.
    """
    check_build_args(num_classes, num_frames, input_size, dropout)
    if stem_temporal_kernel not in STEM_TEMPORAL_KERNELS:
        raise ValueError(
            f"stem_temporal_kernel must be one of {STEM_TEMPORAL_KERNELS}. "
            f"Received: stem_temporal_kernel={stem_temporal_kernel!r}"
        )
    if (
        isinstance(depth_multiplier, bool)
        or not isinstance(depth_multiplier, (int, float))
        or not depth_multiplier > 0
    ):
        raise ValueError(
            f"depth_multiplier must be a number > 0. Received: depth_multiplier={depth_multiplier!r}"
        )
    if isinstance(min_depth, bool) or not isinstance(min_depth, int) or min_depth < 1:
        raise ValueError(f"min_depth must be a positive int. Received: min_depth={min_depth!r}")
    if isinstance(bn_momentum, bool) or not isinstance(bn_momentum, (int, float)) or not 0 <= bn_momentum < 1:
        raise ValueError(f"bn_momentum must be a number in [0, 1). Received: bn_momentum={bn_momentum!r}")

    def depth(d):
        return max(int(d * depth_multiplier), min_depth)

    inputs = keras.Input((num_frames, input_size, input_size, 3), name="clip")
    # The stem stays a full 3D conv: the reference finds a separable one slow there.
    x = unit(inputs, depth(64), (stem_temporal_kernel, 7, 7), "Conv2d_1a_7x7", strides=2)
    x = _max_pool(x, (1, 3, 3), (1, 2, 2), "MaxPool_2a_3x3")
    x = unit(x, depth(64), 1, "Conv2d_2b_1x1")
    x = self_gating(separable(x, depth(192), 3, "Conv2d_2c_3x3"), "Conv2d_2c_3x3")
    for entry in LAYOUT:
        if entry[0].startswith("MaxPool"):
            x = _max_pool(x, entry[1], entry[2], entry[0])
        else:
            x = inception_block(x, tuple(depth(w) for w in entry[1]), entry[0])
    # Global average pooling; the reference's 2x7x7 stride-1 pool + per-window logits + temporal mean is the
    # same at 224^2 except for the weight of the first and last time step (docs/MODELS.md).
    x = layers.GlobalAveragePooling3D(name="avg_pool")(x)
    if num_classes is not None:
        x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Dense(num_classes, kernel_initializer="glorot_uniform", dtype="float32", name="logits")(x)
    model = keras.Model(inputs, x, name=name)
    # Set after building (rather than passed through every block function): the layers read it in call, and
    # get_config saves it, so a saved model keeps it.
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = float(bn_momentum)
    return model
