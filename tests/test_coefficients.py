"""Coefficient analysis: hand-set alpha gives the exact table; CoST(b) averages match NumPy."""

import csv

import keras
import numpy as np
import pytest

from cost_tf import coefficients as coef
from cost_tf.cost import CoST
from tests.test_cost import ref_b_coefficients, ref_views


def _softmax0(z):
    e = np.exp(z - z.max(axis=0))
    return e / e.sum(axis=0)


def _model_a():
    inp = keras.Input((4, 6, 6, 2), name="clip")
    x = CoST(3, name="early")(inp)
    x = CoST(2, name="late")(keras.layers.ReLU()(x))
    return keras.Model(inp, x)


def test_hand_set_alpha_gives_exact_table(tmp_path):
    model = _model_a()
    early = np.array([[2.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]], np.float32)
    late = np.array([[0.0, np.log(2.0)], [np.log(3.0), 0.0], [0.0, 0.0]], np.float32)
    model.get_layer("early").alpha.assign(early)
    model.get_layer("late").alpha.assign(late)
    rows = coef.analyze(model, str(tmp_path))
    assert [r["layer"] for r in rows] == ["early", "late"]
    for row, alpha in zip(rows, (early, late), strict=True):
        a = _softmax0(alpha.astype(np.float64))  # (3, C)
        for i, view in enumerate(("hw", "tw", "th")):
            assert row[f"{view}_mean"] == pytest.approx(a[i].mean(), abs=1e-6)
            assert row[f"{view}_std_channels"] == pytest.approx(a[i].std(), abs=1e-6)
            assert row[f"{view}_std_clips"] == 0.0
    # late: channel 0 = softmax(0, log3, 0) = (1/5, 3/5, 1/5); channel 1 = softmax(log2, 0, 0) = (1/2, 1/4, 1/4)
    assert rows[1]["tw_mean"] == pytest.approx((3 / 5 + 1 / 4) / 2, abs=1e-6)
    with open(tmp_path / "coefficients.csv") as f:
        table = list(csv.DictReader(f))
    assert [t["layer"] for t in table] == ["early", "late"]
    assert float(table[1]["tw_mean"]) == pytest.approx(rows[1]["tw_mean"], rel=1e-6)
    png = (tmp_path / "layers.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_cost_b_averages_match_numpy(tmp_path):
    rng = np.random.default_rng(0)
    inp = keras.Input((4, 6, 6, 2), name="clip")
    layer = CoST(3, variant="b", name="first_b")
    model = keras.Model(inp, layer(inp))
    for w in layer.weights:  # small predictor weights: unsaturated softmax, distinct per-class means
        w.assign(rng.normal(0, 0.5 if w.name == "kernel" else 0.1, w.shape).astype("float32"))
    clips = rng.normal(size=(10, 4, 6, 6, 2)).astype("float32")
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    names = ["left", "right", "still"]
    rows = coef.analyze(model, str(tmp_path), clips, labels, names, top_classes=3)

    ref = ref_b_coefficients(
        ref_views(clips, np.asarray(layer.kernel), (1, 1, 1)),
        np.asarray(layer.view_dense, np.float64),
        np.asarray(layer.view_mix, np.float64),
    )
    for i, view in enumerate(("hw", "tw", "th")):
        assert rows[0][f"{view}_mean"] == pytest.approx(ref[:, i].mean(), abs=1e-5)
        assert rows[0][f"{view}_std_clips"] == pytest.approx(ref[:, i].mean(axis=1).std(), abs=1e-5)
        assert rows[0][f"{view}_std_channels"] == pytest.approx(ref[:, i].mean(axis=0).std(), abs=1e-5)
    temporal = ref[:, 1:].sum(axis=1).mean(axis=1)
    with open(tmp_path / "classes.csv") as f:
        classes = list(csv.DictReader(f))
    expect = sorted(((temporal[labels == k].mean(), names[k]) for k in range(3)), reverse=True)
    assert expect[0][0] - expect[-1][0] > 1e-3  # the ordering is meaningful
    assert [c["class"] for c in classes] == [name for _, name in expect]
    for c, (value, _) in zip(classes, expect, strict=True):
        assert float(c["temporal_mean"]) == pytest.approx(value, abs=1e-5)
    assert (tmp_path / "classes.png").read_bytes()[:4] == b"\x89PNG"


def test_errors():
    inp = keras.Input((4, 6, 6, 2))
    with pytest.raises(ValueError, match="no CoST layers"):
        coef.layer_coefficients(keras.Model(inp, keras.layers.Conv3D(2, 3)(inp)))
    with pytest.raises(ValueError, match="give clips"):
        coef.layer_coefficients(keras.Model(inp, CoST(2, variant="b")(inp)))


def test_analyze_model_reads_eval_clips(tmp_path):
    from pipelines.synthetic import CLASSES, write_synthetic

    _, pattern = write_synthetic(
        str(tmp_path / "data"), num_train=8, num_eval=12, num_frames=8, size=32, num_shards=1
    )
    inp = keras.Input((4, 24, 24, 3), name="clip")
    model = keras.Model(inp, CoST(2, variant="b", name="b")(inp))
    with pytest.raises(ValueError, match="pass `pattern`"):
        coef.analyze_model(model, str(tmp_path / "out"))
    rows = coef.analyze_model(model, str(tmp_path / "out"), pattern, list(CLASSES), num_clips=10)
    clips, labels = coef.load_clips(pattern, 10, 4, 2, 24)  # the model's T and crop, the default stride
    assert clips.shape == (10, 4, 24, 24, 3) and labels.shape == (10,)
    with open(tmp_path / "out" / "classes.csv") as f:
        classes = list(csv.DictReader(f))
    assert sum(int(c["clips"]) for c in classes) == 10
    assert {c["class"] for c in classes} == {CLASSES[k] for k in labels}
    expect = coef.analyze(model, str(tmp_path / "ref"), clips, labels, list(CLASSES))
    for row, ref in zip(rows, expect, strict=True):
        assert row == pytest.approx(ref, abs=1e-6)
