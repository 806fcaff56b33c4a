"""Evaluation: `python -m cost_tf.evaluate --model=runs/demo/model.keras --views=10x3`.

Each video is read as C clips x K crops (pipelines.dataset "test" mode), the model's softmax is averaged over
the C*K views, and the video counts once. Writes, next to the model unless --output_dir is given:
eval_{views}.json (top-1, top-5, counts), per_class_{views}.csv (accuracy per class) and
confusion_{views}.png (row-normalised confusion matrix). A model trained with --multilabel is scored by mAP
(sigmoid scores averaged over the views; eval_{views}.json and per_class_{views}.csv with each class's AP).

Spec (section 3): 1x1 = centre clip, short side 256, centre crop 224; 10x3 = 10 clips evenly spaced x 3 crops
of the full short side (256) along the long side. A model trained at 224 runs on 256 crops by rebuilding it
at that input size with the same weights (global average pooling makes the network size-agnostic).
Data defaults (dataset, data folder, frame stride, resize) come from the config.json that cost_tf.train writes
beside the model.
"""

import csv
import dataclasses
import io
import os
import re
import sys

import numpy as np
import tensorflow as tf

from cost_tf import metrics
from cost_tf.autotune import AUTOTUNE_HELP, autotune_for_main
from cost_tf.loading import load_model, resize_model, training_config
from pipelines import files, preprocess, readers


@dataclasses.dataclass
class EvalConfig:
    """Evaluation settings; None means: from the training config.json beside the model, else the default."""

    model: str = None
    output_dir: str = None
    views: str = "1x1"
    batch_size: int = 4  # videos per batch (x views clips through the network)
    dataset: str = None
    eval_pattern: str = None
    eval_annotations: str = None
    eval_video_dir: str = None
    classes: str = None
    skip_bad_rows: bool = None
    data_dir: str = None
    num_frames: int = None
    frame_stride: int = None
    crop_size: int = None
    eval_resize: int = None
    autotune: bool = False  # the main's --autotune (default on): time the CoST implementations first


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
    dataset = config.dataset or train_config.get("dataset", "synthetic")
    names = train_config.get("class_names")
    if config.classes:
        names = readers.read_class_names(config.classes)
    if dataset in ("synthetic", "tfrecord"):
        pattern = config.eval_pattern or train_config.get("eval_pattern")
        if pattern is None and dataset == "synthetic":
            from pipelines import synthetic

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
    train_annotations = train_config.get("annotations") if dataset == "kinetics" and not classes else None
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
        dataset=dataset,
        classes=classes,
        train_annotations=train_annotations,
        skip_bad_rows=skip_bad_rows,
    )
    from pipelines.readers import read_annotations

    _, report = read_annotations(
        dataset,
        annotations,
        video_dir,
        classes=classes,
        train_annotations=train_annotations,
        skip_bad_rows=skip_bad_rows,
    )
    source["report"] = report
    return source, names or report.classes


