"""The one timer of bench/: interleaved rounds, wall and CPU time per call.

Every benchmark times its cases in rounds that call each case once, so a change of load during the run (the
machine may be shared) hits every case alike; CPU time (this process, all threads) varies far less with other
jobs than wall time does.
"""

import statistics
import subprocess
import time


def interleaved(fns, runs, warmup=1):
    """Times each fn of `fns` ({name: fn()}) over `runs` interleaved rounds after `warmup` untimed ones.

    Returns:
      {name: {"wall": [s per call], "cpu": [s per call]}} in round order.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1. Received: runs={runs!r}")
    times = {name: {"wall": [], "cpu": []} for name in fns}
    for round_ in range(warmup + runs):
        for name, fn in fns.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            fn()
            wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
            if round_ >= warmup:
                times[name]["wall"].append(wall)
                times[name]["cpu"].append(cpu)
    return times


def medians(fns, runs, warmup=1, clock="wall"):
    """{name: median seconds per call} of `interleaved` for one clock ("wall" or "cpu")."""
    return {name: statistics.median(t[clock]) for name, t in interleaved(fns, runs, warmup).items()}


def median(fn, runs, warmup=1, clock="wall"):
    """Median seconds per call of one fn."""
    return medians({"fn": fn}, runs, warmup, clock)["fn"]


def cpu_model():
    """The CPU model name, from lscpu (else /proc/cpuinfo): every benchmark prints it."""
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"
