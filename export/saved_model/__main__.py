"""Export a video model as a versioned TF Serving SavedModel: raw frames in, class probabilities out.

    python -m export.saved_model --model=runs/x/model.keras --export_dir=serving/cost [--version=N] \\
        [--nofold] [--classes=classes.txt] [--num_frames=8] [--crop_size=224]

writes serving/cost/{version}/ (saved_model.pb, variables/, assets/classes.txt). Signatures:

  serving_default  frames: uint8 (N, T, H, W, 3), any H and W. Eval preprocessing in the graph (short side
                   round(crop * 8 / 7), i.e. 256 for 224 -> centre crop -> ImageNet normalisation) ->
                   probabilities float32 (N, C), top_k_indices int32 (N, k), top_k_scores float32 (N, k),
                   top_k_classes string (N, k).
  logits           clip: float32 (N, T, crop, crop, 3), already preprocessed -> logits float32 (N, C).

The version folder is written as DIR/.tmp-{version}-{pid} (TF Serving only loads all-digit folder names),
checked against the Keras model, then renamed: a serving process watching DIR never sees a partial model.
"""

from absl import app, flags, logging

from cost_tf import loading
from cost_tf.autotune import AUTOTUNE_HELP, autotune_for_main, main_input_shape
from export import saved_model
from pipelines import mains, readers

_MODEL = flags.DEFINE_string("model", None, "Trained model: a .keras file saved by model.save().")
_EXPORT_DIR = flags.DEFINE_string(
    "export_dir", None, "TF Serving base path: the model goes to DIR/{version}."
)
_VERSION = flags.DEFINE_integer("version", None, "Version number (default: the next one).", lower_bound=1)
_FOLD = flags.DEFINE_bool("fold", True, "Fold CoST(a) into Conv3D and BatchNorm into the preceding conv.")
_CLASSES = flags.DEFINE_string("classes", None, "Class names, one per line (line i = class i).")
_NUM_FRAMES = flags.DEFINE_integer(
    "num_frames", None, "Clip length T (default: the model's; 0: any).", lower_bound=0
)
_CROP_SIZE = flags.DEFINE_integer("crop_size", None, "Input crop side (default: the model's).", lower_bound=1)
_TOP_K = flags.DEFINE_integer(
    "top_k", saved_model.TOP_K, "Classes returned by serving_default.", lower_bound=1
)
_AUTOTUNE = flags.DEFINE_bool("autotune", True, AUTOTUNE_HELP)
flags.mark_flags_as_required(["model", "export_dir"])


def main(argv):
    mains.no_arguments(argv)
    with mains.usage_errors(ValueError, OSError):
        model = loading.load_model(_MODEL.value)
        autotune_for_main(
            model,
            main_input_shape(model, _NUM_FRAMES.value, _CROP_SIZE.value),
            _AUTOTUNE.value,
            modes=("inference",),
        )
        names = readers.read_class_names(_CLASSES.value) if _CLASSES.value else None
        path, report = saved_model.export(
            model,
            _EXPORT_DIR.value,
            version=_VERSION.value,
            fold=_FOLD.value,
            class_names=names,
            num_frames=_NUM_FRAMES.value,
            crop_size=_CROP_SIZE.value,
            top_k=_TOP_K.value,
        )
    logging.info("report: %s", report)
    print(
        f"Exported {path} (folded={report['folded']}, T={report['num_frames'] or 'any'}, "
        f"crop={report['crop_size']}, classes={report['num_classes']}, "
        f"max relative error vs Keras {report['max_relative_error']:.2e})"
    )


if __name__ == "__main__":
    app.run(main)
