"""Video input: annotation readers, PyAV decoding, TFRecord conversion, tf.data pipelines, synthetic data.

Importing the package is light (no TensorFlow, no PyAV): `import pipelines.kinetics` reads CSVs only. The
names below load their module on first use.
"""

import importlib

from pipelines.quiet import quiet_startup

quiet_startup()  # a `python -m pipelines.<main>` run: before anything imports TensorFlow

_EXPORTS = {
    "CLASSES": "pipelines.synthetic",
    "ClipOptions": "pipelines.dataset",
    "MEAN": "pipelines.preprocess",
    "STD": "pipelines.preprocess",
    "center_crop": "pipelines.preprocess",
    "make_dataset": "pipelines.dataset",
    "normalize": "pipelines.preprocess",
    "resize_short_side": "pipelines.preprocess",
    "sample_indices": "pipelines.dataset",
    "tfrecord_dataset": "pipelines.dataset",
    "video_dataset": "pipelines.dataset",
    "write_synthetic": "pipelines.synthetic",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pipelines' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
