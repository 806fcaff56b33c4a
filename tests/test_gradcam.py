"""cost_tf.gradcam: heat where a hand-set model must put it, alignment, a family smoke, the main end to end."""

import json
import os

import keras
import numpy as np
import pytest
from absl import flags

from cost_tf import checkpoint, gradcam
from cost_tf.resnet import build_model
from pipelines import files, mains

T, S = 4, 8
# The bright box: frames 2-3, rows 2-5, columns 4-7 (on the stride-2 grid: cell t=1, rows 1-2, columns 2-3).
BOX = (slice(2, 4), slice(2, 6), slice(4, 8))


def _hand_set_model():
    """Conv3D 1x1x1 stride 2 (filter 0: brightness, relu; filter 1: relu(0.1 - brightness)) -> global mean ->
    Dense identity: logit 0 = mean brightness response, logit 1 = mean darkness response."""
    inputs = keras.Input((T, S, S, 3))
    features = keras.layers.Conv3D(2, 1, strides=2, activation="relu", name="features")(inputs)
    pooled = keras.layers.GlobalAveragePooling3D(name="pool")(features)
    model = keras.Model(inputs, keras.layers.Dense(2, name="logits")(pooled))
    kernel = np.zeros((1, 1, 1, 3, 2), "float32")
    kernel[..., 0], kernel[..., 1] = 1.0, -1.0
    model.get_layer("features").set_weights([kernel, np.array([0.0, 0.1], "float32")])
    model.get_layer("logits").set_weights([np.eye(2, dtype="float32"), np.zeros(2, "float32")])
    return model


def _box_clip():
    clip = np.zeros((T, S, S, 3), "float32")
    clip[BOX] = 1.0
    return clip


def test_heat_lies_on_the_bright_box_for_the_brightness_class():
    model = _hand_set_model()
    clip = _box_clip()
    result = gradcam.explain(model, clip)
    assert result["class_index"] == 0  # the top-1 class
    # 4 of the 2 x 4 x 4 sampled cells see the box (response 3); the other 28 see darkness (0.1).
    np.testing.assert_allclose(result["logits"], [3 * 4 / 32, 0.1 * 28 / 32], rtol=1e-6)
    assert result["layer"] == "features" and result["feature_shape"] == (2, 4, 4)
    heat = result["heatmap"]
    assert heat.shape == (T, S, S) and heat.dtype == np.float32
    assert heat.max() == pytest.approx(1.0)
    t, y, x = np.unravel_index(np.argmax(heat), heat.shape)
    assert 2 <= t <= 3 and 2 <= y <= 5 and 4 <= x <= 7
    # Reference: the feature map is 3 on the box's 2x2 cells of frame cell 1, else 0; Grad-CAM's map is that
    # (weight 1/32 for filter 0, 0 for filter 1), upsampled: frames 0 (t' coordinate -0.25 -> 0) stay cold.
    assert np.all(heat[0] == 0) and heat[BOX].mean() > 0.5 and heat[:2].max() <= 0.25 + 1e-6
    np.testing.assert_array_equal(heat, gradcam.grad_cam(model, clip))


def test_other_class_heats_everything_but_the_box():
    heat = gradcam.grad_cam(_hand_set_model(), _box_clip(), class_index=1)
    assert heat[0].min() == pytest.approx(1.0)  # dark everywhere at frame cell 0
    assert heat[3, 2:6, 4:8].max() < 0.5 < heat[3, :, :2].min()


def test_upsample_is_linear_in_time_and_space():
    cam = np.zeros((2, 2, 2), "float32")
    cam[1] = 1.0
    up = gradcam.upsample(cam, 4, 4).numpy()
    # Half-pixel centres: output frame t samples t' = (t + 0.5) / 2 - 0.5 -> 0, 0.25, 0.75, 1 (clamped).
    np.testing.assert_allclose(up[:, 0, 0], [0.0, 0.25, 0.75, 1.0], atol=1e-6)
    assert np.ptp(up, axis=(1, 2)).max() < 1e-6  # constant in space


def test_layer_errors_name_the_argument():
    model = _hand_set_model()
    with pytest.raises(ValueError, match=r"--layer: .* no layer named 'nope' .*features"):
        gradcam.grad_cam(model, _box_clip(), layer_name="nope")
    with pytest.raises(ValueError, match=r"--layer: 'pool' outputs \(None, 2\), not a 5D"):
        gradcam.grad_cam(model, _box_clip(), layer_name="pool")
    with pytest.raises(ValueError, match=r"--class: must be in \[0, 2\)"):
        gradcam.grad_cam(model, _box_clip(), class_index=2)


