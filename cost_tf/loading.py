"""The one model loader of every main and export: a `.keras` file saved by cost_tf, with clear errors.

`load_model(path)` registers every cost_tf layer, optimizer and schedule class first (a `.keras` file
saved by `cost_tf.train` names `CoupledWeightDecaySGD` and the schedule, which Keras can only deserialise once
they are registered) and loads without compiling. `resize_model` rebuilds a cost_tf architecture at another
clip length / crop size with the same weights.
"""

import json
import os

import keras
import tensorflow as tf

from cost_tf import cost as _cost  # noqa: F401  (registers CoST)
from cost_tf import optim as _optim  # noqa: F401  (registers the optimizer and the schedules)
from cost_tf import resnet


def load_model(path, num_frames=None, input_size=None):
    """Loads a `.keras` model (uncompiled), rebuilt at (num_frames, input_size) when they differ.

    Raises:
      FileNotFoundError: no file at `path`.
      ValueError naming `path`: not a .keras file, not loadable, or not one clip input -> one logits output.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--model: no such file: {path}")
    if not path.endswith(".keras"):
        raise ValueError(f"--model must be a .keras file saved by model.save(). Received: {path}")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as e:  # zip, h5 and deserialisation errors all mean "not a usable .keras file"
        raise ValueError(f"--model: cannot load the Keras model {path}: {type(e).__name__}: {e}") from e
    if not isinstance(model, keras.Model) or len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"{path}: expected a model with one clip input and one logits output.")
    return resize_model(model, num_frames, input_size)


def resize_model(model, num_frames=None, input_size=None):
    """`model` itself, or the same arch rebuilt at (num_frames, input_size) with its weights."""
    _, frames, height, _, _ = model.input_shape
    if (num_frames in (None, frames)) and (input_size in (None, height)):
        return model
    if model.name not in resnet.ARCHS:
        raise ValueError(f"Cannot rebuild model {model.name!r} at another input size: not one of the archs.")
    rebuilt = resnet.build_model(
        model.name,
        num_classes=model.output_shape[-1],
        num_frames=num_frames or frames,
        input_size=input_size or height,
    )
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def training_config(model_path):
    """The config.json that cost_tf.train wrote beside `model_path` ({} when there is none)."""
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), "config.json")
    if not tf.io.gfile.exists(path):
        return {}
    with tf.io.gfile.GFile(path) as f:
        return json.load(f)
