"""How much each CoST layer relies on spatial (H-W) versus temporal (T-W, T-H) views: the library behind
`python -m cost_tf.coefficients` (see cost_tf/coefficients/__main__.py for what it writes).

`layer_coefficients(model, clips)`, `summarize`, `per_class_temporal`, `analyze`, `analyze_model`,
`run(CoefficientsConfig)`.
"""

import csv
import dataclasses
import os

import keras
import numpy as np

from cost_tf.cost import VIEWS, CoST
from cost_tf.loading import load_model, training_config
from pipelines import files, readers, synthetic
from pipelines.dataset import make_dataset
from pipelines.mains import option

_VIEW_LABELS = {"hw": "H-W (spatial)", "tw": "T-W", "th": "T-H"}
COLUMNS = ["layer", "variant", "channels"] + [
    f"{v}_{s}" for v in VIEWS for s in ("mean", "std_channels", "std_clips")
]


def cost_layers(model):
    """The model's CoST layers in order of depth (topological order of the functional graph)."""
    return [layer for layer in model.layers if isinstance(layer, CoST)]


def layer_coefficients(model, clips=None, batch_size=8):
    """Coefficients of every CoST layer: {name: (3, C)} for "a"; {name: (N, 3, C)} for "b" over `clips`."""
    layers = cost_layers(model)
    if not layers:
        raise ValueError(f"Model {model.name!r} has no CoST layers.")
    out = {layer.name: np.asarray(layer.coefficients()) for layer in layers if layer.variant == "a"}
    b_layers = [layer for layer in layers if layer.variant == "b"]
    if b_layers:
        if clips is None or len(clips) == 0:
            raise ValueError("CoST(b) coefficients depend on the clip: give clips (N, T, H, W, 3).")
        probe = keras.Model(model.inputs, [layer.input for layer in b_layers])
        chunks = {layer.name: [] for layer in b_layers}
        for start in range(0, len(clips), batch_size):
            inputs = probe([clips[start : start + batch_size]], training=False)
            inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
            for layer, x in zip(b_layers, inputs, strict=True):
                chunks[layer.name].append(np.asarray(layer.coefficients(x), np.float32))
        out.update({name: np.concatenate(c) for name, c in chunks.items()})
    return {layer.name: out[layer.name] for layer in layers}


def summarize(coefficients):
    """One row per layer: mean, spread over channels and spread over clips, per view."""
    rows = []
    for name, c in coefficients.items():
        per_clip = c if c.ndim == 3 else c[None]  # (N, 3, C)
        row = {"layer": name, "variant": "b" if c.ndim == 3 else "a", "channels": per_clip.shape[-1]}
        for i, view in enumerate(VIEWS):
            values = per_clip[:, i, :]
            row[f"{view}_mean"] = float(values.mean())
            row[f"{view}_std_channels"] = float(values.mean(axis=0).std())
            row[f"{view}_std_clips"] = float(values.mean(axis=1).std())
        rows.append(row)
    return rows


def per_class_temporal(coefficients, labels, class_names):
    """Per class, the mean temporal weight (tw + th) over all CoST(b) layers, channels and clips of the class.

    Returns rows sorted by temporal weight, most temporal first.
    """
    b = [c for c in coefficients.values() if c.ndim == 3]
    if not b:
        return []
    temporal = np.mean([c[:, 1:, :].sum(axis=1).mean(axis=-1) for c in b], axis=0)  # (N,)
    hw = np.mean([c[:, 0, :].mean(axis=-1) for c in b], axis=0)
    labels = np.asarray(labels)
    rows = []
    for label in np.unique(labels):
        sel = labels == label
        name = class_names[label] if class_names is not None and label < len(class_names) else str(label)
        rows.append(
            {
                "class": name,
                "index": int(label),
                "clips": int(sel.sum()),
                "temporal_mean": float(temporal[sel].mean()),
                "hw_mean": float(hw[sel].mean()),
            }
        )
    return sorted(rows, key=lambda r: -r["temporal_mean"])


def write_csv(path, rows, columns):
    def write(tmp):
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(rows)

    with files.atomic_path(path) as tmp:
        write(tmp)


def plot_layers(path, rows):
    """Stacked bar per CoST layer of the mean hw / tw / th coefficients (the paper's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(rows) + 2), 4))
    x = np.arange(len(rows))
    bottom = np.zeros(len(rows))
    for view, color in zip(VIEWS, ("#4c72b0", "#dd8452", "#55a868"), strict=True):
        values = np.array([r[f"{view}_mean"] for r in rows])
        ax.bar(x, values, bottom=bottom, color=color, label=_VIEW_LABELS[view])
        bottom += values
    ax.set_xticks(x, [r["layer"] for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean coefficient")
    ax.set_title("CoST view coefficients by layer (shallow → deep)")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def plot_classes(path, rows, top):
    """Horizontal bars of the per-class temporal weight for the `top` most temporal classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = rows[:top]
    fig, ax = plt.subplots(figsize=(7, 0.4 * len(rows) + 1.5))
    ax.barh(np.arange(len(rows))[::-1], [r["temporal_mean"] for r in rows], color="#dd8452")
    ax.set_yticks(np.arange(len(rows))[::-1], [r["class"] for r in rows], fontsize=8)
    ax.set_xlabel("mean temporal coefficient (T-W + T-H), CoST(b) layers")
    ax.set_title(f"Most temporal classes (top {len(rows)})")
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def analyze(model, out_dir, clips=None, labels=None, class_names=None, top_classes=10):
    """Writes the CSVs and plots for `model` into `out_dir`; returns the per-layer rows."""
    os.makedirs(out_dir, exist_ok=True)
    coefficients = layer_coefficients(model, clips)
    rows = summarize(coefficients)
    write_csv(os.path.join(out_dir, "coefficients.csv"), rows, COLUMNS)
    plot_layers(os.path.join(out_dir, "layers.png"), rows)
    if labels is not None:
        classes = per_class_temporal(coefficients, labels, class_names)
        if classes:
            write_csv(os.path.join(out_dir, "classes.csv"), classes, list(classes[0]))
            plot_classes(os.path.join(out_dir, "classes.png"), classes, top_classes)
    return rows


