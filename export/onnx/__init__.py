"""ONNX export with tf2onnx, validated against Keras with onnxruntime: the library behind `python -m export.onnx`
(see export/onnx/__main__.py): `export(model, path, ...) -> report`, `convert_saved_model`.
"""

import os
import re
import signal
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import tensorflow as tf
from absl import logging

from export import parity, saved_model, tf2onnx_steps
from pipelines import files

OPSETS = tuple(range(13, 19))  # the ONNX opsets tf2onnx 1.17 supports
DEFAULT_OPSET = 17
# The ONNX file's input and output names: the conversion child names them (it imports no project module).
INPUT_NAME, OUTPUT_NAME = tf2onnx_steps.INPUT_NAME, tf2onnx_steps.OUTPUT_NAME
# onnxruntime runs a folded CoST(a) faster as its 19 non-zero taps (three Conv) than as the merged 3x3x3
# kernel (27 taps); TF the other way round, so the SavedModel keeps cost_tf.fold's default form.
# bench/export_bench.py, cost_a_r50 batch 8: ORT CPU time merged / unfolded (the same 19-tap graph) = 1.27.
FOLD_FORM = "sparse"
CATCH_ERRORS_ENV = "TF2ONNX_CATCH_ERRORS"
PROTOBUF_ENV = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"


class ConversionError(RuntimeError):
    """tf2onnx could not convert the model (unsupported op, converter failure or crash)."""


def _save_frozen_logits_graph(model, path, num_frames, crop_size):
    """Freezes clip float32 (N, T, crop, crop, 3) -> logits as tf2onnx's SavedModel path does (variables
    become constants, functions inlined) and writes the GraphDef to `path`; returns (input, output) tensor
    names.

    Freezing here, while this process holds the model anyway, spares the tf2onnx process loading a SavedModel
    and freezing it. Only the frozen GraphDef is built: TF's convert_variables_to_constants_v2 would also
    import it into a new concrete function (and its eager function library), several more copies of the
    weights that nothing here uses (cost_a_r101: 3.41 -> 2.2 GB peak; docs/DEPLOY.md, Export memory). The
    same two steps as convert_variables_to_constants_v2 before that import (and as tf2onnx's own
    large-model freezing, tf2onnx.tf_loader.convert_variables_to_constants_large_model).
    """
    from tensorflow.python.framework import convert_to_constants

    concrete = tf.function(
        lambda clip: tf.cast(model(clip, training=False), tf.float32), autograph=False
    ).get_concrete_function(
        tf.TensorSpec((None, num_frames, crop_size, crop_size, 3), tf.float32, name=INPUT_NAME)
    )
    converter_data = convert_to_constants._FunctionConverterDataInEager(
        func=concrete, lower_control_flow=False, aggressive_inlining=True
    )
    graph_def, _ = convert_to_constants._replace_variables_by_constants(converter_data=converter_data)
    del converter_data
    with open(path, "wb") as f:
        f.write(graph_def.SerializeToString())
    return concrete.inputs[0].name, concrete.outputs[0].name


def converter_command(saved_model_dir, output, opset, signature="serving_default"):
    """The tf2onnx command line run in the child process (on a SavedModel signature)."""
    return _tf2onnx_command(
        ["--saved-model", saved_model_dir, "--tag", "serve", "--signature_def", signature], output, opset
    )


def _tf2onnx_command(source, output, opset):
    return [sys.executable, "-m", "tf2onnx.convert", *source, "--opset", str(opset), "--output", output]


def split_commands(graph_def_path, input_name, output_name, output, opset):
    """The two child command lines of `export` on a frozen GraphDef (export/tf2onnx_steps.py): tf2onnx's
    grappler pass, then its conversion of the optimised graph, inputs renamed INPUT_NAME / OUTPUT_NAME."""
    # `python -c` as export.tflite's stages: tf2onnx_steps is a library module (no main block).
    step = [
        sys.executable,
        "-c",
        "import sys; from export import tf2onnx_steps; tf2onnx_steps.main(sys.argv)",
    ]
    optimized = graph_def_path + ".optimized.pb"
    return [
        step + ["grappler", graph_def_path, input_name, output_name, optimized],
        step + ["convert", optimized, output, str(opset)],
    ]


