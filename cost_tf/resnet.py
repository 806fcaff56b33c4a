"""Video ResNets for CoST and its baselines, mirroring keras.applications.ResNet50/101.

`build_model("cost_b_r50")` returns a Keras functional model on clips (N, T, H, W, 3). The backbone is
keras.applications' ResNet v1 layer for layer (same names, conv biases, stride in the first 1x1 conv of a
stage, BatchNormalization epsilon 1.001e-5) with every Conv2D turned into a 1xkxk Conv3D, so 2D ImageNet
weights load exactly (see cost_tf/inflate.py). Only the "inflated" blocks of `_STAGES` differ by family:

  c2d       no temporal kernel anywhere.
  i3d       the first 1x1 conv of an inflated block becomes 3x1x1 (the official code's I3D baseline).
  c3d       the 3x3 conv of an inflated block becomes a dense 3x3x3 conv.
  r2plus1d  the 3x3 conv of an inflated block becomes 1x3x3 -> BN -> ReLU -> 3x1x1 (`_2t_conv`, no bias)
            -> BN -> ReLU; the mid width equals the block width so the 3x1x1 conv can start as an identity.
  cost_a/b  the 3x3 conv of an inflated block becomes CoST(a)/(b) (with bias, like the conv it replaces).

style="pytorch" is the authors' layout (MMAction2 ResNet3d style='pytorch'): a stage's spatial stride sits in
the 3x3 conv / CoST layer instead of the first 1x1 conv, strided 3x3 convs pad (1, 1) (ZeroPadding3D +
'valid'; CoST padding="symmetric") and BatchNorm epsilon is PyTorch's 1e-5. Same weights, same count.
`build_model("s3dg")` / `("s3dg_tiny")` builds S3D-G (cost_tf/s3dg.py), the paper's other comparison.
"""

import math
import numbers

import keras
from keras import layers, ops

from cost_tf.cost import CoST

BLOCKS = ("c2d", "i3d", "c3d", "r2plus1d", "cost_a", "cost_b")

# depth: (stem / base width, inflation pattern per stage; 1 = inflated block, length = blocks in the stage).
# R50/R101 patterns follow the public CoST code (spec section 2). `tiny` is a test/demo network: one block
# per stage at a quarter of the width, every block inflated.
_STAGES = {
    "r50": (64, ((0, 1, 0), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (1, 0, 1))),
    "r101": (64, ((0, 1, 0), (1, 0, 1, 0), tuple(1 - i % 2 for i in range(23)), (0, 1, 0))),
    "tiny": (16, ((1,), (1,), (1,), (1,))),
}
DEPTHS = tuple(_STAGES)
RESNET_ARCHS = tuple(f"{block}_{depth}" for depth in DEPTHS for block in BLOCKS)
S3DG_ARCHS = ("s3dg", "s3dg_tiny")  # cost_tf/s3dg.py: the full network and depth_multiplier 0.25
ARCHS = RESNET_ARCHS + S3DG_ARCHS
STYLES = ("keras", "pytorch")

_BN_EPSILON = 1.001e-5  # keras.applications' value; needed for ImageNet statistics to load exactly.
_TORCH_BN_EPSILON = 1e-5  # PyTorch's BatchNorm3d default (the authors' layers)


def parse_arch(arch):
    """Splits "cost_a_r50" into ("cost_a", "r50"); "s3dg" -> ("s3dg", "full"), "s3dg_tiny" -> ("s3dg", "tiny").
    ValueError listing ARCHS if unknown."""
    if not isinstance(arch, str) or arch not in ARCHS:
        raise ValueError(f"Unknown arch. Valid names: {', '.join(ARCHS)}. Received: arch={arch!r}")
    if arch in S3DG_ARCHS:
        return "s3dg", "tiny" if arch.endswith("_tiny") else "full"
    block, depth = arch.rsplit("_", 1)
    return block, depth


