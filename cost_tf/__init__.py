"""cost-tf: CoST (Collaborative Spatio-Temporal feature learning, CVPR 2019) in TensorFlow/Keras."""

from pipelines.quiet import quiet_startup

quiet_startup()  # a `python -m cost_tf.<main>` run: before TensorFlow loads

from cost_tf.autotune import autotune
from cost_tf.cost import CoST
from cost_tf.fold import fold
from cost_tf.inflate import inflate_imagenet
from cost_tf.resnet import ARCHS, build_model, count_macs
from cost_tf.s3dg import build_s3dg  # also registers its initializer for load_model

__all__ = ["ARCHS", "CoST", "autotune", "build_model", "build_s3dg", "count_macs", "fold", "inflate_imagenet"]
