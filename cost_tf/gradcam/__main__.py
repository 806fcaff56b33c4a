"""Grad-CAM for clips: `python -m cost_tf.gradcam --model=M.keras (--tfrecord=FILE --index=I | --video=FILE)
--out_dir=D [--class=K] [--layer=NAME]`.

Grad-CAM (Selvaraju et al., ICCV 2017) on a 5D feature map A (T', H', W', C): weights = the class logit's
gradient averaged over (T', H', W'), map = relu(sum_c weight_c * A_c), upsampled (linear in time, bilinear
in space, half-pixel centres) to the clip's T x S x S and scaled to [0, 1]. The default layer is the last 5D
feature map of the model (the input of the global average pooling in every cost_tf family: CoST(a)/(b),
C2D, C3D, I3D, R(2+1)D, S3D-G).

The main reads the clip as cost_tf.evaluate's 1x1 view does (centre clip, short side eval_resize, centre crop;
frame stride and resize from the config.json beside the model) and writes into --out_dir, each file through a
temporary name and a rename: frame_000.png ... (one overlay per frame), gradcam.gif (the overlays animated),
heatmap.npy (float32 (T, S, S), aligned with clip.npy), clip.npy (float32 (T, S, S, 3), the normalised clip
fed to the model) and gradcam.json (class, score, layer, source).
"""

from absl import app

from cost_tf import gradcam
from pipelines import mains

_CONFIG = mains.define_flags(gradcam.GradCamConfig)


def main(argv):
    mains.no_arguments(argv)
    with mains.usage_errors():  # bad flags and files: one line
        gradcam.run(mains.config_from_flags(gradcam.GradCamConfig, _CONFIG))


if __name__ == "__main__":
    app.run(main)