def test_family_smoke_cost_b_tiny():
    # Seeded: with some random initialisations every location's weighted sum is negative for a class, and
    # Grad-CAM's ReLU then (rightly) gives an all-zero map; the test must not depend on the suite's order.
    keras.utils.set_random_seed(0)
    model = build_model("cost_b_tiny", num_classes=3, num_frames=4, input_size=64)
    clip = np.random.default_rng(0).normal(size=(4, 64, 64, 3)).astype("float32")
    first, second = (gradcam.explain(model, clip, c) for c in (0, 1))
    assert first["layer"] == second["layer"] == "conv5_block1_out"  # the input of avg_pool
    assert first["feature_shape"] == (4, 2, 2)
    for result in (first, second):
        assert result["heatmap"].shape == (4, 64, 64) and np.isfinite(result["heatmap"]).all()
        assert 0.0 <= result["heatmap"].min() and result["heatmap"].max() <= 1.0
    assert np.abs(first["heatmap"] - second["heatmap"]).max() > 0.05


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A c2d_tiny at 4 frames x 32 px saved as cost_tf.train does, with its config.json, and synthetic
    TFRecords (2 eval records)."""
    from pipelines.synthetic import write_synthetic

    folder = tmp_path_factory.mktemp("gradcam")
    data = str(folder / "data")
    write_synthetic(data, num_train=2, num_eval=2, num_frames=12, size=40, num_shards=1)
    model = build_model("c2d_tiny", num_classes=8, num_frames=4, input_size=32)
    checkpoint.save_model(model, str(folder / "model.keras"))
    names = [f"class{i}" for i in range(8)]
    files.write_json(
        str(folder / "config.json"), {"frame_stride": 2, "eval_resize": 36, "class_names": names}
    )
    return folder, os.path.join(data, "eval-00000-of-00001.tfrecord")


def _config(folder, **overrides):
    holders = mains.define_flags(gradcam.GradCamConfig, flag_values=flags.FlagValues())
    argv = ["gradcam", f"--model={folder / 'model.keras'}"] + [f"--{k}={v}" for k, v in overrides.items()]
    holders["model"]._flagvalues(argv)
    return mains.config_from_flags(gradcam.GradCamConfig, holders)


def test_main_writes_every_file_from_a_tfrecord(saved, tmp_path):
    from pipelines.dataset import make_dataset

    folder, record = saved
    out = tmp_path / "out"
    summary = gradcam.run(_config(folder, tfrecord=record, index=1, out_dir=out, **{"class": 5}))
    assert summary["class_index"] == 5 and summary["class_name"] == "class5"
    assert (summary["num_frames"], summary["crop_size"], summary["frame_stride"]) == (4, 32, 2)
    assert len(list(out.glob("frame_*.png"))) == 4 and (out / "gradcam.gif").stat().st_size > 0
    from PIL import Image

    with Image.open(out / "gradcam.gif") as gif:
        assert gif.n_frames == 4
    heat, clip = np.load(out / "heatmap.npy"), np.load(out / "clip.npy")
    assert heat.shape == (4, 32, 32) and heat.dtype == np.float32 and clip.shape == (4, 32, 32, 3)
    # clip.npy is the evaluation view of record 1, as cost_tf.evaluate's pipeline reads it.
    ds = make_dataset(
        record, mode="eval", batch_size=2, num_frames=4, frame_stride=2, crop_size=32, eval_resize=36
    )
    np.testing.assert_allclose(clip, next(iter(ds))[0][1].numpy(), atol=1e-6)
    model = keras.saving.load_model(folder / "model.keras", compile=False)
    np.testing.assert_allclose(heat, gradcam.grad_cam(model, clip, 5), atol=1e-6)
    assert json.loads((out / "gradcam.json").read_text())["layer"] == "conv5_block1_out"
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


def test_main_reads_a_video(saved, tmp_path):
    from tests.video_clips import CARPHONE

    folder, _ = saved
    summary = gradcam.run(_config(folder, video=CARPHONE, out_dir=tmp_path))
    assert summary["class_index"] == summary["top1"]
    clip = np.load(tmp_path / "clip.npy")
    assert clip.shape == (4, 32, 32, 3) and np.ptp(clip) > 0.5  # real pixels


def test_main_errors_name_the_argument(saved, tmp_path):
    folder, record = saved
    with pytest.raises(ValueError, match=r"--index: .* holds 2 records \(valid: 0..1\)\. Received: index=2"):
        gradcam.run(_config(folder, tfrecord=record, index=2, out_dir=tmp_path))
    with pytest.raises(ValueError, match="--tfrecord: no such file"):
        gradcam.run(_config(folder, tfrecord=tmp_path / "none.tfrecord", out_dir=tmp_path))
    with pytest.raises(ValueError, match="--video: no such file"):
        gradcam.run(_config(folder, video=tmp_path / "none.mp4", out_dir=tmp_path))
    with pytest.raises(ValueError, match="--layer: .* no layer named 'conv9'"):
        gradcam.run(_config(folder, tfrecord=record, layer="conv9", out_dir=tmp_path))
    with pytest.raises(ValueError, match="exactly one of --tfrecord or --video"):
        gradcam.run(_config(folder, out_dir=tmp_path))
    with pytest.raises(FileNotFoundError, match="--model: no such file"):
        gradcam.run(
            gradcam.GradCamConfig(model=str(tmp_path / "m.keras"), out_dir=str(tmp_path), tfrecord=record)
        )
    assert not list(tmp_path.glob("*.npy"))
