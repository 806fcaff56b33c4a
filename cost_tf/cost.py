"""The CoST layer: one shared 3x3 kernel applied to the H-W, T-W and T-H views of a clip.

Spec: ../shared/CoST.md §1. Layout is channels-last: inputs are (N, T, H, W, C_in).

    y = a_hw * conv(x, w as 1x3x3) + a_tw * conv(x, w as 3x1x3) + a_th * conv(x, w as 3x3x1)

which equals ONE 3x3x3 'SAME' convolution with the merged kernel (`merged_kernel`). CoST(a) learns the
per-channel coefficients `a`; CoST(b) predicts them per clip from the view outputs.
"""

import functools
import json

import keras
from keras import ops

VARIANTS = ("a", "b")
IMPLEMENTATIONS = ("auto", "frames", "views", "fused", "sparse", "flat")
VIEWS = ("hw", "tw", "th")
# "same": TF 'SAME' (pads (0, 1) on an even axis at stride 2); "symmetric": (1, 1) on every axis, as the
# authors' PyTorch layer (padding 1). Both give ceil(size / stride) outputs and agree at stride 1.
PADDINGS = ("same", "symmetric")
MODES = ("inference", "training")

# What "auto" runs when the layer was not autotuned (cost_tf.autotune measures every candidate on the device
# it runs on and overrides these per layer): per device kind (`device_kind`), variant and mode, the first
# implementation in the list that is valid for the layer's strides. Each CPU list has the smallest R50-weighted
# time that bench/layer_bench.py measured on such a CPU (docs/PERFORMANCE.md), within that run's noise:
# "cpu" on an AVX2 CPU (AMD EPYC, 2 cores), "cpu-avx512" on an AVX-512 CPU (Intel Xeon with AVX-512/AMX,
# 2 cores), where oneDNN's Conv3D is 2-3x faster and the Conv3D forms win. The GPU lists are unmeasured (no
# GPU was lent), cuDNN's dense Conv3D first. They are only defaults: cost_tf.autotune measures the device.
DEFAULTS = {
    "cpu": {
        ("a", "inference"): ("frames",),
        ("a", "training"): ("frames",),
        ("b", "inference"): ("frames",),
        ("b", "training"): ("views",),
    },
    "cpu-avx512": {
        ("a", "inference"): ("flat",),
        ("a", "training"): ("flat",),
        ("b", "inference"): ("flat",),
        ("b", "training"): ("flat",),
    },
    "gpu": {
        ("a", "inference"): ("fused",),
        ("a", "training"): ("fused",),
        ("b", "inference"): ("flat",),
        ("b", "training"): ("flat",),
    },
}


# cost_tf.autotune's choices in this process: {tuned_key(...): implementation}. "auto" layers look themselves up
# by config and input shape, so copies of a tuned layer (fold, export, a resized model) run the tuned choice.
TUNED = {}


def tuned_key(layer, mode, input_shape):
    """The TUNED key of `layer`'s configuration (name and implementation aside) in `mode` on inputs of
    `input_shape` (the batch size aside)."""
    config = {k: v for k, v in layer.get_config().items() if k not in ("name", "implementation", "trainable")}
    shape = tuple(None if s is None else int(s) for s in tuple(input_shape)[1:])
    return json.dumps(config, sort_keys=True, default=str), mode, shape


def valid_implementations(variant, strides=(1, 1, 1)):
    """The implementations (not "auto") a CoST layer of this variant and strides can run."""
    if variant == "b":
        return ("frames", "views", "flat")
    return ("frames", "views", "fused", "flat") + (("sparse",) if tuple(strides) == (1, 1, 1) else ())


def device_kind(cpuinfo="/proc/cpuinfo"):
    """Which DEFAULTS "auto" falls back to: "gpu" if TensorFlow sees a GPU, else "cpu-avx512" where the CPU
    flags (`cpuinfo`, Linux) list avx512f, else "cpu"."""
    import tensorflow as tf

    return "gpu" if tf.config.list_logical_devices("GPU") else _cpu_kind(cpuinfo)


@functools.cache
def _cpu_kind(cpuinfo):
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.startswith("flags"):
                    return "cpu-avx512" if "avx512f" in line.split(":", 1)[1].split() else "cpu"
    except OSError:
        pass
    return "cpu"


