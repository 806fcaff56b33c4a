"""Evaluation (multi-view, per-class accuracy, confusion matrix): the library behind `python -m cost_tf.evaluate`.

`evaluate(EvalConfig(...)) -> results`, `parse_views`; see cost_tf/evaluate/__main__.py for what a
run reads and writes.
"""

import csv
import dataclasses
import io
import os
import re

import numpy as np
import tensorflow as tf

from cost_tf import metrics
from cost_tf.autotune import AUTOTUNE_HELP, autotune_for_main
from cost_tf.loading import load_model, resize_model, training_config
from pipelines import dataset, files, preprocess, readers, synthetic
from pipelines.mains import option


@dataclasses.dataclass
class EvalConfig:
    """Evaluation settings; None means: from the training config.json beside the model, else the default.
    Each field is a flag of the main (`python -m cost_tf.evaluate --FIELD=...`)."""

    model: str = option(None, "Trained model (.keras).")
    output_dir: str = option(None, "Output folder (default: beside the model).")
    views: str = option("1x1", "CLIPSxCROPS per video: 1x1 or 10x3.")
    batch_size: int = option(4, "Videos per batch.")  # x views clips through the network
    dataset: str = option(
        None, "Data source (default: as trained).", choices=("synthetic", "tfrecord", "kinetics", "moments")
    )
    eval_pattern: str = option(None, "Glob of evaluation TFRecords. Default: as trained.")
    eval_annotations: str = option(
        None, "Evaluation annotation file (kinetics/moments). Default: as trained."
    )
    eval_video_dir: str = option(None, "Folder of the evaluation videos. Default: as trained.")
    classes: str = option(
        None, "Class list file (Kinetics: one name per line; Moments: category,index). Default: as trained."
    )
    skip_bad_rows: bool = option(
        None, "Raw videos: skip malformed annotation rows (listed in eval_{views}.json). Default: as trained."
    )
    data_dir: str = option(None, "Synthetic dataset folder. Default: as trained.")
    num_frames: int = option(None, "Frames per clip (default: the model's).")
    frame_stride: int = option(None, "Frame stride (default: as trained).")
    crop_size: int = option(
        None, "Crop side (default: training crop for 1 crop, the eval short side for several)."
    )
    eval_resize: int = option(None, "Short side before cropping (default: as trained).")
    autotune: bool = option(False, AUTOTUNE_HELP)  # off in the library; the main's default is FLAG_DEFAULTS


# The main's defaults where they differ from the library's: a command-line run autotunes.
FLAG_DEFAULTS = {"autotune": True}


def parse_views(views):
    """ "10x3" -> (10, 3): clips x crops."""
    match = re.fullmatch(r"\s*(\d+)\s*x\s*(\d+)\s*", str(views))
    if not match or int(match[1]) < 1 or int(match[2]) < 1:
        raise ValueError(
            f"views must be CLIPSxCROPS with positive counts, e.g. 1x1 or 10x3. Received: views={views!r}"
        )
    return int(match[1]), int(match[2])


