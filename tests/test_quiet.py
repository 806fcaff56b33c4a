"""pipelines/quiet.py: `python -m` mains start without TensorFlow's C++ log lines; libraries are untouched."""

import os
import subprocess
import sys

import pytest

from pipelines import quiet

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = ROOT
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )


def test_a_main_prints_only_its_own_error(tmp_path):
    missing = str(tmp_path / "missing.keras")
    result = _run("-m", "cost_tf.evaluate", f"--model={missing}")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"cost_tf.evaluate: error: --model: no such file. Received: model={missing!r}"
    ]
    assert result.stdout == ""


@pytest.mark.parametrize(
    "module",
    [
        "pipelines.kinetics",
        "pipelines.moments",
        "pipelines.annotations",
        "pipelines.readers",
        "pipelines.files",
    ],
)
def test_light_modules_stay_light(module):
    result = _run("-c", f"import sys, {module}; print('tensorflow' in sys.modules, 'av' in sys.modules)")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False"]


@pytest.mark.parametrize(
    "argv, environ",
    [
        (["/usr/bin/script.py"], {}),  # not a `python -m` run (a library import, pytest, a script)
        (["-m"], {"TF_CPP_MIN_LOG_LEVEL": "0"}),  # the user chose a level
        (["-m", "--verbosity=1"], {}),  # absl's flag asks for the logs
        (["-m", "-v", "0"], {}),
    ],
)
def test_nothing_changes_unless_a_main_runs_without_a_choice(argv, environ):
    before = dict(environ)
    assert quiet.quiet_startup(argv=argv, environ=environ) is False
    assert environ == before
