"""Grad-CAM for clips: the library behind `python -m cost_tf.gradcam` (see cost_tf/gradcam/__main__.py).

`grad_cam(model, clip, class_index=None, layer_name=None) -> heatmap`, `explain` (heatmap + class + logits +
layer), `read_clip`, `write_outputs`, `run(GradCamConfig)`.
"""

import dataclasses
import io
import os

import keras
import numpy as np
import tensorflow as tf

from cost_tf.loading import load_model, training_config
from pipelines import decode, files, preprocess
from pipelines.dataset import make_dataset, sample_indices
from pipelines.mains import option
from pipelines.preprocess import MEAN, STD


@dataclasses.dataclass
class GradCamConfig:
    """Settings of the main; each field is one of its flags (`class_index` is --class)."""

    model: str = option(None, "Trained model (.keras).")
    out_dir: str = option(None, "Output folder.")
    tfrecord: str = option(None, "TFRecord file of clips (with --index).")
    index: int = option(0, "Record of --tfrecord (0-based).")
    video: str = option(None, "A video file instead of --tfrecord.")
    class_index: int = option(None, "Class to explain (default: top-1).", flag="class")
    layer: str = option(None, "5D layer to read (default: the last 5D feature map).")
    frame_stride: int = option(None, "Frame stride (default: as trained, else 8).")
    eval_resize: int = option(None, "Short side before the centre crop (default: as trained).")


def feature_layer(model, layer_name=None):
    """The layer Grad-CAM reads: `layer_name`, or the last layer with a 5D (batch, T, H, W, C) output.

    Raises ValueError naming --layer: unknown name (listing the 5D layers), or not a 5D output."""
    five_d = [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer) and len(_output_shape(layer)) == 5
    ]
    if layer_name is None:
        if not five_d:
            raise ValueError(f"--layer: model {model.name!r} has no 5D (batch, T, H, W, C) feature map")
        return five_d[-1]
    try:
        layer = model.get_layer(layer_name)
    except ValueError:
        names = ", ".join(layer.name for layer in five_d[-8:])
        raise ValueError(
            f"--layer: model {model.name!r} has no layer named {layer_name!r} (its last 5D layers: {names})"
        ) from None
    if len(_output_shape(layer)) != 5:
        raise ValueError(
            f"--layer: {layer_name!r} outputs {tuple(_output_shape(layer))}, not a 5D (batch, T, H, W, C) "
            "feature map"
        )
    return layer


def _output_shape(layer):
    try:
        output = layer.output
    except (AttributeError, ValueError):  # a layer called several times has no single output
        return ()
    return tuple(output.shape) if hasattr(output, "shape") else ()


def upsample(cam, num_frames, size):
    """(T', H', W') -> (num_frames, size, size): bilinear in space, then linear in time (half-pixel)."""
    cam = tf.convert_to_tensor(cam, tf.float32)
    spatial = tf.image.resize(cam[..., None], (size, size), method="bilinear")  # (T', S, S, 1)
    flat = tf.reshape(spatial, [1, tf.shape(spatial)[0], size * size, 1])
    timed = tf.image.resize(flat, (num_frames, size * size), method="bilinear")
    return tf.reshape(timed, (num_frames, size, size))