def average_views(probabilities, num_views):
    """Per-video class probabilities: the mean over each video's consecutive `num_views` rows.

    Args:
      probabilities: (B * num_views, C) softmax outputs, video-major (rows v*num_views ... belong to video v).
      num_views: views per video.
    Returns:
      (B, C) float64.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim != 2 or probabilities.shape[0] % num_views:
        raise ValueError(
            f"Expected (B * {num_views}, C) probabilities. Received: shape={probabilities.shape}"
        )
    return probabilities.reshape(-1, num_views, probabilities.shape[1]).mean(axis=1)


def topk_correct(probabilities, labels, k):
    """Boolean (B,): the label is among the k most probable classes (ties broken by lower class index)."""
    order = np.argsort(-np.asarray(probabilities), axis=1, kind="stable")[:, :k]
    return (order == np.asarray(labels)[:, None]).any(axis=1)


def confusion_matrix(labels, predictions, num_classes):
    """(num_classes, num_classes) int64 counts: row = true class, column = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def plot_confusion(matrix, class_names, path, title):
    """Writes a row-normalised confusion matrix PNG (matplotlib, Agg backend) atomically."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    totals = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    n = len(matrix)
    size = min(4 + 0.35 * n, 20)
    fig, ax = plt.subplots(figsize=(size, size))
    image = ax.imshow(normalised, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if n <= 40:
        ax.set_xticks(range(n), class_names, rotation=90)
        ax.set_yticks(range(n), class_names)
        if n <= 20:
            for i in range(n):
                for j in range(n):
                    if matrix[i, j]:
                        ax.text(
                            j,
                            i,
                            str(matrix[i, j]),
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if normalised[i, j] > 0.5 else "black",
                        )
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    files.write_atomic(path, buffer.getvalue())


def _eval_source(config, train_config):
    """make_dataset source kwargs and class names for the evaluation split."""
    kind = config.dataset or train_config.get("dataset", "synthetic")
    names = train_config.get("class_names")
    if config.classes:
        names = readers.read_class_names(config.classes)
    if kind in ("synthetic", "tfrecord"):
        pattern = config.eval_pattern or train_config.get("eval_pattern")
        if pattern is None and kind == "synthetic":
            data_dir = (
                config.data_dir
                or train_config.get("data_dir")
                or os.path.join(train_config.get("model_dir") or os.path.dirname(config.model), "data")
            )
            _, pattern = synthetic.write_synthetic(
                data_dir,
                num_train=train_config.get("synthetic_train", synthetic.NUM_TRAIN),
                num_eval=train_config.get("synthetic_eval", synthetic.NUM_EVAL),
            )
            names = names or list(synthetic.CLASSES)
        patterns = [pattern] if isinstance(pattern, str) else list(pattern or [])
        if not patterns or not all(tf.io.gfile.glob(p) for p in patterns):
            raise ValueError(
                f"--eval_pattern: no files match this pattern. Received: eval_pattern={pattern!r}"
            )
        return dict(file_pattern=pattern), names
    annotations = config.eval_annotations or train_config.get("eval_annotations")
    video_dir = config.eval_video_dir or train_config.get("eval_video_dir") or train_config.get("video_dir")
    if not annotations or not tf.io.gfile.exists(annotations):
        raise ValueError(f"--eval_annotations: no such file. Received: eval_annotations={annotations!r}")
    if not video_dir or not tf.io.gfile.isdir(video_dir):
        raise ValueError(
            f"--eval_video_dir: must be an existing folder of videos. Received: eval_video_dir={video_dir!r}"
        )
    classes = config.classes or train_config.get("classes")
    # Kinetics without a class list: the class indices of the training CSV the model was trained on.
    train_annotations = train_config.get("annotations") if kind == "kinetics" and not classes else None
    if train_annotations and not tf.io.gfile.exists(train_annotations):
        train_annotations = None
    skip_bad_rows = (
        config.skip_bad_rows
        if config.skip_bad_rows is not None
        else bool(train_config.get("skip_bad_rows", False))
    )
    source = dict(
        annotations=annotations,
        video_dir=video_dir,
        dataset=kind,
        classes=classes,
        train_annotations=train_annotations,
        skip_bad_rows=skip_bad_rows,
    )
    _, report = readers.read_annotations(
        kind,
        annotations,
        video_dir,
        classes=classes,
        train_annotations=train_annotations,
        skip_bad_rows=skip_bad_rows,
    )
    source["report"] = report
    return source, names or report.classes


@dataclasses.dataclass(frozen=True)
class _Views:
    """What the model sees of each video: num_clips x num_crops clips of num_frames, one every frame_stride,
    crop_size crops of the short side eval_resize."""

    num_clips: int
    num_crops: int
    num_frames: int
    frame_stride: int
    crop_size: int
    eval_resize: int

    @property
    def tag(self):
        return f"{self.num_clips}x{self.num_crops}"


def evaluate(config):
    """Multi-view evaluation of a trained model (see module docstring). Returns the eval_{views}.json dict."""
    num_clips, num_crops = parse_views(config.views)  # a bad --views or --model fails before any work
    if not config.model or not tf.io.gfile.exists(config.model):
        raise ValueError(f"--model: no such file. Received: model={config.model!r}")
    train_config = training_config(config.model)
    source, names = _eval_source(config, train_config)
    annotation_report = source.pop("report", None)
    model, views = _model_at_views(config, train_config, num_clips, num_crops)
    num_classes = model.output_shape[-1]
    if config.autotune:
        autotune_for_main(
            model,
            (
                config.batch_size * num_clips * num_crops,
                views.num_frames,
                views.crop_size,
                views.crop_size,
                3,
            ),
            modes=("inference",),
        )
    names = names if names and len(names) == num_classes else [str(i) for i in range(num_classes)]
    multilabel = bool(train_config.get("multilabel", False))
    if multilabel:
        source = dict(source, multilabel=True, num_classes=num_classes)
    skips_before = len(dataset.raw_video_skips())  # this process may have read (and skipped) videos before
    clips = dataset.make_dataset(
        mode="test",
        batch_size=config.batch_size,
        num_frames=views.num_frames,
        frame_stride=views.frame_stride,
        crop_size=views.crop_size,
        num_clips=num_clips,
        num_crops=num_crops,
        eval_resize=views.eval_resize,
        **source,
    )
    probabilities, labels = _predict_videos(model, clips, multilabel, num_classes)
    if multilabel:
        return _report_map(config, probabilities, labels, names, views)
    report = _report_top1(config, probabilities, labels, names, views)
    if annotation_report is not None:  # raw videos: what was not evaluated, and why
        report["skipped_videos"] = _skipped_videos(annotation_report, skips_before, views.tag)
    files.write_json(os.path.join(_output_dir(config), f"eval_{views.tag}.json"), report)
    print(
        f"{views.tag} views on {report['num_videos']} videos: top-1 {report['top1']:.4f}, top-5 "
        f"{report['top5']:.4f}; wrote {report['per_class_csv']}, {report['confusion_png']}",
        flush=True,
    )
    return report


def _model_at_views(config, train_config, num_clips, num_crops):
    """The model rebuilt at the evaluation's clip length and crop, and the _Views it sees."""
    model = load_model(config.model)
    _, model_frames, model_size, _, _ = model.input_shape
    trained_crop = train_config.get("crop_size") or model_size
    eval_resize = (
        config.eval_resize or train_config.get("eval_resize") or preprocess.eval_short_side(trained_crop)
    )
    # The spec's multi-crop views are crops of the full short side; one view is the training crop size.
    views = _Views(
        num_clips=num_clips,
        num_crops=num_crops,
        num_frames=config.num_frames or model_frames,
        frame_stride=config.frame_stride or train_config.get("frame_stride") or 8,
        crop_size=config.crop_size or (eval_resize if num_crops > 1 else trained_crop),
        eval_resize=eval_resize,
    )
    return resize_model(model, num_frames=views.num_frames, input_size=views.crop_size), views


