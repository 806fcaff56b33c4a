"""TFLite export of builtin ops only, validated with tf.lite.Interpreter: the library behind
`python -m export.tflite` (see export/tflite/__main__.py): `export(model, path, ...) -> report`.
"""

import math
import os
import sys
import tempfile

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from cost_tf import loading
from cost_tf.cost import CoST
from export import parity, saved_model
from pipelines import files, preprocess

QUANTIZE = ("none", "float16", "dynamic")
CLIP_KEY = "serving_default"
FRAMES_KEY = "frames"
INPUT_NAME = "clip"
FRAMES_NAME = "frames"
OUTPUT_NAME = "logits"
# Largest accepted max relative error vs Keras (see export.parity) per --quantize. float16 weights are
# dequantised to float32 at load, so only their rounding (2^-11 relative) counts; "dynamic" quantises the
# weights to int8 per channel AND the activations to int8 at run time. Measured on cost_b_tiny with random
# BatchNorm statistics (random clip): float16 6.6e-4, dynamic 6.7e-3 (1.3e-2 on the uint8 frames signature).
QUANTIZED_TOLERANCE = {"none": parity.TOLERANCE, "float16": 1e-2, "dynamic": 1e-1}


class ConversionError(RuntimeError):
    """The TFLite converter failed, or produced ops the stock interpreter cannot run."""


# --- lowering: the model as TFLite builtin ops --------------------------------------------------------