def load_clips(pattern, num_clips, num_frames, frame_stride, crop_size):
    """Up to `num_clips` eval-mode clips and labels from TFRecords."""
    ds = make_dataset(
        pattern,
        mode="eval",
        batch_size=8,
        num_frames=num_frames,
        frame_stride=frame_stride,
        crop_size=crop_size,
        seed=0,
    )
    clips, labels = [], []
    for x, y in ds:
        clips.append(x.numpy())
        labels.append(y.numpy())
        if sum(len(c) for c in clips) >= num_clips:
            break
    return np.concatenate(clips)[:num_clips], np.concatenate(labels)[:num_clips]


def analyze_model(
    model,
    out_dir,
    pattern=None,
    class_names=None,
    num_clips=64,
    num_frames=None,
    frame_stride=2,
    crop_size=None,
    top_classes=10,
):
    """analyze() for a loaded model; CoST(b) layers are averaged over `num_clips` eval clips of `pattern`."""
    _, model_frames, model_crop, _, _ = model.inputs[0].shape
    clips = labels = None
    if any(layer.variant == "b" for layer in cost_layers(model)):
        if not pattern:
            raise ValueError(
                "The model has CoST(b) layers, whose coefficients depend on the clip: pass `pattern`."
            )
        clips, labels = load_clips(
            pattern, num_clips, num_frames or model_frames or 8, frame_stride, crop_size or model_crop
        )
    return analyze(model, out_dir, clips, labels, class_names, top_classes)


@dataclasses.dataclass
class CoefficientsConfig:
    """Settings of the main; each field is one of its flags."""

    model: str = option(None, "A .keras model with CoST layers.")
    out_dir: str = option(None, "Where the CSVs and plots go.")
    dataset: str = option(
        "synthetic",
        "Clips for CoST(b): the embedded dataset or --pattern.",
        choices=("synthetic", "tfrecord"),
    )
    pattern: str = option(None, "TFRecord glob (with --dataset=tfrecord).")
    data_dir: str = option(
        None,
        "Where the embedded dataset is (or is written). Default: the one the model was trained on "
        "(config.json beside it), else runs/synthetic.",
    )
    num_clips: int = option(64, "Clips averaged over for CoST(b).")
    num_frames: int = option(None, "Frames per clip (default: the model's input).")
    frame_stride: int = option(2, "Frame stride of the sampled clips.")
    crop_size: int = option(None, "Crop size (default: the model's input).")
    top_classes: int = option(10, "Classes shown in the per-class plot.")


def _synthetic_pattern(config, model_path):
    """The eval TFRecords of the embedded dataset the model was trained on (written if missing)."""
    trained = training_config(model_path)
    data_dir = config.data_dir or "runs/synthetic"
    if not config.data_dir and trained.get("dataset") == "synthetic":  # as cost_tf.train wrote it
        data_dir = trained.get("data_dir") or os.path.join(trained["model_dir"], "data")
    _, pattern = synthetic.write_synthetic(
        data_dir,
        num_train=trained.get("synthetic_train", synthetic.NUM_TRAIN),
        num_eval=trained.get("synthetic_eval", synthetic.NUM_EVAL),
    )
    return pattern


def run(config):
    """The main's job: loads config.model, picks the clips, writes the analysis; returns the per-layer rows.

    Raises ValueError naming the flag on a missing model, --out_dir or --pattern."""
    if not config.model or not os.path.isfile(config.model):
        raise ValueError(f"--model must name an existing .keras file. Received: --model={config.model}")
    if not config.out_dir:
        raise ValueError("--out_dir is required.")
    model = load_model(config.model)
    pattern = class_names = None
    if config.dataset == "synthetic":
        class_names = list(synthetic.CLASSES)
        if any(layer.variant == "b" for layer in cost_layers(model)):
            pattern = _synthetic_pattern(config, config.model)
    else:
        if not config.pattern:
            raise ValueError("--dataset=tfrecord needs --pattern.")
        pattern = config.pattern
        classes_txt = os.path.join(os.path.dirname(pattern), "classes.txt")
        if os.path.isfile(classes_txt):
            class_names = readers.read_class_names(classes_txt)
    return analyze_model(
        model,
        config.out_dir,
        pattern,
        class_names,
        config.num_clips,
        config.num_frames,
        config.frame_stride,
        config.crop_size,
        config.top_classes,
    )
