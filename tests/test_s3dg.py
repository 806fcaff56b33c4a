"""cost_tf/s3dg.py: S3D-G shapes, separability, gating and a whole Inception block against NumPy, parameter and
multiply-add arithmetic from the widths table, serialisation, training and export parity."""

import math
import os

import keras
import numpy as np
import pytest

from cost_tf import train
from cost_tf.resnet import build_model, count_macs
from cost_tf.s3dg import TemporalIdentity, build_s3dg
from export import onnx as onnx_export
from export import parity, saved_model

# Branch widths (1x1; 3x3 reduce, 3x3; 3x3 reduce, 3x3; pool projection), written out from the issue / the
# reference independently of cost_tf.s3dg, with the (T', H') of each block's input at 64 x 224^2.
TABLE = (
    ("Mixed_3b", (64, 96, 128, 16, 32, 32), (32, 28)),
    ("Mixed_3c", (128, 128, 192, 32, 96, 64), (32, 28)),
    ("Mixed_4b", (192, 96, 208, 16, 48, 64), (16, 14)),
    ("Mixed_4c", (160, 112, 224, 24, 64, 64), (16, 14)),
    ("Mixed_4d", (128, 128, 256, 24, 64, 64), (16, 14)),
    ("Mixed_4e", (112, 144, 288, 32, 64, 64), (16, 14)),
    ("Mixed_4f", (256, 160, 320, 32, 128, 128), (16, 14)),
    ("Mixed_5b", (256, 160, 320, 32, 128, 128), (8, 7)),
    ("Mixed_5c", (384, 192, 384, 48, 128, 128), (8, 7)),
)
BRANCH_OUTPUTS = (
    "Branch_0_Conv2d_0a_1x1",
    "Branch_1_Conv2d_0b_3x3",
    "Branch_2_Conv2d_0b_3x3",
    "Branch_3_Conv2d_0b_1x1",
)


def _randomize(model, seed):
    rng = np.random.default_rng(seed)
    for w in model.weights:
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 2.0, w.shape).astype("float32"))
        elif "moving_mean" in w.path or "beta" in w.path or "bias" in w.path:
            w.assign(rng.normal(0, 0.2, w.shape).astype("float32"))
        else:  # kernels: fan-in scaled so activations stay O(1); gates 5x wider so the sigmoid varies
            fan_in = int(np.prod(w.shape[:-1])) if len(w.shape) > 1 else 1
            scale = (5.0 if "transformer_W" in w.path else 1.0) / math.sqrt(fan_in)
            w.assign(rng.normal(0, scale, w.shape).astype("float32"))
    return model


@pytest.fixture(scope="module")
def tiny():
    """s3dg_tiny (depth multiplier 0.25) on 8 x 64^2, random weights and BatchNorm statistics."""
    return _randomize(build_model("s3dg_tiny", num_classes=6, num_frames=8, input_size=64), seed=0)


# ---- structure -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frames", [8, 16, 32, 64])
def test_shapes(frames):
    model = build_model("s3dg", num_classes=400, num_frames=frames, input_size=32)
    assert model.name == "s3dg" and tuple(model.input.shape) == (None, frames, 32, 32, 3)
    t2, t4, t8 = frames // 2, frames // 4, frames // 8  # stem, MaxPool_4a and MaxPool_5a halve T
    expected = {
        "Conv2d_1a_7x7_relu": (t2, 16, 16, 64),
        "MaxPool_2a_3x3": (t2, 8, 8, 64),
        "Conv2d_2b_1x1_relu": (t2, 8, 8, 64),
        "Conv2d_2c_3x3_self_gating": (t2, 8, 8, 192),
        "MaxPool_3a_3x3": (t2, 4, 4, 192),
        "Mixed_3b": (t2, 4, 4, 256),
        "Mixed_3c": (t2, 4, 4, 480),
        "MaxPool_4a_3x3": (t4, 2, 2, 480),
        "Mixed_4b": (t4, 2, 2, 512),
        "Mixed_4c": (t4, 2, 2, 512),
        "Mixed_4d": (t4, 2, 2, 512),
        "Mixed_4e": (t4, 2, 2, 528),
        "Mixed_4f": (t4, 2, 2, 832),
        "MaxPool_5a_2x2": (t8, 1, 1, 832),
        "Mixed_5b": (t8, 1, 1, 832),
        "Mixed_5c": (t8, 1, 1, 1024),
        "avg_pool": (1024,),
        "logits": (400,),
    }
    for name, shape in expected.items():
        assert tuple(model.get_layer(name).output.shape) == (None,) + shape, name
    # Every Mixed block's output is the concatenation of its four branches, widths from the table.
    for name, widths, _ in TABLE:
        assert model.get_layer(name).output.shape[-1] == widths[0] + widths[2] + widths[4] + widths[5]
    if frames == 8:  # one real forward of the full network (small input: cheap)
        logits = np.asarray(model(np.random.default_rng(1).normal(size=(2, 8, 32, 32, 3)).astype("float32")))
        assert logits.shape == (2, 400) and np.all(np.isfinite(logits))