def _same_pads(size, kernel, stride, dilation):
    """(before, after) zero padding of TF 'SAME' for one static dimension."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _out_size(padded, kernel, stride, dilation):
    return (padded - (kernel - 1) * dilation - 1) // stride + 1


def _frames(x, start, count, stride):
    """Frames start, start + stride, ... (count of them) of x (N, T, H, W, C) as one batch (N * count, H, W, C)."""
    n, t, h, w, c = x.shape
    if (start, stride, count) != (0, 1, t):  # a slice of everything would stay in the graph as a copy
        x = x[:, start : start + (count - 1) * stride + 1 : stride]
    return tf.reshape(x, (n * count, h, w, c))


def _tap_parts(kernel):
    """A (kh, kw, Ci, Co) numpy kernel as [(row0, col0, part)]: the dense kernel at (0, 0), or for a kernel
    that is zero outside its middle row and column its (1, kw) row and (kh, 1) column (centre in the row)."""
    kh, kw = kernel.shape[:2]
    if kh % 2 == 0 or kw % 2 == 0 or (kh, kw) == (1, 1):
        return [(0, 0, kernel)]
    mh, mw = kh // 2, kw // 2
    outside = kernel.copy()
    outside[mh] = 0
    outside[:, mw] = 0
    if np.any(outside):
        return [(0, 0, kernel)]
    row = kernel[mh : mh + 1]
    col = kernel[:, mw : mw + 1].copy()
    col[mh] = 0
    parts = [(mh, 0, row)] if np.any(row) else []
    if np.any(col):
        parts.append((0, mw, col))
    return parts


def frame_conv3d(x, kernel, bias, strides, dilation, padding):
    """A 3D convolution as 2D convolutions over frames: sum over temporal taps i of CONV_2D(frames t*st + i*dt).

    Args:
      x: static-shape float tensor (N, T, H, W, Ci).
      kernel: numpy (kt, kh, kw, Ci, Co); all-zero temporal taps are skipped, plus-shaped ones split
        (`_tap_parts`).
      bias: numpy (Co,) or None.
      strides, dilation: (t, h, w) ints.
      padding: "same" or "valid" (TF semantics, per dimension).
    Returns:
      (N, T', H', W', Co), equal to keras.layers.Conv3D's output up to float32 summation order.
    """
    n, t, h, w, c = x.shape
    kt, kh, kw = kernel.shape[:3]
    (st, sh, sw), (dt, dh, dw) = strides, dilation
    pads = [(0, 0), (0, 0), (0, 0)]
    if padding == "same":
        pads = [
            _same_pads(s, k, stride, d)
            for s, k, stride, d in zip((t, h, w), (kt, kh, kw), strides, dilation, strict=True)
        ]
    out_t, out_h, out_w = (
        _out_size(s + sum(p), k, stride, d)
        for s, p, k, stride, d in zip((t, h, w), pads, (kt, kh, kw), strides, dilation, strict=True)
    )
    if min(out_t, out_h, out_w) < 1:
        raise ValueError(f"Conv3D kernel {(kt, kh, kw)} does not fit the input {x.shape}.")
    taps = [(i, _tap_parts(kernel[i])) for i in range(kt) if np.any(kernel[i])]
    dense = all(len(parts) == 1 and parts[0][2].shape[:2] == (kh, kw) for _, parts in taps)
    # Dense taps let CONV_2D pad spatially itself; split taps slice a padded input, so pad it once.
    spatial_pad = padding == "same" and not dense
    if pads[0] != (0, 0) or spatial_pad:
        x = tf.pad(
            x,
            [(0, 0), pads[0], pads[1] if spatial_pad else (0, 0), pads[2] if spatial_pad else (0, 0), (0, 0)],
        )
    total = None
    for i, parts in taps or [(0, [(0, 0, kernel[0])])]:
        frames = _frames(x, i * dt, out_t, st)
        for row0, col0, part in parts:
            if spatial_pad or len(parts) > 1 or part.shape[:2] != (kh, kw):
                ph, pw = part.shape[:2]
                rows = row0 * dh, row0 * dh + (out_h - 1) * sh + (ph - 1) * dh + 1
                cols = col0 * dw, col0 * dw + (out_w - 1) * sw + (pw - 1) * dw + 1
                y = tf.nn.conv2d(
                    frames[:, rows[0] : rows[1], cols[0] : cols[1]],
                    part,
                    (sh, sw),
                    "VALID",
                    dilations=(dh, dw),
                )
            else:
                y = tf.nn.conv2d(frames, part, (sh, sw), padding.upper(), dilations=(dh, dw))
            total = y if total is None else total + y
    if bias is not None:
        total = tf.nn.bias_add(total, bias)
    return tf.reshape(total, (n, out_t) + tuple(total.shape[1:]))


def frame_max_pool3d(x, pool_size, strides, padding):
    """MaxPooling3D as MAX_POOL_2D over frames, one per temporal tap, combined with MAXIMUM."""
    n, t, h, w, c = x.shape
    pt, st = pool_size[0], strides[0]
    if padding == "same":
        before, after = _same_pads(t, pt, st, 1)
        if before or after:
            x = tf.pad(x, [(0, 0), (before, after), (0, 0), (0, 0), (0, 0)], constant_values=x.dtype.min)
    out_t = _out_size(x.shape[1], pt, st, 1)
    out = None
    for i in range(pt):
        y = tf.nn.max_pool2d(_frames(x, i, out_t, st), pool_size[1:], strides[1:], padding.upper())
        out = y if out is None else tf.maximum(out, y)
    return tf.reshape(out, (n, out_t) + tuple(out.shape[1:]))


def cost_b_frames(layer, x):
    """CoST(b) with its three views as 2D convolutions over frames (cost_tf.cost's "frames" implementation)."""
    kernel = ops.cast(layer.kernel, layer.compute_dtype)
    views = layer._frame_views(x, kernel)
    coeffs = layer._predict_coefficients(views)  # (N, 3, C)
    n, c = coeffs.shape[0], coeffs.shape[2]
    # Each view's (N, C) weights reshaped to (N, 1, 1, 1, C): an indexing with new axes becomes a
    # STRIDED_SLICE of rank 6 in TFLite, which it cannot run.
    out = sum(tf.reshape(coeffs[:, i], (n, 1, 1, 1, c)) * v for i, v in enumerate(views))
    if layer.use_bias:
        out = out + layer.bias
    return out


def _numpy(variable):
    return np.asarray(keras.ops.convert_to_numpy(variable))


@keras.saving.register_keras_serializable(package="export")
class Lowered(keras.layers.Layer):
    """One layer of the deployed model run with TFLite builtin ops (see the module docstring).

    Convolution and BatchNorm weights are read once, as numpy constants (the converter freezes them anyway),
    so that zero taps are found and skipped.
    """

    def __init__(self, layer, **kwargs):
        super().__init__(name=layer.name, dtype=layer.dtype_policy, **kwargs)
        self.kind = type(layer).__name__
        self.inner = layer
        self.constants = None
        if isinstance(layer, keras.layers.Conv3D):
            self.constants = (_numpy(layer.kernel), _numpy(layer.bias) if layer.use_bias else None)
        elif isinstance(layer, keras.layers.BatchNormalization):
            scale = _numpy(layer.gamma) if layer.scale else 1.0
            scale = scale / np.sqrt(_numpy(layer.moving_variance) + layer.epsilon)
            shift = (_numpy(layer.beta) if layer.center else 0.0) - _numpy(layer.moving_mean) * scale
            self.constants = (scale.astype(np.float32), shift.astype(np.float32))

    def call(self, x):
        layer = self.inner
        if isinstance(layer, keras.layers.Conv3D):
            kernel, bias = self.constants
            out = frame_conv3d(x, kernel, bias, layer.strides, layer.dilation_rate, layer.padding)
            return layer.activation(out)
        if isinstance(layer, keras.layers.MaxPooling3D):
            return frame_max_pool3d(x, layer.pool_size, layer.strides, layer.padding)
        if isinstance(layer, CoST):
            return cost_b_frames(layer, x)
        if isinstance(layer, keras.layers.BatchNormalization):
            scale, shift = self.constants
            return x * scale + shift
        if isinstance(layer, keras.layers.GlobalAveragePooling3D):
            n, *spatial, c = x.shape
            return tf.reduce_mean(tf.reshape(x, (n, math.prod(spatial), c)), axis=1)
        raise ValueError(f"No TFLite lowering for layer {layer.name!r} ({self.kind}).")

    def compute_output_shape(self, input_shape):
        return self.inner.compute_output_shape(input_shape)


def _needs_lowering(layer):
    if isinstance(
        layer, (keras.layers.Conv3D, keras.layers.MaxPooling3D, keras.layers.GlobalAveragePooling3D)
    ):
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ValueError(
                f"TFLite export needs channels_last layers. Received: {layer.name} "
                f"data_format={layer.data_format!r}"
            )
        if isinstance(layer, keras.layers.Conv3D) and layer.groups != 1:
            raise ValueError(
                f"TFLite export has no grouped Conv3D. Received: {layer.name} groups={layer.groups}"
            )
        return not (isinstance(layer, keras.layers.GlobalAveragePooling3D) and layer.keepdims)
    if isinstance(layer, CoST):
        if layer.variant != "b":
            raise ValueError(
                f"CoST(a) layer {layer.name!r} must be folded first (export.parity.fold_for_inference)."
            )
        return True
    return isinstance(layer, keras.layers.BatchNormalization) and layer.axis in (-1, 4, [4], [-1])


def lower(model, batch_size=1):
    """`model` on a static (batch_size, T, S, S, 3) input with `Lowered` layers: TFLite builtin ops only.

    Args:
      model: functional model with static T and crop, already folded (export.parity.fold_for_inference).
      batch_size: the static batch of the TFLite graph.
    Returns:
      A functional Keras model with the same outputs up to float32 rounding.
    """
    shape = tuple(model.input_shape)
    if None in shape[1:]:
        raise ValueError(f"TFLite export needs a static clip shape (T, crop, crop, 3). Received: {shape}")
    new_input = keras.Input(batch_shape=(batch_size,) + shape[1:], name=model.inputs[0].name)

    def call_layer(layer, *args, **kwargs):
        if _needs_lowering(layer):
            return Lowered(layer)(args[0])
        kwargs.pop("training", None)
        return layer(*args, **kwargs)

    return keras.models.clone_model(
        model, input_tensors=new_input, clone_function=lambda layer: layer, call_function=call_layer
    )


# --- conversion and validation ------------------------------------------------------------------------


def default_frame_size(crop_size):
    """(H, W) of the `frames` signature by default: the eval resize's short side, squared (256x256 for 224)."""
    side = preprocess.eval_short_side(crop_size)
    return side, side


def frames_to_clip(frames, crop_size):
    """uint8 (N, T, H, W, 3) with static H, W -> float32 clip (N, T, crop, crop, 3): the eval view as
    export.saved_model's serving_default computes it (resize short side to round(crop * 8 / 7), bilinear,
    half-pixel centres, centre crop, ImageNet normalisation), with every size a Python int."""
    n, t, h, w, _ = frames.shape
    short = preprocess.eval_short_side(crop_size)
    new_h, new_w = (short, round(w * short / h)) if h <= w else (round(h * short / w), short)
    images = tf.reshape(tf.cast(frames, tf.float32), (n * t, h, w, 3))
    images = tf.image.resize(images, (new_h, new_w), method="bilinear")
    y, x = (new_h - crop_size) // 2, (new_w - crop_size) // 2
    images = images[:, y : y + crop_size, x : x + crop_size]
    scale = np.array([1.0 / (255.0 * s) for s in preprocess.STD], np.float32)
    offset = np.array([m / s for m, s in zip(preprocess.MEAN, preprocess.STD, strict=True)], np.float32)
    return tf.reshape(images * scale - offset, (n, t, crop_size, crop_size, 3))


def _module(lowered, frame_size, crop_size):
    """A tf.Module with the two signatures (module docstring) around the lowered model."""
    batch, frames_t = lowered.input_shape[:2]

    def logits(clip):
        return {OUTPUT_NAME: tf.cast(lowered(clip), tf.float32)}

    clip_fn = tf.function(logits, autograph=False).get_concrete_function(
        tf.TensorSpec((batch, frames_t, crop_size, crop_size, 3), tf.float32, name=INPUT_NAME)
    )

    def from_frames(frames):
        # A call of the clip function, not a second trace of the model: the weights (graph constants) are
        # stored once in the SavedModel, which the converter loads.
        return clip_fn(frames_to_clip(frames, crop_size))

    signatures = {
        CLIP_KEY: clip_fn,
        FRAMES_KEY: tf.function(from_frames, autograph=False).get_concrete_function(
            tf.TensorSpec((batch, frames_t) + tuple(frame_size) + (3,), tf.uint8, name=FRAMES_NAME)
        ),
    }
    module = tf.Module()
    module.model_variables = saved_model.tracked_variables(signatures.values())
    return module, signatures


def save_lowered(lowered, path, frame_size, crop_size):
    """Writes the lowered model's two signatures (module docstring) as a SavedModel at `path`."""
    module, signatures = _module(lowered, frame_size, crop_size)
    tf.saved_model.save(module, path, signatures=signatures)


def convert_saved_model(path, quantize="none"):
    """TFLite flatbuffer bytes of a `save_lowered` SavedModel's two signatures, builtin ops only."""
    converter = tf.lite.TFLiteConverter.from_saved_model(path, signature_keys=[CLIP_KEY, FRAMES_KEY])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]  # no SELECT_TF_OPS (Flex)
    if quantize != "none":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # alone: dynamic-range int8
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    try:
        return converter.convert()
    except Exception as e:  # the converter's errors (ConverterError, ...) name the TF ops it could not map
        raise ConversionError(f"The TFLite converter failed: {type(e).__name__}: {e}") from e


def convert(lowered, frame_size, crop_size, quantize="none"):
    """TFLite flatbuffer bytes of the lowered model's two signatures, in this process."""
    with tempfile.TemporaryDirectory(prefix="tflite-export-") as scratch:
        save_lowered(lowered, scratch, frame_size, crop_size)
        return convert_saved_model(scratch, quantize)


def _stage_save(keras_path, saved_model_dir, batch_size, frame_h, frame_w):
    """Child process 1 of an isolated export: .keras -> fold -> lower -> SavedModel."""
    model = loading.load_model(keras_path)
    lowered = lower(parity.fold_for_inference(model, "merged"), int(batch_size))
    save_lowered(lowered, saved_model_dir, (int(frame_h), int(frame_w)), int(model.input_shape[2]))


def _stage_convert(saved_model_dir, quantize, output):
    """Child process 2 of an isolated export: SavedModel -> TFLite bytes at `output`."""
    with open(output, "wb") as f:
        f.write(convert_saved_model(saved_model_dir, quantize))


def _run_stage(stage, *args):
    """Runs `_stage_<stage>(*args)` in a fresh Python process; ConversionError with its log tail if it fails."""
    import subprocess

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
        PYTHONPATH=os.pathsep.join(
            [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        ),
    )
    code = f"import sys; from export import tflite; tflite._stage_{stage}(*sys.argv[1:])"
    result = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
    )
    if result.returncode != 0:
        lines = [line for line in result.stdout.splitlines() if "cuda" not in line.lower()]
        error = [line for line in lines if "Error" in line] or lines
        raise ConversionError(
            f"TFLite export stage {stage!r} failed (exit status {result.returncode}): "
            f"{error[-1] if error else ''}\n--- last lines ---\n" + "\n".join(lines[-15:])
        )


