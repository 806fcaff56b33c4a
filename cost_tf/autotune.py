"""Measured implementation choice per CoST layer, like cuDNN's benchmark mode.

    report = cost_tf.autotune(model, (8, 8, 224, 224, 3))

times, on the device this runs on, every implementation valid for each CoST layer with implementation="auto"
at that layer's input shape, dtype, variant and strides, separately for inference (forward) and training
(forward + backward with input AND weight gradients), and makes each layer run the fastest per mode. Layers
with the same configuration are measured once. Choices are cached in a JSON file (default
~/.cache/cost_tf/autotune.json, or $COST_TF_AUTOTUNE_CACHE/autotune.json), keyed by the device (CPU model
or GPU name), TensorFlow version, shape, dtype, variant, strides and mode, so a second run measures
nothing. A broken or unwritable cache gives a warning and a measurement, never an error.
"""

import gc
import json
import os
import platform
import time
import warnings

import tensorflow as tf

from cost_tf.cost import MODES, TUNED, CoST, default_implementation, tuned_key, valid_implementations
from pipelines import files

AUTOTUNE_HELP = (
    "Before the first step, time every CoST implementation per layer on this device and run the "
    "fastest (cached; --noautotune: the per-device-kind defaults)."
)
CACHE_ENV = "COST_TF_AUTOTUNE_CACHE"
CACHE_FILE = "autotune.json"
_CACHE_VERSION = 1
# The device kind's default stays unless another candidate is faster by more than this fraction: short
# measurements on a loaded machine are noisy, and a near tie is not worth a change.
TIE = 0.05
# Config entries that do not change the computation's speed (kept out of the cache key).
_NOT_IN_KEY = ("name", "implementation", "kernel_initializer", "kernel_regularizer", "trainable", "dtype")


def default_cache_dir():
    """$COST_TF_AUTOTUNE_CACHE, else $XDG_CACHE_HOME/cost_tf, else ~/.cache/cost_tf."""
    if os.environ.get(CACHE_ENV):
        return os.environ[CACHE_ENV]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "cost_tf")


def cpu_model():
    """The CPU's model name as the machine reports it (/proc/cpuinfo), with the core count."""
    name = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def machine():
    """One line for benchmark reports: the CPU model, GPUs, TF/Keras versions and the load average."""
    import keras

    gpus = [
        tf.config.experimental.get_device_details(g).get("device_name", g.name)
        for g in tf.config.list_physical_devices("GPU")
    ]
    return (
        f"CPU: {cpu_model()}; GPU: {', '.join(gpus) or 'none'}; TensorFlow {tf.__version__}, Keras "
        f"{keras.__version__}; load average {os.getloadavg()[0]:.1f}"
    )


