"""ImageNet initialisation of video ResNets from a LOCAL keras.applications.ResNet50/101 weights file.

Copies by layer name (cost_tf/resnet.py mirrors keras.applications' names):
  1xkxk convs and CoST shared kernels   the 2D kernel unchanged (CoST coefficient weights keep their init);
  txkxk convs (c3d, i3d, 32-frame stem) the 2D kernel repeated t times along time, divided by t;
  r2plus1d `_2t_conv` (3x1x1)           identity in time (centre tap = identity over channels), so the
                                        block first computes its 2D twin (its fresh BN is ~identity);
  BatchNormalization, conv biases       copied;
  the classifier head                   never loaded.
Nothing is ever downloaded.
"""

import dataclasses
import os
import re
import warnings
import zipfile

import h5py
import keras
import numpy as np

from cost_tf.cost import CoST

_APPLICATIONS = {"r50": ("ResNet50", 6), "r101": ("ResNet101", 23)}  # depth: (constructor, res4 blocks)


@dataclasses.dataclass
class InflationReport:
    """What inflate_imagenet did, by layer name.

    loaded: layer -> how its weights were set from the file ("copied", "repeated x3 / 3", ...).
    identity: r2plus1d temporal convs set to the identity in time.
    left_at_init: layers with weights that kept their initialisation (head, fresh BNs).
    source: "<path> (ResNet50, include_top=...)".
    """

    loaded: dict
    identity: list
    left_at_init: list
    source: str

    def summary(self):
        return (
            f"{self.source}: {len(self.loaded)} layers loaded, {len(self.identity)} identity-initialised, "
            f"{len(self.left_at_init)} left at init ({', '.join(self.left_at_init[:6])}"
            f"{', ...' if len(self.left_at_init) > 6 else ''})"
        )


def model_depth(model):
    """ "r50" or "r101" from the number of res4 blocks of a cost_tf.resnet model; ValueError otherwise."""
    res4 = sum(bool(re.fullmatch(r"conv4_block\d+_out", layer.name)) for layer in model.layers)
    for depth, (_, blocks) in _APPLICATIONS.items():
        if res4 == blocks:
            return depth
    raise ValueError(
        f"inflate_imagenet needs a ResNet-50 or ResNet-101 video model (6 or 23 res4 blocks); "
        f"model {model.name!r} has {res4}. Received: model={model.name!r}"
    )


def _try_load(constructor, path):
    """keras.applications `constructor` with the file's weights, trying both include_top; (model, top) or
    (None, [error messages])."""
    errors = []
    for include_top in (False, True):
        net = getattr(keras.applications, constructor)(weights=None, include_top=include_top)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # per-container "skipping" chatter of the .weights.h5 loader
                net.load_weights(path)
            return net, include_top
        except Exception as error:  # noqa: BLE001  (keras raises ValueError/KeyError/OSError by format)
            errors.append(f"include_top={include_top}: {type(error).__name__}: {str(error)[:300]}")
    return None, errors


def load_resnet2d(weights_path, depth):
    """(keras.applications.ResNet50/101 holding a local weights file, whether the file has the top).

    weights_path: .weights.h5, or a full-model .h5 / .keras file. Raises FileNotFoundError, or ValueError
    naming the file if it is not a ResNet of this `depth` (and which depth it is, when it is the other one).
    """
    if depth not in _APPLICATIONS:
        raise ValueError(f"depth must be one of {tuple(_APPLICATIONS)}. Received: depth={depth!r}")
    if not isinstance(weights_path, (str, os.PathLike)) or not os.path.isfile(weights_path):
        raise FileNotFoundError(
            f"ImageNet weights file not found (nothing is downloaded). "
            f"Received: weights_path={weights_path!r}"
        )
    if not (h5py.is_hdf5(weights_path) or zipfile.is_zipfile(weights_path)):
        raise ValueError(f"{weights_path} is neither an HDF5 (.h5, .weights.h5) nor a .keras file.")
    constructor = _APPLICATIONS[depth][0]
    net, info = _try_load(constructor, weights_path)
    if net is not None:
        return net, info
    for other, (other_constructor, _) in _APPLICATIONS.items():
        if other != depth and _try_load(other_constructor, weights_path)[0] is not None:
            raise ValueError(
                f"Depth mismatch: {weights_path} holds keras.applications.{other_constructor} "
                f"weights but the model is a {constructor} ({depth}) video model."
            )
    raise ValueError(
        f"Could not read {weights_path} as keras.applications.{constructor} weights "
        f"(with or without top):\n  " + "\n  ".join(info)
    )


