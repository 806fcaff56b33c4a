"""Export a video model to ONNX with tf2onnx, validated against Keras with onnxruntime.

    python -m export.onnx --model=runs/x/model.keras --output=cost.onnx [--opset=17] [--nofold] \\
        [--num_frames=8] [--crop_size=224]
    python -m export.onnx --saved_model=serving/cost/1 --output=cost.onnx   # its `logits` signature

Input "clip": the model's float input (batch, T, crop, crop, 3), already preprocessed (pipelines/preprocess.py);
output "logits" (batch, C). Batch is dynamic, and T too unless the model only runs at its own T or
--num_frames fixes it.

The conversion runs tf2onnx in child processes (from --model: its grappler pass, then the conversion;
export/tf2onnx_steps.py): its TF graph passes can abort the whole process (a failed
CHECK in grappler), and that must end as a clear error here, not a dead exporter. The file is written to a
temporary name, checked with onnxruntime against the Keras model (or the source signature) on a random clip,
and only then renamed.
"""

from absl import app, flags, logging

from cost_tf import loading
from cost_tf.autotune import AUTOTUNE_HELP, autotune_for_main, main_input_shape
from export import onnx
from pipelines import mains

_MODEL = flags.DEFINE_string("model", None, "Trained model: a .keras file saved by model.save().")
_SAVED_MODEL = flags.DEFINE_string(
    "saved_model",
    None,
    "Instead of --model: a SavedModel folder, e.g. a "
    "version written by onnx.export.saved_model (converts --signature).",
)
_SIGNATURE = flags.DEFINE_string("signature", "logits", "With --saved_model: the clip -> logits signature.")
_OUTPUT = flags.DEFINE_string("output", None, "Destination .onnx file.")
_OPSET = flags.DEFINE_integer(
    "opset", onnx.DEFAULT_OPSET, f"ONNX opset ({onnx.OPSETS[0]}-{onnx.OPSETS[-1]})."
)
_FOLD = flags.DEFINE_bool("fold", True, "Fold CoST(a) into Conv3D and BatchNorm into the preceding conv.")
_NUM_FRAMES = flags.DEFINE_integer(
    "num_frames",
    None,
    "Clip length T (default: dynamic where the model allows it, else the model's; 0: dynamic).",
    lower_bound=0,
)
_CROP_SIZE = flags.DEFINE_integer("crop_size", None, "Input crop side (default: the model's).", lower_bound=1)
_TIMEOUT = flags.DEFINE_integer("timeout", None, "Seconds allowed for tf2onnx.", lower_bound=1)
_AUTOTUNE = flags.DEFINE_bool("autotune", True, AUTOTUNE_HELP)
flags.mark_flags_as_required(["output"])


def main(argv):
    mains.no_arguments(argv)
    if (_MODEL.value is None) == (_SAVED_MODEL.value is None):
        mains.fail("pass exactly one of --model and --saved_model.")
    with mains.usage_errors(ValueError, OSError, onnx.ConversionError):
        if _MODEL.value is not None:
            model = loading.load_model(_MODEL.value)
            autotune_for_main(
                model,
                main_input_shape(model, _NUM_FRAMES.value, _CROP_SIZE.value),
                _AUTOTUNE.value,
                modes=("inference",),
            )
            report = onnx.export(
                model,
                _OUTPUT.value,
                opset=_OPSET.value,
                fold=_FOLD.value,
                num_frames=_NUM_FRAMES.value,
                crop_size=_CROP_SIZE.value,
                timeout=_TIMEOUT.value,
            )
        else:
            report = onnx.convert_saved_model(
                _SAVED_MODEL.value,
                _OUTPUT.value,
                opset=_OPSET.value,
                signature=_SIGNATURE.value,
                timeout=_TIMEOUT.value,
            )
    logging.info("report: %s", report)
    folded = f", folded={report['folded']}" if "folded" in report else ""
    print(
        f"Wrote {report['path']} (opset {report['opset']}{folded}, T={report['num_frames'] or 'dynamic'}, "
        f"crop={report['crop_size']}); onnxruntime vs reference max relative error "
        f"{report['max_relative_error']:.2e}"
    )


if __name__ == "__main__":
    app.run(main)
