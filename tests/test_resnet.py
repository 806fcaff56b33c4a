"""Tests for cost_tf/resnet.py: shapes, exact parameter/MAC arithmetic from the spec, keras.applications
mirroring, unknown dimensions, serialisation and one training step of every tiny arch."""

import functools
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from cost_tf import resnet
from cost_tf.cost import CoST
from cost_tf.resnet import BLOCKS, FramewiseConv3D, FramewiseMaxPooling3D, build_model, count_macs
from cost_tf.resnet import RESNET_ARCHS as ARCHS  # the ResNets; tests/test_s3dg.py has S3D-G

# The spec (shared/CoST.md section 2), written out independently of cost_tf.resnet.
SPEC = {
    "r50": ((0, 1, 0), (1, 0, 1, 0), (1, 0, 1, 0, 1, 0), (1, 0, 1)),
    "r101": ((0, 1, 0), (1, 0, 1, 0), (1, 0) * 11 + (1,), (0, 1, 0)),
}
WIDTHS = (64, 128, 256, 512)


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    """The cached models hold ~2 GB (r101); release them when this module is done."""
    yield
    cached.cache_clear()


@functools.cache
def cached(arch, num_classes=400, num_frames=4, input_size=32):
    return build_model(arch, num_classes=num_classes, num_frames=num_frames, input_size=input_size)


def inflated_blocks(depth):
    """(stage index, block index, width, input channels of the block) of every inflated block."""
    out, channels = [], 64
    for s, (pattern, width) in enumerate(zip(SPEC[depth], WIDTHS, strict=True)):
        for b, inflated in enumerate(pattern):
            if inflated:
                out.append((s, b, width, channels))
            channels = 4 * width
    return out


def test_archs_lists_every_block_and_depth():
    assert sorted(ARCHS) == sorted(f"{b}_{d}" for b in BLOCKS for d in ("r50", "r101", "tiny"))
    assert len(ARCHS) == 18
    # Every name build_model accepts: the ResNets and S3D-G.
    assert resnet.ARCHS == ARCHS + ("s3dg", "s3dg_tiny")
    assert resnet.parse_arch("s3dg") == ("s3dg", "full") and resnet.parse_arch("s3dg_tiny") == (
        "s3dg",
        "tiny",
    )