def default_implementation(variant, strides, training, kind=None):
    """The implementation "auto" runs without autotuning: the first valid one of DEFAULTS[kind]."""
    choices = DEFAULTS[kind or device_kind()][(variant, "training" if training else "inference")]
    valid = valid_implementations(variant, strides)
    return next((impl for impl in choices if impl in valid), "views")


def _same_pads(size, stride, kernel=3):
    """(before, after) zero padding of TF 'SAME' for one dimension; `size` may be a tensor."""
    out = (size + stride - 1) // stride
    total = (out - 1) * stride + kernel - size
    total = max(total, 0) if isinstance(total, int) else ops.maximum(total, 0)
    return total // 2, total - total // 2


def _normalize_strides(strides):
    message = f"`strides` must be an int or a tuple of 3 positive ints (t, h, w). Received: strides={strides}"
    values = (strides,) * 3 if isinstance(strides, int) else strides
    try:
        values = tuple(int(s) for s in values)
    except (TypeError, ValueError):
        raise ValueError(message) from None
    if len(values) != 3 or any(s < 1 for s in values):
        raise ValueError(message)
    return values


def merged_kernel(kernel, coefficients):
    """The 3x3x3 kernel equal to the coefficient-weighted sum of the three views.

    Args:
      kernel: (3, 3, C_in, C_out) shared 2D kernel.
      coefficients: (3, C_out) view weights, ordered (hw, tw, th).
    Returns:
      (3, 3, 3, C_in, C_out): a_hw * w on the plane t=1, a_tw * w on h=1, a_th * w on w=1.
    """
    # Three zero-padded planes and two adds: the same sum as placing the 27 taps one by one, a few ops
    # instead of ~40 stacks per step (bench/layer_bench.py --merged_kernel measures both).
    hw = ops.pad((kernel * coefficients[0])[None], [(1, 1), (0, 0), (0, 0), (0, 0), (0, 0)])  # t=1
    tw = ops.pad((kernel * coefficients[1])[:, None], [(0, 0), (1, 1), (0, 0), (0, 0), (0, 0)])  # h=1
    th = ops.pad((kernel * coefficients[2])[:, :, None], [(0, 0), (0, 0), (1, 1), (0, 0), (0, 0)])  # w=1
    return hw + tw + th


def sparse_kernels(kernel3d):
    """Split a merged 3x3x3 kernel into its 19 non-zero taps as three dense kernels.

    Returns (k_hw (1,3,3,Ci,Co), k_tw (2,1,3,Ci,Co), k_th (2,2,1,Ci,Co)): the whole t=1 plane; the h=1 row of
    the t in {0, 2} planes; and the 4 taps (t, h) in {0, 2}^2 at w=1. The dilated ones run with dilation 2.
    """
    k_hw = kernel3d[1:2]
    k_tw = ops.stack([kernel3d[0, 1:2], kernel3d[2, 1:2]], axis=0)
    k_th = ops.stack(
        [
            ops.stack([kernel3d[0, 0, 1:2], kernel3d[0, 2, 1:2]], axis=0),
            ops.stack([kernel3d[2, 0, 1:2], kernel3d[2, 2, 1:2]], axis=0),
        ],
        axis=0,
    )
    return k_hw, k_tw, k_th


