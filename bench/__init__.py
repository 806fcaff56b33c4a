"""Benchmarks that print ratios measured side by side in one run."""

from pipelines.quiet import quiet_startup

quiet_startup()  # a `python -m bench.<main>` run: before TensorFlow loads
