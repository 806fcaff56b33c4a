"""Writes the embedded order-only synthetic video dataset as TFRecords.

  python -m pipelines.synthetic --output_dir=/tmp/synthetic [--num_train=1200] [--num_eval=240] \\
      [--seed=0] [--num_frames=20] [--size=64] [--num_shards=4]

Eight classes in four time-reversed pairs (pipelines/synthetic/__init__.py); a rerun with the same flags
over a complete output writes nothing. Prints the train and eval shard globs.
"""

from absl import app, flags

from pipelines import mains, synthetic

_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where to write the TFRecords.", required=True)
_NUM_TRAIN = flags.DEFINE_integer("num_train", synthetic.NUM_TRAIN, "Training clips.")
_NUM_EVAL = flags.DEFINE_integer("num_eval", synthetic.NUM_EVAL, "Evaluation clips.")
_SEED = flags.DEFINE_integer("seed", 0, "Generator seed.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", synthetic.NUM_FRAMES, "Frames per clip.")
_SIZE = flags.DEFINE_integer("size", synthetic.SIZE, "Frame side in pixels.")
_NUM_SHARDS = flags.DEFINE_integer("num_shards", 4, "Training shards.")


def main(argv):
    mains.no_arguments(argv)
    with mains.usage_errors():
        train, evaluation = synthetic.write_synthetic(
            _OUTPUT_DIR.value,
            num_train=_NUM_TRAIN.value,
            num_eval=_NUM_EVAL.value,
            seed=_SEED.value,
            num_frames=_NUM_FRAMES.value,
            size=_SIZE.value,
            num_shards=_NUM_SHARDS.value,
        )
    print(f"train: {train}\neval: {evaluation}")


if __name__ == "__main__":
    app.run(main)
