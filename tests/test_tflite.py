"""export.tflite: every family runs in the stock TFLite interpreter (builtin ops only) and matches Keras."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from cost_tf.resnet import BLOCKS, build_model
from export import parity, tflite
from tests import video_clips
from tests.test_saved_model import _bikes, _randomize, _reference_clip

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T, CROP, CLASSES = 4, 32, 5
CARPHONE_SIZE = (144, 176)  # the `frames` signature is exported for the carphone clip's frame size


@pytest.fixture(scope="module")
def raw_clips():
    """uint8 (1, T, 144, 176, 3) each: carphone, bikes (centre-cropped to 144x176), carphone mirrored + reversed."""
    carphone = video_clips.source_frames(T)
    bikes = _bikes(T)
    y, x = (bikes.shape[1] - 144) // 2, (bikes.shape[2] - 176) // 2
    bikes = np.ascontiguousarray(bikes[:, y : y + 144, x : x + 176])
    return [c[None] for c in (carphone, bikes, np.ascontiguousarray(carphone[::-1, :, ::-1]))]


def _model(block, seed):
    # Random BatchNorm statistics and betas, so folding them into the convolutions is really exercised.
    return _randomize(build_model(f"{block}_tiny", num_classes=CLASSES, num_frames=T, input_size=CROP), seed)


def _interpreter(path):
    """A fresh stock interpreter with the reference kernels only: no XNNPACK, no Flex, nothing but builtins."""
    return tf.lite.Interpreter(
        model_path=str(path), experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF
    )


@pytest.mark.parametrize("block", BLOCKS)
def test_float32_matches_keras_with_builtin_ops_only(block, raw_clips, tmp_path):
    model = _model(block, seed=len(block))
    output = tmp_path / f"{block}.tflite"
    report = tflite.export(model, output, frame_size=CARPHONE_SIZE, isolate=False)
    assert os.listdir(tmp_path) == [f"{block}.tflite"]  # no temporary file left
    assert report["max_relative_error"] < 1e-4 and report["frames_max_relative_error"] < 1e-4
    assert (report["num_frames"], report["crop_size"], report["batch_size"]) == (T, CROP, 1)
    assert report["bytes"] == os.path.getsize(output)
    ops_used = report["ops"][tflite.CLIP_KEY]
    assert set(report["ops"]) == {tflite.CLIP_KEY, tflite.FRAMES_KEY}
    # Every convolution and pool is a 2D one: no CONV_3D / 3D pooling (which needs Flex) is left.
    assert not {op for op in ops_used if "3D" in op}, ops_used
    assert ops_used["MAX_POOL_2D"] == 1 and ops_used["FULLY_CONNECTED"] >= 1
    # 17 convolutions in a tiny net (stem + 4 blocks x (shortcut, 1, 2, 3)), each one CONV_2D when 1xkxk;
    # per inflated block more: i3d's 3x1x1 and c3d's 3x3x3 as 3 temporal taps (+2), r2plus1d's extra 3x1x1
    # (+3), CoST(a)'s 19 taps as the centre frame's 3x3 and a (1, 3) row + (3, 1) column on each neighbour
    # (+4), CoST(b)'s views as 1 + 3 + 3 (+6).
    extra = {"c2d": 0, "i3d": 2, "c3d": 2, "r2plus1d": 3, "cost_a": 4, "cost_b": 6}[block]
    assert ops_used["CONV_2D"] == 17 + 4 * extra, ops_used

    interpreter = _interpreter(output)
    for frames in raw_clips:
        clip = _reference_clip(frames[0])[None]
        expected = np.asarray(model(clip, training=False))
        assert parity.max_relative_error(tflite.run_signature(interpreter, clip), expected) < 1e-4
        got = tflite.run_signature(interpreter, frames, tflite.FRAMES_KEY)  # raw uint8 frames in
        assert got.shape == (1, CLASSES)
        assert parity.max_relative_error(got, expected) < 1e-4


def test_s3dg_matches_keras_with_builtin_ops_only(tmp_path):
    """S3D-G (separable 1x3x3 + 3x1x1 convs, temporal max-pools, self-gating) in the stock interpreter too."""
    frames = video_clips.source_frames(8)[None]  # 8 frames: S3D-G's temporal strides need more than T=4
    model = _randomize(build_model("s3dg_tiny", num_classes=CLASSES, num_frames=8, input_size=CROP), seed=3)
    output = tmp_path / "s3dg.tflite"
    report = tflite.export(model, output, frame_size=CARPHONE_SIZE, isolate=False)
    assert os.listdir(tmp_path) == ["s3dg.tflite"]
    ops_used = report["ops"][tflite.CLIP_KEY]
    assert not {op for op in ops_used if "3D" in op}, ops_used
    assert ops_used["LOGISTIC"] > 0  # the self-gating survived as builtin ops
    clip = _reference_clip(frames[0])[None]
    expected = np.asarray(model(clip, training=False))
    interpreter = _interpreter(output)
    assert parity.max_relative_error(tflite.run_signature(interpreter, clip), expected) < 1e-4
    assert (
        parity.max_relative_error(tflite.run_signature(interpreter, frames, tflite.FRAMES_KEY), expected)
        < 1e-4
    )


@pytest.mark.parametrize("block", ["cost_a", "cost_b"])
def test_quantized_within_tolerance_and_same_top1_on_real_clips(block, raw_clips, tmp_path):
    model = _model(block, seed=7)
    clips = [_reference_clip(frames[0])[None] for frames in raw_clips]
    expected = [np.asarray(model(clip, training=False)) for clip in clips]
    float_size = tflite.export(model, tmp_path / "f32.tflite", isolate=False)["bytes"]
    for quantize, smaller in (("float16", 1.8), ("dynamic", 3.0)):
        report = tflite.export(model, tmp_path / f"{quantize}.tflite", quantize=quantize, isolate=False)
        assert report["max_relative_error"] <= tflite.QUANTIZED_TOLERANCE[quantize]
        assert float_size / report["bytes"] > smaller, (quantize, float_size, report["bytes"])
        interpreter = _interpreter(tmp_path / f"{quantize}.tflite")
        for clip, reference in zip(clips, expected, strict=True):
            got = tflite.run_signature(interpreter, clip)
            assert parity.max_relative_error(got, reference) <= tflite.QUANTIZED_TOLERANCE[quantize], quantize
            assert np.argmax(got) == np.argmax(reference), (quantize, got, reference)
    assert sorted(os.listdir(tmp_path)) == ["dynamic.tflite", "f32.tflite", "float16.tflite"]


def test_wrong_clip_length_is_a_clear_error(tmp_path):
    model = _model("cost_b", seed=1)
    tflite.export(model, tmp_path / "m.tflite", isolate=False)
    interpreter = tflite.load_interpreter(tmp_path / "m.tflite")
    longer = parity.random_clip(1, 2 * T, CROP)
    with pytest.raises(ValueError, match=rf"expects clips of T={T} frames, received T={2 * T}"):
        tflite.run_signature(interpreter, longer)
    with pytest.raises(ValueError, match=r"must be uint8"):
        tflite.run_signature(interpreter, np.zeros((1, T, 37, 37, 3), np.float32), tflite.FRAMES_KEY)
    # The stock signature runner resizes its input to whatever it gets; the static graph then fails to
    # prepare (before anything runs) with a message that names neither T: hence run_signature.
    for resolver in (
        tf.lite.experimental.OpResolverType.AUTO,
        tf.lite.experimental.OpResolverType.BUILTIN_REF,
    ):
        runner = tf.lite.Interpreter(
            model_path=str(tmp_path / "m.tflite"), experimental_op_resolver_type=resolver
        ).get_signature_runner(tflite.CLIP_KEY)
        with pytest.raises(RuntimeError, match="failed to prepare"):
            runner(clip=longer)


def test_frame_conv3d_and_pool_match_keras():
    """The 2D-over-frames lowering against keras.layers.Conv3D / MaxPooling3D, incl. strides, dilation,
    padding and split (plus-shaped) taps."""
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((2, 5, 9, 8, 3)), tf.float32)
    plus = rng.standard_normal((3, 3, 3, 3, 4)).astype(np.float32)
    plus[0, [0, 0, 2, 2], [0, 2, 0, 2]] = 0  # CoST(a)'s merged kernel: corners of the outer frames are zero
    plus[2, [0, 0, 2, 2], [0, 2, 0, 2]] = 0
    cases = [
        ((3, 3, 3), (1, 1, 1), (1, 1, 1), "same", plus),
        ((3, 3, 3), (2, 2, 1), (1, 1, 1), "same", plus),
        ((3, 3, 3), (1, 1, 1), (1, 1, 1), "valid", plus),
        ((3, 1, 1), (1, 1, 1), (1, 1, 1), "same", None),
        ((3, 3, 3), (1, 1, 1), (2, 1, 2), "same", None),
        ((1, 7, 7), (1, 2, 2), (1, 1, 1), "valid", None),
        ((2, 3, 1), (2, 1, 2), (1, 1, 1), "same", None),
    ]
    for kernel_size, strides, dilation, padding, kernel in cases:
        conv = keras.layers.Conv3D(4, kernel_size, strides=strides, dilation_rate=dilation, padding=padding)
        conv.build(x.shape)
        if kernel is not None:
            conv.kernel.assign(kernel)
        conv.bias.assign(rng.standard_normal(4).astype(np.float32))
        got = tflite.frame_conv3d(
            x, np.asarray(conv.kernel), np.asarray(conv.bias), strides, dilation, padding
        )
        np.testing.assert_allclose(got, conv(x), rtol=1e-5, atol=1e-5, err_msg=str((kernel_size, strides)))
    parts = tflite._tap_parts(plus[0])
    assert [p.shape[:2] for _, _, p in parts] == [(1, 3), (3, 1)]
    for pool, strides, padding in [
        ((1, 3, 3), (1, 2, 2), "valid"),
        ((2, 3, 3), (2, 2, 2), "valid"),
        ((3, 2, 2), (2, 1, 2), "same"),
    ]:
        expected = keras.layers.MaxPooling3D(pool, strides=strides, padding=padding)(x)
        np.testing.assert_array_equal(tflite.frame_max_pool3d(x, pool, strides, padding), expected)


def test_interrupted_or_wrong_export_leaves_no_file(tmp_path, monkeypatch):
    model = _model("c2d", seed=2)
    real_load = tflite.load_interpreter

    def load_then_die(path, num_threads=None):
        assert os.path.getsize(path) > 0  # the whole file is written...
        raise KeyboardInterrupt  # ...and the process is interrupted before the rename

    monkeypatch.setattr(tflite, "load_interpreter", load_then_die)
    with pytest.raises(KeyboardInterrupt):
        tflite.export(model, tmp_path / "m.tflite")  # isolated, as the command line runs it
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(tflite, "load_interpreter", real_load)

    real_lower = tflite.lower

    def broken_lower(folded, batch_size=1):
        folded.get_layer("logits").bias.assign(np.full(CLASSES, 0.5, np.float32) * np.arange(CLASSES))
        return real_lower(folded, batch_size)

    monkeypatch.setattr(tflite, "lower", broken_lower)
    with pytest.raises(parity.ParityError, match=r"tf.lite.Interpreter on .*m.tflite \(none\): max relative"):
        tflite.export(model, tmp_path / "m.tflite", isolate=False)  # the broken lowering runs in this process
    assert os.listdir(tmp_path) == []


def test_bad_arguments(tmp_path):
    model = _model("c2d", seed=3)
    with pytest.raises(ValueError, match=r"quantize must be one of \('none', 'float16', 'dynamic'\)"):
        tflite.export(model, tmp_path / "m.tflite", quantize="int4")
    with pytest.raises(ValueError, match="must be a .tflite path"):
        tflite.export(model, tmp_path / "m.onnx")
    with pytest.raises(ValueError, match="output folder does not exist"):
        tflite.export(model, tmp_path / "missing" / "m.tflite")
    with pytest.raises(ValueError, match="static clip length"):
        tflite.export(model, tmp_path / "m.tflite", num_frames=0)
    with pytest.raises(ValueError, match=r"frame_size must be \(H, W\) with both >= the crop 32"):
        tflite.export(model, tmp_path / "m.tflite", frame_size=(30, 40))
    assert os.listdir(tmp_path) == []


def test_command_line(tmp_path):
    model = _model("cost_a", seed=4)
    model.save(tmp_path / "model.keras")
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.tflite",
            f"--model={tmp_path / 'model.keras'}",
            f"--output={tmp_path / 'm.tflite'}",
            "--quantize=float16",
            "--frame_size=144x176",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "quantize=float16, T=4, crop=32, frames 144x176, batch 1" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["m.tflite", "model.keras"]
    interpreter = _interpreter(tmp_path / "m.tflite")
    assert interpreter.get_signature_runner(tflite.FRAMES_KEY).get_input_details()["frames"][
        "shape"
    ].tolist() == [1, T, 144, 176, 3]
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "export.tflite",
            f"--model={tmp_path / 'model.keras'}",
            f"--output={tmp_path / 'x.tflite'}",
            "--frame_size=144",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "export.tflite: error: --frame_size must be HxW" in bad.stderr
    assert "Traceback" not in bad.stderr