def evaluate(config):
    """Multi-view evaluation of a trained model (see module docstring). Returns the eval_{views}.json dict."""
    from pipelines.dataset import make_dataset

    num_clips, num_crops = parse_views(config.views)
    if not config.model or not tf.io.gfile.exists(config.model):
        raise ValueError(f"--model: no such file. Received: model={config.model!r}")
    train_config = training_config(config.model)
    source, names = _eval_source(config, train_config)
    annotation_report = source.pop("report", None)
    trained_crop = train_config.get("crop_size")
    eval_resize = config.eval_resize or train_config.get("eval_resize")
    model = load_model(config.model)
    _, model_frames, model_size, _, _ = model.input_shape
    trained_crop = trained_crop or model_size
    eval_resize = eval_resize or preprocess.eval_short_side(trained_crop)
    # The spec's multi-crop views are crops of the full short side; one view is the training crop size.
    crop_size = config.crop_size or (eval_resize if num_crops > 1 else trained_crop)
    num_frames = config.num_frames or model_frames
    frame_stride = config.frame_stride or train_config.get("frame_stride") or 8
    model = resize_model(model, num_frames=num_frames, input_size=crop_size)
    num_classes = model.output_shape[-1]
    if config.autotune:
        autotune_for_main(
            model,
            (config.batch_size * num_clips * num_crops, num_frames, crop_size, crop_size, 3),
            modes=("inference",),
        )
    names = names if names and len(names) == num_classes else [str(i) for i in range(num_classes)]
    multilabel = bool(train_config.get("multilabel", False))
    if multilabel:
        source = dict(source, multilabel=True, num_classes=num_classes)

    dataset = make_dataset(
        mode="test",
        batch_size=config.batch_size,
        num_frames=num_frames,
        frame_stride=frame_stride,
        crop_size=crop_size,
        num_clips=num_clips,
        num_crops=num_crops,
        eval_resize=eval_resize,
        **source,
    )

    @tf.function(reduce_retracing=True)
    def predict(clips):
        logits = tf.cast(model(clips, training=False), tf.float32)
        return tf.sigmoid(logits) if multilabel else tf.nn.softmax(logits, axis=-1)

    from pipelines.dataset import raw_video_skips

    skips_before = len(raw_video_skips())  # this process may have read (and skipped) videos before
    all_probabilities, all_labels = [], []
    for clips, labels in dataset:
        views = clips.shape[1]
        flat = tf.reshape(clips, [-1] + clips.shape[2:].as_list())  # (B * V, T, crop, crop, 3), video-major
        all_probabilities.append(average_views(predict(flat).numpy(), views))
        all_labels.append(labels.numpy())
    probabilities = np.concatenate(all_probabilities) if all_probabilities else np.zeros((0, num_classes))
    if multilabel:
        labels = np.concatenate(all_labels) if all_labels else np.zeros((0, num_classes))
        return _report_map(config, probabilities, labels, names, num_clips, num_crops, num_frames, crop_size)
    labels = np.concatenate(all_labels) if all_labels else np.zeros((0,), np.int64)
    labelled = labels >= 0
    if not labelled.any():
        raise ValueError(f"No labelled video in the evaluation data ({len(labels)} videos read).")
    probabilities, labels = probabilities[labelled], labels[labelled]
    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(labels, predictions, num_classes)

    output_dir = config.output_dir or os.path.dirname(os.path.abspath(config.model))
    tf.io.gfile.makedirs(output_dir)
    tag = f"{num_clips}x{num_crops}"
    csv_path = os.path.join(output_dir, f"per_class_{tag}.csv")
    png_path = os.path.join(output_dir, f"confusion_{tag}.png")
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
        matrix, names, png_path, f"{os.path.basename(config.model)}, {tag} views: top-1 {top1:.3f}"
    )
    report = {
        "top1": top1,
        "top5": top5,
        "num_videos": int(labelled.sum()),
        "num_unlabelled": int((~labelled).sum()),
        "views": tag,
        "num_frames": num_frames,
        "frame_stride": frame_stride,
        "crop_size": crop_size,
        "eval_resize": eval_resize,
        "model": config.model,
        "per_class_csv": csv_path,
        "confusion_png": png_path,
    }
    if annotation_report is not None:  # raw videos: what was not evaluated, and why
        unreadable = sorted(dict(raw_video_skips()[skips_before:]).items())
        own_rows = [row for row in annotation_report.bad_rows if row["file"] == annotation_report.annotations]
        report["skipped_videos"] = {
            "missing": annotation_report.missing,
            "bad_rows": own_rows,
            "unreadable": [{"path": p, "reason": r} for p, r in unreadable],
        }
        counts = {k: len(v) for k, v in report["skipped_videos"].items()}
        if any(counts.values()):
            print(
                f"Skipped videos: {counts['missing']} missing on disk, {counts['bad_rows']} bad annotation "
                f"rows, {counts['unreadable']} unreadable (listed in eval_{tag}.json).",
                flush=True,
            )
    files.write_json(os.path.join(output_dir, f"eval_{tag}.json"), report)
    print(
        f"{tag} views on {report['num_videos']} videos: top-1 {top1:.4f}, top-5 {top5:.4f}; wrote "
        f"{csv_path}, {png_path}",
        flush=True,
    )
    return report