def test_separable_after_the_stem_and_the_reference_layers():
    model = build_model("s3dg", num_frames=16, input_size=32)
    convs = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv3D)]
    stem = model.get_layer("Conv2d_1a_7x7")
    assert convs[0] is stem and stem.kernel_size == (3, 7, 7) and stem.strides == (2, 2, 2)
    assert build_s3dg(num_frames=16, input_size=32, stem_temporal_kernel=7).get_layer(
        "Conv2d_1a_7x7"
    ).kernel_size == (7, 7, 7)
    for layer in convs[1:]:  # no conv after the stem extends over both time and space
        assert not (layer.kernel_size[0] > 1 and max(layer.kernel_size[1:]) > 1), (
            layer.name,
            layer.kernel_size,
        )
    temporal = [layer for layer in convs if layer.kernel_size == (3, 1, 1)]
    spatial = [layer for layer in convs if layer.kernel_size == (1, 3, 3)]
    assert len(temporal) == len(spatial) == 1 + 2 * len(TABLE)  # Conv2d_2c and two branches per block
    for layer in temporal:  # 1x3x3 (no bias) -> BN -> ReLU -> 3x1x1 (bias) -> ReLU, no BN after it
        assert layer.name.endswith("_temporal") and layer.use_bias
        base = layer.name[: -len("_temporal")]
        assert not model.get_layer(base).use_bias and model.get_layer(base).kernel_size == (1, 3, 3)
        assert isinstance(model.get_layer(base + "_BatchNorm"), keras.layers.BatchNormalization)
        assert isinstance(layer.kernel_initializer, TemporalIdentity)
    names = {layer.name for layer in model.layers}
    assert not any(n.endswith("_temporal_BatchNorm") for n in names)
    # BatchNorm as slim's under s3dg_arg_scope: centre only, decay 0.999, epsilon 1e-3.
    bns = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(not b.scale and b.center and b.momentum == 0.999 and b.epsilon == 1e-3 for b in bns)
    pools = {
        n: model.get_layer(n)
        for n in ("MaxPool_2a_3x3", "MaxPool_3a_3x3", "MaxPool_4a_3x3", "MaxPool_5a_2x2")
    }
    assert [(p.pool_size, p.strides) for p in pools.values()] == [
        ((1, 3, 3), (1, 2, 2)),
        ((1, 3, 3), (1, 2, 2)),
        ((3, 3, 3), (2, 2, 2)),
        ((2, 2, 2), (2, 2, 2)),
    ]
    assert model.get_layer("Mixed_4c_Branch_3_MaxPool_0a_3x3").pool_size == (3, 3, 3)
    # Gating on Conv2d_2c and on every branch output: a C x C 1x1x1 conv without bias, then a sigmoid.
    gated = ["Conv2d_2c_3x3"] + [f"{name}_{b}" for name, _, _ in TABLE for b in BRANCH_OUTPUTS]
    assert sorted(n for n in names if n.endswith("_self_gating")) == sorted(g + "_self_gating" for g in gated)
    for g in gated:
        w = model.get_layer(g + "_self_gating_transformer_W")
        assert w.kernel_size == (1, 1, 1) and not w.use_bias and tuple(w.kernel.shape)[-2] == w.filters


