"""`make demo`'s library: train, evaluate, read the coefficients and export, on the embedded synthetic dataset.

`run_demo(output_dir, ...) -> summary`, `format_summary`, `parse_final_top1`; cost_tf/demo/__main__.py is the
main (it passes the exporters in).
"""

import csv
import os
import resource
import time

import keras

from cost_tf import coefficients
from cost_tf.evaluate import EvalConfig, evaluate
from cost_tf.loading import load_model
from cost_tf.train import TrainConfig, train
from pipelines import files
from pipelines.synthetic import CLASSES

SUMMARY = "summary.json"
# The summary line every run ends with; parse_final_top1 reads it back.
FINAL_LINE = "final top-1:"


def run_exports(model_path, output_dir, exporters, class_names=None):
    """Runs each exporter on the model at `model_path`; returns {name: path}.

    Args:
      exporters: {name: fn(model, output_dir, class_names) -> path}; the main passes the SavedModel and ONNX
        exporters (export/ sits above cost_tf/, so only a main may import it).
    """
    model = load_model(model_path)
    results = {name: export(model, output_dir, class_names) for name, export in exporters.items()}
    keras.backend.clear_session()
    return results


def _cpu_seconds():
    """User + system CPU seconds of this process (all its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _per_class(csv_path):
    """{class name: accuracy} from evaluate's per-class CSV (classes without clips left out)."""
    with open(csv_path) as f:
        rows = list(csv.reader(f))[1:]
    return {row[1]: float(row[4]) for row in rows if row[4]}


def run_demo(output_dir, epochs=None, views="1x1", exporters=None, deterministic=True, **train_overrides):
    """Trains, evaluates, reads the coefficients and (optionally) exports; writes {output_dir}/summary.json.

    Args:
      output_dir: everything goes here; the synthetic data in {output_dir}/data unless train_overrides
        names another data_dir.
      epochs: training epochs (None: the synthetic recipe's).
      views: evaluation views CLIPSxCROPS.
      exporters: {name: fn(model, output_dir, class_names) -> path} run on the trained model (see
        run_exports; default none).
      deterministic: cost_tf.train's --deterministic.
      train_overrides: other TrainConfig fields (tests shrink the run with them).

    Returns:
      the summary dict (also in summary.json): top1/top5/num_videos/views of the evaluation, per_class
      accuracy, train_top1 (train's own centre-clip evaluation), arch, epochs, steps, seed, deterministic,
      temporal_weight (mean tw + th over the CoST layers), paths, exports and times (wall and CPU seconds).
    """
    start, cpu_start = time.time(), _cpu_seconds()
    overrides = dict(dict(data_dir=os.path.join(output_dir, "data")), **train_overrides)
    config = TrainConfig(model_dir=output_dir, epochs=epochs, deterministic=deterministic, **overrides)
    metrics = train(config)
    trained = time.time()
    model_path = os.path.join(output_dir, "model.keras")
    report = evaluate(EvalConfig(model=model_path, views=views))
    evaluated = time.time()
    coefficients_dir = os.path.join(output_dir, "coefficients")
    eval_pattern = os.path.join(config.data_dir, "eval-*.tfrecord")
    layers = coefficients.analyze_model(load_model(model_path), coefficients_dir, eval_pattern, list(CLASSES))
    exports = run_exports(model_path, output_dir, exporters or {}, class_names=list(CLASSES))
    done = time.time()
    summary = {
        "top1": report["top1"],
        "top5": report["top5"],
        "num_videos": report["num_videos"],
        "views": report["views"],
        "per_class": _per_class(report["per_class_csv"]),
        "train_top1": metrics["top1"],
        "arch": metrics["arch"],
        "epochs": metrics["epochs"],
        "steps": metrics["steps"],
        "seed": config.seed,
        "deterministic": bool(deterministic),
        "temporal_weight": sum(row["tw_mean"] + row["th_mean"] for row in layers) / len(layers),
        "num_cost_layers": len(layers),
        "output_dir": output_dir,
        "data_dir": config.data_dir,
        "model": model_path,
        "eval_json": os.path.join(os.path.dirname(report["per_class_csv"]), f"eval_{report['views']}.json"),
        "per_class_csv": report["per_class_csv"],
        "confusion_png": report["confusion_png"],
        "coefficients_dir": coefficients_dir,
        "exports": exports,
        "train_s": trained - start,
        "evaluate_s": evaluated - trained,
        "coefficients_export_s": done - evaluated,
        "total_s": done - start,
        "cpu_s": _cpu_seconds() - cpu_start,
    }
    files.write_json(os.path.join(output_dir, SUMMARY), summary)
    return summary


def format_summary(s):
    """The demo's closing report (lines), ending with the FINAL_LINE."""
    lines = [
        "== cost-tf demo ==",
        f"data:          {s['data_dir']} (synthetic, order-only classes)",
        f"model:         {s['model']} ({s['arch']}, {s['epochs']} epochs, {s['steps']} steps)",
        f"best model:    {os.path.join(s['output_dir'], 'best.keras')} (by validation top-1)",
        f"training log:  {os.path.join(s['output_dir'], 'training_log.csv')}, TensorBoard: "
        f"{os.path.join(s['output_dir'], 'tensorboard')}",
        f"evaluation:    {s['views']} views on {s['num_videos']} videos: top-1 {s['top1']:.4f}, "
        f"top-5 {s['top5']:.4f}",
        f"               {s['per_class_csv']}, {s['confusion_png']}",
        f"coefficients:  {s['coefficients_dir']} ({s['num_cost_layers']} CoST layers, mean temporal weight "
        f"tw+th {s['temporal_weight']:.2f}; layers.png, classes.png)",
    ]
    lines += [f"export {name + ':':8s}{where}" for name, where in s["exports"].items()]
    lines += [
        f"time:          train {s['train_s']:.0f} s, evaluate {s['evaluate_s']:.0f} s, coefficients + export "
        f"{s['coefficients_export_s']:.0f} s, total {s['total_s']:.0f} s ({s['cpu_s']:.0f} CPU s)",
        f"summary:       {os.path.join(s['output_dir'], SUMMARY)}",
        f"{FINAL_LINE}   {s['top1']:.4f}",
    ]
    return lines


def parse_final_top1(text):
    """The top-1 of the last FINAL_LINE in a demo's output `text`; ValueError when there is none."""
    found = [line for line in text.splitlines() if line.startswith(FINAL_LINE)]
    if not found:
        raise ValueError(f"No {FINAL_LINE!r} line in the demo output.")
    return float(found[-1][len(FINAL_LINE) :])