@keras.saving.register_keras_serializable(package="cost_tf")
class CoST(keras.layers.Layer):
    """Collaborative Spatio-Temporal convolution (Li et al., CVPR 2019).

    Args:
      filters: number of output channels.
      variant: "a" (coefficients learned as parameters) or "b" (predicted per clip from the view outputs).
      strides: int or (t, h, w).
      use_bias: add a bias once, after the weighted sum of the views.
      kernel_initializer, kernel_regularizer: for the shared (3, 3, C_in, filters) kernel.
      implementation: "views" (the three views as 2D convolutions over the planes each spans, view weights
        multiplied into the kernels), "frames" (2D convolutions over whole frames, one set per temporal tap:
        variant "a" runs the merged kernel's 19 non-zero taps, variant "b" the three views), "fused" (variant
        "a": one 3x3x3 convolution with the merged kernel), "sparse" (variant "a", stride 1: the merged
        kernel's 19 non-zero taps as three dense 3D convolutions), "flat" (the three views as 3D
        convolutions with flat kernels 1x3x3, 3x1x3, 3x3x1, no transposes), or "auto": what
        cost_tf.autotune measured fastest for this layer on this device, separately for training and
        inference, else the per-device-kind default (DEFAULTS). An explicit choice is never overridden.
      padding: "same" (TF 'SAME': an even axis at stride 2 is padded (0, 1)) or "symmetric" (every axis
        padded (1, 1), then 'valid': the authors' PyTorch CoST). Identical at stride 1 and on odd sizes.
    Input: (N, T, H, W, C_in). Output: (N, ceil(T/st), ceil(H/sh), ceil(W/sw), filters) for both paddings.
    """

    def __init__(
        self,
        filters,
        variant="a",
        strides=1,
        use_bias=False,
        kernel_initializer="he_normal",
        kernel_regularizer=None,
        implementation="auto",
        padding="same",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(filters, int) or isinstance(filters, bool) or filters < 1:
            raise ValueError(f"`filters` must be a positive int. Received: filters={filters}")
        if variant not in VARIANTS:
            raise ValueError(f"`variant` must be one of {VARIANTS}. Received: variant={variant!r}")
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(
                f"`implementation` must be one of {IMPLEMENTATIONS}. Received: implementation={implementation!r}"
            )
        if padding not in PADDINGS:
            raise ValueError(f"`padding` must be one of {PADDINGS}. Received: padding={padding!r}")
        self.filters = filters
        self.variant = variant
        self.padding = padding
        self.strides = _normalize_strides(strides)
        if variant == "b" and implementation in ("fused", "sparse"):
            raise ValueError(
                "CoST(b) predicts its coefficients from the separate view outputs, so it only runs as "
                f"implementation='frames', 'views', 'flat' or 'auto'. Received: implementation={implementation!r}"
            )
        if implementation == "sparse" and self.strides != (1, 1, 1):
            raise ValueError(
                "implementation='sparse' needs strides 1 (its dilated taps assume them). "
                f"Received: strides={strides}"
            )
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.implementation = implementation
        # {mode: implementation} set by cost_tf.autotune for implementation="auto". A speed property of
        # this device only: not in get_config, so a saved model does not carry it to another machine.
        self.tuned_implementations = {}
        self.input_spec = keras.layers.InputSpec(ndim=5)

    def build(self, input_shape):
        if len(input_shape) != 5:
            raise ValueError(
                f"CoST expects inputs of rank 5 (N, T, H, W, C). Received: input_shape={input_shape}"
            )
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError(
                f"The channel dimension of the inputs must be known. Received: input_shape={input_shape}"
            )
        self.input_spec = keras.layers.InputSpec(ndim=5, axes={-1: in_channels})
        self.kernel = self.add_weight(
            name="kernel",
            shape=(3, 3, in_channels, self.filters),
            initializer=self.kernel_initializer,
            regularizer=self.kernel_regularizer,
        )
        if self.variant == "a":
            self.alpha = self.add_weight(
                name="alpha",
                shape=(3, self.filters),
                initializer=_alpha_initializer,
            )
        else:
            small = keras.initializers.RandomNormal(stddev=0.01)
            self.view_dense = self.add_weight(
                name="view_dense", shape=(self.filters, self.filters), initializer=small
            )
            self.view_mix = self.add_weight(name="view_mix", shape=(3, 3), initializer=small)
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer="zeros")

    # -- coefficients ---------------------------------------------------------------------------------

    def coefficients(self, inputs=None):
        """Normalised view weights, ordered (hw, tw, th): (3, filters) for "a"; (N, 3, filters) for "b"."""
        if self.variant == "a":
            return ops.softmax(ops.convert_to_tensor(self.alpha), axis=0)
        if inputs is None:
            raise ValueError("CoST(b) coefficients depend on the clip: pass `inputs` (N, T, H, W, C_in).")
        if not self.built:
            self.build(tuple(inputs.shape))
        inputs = ops.cast(inputs, self.compute_dtype)
        return self._predict_coefficients(self._views(inputs, ops.cast(self.kernel, self.compute_dtype)))

    def _predict_coefficients(self, views):
        # Global max-pool each view -> shared dense C->C -> per-channel 3->3 mix -> softmax over views.
        # Under mixed precision the small predictor and its softmax run in float32.
        dtype = "float32" if self.compute_dtype in ("float16", "bfloat16") else self.compute_dtype
        pooled = ops.stack([ops.max(v, axis=(1, 2, 3)) for v in views], axis=1)  # (N, 3, C)
        pooled = ops.cast(pooled, dtype)
        dense = ops.matmul(pooled, ops.cast(self.view_dense, dtype))  # (N, 3, C)
        mixed = ops.einsum("nic,ij->njc", dense, ops.cast(self.view_mix, dtype))
        return ops.softmax(mixed, axis=1)

    # -- the convolutions -----------------------------------------------------------------------------

    def _pad_same(self, x):
        """Zero-pad once as a 3x3x3 convolution with these strides and `padding` would."""
        if self.padding == "symmetric":
            return ops.pad(x, [(0, 0), (1, 1), (1, 1), (1, 1), (0, 0)])
        shape = ops.shape(x)
        pads = [(0, 0)]
        for axis, stride in zip((1, 2, 3), self.strides, strict=True):
            # Stride 1 always pads (1, 1); a strided axis of unknown size gets its padding at run time.
            pads.append((1, 1) if stride == 1 else _same_pads(shape[axis], stride))
        pads.append((0, 0))
        return ops.pad(x, pads)

    def _views(self, x, k_hw, k_tw=None, k_th=None):
        """The three view convolutions on one shared padding, with (possibly pre-weighted) kernels.

        Each view is a 'valid' convolution of the padded input, offset by one tap on the axis its kernel is
        flat along, so its taps coincide with those of the 3x3x3 'SAME' convolution (for any stride/parity).
        A view's kernel is flat along one axis, so it runs as a 2D convolution over the planes it spans, with
        the flat axis folded into the batch: TF's CPU Conv2D (and its gradients) is much faster than Conv3D.
        At strides 1 each view pads only its own two axes ('same'): no shared padding and no slices, whose
        gradients are each a scatter into the padded shape (a measured cost, docs/PERFORMANCE.md).
        Returns (x_hw, x_tw, x_th), each (N, T', H', W', C_out).
        """
        k_tw = k_hw if k_tw is None else k_tw
        k_th = k_hw if k_th is None else k_th
        if self.strides == (1, 1, 1):  # both paddings pad (1, 1) on every axis here
            return tuple(
                self._planar_conv(x, k, axis, (1, 1), padding="same")
                for axis, k in zip((1, 2, 3), (k_hw, k_tw, k_th), strict=True)
            )
        xp = self._pad_same(x)
        st, sh, sw = self.strides
        # (flat axis, the two axes the 2D kernel spans, their strides, the one-tap offset slice)
        x_hw = self._planar_conv(xp[:, 1:-1:st], k_hw, 1, (sh, sw))
        x_tw = self._planar_conv(xp[:, :, 1:-1:sh], k_tw, 2, (st, sw))
        x_th = self._planar_conv(xp[:, :, :, 1:-1:sw], k_th, 3, (st, sh))
        return x_hw, x_tw, x_th

    @staticmethod
    def _planar_conv(x, kernel, flat_axis, strides, padding="valid"):
        """2D convolution (`padding`) of every plane of x (N, T, H, W, C) orthogonal to `flat_axis` (1, 2, 3)."""
        order = [0, flat_axis] + [a for a in (1, 2, 3) if a != flat_axis] + [4]
        planes = ops.transpose(x, order) if flat_axis != 1 else x
        shape = ops.shape(planes)
        y = ops.conv(
            ops.reshape(planes, (-1, shape[2], shape[3], shape[4])), kernel, strides=strides, padding=padding
        )
        y_shape = ops.shape(y)
        y = ops.reshape(y, (shape[0], shape[1], y_shape[1], y_shape[2], y_shape[3]))
        if flat_axis == 1:
            return y
        inverse = [order.index(a) for a in range(5)]
        return ops.transpose(y, inverse)

    def _frame_input(self, x):
        """The padded input _frame_conv takes: at strides 1 padded along T only (its 2D convolutions pad the
        frames 'same', so no spatial slices and their scatter gradients), else as _pad_same."""
        if self.strides == (1, 1, 1):
            return ops.pad(x, [(0, 0), (1, 1), (0, 0), (0, 0), (0, 0)])
        return self._pad_same(x)

    def _frame_conv(self, xp, kernels):
        """Sum over the three padded frames t*st + i (i = 0, 1, 2) of a 2D convolution of each frame.

        `kernels[i]` is a list of (kh, kw, C_in, C_out) kernels with kh, kw in {1, 3} (a 1 sits on the middle
        row/column of the window) for the frames at temporal tap i. Every 2D convolution runs over all N*T'
        frames at once, and nothing is transposed: this is how the views' temporal taps reach TF's CPU Conv2D.
        xp: the input padded by _frame_input. Returns (N, T', H', W', C_out).
        """
        st, sh, sw = self.strides
        same = self.strides == (1, 1, 1)  # xp is padded along T only
        shape = ops.shape(xp)
        total = None
        for i, ks in enumerate(kernels):
            if not ks:
                continue
            frames = xp[:, i : (i - 2 if i < 2 else None) : st]
            frames = ops.reshape(frames, (-1, shape[2], shape[3], shape[4]))
            for k in ks:
                if same:  # a 1-wide kernel axis pads nothing: the middle row/column of the padded window
                    y = ops.conv(frames, k, padding="same")
                else:
                    rows = slice(1, -1) if k.shape[0] == 1 else slice(None)
                    cols = slice(1, -1) if k.shape[1] == 1 else slice(None)
                    y = ops.conv(frames[:, rows, cols], k, strides=(sh, sw), padding="valid")
                total = y if total is None else total + y
        y_shape = ops.shape(total)
        return ops.reshape(total, (shape[0], -1, y_shape[1], y_shape[2], y_shape[3]))

    def _frame_views(self, x, kernel):
        """(x_hw, x_tw, x_th) as _views gives them, each computed by _frame_conv (27 taps, no transposes)."""
        xp = self._frame_input(x)
        hw = self._frame_conv(xp, [[], [kernel], []])
        tw = self._frame_conv(xp, [[kernel[i][None]] for i in range(3)])  # row i of w: (1, 3) over (h=1, w)
        th = self._frame_conv(
            xp, [[kernel[i][:, None]] for i in range(3)]
        )  # row i of w: (3, 1) over (h, w=1)
        return hw, tw, th

    def _frames_merged(self, x, kernel3d):
        """The merged kernel's 19 non-zero taps per temporal tap: the full 3x3 centre frame, and a plus
        shape on the previous/next frames as a (1, 3) row and a (3, 1) column with its centre zeroed."""
        no_centre = ops.convert_to_tensor([1.0, 0.0, 1.0], dtype=kernel3d.dtype)[:, None, None, None]
        kernels = [[kernel3d[i, 1:2], kernel3d[i, :, 1:2] * no_centre] for i in (0, 2)]
        return self._frame_conv(self._frame_input(x), [kernels[0], [kernel3d[1]], kernels[1]])

    def _flat_views(self, x, k_hw, k_tw=None, k_th=None):
        """(x_hw, x_tw, x_th) as _views gives them, as three 'SAME' 3D convolutions with flat kernels.

        A kernel of size 1 along the flat axis and 'SAME' padding picks input index o*s there, the 3x3x3
        window's centre is o*s - before + 1: the input is shifted by 1 - before on a strided flat axis.
        """
        k_tw = k_hw if k_tw is None else k_tw
        k_th = k_hw if k_th is None else k_th
        if self.padding == "symmetric":  # window centre o*s: 'valid' on (1, 1)-padded axes but the flat one
            xp = self._pad_same(x)
            return tuple(
                ops.conv(
                    xp[(slice(None),) * axis + (slice(1, -1),)],
                    ops.expand_dims(k, axis - 1),
                    strides=self.strides,
                    padding="valid",
                )
                for axis, k in zip((1, 2, 3), (k_hw, k_tw, k_th), strict=True)
            )
        shape = ops.shape(x)
        outputs = []
        for axis, k in zip((1, 2, 3), (k_hw, k_tw, k_th), strict=True):
            stride = self.strides[axis - 1]
            if stride != 1:
                shift = 1 - _same_pads(shape[axis], stride)[0]
                x_axis = x[(slice(None),) * axis + (slice(shift, None),)]
            else:
                x_axis = x
            kernel = ops.expand_dims(k, axis - 1)  # (3, 3, Ci, Co) -> 1 along the flat axis
            outputs.append(ops.conv(x_axis, kernel, strides=self.strides, padding="same"))
        return tuple(outputs)

    def _sparse(self, x, kernel3d):
        k_hw, k_tw, k_th = sparse_kernels(kernel3d)
        xp = ops.pad(x, [(0, 0), (1, 1), (1, 1), (1, 1), (0, 0)])
        y = ops.conv(xp[:, 1:-1], k_hw, padding="valid")
        y = y + ops.conv(xp[:, :, 1:-1], k_tw, padding="valid", dilation_rate=(2, 1, 1))
        y = y + ops.conv(xp[:, :, :, 1:-1], k_th, padding="valid", dilation_rate=(2, 2, 1))
        return y

    def resolved_implementation(self, training=False, input_shape=None):
        """The implementation `call` runs for this mode: the explicit one; else the one autotuned for this
        layer, or for its configuration at `input_shape` (TUNED); else the device kind's default."""
        if self.implementation != "auto":
            return self.implementation
        mode = "training" if training else "inference"
        if mode in self.tuned_implementations:
            return self.tuned_implementations[mode]
        if input_shape is not None and TUNED:
            tuned = TUNED.get(tuned_key(self, mode, input_shape))
            if tuned in valid_implementations(self.variant, self.strides):
                return tuned
        return default_implementation(self.variant, self.strides, training)

    def set_tuned_implementations(self, inference=None, training=None):
        """Sets what "auto" runs per mode (cost_tf.autotune calls this); an explicit implementation wins."""
        valid = valid_implementations(self.variant, self.strides)
        for mode, impl in (("inference", inference), ("training", training)):
            if impl is None:
                continue
            if impl not in valid:
                raise ValueError(
                    f"CoST {self.name}: {mode} implementation must be one of {valid}. "
                    f"Received: {mode}={impl!r}"
                )
            self.tuned_implementations[mode] = impl

    def call(self, inputs, training=None):
        kernel = ops.cast(self.kernel, self.compute_dtype)
        impl = self.resolved_implementation(bool(training), inputs.shape)
        if self.variant == "b":
            views = {"frames": self._frame_views, "flat": self._flat_views}.get(impl, self._views)(
                inputs, kernel
            )
            coeffs = ops.cast(self._predict_coefficients(views), self.compute_dtype)  # (N, 3, C)
            outputs = sum(coeffs[:, i, None, None, None, :] * v for i, v in enumerate(views))
        else:
            coeffs = ops.cast(self.coefficients(), self.compute_dtype)  # (3, C)
            if impl == "views":
                # View weights go into the kernels, not onto the outputs: tf2onnx's grappler pass aborts on
                # a per-channel Mul after a Conv (see DEVELOPERS.md), and this is the same sum.
                outputs = sum(self._views(inputs, kernel * coeffs[0], kernel * coeffs[1], kernel * coeffs[2]))
            elif impl == "flat":
                outputs = sum(
                    self._flat_views(inputs, kernel * coeffs[0], kernel * coeffs[1], kernel * coeffs[2])
                )
            else:
                k3 = merged_kernel(kernel, coeffs)
                if impl == "fused":
                    if self.padding == "symmetric":
                        outputs = ops.conv(self._pad_same(inputs), k3, strides=self.strides, padding="valid")
                    else:
                        outputs = ops.conv(inputs, k3, strides=self.strides, padding="same")
                elif impl == "frames":
                    outputs = self._frames_merged(inputs, k3)
                else:
                    outputs = self._sparse(inputs, k3)
        if self.use_bias:
            outputs = outputs + ops.cast(self.bias, self.compute_dtype)
        return outputs

    def compute_output_shape(self, input_shape):
        out = [input_shape[0]]
        for size, stride in zip(input_shape[1:4], self.strides, strict=True):
            out.append(None if size is None else (size + stride - 1) // stride)
        return tuple(out) + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "variant": self.variant,
                "strides": self.strides,
                "use_bias": self.use_bias,
                "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "implementation": self.implementation,
                "padding": self.padding,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="cost_tf")
def _alpha_initializer(shape, dtype=None):
    """alpha[0] = 0.7 (hw), alpha[1] = alpha[2] = -0.7 (tw, th), for every output channel (code)."""
    column = ops.convert_to_tensor([[0.7], [-0.7], [-0.7]], dtype=dtype or "float32")
    return ops.broadcast_to(column, shape)