def _layers_named(text, layer_names):
    """Keras layer names that appear as a scope in TF node names of `text` (e.g. ".../conv2_block1_2_conv_1/Mul")."""
    found = []
    for scope in re.findall(r"[\w.\-]+(?:/[\w.\-]+)+", text):
        for part in scope.split("/"):
            for name in (part, re.sub(r"_\d+$", "", part)):
                if name in layer_names and name not in found:
                    found.append(name)
    return found


def _is_noise(line):
    # TF's start-up lines on a machine without CUDA are logged as errors but mean nothing here.
    return "cuInit" in line or "cuda" in line.lower()


def failure_message(returncode, log, layer_names, tail_lines=15):
    """A readable reason for a failed tf2onnx run, naming the Keras layers its log mentions."""
    if returncode < 0:
        try:
            what = f"tf2onnx crashed ({signal.Signals(-returncode).name})"
        except ValueError:
            what = f"tf2onnx crashed (signal {-returncode})"
    elif returncode > 0:
        what = f"tf2onnx failed (exit status {returncode})"
    else:
        what = "tf2onnx could not convert every op"
    lines = [line for line in log.splitlines() if not _is_noise(line)]
    unsupported = re.findall(r"Tensorflow op \[([^\]]+?): ([^\]]+?)\] is not supported", log)
    if unsupported:
        reasons = [f"unsupported TF ops {sorted({op for _, op in unsupported})}"]
        layers = _layers_named(" ".join(node for node, _ in unsupported), layer_names)
    else:
        key = [line for line in lines if "Check failed" in line] or [
            line for line in lines if re.search(r" - ERROR - |Error\b|Exception\b", line)
        ]
        reasons = [line.strip() for line in key[-3:]]
        layers = _layers_named("\n".join(key), layer_names)
    if "MulConvPushDown" in log:
        reasons.append(
            "TF's grappler pass MulConvPushDown failed on a multiply after a convolution: put "
            "per-channel factors into the kernel instead of onto the conv output"
        )
    message = what
    if layers:
        message += f" in layer(s) {', '.join(layers)}"
    if reasons:
        message += ": " + "; ".join(reasons)
    return message + "\n--- last lines of the tf2onnx log ---\n" + "\n".join(lines[-tail_lines:])


def _name_dynamic_dims(path):
    """Names the dynamic input/output dims "batch" (and "frames") instead of tf2onnx's unk__N; checks the model.

    Returns the input's (T or None, crop size).
    """
    proto = onnx.load(path)
    inputs = {value.name: value for value in proto.graph.input}
    outputs = {value.name: value for value in proto.graph.output}
    if set(inputs) != {INPUT_NAME} or set(outputs) != {OUTPUT_NAME}:
        raise ValueError(
            f"Expected one input {INPUT_NAME!r} and one output {OUTPUT_NAME!r} (a clip -> logits "
            f"signature). Received: inputs {sorted(inputs)}, outputs {sorted(outputs)}"
        )
    dims = inputs[INPUT_NAME].type.tensor_type.shape.dim
    if len(dims) != 5 or not dims[2].HasField("dim_value") or dims[2].dim_value != dims[3].dim_value:
        raise ValueError(f"Expected a clip input (batch, T, crop, crop, 3). Received: {dims}")
    for value in (inputs[INPUT_NAME], outputs[OUTPUT_NAME]):
        value.type.tensor_type.shape.dim[0].dim_param = "batch"
    frames = dims[1].dim_value if dims[1].HasField("dim_value") else None
    if frames is None:
        dims[1].dim_param = "frames"
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return frames, dims[2].dim_value


