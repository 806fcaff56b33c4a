"""cost_tf.autotune: picks the measured minimum, caches it safely, never overrides an explicit choice, and
changes no number (Keras, .keras files, SavedModel, ONNX)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from cost_tf import cost
from cost_tf.autotune import (
    CACHE_ENV,
    CACHE_FILE,
    autotune,
    autotune_for_main,
    candidate_fn,
    choose,
    default_cache_dir,
    input_shapes,
    interleaved_min_ms,
    main_input_shape,
    summary,
)
from cost_tf.cost import CoST, valid_implementations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (2, 4, 8, 8, 3)


@pytest.fixture(autouse=True)
def _fresh_tuning(monkeypatch, tmp_path):
    # Never touch the user's cache; each test starts without the choices of earlier tests in this process.
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "default-cache"))
    cost.TUNED.clear()
    yield
    cost.TUNED.clear()


def _model(explicit=None):
    inp = keras.Input(SHAPE[1:], name="clip")
    x = CoST(4, "a", use_bias=True, name="a1")(inp)
    x = CoST(4, "a", name="a2")(keras.layers.ReLU()(x))
    x = CoST(4, "a", name="a3")(keras.layers.ReLU()(x))  # the configuration and input shape of a2
    x = CoST(4, "a", strides=(1, 2, 2), name="a_strided")(x)
    x = CoST(4, "b", implementation=explicit or "auto", name="b1")(keras.layers.ReLU()(x))
    x = keras.layers.GlobalAveragePooling3D()(x)
    return keras.Model(inp, keras.layers.Dense(3, name="head")(x))


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    return model


class FakeTimer:
    """A timer with fixed ms per (mode, implementation); with run=True it also runs every candidate once."""

    def __init__(self, table, run=False):
        self.table = table
        self.run = run
        self.calls = []

    def __call__(self, runs):
        out = {}
        for impl, run in runs.items():
            if self.run:
                run()  # the candidate really runs (and its gradients are checked)
            out[impl] = self.table[run.mode][impl]
        self.calls.append((runs[next(iter(runs))].mode, runs[next(iter(runs))].shape, sorted(runs)))
        return out


TABLE = {
    "inference": {"frames": 5.0, "views": 4.0, "fused": 3.0, "sparse": 6.0, "flat": 7.0},
    "training": {"frames": 9.0, "views": 8.0, "fused": 10.0, "sparse": 11.0, "flat": 2.0},
}


def test_picks_the_measured_minimum_per_distinct_configuration(tmp_path):
    model = _randomize(_model())
    x = np.random.default_rng(1).normal(size=SHAPE).astype("float32")
    before = np.asarray(model(x, training=False))
    timer = FakeTimer(TABLE, run=True)
    report = autotune(model, SHAPE, cache_dir=str(tmp_path), timer=timer, max_batch=2)
    assert sorted(report) == ["a1", "a2", "a3", "a_strided", "b1"]
    for name, layer in ((n, model.get_layer(n)) for n in report):
        valid = valid_implementations(layer.variant, layer.strides)
        for mode in ("inference", "training"):
            expect = min(valid, key=TABLE[mode].get)
            assert report[name][mode] == expect == layer.resolved_implementation(mode == "training")
            assert report[name]["ms"][mode] == {impl: TABLE[mode][impl] for impl in valid}
    # fused wins inference where valid; CoST(b) cannot run it: views; strided CoST(a) has no sparse.
    assert report["a1"]["inference"] == "fused" and report["b1"]["inference"] == "views"
    assert report["b1"]["training"] == "flat"
    # a2 and a3 share a configuration and input shape: measured once. Four configurations x two modes.
    assert len(timer.calls) == 8
    assert ("inference", (2, 4, 8, 8, 4), ["flat", "frames", "fused", "views"]) in timer.calls  # a_strided
    assert ("training", (2, 4, 4, 4, 4), ["flat", "frames", "views"]) in timer.calls  # b1, after the stride
    assert not any(report[n]["cached"] or report[n]["explicit"] for n in report)
    np.testing.assert_allclose(np.asarray(model(x, training=False)), before, rtol=1e-5, atol=1e-5)


class FakeClock:
    """A clock that only moves when a fake candidate runs: each call of fns[name] takes the next ms in
    its list (the last repeats)."""

    def __init__(self, ms):
        self.now, self.ms, self.calls = 0.0, ms, dict.fromkeys(ms, 0)

    def __call__(self):
        return self.now

    def fns(self):
        def run(name):
            durations = self.ms[name]
            self.now += durations[min(self.calls[name], len(durations) - 1)] / 1000
            self.calls[name] += 1

        return {name: (lambda name=name: run(name)) for name in self.ms}


def test_interleaved_min_ms_prunes_clearly_slower_candidates():
    # first call, then timed rounds: "fast" is fastest once warm; "slow_first" loses after its first call
    # (> 2x the fastest first call) and is called once; "slower" (> 1.3x after round 1) is timed once.
    clock = FakeClock(
        {
            "fast": [30.0, 10.0, 9.0, 11.0],
            "close": [25.0, 11.0, 12.0, 10.5],
            "slower": [28.0, 14.0, 5.0],
            "slow_first": [61.0, 1.0],
        }
    )
    ms = interleaved_min_ms(clock.fns(), rounds=3, budget_s=10.0, clock=clock)
    assert ms == pytest.approx({"fast": 9.0, "close": 10.5, "slower": 14.0, "slow_first": 61.0})
    assert clock.calls == {"fast": 4, "close": 4, "slower": 2, "slow_first": 1}
    assert min(ms, key=ms.get) == "fast"
    # The budget of timed calls ends the rounds (at least one timed round runs); one left ends them too.
    clock = FakeClock({"fast": [30.0, 10.0], "close": [25.0, 11.0]})
    assert interleaved_min_ms(clock.fns(), rounds=3, budget_s=0.001, clock=clock) == pytest.approx(
        {"fast": 10.0, "close": 11.0}
    )
    assert clock.calls == {"fast": 2, "close": 2}
    clock = FakeClock({"fast": [30.0, 10.0], "slow": [25.0, 20.0]})
    assert interleaved_min_ms(clock.fns(), rounds=3, budget_s=10.0, clock=clock) == pytest.approx(
        {"fast": 10.0, "slow": 20.0}
    )
    assert clock.calls == {"fast": 2, "slow": 2}


def test_default_batch_and_candidates_built_once_per_configuration(tmp_path):
    timer = FakeTimer(TABLE)
    autotune(CoST(4, name="c"), (8,) + SHAPE[1:], cache_dir=str(tmp_path), timer=timer)
    assert [c[1] for c in timer.calls] == [(1,) + SHAPE[1:]] * 2  # measured at max_batch=1
    built = {}
    layer = CoST(4)
    inference = candidate_fn(layer, SHAPE, "inference", "fused", built=built)
    training = candidate_fn(layer, SHAPE, "training", "fused", built=built)
    assert len(built) == 1 and inference.layer is training.layer and inference.input is training.input
    assert inference() == pytest.approx(float(np.sum(np.asarray(inference.layer(inference.input)))), rel=1e-4)


@pytest.mark.parametrize("global_policy", [False, True])
def test_bfloat16_candidates_run_in_the_compute_dtype(tmp_path, global_policy):
    seen = []

    def timer(runs):
        for run in runs.values():
            run()
            seen.append((run.layer.compute_dtype, run.layer.dtype_policy.name, run.input.dtype.name))
        return {impl: TABLE[run.mode][impl] for impl, run in runs.items()}

    policy = keras.config.dtype_policy()
    try:
        if global_policy:
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
            layer = CoST(4, "b", name="c")
        else:
            layer = CoST(4, "b", name="c", dtype="mixed_bfloat16")
        report = autotune(layer, SHAPE, cache_dir=str(tmp_path), timer=timer)
    finally:
        keras.mixed_precision.set_global_policy(policy)
    assert seen and set(seen) == {("bfloat16", "mixed_bfloat16", "bfloat16")}
    assert report["c"]["training"] == "flat"
    with open(tmp_path / CACHE_FILE) as f:
        assert {json.loads(k)["dtype"] for k in json.load(f)["entries"]} == {"mixed_bfloat16"}


def test_near_ties_keep_the_default():
    assert choose({"frames": 10.0, "views": 9.6, "flat": 12.0}, "frames") == "frames"  # within 5 %
    assert choose({"frames": 10.0, "views": 9.4, "flat": 12.0}, "frames") == "views"
    assert choose({"frames": 10.0, "views": 9.5}, "fused") == "views"  # default not a candidate


def test_real_timer_measures_every_candidate_with_gradients(tmp_path):
    layer = CoST(4, "b", strides=(1, 2, 2))
    report = autotune(layer, (1, 3, 6, 6, 2), cache_dir=str(tmp_path))
    entry = report[layer.name]
    for mode in ("inference", "training"):
        ms = entry["ms"][mode]
        assert sorted(ms) == sorted(valid_implementations("b", (1, 2, 2)))
        assert all(v > 0 for v in ms.values())
        assert entry[mode] == choose(ms, cost.default_implementation("b", (1, 2, 2), mode == "training"))


def test_cache_round_trip_and_changed_keys(tmp_path, monkeypatch):
    timer = FakeTimer(TABLE)
    first = autotune(_model(), SHAPE, cache_dir=str(tmp_path), timer=timer, max_batch=2)
    with open(tmp_path / CACHE_FILE) as f:
        data = json.load(f)
    assert data["version"] == 1 and len(data["entries"]) == 8
    assert [p for p in os.listdir(tmp_path) if p != CACHE_FILE] == []  # no temporary file left
    # A second run (new model, same configurations) measures nothing and chooses the same.
    again = FakeTimer(TABLE)
    model = _model()
    second = autotune(model, SHAPE, cache_dir=str(tmp_path), timer=again, max_batch=2)
    assert again.calls == []
    assert all(second[n]["cached"] for n in second)
    assert {n: (e["inference"], e["training"]) for n, e in second.items()} == {
        n: (e["inference"], e["training"]) for n, e in first.items()
    }
    assert model.get_layer("b1").resolved_implementation(True) == "flat"
    # Another batch within max_batch is another shape: re-measured; a batch above max_batch is clipped to it.
    other = FakeTimer(TABLE)
    autotune(_model(), (1,) + SHAPE[1:], cache_dir=str(tmp_path), timer=other, max_batch=2)
    assert len(other.calls) == 8
    clipped = FakeTimer(TABLE)
    autotune(_model(), (16,) + SHAPE[1:], cache_dir=str(tmp_path), timer=clipped, max_batch=2)
    assert clipped.calls == []
    # Another device or TF version is another key; so is one mode only.
    monkeypatch.setattr(sys.modules["cost_tf.autotune"], "device_description", lambda: "GPU Imaginary 9000")
    device = FakeTimer(TABLE)
    autotune(_model(), SHAPE, modes=("training",), cache_dir=str(tmp_path), timer=device)
    assert [c[0] for c in device.calls] == ["training"] * 4
    # use_cache=False measures again.
    fresh = FakeTimer(TABLE)
    autotune(_model(), SHAPE, cache_dir=str(tmp_path), timer=fresh, use_cache=False, modes=("training",))
    assert len(fresh.calls) == 4


def test_changed_dtype_re_measures(tmp_path):
    timer = FakeTimer(TABLE)
    autotune(CoST(4), SHAPE, cache_dir=str(tmp_path), timer=timer, modes=("inference",))
    autotune(
        CoST(4, dtype="mixed_bfloat16"), SHAPE, cache_dir=str(tmp_path), timer=timer, modes=("inference",)
    )
    autotune(CoST(4, variant="b"), SHAPE, cache_dir=str(tmp_path), timer=timer, modes=("inference",))
    autotune(CoST(4, strides=2), SHAPE, cache_dir=str(tmp_path), timer=timer, modes=("inference",))
    assert len(timer.calls) == 4


@pytest.mark.parametrize("content", [b"{not json", b'{"version": 1, "entries": 3}', b"\xff\xfe", b"[]"])
def test_corrupt_cache_warns_and_measures(tmp_path, content):
    (tmp_path / CACHE_FILE).write_bytes(content)
    timer = FakeTimer(TABLE)
    with pytest.warns(UserWarning, match="unreadable cache"):
        report = autotune(CoST(4, name="c"), SHAPE, cache_dir=str(tmp_path), timer=timer)
    assert len(timer.calls) == 2 and report["c"]["training"] == "flat"
    with open(tmp_path / CACHE_FILE) as f:
        assert len(json.load(f)["entries"]) == 2  # replaced by a good file


def test_unwritable_cache_warns_and_still_tunes(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    timer = FakeTimer(TABLE)
    layer = CoST(4, name="c")
    with pytest.warns(UserWarning, match="could not write the cache"):
        report = autotune(layer, SHAPE, cache_dir=str(blocker / "cache"), timer=timer)
    assert report["c"]["inference"] == "fused" and layer.resolved_implementation(False) == "fused"


def test_explicit_implementation_wins(tmp_path):
    model = _model(explicit="frames")
    timer = FakeTimer(TABLE)
    report = autotune(model, SHAPE, cache_dir=str(tmp_path), timer=timer)
    assert report["b1"] == {
        "inference": "frames",
        "training": "frames",
        "ms": {},
        "cached": False,
        "explicit": True,
    }
    assert len(timer.calls) == 6  # b1 is not measured
    layer = model.get_layer("b1")
    layer.set_tuned_implementations(inference="flat", training="flat")
    assert layer.resolved_implementation(False) == layer.resolved_implementation(True) == "frames"
    with pytest.raises(ValueError, match="Received: training='sparse'"):
        layer.set_tuned_implementations(training="sparse")


def test_defaults_without_measurement():
    assert CoST(4).resolved_implementation(True) == cost.default_implementation("a", (1, 1, 1), True)
    assert set(cost.DEFAULTS) == {"cpu", "cpu-avx512", "gpu"}
    for kind in cost.DEFAULTS:
        for variant in ("a", "b"):
            for strides in ((1, 1, 1), (1, 2, 2), (2, 2, 2)):
                for training in (False, True):
                    impl = cost.default_implementation(variant, strides, training, kind)
                    assert impl in valid_implementations(variant, strides)
    # The strided CoST(a) default on CPU cannot be sparse.
    assert cost.default_implementation("a", (1, 2, 2), False, "cpu") != "sparse"


@pytest.mark.parametrize(
    "flags, kind",
    [
        ("fpu sse2 avx2 avx512f avx512bw amx_tile", "cpu-avx512"),
        ("fpu sse2 avx2 fma", "cpu"),
        ("fpu avx512_bf16", "cpu"),  # another AVX-512 extension's name alone is not avx512f
    ],
)
def test_device_kind_reads_the_cpu_flags(tmp_path, flags, kind):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: {flags}\n\nprocessor\t: 1\n")
    assert cost.device_kind(str(cpuinfo)) == kind
    assert cost.device_kind(str(tmp_path / "missing")) == "cpu"  # no /proc/cpuinfo: the generic CPU list


def test_input_shapes_traced_when_the_model_has_unknown_dims():
    inp = keras.Input((None, None, None, 3))
    x = CoST(4, strides=(1, 2, 2), name="s")(inp)
    x = CoST(5, variant="b", name="t")(x)
    model = keras.Model(inp, x)
    shapes = {layer.name: shape for layer, shape in input_shapes(model, (2, 5, 9, 10, 3))}
    assert shapes == {"s": (2, 5, 9, 10, 3), "t": (2, 5, 5, 5, 4)}
    # Static path of a fully known model: the batch comes from input_shape.
    static = {layer.name: shape for layer, shape in input_shapes(_model(), (3,) + SHAPE[1:])}
    assert static["b1"] == (3, 4, 4, 4, 4) and static["a1"] == (3,) + SHAPE[1:]
    with pytest.raises(ValueError, match=r"Received: input_shape=\(2, 8, 8, 3\)"):
        input_shapes(CoST(4), (2, 8, 8, 3))


def test_keras_file_does_not_carry_the_choice(tmp_path):
    model = _randomize(_model(explicit="frames"))
    autotune(model, SHAPE, cache_dir=str(tmp_path / "cache"), timer=FakeTimer(TABLE))
    x = np.random.default_rng(2).normal(size=SHAPE).astype("float32")
    path = str(tmp_path / "m.keras")
    model.save(path)
    config = model.get_layer("a1").get_config()
    assert config["implementation"] == "auto" and "tuned_implementations" not in json.dumps(config)
    cost.TUNED.clear()  # as in another process
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("a1").tuned_implementations == {}
    assert loaded.get_layer("a1").resolved_implementation(True) == cost.default_implementation(
        "a", (1, 1, 1), True
    )
    assert loaded.get_layer("b1").implementation == "frames"  # explicit: kept
    for training in (False, True):
        np.testing.assert_allclose(
            np.asarray(loaded(x, training=training)),
            np.asarray(model(x, training=training)),
            rtol=1e-5,
            atol=1e-5,
        )


def test_copies_of_a_tuned_layer_run_the_choice(tmp_path):
    model = _model()
    autotune(model, SHAPE, cache_dir=str(tmp_path), timer=FakeTimer(TABLE))
    clone = keras.models.clone_model(model)
    layer = clone.get_layer("b1")
    assert layer.tuned_implementations == {}
    assert layer.resolved_implementation(True, (None, 4, 4, 4, 4)) == "flat"
    assert layer.resolved_implementation(True, (None, 4, 8, 8, 4)) == cost.default_implementation(
        "b", (1, 1, 1), True
    )


def _tiny_tuned(tmp_path, arch, table):
    from cost_tf.resnet import build_model

    keras.utils.set_random_seed(0)  # the same weights whatever ran before in this process
    model = build_model(arch, num_classes=5, num_frames=4, input_size=32)
    rng = np.random.default_rng(3)
    for w in model.weights:
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
        elif "moving_mean" in w.path or "beta" in w.path or w.path == "logits/kernel":
            w.assign(rng.normal(0, 0.5, w.shape).astype("float32"))
    clip = rng.normal(size=(2, 4, 32, 32, 3)).astype("float32")
    before = np.asarray(model(clip, training=False))
    report = autotune(
        model,
        (2, 4, 32, 32, 3),
        cache_dir=str(tmp_path / "cache"),
        timer=FakeTimer(table),
        modes=("inference",),
    )
    return model, clip, before, report


def test_saved_model_and_onnx_exports_unchanged_after_autotuning(tmp_path):
    from export import onnx as onnx_export
    from export import saved_model

    # CoST(b) stays a CoST layer in the exports: make autotune pick the non-default "flat".
    table = {"inference": dict(TABLE["inference"], flat=1.0)}
    model, clip, before, report = _tiny_tuned(tmp_path, "cost_b_tiny", table)
    assert {e["inference"] for e in report.values()} == {"flat"}
    # Another implementation sums in another order: float32 rounding relative to the logits' scale (~60).
    scale = float(np.abs(before).max())
    np.testing.assert_allclose(np.asarray(model(clip, training=False)), before, rtol=1e-5, atol=1e-6 * scale)
    path, _ = saved_model.export(model, tmp_path / "serving", fold=False)
    served = saved_model.run_signature(path, "logits", {"clip": clip})["logits"]
    np.testing.assert_allclose(served, before, rtol=1e-4, atol=1e-5)
    onnx_report = onnx_export.export(model, tmp_path / "m.onnx", fold=False, num_frames=4)
    np.testing.assert_allclose(
        onnx_export.run_onnxruntime(onnx_report["path"], clip), before, rtol=1e-4, atol=1e-5
    )


def test_autotune_for_main_line(tmp_path, capsys):
    model = _model()
    line = autotune_for_main(model, SHAPE, enabled=False, cache_dir=str(tmp_path))
    assert line.startswith("autotune: off") and capsys.readouterr().out.strip() == line
    assert model.get_layer("a1").tuned_implementations == {}
    line = autotune_for_main(model, SHAPE, modes=("inference",), cache_dir=str(tmp_path))
    assert capsys.readouterr().out.strip() == line
    assert line.startswith("autotune: 5 CoST layers (5 measured, 0 cached, 0 explicit) chosen inference ")
    assert line.endswith(" s")
    assert set(model.get_layer("a1").tuned_implementations) == {"inference"}
    again = autotune_for_main(_model(), SHAPE, modes=("inference",), cache_dir=str(tmp_path))
    assert "(0 measured, 5 cached, 0 explicit)" in again
    assert summary({}, 0.0) == "autotune: no CoST layer to tune, 0.0 s"
    assert main_input_shape(model) == (1, 4, 8, 8, 3)
    assert main_input_shape(keras.Model(*(lambda i: (i, i))(keras.Input((None, None, None, 3)))), 0, 64) == (
        1,
        8,
        64,
        64,
        3,
    )


def test_default_cache_dir(monkeypatch):
    monkeypatch.setenv(CACHE_ENV, "/somewhere/else")
    assert default_cache_dir() == "/somewhere/else"
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", "/xdg")
    assert default_cache_dir() == "/xdg/cost_tf"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == os.path.join(os.path.expanduser("~"), ".cache", "cost_tf")


def test_bad_arguments():
    with pytest.raises(ValueError, match="Received: modes=\\('fit',\\)"):
        autotune(CoST(4), SHAPE, modes=("fit",))
    with pytest.raises(ValueError, match="Received: max_batch=0"):
        autotune(CoST(4), SHAPE, max_batch=0)


# -- the mains' flags -------------------------------------------------------------------------------------------


def test_train_and_evaluate_flags():
    from absl import flags

    from cost_tf import evaluate, train
    from pipelines import mains

    for config_cls, module in ((train.TrainConfig, train), (evaluate.EvalConfig, evaluate)):
        fv = flags.FlagValues()
        holders = mains.define_flags(config_cls, defaults=module.FLAG_DEFAULTS, flag_values=fv)
        fv(["prog"])
        assert holders["autotune"].value is True
        fv(["prog", "--noautotune"])
        assert holders["autotune"].value is False
    fv = flags.FlagValues()
    holders = mains.define_flags(train.TrainConfig, defaults=train.FLAG_DEFAULTS, flag_values=fv)
    fv(["prog", "--noautotune"])
    assert mains.config_from_flags(train.TrainConfig, holders).autotune is False
    assert train.TrainConfig().autotune is False and evaluate.EvalConfig().autotune is False  # library: off


@pytest.mark.parametrize("module,flag", [("export.saved_model", None), ("export.onnx", "--noautotune")])
def test_export_mains_autotune_by_default(module, flag, tmp_path):
    from cost_tf.resnet import build_model

    model = build_model("cost_b_tiny", num_classes=3, num_frames=4, input_size=32)
    model.save(tmp_path / "m.keras")
    out = (
        ["--export_dir", str(tmp_path / "serving")]
        if module == "export.saved_model"
        else ["--output", str(tmp_path / "m.onnx")]
    )
    cache = tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, "-m", module, f"--model={tmp_path / 'm.keras'}"] + out + ([flag] if flag else []),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=ROOT, **{CACHE_ENV: str(cache)}),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("autotune:")]
    assert len(lines) == 1, proc.stdout
    if flag == "--noautotune":
        assert lines[0].startswith("autotune: off") and not cache.exists()
    else:
        assert lines[0].startswith(
            "autotune: 4 CoST layers (4 measured, 0 cached, 0 explicit) chosen inference "
        )
        with open(cache / CACHE_FILE) as f:
            assert len(json.load(f)["entries"]) == 4  # four stages, inference only
