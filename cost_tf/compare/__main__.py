"""The temporal benchmark: C2D, C3D, CoST(a), CoST(b), S3D-G (tiny) trained with the same budget on the embedded
order-only dataset; writes docs/RESULTS.md.

    python -m cost_tf.compare [--output_dir=runs/compare] [--results=docs/RESULTS.md] [--epochs=N]

Every network gets the synthetic recipe of cost_tf.train (same data, seed, epochs, batch, schedule). The
classes come in time-reversed pairs (pipelines/synthetic), so a network without temporal convolutions
(C2D: global average pooling over time) cannot tell a pair apart: it is capped at 50 % top-1 (chance 12.5 %).
"""

import os

from absl import app, flags

from cost_tf import compare
from pipelines import files, mains

_OUTPUT_DIR = flags.DEFINE_string("output_dir", "runs/compare", "Training outputs (one folder per arch).")
_RESULTS = flags.DEFINE_string("results", "docs/RESULTS.md", "Markdown report to write.")
_EPOCHS = flags.DEFINE_integer("epochs", None, "Epochs for every arch (default: the synthetic recipe's).")
_ARCHS = flags.DEFINE_list("archs", list(compare.ARCHS), "Architectures to compare.")


def main(argv):
    mains.no_arguments(argv)
    rows = compare.compare(_OUTPUT_DIR.value, archs=tuple(_ARCHS.value), epochs=_EPOCHS.value)
    command = "python -m cost_tf.compare" + (f" --epochs={_EPOCHS.value}" if _EPOCHS.value else "")
    text = compare.results_markdown(rows, command)
    os.makedirs(os.path.dirname(os.path.abspath(_RESULTS.value)), exist_ok=True)
    files.write_atomic(_RESULTS.value, text)
    print(text)
    print(f"Wrote {_RESULTS.value}")


if __name__ == "__main__":
    app.run(main)
