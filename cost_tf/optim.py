"""Optimizer and learning-rate schedule of the CoST recipe (spec section 3), in Keras.

SGD with momentum 0.9, L2 weight decay 1e-4 on kernels only, gradient clipping at global norm 40, lr 0.01 per
64 clips scaled linearly with the global batch, step decay x0.1 (or cosine), optional linear warmup.

Weight decay is the *coupled* L2 of torch.optim.SGD (the public code's optimizer): `wd * w` is added to the
clipped gradient and so goes through the momentum buffer. Keras' own `SGD(weight_decay=...)` is decoupled
(`w -= lr * wd * w`, outside the momentum), which with momentum 0.9 regularises about 10x less for the same
number; `CoupledWeightDecaySGD` keeps the recipe's 1e-4 meaningful.

Gradient accumulation (`accumulate_steps=K`, train's --accumulate_steps): Keras' own
`gradient_accumulation_steps` (accumulator variables, `iterations` counting updates), with two changes in
`CoupledWeightDecaySGD`: (1) the learning-rate schedule is evaluated at the UPDATE count (Keras evaluates it
at the micro-batch count), so a schedule built for `steps_per_epoch / K` updates per epoch runs exactly as on
the K-times batch; (2) Keras 3.15 runs the update inside `ops.cond` in the replica context, where
tf.distribute refuses the update's `merge_call` (MirroredStrategy: "`merge_call` called while defining a new
graph"); here the micro-batch gradients are all-reduced first and the cond runs per variable inside the
cross-replica update, so every replica holds the same accumulators (a checkpoint saves them exactly). The
update uses the mean of the K micro-batch gradients, clipped to the global norm, plus the coupled decay: one
step on the K-times batch. BatchNorm still normalises each micro-batch (as each GPU of the recipe's 8 does).

`alpha_lr_multiplier` (train's --alpha_lr_multiplier, default 1 = the paper's recipe) multiplies the learning
rate of CoST(a)'s coefficient logits `alpha` only: their gradients are small next to the kernels' (the softmax
scales each by its coefficient, and the BatchNorm after every CoST layer cancels a common rescaling of the
views), so with one rate for all they move little in a short budget (docs/RESULTS.md measures it).
"""

import keras
import tensorflow as tf

REFERENCE_BATCH = 64  # the recipe's lr is given for 64 clips (8 GPUs x 8)
WARMUP_START = 0.1  # warmup starts at this fraction of the peak lr (MMAction's warmup_ratio)
SCHEDULES = ("step", "cosine")


def scaled_learning_rate(lr, global_batch_size, reference_batch=REFERENCE_BATCH):
    """Linear scaling rule: `lr` is the rate for `reference_batch` clips."""
    return lr * global_batch_size / reference_batch


