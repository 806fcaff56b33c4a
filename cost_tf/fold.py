"""Folding CoST(a) layers into plain Keras Conv3D layers with fixed kernels, for deployment."""

import keras
import numpy as np

from cost_tf.cost import CoST, merged_kernel, sparse_kernels

FORMS = ("auto", "merged", "sparse")
# bench/model_bench.py (make bench, docs/PERFORMANCE.md): cost_a_r50 folded to the 19-tap sparse form ran
# 1.09x c3d_r50's speed by CPU time (1.05x wall), folded merged 0.92x (0.89x); bench/layer_bench.py's
# onnxruntime figures agree (sparse 73 vs merged 111 ms at res3, 89 vs 93 ms at res4).
AUTO_FORM = "sparse"


def _is_foldable(layer):
    return isinstance(layer, CoST) and layer.variant == "a"


def _merged_numpy(layer):
    return np.asarray(merged_kernel(layer.kernel, layer.coefficients()))


def _call_folded(layer, inputs, form):
    """Replace one CoST(a) call by Conv3D layers holding its merged kernel; returns the output tensor."""
    k3 = _merged_numpy(layer)
    bias = [np.asarray(layer.bias)] if layer.use_bias else []
    if form == "sparse" and layer.strides != (1, 1, 1):
        form = "merged"  # the 19-tap form's dilated taps assume stride 1
    if form == "merged":
        # padding="symmetric" (the authors' (1, 1)) differs from 'same' only when strided: pad, then 'valid'.
        symmetric = getattr(layer, "padding", "same") == "symmetric" and layer.strides != (1, 1, 1)
        if symmetric:
            inputs = keras.layers.ZeroPadding3D(1, dtype=layer.dtype_policy, name=f"{layer.name}_pad")(inputs)
        conv = keras.layers.Conv3D(
            layer.filters,
            3,
            strides=layer.strides,
            padding="valid" if symmetric else "same",
            use_bias=layer.use_bias,
            dtype=layer.dtype_policy,
            name=layer.name,
        )
        out = conv(inputs)
        conv.set_weights([k3] + bias)
        return out
    k_hw, k_tw, k_th = (np.asarray(k) for k in sparse_kernels(k3))
    name, policy = layer.name, layer.dtype_policy
    padded = keras.layers.ZeroPadding3D(1, dtype=policy, name=f"{name}_pad")(inputs)
    crop = lambda axis: keras.layers.Cropping3D(  # noqa: E731
        tuple((1, 1) if a == axis else (0, 0) for a in range(3)),
        dtype=policy,
        name=f"{name}_crop{'thw'[axis]}",
    )(padded)
    parts = []
    for suffix, axis, kernel, dilation, b in (
        ("hw", 0, k_hw, 1, bias),
        ("tw", 1, k_tw, (2, 1, 1), []),
        ("th", 2, k_th, (2, 2, 1), []),
    ):
        conv = keras.layers.Conv3D(
            layer.filters,
            kernel.shape[:3],
            dilation_rate=dilation,
            padding="valid",
            use_bias=bool(b),
            dtype=policy,
            name=f"{name}_{suffix}",
        )
        parts.append(conv(crop(axis)))
        conv.set_weights([kernel] + b)
    return keras.layers.Add(dtype=policy, name=name)(parts)


def fold(model, form="auto"):
    """Return an equivalent model where every CoST(a) layer is plain Keras Conv3D layers with fixed kernels.

    Args:
      model: a functional Keras model (e.g. from `cost_tf.build_model`).
      form: "merged" (one 3x3x3 Conv3D), "sparse" (the 19 non-zero taps as three Conv3D, stride 1 only) or
        "auto" (the form measured faster for inference here).
    Returns:
      A new functional model with copied weights; CoST(b) layers stay as they are (their coefficients depend
      on the clip). Outputs equal the original model's (exact up to float32 summation order).
    """
    if form not in FORMS:
        raise ValueError(f"`form` must be one of {FORMS}. Received: form={form!r}")
    if not isinstance(model, keras.Model) or not hasattr(model, "_operations"):
        raise ValueError(f"fold() needs a functional keras.Model. Received: model={type(model).__name__}")
    form = AUTO_FORM if form == "auto" else form

    def clone_layer(layer):
        if _is_foldable(layer):
            return layer  # replaced in call_layer; never called
        return layer.__class__.from_config(layer.get_config())

    def call_layer(layer, *args, **kwargs):
        if _is_foldable(layer):
            return _call_folded(layer, args[0], form)
        return layer(*args, **kwargs)

    return clone_with_weights(
        model,
        clone_layer,
        call_layer,
        weights=lambda source, layer: None if _is_foldable(source) else source.get_weights(),
    )


def clone_with_weights(model, clone_function, call_function=None, weights=None):
    """keras.models.clone_model(model, clone_function, call_function=...), then each new layer with weights
    gets those of the same-named layer of `model`: the one clone-and-copy of every model rewrite.

    Args:
      weights: (source layer, new layer) -> list of arrays, or None to leave the new layer as it is
        (default: source.get_weights()). Layers the clone shares with `model`, and layers without weights
        or without a same-named source, are left alone.
    """
    clone = keras.models.clone_model(model, clone_function=clone_function, call_function=call_function)
    originals = {layer.name: layer for layer in model.layers}
    for layer in clone.layers:
        source = originals.get(layer.name)
        if source is None or source is layer or not source.weights:
            continue
        values = source.get_weights() if weights is None else weights(source, layer)
        if values is not None:
            layer.set_weights(list(values))
    return clone
