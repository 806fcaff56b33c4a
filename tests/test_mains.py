"""pipelines.mains: flags generated from a config dataclass, read back into it; the one error exit."""

import dataclasses
import os
import subprocess
import sys

import pytest
from absl import flags

from pipelines import mains


@dataclasses.dataclass(frozen=True)
class _Config:
    name: str = mains.option(None, "A name.")
    count: int = mains.option(3, "A count.")
    rate: float = mains.option(0.5, "A rate.")
    on: bool = mains.option(True, "A switch.")
    steps: tuple = mains.option(None, "Steps.", convert=lambda v: tuple(int(s) for s in v))
    mode: str = mains.option("a", "A mode.", choices=("a", "b"))
    class_index: int = mains.option(None, "A class.", flag="class")
    level: object = mains.option("auto", "A level.", choices=("auto", "0", "1"))
    hidden: int = 7  # no option(): not a flag


def _parse(argv, **kwargs):
    fv = flags.FlagValues()
    holders = mains.define_flags(_Config, flag_values=fv, **kwargs)
    fv(["prog", *argv])
    return fv, holders


def test_one_flag_per_option_field_with_its_type_help_and_default():
    fv, holders = _parse([])
    assert sorted(holders) == ["class_index", "count", "level", "mode", "name", "on", "rate", "steps"]
    assert sorted(fv) == sorted(["name", "count", "rate", "on", "steps", "mode", "class", "level"])
    assert fv["count"].help == "A count." and fv["count"].default == 3
    assert type(fv["rate"]).__name__ == "Flag" and fv["rate"].parser.flag_type() == "float"
    assert (
        fv["on"].parser.flag_type() == "bool"
        and fv["steps"].parser.flag_type() == "comma separated list of strings"
    )
    assert fv["mode"].parser.flag_type() == "string enum" and fv["mode"].parser.enum_values == ["a", "b"]
    assert mains.config_from_flags(_Config, holders) == _Config()


def test_parsed_values_reach_the_config_converted():
    _, holders = _parse(
        [
            "--name=x",
            "--count=5",
            "--rate=0.25",
            "--noon",
            "--steps=3,9",
            "--mode=b",
            "--class=4",
            "--level=1",
        ]
    )
    config = mains.config_from_flags(_Config, holders, hidden=8)
    assert config == _Config("x", 5, 0.25, False, (3, 9), "b", 4, "1", 8)


def test_defaults_can_differ_from_the_fields_and_bad_values_are_refused():
    fv, holders = _parse([], defaults={"count": 9})
    assert holders["count"].value == 9 and _Config().count == 3
    with pytest.raises(flags.IllegalFlagValueError, match="mode"):
        _parse(["--mode=c"])


def test_a_field_type_without_a_flag_type_is_named():
    @dataclasses.dataclass
    class Bad:
        thing: dict = mains.option(None, "A dict.")

    with pytest.raises(TypeError, match=r"Bad\.thing"):
        mains.define_flags(Bad, flag_values=flags.FlagValues())


def test_fail_prints_one_line_with_the_program_and_exits_2(tmp_path):
    package = tmp_path / "prog_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        "import sys\nfrom pipelines import mains\n"
        "mains.no_arguments(sys.argv) if len(sys.argv) > 1 else None\n"
        "with mains.usage_errors():\n    raise ValueError('--x must be positive. Received: x=-1')\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.getcwd()]))
    bad = subprocess.run([sys.executable, "-m", "prog_pkg"], env=env, capture_output=True, text=True)
    assert (bad.returncode, bad.stdout) == (2, "")
    assert bad.stderr == "prog_pkg: error: --x must be positive. Received: x=-1\n"
    extra = subprocess.run(
        [sys.executable, "-m", "prog_pkg", "stray"], env=env, capture_output=True, text=True
    )
    assert (extra.returncode, extra.stderr) == (2, "prog_pkg: error: unexpected arguments: stray\n")


def test_generated_flags_belong_to_the_main_that_asked(tmp_path):
    """--help lists a main's own flags only: those define_flags made for it must be among them."""
    package = tmp_path / "help_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "__main__.py").write_text(
        '"""Usage: python -m help_pkg."""\n'
        "import dataclasses\nfrom absl import app, flags\nfrom pipelines import mains\n\n"
        "@dataclasses.dataclass\nclass C:\n    count: int = mains.option(3, 'How many things.')\n\n"
        "_C = mains.define_flags(C)\n_OWN = flags.DEFINE_bool('own', False, 'Its own flag.')\n"
        "app.run(lambda argv: None)\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.getcwd()]))
    result = subprocess.run(
        [sys.executable, "-m", "help_pkg", "--help"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 1, result.stderr  # absl's --help exits 1
    assert "Usage: python -m help_pkg." in result.stdout
    assert "--count: How many things." in result.stdout and "--[no]own: Its own flag." in result.stdout
