"""Export a video model to a TFLite file of builtin ops only, validated with the stock interpreter.

    python -m export.tflite --model=runs/x/model.keras --output=cost.tflite [--quantize=none|float16|dynamic] \\
        [--num_frames=8] [--crop_size=224] [--frame_size=256x340]

TFLite has no 3D pooling and its CONV_3D is no XNNPACK op, so the model is rewritten for it first (`lower`,
after export.parity.fold_for_inference: CoST(a) as its merged kernel, BatchNorm in the conv before it):

  Conv3D (every family's convs, CoST(a) folded)  one CONV_2D over all N*T' frames per temporal tap, summed;
                                                 a tap that is zero outside its middle row and column (CoST(a)'s
                                                 previous/next frames) as a (1, k) row and a (k, 1) column conv:
                                                 CoST(a) runs its 19 non-zero taps as 21 instead of 27.
  MaxPooling3D                                   MAX_POOL_2D over frames (per temporal tap, then MAXIMUM).
  CoST(b)                                        its views as 2D convolutions over frames (CoST "frames").
  BatchNormalization left (after CoST(b))        one multiply-add with constants.
  GlobalAveragePooling3D                         MEAN over (T*H*W) of a 3D reshape.

Signatures (batch fixed, default 1; TFLite graphs have static shapes, and so does this one):

  serving_default  clip: float32 (N, T, crop, crop, 3), preprocessed (pipelines/preprocess.py) -> logits (N, C).
  frames           frames: uint8 (N, T, H, W, 3) raw RGB at the --frame_size it was exported for (default
                   the short side round(crop * 8 / 7) squared); the eval preprocessing of export.saved_model
                   (resize short side, centre crop, normalise) in the graph -> logits (N, C). 4x smaller than
                   the float32 clip at the same size.

The file is written to OUTPUT.{pid}.tmp, loaded by the stock `tf.lite.Interpreter` with builtin ops only
(no Flex delegate: `builtin_only_ops` rejects any custom op), compared with the Keras model on a random clip
(float32: relative error <= 1e-4; float16/dynamic: `QUANTIZED_TOLERANCE`), and only then renamed.
"""

from absl import app, flags, logging

from cost_tf import loading
from export import tflite
from pipelines import mains

_MODEL = flags.DEFINE_string("model", None, "Trained model: a .keras file saved by model.save().")
_OUTPUT = flags.DEFINE_string("output", None, "Destination .tflite file.")
_QUANTIZE = flags.DEFINE_enum(
    "quantize",
    "none",
    tflite.QUANTIZE,
    "Weights: float32 (none), float16, or int8 with dynamic-range activations (dynamic).",
)
_NUM_FRAMES = flags.DEFINE_integer("num_frames", None, "Clip length T (default: the model's).", lower_bound=1)
_CROP_SIZE = flags.DEFINE_integer("crop_size", None, "Input crop side (default: the model's).", lower_bound=1)
_FRAME_SIZE = flags.DEFINE_string(
    "frame_size", None, "HxW of the uint8 `frames` signature (default: round(crop * 8 / 7) squared)."
)
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1, "Static batch of the TFLite graph.", lower_bound=1)
flags.mark_flags_as_required(["model", "output"])


def main(argv):
    mains.no_arguments(argv)
    with mains.usage_errors(ValueError, OSError, tflite.ConversionError):
        model = loading.load_model(_MODEL.value)
        frame_size = tflite.parse_frame_size(_FRAME_SIZE.value) if _FRAME_SIZE.value else None
        report = tflite.export(
            model,
            _OUTPUT.value,
            quantize=_QUANTIZE.value,
            num_frames=_NUM_FRAMES.value,
            crop_size=_CROP_SIZE.value,
            frame_size=frame_size,
            batch_size=_BATCH_SIZE.value,
        )
    logging.info("report: %s", report)
    print(
        f"Wrote {report['path']} ({report['bytes'] / 2**20:.2f} MiB, quantize={report['quantize']}, "
        f"T={report['num_frames']}, crop={report['crop_size']}, frames {report['frame_size'][0]}x"
        f"{report['frame_size'][1]}, batch {report['batch_size']}, {sum(report['ops'][tflite.CLIP_KEY].values())} builtin ops); "
        f"tf.lite.Interpreter vs Keras max relative error {report['max_relative_error']:.2e} (clip), "
        f"{report['frames_max_relative_error']:.2e} (frames)"
    )


if __name__ == "__main__":
    app.run(main)