def device_description():
    """The GPU's name where TensorFlow sees one (the first), else the CPU model: part of every cache key."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return f"GPU {details.get('device_name', gpus[0].name)}"
    return f"CPU {cpu_model()}"


def cache_key(layer, shape, mode, device=None):
    """The cache key of one layer configuration at input `shape` in `mode` (a JSON string)."""
    config = {k: v for k, v in layer.get_config().items() if k not in _NOT_IN_KEY}
    key = dict(
        config,
        device=device or device_description(),
        tensorflow=tf.__version__,
        shape=[int(s) for s in shape],
        dtype=layer.dtype_policy.name,
        mode=mode,
    )
    return json.dumps(key, sort_keys=True, default=str)


# -- timing -------------------------------------------------------------------------------------------------


def interleaved_min_ms(runs, rounds=3, budget_s=2.0, keep=1.3, first_keep=2.0, clock=time.perf_counter):
    """Best ms of each zero-argument callable in `runs` ({name: fn}), successive-halving style.

    Each fn is traced (`fn.trace()` where present), then called once, timed: that first call also runs
    grappler and allocates, so it only prunes: a fn whose first call took more than `first_keep` x the
    fastest first call is dropped (its ms is that first call's, an upper bound). The rest are timed in rounds
    that call every remaining fn once, so load changes hit all alike; after each round only those within
    `keep` x the best so far go on. It stops after `rounds` rounds, once `budget_s` of timed calls is spent,
    or when one fn is left (at least one timed round always runs). `clock`: seconds (tests pass a fake)."""
    first = {}
    for name, fn in runs.items():
        getattr(fn, "trace", lambda: None)()
        start = clock()
        fn()
        first[name] = (clock() - start) * 1000
    fastest_first = min(first.values())
    active = [name for name in runs if first[name] <= first_keep * fastest_first]
    times = {name: [] for name in active}
    spent = 0.0
    for _ in range(rounds):
        for name in active:
            start = clock()
            runs[name]()
            elapsed = clock() - start
            times[name].append(elapsed * 1000)
            spent += elapsed
        best = min(min(times[name]) for name in active)
        active = [name for name in active if min(times[name]) <= keep * best]
        if spent > budget_s or len(active) < 2:
            break
    return {name: min(times[name]) if times.get(name) else first[name] for name in runs}


def choose(ms, default=None):
    """The fastest implementation in `ms` ({impl: ms}); `default` where it is within TIE of the fastest."""
    best = min(ms, key=ms.get)
    return default if default in ms and ms[default] <= (1 + TIE) * ms[best] else best


def step_function(layer, x, mode):
    """A tf.function running the built `layer` once on `x`: "inference" the forward pass; "training" forward +
    backward, the gradients w.r.t. `x` AND every trainable weight (captured by closure: passed as arguments
    they would become constants and their gradients None). A None gradient raises RuntimeError."""
    weights = layer.trainable_weights

    if mode == "inference":

        @tf.function(autograph=False)
        def step():
            return tf.reduce_sum(tf.cast(layer(x, training=False), tf.float32))
    else:

        @tf.function(autograph=False)
        def step():
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = tf.cast(layer(x, training=True), tf.float32)
                loss = tf.reduce_sum(y * y)
            grads = tape.gradient(loss, [x] + weights)
            if any(g is None for g in grads):
                raise RuntimeError(f"a gradient of {layer.name} is None")
            return tf.add_n([tf.reduce_sum(tf.cast(g, tf.float32)) for g in grads])

    return step


def candidate_fn(layer, shape, mode, implementation, seed=0, built=None):
    """A zero-argument callable running `layer`'s configuration with `implementation` once on random inputs
    of `shape` in `mode`; "training" also takes the gradients w.r.t. the input and every weight. `built`: a
    dict in which the candidate layer and input are kept, so the other mode reuses them (not rebuilt)."""
    built = {} if built is None else built
    key = (implementation, tuple(shape))
    if key not in built:
        config = dict(layer.get_config(), implementation=implementation, name=f"autotune_{implementation}")
        candidate = CoST.from_config(config)
        candidate.build(tuple(shape))
        x = tf.random.stateless_normal(shape, seed=(seed, 0), dtype=layer.input_dtype or "float32")
        built[key] = candidate, x
    candidate, x = built[key]
    step = step_function(candidate, x, mode)

    def run():
        return step().numpy()

    # The timer traces first (run.trace()), so that it times runs only.
    run.trace, run.mode, run.shape, run.implementation = (
        step.get_concrete_function,
        mode,
        tuple(shape),
        implementation,
    )
    run.layer, run.input = candidate, x  # as measured: the layer's compute dtype, the input's dtype
    return run


# -- the cache ----------------------------------------------------------------------------------------------


def _read_cache(path):
    try:
        with open(path) as f:
            data = json.load(f)
        if data.get("version") != _CACHE_VERSION or not isinstance(data.get("entries"), dict):
            raise ValueError(f"not a version-{_CACHE_VERSION} autotune cache")
        return data["entries"]
    except (FileNotFoundError, NotADirectoryError):
        return {}
    except (OSError, ValueError, AttributeError) as e:
        warnings.warn(
            f"autotune: ignoring the unreadable cache {path} ({e}); measuring instead.", stacklevel=2
        )
        return {}


def _write_cache(path, new_entries):
    """Merges `new_entries` into the cache file atomically (temp file, then rename); warns on failure."""
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a broken file was reported when it was read
            entries = _read_cache(path)
        entries.update(new_entries)
        files.write_json(path, {"version": _CACHE_VERSION, "entries": entries}, indent=1)
    except OSError as e:
        warnings.warn(
            f"autotune: could not write the cache {path} ({e}); the choices hold for this process only.",
            stacklevel=2,
        )


# -- layers and their input shapes --------------------------------------------------------------------------


def cost_layers(model_or_layer):
    """Every CoST layer in a layer or (nested) model, in order, each once."""
    found, seen = [], set()

    def visit(layer):
        if id(layer) in seen:
            return
        seen.add(id(layer))
        if isinstance(layer, CoST):
            found.append(layer)
        for sub in getattr(layer, "layers", ()):
            visit(sub)

    visit(model_or_layer)
    return found


def _traced_input_shapes(model, shape):
    """{id(CoST layer): its input shape} from tracing `model` on a TensorSpec of `shape`."""
    shapes = {}
    original = CoST.call

    def recording(self, inputs, *args, **kwargs):
        shapes.setdefault(id(self), tuple(inputs.shape))
        return original(self, inputs, *args, **kwargs)

    CoST.call = recording
    try:
        tf.function(lambda clip: model(clip, training=False)).get_concrete_function(
            tf.TensorSpec(shape, model.inputs[0].dtype if getattr(model, "inputs", None) else tf.float32)
        )
    finally:
        CoST.call = original
    return shapes


def input_shapes(model_or_layer, input_shape):
    """[(CoST layer, its concrete input shape)] for a model or layer fed `input_shape`."""
    input_shape = tuple(int(s) for s in input_shape)
    if isinstance(model_or_layer, CoST):
        if len(input_shape) != 5:
            raise ValueError(
                f"A CoST layer takes (N, T, H, W, C) inputs. Received: input_shape={input_shape}"
            )
        if not model_or_layer.built:
            model_or_layer.build(input_shape)
        return [(model_or_layer, input_shape)]
    layers = cost_layers(model_or_layer)
    static = None
    inputs = getattr(model_or_layer, "inputs", None)
    if inputs and len(inputs) == 1 and tuple(inputs[0].shape[1:]) == input_shape[1:]:
        try:
            static = {id(layer): (input_shape[0],) + tuple(layer.input.shape[1:]) for layer in layers}
        except (AttributeError, ValueError):
            static = None
        if static and any(s is None for shape in static.values() for s in shape):
            static = None
    shapes = static or _traced_input_shapes(model_or_layer, input_shape)
    missing = [layer.name for layer in layers if id(layer) not in shapes]
    if missing:
        raise ValueError(
            f"autotune: these CoST layers were not reached by an input of shape {input_shape}: {missing}"
        )
    return [(layer, tuple(int(s) for s in shapes[id(layer)])) for layer in layers]


# -- autotune -----------------------------------------------------------------------------------------------


def autotune(
    model_or_layer,
    input_shape,
    modes=MODES,
    cache_dir=None,
    use_cache=True,
    max_batch=1,
    timer=None,
    verbose=False,
):
    """Measures and sets the fastest implementation of every CoST layer (implementation="auto") per mode.

    Args:
      model_or_layer: a keras Model (functional, nested or subclassed) or one CoST layer.
      input_shape: the input's (N, T, H, W, C).
      modes: which of ("inference", "training") to tune.
      cache_dir: folder of the cache file (default: default_cache_dir()).
      use_cache: False measures everything again (and still updates the cache).
      max_batch: the batch actually measured, min(N, max_batch). The ranking depends on the per-frame work
        (every candidate's time grows alike with the batch; docs/PERFORMANCE.md, "Autotuning cost"), and a
        larger batch makes every measurement longer: 1 keeps a whole R50 within a minute; pass more for a
        closer look.
      timer: fn({implementation: zero-argument callable}) -> {implementation: ms}; default
        interleaved_min_ms (tests pass a fake one).
      verbose: print one line per measured configuration.
    Returns:
      {layer name: {"inference": impl, "training": impl, "ms": {mode: {impl: ms}}, "cached": bool,
       "explicit": bool}}: "ms" as measured (now, or when cached; empty for explicit layers), "cached"
      True where nothing was measured in this call; modes not tuned are left out.
    """
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise ValueError(f"`modes` must be a non-empty subset of {MODES}. Received: modes={modes!r}")
    if max_batch < 1:
        raise ValueError(f"`max_batch` must be >= 1. Received: max_batch={max_batch}")
    timer = timer or interleaved_min_ms
    input_shape = tuple(int(s) for s in input_shape)
    input_shape = (min(input_shape[0], max_batch),) + input_shape[1:]
    path = os.path.join(cache_dir or default_cache_dir(), CACHE_FILE)
    logger = tf.get_logger()
    level = logger.level
    logger.setLevel("ERROR")  # one tf.function per candidate trips TF's retracing warning
    try:
        return _autotune(model_or_layer, input_shape, modes, path, use_cache, timer, verbose)
    finally:
        logger.setLevel(level)


def _autotune(model_or_layer, input_shape, modes, path, use_cache, timer, verbose):
    device = device_description()
    cache = _read_cache(path) if use_cache else {}
    new_entries, measured = {}, {}
    report = {}
    for layer, shape in input_shapes(model_or_layer, input_shape):
        if layer.implementation != "auto":
            report[layer.name] = dict(
                dict.fromkeys(modes, layer.implementation), ms={}, cached=False, explicit=True
            )
            continue
        entry = {"ms": {}, "cached": True, "explicit": False}
        built = {}  # candidate layers and inputs of this configuration, shared by its modes
        for mode in modes:
            key = cache_key(layer, shape, mode, device)
            hit = measured.get(key) or new_entries.get(key) or cache.get(key)
            valid = valid_implementations(layer.variant, layer.strides)
            if hit is None or hit.get("choice") not in valid:
                runs = {impl: candidate_fn(layer, shape, mode, impl, built=built) for impl in valid}
                ms = {impl: float(v) for impl, v in timer(runs).items()}
                del runs
                hit = {
                    "choice": choose(
                        ms, default_implementation(layer.variant, layer.strides, mode == "training")
                    ),
                    "ms": ms,
                }
                new_entries[key] = hit
                measured[key] = hit
                entry["ms"][mode] = ms
                entry["cached"] = False
                if verbose:
                    print(
                        f"autotune: {layer.name} {mode} {shape} {layer.dtype_policy.name}: "
                        + ", ".join(f"{k} {v:.1f} ms" for k, v in sorted(ms.items(), key=lambda kv: kv[1])),
                        flush=True,
                    )
            elif key in measured:
                entry["cached"] = False
            entry["ms"][mode] = hit["ms"]
            entry[mode] = hit["choice"]
            TUNED[tuned_key(layer, mode, shape)] = hit["choice"]
        del built
        if not entry["cached"]:
            gc.collect()  # the candidates' graphs and buffers, before the next configuration's
        layer.set_tuned_implementations(**{m: entry[m] for m in modes})
        report[layer.name] = entry
    if new_entries:
        _write_cache(path, new_entries)
    return report


def summary(report, seconds):
    """The one line the mains print: "autotune: N CoST layers (k measured, c cached, e explicit): inference
    sparse x12, ...; training ...; S s"."""
    if not report:
        return f"autotune: no CoST layer to tune, {seconds:.1f} s"
    counts = {"measured": 0, "cached": 0, "explicit": 0}
    chosen = {}
    for entry in report.values():
        counts["explicit" if entry["explicit"] else "cached" if entry["cached"] else "measured"] += 1
        for mode in MODES:
            if mode in entry:
                chosen.setdefault(mode, {}).setdefault(entry[mode], 0)
                chosen[mode][entry[mode]] += 1
    parts = [
        "; ".join(
            f"{mode} " + ", ".join(f"{impl} x{n}" for impl, n in sorted(c.items()))
            for mode, c in chosen.items()
        )
    ]
    return (
        f"autotune: {len(report)} CoST layers ({counts['measured']} measured, {counts['cached']} cached, "
        f"{counts['explicit']} explicit) chosen {parts[0]}; {seconds:.1f} s"
    )


def main_input_shape(model, num_frames=None, crop_size=None, batch=1):
    """A concrete (batch, T, S, S, 3) for a main to autotune `model` at: the flags' T and crop where given
    (0 or None: the model's, else 8 frames / 224 pixels)."""
    _, frames, size = tuple(model.input_shape)[:3]
    return batch, num_frames or frames or 8, crop_size or size or 224, crop_size or size or 224, 3


def autotune_for_main(model, input_shape, enabled=True, modes=MODES, cache_dir=None):
    """What the train/evaluate/export mains call before their first step: autotune (if `enabled`), print and
    return the one summary line. Disabled, "auto" runs the per-device-kind defaults (cost_tf.cost.DEFAULTS)."""
    if not enabled:
        line = "autotune: off (--noautotune); CoST implementation='auto' runs the per-device-kind defaults"
    elif not cost_layers(model):
        line = "autotune: no CoST layer to tune"
    else:
        start = time.perf_counter()
        report = autotune(model, input_shape, modes=modes, cache_dir=cache_dir)
        line = summary(report, time.perf_counter() - start)
    print(line, flush=True)
    return line
