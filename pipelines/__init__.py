"""Video input: annotation readers, PyAV decoding, TFRecord conversion, tf.data pipelines, synthetic data."""

from pipelines.dataset import make_dataset, sample_indices
from pipelines.preprocess import MEAN, STD, center_crop, normalize, resize_short_side
from pipelines.synthetic import CLASSES, write_synthetic

__all__ = [
    "CLASSES",
    "MEAN",
    "STD",
    "center_crop",
    "make_dataset",
    "normalize",
    "resize_short_side",
    "sample_indices",
    "write_synthetic",
]