def _predict_videos(model, clips, multilabel, num_classes):
    """(probabilities (N, classes), labels) per video: softmax (sigmoid for multi-label) averaged over views."""

    @tf.function(reduce_retracing=True)
    def predict(batch):
        logits = tf.cast(model(batch, training=False), tf.float32)
        return tf.sigmoid(logits) if multilabel else tf.nn.softmax(logits, axis=-1)

    all_probabilities, all_labels = [], []
    for batch, labels in clips:
        views = batch.shape[1]
        flat = tf.reshape(batch, [-1] + batch.shape[2:].as_list())  # (B * V, T, crop, crop, 3), video-major
        all_probabilities.append(average_views(predict(flat).numpy(), views))
        all_labels.append(labels.numpy())
    probabilities = np.concatenate(all_probabilities) if all_probabilities else np.zeros((0, num_classes))
    empty_labels = np.zeros((0, num_classes)) if multilabel else np.zeros((0,), np.int64)
    return probabilities, np.concatenate(all_labels) if all_labels else empty_labels


def _output_dir(config):
    output_dir = config.output_dir or os.path.dirname(os.path.abspath(config.model))
    tf.io.gfile.makedirs(output_dir)
    return output_dir


def _report_top1(config, probabilities, labels, names, views):
    """Top-1/top-5 over the labelled videos; writes per_class_{views}.csv and confusion_{views}.png."""
    num_classes = probabilities.shape[1]
    labelled = labels >= 0
    if not labelled.any():
        raise ValueError(f"No labelled video in the evaluation data ({len(labels)} videos read).")
    probabilities, labels = probabilities[labelled], labels[labelled]
    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, num_classes)
    output_dir = _output_dir(config)
    csv_path = os.path.join(output_dir, f"per_class_{views.tag}.csv")
    png_path = os.path.join(output_dir, f"confusion_{views.tag}.png")
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["class_index", "class_name", "num_videos", "correct", "top1"])
    for i, name in enumerate(names):
        total = int(matrix[i].sum())
        writer.writerow([i, name, total, int(matrix[i, i]), f"{matrix[i, i] / total:.6f}" if total else ""])
    files.write_atomic(csv_path, rows.getvalue())
    top1 = float(np.mean(predictions == labels))
    top5 = float(np.mean(topk_correct(probabilities, labels, min(5, num_classes))))
    plot_confusion(
        matrix, names, png_path, f"{os.path.basename(config.model)}, {views.tag} views: top-1 {top1:.3f}"
    )
    return {
        "top1": top1,
        "top5": top5,
        "num_videos": int(labelled.sum()),
        "num_unlabelled": int((~labelled).sum()),
        "views": views.tag,
        "num_frames": views.num_frames,
        "frame_stride": views.frame_stride,
        "crop_size": views.crop_size,
        "eval_resize": views.eval_resize,
        "model": config.model,
        "per_class_csv": csv_path,
        "confusion_png": png_path,
    }


