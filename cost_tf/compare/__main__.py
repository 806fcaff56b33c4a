"""The temporal benchmark: C2D, C3D, CoST(a), CoST(b), S3D-G (tiny) trained with the same budget on the embedded
order-only dataset; writes docs/RESULTS.md.

    python -m cost_tf.compare [--output_dir=runs/compare] [--results=docs/RESULTS.md] [--epochs=N] [--seeds=0,1]

Every network gets the synthetic recipe of cost_tf.train (same data, epochs, batch, schedule) with the
benchmark's own budget (compare.EPOCHS epochs: long enough that the best validation top-1 stops improving),
once per seed, with deterministic ops; the report gives mean and range over the seeds, the epoch of the best
validation top-1, the training time to 90 % validation top-1, parameters and step time. The
classes come in time-reversed pairs (pipelines/synthetic), so a network without temporal convolutions
(C2D: global average pooling over time) cannot tell a pair apart: it is capped at 50 % top-1 (chance 12.5 %).
"""

import os

from absl import app, flags

from cost_tf import compare
from pipelines import files, mains

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/compare", "Training outputs (one folder per arch).")
_RESULTS = flags.DEFINE_string("results", "docs/RESULTS.md", "Markdown report to write.")
_EPOCHS = flags.DEFINE_integer("epochs", compare.EPOCHS, "Epochs for every arch and seed.", lower_bound=1)
_SEEDS = flags.DEFINE_list("seeds", [str(s) for s in compare.SEEDS], "Seeds (weights and data order).")
flags.register_validator(
    "seeds",
    lambda values: bool(values) and all(v.lstrip("-").isdigit() for v in values),
    message="--seeds must be a non-empty comma-separated list of integers, e.g. --seeds=0,1",
)
_ARCHS = flags.DEFINE_list("archs", list(compare.ARCHS), "Architectures to compare.")


def main(argv):
    mains.no_arguments(argv)
    seeds = tuple(int(v) for v in _SEEDS.value)
    rows = compare.compare(_OUTPUT_DIR.value, archs=tuple(_ARCHS.value), epochs=_EPOCHS.value, seeds=seeds)
    command = "python -m cost_tf.compare"
    if _EPOCHS.value != compare.EPOCHS:
        command += f" --epochs={_EPOCHS.value}"
    if seeds != compare.SEEDS:
        command += " --seeds=" + ",".join(str(s) for s in seeds)
    text = compare.results_markdown(rows, command)
    os.makedirs(os.path.dirname(os.path.abspath(_RESULTS.value)), exist_ok=True)
    files.write_atomic(_RESULTS.value, text)
    print(text)
    print(f"Wrote {_RESULTS.value}")


if __name__ == "__main__":
    app.run(main)