def convert_isolated(reference, frame_size, batch_size, quantize, scratch):
    """TFLite bytes of `reference` (unfolded, at its export shape), built in two child processes so that this
    process never holds the converter's copies: lowering + SavedModel, then the converter (c2d_r50 here: 6.3 GB
    in one process, the converter alone +2.6 GB)."""
    keras_path = os.path.join(scratch, "model.keras")
    reference.save(keras_path)
    saved_model_dir = os.path.join(scratch, "saved_model")
    _run_stage("save", keras_path, saved_model_dir, batch_size, *frame_size)
    output = os.path.join(scratch, "model.tflite")
    _run_stage("convert", saved_model_dir, quantize, output)
    with open(output, "rb") as f:
        return f.read()


def builtin_only_ops(content):
    """{signature key: {op name: count}} of a TFLite flatbuffer, read from the file itself (every subgraph);
    ConversionError naming them if any op is a custom op (Flex ops are custom ops "Flex<TF op>")."""
    from tensorflow.lite.python import schema_py_generated as schema

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if name.isupper()}
    model = schema.Model.GetRootAsModel(content, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())  # small codes live in the old field
        custom = code.CustomCode()
        codes.append(
            custom.decode() if builtin == schema.BuiltinOperator.CUSTOM else names.get(builtin, str(builtin))
        )
    custom = sorted(
        {codes[i] for i in range(len(codes)) if codes[i] not in names.values() or codes[i] == "CUSTOM"}
    )
    if custom:
        raise ConversionError(f"The TFLite graph has ops that are not TFLite builtins: {custom}")
    ops_per_signature = {}
    for i in range(model.SignatureDefsLength()):
        signature = model.SignatureDefs(i)
        graph = model.Subgraphs(signature.SubgraphIndex())
        counts = {}
        for j in range(graph.OperatorsLength()):
            name = codes[graph.Operators(j).OpcodeIndex()]
            counts[name] = counts.get(name, 0) + 1
        ops_per_signature[signature.SignatureKey().decode()] = dict(sorted(counts.items()))
    return ops_per_signature


