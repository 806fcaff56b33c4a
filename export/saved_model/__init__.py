"""TF Serving SavedModel export: the library behind `python -m export.saved_model` (see
export/saved_model/__main__.py): `export(model, export_dir, ...) -> (path, report)`.
"""

import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from export import parity
from pipelines import preprocess

SERVING_KEY = "serving_default"
LOGITS_KEY = "logits"
CLASSES_ASSET = "classes.txt"
TOP_K = 5


def _check_classes(class_names, num_classes):
    if class_names is None:
        return [str(i) for i in range(num_classes)]
    names = [str(name) for name in class_names]
    if len(names) != num_classes:
        raise ValueError(f"The model has {num_classes} classes but {len(names)} class names were given.")
    if any(not name or "\n" in name or "\r" in name for name in names):
        raise ValueError("Class names must be non-empty single lines.")
    return names


def tracked_variables(concrete_functions):
    """The tf.Variables the functions read, each once, for a tf.Module to track instead of the Keras model.

    With the Keras model object itself tracked, the SavedModel gets a second, differently named copy of each
    variable and TF1-style loaders -- TF Serving, `saved_model_cli run` -- fail with "Could not find variable
    ..." (tf.saved_model.load does not notice); tracking exactly the captured tf.Variables loads everywhere.
    """
    seen, out = set(), []
    for fn in concrete_functions:
        for variable in fn.variables:
            if id(variable) not in seen:
                seen.add(id(variable))
                out.append(variable)
    return out


def preprocess_frames(frames, crop_size):
    """uint8 (N, T, H, W, 3) -> normalised float32 (N, T, crop, crop, 3): the eval view, inside the graph."""
    clip = preprocess.resize_short_side(frames, preprocess.eval_short_side(crop_size))
    clip = preprocess.normalize(preprocess.center_crop(clip, crop_size))
    return tf.ensure_shape(clip, [None, frames.shape[1], crop_size, crop_size, 3])


def check_num_frames(clip, num_frames, what):
    """`clip` (N, T, ...) after an in-graph check that T == num_frames (no-op for None, i.e. any T).

    The signature's input shape alone does not protect a served model: TF Serving feeds tensors without
    checking them against the placeholder's shape, and a wrong T then fails deep inside (a reshape) or, worse,
    runs. This assertion runs before the model's first op and names the expected and received frame counts.
    """
    if num_frames is None:
        return clip
    # T from the element count, not tf.shape(clip)[1]: the placeholder declares T, so grappler may fold that
    # slice to the constant T (and drop the check); the count also depends on the unknown batch.
    shape = tf.shape(clip, out_type=tf.int64)
    others = tf.reduce_prod(tf.concat([shape[:1], shape[2:]], 0))
    size = tf.size(clip, out_type=tf.int64)
    received = size // tf.maximum(others, 1)
    check = tf.debugging.Assert(
        tf.logical_or(tf.equal(received, num_frames), tf.equal(size, 0)),
        [
            f"{what}: this model takes clips of T={num_frames} frames (export it with --num_frames=0 for any T); "
            "received T=",
            received,
        ],
        name="check_num_frames",
    )
    with tf.control_dependencies([check]):
        return tf.identity(clip)