def check_build_args(num_classes, num_frames, input_size, dropout):
    """ValueError naming the argument for a bad num_classes / num_frames / input_size / dropout."""
    if num_classes is not None and (
        isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1
    ):
        raise ValueError(f"num_classes must be a positive int or None. Received: num_classes={num_classes!r}")
    for arg, value, least in (("num_frames", num_frames, 1), ("input_size", input_size, 32)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
            raise ValueError(f"{arg} must be None or an int >= {least}. Received: {arg}={value!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout!r}")


@keras.saving.register_keras_serializable(package="cost_tf")
class FramewiseConv3D(layers.Conv3D):
    """keras.layers.Conv3D that runs a 1xkxk kernel (temporal stride 1) as a Conv2D over N*T frames.

    Same weights, config and results as Conv3D; only faster: on CPU, TF's Conv3D filter gradient of the
    strided 1x7x7 stem conv takes seconds where the Conv2D one takes tens of milliseconds.
    """

    def convolution_op(self, inputs, kernel):
        if (self.kernel_size[0], self.strides[0], self.dilation_rate[0]) != (1, 1, 1) or (
            self.data_format != "channels_last"
        ):
            return super().convolution_op(inputs, kernel)
        shape = ops.shape(inputs)  # entries may be tensors when unknown
        frames = ops.reshape(inputs, (-1,) + tuple(shape[2:]))
        outputs = ops.conv(
            frames,
            kernel[0],
            strides=self.strides[1:],
            padding=self.padding,
            dilation_rate=self.dilation_rate[1:],
        )
        return ops.reshape(outputs, (shape[0], shape[1]) + tuple(ops.shape(outputs)[1:]))


@keras.saving.register_keras_serializable(package="cost_tf")
class FramewiseMaxPooling3D(layers.MaxPooling3D):
    """keras.layers.MaxPooling3D that runs a 1xkxk pool (temporal stride 1) as a 2D max-pool over N*T frames.

    Same config and results as MaxPooling3D; on CPU, TF's MaxPool3D gradient took 5-6x the time of the
    MaxPool2D one at the stem's shapes (measured 367 vs 68 ms forward+backward at the R50 stem's 8x114x114x64).
    """

    def call(self, inputs):
        if (self.pool_size[0], self.strides[0]) != (1, 1) or self.data_format != "channels_last":
            return super().call(inputs)
        shape = ops.shape(inputs)
        frames = ops.reshape(inputs, (-1,) + tuple(shape[2:]))
        outputs = ops.max_pool(
            frames, pool_size=self.pool_size[1:], strides=self.strides[1:], padding=self.padding
        )
        return ops.reshape(outputs, (shape[0], shape[1]) + tuple(ops.shape(outputs)[1:]))


def _conv(x, filters, kernel_size, name, strides=1, use_bias=True, padding="same"):
    return FramewiseConv3D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=use_bias,
        kernel_initializer="he_normal",
        name=name,
    )(x)


def _bn_relu(x, name, relu=True, epsilon=_BN_EPSILON):
    x = layers.BatchNormalization(epsilon=epsilon, name=name + "_bn")(x)
    return layers.Activation("relu", name=name + "_relu")(x) if relu else x


