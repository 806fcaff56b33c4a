"""What both exporters share: the model to deploy and parity with Keras (models load with cost_tf.loading).

`export.saved_model` and `export.onnx` both export `fold_for_inference(reference)` and check it against
`reference` (the trained model at the export's input shape) with `check_parity`.
"""

import ctypes
import ctypes.util
import gc
import os

import keras
import numpy as np
import tensorflow as tf

from cost_tf.fold import clone_with_weights
from cost_tf.fold import fold as fold_cost
from export.bn_fold import fold_batchnorm

# Exports are accepted when every output is within this of the Keras model, relative to the largest
# reference value (float32 convolutions summed in another order differ by ~1e-6 here).
TOLERANCE = 1e-4


class ParityError(ValueError):
    """An exported model's outputs differ from the Keras model's by more than the tolerance."""


def max_relative_error(actual, reference):
    """max |actual - reference| / max |reference| (float64); shapes must match exactly.

    Relative to the largest reference value rather than elementwise, so outputs near zero (small logits
    of an untrained model) do not blow the measure up.
    """
    actual = np.asarray(actual, np.float64)
    reference = np.asarray(reference, np.float64)
    if actual.shape != reference.shape:
        raise ParityError(f"Output shapes differ: {actual.shape} vs the reference {reference.shape}.")
    if not np.all(np.isfinite(actual)):
        return float("inf")
    scale = np.max(np.abs(reference)) if reference.size else 0.0
    return (
        float(np.max(np.abs(actual - reference)) / max(scale, np.finfo(np.float32).tiny))
        if actual.size
        else 0.0
    )


def check_parity(actual, reference, what, tolerance=TOLERANCE):
    """Returns the max relative error; raises ParityError naming `what` if it exceeds `tolerance`."""
    error = max_relative_error(actual, reference)
    if not error <= tolerance:
        raise ParityError(
            f"{what}: max relative error {error:.3g} exceeds the tolerance {tolerance:g} "
            "(outputs differ from the Keras model)."
        )
    return error


def release_memory():
    """Frees unreachable Python objects, then hands glibc's free heap pages back to the OS (malloc_trim).

    TF's CPU allocator frees through glibc, which keeps freed pages (an R50 forward pass leaves ~1.2 GB
    resident); an export that runs a converter process next would hold them for its whole run
    (docs/DEPLOY.md, Export memory). A no-op where the C library has no malloc_trim.
    """
    gc.collect()
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reference_logits(model, clip):
    """`model(clip, training=False)` as a numpy array, one clip at a time, run as a tf.function.

    Traced, TF's executor frees each activation after its last use; a functional Keras model called eagerly
    keeps every layer's output until the call returns (cost_a_r101 at 8x224^2: +2.1 GB peak, traced ~+0.4 GB;
    docs/DEPLOY.md, Export memory). Clip by clip: the same outputs (inference is per sample) at a fraction of
    the whole batch's activations. The freed memory is handed back (`release_memory`).
    """
    forward = tf.function(lambda x: model(x, training=False), autograph=False)
    out = np.concatenate([np.asarray(forward(clip[i : i + 1])) for i in range(len(clip))])
    del forward
    release_memory()
    return out


def random_clip(batch, num_frames, size, seed=0):
    """A float32 (batch, num_frames, size, size, 3) clip in the normalised range: standard normal values."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, num_frames, size, size, 3)).astype(np.float32)


def with_input_shape(model, num_frames=None, crop_size=None):
    """The model on clips (N, num_frames, crop_size, crop_size, 3), sharing its layers and weights.

    Args:
      model: functional model with one 5D channels-last input.
      num_frames: None keeps the model's T; 0 accepts any T; else that T.
      crop_size: None keeps the model's H = W; else that size.
    Returns:
      (model, num_frames or None, crop_size): `model` itself when the shape is unchanged.
    """
    shape = tuple(model.input_shape)
    if len(shape) != 5 or shape[-1] != 3:
        raise ValueError(f"Expected a model on clips (N, T, H, W, 3). Received: input_shape={shape}")
    if num_frames is not None and (not isinstance(num_frames, int) or num_frames < 0):
        raise ValueError(
            f"num_frames must be None, 0 (any) or a positive int. Received: num_frames={num_frames!r}"
        )
    if crop_size is not None and (not isinstance(crop_size, int) or crop_size < 1):
        raise ValueError(f"crop_size must be a positive int. Received: crop_size={crop_size!r}")
    frames = shape[1] if num_frames is None else (num_frames or None)
    if crop_size is None:
        if shape[2] is None or shape[2] != shape[3]:
            raise ValueError(f"The model's input is not a fixed square crop ({shape}): pass --crop_size.")
        crop_size = shape[2]
    if (frames, crop_size, crop_size) == shape[1:4]:
        return model, frames, crop_size
    name = model.inputs[0].name
    new_input = keras.Input((frames, crop_size, crop_size, 3), name=name, dtype=model.inputs[0].dtype)
    # Identity clone: the same layers (and weights) called on a clip of the new shape.
    new_input = [new_input] if isinstance(model.input, (list, tuple)) else new_input
    reshaped = keras.models.clone_model(model, input_tensors=new_input, clone_function=lambda layer: layer)
    return reshaped, frames, crop_size


def plain_convolutions(model):
    """The same model with every Conv3D / MaxPooling3D subclass (cost_tf.resnet's FramewiseConv3D and
    FramewiseMaxPooling3D) as the plain Keras layer.

    The framewise layers run 1xkxk kernels/pools as 2D ops over N*T frames (faster gradients in TF); exported,
    that is Reshape/Transpose/Conv/Transpose/Reshape per layer (104 Transposes in an R50 ONNX graph, 1 with
    plain Conv3D). Same weights, same outputs up to float32 rounding. Returns `model` itself if there is none.
    """
    bases = (keras.layers.Conv3D, keras.layers.MaxPooling3D)
    plain_class = {
        layer.name: base
        for layer in model.layers
        for base in bases
        if isinstance(layer, base) and type(layer) is not base
    }
    if not plain_class:
        return model

    def clone_layer(layer):
        return plain_class.get(layer.name, layer.__class__).from_config(layer.get_config())

    return clone_with_weights(model, clone_layer)


def fold_for_inference(model, form="merged"):
    """The model to deploy: CoST(a) -> Conv3D (cost_tf.fold, `form`), BatchNorm -> the conv before it
    (export.bn_fold), Conv3D subclasses -> Conv3D (`plain_convolutions`). Same outputs as `model`.

    The default is the merged form: the BatchNorm after a CoST(a) then folds into its one Conv3D (bn_fold
    does not fold through the Add of the 19-tap form's three convolutions). The ONNX export passes "sparse"
    (tf2onnx folds that BatchNorm itself). The intermediate clones are freed before it returns (Keras models
    hold reference cycles: only the collector frees them; `release_memory`)."""
    folded = plain_convolutions(fold_batchnorm(fold_cost(model, form=form)))
    release_memory()
    return folded


def check_output_path(output, suffix):
    """`output` as a str; ValueError unless it ends with `suffix` and its folder exists."""
    output = os.fspath(output)
    if not output.endswith(suffix):
        raise ValueError(f"output must be a {suffix} path. Received: output={output}")
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise ValueError(f"The output folder does not exist: {out_dir}")
    return output
