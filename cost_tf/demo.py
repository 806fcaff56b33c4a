"""`make demo`: train, evaluate and export the small CoST(b) network on the embedded synthetic dataset.

    python -m cost_tf.demo [--output_dir=runs/demo] [--epochs=N] [--views=1x1] [--noexport] [--nodeterministic]

1. cost_tf.train with its defaults (--dataset=synthetic): writes the order-only synthetic clips to
   {output_dir}/data and trains cost_b_tiny (a few minutes on 2 CPU cores; resumes if interrupted).
2. cost_tf.evaluate: top-1/top-5, per-class CSV and confusion-matrix PNG.
3. cost_tf.coefficients: how much each CoST layer relies on the H-W / T-W / T-H views
   ({output_dir}/coefficients: CSVs and the per-layer and per-class plots).
4. Exports: TF Serving SavedModel ({output_dir}/saved_model/N) and ONNX ({output_dir}/model.onnx), each
   validated against the Keras model by its exporter.
5. {output_dir}/summary.json (written atomically): top-1/top-5, per-class accuracy, epochs/steps, seed,
   determinism, wall and CPU seconds; the printed report ends with "final top-1:   0.xxxx" (parse_final_top1).

Training runs with --deterministic (tf.config.experimental.enable_op_determinism()) by default: the same
clips, weights and result on every run on one machine; another CPU (other kernels, other thread counts) may
still give slightly different numbers.
"""

import csv
import os
import resource
import time

from absl import app, flags

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/demo", "Where everything goes.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Training epochs (default: the synthetic recipe's).")
_VIEWS = flags.DEFINE_string("views", "1x1", "Evaluation views CLIPSxCROPS.")
_EXPORT = flags.DEFINE_bool("export", True, "Export SavedModel and ONNX.")
_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic", True, "Train with tf.config.experimental.enable_op_determinism() (cost_tf.train's flag)."
)

SUMMARY = "summary.json"
# The summary line every run ends with; parse_final_top1 reads it back.
FINAL_LINE = "final top-1:"


def run_exports(model_path, output_dir, class_names=None):
    """SavedModel + ONNX exports of the model at `model_path`; returns {name: path or reason}."""
    import keras

    from cost_tf.loading import load_model

    results = {}
    model = load_model(model_path)
    try:
        from export import saved_model
    except ImportError as e:
        results["saved_model"] = f"not available ({e})"
    else:
        path, _ = saved_model.export(model, os.path.join(output_dir, "saved_model"), class_names=class_names)
        results["saved_model"] = path
    try:
        from export import onnx
    except ImportError as e:
        results["onnx"] = f"not available ({e})"
    else:
        report = onnx.export(model, os.path.join(output_dir, "model.onnx"))
        results["onnx"] = report["path"]
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


def run_demo(output_dir, epochs=None, views="1x1", export=True, deterministic=True, **train_overrides):
    """Trains, evaluates, reads the coefficients and (optionally) exports; writes {output_dir}/summary.json.

    Args:
      output_dir: everything goes here; the synthetic data in {output_dir}/data unless train_overrides
        names another data_dir.
      epochs: training epochs (None: the synthetic recipe's).
      views: evaluation views CLIPSxCROPS.
      export: SavedModel + ONNX exports.
      deterministic: cost_tf.train's --deterministic.
      train_overrides: other TrainConfig fields (tests shrink the run with them).

    Returns:
      the summary dict (also in summary.json): top1/top5/num_videos/views of the evaluation, per_class
      accuracy, train_top1 (train's own centre-clip evaluation), arch, epochs, steps, seed, deterministic,
      temporal_weight (mean tw + th over the CoST layers), paths, exports and times (wall and CPU seconds).
    """
    from cost_tf import coefficients
    from cost_tf.evaluate import EvalConfig, evaluate
    from cost_tf.loading import load_model
    from cost_tf.train import TrainConfig, train
    from pipelines import files
    from pipelines.synthetic import CLASSES

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
    exports = run_exports(model_path, output_dir, class_names=list(CLASSES)) if export else {}
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


def main(argv):
    del argv
    summary = run_demo(
        _OUTPUT_DIR.value,
        epochs=_EPOCHS.value,
        views=_VIEWS.value,
        export=_EXPORT.value,
        deterministic=_DETERMINISTIC.value,
    )
    print("\n" + "\n".join(format_summary(summary)))


if __name__ == "__main__":
    app.run(main)
