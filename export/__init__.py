"""Exports: TF Serving SavedModel, ONNX, TFLite; folding and parity checks."""

from pipelines.quiet import quiet_startup

quiet_startup()  # a `python -m export.<main>` run: before TensorFlow loads
