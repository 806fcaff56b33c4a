"""cost-tf: CoST (Collaborative Spatio-Temporal feature learning, CVPR 2019) in TensorFlow/Keras."""

from cost_tf.cost import CoST
from cost_tf.fold import fold

__all__ = ["CoST", "fold"]