def explain(model, clip, class_index=None, layer_name=None):
    """Grad-CAM of one clip.

    Args:
      model: a functional Keras model: clip (1, T, S, S, 3) -> logits (1, num_classes).
      clip: float (T, S, S, 3) (or (1, T, S, S, 3)) as the model takes it (normalised).
      class_index: the class to explain; None: the top-1 class.
      layer_name: the 5D layer to read; None: the last 5D feature map (see feature_layer).

    Returns:
      dict: heatmap float32 (T, S, S) in [0, 1] (all 0 when no location raises the class score), class_index,
      logits float32 (num_classes,), layer (name), feature_shape (T', H', W').
    """
    clip = np.asarray(clip, np.float32)
    if clip.ndim == 5 and clip.shape[0] == 1:
        clip = clip[0]
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"clip must be (T, S, S, 3). Received: shape={clip.shape}")
    layer = feature_layer(model, layer_name)
    probe = keras.Model(model.inputs, [layer.output, model.outputs[0]])
    num_classes = int(model.outputs[0].shape[-1])
    inputs = tf.constant(clip[None])
    with tf.GradientTape() as tape:
        features, logits = probe(inputs, training=False)
        features = tf.cast(features, tf.float32)
        logits = tf.cast(logits, tf.float32)
        chosen = int(tf.argmax(logits[0])) if class_index is None else int(class_index)
        if not 0 <= chosen < num_classes:
            raise ValueError(f"--class: must be in [0, {num_classes}). Received: class={class_index}")
        score = logits[0, chosen]
    grads = tape.gradient(score, features)
    if grads is None:
        raise ValueError(f"--layer: the logits do not depend on {layer.name!r}")
    weights = tf.reduce_mean(grads[0], axis=(0, 1, 2))  # (C,)
    cam = tf.nn.relu(tf.reduce_sum(features[0] * weights, axis=-1))  # (T', H', W')
    heat = upsample(cam, clip.shape[0], clip.shape[1]).numpy()
    heat = np.maximum(heat, 0.0)
    peak = float(heat.max())
    heat = (heat / peak if peak > 0 else heat).astype(np.float32)
    return dict(
        heatmap=heat,
        class_index=chosen,
        logits=logits[0].numpy(),
        layer=layer.name,
        feature_shape=tuple(int(d) for d in cam.shape),
    )


def grad_cam(model, clip, class_index=None, layer_name=None):
    """Grad-CAM heatmap float32 (T, S, S) in [0, 1] of `clip` for `class_index` (default top-1); see explain."""
    return explain(model, clip, class_index, layer_name)["heatmap"]


# -- reading the clip -----------------------------------------------------------------------------------------


def _clip_settings(model, model_path, frame_stride=None, eval_resize=None):
    config = training_config(model_path)
    _, num_frames, crop, _, _ = model.input_shape
    stride = frame_stride or config.get("frame_stride") or 8
    resize = eval_resize or config.get("eval_resize") or round(crop * 8 / 7)
    return int(num_frames), int(crop), int(stride), int(resize)


def _check_source(tfrecord, index, video):
    if (tfrecord is None) == (video is None):
        raise ValueError(
            f"Pass exactly one of --tfrecord or --video. Received: tfrecord={tfrecord!r}, video={video!r}"
        )
    if tfrecord is not None:
        if not tf.io.gfile.exists(tfrecord) or tf.io.gfile.isdir(tfrecord):
            raise ValueError(f"--tfrecord: no such file. Received: tfrecord={tfrecord!r}")
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise ValueError(f"--index: must be an integer >= 0. Received: index={index!r}")
    elif not os.path.isfile(video):
        raise ValueError(f"--video: no such file. Received: video={video!r}")


def read_clip(num_frames, crop_size, frame_stride, eval_resize, tfrecord=None, index=0, video=None):
    """The evaluation view (centre clip, centre crop, normalised) of record `index` of a TFRecord file, or of a
    video file: float32 (T, crop, crop, 3). Raises ValueError naming --tfrecord/--index/--video."""

    _check_source(tfrecord, index, video)
    if tfrecord is not None:
        ds = make_dataset(
            [tfrecord],
            mode="eval",
            batch_size=1,
            num_frames=num_frames,
            frame_stride=frame_stride,
            crop_size=crop_size,
            eval_resize=eval_resize,
        )
        for clips, _ in ds.skip(index).take(1):
            return clips[0].numpy()
        count = int(ds.reduce(np.int64(0), lambda n, _: n + 1))
        raise ValueError(
            f"--index: {tfrecord} holds {count} records (valid: 0..{count - 1}). Received: index={index}"
        )

    try:
        info = decode.probe(video)
        indices = sample_indices(info.num_frames, num_frames, frame_stride, "eval").numpy()
        frames = decode.read_frames(video, indices=indices)
    except decode.DecodeError as e:
        raise ValueError(f"--video: cannot decode {video}: {e}") from None
    height, width = frames.shape[1:3]
    new_h, new_w = preprocess.resized_shape(height, width, eval_resize)
    clip = preprocess.resized_crop(
        frames, height, width, new_h, new_w, crop_size, (new_h - crop_size) // 2, (new_w - crop_size) // 2
    )
    return preprocess.normalize(clip).numpy()


