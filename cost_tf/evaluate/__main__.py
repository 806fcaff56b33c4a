"""Evaluation: `python -m cost_tf.evaluate --model=runs/demo/model.keras --views=10x3`.

Each video is read as C clips x K crops (pipelines.dataset "test" mode), the model's softmax is averaged over
the C*K views, and the video counts once. Writes, next to the model unless --output_dir is given:
eval_{views}.json (top-1, top-5, counts), per_class_{views}.csv (accuracy per class) and
confusion_{views}.png (row-normalised confusion matrix). A model trained with --multilabel is scored by mAP
(sigmoid scores averaged over the views; eval_{views}.json and per_class_{views}.csv with each class's AP).

Spec (section 3): 1x1 = centre clip, short side 256, centre crop 224; 10x3 = 10 clips evenly spaced x 3 crops
of the full short side (256) along the long side. A model trained at 224 runs on 256 crops by rebuilding it
at that input size with the same weights (global average pooling makes the network size-agnostic).
Data defaults (dataset, data folder, frame stride, resize) come from the config.json that cost_tf.train writes
beside the model.
"""

from absl import app

from cost_tf import evaluate
from pipelines import mains

_CONFIG = mains.define_flags(evaluate.EvalConfig, defaults=evaluate.FLAG_DEFAULTS)


def main(argv):
    mains.no_arguments(argv)
    config = mains.config_from_flags(evaluate.EvalConfig, _CONFIG)
    with mains.usage_errors():  # bad flags, files and annotation rows: one line
        evaluate.evaluate(config)


if __name__ == "__main__":
    app.run(main)