def build_serving_module(model, classes_file, num_frames, crop_size, top_k=TOP_K):
    """The two serving signatures around one Keras model (see the module docstring).

    Args:
      model: Keras model on float clips (N, num_frames, crop_size, crop_size, 3) returning logits (N, C).
      classes_file: text file with one class name per line (line i = class i); becomes a SavedModel asset.
      num_frames: T of both signatures, or None for any.
      crop_size: side of the model's input crop.
      top_k: number of top classes returned (at most C).
    Returns:
      (module, signatures) for `tf.saved_model.save(module, path, signatures=signatures)`.
    """
    top_k = min(top_k, int(model.output_shape[-1]))
    module = tf.Module()
    # A text-file table keeps the names in an asset the graph reads, as TF Serving expects.
    module.classes = tf.lookup.StaticHashTable(
        tf.lookup.TextFileInitializer(
            classes_file,
            tf.int64,
            tf.lookup.TextFileIndex.LINE_NUMBER,
            tf.string,
            tf.lookup.TextFileIndex.WHOLE_LINE,
        ),
        default_value="",
    )

    def serve(frames):
        frames = check_num_frames(frames, num_frames, f"{SERVING_KEY} input frames")
        logits = model(preprocess_frames(frames, crop_size), training=False)
        probabilities = tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1)
        scores, indices = tf.math.top_k(probabilities, k=top_k)
        return {
            "probabilities": probabilities,
            "top_k_indices": indices,
            "top_k_scores": scores,
            "top_k_classes": module.classes.lookup(tf.cast(indices, tf.int64)),
        }

    def logits(clip):
        clip = check_num_frames(clip, num_frames, f"{LOGITS_KEY} input clip")
        return {"logits": tf.cast(model(clip, training=False), tf.float32)}

    # autograph=False: no tensor-dependent Python control flow here, and autograph only slows tracing.
    signatures = {
        SERVING_KEY: tf.function(serve, autograph=False).get_concrete_function(
            tf.TensorSpec((None, num_frames, None, None, 3), tf.uint8, name="frames")
        ),
        LOGITS_KEY: tf.function(logits, autograph=False).get_concrete_function(
            tf.TensorSpec((None, num_frames, crop_size, crop_size, 3), tf.float32, name="clip")
        ),
    }
    # Only the signatures' concrete functions are saved (tf.functions attached to the module would be traced
    # again by tf.saved_model.save), with the variables they read.
    module.model_variables = tracked_variables(signatures.values())
    return module, signatures


def versions(export_dir):
    """Sorted integer versions present in `export_dir` (all-digit folder names, as TF Serving reads them)."""
    if not os.path.isdir(export_dir):
        return []
    names = os.listdir(export_dir)
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(export_dir, n)))


def run_signatures(path, requests):
    """Runs signatures of the SavedModel at `path` the way TF Serving does: TF1 loader, graph, session.

    Args:
      path: SavedModel (version) folder.
      requests: {signature key: {input key: numpy array}}.
    Returns:
      {signature key: {output key: numpy array}}.
    """
    results = {}
    logger, level = tf.get_logger(), tf.get_logger().level
    with tf.Graph().as_default(), tf.compat.v1.Session() as session:
        # The TF1 loader is deprecated for TF2 programs but is what TF Serving runs: its warning is noise here.
        logger.setLevel("ERROR")
        try:
            meta_graph = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], path)
        finally:
            logger.setLevel(level)
        for signature, inputs in requests.items():
            if signature not in meta_graph.signature_def:
                raise parity.ParityError(
                    f"{path}: no signature {signature!r} (has {sorted(meta_graph.signature_def)})."
                )
            sig = meta_graph.signature_def[signature]
            feeds = {sig.inputs[key].name: value for key, value in inputs.items()}
            results[signature] = session.run({key: info.name for key, info in sig.outputs.items()}, feeds)
    return results


def run_signature(path, signature, inputs):
    """`run_signatures` for one signature: {output key: numpy array}."""
    return run_signatures(path, {signature: inputs})[signature]


def _validate(path, expected, clip, num_classes, top_k, tolerance):
    """Checks both signatures of the written SavedModel against the Keras logits `expected` for `clip`;
    returns the logits' max relative error."""
    frames = np.random.default_rng(1).integers(0, 256, (1, clip.shape[1], 48, 64, 3), dtype=np.uint8)
    out = run_signatures(path, {LOGITS_KEY: {"clip": clip}, SERVING_KEY: {"frames": frames}})
    error = parity.check_parity(
        out[LOGITS_KEY]["logits"],
        expected,
        f"{path} '{LOGITS_KEY}'",
        tolerance,
    )
    probabilities = out[SERVING_KEY]["probabilities"]
    if probabilities.shape != (1, num_classes) or abs(probabilities.sum() - 1.0) > 1e-4:
        raise parity.ParityError(
            f"{path} '{SERVING_KEY}': probabilities {probabilities.shape} do not sum to 1."
        )
    classes = out[SERVING_KEY]["top_k_classes"]
    if classes.shape != (1, top_k):
        raise parity.ParityError(f"{path} '{SERVING_KEY}': top_k_classes has shape {classes.shape}.")
    return error


