"""`make bench`: every benchmark in one run, written to docs/PERFORMANCE.md with the machine described.

    python -m bench.run_all [--out=docs/PERFORMANCE.md] [--only=layer,ceiling,model,pipeline,export]

Each benchmark runs in its own process (they define their own flags) and prints markdown; this collects the
outputs under one header that names the CPU, core count and TensorFlow build, and adds the machine's float32
ceiling: the achieved GFLOP/s of the CoST layer against a large float32 matmul timed in the same run.
The hand-written analysis at the end of the old report (from NOTES_MARKER on) is carried over as it is.
"""

import os
import platform
import subprocess
import sys
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from bench import timing
from cost_tf.cost import CoST
from pipelines import files

BENCHES = {
    "layer": ["-m", "bench.layer_bench"],
    "model": ["-m", "bench.model_bench"],
    "pipeline": ["-m", "bench.pipeline_bench"],
    "export": ["-m", "bench.export_bench"],
}


def machine_description():
    build = tf.sysconfig.get_build_info()
    onednn = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default (on for x86 builds)")
    load = os.getloadavg()
    return (
        f"- CPU: {timing.cpu_model()}, {os.cpu_count()} cores; load average at start {load[0]:.2f}\n"
        f"- TensorFlow {tf.__version__} (CUDA build: {build.get('is_cuda_build', False)}), oneDNN: {onednn}\n"
        f"- Python {platform.python_version()}, {platform.platform()}\n"
    )


def _median_s(fn, runs=10):
    return timing.median(fn, runs)


def ceiling():
    """GFLOP/s of a 2048² float32 matmul vs the CoST(a)/(b) layer forward at the res3 shape, same process."""
    a = tf.constant(np.random.default_rng(0).normal(size=(2048, 2048)).astype("float32"))
    matmul = tf.function(lambda: tf.linalg.matmul(a, a))
    matmul_gflops = 2 * 2048**3 / _median_s(lambda: matmul().numpy()) / 1e9
    n, t, h, w, c = 2, 8, 28, 28, 128
    x = tf.constant(np.random.default_rng(1).normal(size=(n, t, h, w, c)).astype("float32"))
    lines = [f"| float32 matmul 2048² | {matmul_gflops:.1f} | 1.00 |"]
    for variant, impl, taps in (("a", "auto", 19), ("a", "fused", 27), ("b", "views", 27)):
        layer = CoST(c, variant, implementation=impl)
        layer(x)
        fn = tf.function(lambda layer=layer: layer(x, training=False))
        flops = 2 * n * t * h * w * c * c * taps
        gflops = flops / _median_s(lambda fn=fn: fn().numpy()) / 1e9
        lines.append(
            f"| CoST({variant}) {impl} forward, res3, {taps} taps counted | {gflops:.1f} | "
            f"{gflops / matmul_gflops:.2f} |"
        )
    return "| kernel | GFLOP/s | of matmul |\n|---|---|---|\n" + "\n".join(lines) + "\n"


NOTES_MARKER = "<!-- notes below are kept by make bench -->"


def kept_notes(path):
    """The hand-written part of an earlier report (from NOTES_MARKER on), or "" if there is none."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return ""
    return text[text.index(NOTES_MARKER) :] if NOTES_MARKER in text else ""


_OUT = flags.DEFINE_string("out", "docs/PERFORMANCE.md", "Report path (written atomically).")
_ONLY = flags.DEFINE_list("only", ["layer", "ceiling", "model", "pipeline", "export"], "Which parts to run.")


def main(argv):
    del argv
    sections = [
        "# Performance\n\nWritten by `make bench` (`python -m bench.run_all`). Every ratio below was "
        "measured side by side in one process; absolute times depend on the machine and its load.\n\n"
        "## Machine\n\n" + machine_description()
    ]
    for name in _ONLY.value:
        start = time.time()
        if name == "ceiling":
            body = ceiling()
        else:
            proc = subprocess.run([sys.executable] + BENCHES[name], capture_output=True, text=True)
            body = (
                proc.stdout
                if proc.returncode == 0
                else (f"FAILED (exit {proc.returncode}):\n\n```\n{proc.stderr[-3000:]}\n```\n")
            )
        sections.append(
            f"## {name} (`{' '.join(BENCHES.get(name, ['bench.run_all ceiling']))}`, "
            f"{time.time() - start:.0f} s)\n\n{body}"
        )
        print(sections[-1], flush=True)
    notes = kept_notes(_OUT.value)
    if notes:
        sections.append(notes)
    files.write_atomic(_OUT.value, "\n".join(sections))
    print(f"Wrote {_OUT.value}")


if __name__ == "__main__":
    app.run(main)
