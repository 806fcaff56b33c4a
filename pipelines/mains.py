"""What every command-line main shares: flags generated from a config dataclass, one way to exit on bad input.

A main is the `__main__.py` of its package (`python -m cost_tf.train` runs cost_tf/train/__main__.py, while
`import cost_tf.train` is the flag-free library). It defines its flags at module level as absl FlagHolders,
reads their `.value` in `main`, and calls the library. Config dataclasses document their fields with
`option(...)`; `define_flags` turns those into flags, so a field and its flag cannot drift apart.
"""

import contextlib
import dataclasses
import sys
import typing

from absl import flags

# Flags defined here on a main's behalf belong to that main (they are listed by its --help).
flags.disclaim_key_flags()

EXIT_USAGE = 2  # bad flags or bad input files (argparse's convention)


def option(default, help, *, flag=None, choices=None, convert=None):
    """A dataclass field that is also a command-line flag.

    Args:
      default: the field's default (also the flag's, unless `define_flags` is given another).
      help: the flag's help text.
      flag: the flag's name when it differs from the field's (e.g. "class" for `class_index`).
      choices: allowed values (an enum flag).
      convert: applied to the flag's value by `config_from_flags` (e.g. str -> int).
    """
    return dataclasses.field(
        default=default, metadata={"help": help, "flag": flag, "choices": choices, "convert": convert}
    )


def _flag_fields(config_cls):
    hints = typing.get_type_hints(config_cls)
    for field in dataclasses.fields(config_cls):
        if "help" in field.metadata:
            yield field, hints[field.name]


def define_flags(config_cls, *, defaults=None, flag_values=None):
    """Defines one flag per `option` field of `config_cls`; returns {field name: FlagHolder}.

    Args:
      config_cls: a dataclass whose flag fields were declared with `option`.
      defaults: {field name: value} overriding the fields' defaults for these flags.
      flag_values: where to define them (default absl's FLAGS; tests pass a fresh FlagValues()).
    """
    fv = flags.FLAGS if flag_values is None else flag_values
    defaults = defaults or {}
    holders = {}
    for field, kind in _flag_fields(config_cls):
        meta = field.metadata
        name = meta["flag"] or field.name
        default = defaults.get(field.name, field.default)
        if meta["choices"] is not None:
            holder = flags.DEFINE_enum(name, default, meta["choices"], meta["help"], flag_values=fv)
        else:
            define = {
                bool: flags.DEFINE_bool,
                int: flags.DEFINE_integer,
                float: flags.DEFINE_float,
                str: flags.DEFINE_string,
                tuple: flags.DEFINE_list,
            }.get(kind)
            if define is None:
                raise TypeError(
                    f"{config_cls.__name__}.{field.name}: no flag type for {kind!r}; give `choices`."
                )
            holder = define(name, default, meta["help"], flag_values=fv)
        holders[field.name] = holder
    return holders


def config_from_flags(config_cls, holders, **values):
    """`config_cls` built from parsed FlagHolders (see define_flags), plus `values` for fields without flags."""
    meta = {field.name: field.metadata for field in dataclasses.fields(config_cls)}
    for name, holder in holders.items():
        value = holder.value
        convert = meta[name].get("convert")
        if convert is not None and value is not None:
            value = convert(value)
        elif isinstance(value, list):
            value = tuple(value)
        values[name] = value
    return config_cls(**values)


def program():
    """The running main as the user typed it: "cost_tf.train" for `python -m cost_tf.train`."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        return spec.name.removesuffix(".__main__")
    return sys.argv[0] if sys.argv and sys.argv[0] else "main"


def fail(message):
    """Exits the main with one line "PROGRAM: error: MESSAGE" on stderr and status 2."""
    print(f"{program()}: error: {message}", file=sys.stderr, flush=True)
    sys.exit(EXIT_USAGE)


@contextlib.contextmanager
def usage_errors(*types):
    """Turns the library's errors about the user's input (default ValueError, OSError) into `fail`."""
    types = types or (ValueError, OSError)
    try:
        yield
    except types as e:
        fail(str(e))


def no_arguments(argv):
    """Fails on positional arguments (every main takes flags only)."""
    if len(argv) > 1:
        fail(f"unexpected arguments: {' '.join(argv[1:])}")
