"""cost_tf.demo: the summary a (tiny) demo run writes, prints and parses back, against its evaluation files."""

import csv
import json
import os

import pytest

from cost_tf import demo


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The demo's library run on 16 training / 8 evaluation clips: 2 steps of 8, no exports."""
    out = str(tmp_path_factory.mktemp("demo"))
    summary = demo.run_demo(
        out,
        epochs=1,
        deterministic=False,  # process-wide in TF: tests/test_cli.py runs the main, deterministic, apart
        synthetic_train=16,
        synthetic_eval=8,
        batch_size=8,
        verbose=0,
    )
    return out, summary


def _json(path):
    with open(path) as f:
        return json.load(f)


def test_summary_matches_the_evaluation_files(tiny_run):
    out, summary = tiny_run
    assert _json(os.path.join(out, demo.SUMMARY)) == summary  # written as returned (JSON round trip)
    evaluation = _json(os.path.join(out, "eval_1x1.json"))
    assert summary["eval_json"] == os.path.join(out, "eval_1x1.json")
    assert (summary["top1"], summary["top5"], summary["num_videos"]) == (
        evaluation["top1"],
        evaluation["top5"],
        8,
    )
    # 8 evaluation clips, one per class: top-1 is the mean of the per-class accuracies, each 0 or 1.
    with open(os.path.join(out, "per_class_1x1.csv")) as f:
        rows = list(csv.reader(f))[1:]
    assert summary["per_class"] == {row[1]: float(row[4]) for row in rows}
    assert set(summary["per_class"].values()) <= {0.0, 1.0} and len(summary["per_class"]) == 8
    assert summary["top1"] == pytest.approx(sum(summary["per_class"].values()) / 8, abs=1e-12)
    metrics = _json(os.path.join(out, "metrics.json"))
    assert (summary["train_top1"], summary["epochs"], summary["steps"]) == (metrics["top1"], 1, 2)
    assert (summary["arch"], summary["seed"], summary["deterministic"]) == ("cost_b_tiny", 0, False)
    assert _json(os.path.join(out, "config.json"))["deterministic"] is False
    assert summary["exports"] == {} and not os.path.exists(os.path.join(out, "model.onnx"))
    assert summary["num_cost_layers"] >= 1 and 0.0 < summary["temporal_weight"] < 1.0
    assert summary["total_s"] >= summary["train_s"] > 0 and summary["cpu_s"] > 0
    assert not [name for name in os.listdir(out) if name.startswith(".tmp")]  # written atomically


def test_the_printed_summary_parses_back(tiny_run):
    _, summary = tiny_run
    lines = demo.format_summary(summary)
    assert lines[0] == "== cost-tf demo ==" and lines[-1].startswith(demo.FINAL_LINE)
    printed = "Epoch 1/1\nfinal top-1:   0.1234 (not the summary's)\n" + "\n".join(lines) + "\n"
    assert demo.parse_final_top1(printed) == round(summary["top1"], 4)  # the last line wins
    # As tests/test_cli.py reads the main's output: "name: value" lines after the header.
    fields = dict(line.split(":", 1) for line in lines[1:] if ":" in line and not line.startswith(" "))
    assert float(fields["final top-1"]) == round(summary["top1"], 4)
    assert fields["summary"].strip() == os.path.join(summary["output_dir"], demo.SUMMARY)
    assert f"top-1 {summary['top1']:.4f}, top-5 {summary['top5']:.4f}" in fields["evaluation"]
    with pytest.raises(ValueError, match="final top-1"):
        demo.parse_final_top1("Epoch 1/1\nno summary here\n")