@pytest.mark.parametrize("arch", ARCHS)
def test_output_shapes(arch):
    model = cached(arch)
    depth = arch.rsplit("_", 1)[1]
    channels = 512 if depth == "tiny" else 2048
    assert model.layers[0].name == "clip"
    assert tuple(model.input.shape) == (None, 4, 32, 32, 3)
    # 32 -> conv1 16 -> pool1 8 -> conv3 4 -> conv4 2 -> conv5 1; no temporal stride anywhere.
    assert tuple(model.get_layer("conv2_block1_out").output.shape) == (None, 4, 8, 8, channels // 8)
    assert tuple(model.get_layer("conv5_block1_out").output.shape) == (None, 4, 1, 1, channels)
    assert tuple(model.output.shape) == (None, 400) and model.output.dtype == "float32"
    if depth == "tiny":  # real forwards only for the small ones (suite time budget)
        logits = model(np.random.default_rng(0).normal(size=(2, 4, 32, 32, 3)).astype("float32"))
        assert tuple(logits.shape) == (2, 400) and np.all(np.isfinite(np.asarray(logits)))


@pytest.mark.parametrize("depth", ["r50", "r101"])
def test_parameter_arithmetic(depth):
    params = {b: cached(f"{b}_{depth}").count_params() for b in BLOCKS}
    blocks = inflated_blocks(depth)
    assert len(blocks) == (8 if depth == "r50" else 16)
    widths = [w for _, _, w, _ in blocks]
    # CoST(a): + 3 coefficient logits per output channel.
    assert params["cost_a"] - params["c2d"] == 3 * sum(widths)
    # CoST(b): + a C x C view dense + a 3 x 3 view mix per layer.
    assert params["cost_b"] - params["c2d"] == sum(w * w for w in widths) + 9 * len(widths)
    # C3D: the 3x3 (w -> w) conv gets 3x the kernel weights.
    assert params["c3d"] - params["c2d"] == 2 * sum(9 * w * w for w in widths)
    # I3D: the first 1x1 conv (c_in -> w) of an inflated block becomes 3x1x1.
    assert params["i3d"] - params["c2d"] == 2 * sum(c_in * w for _, _, w, c_in in blocks)
    # R(2+1)D: + a 3x1x1 w -> w conv without bias and its BatchNorm (4 vectors).
    assert params["r2plus1d"] - params["c2d"] == sum(3 * w * w + 4 * w for w in widths)


def test_c2d_r50_mirrors_keras_applications_layer_for_layer():
    video = build_model("c2d_r50", num_classes=None, num_frames=2, input_size=64)
    image = keras.applications.ResNet50(
        weights=None, include_top=False, input_shape=(64, 64, 3), pooling="avg"
    )
    assert video.count_params() == image.count_params() == 23587712
    assert tuple(video.output.shape) == (None, 2048)
    names = [layer.name for layer in image.layers[1:]]
    assert [layer.name for layer in video.layers[1:]] == names
    for layer2d in image.layers[1:]:
        layer3d = video.get_layer(layer2d.name)
        # Same spatial output shape, frames kept, weights the 2D ones with a leading temporal axis of 1.
        if layer2d.name != "avg_pool":
            assert tuple(layer3d.output.shape) == (None, 2) + tuple(layer2d.output.shape[1:]), layer2d.name
        shapes3d = [tuple(w.shape) for w in layer3d.weights]
        shapes2d = [tuple(w.shape) for w in layer2d.weights]
        if isinstance(layer2d, keras.layers.Conv2D):
            assert shapes3d == [(1,) + shapes2d[0], shapes2d[1]], layer2d.name
            assert layer3d.strides[1:] == layer2d.strides and layer3d.strides[0] == 1
        else:
            assert shapes3d == shapes2d, layer2d.name
        if isinstance(layer2d, keras.layers.BatchNormalization):
            assert layer3d.epsilon == layer2d.epsilon == 1.001e-5


@pytest.mark.parametrize("block", ["cost_a", "cost_b", "c3d", "i3d", "r2plus1d"])
def test_inflated_layers_follow_the_spec_pattern(block):
    model = cached(f"{block}_r50")
    inflated = {f"conv{s + 2}_block{b + 1}" for s, b, _, _ in inflated_blocks("r50")}
    for s, pattern in enumerate(SPEC["r50"]):
        for b in range(len(pattern)):
            prefix = f"conv{s + 2}_block{b + 1}"
            conv1, conv2 = model.get_layer(prefix + "_1_conv"), model.get_layer(prefix + "_2_conv")
            is_inflated = prefix in inflated
            if block.startswith("cost"):
                assert isinstance(conv2, CoST) == is_inflated
                if is_inflated:
                    assert conv2.variant == block[-1] and conv2.use_bias and conv2.strides == (1, 1, 1)
            elif block == "c3d":
                assert conv2.kernel_size == ((3, 3, 3) if is_inflated else (1, 3, 3))
            elif block == "i3d":
                assert conv1.kernel_size == ((3, 1, 1) if is_inflated else (1, 1, 1))
                assert conv2.kernel_size == (1, 3, 3)
            else:
                names = {layer.name for layer in model.layers}
                assert (prefix + "_2t_conv" in names) == is_inflated
                if is_inflated:
                    assert model.get_layer(prefix + "_2t_conv").kernel_size == (3, 1, 1)
    conv_stem = model.get_layer("conv1_conv")
    assert conv_stem.kernel_size == (1, 7, 7) and conv_stem.strides == (1, 2, 2)
    assert model.get_layer("pool1_pool").pool_size == (1, 3, 3)


def test_c2d_has_no_temporal_kernel():
    for depth in ("r50", "tiny"):
        model = cached(f"c2d_{depth}")
        kernels = [layer.kernel_size for layer in model.layers if isinstance(layer, keras.layers.Conv3D)]
        assert kernels and all(k[0] == 1 for k in kernels)
        assert not any(isinstance(layer, CoST) for layer in model.layers)


def test_tiny_has_cost_in_every_block():
    model = cached("cost_b_tiny")
    costs = [layer.name for layer in model.layers if isinstance(layer, CoST)]
    assert costs == [f"conv{s}_block1_2_conv" for s in (2, 3, 4, 5)]
    assert [model.get_layer(n).filters for n in costs] == [16, 32, 64, 128]


def test_32_frame_stem_for_r101():
    model = build_model("cost_a_r101", num_frames=32, input_size=32)
    conv = model.get_layer("conv1_conv")
    assert conv.kernel_size == (5, 7, 7) and conv.strides == (2, 2, 2)
    assert tuple(conv.output.shape) == (None, 16, 16, 16, 64)
    pool = model.get_layer("pool1_pool")
    assert pool.pool_size == (2, 3, 3) and pool.strides == (2, 2, 2)
    assert tuple(pool.output.shape) == (None, 8, 8, 8, 64)
    assert tuple(model.output.shape) == (None, 400)
    # No temporal kernel for c2d in the 32-frame stem.
    c2d = build_model("c2d_r101", num_frames=32, input_size=32).get_layer("conv1_conv")
    assert c2d.kernel_size == (1, 7, 7) and c2d.strides == (2, 2, 2)


def test_unknown_batch_frames_and_size():
    model = build_model("cost_b_tiny", num_classes=7, num_frames=None, input_size=None)
    assert tuple(model.input.shape) == (None, None, None, None, 3)
    rng = np.random.default_rng(1)
    for shape in ((1, 4, 32, 32, 3), (3, 6, 48, 40, 3)):
        assert tuple(model(rng.normal(size=shape).astype("float32")).shape) == (shape[0], 7)
    features = build_model("c2d_tiny", num_classes=None, num_frames=None, input_size=None)
    assert tuple(features.output.shape) == (None, 512)
    assert tuple(features(rng.normal(size=(1, 3, 40, 40, 3)).astype("float32")).shape) == (1, 512)
    assert tuple(build_model("cost_a_r50", num_frames=None, input_size=None).output.shape) == (None, 400)


def test_head():
    model = build_model("cost_a_tiny", num_classes=9, dropout=0.3, input_size=32)
    dense = model.get_layer("logits")
    assert dense.units == 9 and dense.activation is keras.activations.linear
    assert dense.dtype_policy.name == "float32"
    assert model.get_layer("dropout").rate == 0.3
    assert isinstance(model.get_layer("avg_pool"), keras.layers.GlobalAveragePooling3D)
    kernel = np.asarray(cached("c2d_r50").get_layer("logits").kernel)
    assert abs(kernel.std() - 0.01) < 0.0005 and abs(kernel.mean()) < 0.0005


def test_logits_are_float32_under_mixed_precision():
    # mixed_bfloat16: TF has no CPU float16 kernel for MaxPool3D (mixed_float16 is for GPUs).
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model("cost_b_tiny", num_classes=5, num_frames=4, input_size=32)
        out = model(np.ones((1, 4, 32, 32, 3), "float32"))
        assert model.get_layer("conv2_block1_2_conv").compute_dtype == "bfloat16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert str(out.dtype) in ("float32", "<dtype: 'float32'>") and tuple(out.shape) == (1, 5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"arch": "cost_c_r50"}, "cost_a_r50.*Received: arch='cost_c_r50'"),
        ({"arch": "c2d_r18"}, "Valid names"),
        ({"arch": "c2d_tiny", "num_classes": 0}, "num_classes"),
        ({"arch": "c2d_tiny", "num_frames": 0}, "num_frames"),
        ({"arch": "c2d_tiny", "input_size": 16}, "input_size"),
        ({"arch": "c2d_tiny", "dropout": 1.0}, "dropout"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)


@pytest.mark.parametrize(
    "kernel, strides, padding, shape",
    [
        ((1, 7, 7), (1, 2, 2), "valid", (2, 3, 21, 19, 3)),
        ((1, 3, 3), 1, "same", (1, 4, 9, 9, 5)),
        ((1, 1, 1), (1, 2, 2), "same", (2, 2, 7, 8, 4)),
        ((3, 1, 1), 1, "same", (1, 5, 4, 4, 3)),
    ],
)
def test_framewise_conv_equals_conv3d(kernel, strides, padding, shape):
    rng = np.random.default_rng(2)
    x = rng.normal(size=shape).astype("float32")
    framewise = FramewiseConv3D(6, kernel, strides=strides, padding=padding)
    reference = keras.layers.Conv3D(6, kernel, strides=strides, padding=padding)
    framewise.build(shape)
    reference.build(shape)
    weights = [rng.normal(size=w.shape).astype("float32") for w in reference.weights]
    framewise.set_weights(weights)
    reference.set_weights(weights)
    np.testing.assert_allclose(np.asarray(framewise(x)), np.asarray(reference(x)), rtol=1e-5, atol=1e-5)
    # Unknown T/H/W inside a model.
    inputs = keras.Input((None, None, None, shape[-1]))
    model = keras.Model(inputs, FramewiseConv3D.from_config(framewise.get_config())(inputs))
    model.layers[-1].set_weights(weights)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(reference(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "pool, strides, padding, shape",
    [
        ((1, 3, 3), (1, 2, 2), "valid", (2, 3, 15, 14, 4)),
        ((1, 2, 2), None, "same", (1, 4, 9, 9, 3)),
        ((2, 3, 3), (2, 2, 2), "valid", (1, 6, 9, 9, 2)),
    ],
)
def test_framewise_max_pool_equals_max_pool3d(pool, strides, padding, shape):
    x = np.random.default_rng(3).normal(size=shape).astype("float32")
    framewise = FramewiseMaxPooling3D(pool, strides=strides, padding=padding)
    reference = keras.layers.MaxPooling3D(pool, strides=strides, padding=padding)
    np.testing.assert_array_equal(np.asarray(framewise(x)), np.asarray(reference(x)))
    # Gradients: the max-pool's gradient routes to the same (argmax) positions.
    xt = tf.constant(x)
    grads = []
    for layer in (framewise, reference):
        with tf.GradientTape() as tape:
            tape.watch(xt)
            y = layer(xt)
            loss = tf.reduce_sum(y * tf.reshape(tf.range(tf.size(y), dtype=tf.float32), tf.shape(y)))
        grads.append(np.asarray(tape.gradient(loss, xt)))
    np.testing.assert_array_equal(grads[0], grads[1])
    inputs = keras.Input((None, None, None, shape[-1]))
    model = keras.Model(inputs, FramewiseMaxPooling3D.from_config(framewise.get_config())(inputs))
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(reference(x)))


def test_count_macs_arithmetic():
    # The cached 4 x 32^2 models: stem 16^2, stage outputs 8, 4, 2, 1 (no temporal stride).
    models = {b: cached(f"{b}_r50") for b in ("c2d", "c3d", "cost_a", "cost_b")}
    macs = {b: count_macs(m) for b, m in models.items()}
    blocks = inflated_blocks("r50")
    elements = [4 * (8 // 2**s) ** 2 * w for s, _, w, _ in blocks]  # outputs of each inflated 3x3 conv
    extra_c3d = sum(e * 18 * w for e, (_, _, w, _) in zip(elements, blocks, strict=True))  # 27 - 9 taps, w in
    assert macs["c3d"] - macs["c2d"] == extra_c3d
    assert macs["cost_a"] == macs["c3d"]
    assert macs["cost_b"] - macs["cost_a"] == sum(3 * w * w + 9 * w for _, _, w, _ in blocks)
    sparse = count_macs(models["cost_a"], cost_taps=19)
    assert macs["c3d"] - sparse == sum(e * 8 * w for e, (_, _, w, _) in zip(elements, blocks, strict=True))
    # C2D = 4 frames of ResNet-50: stem, bottlenecks (1x1, 3x3, 1x1 and the projection), head.
    resnet50, channels = 16 * 16 * 64 * 7 * 7 * 3, 64
    for s, (pattern, w) in enumerate(zip(SPEC["r50"], WIDTHS, strict=True)):
        area = (8 // 2**s) ** 2
        for b in range(len(pattern)):
            resnet50 += area * (channels * w + 9 * w * w + 4 * w * w + (4 * w * channels if b == 0 else 0))
            channels = 4 * w
    assert macs["c2d"] == 4 * resnet50 + 2048 * 400
    # A hand-checkable model.
    inputs = keras.Input((4, 6, 6, 3))
    x = keras.layers.Conv3D(5, (3, 3, 3), padding="same")(inputs)
    x = keras.layers.Conv3D(2, 1, strides=(1, 2, 2))(x)
    x = keras.layers.Dense(7)(keras.layers.Flatten()(x))
    assert count_macs(keras.Model(inputs, x)) == 4 * 36 * 5 * 27 * 3 + 4 * 9 * 2 * 5 + 72 * 7
    with pytest.raises(ValueError, match="static"):
        count_macs(build_model("c2d_tiny", input_size=None))


def test_keras_round_trip(tmp_path):
    model = build_model("cost_b_tiny", num_classes=6, num_frames=4, input_size=32)
    x = np.random.default_rng(3).normal(size=(2, 4, 32, 32, 3)).astype("float32")
    expected = np.asarray(model(x))
    path = str(tmp_path / "cost_b_tiny.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert [layer.name for layer in restored.layers] == [layer.name for layer in model.layers]
    assert isinstance(restored.get_layer("conv2_block1_2_conv"), CoST)
    np.testing.assert_allclose(np.asarray(restored(x)), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block", BLOCKS)
def test_one_fit_step_of_every_tiny_arch(block):
    model = build_model(f"{block}_tiny", num_classes=5, num_frames=4, input_size=32, dropout=0.0)
    # Compiled (traced) train step for the CoST archs; the baselines are stock Keras layers, so eager
    # (4x less CPU than tracing) is enough for them. tests/test_train.py fits c2d_tiny compiled.
    model.compile(
        keras.optimizers.SGD(0.1),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=not block.startswith("cost"),
    )
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4, 4, 32, 32, 3)).astype("float32")
    y = np.arange(4) % 5
    before = {v.path: np.array(v) for v in model.trainable_variables}
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    loss = history.history["loss"][0]
    assert math.isfinite(loss) and loss > 0
    after = {v.path: np.asarray(v) for v in model.trainable_variables}
    changed = [p for p in before if not np.array_equal(before[p], after[p])]
    # Every trainable variable gets a gradient (the stem kernel and the head included).
    assert sorted(changed) == sorted(before), set(before) - set(changed)


# ---- style="pytorch": the authors' ResNet3d layout -------------------------------------------------------------


def ref_conv_symmetric(x, kernel, bias, stride):
    """1x3x3 conv, spatial stride `stride`, (1, 1) zero padding on H and W, by explicit tap sums (float64)."""
    x, kernel = x.astype(np.float64), kernel.astype(np.float64)[0]
    xp = np.pad(x, [(0, 0), (0, 0), (1, 1), (1, 1), (0, 0)])
    oh, ow = (x.shape[2] - 1) // stride + 1, (x.shape[3] - 1) // stride + 1
    out = np.zeros(x.shape[:2] + (oh, ow, kernel.shape[-1]))
    for i in range(3):
        for j in range(3):
            out += xp[:, :, i::stride, j::stride][:, :, :oh, :ow] @ kernel[i, j]
    return out + bias


@pytest.mark.parametrize("block", ["c2d", "cost_a", "cost_b", "r2plus1d"])
def test_pytorch_style_has_keras_style_parameters_and_shapes(block):
    keras_style = cached(f"{block}_r50")
    torch_style = build_model(f"{block}_r50", num_frames=4, input_size=32, style="pytorch")
    assert torch_style.name == f"{block}_r50_pytorch" and keras_style.name == f"{block}_r50"
    assert torch_style.count_params() == keras_style.count_params()
    names = {layer.name for layer in torch_style.layers}
    for layer in keras_style.layers:
        if layer.name.endswith("_out") or layer.name in ("pool1_pool", "avg_pool", "logits"):
            assert tuple(torch_style.get_layer(layer.name).output.shape) == tuple(layer.output.shape), (
                layer.name
            )
    for s in (3, 4, 5):  # the strided first block of a stage: stride moved from the 1x1 conv to the 3x3 one
        prefix = f"conv{s}_block1"
        conv1, conv2 = torch_style.get_layer(prefix + "_1_conv"), torch_style.get_layer(prefix + "_2_conv")
        assert conv1.strides == (1, 1, 1) and conv2.strides == (1, 2, 2)
        assert keras_style.get_layer(prefix + "_1_conv").strides == (1, 2, 2)
        assert keras_style.get_layer(prefix + "_2_conv").strides == (1, 1, 1)
        assert torch_style.get_layer(prefix + "_0_conv").strides == (1, 2, 2)
        if isinstance(conv2, CoST):
            assert conv2.padding == "symmetric"
        else:  # explicit (1, 1) padding, then 'valid'
            assert conv2.padding == "valid" and prefix + "_2_pad" in names
            assert torch_style.get_layer(prefix + "_2_pad").padding == ((0, 0), (1, 1), (1, 1))
    assert all(layer.padding == "symmetric" for layer in torch_style.layers if isinstance(layer, CoST))
    bns = [layer for layer in torch_style.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(layer.epsilon == 1e-5 for layer in bns)


def test_pytorch_style_strided_conv_pads_symmetrically():
    model = build_model("c2d_tiny", num_classes=3, num_frames=2, input_size=32, style="pytorch")
    rng = np.random.default_rng(5)
    for w in model.weights:
        w.assign(
            rng.normal(0, 0.5, w.shape).astype("float32")
            if "moving_variance" not in w.path
            else rng.uniform(0.5, 2.0, w.shape).astype("float32")
        )
    probe = keras.Model(
        model.input,
        [model.get_layer("conv3_block1_1_relu").output, model.get_layer("conv3_block1_2_conv").output],
    )
    x, y = (np.asarray(t) for t in probe(rng.normal(size=(2, 2, 32, 32, 3)).astype("float32")))
    assert x.shape[2:4] == (8, 8)  # an even size at stride 2: where TF 'SAME' pads (0, 1)
    conv = model.get_layer("conv3_block1_2_conv")
    kernel, bias = (np.asarray(v) for v in (conv.kernel, conv.bias))
    ref = ref_conv_symmetric(x, kernel, bias, 2)
    assert y.shape == ref.shape == (2, 2, 4, 4, 32)
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
    same = np.asarray(tf.nn.conv3d(x, kernel, strides=(1, 1, 2, 2, 1), padding="SAME")) + bias
    assert np.abs(same - ref).max() > 1e-2 * np.abs(ref).max()  # the keras-style padding is another grid


def test_pytorch_style_round_trip(tmp_path):
    model = build_model(
        "cost_b_tiny", num_classes=4, num_frames=4, input_size=32, dropout=0.0, style="pytorch"
    )
    x = np.random.default_rng(6).normal(size=(2, 4, 32, 32, 3)).astype("float32")
    path = str(tmp_path / "torch_style.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert restored.get_layer("conv3_block1_2_conv").padding == "symmetric"
    np.testing.assert_allclose(np.asarray(restored(x)), np.asarray(model(x)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"arch": "c2d_tiny", "style": "caffe"}, "Received: style='caffe'"),
        ({"arch": "s3dg_tiny", "style": "pytorch"}, "ResNet archs only.*Received: style='pytorch'"),
    ],
)
def test_bad_style(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build_model(**kwargs)