def test_initialisation():
    model = build_model("s3dg_tiny", num_frames=8, input_size=32)
    temporal = model.get_layer("Mixed_4b_Branch_1_Conv2d_0b_3x3_temporal")
    kernel = np.asarray(temporal.kernel)
    eye = np.zeros_like(kernel)
    eye[1, 0, 0] = np.eye(kernel.shape[-1])
    np.testing.assert_array_equal(kernel, eye)  # the identity in time
    assert not np.any(np.asarray(temporal.bias))
    big = np.asarray(model.get_layer("Mixed_5c_Branch_1_Conv2d_0b_3x3").kernel)
    assert (
        big.size > 30000 and np.abs(big).max() <= 0.02 and 0.008 < big.std() < 0.0095
    )  # N(0, .01) cut at 2 std
    with pytest.raises(ValueError, match=r"Received: shape=\(3, 1, 1, 4, 5\)"):
        TemporalIdentity()((3, 1, 1, 4, 5))


# ---- numerics ------------------------------------------------------------------------------------------------


def _np_conv(x, kernel, bias=None):
    """Stride-1 TF 'SAME' 3D convolution (odd kernel) by explicit tap sums, float64."""
    kt, kh, kw = kernel.shape[:3]
    xp = np.pad(x, [(0, 0), (kt // 2,) * 2, (kh // 2,) * 2, (kw // 2,) * 2, (0, 0)])
    t, h, w = x.shape[1:4]
    out = np.zeros(x.shape[:4] + (kernel.shape[-1],))
    for a in range(kt):
        for b in range(kh):
            for c in range(kw):
                out += xp[:, a : a + t, b : b + h, c : c + w] @ kernel[a, b, c]
    return out if bias is None else out + bias


def _np_max_pool_same(x):
    """3x3x3 stride-1 'SAME' max-pool (padding never wins)."""
    xp = np.pad(x, [(0, 0), (1, 1), (1, 1), (1, 1), (0, 0)], constant_values=-np.inf)
    t, h, w = x.shape[1:4]
    windows = [xp[:, a : a + t, b : b + h, c : c + w] for a in range(3) for b in range(3) for c in range(3)]
    return np.max(windows, axis=0)


def _weights(model, name):
    return [np.asarray(v, np.float64) for v in model.get_layer(name).weights]


def _np_unit(model, x, name):
    (kernel,) = _weights(model, name)
    beta, mean, var = _weights(model, name + "_BatchNorm")
    return np.maximum((_np_conv(x, kernel) - mean) / np.sqrt(var + 1e-3) + beta, 0.0)


def _np_gate(model, x, name):
    (w,) = _weights(model, name + "_self_gating_transformer_W")
    gate = 1.0 / (1.0 + np.exp(-(x.mean(axis=(1, 2, 3)) @ w[0, 0, 0])))  # (N, C)
    return x * gate[:, None, None, None, :], gate


def test_gating_and_an_inception_block_match_numpy(tiny):
    """Mixed_4b (inference mode) from its input by an independent NumPy forward: every branch, gate, concat."""
    probe = keras.Model(
        tiny.input,
        [
            tiny.get_layer("MaxPool_4a_3x3").output,
            tiny.get_layer("Mixed_4b").output,
            tiny.get_layer("Mixed_4b_Branch_1_Conv2d_0b_3x3_temporal_relu").output,
            tiny.get_layer("Mixed_4b_Branch_1_Conv2d_0b_3x3_self_gating").output,
        ],
    )
    clip = np.random.default_rng(2).normal(size=(2, 8, 64, 64, 3)).astype("float32")
    x, block, ungated, gated = (np.asarray(t, np.float64) for t in probe(clip, training=False))
    assert x.shape == (2, 2, 4, 4, 120) and block.shape == (2, 2, 4, 4, 132)
    # The gate alone, on the layer's own input.
    ref_gated, gate = _np_gate(tiny, ungated, "Mixed_4b_Branch_1_Conv2d_0b_3x3")
    np.testing.assert_allclose(gated, ref_gated, rtol=1e-5, atol=1e-5 * np.abs(ref_gated).max())
    assert 0.05 < gate.min() and gate.max() < 0.95 and gate.std() > 0.05  # a real, varied gate
    # The whole block.
    name = "Mixed_4b"
    branches = []
    b0 = _np_unit(tiny, x, f"{name}_Branch_0_Conv2d_0a_1x1")
    branches.append(_np_gate(tiny, b0, f"{name}_Branch_0_Conv2d_0a_1x1")[0])
    for b in (1, 2):
        y = _np_unit(tiny, x, f"{name}_Branch_{b}_Conv2d_0a_1x1")
        y = _np_unit(tiny, y, f"{name}_Branch_{b}_Conv2d_0b_3x3")
        kernel, bias = _weights(tiny, f"{name}_Branch_{b}_Conv2d_0b_3x3_temporal")
        assert kernel.shape[:3] == (3, 1, 1)
        y = np.maximum(_np_conv(y, kernel, bias), 0.0)
        branches.append(_np_gate(tiny, y, f"{name}_Branch_{b}_Conv2d_0b_3x3")[0])
    b3 = _np_unit(tiny, _np_max_pool_same(x), f"{name}_Branch_3_Conv2d_0b_1x1")
    branches.append(_np_gate(tiny, b3, f"{name}_Branch_3_Conv2d_0b_1x1")[0])
    ref = np.concatenate(branches, axis=-1)
    assert ref.shape == block.shape
    np.testing.assert_allclose(block, ref, rtol=1e-4, atol=1e-5 * np.abs(ref).max())


# ---- size and cost -------------------------------------------------------------------------------------------


def _expected_params(num_classes, k=3, multiplier=1.0, min_depth=16):
    """Parameters from the widths table: conv kernels, BatchNorm (beta + moving mean/variance: 3 per channel),
    temporal kernels + biases, C x C gates, the classifier."""

    def d(w):
        return max(int(w * multiplier), min_depth)

    def unit(cin, cout, taps=1):
        return taps * cin * cout + 3 * cout

    def separable(cin, cout):
        return unit(cin, cout, 9) + 3 * cout * cout + cout

    total = unit(3, d(64), k * 49) + unit(d(64), d(64)) + separable(d(64), d(192)) + d(192) ** 2
    cin = d(192)
    for _, widths, _ in TABLE:
        a, b1, b2, c1, c2, p = (d(w) for w in widths)
        total += unit(cin, a) + a * a + unit(cin, b1) + separable(b1, b2) + b2 * b2
        total += unit(cin, c1) + separable(c1, c2) + c2 * c2 + unit(cin, p) + p * p
        cin = a + b2 + c2 + p
    return total + (cin * num_classes + num_classes if num_classes else 0), cin


def _expected_macs(num_classes, k):
    """Multiply-adds at 64 x 224^2 from the table: output elements x taps x input channels per conv."""
    macs = 32 * 112 * 112 * 64 * k * 49 * 3  # stem: stride 2 on T, H, W
    positions = 32 * 56 * 56
    macs += positions * 64 * 64 + positions * 192 * 9 * 64 + positions * 192 * 3 * 192 + 192 * 192
    cin = 192
    for _, (a, b1, b2, c1, c2, p), (t, h) in TABLE:
        n = t * h * h
        macs += n * cin * (a + b1 + c1 + p)  # the four 1x1 convs
        macs += n * (b2 * 9 * b1 + b2 * 3 * b2) + n * (c2 * 9 * c1 + c2 * 3 * c2)  # separable 1x3x3 + 3x1x1
        macs += a * a + b2 * b2 + c2 * c2 + p * p  # gates: once per clip
        cin = a + b2 + c2 + p
    return macs + cin * num_classes


@pytest.mark.parametrize("k", [3, 7])
def test_parameters_and_macs_at_64x224(k):
    model = build_s3dg(
        num_classes=400, num_frames=64, input_size=224, stem_temporal_kernel=k
    )  # built, never run
    params, features = _expected_params(400, k=k)
    assert features == 1024 and model.count_params() == params
    assert count_macs(model) == _expected_macs(400, k)
    # The figures in docs/MODELS.md.
    assert (model.count_params(), count_macs(model)) == {
        3: (9533408, 64182352640),
        7: (9571040, 79288138496),
    }[k]


def test_tiny_parameters_and_features():
    model = build_model("s3dg_tiny", num_classes=8, num_frames=8, input_size=32)
    params, features = _expected_params(8, multiplier=0.25)
    assert model.name == "s3dg_tiny" and model.count_params() == params and features == 256
    assert tuple(build_model("s3dg_tiny", num_classes=None, num_frames=8, input_size=32).output.shape) == (
        None,
        256,
    )


def test_head_and_defaults():
    model = build_model("s3dg_tiny", num_classes=5, num_frames=8, input_size=32)
    assert model.get_layer("dropout").rate == 0.2  # the reference's keep probability 0.8
    assert (
        build_model("s3dg_tiny", num_classes=5, num_frames=8, input_size=32, dropout=0.5)
        .get_layer("dropout")
        .rate
        == 0.5
    )
    logits = model.get_layer("logits")
    assert logits.units == 5 and logits.dtype_policy.name == "float32" and logits.use_bias
    assert isinstance(model.get_layer("avg_pool"), keras.layers.GlobalAveragePooling3D)


def test_unknown_batch_frames_and_size():
    model = build_model("s3dg_tiny", num_classes=7, num_frames=None, input_size=None)
    assert tuple(model.input.shape) == (None, None, None, None, 3)
    rng = np.random.default_rng(3)
    for shape in ((1, 8, 32, 32, 3), (2, 5, 40, 48, 3)):
        assert tuple(model(rng.normal(size=shape).astype("float32")).shape) == (shape[0], 7)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"stem_temporal_kernel": 4}, "Received: stem_temporal_kernel=4"),
        ({"depth_multiplier": 0}, "Received: depth_multiplier=0"),
        ({"min_depth": 0}, "Received: min_depth=0"),
        ({"num_classes": 0}, "Received: num_classes=0"),
        ({"num_frames": 0}, "Received: num_frames=0"),
        ({"dropout": 1.0}, "Received: dropout=1.0"),
        ({"bn_momentum": 1.0}, "Received: bn_momentum=1.0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_s3dg(**kwargs)


# ---- serialisation, training, export ---------------------------------------------------------------------------


def test_keras_round_trip(tiny, tmp_path):
    x = np.random.default_rng(4).normal(size=(2, 8, 64, 64, 3)).astype("float32")
    path = str(tmp_path / "s3dg_tiny.keras")
    tiny.save(path)
    restored = keras.saving.load_model(path)
    assert [layer.name for layer in restored.layers] == [layer.name for layer in tiny.layers]
    assert isinstance(restored.get_layer("Conv2d_2c_3x3_temporal").kernel_initializer, TemporalIdentity)
    # s3dg_tiny's BatchNorm momentum (0.99, not slim's 0.999: its short training budget) survives the file.
    momenta = {b.momentum for b in restored.layers if isinstance(b, keras.layers.BatchNormalization)}
    assert momenta == {0.99}
    np.testing.assert_allclose(np.asarray(restored(x)), np.asarray(tiny(x)), rtol=1e-5, atol=1e-6)


def test_one_fit_step():
    model = build_model("s3dg_tiny", num_classes=5, num_frames=8, input_size=32, dropout=0.0)
    # Eager: stock Keras layers only, and tracing ~400 layers costs more CPU than the step (export traces it).
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,
    )
    rng = np.random.default_rng(5)
    x = rng.normal(size=(4, 8, 32, 32, 3)).astype("float32")
    y = np.arange(4) % 5
    before = {v.path: np.array(v) for v in model.trainable_variables}
    loss = model.fit(x, y, batch_size=4, epochs=1, verbose=0).history["loss"][0]
    assert math.isfinite(loss) and loss > 0
    after = {v.path: np.asarray(v) for v in model.trainable_variables}
    changed = [p for p in before if not np.array_equal(before[p], after[p])]
    assert sorted(changed) == sorted(before), set(before) - set(changed)  # stem, gates, temporal convs, head


def test_train_accepts_s3dg_and_refuses_imagenet_weights(tmp_path):
    config = train.TrainConfig(model_dir=str(tmp_path), dataset="synthetic", arch="s3dg_tiny")
    resolved = train.resolve_config(config)
    assert resolved.arch == "s3dg_tiny"
    # The architecture's own dropout unless --dropout is given: the reference's 0.2, ResNets' 0.5.
    assert train.compile_model(resolved, 8, 10).get_layer("dropout").rate == 0.2
    resnet = train.resolve_config(
        train.TrainConfig(model_dir=str(tmp_path), dataset="synthetic", arch="c2d_tiny")
    )
    assert train.compile_model(resnet, 8, 10).get_layer("dropout").rate == 0.5
    chosen = train.resolve_config(
        train.TrainConfig(model_dir=str(tmp_path), dataset="synthetic", arch="s3dg_tiny", dropout=0.3)
    )
    assert train.compile_model(chosen, 8, 10).get_layer("dropout").rate == 0.3
    weights = tmp_path / "resnet50.weights.h5"
    weights.write_bytes(b"not read")
    for arch in ("s3dg", "s3dg_tiny"):
        bad = train.TrainConfig(
            model_dir=str(tmp_path), dataset="synthetic", arch=arch, imagenet_weights=str(weights)
        )
        with pytest.raises(
            ValueError,
            match=r"--imagenet_weights: .*S3D-G.*no Inception-v1.*Received: "
            r"imagenet_weights=",
        ):
            train.resolve_config(bad)


def test_saved_model_and_onnx_parity(tiny, tmp_path):
    """Folded (BatchNorm into the convs) exports with any T: served logits and onnxruntime match Keras."""
    version, report = saved_model.export(
        tiny, tmp_path / "serving", num_frames=0
    )  # validated before publishing
    assert report["max_relative_error"] < 1e-4 and report["num_frames"] is None
    output = tmp_path / "s3dg.onnx"
    onnx_report = onnx_export.export(tiny, output)
    assert onnx_report["max_relative_error"] < 1e-4 and onnx_report["num_frames"] is None
    assert sorted(os.listdir(tmp_path)) == ["s3dg.onnx", "serving"]
    clips = np.random.default_rng(6).normal(size=(2, 16, 64, 64, 3)).astype("float32")  # another T
    any_t = parity.with_input_shape(tiny, num_frames=0)[0]
    expected = np.asarray(any_t(clips, training=False))
    served = saved_model.run_signature(version, "logits", {"clip": clips})["logits"]
    assert parity.max_relative_error(served, expected) < 1e-4
    assert parity.max_relative_error(onnx_export.run_onnxruntime(str(output), clips), expected) < 1e-4
    # Every BatchNorm folded into its conv in the deployed graph.
    deployed = parity.fold_for_inference(tiny)
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in deployed.layers)


def test_tflite_parity_with_builtin_ops_only(tiny, tmp_path):
    """TFLite (stock interpreter, reference builtin kernels): the 3D pools as 2D pools + MAXIMUM over frames,
    the separable convs and the gates (sigmoid of a MEAN) as builtins; outputs equal Keras's."""
    import tensorflow as tf

    from export import tflite

    output = tmp_path / "s3dg.tflite"
    report = tflite.export(tiny, output, isolate=False)
    assert os.listdir(tmp_path) == ["s3dg.tflite"] and report["max_relative_error"] < 1e-4
    ops_used = report["ops"][tflite.CLIP_KEY]
    assert not {op for op in ops_used if "3D" in op or "FLEX" in op.upper()}, ops_used
    assert ops_used["LOGISTIC"] == 37  # one sigmoid per gate
    interpreter = tf.lite.Interpreter(
        model_path=str(output), experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_REF
    )
    clip = np.random.default_rng(11).normal(size=(1, 8, 64, 64, 3)).astype("float32")
    served = interpreter.get_signature_runner(tflite.CLIP_KEY)(clip=clip)
    (logits,) = served.values()
    assert parity.max_relative_error(logits, np.asarray(tiny(clip, training=False))) < 1e-4
