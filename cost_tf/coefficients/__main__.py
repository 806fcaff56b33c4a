"""How much each CoST layer relies on spatial (H-W) versus temporal (T-W, T-H) views.

    python -m cost_tf.coefficients --model=runs/demo/model.keras --out_dir=runs/demo/coefficients \\
        [--dataset=synthetic | --pattern='eval-*.tfrecord'] [--num_clips=64]

Writes `coefficients.csv` (one row per CoST layer, in order of depth: mean and spread over channels, and
over clips for CoST(b), of the hw/tw/th coefficients), `layers.png` (a stacked bar per layer, the paper's
figure) and, for CoST(b), `classes.csv` + `classes.png` (per-class temporal weight, most temporal first).
"""

from absl import app

from cost_tf import coefficients
from pipelines import mains

_CONFIG = mains.define_flags(coefficients.CoefficientsConfig)


def main(argv):
    mains.no_arguments(argv)
    config = mains.config_from_flags(coefficients.CoefficientsConfig, _CONFIG)
    with mains.usage_errors(ValueError):
        rows = coefficients.run(config)
    for row in rows:
        print(
            f"{row['layer']:<24} ({row['variant']}) hw {row['hw_mean']:.3f}  tw {row['tw_mean']:.3f}  "
            f"th {row['th_mean']:.3f}"
        )
    per_class = any(row["variant"] == "b" for row in rows)  # CoST(b): per-class coefficients too
    print(
        f"Wrote {config.out_dir}/coefficients.csv and layers.png"
        + (" + classes.csv/png" if per_class else "")
    )


if __name__ == "__main__":
    app.run(main)