def stem(x, filters, temporal_kernel=1, temporal_stride=1, pool_temporal=1, epsilon=_BN_EPSILON):
    """conv1 + pool1 of keras.applications' ResNet in 3D: explicit zero padding then 'valid' ops (the
    symmetric padding of the authors' PyTorch stem too)."""
    x = layers.ZeroPadding3D(((temporal_kernel // 2,) * 2, (3, 3), (3, 3)), name="conv1_pad")(x)
    x = _conv(
        x, filters, (temporal_kernel, 7, 7), "conv1_conv", strides=(temporal_stride, 2, 2), padding="valid"
    )
    x = _bn_relu(x, "conv1", epsilon=epsilon)
    # Zero padding before the max-pool is harmless: its input is post-ReLU (>= 0).
    x = layers.ZeroPadding3D(((0, 0), (1, 1), (1, 1)), name="pool1_pad")(x)
    return FramewiseMaxPooling3D((pool_temporal, 3, 3), strides=(pool_temporal, 2, 2), name="pool1_pool")(x)


def bottleneck(x, filters, block, stride=1, conv_shortcut=False, name=None, style="keras"):
    """keras.applications `block1` in 3D; `block` picks the inflated convs ("c2d" for a plain block).

    Args:
      x: (N, T, H, W, C) tensor.
      filters: bottleneck width; the block outputs 4 * filters channels.
      block: one of BLOCKS.
      stride: spatial stride, applied in the shortcut and (style "keras", as keras.applications) the first
        1x1 conv or (style "pytorch", as the authors' ResNet3d) the 3x3 conv / CoST layer.
      conv_shortcut: projection shortcut (first block of a stage) instead of identity.
      name: layer-name prefix, e.g. "conv2_block1".
      style: one of STYLES. "pytorch" also pads strided 3x3 convs (1, 1) (`_2_pad` + 'valid'; CoST padding
        "symmetric") and uses PyTorch's BatchNorm epsilon.
    """
    strides = (1, stride, stride)
    torch = style == "pytorch"
    eps = _TORCH_BN_EPSILON if torch else _BN_EPSILON
    if conv_shortcut:
        # A strided 1x1 'same' conv pads nothing: it equals PyTorch's (padding 0) in both styles.
        shortcut = _conv(x, 4 * filters, 1, name + "_0_conv", strides=strides)
        shortcut = _bn_relu(shortcut, name + "_0", relu=False, epsilon=eps)
    else:
        shortcut = x
    x = _conv(
        x, filters, (3 if block == "i3d" else 1, 1, 1), name + "_1_conv", strides=1 if torch else strides
    )
    x = _bn_relu(x, name + "_1", epsilon=eps)
    mid_strides = strides if torch else 1
    if block in ("cost_a", "cost_b"):
        x = CoST(
            filters,
            variant=block[-1],
            strides=mid_strides,
            use_bias=True,
            padding="symmetric" if torch else "same",
            name=name + "_2_conv",
        )(x)
    else:
        kernel = (3 if block == "c3d" else 1, 3, 3)
        padding = "same"
        if torch and stride != 1:  # TF 'same' would pad (0, 1) on even sizes; PyTorch pads (1, 1)
            x = layers.ZeroPadding3D(((kernel[0] // 2,) * 2, (1, 1), (1, 1)), name=name + "_2_pad")(x)
            padding = "valid"
        x = _conv(x, filters, kernel, name + "_2_conv", strides=mid_strides, padding=padding)
    x = _bn_relu(x, name + "_2", epsilon=eps)
    if block == "r2plus1d":
        x = _conv(x, filters, (3, 1, 1), name + "_2t_conv", use_bias=False)
        x = _bn_relu(x, name + "_2t", epsilon=eps)
    x = _conv(x, 4 * filters, 1, name + "_3_conv")
    x = _bn_relu(x, name + "_3", relu=False, epsilon=eps)
    x = layers.Add(name=name + "_add")([shortcut, x])
    return layers.Activation("relu", name=name + "_out")(x)


def stage(x, filters, block, pattern, stride, name, style="keras"):
    """keras.applications `stack1`: len(pattern) bottlenecks; pattern[i] = 1 inflates block i + 1."""
    for i, inflated in enumerate(pattern):
        x = bottleneck(
            x,
            filters,
            block if inflated else "c2d",
            stride=stride if i == 0 else 1,
            conv_shortcut=i == 0,
            name=f"{name}_block{i + 1}",
            style=style,
        )
    return x


def build_model(arch, num_classes=400, num_frames=8, input_size=224, dropout=None, style="keras"):
    """Builds a video ResNet, or S3D-G for arch "s3dg" / "s3dg_tiny" (cost_tf.s3dg.build_s3dg defaults).

    Args:
      arch: "{block}_{depth}" or an S3D-G name, one of ARCHS.
      num_classes: classifier width; None returns the backbone ending in pooled (N, 4 * 8 * width)
        features (2048 for r50/r101), like keras.applications.ResNet50(include_top=False, pooling="avg").
      num_frames: clip length T, or None for unknown. 32 with r101 selects the 32-frame stem
        (5x7x7 conv, temporal stride 2; pool (2, 3, 3) stride (2, 2, 2)); c2d keeps a 1x7x7 kernel there.
      input_size: crop side H = W, or None for unknown.
      dropout: dropout rate before the classifier; None: 0.5 (ResNets, spec) or 0.2 (S3D-G, its reference).
      style: "keras" (keras.applications' layout: ImageNet weights load exactly) or "pytorch" (the authors'
        ResNet3d: stride in the 3x3 conv, symmetric padding; see the module docstring). ResNets only.

    Returns:
      keras.Model named `arch` (`arch + "_pytorch"` for style "pytorch"): input "clip" (N, num_frames,
      input_size, input_size, 3) float32, output float32 logits (N, num_classes) (no softmax), or pooled
      features if num_classes is None.
    """
    block, depth = parse_arch(arch)
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES}. Received: style={style!r}")
    if block == "s3dg":
        if style != "keras":
            raise ValueError(
                f"style applies to the ResNet archs only, not {arch!r}. Received: style={style!r}"
            )
        from cost_tf.s3dg import (  # s3dg builds on this module
            BN_MOMENTUM,
            TINY_BN_MOMENTUM,
            TINY_DEPTH_MULTIPLIER,
            build_s3dg,
        )

        return build_s3dg(
            num_classes=num_classes,
            num_frames=num_frames,
            input_size=input_size,
            dropout=0.2 if dropout is None else dropout,
            depth_multiplier=TINY_DEPTH_MULTIPLIER if depth == "tiny" else 1.0,
            bn_momentum=TINY_BN_MOMENTUM if depth == "tiny" else BN_MOMENTUM,
            name=arch,
        )
    dropout = 0.5 if dropout is None else dropout
    check_build_args(num_classes, num_frames, input_size, dropout)

    width, patterns = _STAGES[depth]
    eps = _TORCH_BN_EPSILON if style == "pytorch" else _BN_EPSILON
    inputs = keras.Input((num_frames, input_size, input_size, 3), name="clip")
    if depth == "r101" and num_frames == 32:
        x = stem(
            inputs,
            width,
            temporal_kernel=1 if block == "c2d" else 5,
            temporal_stride=2,
            pool_temporal=2,
            epsilon=eps,
        )
    else:
        x = stem(inputs, width, epsilon=eps)
    for i, pattern in enumerate(patterns):
        x = stage(
            x, width * 2**i, block, pattern, stride=1 if i == 0 else 2, name=f"conv{i + 2}", style=style
        )
    x = layers.GlobalAveragePooling3D(name="avg_pool")(x)
    if num_classes is not None:
        x = layers.Dropout(dropout, name="dropout")(x)
        x = layers.Dense(
            num_classes,
            kernel_initializer=keras.initializers.RandomNormal(stddev=0.01),
            dtype="float32",
            name="logits",
        )(x)
    return keras.Model(inputs, x, name=arch if style == "keras" else arch + "_pytorch")


def count_macs(model, cost_taps=27):
    """Multiply-adds of one forward pass per example, from layer shapes (needs static T, H, W).

    Conv3D/Conv2D: output elements x kernel taps x input channels / groups; Dense: inputs x units;
    CoST: output elements x `cost_taps` x input channels (27 = its merged 3x3x3 kernel, as C3D; 19 = the
    sparse cross-shaped form without the 8 zero corners), plus for CoST(b) the shared view dense layer
    (3 x F x F) and the 3 -> 3 view mix (9 x F). BatchNorm (foldable), pooling, additions and biases are
    not counted.
    """
    total = 0
    for layer in model.layers:
        if isinstance(layer, (layers.Conv3D, layers.Conv2D, CoST, layers.Dense)):
            out_shape, in_shape = tuple(layer.output.shape[1:]), tuple(layer.input.shape[1:])
            if None in out_shape or None in in_shape:
                raise ValueError(
                    f"count_macs needs static shapes; layer {layer.name!r} has input {in_shape} "
                    f"and output {out_shape}. Build the model with num_frames and input_size."
                )
            channels_in, out_elements = in_shape[-1], math.prod(out_shape)
            if isinstance(layer, layers.Dense):
                total += out_elements * channels_in
            elif isinstance(layer, CoST):
                filters = out_shape[-1]
                total += out_elements * cost_taps * channels_in
                if layer.variant == "b":
                    total += 3 * filters * filters + 9 * filters
            else:
                total += out_elements * math.prod(layer.kernel_size) * channels_in // layer.groups
    return total
