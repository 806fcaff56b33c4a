"""cost_tf.evaluate: view averaging by hand, metrics helpers, and a full multi-view run vs a per-view loop."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from cost_tf import evaluate, loading
from cost_tf.resnet import build_model


def test_average_views_hand_computed():
    # 2 videos x 3 views x 4 classes, video-major rows.
    probabilities = np.array(
        [
            [0.70, 0.10, 0.10, 0.10],  # video 0, view 0
            [0.10, 0.70, 0.10, 0.10],  # video 0, view 1
            [0.40, 0.40, 0.10, 0.10],  # video 0, view 2
            [0.00, 0.00, 0.00, 1.00],  # video 1, view 0
            [0.25, 0.25, 0.25, 0.25],  # video 1, view 1
            [0.05, 0.05, 0.60, 0.30],  # video 1, view 2
        ]
    )
    expected = np.array(
        [
            [0.40, 0.40, 0.10, 0.10],  # (0.7 + 0.1 + 0.4) / 3, (0.1 + 0.7 + 0.4) / 3, ...
            [
                0.10,
                0.10,
                0.85 / 3,
                1.55 / 3,
            ],  # (0 + 0.25 + 0.05) / 3, ..., (0 + 0.25 + 0.6) / 3, (1 + 0.25 + 0.3) / 3
        ]
    )
    np.testing.assert_allclose(evaluate.average_views(probabilities, 3), expected, atol=1e-12)
    # 30 views (10 clips x 3 crops): one video whose views each vote for class (v % 5); mean = 6/30 per class.
    thirty = np.eye(5)[np.arange(30) % 5]
    np.testing.assert_allclose(evaluate.average_views(thirty, 30), np.full((1, 5), 0.2), atol=1e-12)
    with pytest.raises(ValueError, match="num_views|Expected"):
        evaluate.average_views(probabilities, 4)


def test_topk_and_confusion_hand_computed():
    probabilities = np.array([[0.1, 0.5, 0.3, 0.1], [0.4, 0.3, 0.2, 0.1], [0.2, 0.2, 0.5, 0.1]])
    labels = np.array([2, 0, 3])
    np.testing.assert_array_equal(evaluate.topk_correct(probabilities, labels, 1), [False, True, False])
    np.testing.assert_array_equal(evaluate.topk_correct(probabilities, labels, 2), [True, True, False])
    np.testing.assert_array_equal(evaluate.topk_correct(probabilities, labels, 4), [True, True, True])
    matrix = evaluate.confusion_matrix(labels, probabilities.argmax(1), 4)
    expected = np.zeros((4, 4), int)
    expected[2, 1] = expected[0, 0] = expected[3, 2] = 1
    np.testing.assert_array_equal(matrix, expected)


@pytest.mark.parametrize("views, parsed", [("1x1", (1, 1)), ("10x3", (10, 3)), (" 2 x 5 ", (2, 5))])
def test_parse_views(views, parsed):
    assert evaluate.parse_views(views) == parsed


@pytest.mark.parametrize("views", ["10", "0x3", "ax3", "3x"])
def test_parse_views_rejects(views):
    with pytest.raises(ValueError, match="views must be CLIPSxCROPS"):
        evaluate.parse_views(views)


def test_unreadable_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.keras"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="--model: cannot load"):
        loading.load_model(str(bad))
    with pytest.raises(ValueError, match="--model: no such file"):
        evaluate.evaluate(evaluate.EvalConfig(model=str(tmp_path / "missing.keras")))


@pytest.fixture(scope="module")
def eval_setup(tmp_path_factory):
    """A small random model (spread-out logits) saved as .keras, and 12 synthetic eval clips of 32 px."""
    from pipelines.synthetic import write_synthetic

    root = tmp_path_factory.mktemp("evaluate")
    _, eval_pattern = write_synthetic(
        str(root / "data"), num_train=4, num_eval=12, num_frames=12, size=32, num_shards=1
    )
    keras.utils.set_random_seed(3)
    model = build_model("c2d_tiny", num_classes=8, num_frames=4, input_size=32)
    logits = model.get_layer("logits")
    logits.kernel.assign(np.random.default_rng(0).normal(0, 3.0, logits.kernel.shape).astype("float32"))
    path = str(root / "model.keras")
    model.save(path)
    return root, path, eval_pattern, model


def test_multi_view_evaluation_matches_a_per_view_reference(eval_setup):
    """evaluate() with 2x3 views vs an independent loop: one model call per view, NumPy softmax and mean."""
    from pipelines.dataset import make_dataset

    root, path, eval_pattern, model = eval_setup
    out = root / "out"
    report = evaluate.evaluate(
        evaluate.EvalConfig(
            model=path,
            output_dir=str(out),
            views="2x3",
            batch_size=5,
            dataset="tfrecord",
            eval_pattern=eval_pattern,
            frame_stride=3,
            crop_size=32,
            eval_resize=32,
        )
    )
    data = make_dataset(
        eval_pattern,
        mode="test",
        batch_size=1,
        num_frames=4,
        frame_stride=3,
        crop_size=32,
        num_clips=2,
        num_crops=3,
        eval_resize=32,
    )
    video_probabilities, labels = [], []
    for clips, label in data:
        assert clips.shape == (1, 6, 4, 32, 32, 3)
        per_view = []
        for v in range(6):
            logits = model(clips[:, v], training=False).numpy()[0].astype(np.float64)
            e = np.exp(logits - logits.max())
            per_view.append(e / e.sum())
        video_probabilities.append(np.mean(per_view, axis=0))
        labels.append(int(label[0]))
    video_probabilities, labels = np.array(video_probabilities), np.array(labels)
    predictions = video_probabilities.argmax(1)
    assert len(labels) == 12 and report["num_videos"] == 12  # each video counted once, not once per view
    assert report["top1"] == pytest.approx(np.mean(predictions == labels))
    top5 = np.mean(
        [label in np.argsort(-p)[:5] for p, label in zip(video_probabilities, labels, strict=True)]
    )
    assert report["top5"] == pytest.approx(top5)
    assert 0 < report["top1"] < 1  # the comparison is not vacuous (spread-out random logits)

    with open(out / "per_class_2x3.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["class_index"]) for r in rows] == list(range(8))
    for r in rows:
        mask = labels == int(r["class_index"])
        assert int(r["num_videos"]) == mask.sum()
        assert int(r["correct"]) == np.sum(predictions[mask] == labels[mask])
    with open(out / "confusion_2x3.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with open(out / "eval_2x3.json") as f:
        assert json.load(f)["top1"] == report["top1"]
    assert not [n for n in os.listdir(out) if n.startswith(".tmp-")]


def test_model_is_rebuilt_at_a_larger_crop_with_the_same_weights(eval_setup):
    _, path, _, model = eval_setup
    larger = loading.load_model(path, input_size=48)
    assert larger.input_shape == (None, 4, 48, 48, 3)
    for a, b in zip(larger.get_weights(), model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_multilabel_model_reports_map_against_a_numpy_reference(tmp_path):
    """A model trained with --multilabel (config.json beside it): sigmoid scores of the centre view, mAP
    equal to the plain NumPy AP (tests/test_metrics.py's reference) of an independent model loop."""
    from pipelines.dataset import make_dataset
    from tests.test_dataset import indexed_video, write_variant
    from tests.test_metrics import reference_ap

    keras.utils.set_random_seed(5)  # default init: small logits, distinct (unsaturated) sigmoid scores
    model = build_model("c2d_tiny", num_classes=8, num_frames=4, input_size=32)
    labels = [[0, 2], [1], [2, 3, 5], [3, 0], [7], [4, 6], [1, 6], [5]]
    videos = [indexed_video(num_frames=6, height=32, width=32, seed=i) for i in range(len(labels))]
    pattern = write_variant(str(tmp_path / "multi.tfrecord"), videos, labels)
    path = str(tmp_path / "model.keras")
    model.save(path)
    (tmp_path / "config.json").write_text(
        json.dumps(dict(multilabel=True, dataset="tfrecord", eval_pattern=pattern, frame_stride=1))
    )
    report = evaluate.evaluate(evaluate.EvalConfig(model=path, views="1x1", crop_size=32, eval_resize=32))
    data = make_dataset(
        pattern,
        "eval",
        batch_size=8,
        num_frames=4,
        frame_stride=1,
        crop_size=32,
        eval_resize=32,
        multilabel=True,
        num_classes=8,
    )
    clips, multi_hot = next(iter(data))
    scores = 1 / (1 + np.exp(-model(clips, training=False).numpy().astype(np.float64)))
    assert len(np.unique(scores)) == scores.size
    expected = np.mean([reference_ap(multi_hot.numpy()[:, k], scores[:, k]) for k in range(8)])
    assert report["mAP"] == pytest.approx(expected, rel=1e-5) and report["num_videos"] == 8
    with open(report["per_class_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [int(r["num_positives"]) for r in rows] == [2, 2, 2, 2, 1, 2, 2, 1]
    assert json.loads((tmp_path / "eval_1x1.json").read_text())["mAP"] == report["mAP"]
