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

import os

from absl import app, flags

from cost_tf import demo
from export import onnx, saved_model
from pipelines import mains

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/demo", "Where everything goes.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Training epochs (default: the synthetic recipe's).")
_VIEWS = flags.DEFINE_string("views", "1x1", "Evaluation views CLIPSxCROPS.")
_EXPORT = flags.DEFINE_bool("export", True, "Export SavedModel and ONNX.")
_DETERMINISTIC = flags.DEFINE_bool(
    "deterministic", True, "Train with tf.config.experimental.enable_op_determinism() (cost_tf.train's flag)."
)


def _saved_model(model, output_dir, class_names):
    path, _ = saved_model.export(model, os.path.join(output_dir, "saved_model"), class_names=class_names)
    return path


def _onnx(model, output_dir, class_names):
    del class_names  # the ONNX graph returns logits
    return onnx.export(model, os.path.join(output_dir, "model.onnx"))["path"]


def main(argv):
    mains.no_arguments(argv)
    summary = demo.run_demo(
        _OUTPUT_DIR.value,
        epochs=_EPOCHS.value,
        views=_VIEWS.value,
        exporters={"saved_model": _saved_model, "onnx": _onnx} if _EXPORT.value else {},
        deterministic=_DETERMINISTIC.value,
    )
    print("\n" + "\n".join(demo.format_summary(summary)))


if __name__ == "__main__":
    app.run(main)
