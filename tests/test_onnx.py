"""export.onnx: Keras, the served SavedModel and onnxruntime agree on real clips; failures are clear errors."""

import collections
import os
import subprocess
import sys

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf
from keras import ops

from cost_tf.resnet import BLOCKS, build_model
from export import onnx as onnx_export
from export import parity, saved_model, tf2onnx_steps
from pipelines import preprocess
from tests import video_clips

T, CROP = 4, 32


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
        elif "moving_mean" in w.path or "beta" in w.path:
            w.assign(rng.normal(0, 0.2, w.shape).astype("float32"))
        elif w.path == "logits/kernel":
            w.assign(rng.normal(0, 1.0, w.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def real_clips():
    """Two real clips (carphone, and the same frames mirrored and reversed in time), preprocessed, (2, T, 32, 32, 3)."""
    frames = video_clips.source_frames(T)
    clip = preprocess.normalize(
        preprocess.center_crop(preprocess.resize_short_side(frames, 37), CROP)
    ).numpy()
    return np.stack([clip, clip[::-1, :, ::-1]])


def _dims(path):
    value = onnx.load(path).graph.input[0]
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


# cost_a goes straight from Keras (export.onnx.export, lowest opset, CoST(a) folded as its 19 taps); the
# rest convert the `logits` signature of their TF Serving export.
@pytest.mark.parametrize("block", BLOCKS)
def test_keras_saved_model_and_onnxruntime_agree(block, real_clips, tmp_path):
    """Folded exports with any T: SavedModel `logits` and onnxruntime both match the unfolded Keras model."""
    model = _randomize(
        build_model(f"{block}_tiny", num_classes=5, num_frames=T, input_size=CROP), seed=len(block)
    )
    version, _ = saved_model.export(model, tmp_path / "serving", num_frames=0, validate=False)
    output = tmp_path / "model.onnx"
    if block == "cost_a":
        report = onnx_export.export(model, output, opset=13)  # T dynamic by default: the model allows it
        assert report["folded"] and report["opset"] == 13
        assert [op.version for op in onnx.load(output).opset_import if op.domain in ("", "ai.onnx")] == [13]
    else:
        report = onnx_export.convert_saved_model(version, output, signature="logits")
        assert report["opset"] == onnx_export.DEFAULT_OPSET
    assert (
        report["max_relative_error"] < 1e-4 and report["num_frames"] is None and report["crop_size"] == CROP
    )
    assert sorted(os.listdir(tmp_path)) == ["model.onnx", "serving"]  # no temporary file left
    assert _dims(output) == ["batch", "frames", CROP, CROP, 3]
    ops_used = collections.Counter(node.op_type for node in onnx.load(output).graph.node)
    if block != "cost_b":  # plain Conv3D layers: only the input's NDHWC -> NCDHW transpose is left
        assert ops_used["Transpose"] == 1, ops_used
    if block == "cost_a":  # 4 CoST(a) layers as 3 Conv each (sparse form) + 13 other convolutions
        assert ops_used["Conv"] == 4 * 3 + 13, ops_used

    keras_logits = np.asarray(model(real_clips, training=False))
    served = saved_model.run_signature(version, "logits", {"clip": real_clips})["logits"]
    onnx_logits = onnx_export.run_onnxruntime(str(output), real_clips)
    assert onnx_logits.shape == keras_logits.shape == (2, 5)
    assert parity.max_relative_error(served, keras_logits) < 1e-4  # folding is exact
    assert parity.max_relative_error(onnx_logits, keras_logits) < 1e-4
    assert parity.max_relative_error(onnx_logits, served) < 1e-4
    # Another clip length and batch size through the dynamic axes.
    longer = np.concatenate([real_clips, real_clips[:, :2]], axis=1)[:1]
    any_t = parity.with_input_shape(model, num_frames=0)[0]
    assert (
        parity.max_relative_error(
            onnx_export.run_onnxruntime(str(output), longer), any_t(longer, training=False)
        )
        < 1e-4
    )


def test_dynamic_frames_only_where_the_model_allows():
    inp = keras.Input((2, 8, 8, 3), name="clip")
    pooled = keras.Model(inp, keras.layers.GlobalAveragePooling3D()(keras.layers.Conv3D(3, 1)(inp)))
    assert onnx_export.choose_num_frames(pooled) == 0
    assert onnx_export.choose_num_frames(pooled, num_frames=2) == 2
    flat = keras.Model(inp, keras.layers.Dense(3)(keras.layers.Flatten()(inp)))  # its Dense needs T = 2
    assert onnx_export.choose_num_frames(flat) is None


def test_bad_arguments(tmp_path):
    inp = keras.Input((2, 8, 8, 3), name="clip")
    model = keras.Model(inp, keras.layers.GlobalAveragePooling3D()(inp))
    with pytest.raises(ValueError, match=r"opset must be one of \(13, 14, 15, 16, 17, 18\)"):
        onnx_export.export(model, tmp_path / "x.onnx", opset=19)
    with pytest.raises(ValueError, match="must be a .onnx path"):
        onnx_export.export(model, tmp_path / "x.pb")
    with pytest.raises(ValueError, match="output folder does not exist"):
        onnx_export.export(model, tmp_path / "missing" / "x.onnx")
    with pytest.raises(ValueError, match="Not a SavedModel folder"):
        onnx_export.convert_saved_model(tmp_path, tmp_path / "x.onnx")
    assert os.listdir(tmp_path) == []


class _ScaledConv(keras.layers.Layer):
    """Per-channel weights multiplied onto a conv OUTPUT: makes TF's grappler abort inside tf2onnx."""

    def build(self, shape):
        self.kernel = self.add_weight(shape=(1, 3, 3, shape[-1], 4), name="kernel")
        self.alpha = self.add_weight(shape=(2, 4), name="alpha")

    def call(self, x):
        return ops.softmax(self.alpha, axis=0)[0] * ops.conv(x, self.kernel, padding="same")


class _Bessel(keras.layers.Layer):
    """An op tf2onnx has no converter for."""

    def call(self, x):
        return x + tf.math.bessel_i0e(x)


@pytest.mark.parametrize(
    "layer, message",
    [
        (_ScaledConv(name="scaled_conv"), r"tf2onnx crashed \(SIGABRT\).*Check failed.*MulConvPushDown"),
        (_Bessel(name="odd_layer"), r"in layer\(s\) odd_layer: unsupported TF ops \['BesselI0e'\]"),
    ],
)
def test_converter_failures_are_clear_errors(layer, message, tmp_path):
    inp = keras.Input((2, 8, 8, 3), name="clip")
    x = keras.layers.Conv3D(3, 1, name="conv")(inp)
    x = keras.layers.GlobalAveragePooling3D(name="pool")(layer(x))
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(x))
    with pytest.raises(onnx_export.ConversionError, match=message):
        onnx_export.export(model, tmp_path / "bad.onnx", fold=False)
    assert os.listdir(tmp_path) == []  # neither the final nor a temporary file


def test_keras_reference_precomputed_still_validates(tmp_path, monkeypatch):
    """export() computes the Keras logits before tf2onnx runs (then frees the folded copy) and runs tf2onnx
    with pure-Python protobuf (docs/DEPLOY.md, Export memory): a fold that breaks the model is still caught
    against those logits, and nothing is left behind."""
    inp = keras.Input((2, 8, 8, 3), name="clip")
    x = keras.layers.Conv3D(3, 1, name="conv")(inp)
    x = keras.layers.GlobalAveragePooling3D(name="pool")(keras.layers.BatchNormalization(name="bn")(x))
    model = keras.Model(inp, keras.layers.Dense(3, name="logits")(x))
    envs = []
    real_run = onnx_export.subprocess.run

    def recording_run(command, **kwargs):
        envs.append(kwargs["env"])
        return real_run(command, **kwargs)

    monkeypatch.setattr(onnx_export.subprocess, "run", recording_run)
    real_fold = parity.fold_for_inference

    def broken_fold(m, form="merged"):
        folded = real_fold(m, form)
        folded.get_layer("logits").bias.assign([0.5, 0.0, 0.0])
        return folded

    monkeypatch.setattr(parity, "fold_for_inference", broken_fold)
    with pytest.raises(parity.ParityError, match="onnxruntime on .* vs the Keras model: max relative error"):
        onnx_export.export(model, tmp_path / "broken.onnx")
    assert os.listdir(tmp_path) == []
    assert envs and envs[0][onnx_export.PROTOBUF_ENV] == "python"
    monkeypatch.setattr(parity, "fold_for_inference", real_fold)
    report = onnx_export.export(model, tmp_path / "good.onnx")
    assert report["max_relative_error"] <= parity.TOLERANCE and os.listdir(tmp_path) == ["good.onnx"]


def test_clip_length_fixed_or_any(tmp_path):
    """A fixed-T export is rejected by onnxruntime with both frame counts before anything runs; the default
    (dynamic T, "frames") runs any T the network can."""
    model = _randomize(build_model("cost_b_tiny", num_classes=5, num_frames=T, input_size=CROP), seed=5)
    fixed = onnx_export.export(model, tmp_path / "fixed.onnx", num_frames=T)
    assert fixed["num_frames"] == T and _dims(tmp_path / "fixed.onnx") == ["batch", T, CROP, CROP, 3]
    with pytest.raises(Exception, match=rf"index: 1 Got: {2 * T} Expected: {T}"):
        onnx_export.run_onnxruntime(str(tmp_path / "fixed.onnx"), parity.random_clip(1, 2 * T, CROP))
    assert onnx_export.run_onnxruntime(
        str(tmp_path / "fixed.onnx"), parity.random_clip(1, T, CROP)
    ).shape == (1, 5)


def _op_counts(path):
    return collections.Counter(node.op_type for node in onnx.load(path).graph.node)


def test_split_tf2onnx_steps_match_the_single_tf2onnx_command(tmp_path):
    """export() runs tf2onnx as two children (export/tf2onnx_steps.py: grappler with the weights stubbed as
    placeholders, then the conversion with them put back): the ONNX graph has the ops of `python -m
    tf2onnx.convert --graphdef` on the same frozen graph, and onnxruntime gives the same logits. One known
    difference: with CoST(b)'s `flat` form (the AVX-512 CPU default) tf2onnx leaves some biases as an Add of
    an initializer after the Conv instead of inside it (onnxruntime fuses them again when it loads the model)."""
    model = _randomize(build_model("cost_b_tiny", num_classes=5, num_frames=T, input_size=CROP), seed=3)
    deployed = parity.fold_for_inference(model, onnx_export.FOLD_FORM)
    frozen = str(tmp_path / "frozen.pb")
    names = onnx_export._save_frozen_logits_graph(deployed, frozen, T, CROP)
    graph_def = tf2onnx_steps._read_graph_def(frozen)
    stubbed = tf2onnx_steps.stub_constants(graph_def)  # the weights of >= 16 KiB: 13 here
    assert len(stubbed) >= 10
    placeholders = {node.name for node in graph_def.node if node.op == "Placeholder"}
    assert set(stubbed) <= placeholders
    tf2onnx_steps.restore_constants(graph_def, tf2onnx_steps._read_graph_def(frozen), set(stubbed))
    assert graph_def == tf2onnx_steps._read_graph_def(frozen)  # the round trip is exact

    optimized = str(tmp_path / "optimized.pb")
    tf2onnx_steps.grappler(frozen, *names, optimized)
    split, single = str(tmp_path / "split.onnx"), str(tmp_path / "single.onnx")
    tf2onnx_steps.convert(optimized, split, 13)
    # The single tf2onnx command on the frozen GraphDef, tensors renamed as export() names them.
    single_command = [sys.executable, "-m", "tf2onnx.convert", "--graphdef", frozen, "--inputs", names[0]]
    single_command += ["--outputs", names[1], "--rename-inputs", "clip", "--rename-outputs", "logits"]
    single_command += ["--opset", "13", "--output", single]
    result = subprocess.run(single_command, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    extra = _op_counts(split) - _op_counts(single)
    assert not _op_counts(single) - _op_counts(split) and set(extra) <= {"Add"}, extra

    def adds_of_an_initializer(path):
        graph = onnx.load(path).graph
        initializers = {i.name for i in graph.initializer}
        return sum(1 for n in graph.node if n.op_type == "Add" and set(n.input) & initializers)

    assert adds_of_an_initializer(split) - adds_of_an_initializer(single) == extra["Add"]
    clip = parity.random_clip(2, T, CROP)
    np.testing.assert_allclose(
        onnx_export.run_onnxruntime(split, clip),
        onnx_export.run_onnxruntime(single, clip),
        rtol=1e-6,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="rewrote the stubbed constant"):
        tf2onnx_steps.restore_constants(
            tf2onnx_steps._read_graph_def(optimized), tf2onnx_steps._read_graph_def(frozen), {names[1][:-2]}
        )
