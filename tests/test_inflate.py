"""Tests for cost_tf/inflate.py: an inflated video ResNet computes its 2D twin where the spec says it must."""

import functools

import keras
import numpy as np
import pytest

from cost_tf.inflate import inflate_imagenet, load_resnet2d
from cost_tf.resnet import build_model

T, SIZE = 6, 64


def relative_error(actual, expected):
    return float(np.max(np.abs(np.asarray(actual) - np.asarray(expected))) / np.max(np.abs(expected)))


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
    """A random keras.applications.ResNet50 (non-trivial BN statistics and conv biases) and its weights file."""
    rng = np.random.default_rng(0)
    net = keras.applications.ResNet50(weights=None, include_top=False, pooling="avg")
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, n),
                    rng.normal(0, 0.1, n),
                    rng.normal(0, 0.1, n),
                    rng.uniform(0.5, 1.5, n),
                ]
            )
        elif isinstance(layer, keras.layers.Conv2D):
            layer.bias.assign(rng.normal(0, 0.1, layer.bias.shape))
    path = str(tmp_path_factory.mktemp("weights") / "resnet50_notop.weights.h5")
    net.save_weights(path)
    return net, path


@pytest.fixture(scope="module", autouse=True)
def _free_models():
    """The cached models hold ~2 GB (r101); release them when this module is done."""
    yield
    video.cache_clear()


@functools.cache
def video(arch, num_classes=None):
    return build_model(arch, num_classes=num_classes, num_frames=T, input_size=SIZE)


def clip(static, seed=1):
    rng = np.random.default_rng(seed)
    if static:
        image = rng.normal(size=(1, SIZE, SIZE, 3)).astype("float32")
        return image, np.repeat(image[:, None], T, axis=1)
    frames = rng.normal(size=(T, SIZE, SIZE, 3)).astype("float32")
    return frames, frames[None]


def features(model, layer_name, x):
    return keras.Model(model.input, model.get_layer(layer_name).output)(x)


@pytest.mark.parametrize("kind", ["weights.h5", "full_top.h5"])
def test_c2d_on_a_static_clip_equals_the_2d_network(resnet50, tmp_path, kind):
    net, path = resnet50
    if kind == "full_top.h5":  # model.save() of the same network with its 1000-way top
        full = keras.applications.ResNet50(weights=None, include_top=True)
        for layer in net.layers:
            if layer.weights:
                full.get_layer(layer.name).set_weights(layer.get_weights())
        path = str(tmp_path / "resnet50_top.h5")
        full.save(path)
    model = video("c2d_r50")
    report = inflate_imagenet(model, path)
    assert report.source.endswith(f"include_top={kind == 'full_top.h5'})")
    assert len(report.loaded) == 106 and not report.identity and not report.left_at_init
    image, x = clip(static=True)
    expected = np.asarray(net(image))
    assert relative_error(model(x), expected) < 1e-4


@pytest.mark.parametrize(
    "block, temporal_layer", [("c3d", "conv2_block2_2_conv"), ("i3d", "conv2_block2_1_conv")]
)
def test_c3d_i3d_on_a_static_clip_equal_2d_inside(resnet50, block, temporal_layer):
    net, path = resnet50
    model = video(f"{block}_r50")
    report = inflate_imagenet(model, path)
    assert report.loaded[temporal_layer] == "repeated x3 / 3"
    assert report.loaded["conv2_block1_1_conv"] == "copied"
    np.testing.assert_allclose(
        np.asarray(model.get_layer(temporal_layer).kernel[0]),
        np.asarray(net.get_layer(temporal_layer).kernel) / 3,
        rtol=1e-6,
    )
    image, x = clip(static=True)
    name = "conv3_block1_out"  # after 2 temporal convs: frames 2 .. T-3 see no zero padding
    got, expected = np.asarray(features(model, name, x))[0], np.asarray(features(net, name, image))[0]
    for t in range(2, T - 2):
        assert relative_error(got[t], expected) < 1e-4, t
    assert relative_error(got[0], expected) > 1e-3  # the border does see the zero padding