def load_interpreter(path, num_threads=None):
    """The stock tf.lite.Interpreter on `path` with builtin ops only (XNNPACK default delegate, no Flex)."""
    interpreter = tf.lite.Interpreter(
        model_path=os.fspath(path),
        num_threads=num_threads,
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN,
    )
    return interpreter


def run_signature(interpreter, inputs, signature=CLIP_KEY):
    """Runs one signature of a loaded interpreter on a numpy array; returns the logits.

    Raises ValueError naming the expected and received shape (T = frames) before anything runs when the
    array does not have the exported shape: the graph is static.
    """
    runner = interpreter.get_signature_runner(signature)
    ((name, detail),) = runner.get_input_details().items()
    expected = tuple(int(d) for d in detail["shape"])
    inputs = np.asarray(inputs)
    if inputs.shape != expected:
        what = ""
        if inputs.ndim == 5 and inputs.shape[1] != expected[1]:
            what = f"expects clips of T={expected[1]} frames, received T={inputs.shape[1]}: "
        raise ValueError(
            f"TFLite signature {signature!r} {what}input {name!r} must have shape {expected} "
            f"(exported so; export again for another shape). Received: shape={inputs.shape}"
        )
    if inputs.dtype != detail["dtype"]:
        raise ValueError(
            f"TFLite signature {signature!r}: input {name!r} must be {np.dtype(detail['dtype'])}. "
            f"Received: dtype={inputs.dtype}"
        )
    return runner(**{name: inputs})[OUTPUT_NAME]


