"""export.saved_model: the TF Serving contract, checked on real clip frames and from fresh processes."""

import os
import re
import subprocess
import sys

import av
import keras
import numpy as np
import pytest
import tensorflow as tf

from cost_tf.cost import CoST
from cost_tf.resnet import build_model
from export import parity, saved_model
from tests import video_clips

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ["ride bike", "drive car", "talk on phone", "walk", "run", "swim", "jump"]
T, CROP = 4, 32
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _run(args, **kwargs):
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, **kwargs)


def _saved_model_cli():
    script = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
    return (
        [script]
        if os.path.exists(script)
        else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    )


def _bikes(num_frames):
    with av.open(video_clips.BIKES) as container:
        frames = [
            f.to_ndarray(format="rgb24")
            for _, f in zip(range(num_frames), container.decode(video=0), strict=False)  # the first frames
        ]
    return np.stack(frames)


def _reference_clip(frames):
    """Independent eval preprocessing: short side 37 (= round(32 * 8 / 7)), centre crop 32, normalise."""
    height, width = frames.shape[1:3]
    short = 37
    size = (
        (short, round(width * short / height)) if height <= width else (round(height * short / width), short)
    )
    resized = tf.image.resize(frames.astype(np.float32), size, method="bilinear").numpy()
    y, x = (size[0] - CROP) // 2, (size[1] - CROP) // 2
    return ((resized[:, y : y + CROP, x : x + CROP] / 255.0 - MEAN) / STD).astype(np.float32)


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
        elif "moving_mean" in w.path or "beta" in w.path:
            w.assign(rng.normal(0, 0.2, w.shape).astype("float32"))
        elif w.path == "logits/kernel":  # spread the probabilities so top-k order is meaningful
            w.assign(rng.normal(0, 1.0, w.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """cost_a_tiny saved as .keras and exported by the command line (folded, with class names)."""
    root = tmp_path_factory.mktemp("served")
    model = _randomize(build_model("cost_a_tiny", num_classes=len(NAMES), num_frames=T, input_size=CROP))
    model.save(root / "model.keras")
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    result = _run(
        [
            sys.executable,
            "-m",
            "export.saved_model",
            f"--model={root / 'model.keras'}",
            f"--export_dir={root / 'serving'}",
            f"--classes={root / 'classes.txt'}",
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert re.search(r"Exported .*serving/1 \(folded=True, T=4, crop=32, classes=7", result.stdout)
    return root, model, tf.saved_model.load(str(root / "serving" / "1"))


@pytest.fixture(scope="module")
def clips():
    return {"carphone": video_clips.source_frames(T), "bikes": _bikes(T)}


def test_version_folder_layout(served):
    root, _, _ = served
    serving = root / "serving"
    assert sorted(os.listdir(serving)) == ["1"]  # no temporary folder left behind
    assert {"saved_model.pb", "variables", "assets"} <= set(os.listdir(serving / "1"))
    assert (serving / "1" / "assets" / "classes.txt").read_text().splitlines() == NAMES


def test_logits_signature_matches_unfolded_keras(served, clips):
    _, model, loaded = served
    clip = np.stack([_reference_clip(clips["carphone"]), _reference_clip(clips["bikes"])])
    out = loaded.signatures["logits"](clip=tf.constant(clip))["logits"].numpy()
    assert out.shape == (2, len(NAMES))
    assert parity.max_relative_error(out, model(clip, training=False)) < 1e-4


@pytest.mark.parametrize("name", ["carphone", "bikes", "carphone_portrait"])
def test_serving_default_on_raw_frames(served, clips, name):
    _, model, loaded = served
    frames = clips[name.split("_")[0]]
    if name.endswith("portrait"):
        frames = np.ascontiguousarray(frames.transpose(0, 2, 1, 3))  # 176 x 144: the short side is the width
    out = {
        k: v.numpy()
        for k, v in loaded.signatures["serving_default"](frames=tf.constant(frames[None])).items()
    }
    logits = np.asarray(model(_reference_clip(frames)[None], training=False), np.float64)
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    probabilities = out["probabilities"]
    assert probabilities.shape == (1, len(NAMES)) and probabilities.dtype == np.float32
    assert parity.max_relative_error(probabilities, expected) < 1e-4
    assert abs(float(probabilities.sum()) - 1.0) < 1e-5
    order = np.argsort(-probabilities[0], kind="stable")[:5]
    np.testing.assert_array_equal(out["top_k_indices"][0], order)
    np.testing.assert_array_equal(out["top_k_scores"][0], probabilities[0, order])
    assert [c.decode() for c in out["top_k_classes"][0]] == [NAMES[i] for i in order]


def _small_model():
    inp = keras.Input((2, 8, 8, 3), name="clip")
    x = CoST(4, use_bias=True, name="cost")(inp)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling3D(name="pool")(x)
    return _randomize(keras.Model(inp, keras.layers.Dense(3, name="logits")(x)))


def test_versions_are_never_overwritten(tmp_path):
    model = _small_model()
    path, report = saved_model.export(model, tmp_path, fold=False, validate=False)
    assert path == str(tmp_path / "1") and report["version"] == 1
    before = (tmp_path / "1" / "saved_model.pb").read_bytes()
    with pytest.raises(FileExistsError, match="Version 1 already exists"):
        saved_model.export(model, tmp_path, version=1, validate=False)
    assert (tmp_path / "1" / "saved_model.pb").read_bytes() == before
    assert saved_model.export(model, tmp_path, version=7, fold=False, validate=False)[0] == str(
        tmp_path / "7"
    )
    assert saved_model.export(model, tmp_path, fold=False, validate=False)[0] == str(tmp_path / "8")
    assert saved_model.versions(tmp_path) == [1, 7, 8]
    with pytest.raises(ValueError, match="version must be a positive int"):
        saved_model.export(model, tmp_path, version=0)
    with pytest.raises(ValueError, match="3 classes but 2 class names"):
        saved_model.export(model, tmp_path, class_names=["a", "b"])


def test_interrupted_export_publishes_nothing(tmp_path, monkeypatch):
    model = _small_model()
    real_save = tf.saved_model.save

    def save_then_die(obj, export_dir, signatures=None):
        real_save(obj, export_dir, signatures=signatures)  # everything written...
        raise KeyboardInterrupt  # ...and the process is interrupted before the rename

    monkeypatch.setattr(tf.saved_model, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        saved_model.export(model, tmp_path, fold=False)
    assert os.listdir(tmp_path) == []
    monkeypatch.undo()

    # A fold that breaks the model is caught by the validation before the version is published.
    real_fold = parity.fold_for_inference

    def broken_fold(m):
        folded = real_fold(m)
        folded.get_layer("logits").bias.assign([0.5, 0.0, 0.0])
        return folded

    monkeypatch.setattr(parity, "fold_for_inference", broken_fold)
    with pytest.raises(parity.ParityError, match="'logits': max relative error"):
        saved_model.export(model, tmp_path)
    assert os.listdir(tmp_path) == []


def test_saved_model_cli_show_and_run(served, clips, tmp_path):
    root, _, loaded = served
    version = str(root / "serving" / "1")
    show = _run(_saved_model_cli() + ["show", "--all", "--dir", version])
    assert show.returncode == 0, show.stderr[-2000:]
    text = show.stdout

    def tensor(signature, kind, key):
        block = text.split(f"signature_def['{signature}']:")[1].split("Method name is")[0]
        match = re.search(rf"{kind}\['{key}'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([^)]*\))", block)
        assert match, f"{signature} {kind} {key} missing from:\n{block}"
        return match.groups()

    assert tensor("serving_default", "inputs", "frames") == ("DT_UINT8", "(-1, 4, -1, -1, 3)")
    assert tensor("serving_default", "outputs", "probabilities") == ("DT_FLOAT", "(-1, 7)")
    assert tensor("serving_default", "outputs", "top_k_indices") == ("DT_INT32", "(-1, 5)")
    assert tensor("serving_default", "outputs", "top_k_scores") == ("DT_FLOAT", "(-1, 5)")
    assert tensor("serving_default", "outputs", "top_k_classes") == ("DT_STRING", "(-1, 5)")
    assert tensor("logits", "inputs", "clip") == ("DT_FLOAT", "(-1, 4, 32, 32, 3)")
    assert tensor("logits", "outputs", "logits") == ("DT_FLOAT", "(-1, 7)")

    frames = clips["bikes"][None]
    np.save(tmp_path / "frames.npy", frames)
    run = _run(
        _saved_model_cli()
        + [
            "run",
            "--dir",
            version,
            "--tag_set",
            "serve",
            "--signature_def",
            "serving_default",
            "--inputs",
            f"frames={tmp_path / 'frames.npy'}",
            "--outdir",
            str(tmp_path / "out"),
        ]
    )
    assert run.returncode == 0, run.stderr[-2000:]
    probabilities = np.load(tmp_path / "out" / "probabilities.npy")
    assert probabilities.shape == (1, 7) and abs(float(probabilities.sum()) - 1.0) < 1e-5
    in_process = loaded.signatures["serving_default"](frames=tf.constant(frames))
    np.testing.assert_allclose(probabilities, in_process["probabilities"].numpy(), rtol=1e-5, atol=1e-7)
    classes = np.load(tmp_path / "out" / "top_k_classes.npy", allow_pickle=True)
    indices = np.load(tmp_path / "out" / "top_k_indices.npy")
    assert [c.decode() for c in classes[0]] == [NAMES[i] for i in indices[0]]


def test_command_line_rejects_a_corrupt_model(tmp_path):
    corrupt = tmp_path / "model.keras"
    corrupt.write_bytes(b"PK\x03\x04 not really a zip")
    result = _run(
        [
            sys.executable,
            "-m",
            "export.saved_model",
            f"--model={corrupt}",
            f"--export_dir={tmp_path / 'serving'}",
        ]
    )
    assert result.returncode == 2
    assert f"export.saved_model: error: --model: cannot load the Keras model {corrupt}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "serving").exists()


def _feed_unchecked(path, signature, key, value):
    """Runs `signature` on `value` as TF Serving does: a C++ feed that nobody checks against the placeholder's
    declared shape (Session.run in Python would refuse a wrong shape itself, before the graph sees it)."""
    with tf.Graph().as_default() as graph, tf.compat.v1.Session() as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, [tf.saved_model.SERVING], path)
        sig = meta_graph.signature_def[signature]
        fetches = [graph.get_tensor_by_name(info.name) for info in sig.outputs.values()]
        feed = graph.get_tensor_by_name(sig.inputs[key].name)
        return session._do_run(None, [], fetches, {feed.ref(): value}, None, None)


def test_wrong_clip_length_fails_before_the_model_runs(served, clips):
    root, _, _ = served
    version = str(root / "serving" / "1")
    longer = np.concatenate([clips["carphone"], clips["carphone"]])[None]  # T = 8 for a T = 4 export
    for signature, key, value in (
        ("serving_default", "frames", longer),
        ("logits", "clip", parity.random_clip(1, 2 * T, CROP)),
    ):
        with pytest.raises(
            tf.errors.InvalidArgumentError,
            match=rf"{signature} input {key}: this model takes clips of T={T} frames.*"
            rf"received T=\] \[{2 * T}\]",
        ):
            _feed_unchecked(version, signature, key, value)
    # The right T (any batch, an empty one included) passes the check.
    (logits,) = _feed_unchecked(version, "logits", "clip", parity.random_clip(2, T, CROP))
    assert logits.shape == (2, len(NAMES))
    try:
        (logits,) = _feed_unchecked(version, "logits", "clip", parity.random_clip(0, T, CROP))
        assert logits.shape == (0, len(NAMES))
    except tf.errors.InvalidArgumentError as error:
        # Known (docs/DEPLOY.md): on an AVX-512 CPU oneDNN's fused convolutions mis-shape an empty batch
        # ("input and filter must have the same depth"); the frame-count check itself must have passed it.
        assert "this model takes clips of" not in str(error) and "must have the same depth" in str(error)


def test_any_clip_length_export_accepts_other_lengths(tmp_path):
    model = _randomize(build_model("cost_b_tiny", num_classes=3, num_frames=T, input_size=CROP))
    path, report = saved_model.export(model, tmp_path, num_frames=0)
    assert report["num_frames"] is None
    any_t = parity.with_input_shape(model, num_frames=0)[0]
    for frames in (2, 2 * T):
        clip = parity.random_clip(1, frames, CROP)
        (logits,) = _feed_unchecked(path, "logits", "clip", clip)
        assert parity.max_relative_error(logits, any_t(clip, training=False)) < 1e-4
