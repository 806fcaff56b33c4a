"""Trains a video network: `python -m cost_tf.train --dataset=... --model_dir=...`.

Defaults follow the spec's recipe (section 3) for the named dataset; --dataset=synthetic (the default) is the
demo: the embedded order-only dataset (pipelines/synthetic), CoST(b) tiny, minutes on 2 CPU cores.

Outputs in --model_dir: model.keras (final model), metrics.json (top-1/top-5 on the eval set, centre clip),
best.keras (+ best.keras.json) by validation top-1, config.json, training_log.csv, tensorboard/, and while
training backup/ (removed once the outputs are written). A run killed at any moment and started again with the
same command resumes from the last backup (every --backup_steps batches and every epoch end), mid-epoch
included, and ends after the same number of epochs and optimizer steps. A run that finds no backup starts
afresh and first removes an earlier run's outputs from --model_dir.
"""

from absl import app

from cost_tf import train
from pipelines import mains

_CONFIG = mains.define_flags(train.TrainConfig, defaults=train.FLAG_DEFAULTS)


def main(argv):
    mains.no_arguments(argv)
    with mains.usage_errors(ValueError):  # bad flags, caught before any data is read or model built
        config, strategy = train.setup(mains.config_from_flags(train.TrainConfig, _CONFIG))
    train.train(config, strategy=strategy)


if __name__ == "__main__":
    app.run(main)
