"""Folding inference-mode BatchNormalization into the convolution before it, for deployment.

A BatchNormalization at inference is a per-channel affine map y = s * (x - mean) + beta with
s = gamma / sqrt(moving_variance + epsilon). When x is a convolution's output and nothing else reads that
output, the map moves into the convolution exactly (up to float32 rounding):

    kernel' = kernel * s    (per output channel: the kernel's last axis)
    bias'   = (bias - mean) * s + beta

so the exported graph has no BatchNorm multiply after the convolution.
"""

import keras
import numpy as np

from cost_tf.fold import clone_with_weights

# Convolutions whose kernel's last axis is the output channel (grouped convs included); transposed, depthwise
# and separable convolutions are not subclasses of these.
_CONVS = (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)


def _model_nodes(model):
    """Every call node of the functional `model`'s own graph (not of other models sharing its layers)."""
    if not isinstance(model, keras.Model) or not hasattr(model, "_nodes_by_depth"):
        raise ValueError(
            f"BatchNorm folding needs a functional keras.Model. Received: model={type(model).__name__}"
        )
    return [node for nodes in model._nodes_by_depth.values() for node in nodes]


def _is_foldable_conv(layer):
    return (
        isinstance(layer, _CONVS)
        and layer.data_format == "channels_last"
        and layer.activation is keras.activations.linear
    )


def _is_foldable_bn(layer, rank):
    return (
        isinstance(layer, keras.layers.BatchNormalization)
        and layer.axis in (-1, rank - 1)
        and not getattr(layer, "synchronized", False)
    )


def foldable_pairs(model):
    """(conv name, BatchNorm name) pairs of `model` that fold exactly, in layer order.

    A pair is a Conv1D/2D/3D (channels_last, no activation) called once, whose only reader in the model is a
    BatchNormalization over the channel axis, also called once, with that output as its only input; the conv
    output must not be a model output.
    """
    nodes = _model_nodes(model)
    calls = {}
    readers = {}
    for node in nodes:
        calls.setdefault(id(node.operation), []).append(node)
        for tensor in node.arguments.keras_tensors:
            readers.setdefault(id(tensor), []).append(node)
    output_ids = {id(t) for t in model.outputs}
    pairs = []
    for node in nodes:
        conv = node.operation
        if not _is_foldable_conv(conv) or len(calls[id(conv)]) != 1 or len(node.outputs) != 1:
            continue
        out = node.outputs[0]
        if id(out) in output_ids or len(readers.get(id(out), [])) != 1:
            continue
        reader = readers[id(out)][0]
        bn = reader.operation
        if (
            _is_foldable_bn(bn, len(out.shape))
            and len(calls[id(bn)]) == 1
            and len(reader.arguments.keras_tensors) == 1
        ):
            pairs.append((conv.name, bn.name))
    order = {layer.name: i for i, layer in enumerate(model.layers)}
    return sorted(pairs, key=lambda pair: order[pair[0]])


def _folded_weights(conv, bn):
    """(kernel, bias) of `conv` with the inference-mode `bn` after it moved into them (float64 math)."""
    kernel = np.asarray(conv.kernel, np.float64)
    channels = kernel.shape[-1]
    bias = np.asarray(conv.bias, np.float64) if conv.use_bias else np.zeros(channels)
    gamma = np.asarray(bn.gamma, np.float64) if bn.scale else np.ones(channels)
    beta = np.asarray(bn.beta, np.float64) if bn.center else np.zeros(channels)
    mean = np.asarray(bn.moving_mean, np.float64)
    scale = gamma / np.sqrt(np.asarray(bn.moving_variance, np.float64) + bn.epsilon)
    dtype = np.asarray(conv.kernel).dtype
    return (kernel * scale).astype(dtype), ((bias - mean) * scale + beta).astype(dtype)


def fold_batchnorm(model):
    """Return an equivalent inference model with every `foldable_pairs` BatchNorm moved into its conv.

    Args:
      model: a functional keras.Model (e.g. `cost_tf.fold.fold(build_model(...))`).
    Returns:
      A new functional model with copied weights: each folded conv gets a bias and keeps its name, its
      BatchNorm layer is gone; `model` itself if nothing folds. Outputs equal `model(x, training=False)` up
      to float32 rounding. Layers not in a pair (e.g. BatchNorm after CoST(b), whose coefficients come from
      the unscaled views) are kept.
    """
    pairs = dict(foldable_pairs(model))
    folded_bns = set(pairs.values())
    if not pairs:
        return model

    def clone_layer(layer):
        if layer.name in folded_bns:
            return layer  # skipped in call_layer; never called
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
        return layer.__class__.from_config(config)

    def call_layer(layer, *args, **kwargs):
        if layer.name in folded_bns:
            return args[0]  # the BatchNorm is now inside the conv before it
        return layer(*args, **kwargs)

    originals = {layer.name: layer for layer in model.layers}

    def weights(source, layer):
        if layer.name in pairs:
            return _folded_weights(source, originals[pairs[layer.name]])
        return source.get_weights()

    return clone_with_weights(model, clone_layer, call_layer, weights=weights)