@keras.saving.register_keras_serializable(package="cost_tf")
class Warmup(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup in front of another schedule.

    lr(step) = after(step) * (start + (1 - start) * step / warmup_steps) for step < warmup_steps, after(step)
    afterwards; with start = WARMUP_START this matches CosineDecay's own warmup.
    """

    def __init__(self, after, warmup_steps, start=WARMUP_START):
        super().__init__()
        if isinstance(after, dict):
            after = keras.optimizers.schedules.deserialize(after)
        if not isinstance(warmup_steps, int) or warmup_steps < 1:
            raise ValueError(f"warmup_steps must be a positive int. Received: warmup_steps={warmup_steps!r}")
        self.after = after
        self.warmup_steps = warmup_steps
        self.start = float(start)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        ramp = self.start + (1.0 - self.start) * step / float(self.warmup_steps)
        factor = keras.ops.minimum(ramp, 1.0)
        return keras.ops.cast(self.after(step), "float32") * factor

    def get_config(self):
        return {
            "after": keras.optimizers.schedules.serialize(self.after),
            "warmup_steps": self.warmup_steps,
            "start": self.start,
        }


def build_schedule(
    learning_rate, steps_per_epoch, epochs, schedule="step", lr_steps=(), lr_decay=0.1, warmup_epochs=0
):
    """The learning rate as a Keras schedule (or a float when constant).

    Args:
      learning_rate: peak rate (already scaled to the global batch).
      steps_per_epoch, epochs: training length.
      schedule: "step" (x lr_decay at each epoch of lr_steps) or "cosine" (to 0 at the end).
      lr_steps: epochs where the step schedule decays, increasing, in (0, epochs).
      warmup_epochs: linear warmup length (may be fractional); 0 for none.

    Epoch e's first step (optimizer iteration e * steps_per_epoch) already uses the decayed rate.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}. Received: schedule={schedule!r}")
    if steps_per_epoch < 1 or epochs < 1:
        raise ValueError(
            f"Need steps_per_epoch >= 1 and epochs >= 1. Received: steps_per_epoch={steps_per_epoch}, "
            f"epochs={epochs}"
        )
    if not 0 <= warmup_epochs < epochs:
        raise ValueError(
            f"warmup_epochs must be in [0, epochs). Received: warmup_epochs={warmup_epochs}, epochs={epochs}"
        )
    total = steps_per_epoch * epochs
    warmup = int(round(warmup_epochs * steps_per_epoch))
    if schedule == "cosine":
        if warmup:
            return keras.optimizers.schedules.CosineDecay(
                learning_rate * WARMUP_START, total - warmup, warmup_target=learning_rate, warmup_steps=warmup
            )
        return keras.optimizers.schedules.CosineDecay(learning_rate, total)
    lr_steps = tuple(lr_steps)
    if list(lr_steps) != sorted(set(lr_steps)) or any(not 0 < e < epochs for e in lr_steps):
        raise ValueError(
            f"lr_steps must be increasing epochs in (0, epochs={epochs}). Received: lr_steps={lr_steps}"
        )
    if lr_steps:
        after = keras.optimizers.schedules.PiecewiseConstantDecay(
            [e * steps_per_epoch - 1 for e in lr_steps],
            [learning_rate * lr_decay**i for i in range(len(lr_steps) + 1)],
        )
    else:
        after = keras.optimizers.schedules.PiecewiseConstantDecay([total], [learning_rate, learning_rate])
    return Warmup(after, warmup) if warmup else after


@keras.saving.register_keras_serializable(package="cost_tf")
class CoupledWeightDecaySGD(keras.optimizers.SGD):
    """keras.optimizers.SGD with torch-style L2 weight decay: g <- clip(g) + decay * w before the momentum.

    Variables excluded with `exclude_from_weight_decay` get no decay. Keras' decoupled `weight_decay`
    argument is not used (left None).
    """

    def __init__(self, coupled_weight_decay=0.0, **kwargs):
        if kwargs.get("weight_decay") is not None:
            raise ValueError(
                "Pass coupled_weight_decay, not weight_decay (that is Keras' decoupled decay). "
                f"Received: weight_decay={kwargs['weight_decay']!r}"
            )
        super().__init__(**kwargs)
        if not coupled_weight_decay >= 0:
            raise ValueError(
                f"coupled_weight_decay must be >= 0. Received: coupled_weight_decay={coupled_weight_decay}"
            )
        self.coupled_weight_decay = float(coupled_weight_decay)
        self._lr_multipliers = {}  # {variable key: multiplier}, see scale_learning_rate

    def scale_learning_rate(self, var_list, multiplier):
        """Multiplies the learning rate of the variables in `var_list` by `multiplier` (> 0): their (clipped)
        gradient is scaled before the momentum, which for SGD is the same as scaling their rate. Like
        `exclude_from_weight_decay`, bound to these variable objects and not saved in the config."""
        if not multiplier > 0:
            raise ValueError(f"The learning-rate multiplier must be > 0. Received: multiplier={multiplier}")
        for variable in var_list:
            self._lr_multipliers[self._var_key(variable)] = float(multiplier)

    def _get_current_learning_rate(self):
        # Keras calls the schedule with the micro-batch count; with accumulation the schedule counts updates.
        if self.gradient_accumulation_steps and isinstance(
            self._learning_rate, keras.optimizers.schedules.LearningRateSchedule
        ):
            return self._learning_rate(self.iterations)
        return super()._get_current_learning_rate()

    def _backend_apply_gradients(self, grads, trainable_variables):
        if not self.gradient_accumulation_steps:
            return super()._backend_apply_gradients(grads, trainable_variables)
        steps = self.gradient_accumulation_steps
        variables = [v.value if isinstance(v, keras.Variable) else v for v in trainable_variables]
        accumulators = [self._accumulated_gradients[self._get_variable_index(v)] for v in trainable_variables]
        # Replica context: sum the micro-batch gradients over replicas now (identity without a strategy), so
        # the accumulators, the clip norm and the update are the same on every replica.
        grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, variables, strict=True)))
        grads = [g for g, _ in grads_and_vars]
        is_update = keras.ops.equal((self._iterations + 1) % steps, 0)
        means = self._clip_gradients([(g + a) / steps for g, a in zip(grads, accumulators, strict=True)])
        tf.__internal__.distribute.interim.maybe_merge_call(
            self._accumulate_or_update,
            self._distribution_strategy,
            list(zip(grads, means, variables, [a.value for a in accumulators], strict=True)),
            is_update,
        )

    def _accumulate_or_update(self, distribution, items, is_update):
        learning_rate = self.learning_rate

        def update_variable(variable, mean, is_update, learning_rate):
            def apply():
                self.update_step(mean, variable, learning_rate)

            keras.ops.cond(is_update, apply, lambda: None)

        def update_accumulator(accumulator, grad, is_update):
            accumulator.assign(tf.where(is_update, tf.zeros_like(accumulator), accumulator + grad))

        for grad, mean, variable, accumulator in items:
            distribution.extended.update(
                variable, update_variable, args=(mean, is_update, learning_rate), group=False
            )
            distribution.extended.update(accumulator, update_accumulator, args=(grad, is_update), group=False)

    def update_step(self, gradient, variable, learning_rate):
        multiplier = self._lr_multipliers.get(self._var_key(variable), 1.0)
        if multiplier != 1.0:
            gradient = keras.ops.cast(gradient, variable.dtype) * keras.ops.cast(multiplier, variable.dtype)
        if self.coupled_weight_decay and self._use_weight_decay(variable):
            gradient = (
                keras.ops.cast(gradient, variable.dtype)
                + keras.ops.cast(self.coupled_weight_decay, variable.dtype) * variable
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config["coupled_weight_decay"] = self.coupled_weight_decay
        return config


def is_decayed(variable):
    """Weight decay applies to convolution/dense/CoST kernels only, never to BatchNorm, biases or CoST's
    coefficient parameters (alpha, view_dense, view_mix): Keras names exactly those kernels "kernel"."""
    return variable.path.rsplit("/", 1)[-1] == "kernel"


def is_alpha(variable):
    """CoST(a)'s coefficient logits (the layer's `alpha` weight)."""
    return variable.path.rsplit("/", 1)[-1] == "alpha"


def build_optimizer(
    model,
    learning_rate,
    momentum=0.9,
    weight_decay=1e-4,
    clipnorm=40.0,
    accumulate_steps=1,
    alpha_lr_multiplier=1.0,
):
    """CoupledWeightDecaySGD for `model`, decaying only `is_decayed` variables.

    Args:
      model: the (built) model whose trainable variables will be optimised.
      learning_rate: float or a keras LearningRateSchedule (see build_schedule).
      momentum: SGD momentum.
      weight_decay: L2 coefficient (torch semantics, see module docstring); 0 disables.
      clipnorm: clip the gradients to this global norm (keras `global_clipnorm`); 0/None disables.
      accumulate_steps: update once every this many batches with their mean gradient (see module docstring);
        a schedule must then count updates (steps_per_epoch / accumulate_steps per epoch).
    """
    if isinstance(accumulate_steps, bool) or not isinstance(accumulate_steps, int) or accumulate_steps < 1:
        raise ValueError(
            f"accumulate_steps must be an int >= 1. Received: accumulate_steps={accumulate_steps!r}"
        )
    if not model.built:
        raise ValueError(f"Build the model before the optimizer. Received: model={model.name!r} (not built)")
    optimizer = CoupledWeightDecaySGD(
        coupled_weight_decay=weight_decay,
        learning_rate=learning_rate,
        momentum=float(momentum),
        global_clipnorm=clipnorm or None,
        gradient_accumulation_steps=accumulate_steps if accumulate_steps > 1 else None,
    )
    optimizer.exclude_from_weight_decay(var_list=[v for v in model.trainable_variables if not is_decayed(v)])
    if alpha_lr_multiplier != 1.0:
        optimizer.scale_learning_rate(
            [v for v in model.trainable_variables if is_alpha(v)], alpha_lr_multiplier
        )
    return optimizer
