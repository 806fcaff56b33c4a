"""The temporal benchmark's library: C2D, C3D, CoST(a), CoST(b), S3D-G (tiny) trained with the same budget on
the embedded order-only dataset, over several seeds (`compare(...) -> rows`, `summarize(rows)`,
`results_markdown`); the main is cost_tf/compare/__main__.py.
"""

import dataclasses
import datetime
import os
import statistics
import time

import keras
import tensorflow as tf

from cost_tf import coefficients, cost
from cost_tf.autotune import cpu_model
from cost_tf.loading import load_model
from cost_tf.resnet import build_model
from cost_tf.train import TrainConfig, resolve_config, train

# An entry is an arch, optionally with train settings of its own: "ARCH:FIELD=VALUE[:FIELD=VALUE...]" (FIELD a
# TrainConfig field). The CoST(a) row with a 30x coefficient learning rate is docs/RESULTS.md's finding.
ARCHS = (
    "c2d_tiny",
    "c3d_tiny",
    "cost_a_tiny",
    "cost_a_tiny:alpha_lr_multiplier=30",
    "cost_b_tiny",
    "s3dg_tiny",
)
SEEDS = (0, 1)
# The benchmark's own budget, 20 epochs against the demo recipe's 12: long enough that every family's best
# validation top-1 stops improving (each row says at which epoch it last improved).
EPOCHS = 20
TARGET_TOP1 = 0.9  # "time to 90 % validation top-1"
PLATEAU_EPOCHS = 5  # a run whose best epoch is this close to its last is marked "late"


class TrainingClock(keras.callbacks.Callback):
    """Wall time of every training batch, and per epoch (summed batch time so far, logged val_top1)."""

    def __init__(self):
        super().__init__()
        self.times = []
        self.epochs = []
        self._start = None

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.times.append(time.perf_counter() - self._start)

    def on_epoch_end(self, epoch, logs=None):
        self.epochs.append((sum(self.times), (logs or {}).get("val_top1")))

    def median(self, skip=5):
        """Median batch time, ignoring the first `skip` (tracing) batches."""
        times = self.times[skip:] if len(self.times) > skip else self.times
        return statistics.median(times) if times else float("nan")

    def best(self):
        """(best validation top-1, its 1-based epoch); (None, None) without validation."""
        scored = [(top1, i + 1) for i, (_, top1) in enumerate(self.epochs) if top1 is not None]
        if not scored:
            return None, None
        top1 = max(t for t, _ in scored)
        return top1, min(e for t, e in scored if t == top1)

    def time_to(self, threshold):
        """Training seconds (batches only, validation excluded) until the first epoch whose validation top-1
        reaches `threshold`; None if none did."""
        for seconds, top1 in self.epochs:
            if top1 is not None and top1 >= threshold:
                return seconds
        return None


def mean_coefficients(model_path, eval_pattern):
    """(hw, tw, th) averaged over a trained model's CoST layers (CoST(b): over 64 eval clips); None without."""
    model = load_model(model_path)
    if not coefficients.cost_layers(model):
        return None
    rows = coefficients.analyze_model(
        model, os.path.join(os.path.dirname(model_path), "coefficients"), eval_pattern
    )
    return tuple(statistics.mean(row[f"{view}_mean"] for row in rows) for view in cost.VIEWS)


_FIXED = ("model_dir", "data_dir", "arch", "epochs", "seed", "deterministic")  # set by compare itself


def parse_entry(entry):
    """ "ARCH[:FIELD=VALUE...]" -> (arch, {field: value}) with each value converted to the field's type."""
    arch, *settings = entry.split(":")
    types = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    overrides = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or name not in types or name in _FIXED:
            raise ValueError(
                f"An entry is ARCH[:FIELD=VALUE...] with FIELD a train setting other than {', '.join(_FIXED)}. "
                f"Received: {entry!r}"
            )
        kind = types[name]
        if kind not in (
            bool,
            int,
            float,
            str,
        ):  # e.g. lr_steps (a tuple): tuple("1,2") would split characters
            raise ValueError(
                f"{name} is not a scalar train setting (bool, int, float, str). Received: {entry!r}"
            )
        try:
            overrides[name] = (value.lower() in ("1", "true")) if kind is bool else kind(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"{name}={value!r} is not of type {kind.__name__}. Received: {entry!r}"
            ) from None
    return arch, overrides


def run_dir(entry):
    """The entry's folder name: "cost_a_tiny:alpha_lr_multiplier=30" -> "cost_a_tiny_alpha_lr_multiplier30"."""
    return entry.replace(":", "_").replace("=", "")


def compare(output_dir, archs=ARCHS, epochs=EPOCHS, seeds=SEEDS):
    """Trains each entry of `archs` (see ARCHS) once per seed with train()'s synthetic recipe (deterministic
    ops) for `epochs`.

    Every run writes {output_dir}/{run_dir(entry)}/seed{seed}/ (a fresh folder: an existing one resumes, and
    its clock then misses the earlier epochs). Returns one result dict per (entry, seed).
    """
    parsed = [(entry, *parse_entry(entry)) for entry in archs]  # every entry checked before the first run
    rows = []
    for entry, arch, overrides in parsed:
        for seed in seeds:
            model_dir = os.path.join(output_dir, run_dir(entry), f"seed{seed}")
            config = TrainConfig(
                model_dir=model_dir,
                data_dir=os.path.join(output_dir, "data"),
                arch=arch,
                epochs=epochs,
                seed=seed,
                deterministic=True,
                verbose=2,
                **overrides,
            )
            resolved = resolve_config(config)
            clock = TrainingClock()
            start = time.time()
            metrics = train(config, callbacks=[clock])
            elapsed = time.time() - start
            params = build_model(
                arch,
                num_classes=metrics.get("num_classes", 8),
                num_frames=resolved.num_frames,
                input_size=resolved.crop_size,
            ).count_params()
            best_top1, best_epoch = clock.best()
            rows.append(
                dict(
                    arch=entry,
                    seed=seed,
                    top1=metrics["top1"],
                    top5=metrics["top5"],
                    best_top1=best_top1,
                    best_epoch=best_epoch,
                    time_to_target_s=clock.time_to(TARGET_TOP1),
                    params=params,
                    step_s=clock.median(),
                    train_s=elapsed,
                    epochs=metrics["epochs"],
                    steps=metrics["steps"],
                    coefficients=mean_coefficients(
                        os.path.join(model_dir, "model.keras"),
                        os.path.join(output_dir, "data", "eval-*.tfrecord"),
                    ),
                    config=resolved,
                )
            )
            keras.backend.clear_session()
    return rows


