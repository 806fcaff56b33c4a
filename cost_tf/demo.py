"""`make demo`: train, evaluate and export the small CoST(b) network on the embedded synthetic dataset.

    python -m cost_tf.demo [--output_dir=runs/demo] [--epochs=N] [--views=1x1]

1. cost_tf.train with its defaults (--dataset=synthetic): writes the order-only synthetic clips to
   {output_dir}/data and trains cost_b_tiny (a few minutes on 2 CPU cores; resumes if interrupted).
2. cost_tf.evaluate: top-1/top-5, per-class CSV and confusion-matrix PNG.
3. cost_tf.coefficients: how much each CoST layer relies on the H-W / T-W / T-H views
   ({output_dir}/coefficients: CSVs and the per-layer and per-class plots).
4. Exports: TF Serving SavedModel ({output_dir}/saved_model/N) and ONNX ({output_dir}/model.onnx), each
   validated against the Keras model by its exporter.
"""

import os
import time

from absl import app, flags

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/demo", "Where everything goes.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Training epochs (default: the synthetic recipe's).")
_VIEWS = flags.DEFINE_string("views", "1x1", "Evaluation views CLIPSxCROPS.")
_EXPORT = flags.DEFINE_bool("export", True, "Export SavedModel and ONNX.")


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


def main(argv):
    del argv
    from cost_tf.evaluate import EvalConfig, evaluate
    from cost_tf.train import TrainConfig, train

    output_dir = _OUTPUT_DIR.value
    start = time.time()
    config = TrainConfig(
        model_dir=output_dir, data_dir=os.path.join(output_dir, "data"), epochs=_EPOCHS.value
    )
    metrics = train(config)
    trained = time.time()
    model_path = os.path.join(output_dir, "model.keras")
    report = evaluate(EvalConfig(model=model_path, views=_VIEWS.value))
    evaluated = time.time()
    from cost_tf import coefficients
    from cost_tf.loading import load_model
    from pipelines.synthetic import CLASSES

    coefficients_dir = os.path.join(output_dir, "coefficients")
    eval_pattern = os.path.join(output_dir, "data", "eval-*.tfrecord")
    layers = coefficients.analyze_model(load_model(model_path), coefficients_dir, eval_pattern, list(CLASSES))
    temporal = sum(row["tw_mean"] + row["th_mean"] for row in layers) / len(layers)
    exports = {}
    if _EXPORT.value:
        exports = run_exports(model_path, output_dir, class_names=list(CLASSES))
    done = time.time()
    print("\n== cost-tf demo ==")
    print(f"data:          {os.path.join(output_dir, 'data')} (synthetic, order-only classes)")
    print(
        f"model:         {model_path} ({metrics['arch']}, {metrics['epochs']} epochs, {metrics['steps']} steps)"
    )
    print(f"best model:    {os.path.join(output_dir, 'best.keras')} (by validation top-1)")
    print(
        f"training log:  {os.path.join(output_dir, 'training_log.csv')}, TensorBoard: "
        f"{os.path.join(output_dir, 'tensorboard')}"
    )
    print(
        f"evaluation:    {report['views']} views on {report['num_videos']} videos: top-1 {report['top1']:.4f}, "
        f"top-5 {report['top5']:.4f}"
    )
    print(f"               {report['per_class_csv']}, {report['confusion_png']}")
    print(
        f"coefficients:  {coefficients_dir} ({len(layers)} CoST layers, mean temporal weight tw+th "
        f"{temporal:.2f}; layers.png, classes.png)"
    )
    for name, where in exports.items():
        print(f"export {name + ':':8s}{where}")
    print(
        f"time:          train {trained - start:.0f} s, evaluate {evaluated - trained:.0f} s, "
        f"coefficients + export {done - evaluated:.0f} s, total {done - start:.0f} s"
    )
    print(f"final top-1:   {report['top1']:.4f}")


if __name__ == "__main__":
    app.run(main)
