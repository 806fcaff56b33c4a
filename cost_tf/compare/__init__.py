"""The temporal benchmark's library: C2D, C3D, CoST(a), CoST(b), S3D-G (tiny) trained with the same budget on
the embedded order-only dataset (`compare(...) -> rows`, `results_markdown`); the main is
cost_tf/compare/__main__.py.
"""

import datetime
import os
import platform
import statistics
import time

import keras

from cost_tf import coefficients, cost
from cost_tf.loading import load_model
from cost_tf.resnet import build_model
from cost_tf.train import TrainConfig, resolve_config, train

ARCHS = ("c2d_tiny", "c3d_tiny", "cost_a_tiny", "cost_b_tiny", "s3dg_tiny")


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training batch (seconds); `median(skip)` ignores the first (tracing) batches."""

    def __init__(self):
        super().__init__()
        self.times = []
        self._start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)

    def median(self, skip=5):
        times = self.times[skip:] if len(self.times) > skip else self.times
        return statistics.median(times) if times else float("nan")


def mean_coefficients(model_path, eval_pattern):
    """(hw, tw, th) averaged over a trained model's CoST layers (CoST(b): over 64 eval clips); None without."""
    model = load_model(model_path)
    if not coefficients.cost_layers(model):
        return None
    rows = coefficients.analyze_model(
        model, os.path.join(os.path.dirname(model_path), "coefficients"), eval_pattern
    )
    return tuple(statistics.mean(row[f"{view}_mean"] for row in rows) for view in cost.VIEWS)


def compare(output_dir, archs=ARCHS, epochs=None, seed=0):
    """Trains each arch with train()'s synthetic defaults; returns a list of result dicts."""
    rows = []
    for arch in archs:
        config = TrainConfig(
            model_dir=os.path.join(output_dir, arch),
            data_dir=os.path.join(output_dir, "data"),
            arch=arch,
            epochs=epochs,
            seed=seed,
            verbose=2,
        )
        resolved = resolve_config(config)
        timer = StepTimer()
        start = time.time()
        metrics = train(config, callbacks=[timer])
        elapsed = time.time() - start
        params = build_model(
            arch,
            num_classes=metrics.get("num_classes", 8),
            num_frames=resolved.num_frames,
            input_size=resolved.crop_size,
        ).count_params()
        rows.append(
            dict(
                arch=arch,
                top1=metrics["top1"],
                top5=metrics["top5"],
                params=params,
                step_s=timer.median(),
                train_s=elapsed,
                epochs=metrics["epochs"],
                steps=metrics["steps"],
                coefficients=mean_coefficients(
                    os.path.join(output_dir, arch, "model.keras"),
                    os.path.join(output_dir, "data", "eval-*.tfrecord"),
                ),
                config=resolved,
            )
        )
        keras.backend.clear_session()
    return rows


def results_markdown(rows, command):
    """docs/RESULTS.md text for `rows` from compare()."""
    c = rows[0]["config"]
    lines = [
        "# Results: the temporal benchmark on the embedded synthetic dataset",
        "",
        "Measured by `" + command + "` (cost_tf/compare) on " + datetime.date.today().isoformat() + ", "
        f"{platform.machine()} CPU, {os.cpu_count()} cores, TensorFlow/Keras on CPU. Every network is trained "
        "with the same budget and the synthetic recipe of `cost_tf.train`: "
        f"{c.synthetic_train} training clips (8 classes), {c.epochs} epochs x {rows[0]['steps'] // c.epochs} "
        f"steps of {c.batch_size} clips, {c.num_frames} frames one every {c.frame_stride}, {c.crop_size}-px "
        f"crops, SGD lr {c.lr} per 64 clips ({c.lr_schedule}, {c.warmup_epochs} warmup epochs), seed {c.seed}. "
        f"Top-1/top-5 on the {c.synthetic_eval} evaluation clips (centre clip, one view).",
        "",
        "| model | top-1 | top-5 | parameters | time per step (s) | training time (s) | CoST coefficients "
        "hw / tw / th |",
        "|-------|------:|------:|-----------:|------------------:|------------------:|:---:|",
    ]
    for r in rows:
        coeffs = " / ".join(f"{a:.3f}" for a in r["coefficients"]) if r.get("coefficients") else "—"
        lines.append(
            f"| {r['arch']} | {100 * r['top1']:.1f} % | {100 * r['top5']:.1f} % | {r['params']:,} | "
            f"{r['step_s']:.3f} | {r['train_s']:.0f} | {coeffs} |"
        )
    lines += [
        "",
        "The classes are 4 motions and their time reversals (moving up/down, growing/shrinking, fading in/out, "
        "separating/converging): only the ORDER of the frames tells a pair apart. C2D has no temporal "
        "convolution and averages over time, so it sees a clip and its reversal alike: at best it finds the "
        "pair, i.e. 50 % top-1 (chance: 12.5 %). C3D, CoST(a), CoST(b) and S3D-G (separable temporal convs, "
        "the paper's other comparison; its own Inception-v1 layout) have temporal kernels.",
        "",
        "CoST coefficients: the view weights of the trained model averaged over its CoST layers and channels "
        "(CoST(b): and over 64 evaluation clips); at initialisation CoST(a) has 0.668 / 0.166 / 0.166. "
        f"The CoST layers trained with implementation 'auto' = '{cost.AUTO_TRAINING}' for CoST(a), "
        f"'{cost.AUTO_B}' for CoST(b).",
        "",
        "Time per step is the median wall time of a training batch (after 5 warm-up batches) on a machine "
        "shared with other jobs, so it is indicative only; bench/ has the controlled measurements.",
        "",
    ]
    return "\n".join(lines)