# -- outputs --------------------------------------------------------------------------------------------------


def _rgb(clip):
    """Normalised clip -> float RGB in [0, 1] (inverse of pipelines.preprocess.normalize)."""

    return np.clip(clip * np.asarray(STD, np.float32) + np.asarray(MEAN, np.float32), 0.0, 1.0)


def _npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def write_outputs(out_dir, clip, heatmap, title=""):
    """Writes frame_###.png overlays, gradcam.gif, heatmap.npy and clip.npy into out_dir (atomically each).

    Returns the list of paths written."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from PIL import Image

    tf.io.gfile.makedirs(out_dir)
    rgb = _rgb(np.asarray(clip, np.float32))
    written, frames = [], []
    for t in range(len(rgb)):
        fig, ax = plt.subplots(figsize=(3.2, 3.4))
        ax.imshow(rgb[t])
        ax.imshow(heatmap[t], cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
        ax.set_title(f"{title}\nframe {t + 1}/{len(rgb)}", fontsize=8)
        ax.axis("off")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        path = os.path.join(out_dir, f"frame_{t:03d}.png")
        files.write_atomic(path, buffer.getvalue())
        written.append(path)
        frames.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=250, loop=0)
    for name, data in (
        ("gradcam.gif", gif.getvalue()),
        ("heatmap.npy", _npy_bytes(np.asarray(heatmap, np.float32))),
        ("clip.npy", _npy_bytes(np.asarray(clip, np.float32))),
    ):
        path = os.path.join(out_dir, name)
        files.write_atomic(path, data)
        written.append(path)
    return written


def run(config):
    """Loads the model, reads the clip, runs Grad-CAM and writes the outputs; returns the gradcam.json dict."""
    if not config.out_dir:
        raise ValueError(f"--out_dir: an output folder is required. Received: out_dir={config.out_dir!r}")
    if not config.model:
        raise ValueError(f"--model: a .keras model is required. Received: model={config.model!r}")
    _check_source(config.tfrecord, config.index, config.video)  # before the (slow) model load
    model = load_model(config.model)  # FileNotFoundError / ValueError naming --model
    num_frames, crop, stride, resize = _clip_settings(
        model, config.model, config.frame_stride, config.eval_resize
    )
    layer = feature_layer(model, config.layer)  # bad --layer fails before any data is read
    clip = read_clip(num_frames, crop, stride, resize, config.tfrecord, config.index, config.video)
    result = explain(model, clip, config.class_index, layer.name)
    names = training_config(config.model).get("class_names") or []
    chosen = result["class_index"]
    name = names[chosen] if chosen < len(names) else str(chosen)
    probabilities = tf.nn.softmax(result["logits"]).numpy()
    title = f"class {chosen} ({name}), p={probabilities[chosen]:.3f}, layer {result['layer']}"
    written = write_outputs(config.out_dir, clip, result["heatmap"], title)
    summary = {
        "model": config.model,
        "source": config.video or f"{config.tfrecord}#{config.index}",
        "class_index": chosen,
        "class_name": name,
        "probability": float(probabilities[chosen]),
        "top1": int(np.argmax(probabilities)),
        "layer": result["layer"],
        "feature_shape": list(result["feature_shape"]),
        "num_frames": num_frames,
        "frame_stride": stride,
        "crop_size": crop,
        "eval_resize": resize,
        "files": [os.path.basename(p) for p in written],
    }
    files.write_json(os.path.join(config.out_dir, "gradcam.json"), summary)
    print(
        f"Grad-CAM of class {chosen} ({name}, p={summary['probability']:.3f}) at {result['layer']} "
        f"{tuple(result['feature_shape'])}: wrote {len(written)} files to {config.out_dir}",
        flush=True,
    )
    return summary