def _mean_range(values, scale=1.0, digits=1):
    """ "m (lo–hi)" of the values times `scale`; just "m" for one value."""
    values = [scale * v for v in values]
    mean = f"{statistics.mean(values):.{digits}f}"
    if len(values) == 1:
        return mean
    return f"{mean} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def summarize(rows):
    """One dict per arch (in `rows`' order) over its seeds: the table's cells as strings, plus `plateaued`."""
    out = []
    for arch in dict.fromkeys(r["arch"] for r in rows):
        runs = [r for r in rows if r["arch"] == arch]
        epochs = runs[0]["epochs"]
        best_epochs = [r["best_epoch"] for r in runs if r["best_epoch"] is not None]
        reached = [r["time_to_target_s"] for r in runs if r["time_to_target_s"] is not None]
        coeffs = [r["coefficients"] for r in runs if r.get("coefficients")]
        out.append(
            dict(
                arch=arch,
                seeds=len(runs),
                top1=_mean_range([r["top1"] for r in runs], 100),
                best_top1=_mean_range([r["best_top1"] for r in runs if r["best_top1"] is not None], 100),
                best_epoch=", ".join(str(e) for e in best_epochs) or "—",
                plateaued=bool(best_epochs) and max(best_epochs) <= epochs - PLATEAU_EPOCHS,
                time_to_target=(
                    (
                        _mean_range(reached, digits=0)
                        + ("" if len(reached) == len(runs) else f" ({len(reached)} of {len(runs)} seeds)")
                    )
                    if reached
                    else f"not reached ({len(runs)} of {len(runs)} seeds)"
                ),
                params=f"{runs[0]['params']:,}",
                step_s=f"{statistics.median(r['step_s'] for r in runs):.3f}",
                coefficients=(
                    " / ".join(f"{statistics.mean(c[i] for c in coeffs):.3f}" for i in range(3))
                    if coeffs
                    else "—"
                ),
            )
        )
    return out


def results_markdown(rows, command):
    """docs/RESULTS.md text for `rows` from compare()."""
    c = rows[0]["config"]
    seeds = ", ".join(str(s) for s in dict.fromkeys(r["seed"] for r in rows))
    lines = [
        "# Results: the temporal benchmark on the embedded synthetic dataset",
        "",
        "Measured by `" + command + "` (cost_tf/compare) on " + datetime.date.today().isoformat() + ", "
        f"CPU {cpu_model()}, TensorFlow {tf.__version__} / Keras {keras.__version__} on the CPU. "
        "Every network is trained "
        "with the same budget and the synthetic recipe of `cost_tf.train`, once per seed "
        f"({seeds}; the seed sets the weights and the data order), with deterministic ops: "
        f"{c.synthetic_train} training clips (8 classes), {c.epochs} epochs x {rows[0]['steps'] // c.epochs} "
        f"steps of {c.batch_size} clips, {c.num_frames} frames one every {c.frame_stride}, {c.crop_size}-px "
        f"crops, SGD lr {c.lr} per 64 clips ({c.lr_schedule}, {c.warmup_epochs} warmup epochs). Validation "
        f"and top-1/top-5 on the {c.synthetic_eval} evaluation clips (centre clip, one view).",
        "",
        "Cells with several seeds read mean (lowest–highest). *Best val top-1*: the best epoch's validation "
        "top-1; *epoch of best*: per seed (a run whose best epoch is within "
        f"{PLATEAU_EPOCHS} of its last is marked *late*: it may still have been improving); *top-1 at the end*: "
        "the final model's "
        f"evaluation; *time to {100 * TARGET_TOP1:.0f} %*: summed training-batch seconds (validation "
        "excluded) until the first epoch whose validation top-1 reached it.",
        "",
        f"| model | best val top-1 | epoch of best | top-1 at the end | time to {100 * TARGET_TOP1:.0f} % (s) "
        "| parameters | time per step (s) | CoST coefficients hw / tw / th |",
        "|-------|------:|:---:|------:|------:|-----------:|------:|:---:|",
    ]
    for s in summarize(rows):
        still = "" if s["plateaued"] else " (late)"
        lines.append(
            f"| {s['arch']} | {s['best_top1']} % | {s['best_epoch']}{still} | {s['top1']} % | "
            f"{s['time_to_target']} | {s['params']} | {s['step_s']} | {s['coefficients']} |"
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
        "(CoST(b): and over 64 evaluation clips) and over the seeds; at initialisation CoST(a) has "
        "0.668 / 0.166 / 0.166.",
        "",
        "Time per step is the median wall time of a training batch (after 5 warm-up batches), median over the "
        "seeds; the runs follow one another in one process, so compare these columns within one table only; "
        "bench/ has the controlled, interleaved measurements.",
        "",
    ]
    return "\n".join(lines)