def _inflate_kernel(kernel2d, target_shape, name):
    """(kh, kw, ci, co) -> target (kt, kh, kw, ci, co): repeated kt times along time, divided by kt."""
    if len(target_shape) != 5 or tuple(target_shape[1:]) != kernel2d.shape:
        raise ValueError(
            f"Shape mismatch at layer {name!r}: model kernel {tuple(target_shape)} cannot take the "
            f"2D kernel {kernel2d.shape}."
        )
    kt = target_shape[0]
    return np.repeat(kernel2d[None], kt, axis=0) / kt


def _identity_in_time(layer):
    """Kernel of a t x 1 x 1 conv C -> C whose centre tap is the identity over channels, others 0."""
    kernel = np.zeros(layer.kernel.shape, "float32")
    if kernel.shape[-2] != kernel.shape[-1]:
        raise ValueError(
            f"Layer {layer.name!r} maps {kernel.shape[-2]} -> {kernel.shape[-1]} channels; an "
            "identity init needs equal widths."
        )
    kernel[tuple(k // 2 for k in layer.kernel_size)] = np.eye(kernel.shape[-1], dtype="float32")
    return kernel


def _check(name, what, model_value, file_value):
    if tuple(model_value.shape) != tuple(file_value.shape):
        raise ValueError(
            f"Shape mismatch at layer {name!r} ({what}): model {tuple(model_value.shape)}, "
            f"file {tuple(file_value.shape)}."
        )
    return file_value


def inflate_imagenet(model, weights_path):
    """Initialises a cost_tf.resnet r50/r101 video model in place from a local 2D ResNet weights file.

    Args:
      model: a model from cost_tf.resnet.build_model with depth r50 or r101 (any block family, any
        num_frames / input_size / num_classes).
      weights_path: keras.applications.ResNet50 or ResNet101 weights: `.weights.h5` (save_weights) or a
        full-model `.h5` / `.keras` (model.save), with or without the top; the top is never loaded.
    Returns:
      InflationReport.
    Raises:
      FileNotFoundError if the file is missing; ValueError on a depth or shape mismatch.
    """
    depth = model_depth(model)
    net, include_top = load_resnet2d(weights_path, depth)
    source = {layer.name: layer for layer in net.layers if layer.weights and layer.name != "predictions"}
    # Check everything first, assign at the end: a mismatch leaves the model untouched.
    assignments, loaded, identity, left = [], {}, [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        src = source.pop(layer.name, None)
        if src is None or isinstance(layer, keras.layers.Dense):
            if isinstance(layer, keras.layers.Conv3D) and layer.name.endswith("_2t_conv"):
                assignments.append((layer.kernel, _identity_in_time(layer)))
                identity.append(layer.name)
            else:
                left.append(layer.name)
            continue
        src_weights = {v.name: np.asarray(v) for v in src.weights}
        if isinstance(layer, keras.layers.BatchNormalization):
            assignments += [(v, _check(layer.name, v.name, v, src_weights[v.name])) for v in layer.weights]
            loaded[layer.name] = "copied"
        elif isinstance(layer, (keras.layers.Conv3D, CoST)):
            if isinstance(layer, CoST):
                assignments.append(
                    (layer.kernel, _check(layer.name, "kernel", layer.kernel, src_weights["kernel"]))
                )
                loaded[layer.name] = "kernel copied, coefficient weights at init"
            else:
                assignments.append(
                    (layer.kernel, _inflate_kernel(src_weights["kernel"], layer.kernel.shape, layer.name))
                )
                kt = layer.kernel_size[0]
                loaded[layer.name] = "copied" if kt == 1 else f"repeated x{kt} / {kt}"
            if layer.use_bias != ("bias" in src_weights):
                raise ValueError(
                    f"Layer {layer.name!r}: use_bias={layer.use_bias} but the file's layer "
                    f"{'has' if 'bias' in src_weights else 'has no'} bias."
                )
            if layer.use_bias:
                assignments.append((layer.bias, _check(layer.name, "bias", layer.bias, src_weights["bias"])))
        else:
            raise ValueError(f"Layer {layer.name!r} ({type(layer).__name__}) has no inflation rule.")
    if source:
        raise ValueError(
            f"{weights_path}: {len(source)} layers of the 2D network have no counterpart in model "
            f"{model.name!r}: {sorted(source)[:8]}"
        )
    for variable, value in assignments:
        variable.assign(value)
    source_name = f"{os.fspath(weights_path)} ({_APPLICATIONS[depth][0]}, include_top={include_top})"
    return InflationReport(loaded, identity, left, source_name)