def _check_output(output, quantize):
    if quantize not in QUANTIZE:
        raise ValueError(f"quantize must be one of {QUANTIZE}. Received: quantize={quantize!r}")
    return parity.check_output_path(output, ".tflite")


def export(
    model,
    output,
    quantize="none",
    num_frames=None,
    crop_size=None,
    frame_size=None,
    batch_size=1,
    tolerance=None,
    isolate=True,
):
    """Converts a Keras model to a validated TFLite file of builtin ops; returns a report dict.

    Args:
      model: functional Keras model on clips (N, T, H, W, 3) -> logits (N, C).
      output: destination .tflite path; written only once validated (temp name, then rename).
      quantize: "none" (float32), "float16" (float16 weights) or "dynamic" (int8 weights, dynamic-range).
      num_frames: T of the graph; None keeps the model's (TFLite graphs are static: 0 is not accepted).
      crop_size: input side; None keeps the model's.
      frame_size: (H, W) of the uint8 `frames` signature; None: `default_frame_size(crop_size)`.
      batch_size: static batch of both signatures.
      tolerance: largest accepted max relative error vs Keras; None: QUANTIZED_TOLERANCE[quantize].
      isolate: lower, save and convert in child processes (`convert_isolated`: bounded memory here, ~20 s
        more for the two Python starts); False: all in this process.
    Returns:
      {"path", "quantize", "num_frames", "crop_size", "frame_size", "batch_size", "bytes", "ops" ({signature:
      {op name: count}}), "max_relative_error" (clip signature), "frames_max_relative_error"}.
    Raises:
      ConversionError (converter failure or non-builtin ops), parity.ParityError, ValueError for bad arguments.
    """
    output = _check_output(output, quantize)
    if num_frames == 0:
        raise ValueError(
            "TFLite graphs have a static clip length: pass num_frames=None (the model's) or a T."
        )
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int. Received: batch_size={batch_size!r}")
    reference, frames, crop_size = parity.with_input_shape(model, num_frames, crop_size)
    if frames is None:
        raise ValueError("The model's clip length T is unknown: pass num_frames (TFLite graphs are static).")
    frame_size = tuple(frame_size or default_frame_size(crop_size))
    if len(frame_size) != 2 or min(frame_size) < crop_size:
        raise ValueError(
            f"frame_size must be (H, W) with both >= the crop {crop_size}. Received: {frame_size}"
        )
    tolerance = QUANTIZED_TOLERANCE[quantize] if tolerance is None else tolerance
    if isolate:
        with tempfile.TemporaryDirectory(prefix="tflite-export-") as scratch:
            content = convert_isolated(reference, frame_size, batch_size, quantize, scratch)
    else:
        content = convert(
            lower(parity.fold_for_inference(reference, "merged"), batch_size), frame_size, crop_size, quantize
        )
    # A hidden temporary beside the final name, validated, then renamed (removed on any failure).
    with files.atomic_path(output) as tmp:
        with open(tmp, "wb") as f:
            f.write(content)
        ops_used = builtin_only_ops(content)
        interpreter = load_interpreter(tmp)
        clip = parity.random_clip(batch_size, frames, crop_size)
        error = parity.check_parity(
            run_signature(interpreter, clip),
            np.asarray(reference(clip, training=False)),
            f"tf.lite.Interpreter on {output} ({quantize})",
            tolerance,
        )
        raw = np.random.default_rng(1).integers(
            0, 256, (batch_size, frames) + frame_size + (3,), dtype=np.uint8
        )
        expected = reference(saved_model.preprocess_frames(tf.constant(raw), crop_size), training=False)
        frames_error = parity.check_parity(
            run_signature(interpreter, raw, FRAMES_KEY),
            np.asarray(expected),
            f"tf.lite.Interpreter on {output} '{FRAMES_KEY}' ({quantize})",
            tolerance,
        )
    return {
        "path": output,
        "quantize": quantize,
        "num_frames": frames,
        "crop_size": crop_size,
        "frame_size": frame_size,
        "batch_size": batch_size,
        "bytes": len(content),
        "ops": ops_used,
        "max_relative_error": error,
        "frames_max_relative_error": frames_error,
    }


# --- command line ---
# Flags are defined only when run as a program, so the exporters import into one process (tests, bench)
# without clashing flag names.


def parse_frame_size(text):
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--frame_size must be HxW, e.g. 256x340. Received: --frame_size={text}") from None
    return height, width