def test_cost_kernels_copied_and_hw_view_equals_the_2d_conv(resnet50):
    net, path = resnet50
    name = "conv3_block1_2_conv"  # an inflated block
    model = video("cost_a_r50")
    report = inflate_imagenet(model, path)
    assert report.loaded[name] == "kernel copied, coefficient weights at init"
    layer, layer2d = model.get_layer(name), net.get_layer(name)
    # Coefficient logits keep the code's init (0.7, -0.7, -0.7).
    np.testing.assert_allclose(np.asarray(layer.alpha), np.array([[0.7], [-0.7], [-0.7]]) * np.ones((3, 128)))
    np.testing.assert_array_equal(np.asarray(layer.kernel), np.asarray(layer2d.kernel))
    np.testing.assert_array_equal(np.asarray(layer.bias), np.asarray(layer2d.bias))
    # Put all weight on the H-W view: the layer is then the 2D conv, frame by frame.
    layer.alpha.assign(np.array([[30.0], [-30.0], [-30.0]]) * np.ones((3, 128)))
    frames = np.random.default_rng(2).normal(size=(T, 8, 8, 128)).astype("float32")
    assert relative_error(layer(frames[None])[0], layer2d(frames)) < 1e-5

    # CoST(b): view weights keep their init; the head (here as wide as the ImageNet top) is never loaded.
    model_b = video("cost_b_r50", num_classes=1000)
    layer_b = model_b.get_layer(name)
    view_dense, logits = np.asarray(layer_b.view_dense), np.asarray(model_b.get_layer("logits").kernel)
    report = inflate_imagenet(model_b, path)
    assert report.left_at_init == ["logits"] and "logits" not in report.loaded
    np.testing.assert_array_equal(np.asarray(layer_b.kernel), np.asarray(layer2d.kernel))
    np.testing.assert_array_equal(np.asarray(layer_b.view_dense), view_dense)
    np.testing.assert_array_equal(np.asarray(model_b.get_layer("logits").kernel), logits)


def test_r2plus1d_equals_its_2d_twin_at_init(resnet50):
    net, path = resnet50
    model = video("r2plus1d_r50")
    report = inflate_imagenet(model, path)
    inflated = [
        "conv2_block2",
        "conv3_block1",
        "conv3_block3",
        "conv4_block1",
        "conv4_block3",
        "conv4_block5",
        "conv5_block1",
        "conv5_block3",
    ]
    assert report.identity == [b + "_2t_conv" for b in inflated]
    assert sorted(report.left_at_init) == sorted(b + "_2t_bn" for b in inflated)
    kernel = np.asarray(model.get_layer("conv2_block2_2t_conv").kernel)
    np.testing.assert_array_equal(kernel[1, 0, 0], np.eye(64))
    assert not kernel[0].any() and not kernel[2].any()
    # A moving clip: with the identity in time every frame goes through the 2D network on its own.
    frames, x = clip(static=False)
    got, expected = features(model, "conv2_block2_out", x)[0], features(net, "conv2_block2_out", frames)
    assert relative_error(got, expected) < 1e-4
    assert relative_error(model(x)[0], np.mean(np.asarray(net(frames)), axis=0)) < 1e-4


def test_depth_mismatch_is_a_clear_error(resnet50, tmp_path):
    # r101 weights into an r50 model.
    path = str(tmp_path / "resnet101_notop.weights.h5")
    keras.applications.ResNet101(weights=None, include_top=False).save_weights(path)
    model = video("c2d_r50")
    with pytest.raises(
        ValueError, match=r"Depth mismatch: .*resnet101_notop.weights.h5 holds .*ResNet101.*ResNet50"
    ):
        inflate_imagenet(model, path)
    with pytest.raises(ValueError, match="depth must be one of"):
        load_resnet2d(resnet50[1], "tiny")


def test_bad_inputs(resnet50, tmp_path):
    _, path = resnet50
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        inflate_imagenet(video("c2d_r50"), str(tmp_path / "missing.weights.h5"))
    garbage = tmp_path / "garbage.weights.h5"
    garbage.write_bytes(b"not weights")
    with pytest.raises(ValueError, match="garbage.weights.h5 is neither an HDF5"):
        inflate_imagenet(video("c2d_r50"), str(garbage))
    with pytest.raises(ValueError, match="ResNet-50 or ResNet-101.*Received: model='cost_a_tiny'"):
        inflate_imagenet(build_model("cost_a_tiny", input_size=32), path)
    # A model with ResNet-50 names but a 3x3 stem: the error names the layer and nothing is assigned.
    inputs = keras.Input((None, None, None, 3))
    x = keras.layers.Conv3D(64, (1, 3, 3), name="conv1_conv")(inputs)
    for i in range(6):
        x = keras.layers.Activation("relu", name=f"conv4_block{i + 1}_out")(x)
    odd = keras.Model(inputs, x, name="odd")
    kernel = np.asarray(odd.get_layer("conv1_conv").kernel)
    with pytest.raises(
        ValueError, match=r"Shape mismatch at layer 'conv1_conv'.*\(1, 3, 3, 3, 64\).*\(7, 7, 3, 64\)"
    ):
        inflate_imagenet(odd, path)
    np.testing.assert_array_equal(np.asarray(odd.get_layer("conv1_conv").kernel), kernel)