def export(
    model,
    export_dir,
    version=None,
    fold=True,
    class_names=None,
    num_frames=None,
    crop_size=None,
    top_k=TOP_K,
    validate=True,
    tolerance=parity.TOLERANCE,
):
    """Writes `model` as TF Serving version `export_dir/{version}`; returns (path, report dict).

    Args:
      model: functional Keras model on clips (N, T, H, W, 3) -> logits (N, C).
      export_dir: the TF Serving model base path (created if missing).
      version: positive int; None takes the next one (1 + the largest present, or 1). Never overwritten.
      fold: fold CoST(a) layers into Conv3D and BatchNorm into the preceding conv where exact. Either way
        Conv3D subclasses are saved as plain Conv3D (export.parity.plain_convolutions).
      class_names: C class names for `top_k_classes`; None uses "0", "1", ...
      num_frames: None keeps the model's T, 0 exports any T, else that T.
      crop_size: model input side; None keeps the model's.
      top_k: classes returned by serving_default (at most C).
      validate: before the version is published, load it as TF Serving does (TF1 loader + session) and
        require its `logits` to match the unfolded Keras model on a random clip within `tolerance`
        (relative) and serving_default's probabilities to sum to 1.
    Raises:
      FileExistsError if the version exists; ValueError for bad arguments; parity.ParityError if validation
      fails (nothing is published then).
    """
    export_dir = os.fspath(export_dir)
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValueError(f"version must be a positive int or None. Received: version={version!r}")
    reference, frames, crop_size = parity.with_input_shape(model, num_frames, crop_size)
    num_classes = int(reference.output_shape[-1])
    names = _check_classes(class_names, num_classes)
    os.makedirs(export_dir, exist_ok=True)
    if version is None:
        present = versions(export_dir)
        version = present[-1] + 1 if present else 1
    final = os.path.join(export_dir, str(version))
    if os.path.exists(final):
        raise FileExistsError(
            f"Version {version} already exists in {export_dir}; versions are never "
            "overwritten (omit --version to take the next one)."
        )
    tmp = os.path.join(export_dir, f".tmp-{version}-{os.getpid()}")
    report = {
        "version": version,
        "path": final,
        "folded": bool(fold),
        "num_frames": frames,
        "crop_size": crop_size,
        "num_classes": num_classes,
    }
    # The Keras logits for the validation clip first (one clip at a time, traced), before the folded copy
    # exists, and the traced module freed before the saved copy is loaded: each of these holds R50-sized
    # memory (docs/DEPLOY.md, Export memory).
    clip = parity.random_clip(2, frames or 4, crop_size)
    expected = parity.reference_logits(reference, clip) if validate else None
    deployed = parity.fold_for_inference(reference) if fold else parity.plain_convolutions(reference)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            classes_file = os.path.join(scratch, CLASSES_ASSET)
            with open(classes_file, "w", encoding="utf-8") as f:
                f.write("\n".join(names) + "\n")
            module, signatures = build_serving_module(deployed, classes_file, frames, crop_size, top_k)
            tf.saved_model.save(module, tmp, signatures=signatures)
        del module, signatures, deployed
        parity.release_memory()
        if validate:
            report["max_relative_error"] = _validate(
                tmp, expected, clip, num_classes, min(top_k, num_classes), tolerance
            )
        if os.path.exists(final):
            raise FileExistsError(
                f"Version {version} appeared in {export_dir} during the export; not overwritten."
            )
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, report


# --- command line ---
# Flags are defined only when run as a program, so both exporters import into one process (tests, bench)
# without clashing flag names.