def _report_map(config, scores, labels, names, num_clips, num_crops, num_frames, crop_size):
    """Multi-label report: mAP (classes with a positive) and per-class AP; eval_{views}.json."""
    if not labels.any():
        raise ValueError(f"No labelled video in the evaluation data ({len(labels)} videos read).")
    mean_ap, per_class = metrics.mean_average_precision(labels, scores)
    output_dir = config.output_dir or os.path.dirname(os.path.abspath(config.model))
    tf.io.gfile.makedirs(output_dir)
    tag = f"{num_clips}x{num_crops}"
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
        "num_frames": num_frames,
        "crop_size": crop_size,
        "model": config.model,
        "per_class_csv": csv_path,
    }
    files.write_json(os.path.join(output_dir, f"eval_{tag}.json"), report)
    print(f"{tag} views on {len(labels)} videos: mAP {mean_ap:.4f}; wrote {csv_path}", flush=True)
    return report


# -- absl main ------------------------------------------------------------------------------------------------


def define_flags(flag_values=None):
    """Defines the evaluation flags; returns {name: FlagHolder}."""
    from absl import flags

    fv = flag_values if flag_values is not None else flags.FLAGS
    d = EvalConfig()
    h = {
        "model": flags.DEFINE_string("model", None, "Trained model (.keras).", flag_values=fv),
        "output_dir": flags.DEFINE_string(
            "output_dir", None, "Output folder (default: beside the model).", flag_values=fv
        ),
        "views": flags.DEFINE_string("views", d.views, "CLIPSxCROPS per video: 1x1 or 10x3.", flag_values=fv),
        "batch_size": flags.DEFINE_integer("batch_size", d.batch_size, "Videos per batch.", flag_values=fv),
        "dataset": flags.DEFINE_enum(
            "dataset",
            None,
            ("synthetic", "tfrecord", "kinetics", "moments"),
            "Data source (default: as trained).",
            flag_values=fv,
        ),
    }
    for name, help_ in (
        ("eval_pattern", "Glob of evaluation TFRecords."),
        ("eval_annotations", "Evaluation annotation file (kinetics/moments)."),
        ("eval_video_dir", "Folder of the evaluation videos."),
        ("classes", "Class list file (Kinetics: one name per line; Moments: category,index)."),
        ("data_dir", "Synthetic dataset folder."),
    ):
        h[name] = flags.DEFINE_string(name, None, help_ + " Default: as trained.", flag_values=fv)
    h["skip_bad_rows"] = flags.DEFINE_bool(
        "skip_bad_rows",
        None,
        "Raw videos: skip malformed annotation rows (listed in eval_{views}.json). Default: as trained.",
        flag_values=fv,
    )
    for name, help_ in (
        ("num_frames", "Frames per clip (default: the model's)."),
        ("frame_stride", "Frame stride (default: as trained)."),
        ("crop_size", "Crop side (default: training crop for 1 crop, the eval short side for several)."),
        ("eval_resize", "Short side before cropping (default: as trained)."),
    ):
        h[name] = flags.DEFINE_integer(name, None, help_, flag_values=fv)
    h["autotune"] = flags.DEFINE_bool("autotune", True, AUTOTUNE_HELP, flag_values=fv)
    return h


def main(argv):
    if len(argv) > 1:
        raise ValueError(f"Unexpected arguments: {argv[1:]}")
    config = EvalConfig(**{name: holder.value for name, holder in _FLAGS.items()})
    try:
        parse_views(config.views)
        if not config.model or not tf.io.gfile.exists(config.model):
            raise ValueError(f"--model: no such file. Received: model={config.model!r}")
        evaluate(config)
    except (ValueError, OSError) as e:  # bad flags, files and annotation rows: one line, exit status 1
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    from absl import app

    _FLAGS = define_flags()
    app.run(main)