def _skipped_videos(annotation_report, skips_before, tag):
    """The raw videos not evaluated: missing on disk, bad annotation rows, unreadable (printed when any)."""
    skipped = {
        "missing": annotation_report.missing,
        "bad_rows": annotation_report.own_bad_rows(),
        "unreadable": dataset.unreadable_videos(since=skips_before),
    }
    counts = {k: len(v) for k, v in skipped.items()}
    if any(counts.values()):
        print(
            f"Skipped videos: {counts['missing']} missing on disk, {counts['bad_rows']} bad annotation "
            f"rows, {counts['unreadable']} unreadable (listed in eval_{tag}.json).",
            flush=True,
        )
    return skipped


def _report_map(config, scores, labels, names, views):
    """Multi-label report: mAP (classes with a positive) and per-class AP; eval_{views}.json."""
    if not labels.any():
        raise ValueError(f"No labelled video in the evaluation data ({len(labels)} videos read).")
    mean_ap, per_class = metrics.mean_average_precision(labels, scores)
    output_dir, tag = _output_dir(config), views.tag
    csv_path = os.path.join(output_dir, f"per_class_{tag}.csv")
    rows = io.StringIO()
    writer = csv.writer(rows, lineterminator="\n")
    writer.writerow(["class_index", "class_name", "num_positives", "ap"])
    for i, name in enumerate(names):
        writer.writerow(
            [i, name, int(labels[:, i].sum()), "" if np.isnan(per_class[i]) else f"{per_class[i]:.6f}"]
        )
    files.write_atomic(csv_path, rows.getvalue())
    report = {
        "mAP": mean_ap,
        "num_videos": len(labels),
        "num_unlabelled": int((labels.sum(axis=1) == 0).sum()),
        "num_classes_with_positives": int((~np.isnan(per_class)).sum()),
        "views": tag,
        "num_frames": views.num_frames,
        "crop_size": views.crop_size,
        "model": config.model,
        "per_class_csv": csv_path,
    }
    files.write_json(os.path.join(output_dir, f"eval_{tag}.json"), report)
    print(f"{tag} views on {len(labels)} videos: mAP {mean_ap:.4f}; wrote {csv_path}", flush=True)
    return report