def run_onnxruntime(path, clip):
    """Logits of the ONNX model at `path` for a float32 clip, on the CPU provider."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: np.asarray(clip, np.float32)})[0]


def _check_output(output, opset):
    if opset not in OPSETS:
        raise ValueError(f"opset must be one of {OPSETS} (tf2onnx 1.17). Received: opset={opset!r}")
    return parity.check_output_path(output, ".onnx")


def convert_saved_model(
    saved_model_dir,
    output,
    opset=DEFAULT_OPSET,
    signature="serving_default",
    reference=None,
    layer_names=(),
    tolerance=parity.TOLERANCE,
    timeout=None,
    check_frames=None,
):
    """Converts one clip -> logits signature of a SavedModel to a validated ONNX file; returns a report dict.

    E.g. the `logits` signature of an `export.saved_model` version folder.

    Args:
      saved_model_dir: SavedModel folder.
      output: destination .onnx path; written only once validated (temp name, then rename).
      opset: ONNX opset, one of OPSETS.
      signature: signature taking `clip` float32 (N, T, crop, crop, 3) and returning `logits`.
      reference: callable float32 clip -> logits that onnxruntime must match; None: the signature itself.
      layer_names: Keras layer names to look for in tf2onnx's log when it fails.
      tolerance: largest accepted max relative error (see export.parity).
      timeout: seconds allowed for the tf2onnx process (None: no limit).
      check_frames: T of the validation clip when the input's T is dynamic (None: 4).
    Returns:
      {"path", "opset", "num_frames" (None: dynamic), "crop_size", "max_relative_error"}.
    Raises:
      ConversionError (tf2onnx failed or crashed; names the layer when its log does), parity.ParityError,
      ValueError for bad arguments.
    """
    output = _check_output(output, opset)
    saved_model_dir = os.fspath(saved_model_dir)
    if not os.path.isfile(os.path.join(saved_model_dir, "saved_model.pb")):
        raise ValueError(f"Not a SavedModel folder (no saved_model.pb): {saved_model_dir}")
    if reference is None:

        def reference(clip):
            return saved_model.run_signature(saved_model_dir, signature, {INPUT_NAME: clip})[OUTPUT_NAME]

        what = f"{saved_model_dir} '{signature}'"
    else:
        what = "the Keras model"
    return _convert(
        lambda tmp: [converter_command(saved_model_dir, tmp, opset, signature)],
        output,
        opset,
        reference,
        what,
        layer_names,
        tolerance,
        timeout,
        check_frames,
    )


def _convert(commands, output, opset, reference, what, layer_names, tolerance, timeout, check_frames):
    """Runs the tf2onnx command lines `commands(temporary output)`, each in its own child process and in
    order, then validates and renames. `timeout` applies to each."""
    # tf2onnx deep-copies the whole ONNX graph, weights included, before each of its optimizer passes (to
    # restore it if a pass fails), and those copies pile up (session 4: cost_a_r50 over 7 GB in that phase).
    # Any value of this variable turns the copies off (tf2onnx 1.17 compares the variable's name, not its
    # value, with "TRUE"); a failing pass then fails the conversion, reported below.
    # Pure-Python protobuf in the child: with the default upb backend every optimizer pass rewrites each
    # node's attributes into the node's protobuf arena, which frees nothing until the graph is gone, so each
    # of tf2onnx's ~24 passes leaked a full copy of the weights (cost_a_r50: +120 MB a pass, tf2onnx's peak
    # 4.71 -> 2.91 GB with this; docs/DEPLOY.md, Export memory). tf2onnx warns that it is slower: ~8 s here.
    env = dict(
        os.environ,
        TF_CPP_MIN_LOG_LEVEL="1",
        **{CATCH_ERRORS_ENV: "FALSE", PROTOBUF_ENV: "python"},
    )
    # A hidden temporary beside the final name, validated, then renamed (removed on any failure).
    with files.atomic_path(output) as tmp_onnx:
        for argv in commands(tmp_onnx):
            try:
                result = subprocess.run(
                    argv,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                    errors="replace",
                    env=env,
                    timeout=timeout,
                )
            except subprocess.TimeoutExpired as e:
                raise ConversionError(f"tf2onnx did not finish within {timeout} s.") from e
            # tf2onnx exits 0 after logging unsupported ops, leaving TF ops in the graph: a failure too.
            if result.returncode != 0 or " - ERROR - " in result.stdout:
                raise ConversionError(failure_message(result.returncode, result.stdout, set(layer_names)))
        if not os.path.isfile(tmp_onnx):
            raise ConversionError(failure_message(result.returncode, result.stdout, set(layer_names)))
        try:
            frames, crop_size = _name_dynamic_dims(tmp_onnx)
        except onnx.checker.ValidationError as e:
            layers = _layers_named(str(e), set(layer_names))
            where = f" in layer(s) {', '.join(layers)}" if layers else ""
            raise ConversionError(f"tf2onnx wrote an invalid ONNX model{where}: {e}") from e
        parity.release_memory()  # the ONNX protos _name_dynamic_dims loaded, checked and saved
        clip = parity.random_clip(2, frames or check_frames or 4, crop_size)
        expected = np.asarray(reference(clip))
        error = parity.check_parity(
            run_onnxruntime(tmp_onnx, clip), expected, f"onnxruntime on {output} vs {what}", tolerance
        )
    return {
        "path": output,
        "opset": opset,
        "num_frames": frames,
        "crop_size": crop_size,
        "max_relative_error": error,
    }


def choose_num_frames(model, num_frames=None, crop_size=None):
    """The `num_frames` to export: as given, or for None 0 (dynamic T) if the model runs at another clip
    length than its own (probed on a random clip of T + 1 frames), else None (keep the model's T)."""
    if num_frames is not None:
        return num_frames
    own = model.input_shape[1]
    try:
        reshaped, _, crop_size = parity.with_input_shape(model, 0, crop_size)
        parity.reference_logits(reshaped, parity.random_clip(1, (own or 4) + 1, crop_size))
    except Exception as e:  # any failure means "not at another T"
        logging.warning(
            "Exporting with T=%s: the model does not run at another clip length (%s: %s)",
            own,
            type(e).__name__,
            e,
        )
        return None
    finally:
        parity.release_memory()  # the probe's activations stay resident otherwise
    return 0


def export(
    model,
    output,
    opset=DEFAULT_OPSET,
    fold=True,
    num_frames=None,
    crop_size=None,
    tolerance=parity.TOLERANCE,
    timeout=None,
):
    """Converts a Keras model to an ONNX file at `output`, validated with onnxruntime; returns a report dict.

    Args:
      model: functional Keras model on clips (N, T, H, W, 3) -> logits (N, C).
      output: destination .onnx path; written only once validated (temp name, then rename).
      opset: ONNX opset, one of OPSETS.
      fold: fold CoST(a) into Conv3D (in FOLD_FORM) and BatchNorm into the preceding conv where exact.
        Either way Conv3D subclasses are exported as plain Conv3D (export.parity.plain_convolutions).
      num_frames: None: T dynamic where the model allows it (`choose_num_frames`), else the model's;
        0: dynamic T; else that T.
      crop_size: input side; None keeps the model's.
      tolerance: largest accepted max relative error of onnxruntime vs the unfolded Keras model.
      timeout: seconds allowed for the tf2onnx process (None: no limit).
    Returns:
      {"path", "opset", "folded", "num_frames" (None: dynamic), "crop_size", "max_relative_error"}.
    Raises:
      As `convert_saved_model`.
    """
    output = _check_output(output, opset)
    own_frames = model.input_shape[1]
    reference, frames, crop_size = parity.with_input_shape(
        model, choose_num_frames(model, num_frames, crop_size), crop_size
    )
    # The Keras outputs for the validation clip (the one convert_saved_model makes) are computed first, before
    # the folded copy exists, so that neither its activations nor that copy add to another stage's memory
    # (the peak is this process and tf2onnx's together; docs/DEPLOY.md, Export memory).
    check_clip = parity.random_clip(2, frames or own_frames or 4, crop_size)
    expected = parity.reference_logits(reference, check_clip)
    deployed = (
        parity.fold_for_inference(reference, FOLD_FORM) if fold else parity.plain_convolutions(reference)
    )
    layer_names = {layer.name for layer in reference.layers} | {layer.name for layer in deployed.layers}

    def keras_logits(clip):
        if clip.shape != check_clip.shape or not np.array_equal(clip, check_clip):
            return parity.reference_logits(reference, clip)
        return expected

    with tempfile.TemporaryDirectory(prefix="onnx-export-") as scratch:
        graph_def = os.path.join(scratch, "frozen.pb")
        names = _save_frozen_logits_graph(deployed, graph_def, frames, crop_size)
        del deployed
        parity.release_memory()
        report = _convert(
            lambda tmp: split_commands(graph_def, *names, tmp, opset),
            output,
            opset,
            keras_logits,
            "the Keras model",
            layer_names,
            tolerance,
            timeout,
            own_frames,
        )
    report["folded"] = bool(fold)
    return report


# --- command line ---
# Flags are defined only when run as a program, so both exporters import into one process (tests, bench)
# without clashing flag names.
