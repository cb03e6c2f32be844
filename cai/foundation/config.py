"""Job configs: YAML files and `--key value` overrides into typed dataclasses.

Unknown keys fail loudly with the file and key named (and a did-you-mean); values are checked
against the field's type. The resolved config is what jobs write into their manifest.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path

import yaml

from cai.foundation.errors import CaiError


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise CaiError(f"{path}: cannot read ({e.strerror or e})") from None
    except UnicodeDecodeError:
        raise CaiError(f"{path}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise CaiError(f"{path}{f':{mark.line + 1}' if mark else ''}: not valid YAML "
                       f"({getattr(e, 'problem', e)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CaiError(f"{path}: expected a mapping of option names to values")
    return data


def key_lines(path) -> dict[tuple, int]:
    """1-based line of each top-level key and each section's key: {(section,): n, (s, k): n}."""
    try:
        node = yaml.compose(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return {}
    out = {}
    if isinstance(node, yaml.MappingNode):
        for key, body in node.value:
            out[(key.value,)] = key.start_mark.line + 1
            if isinstance(body, yaml.MappingNode):
                for sub, _ in body.value:
                    out[(key.value, sub.value)] = sub.start_mark.line + 1
    return out


def coerce(value, hint, where: str):
    """`value` checked (and, for CLI strings, converted) against a type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return coerce(value, args[0], where)
    if hint is typing.Any or hint is None:
        return value
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(hint) or (typing.Any,)
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise CaiError(f"{where}: expected a list, got {value!r}")
        return [coerce(v, inner, where) for v in value]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise CaiError(f"{where}: expected a mapping, got {value!r}")
        return value
    if hint is bool:
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
            return value.lower() in ("true", "1", "yes")
        if not isinstance(value, bool):
            raise CaiError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint in (int, float):
        kind = "an integer" if hint is int else "a number"
        if isinstance(value, bool):
            raise CaiError(f"{where}: expected {kind}, got {value!r}")
        try:
            converted = hint(value)
        except (TypeError, ValueError):
            raise CaiError(f"{where}: expected {kind}, got {value!r}") from None
        except OverflowError:  # int(inf)
            converted = math.inf
        if not math.isfinite(converted):
            raise CaiError(f"{where}: expected {kind}, not {value!r} (a finite value)")
        if hint is int and isinstance(value, float) and value != converted:
            raise CaiError(f"{where}: expected an integer, got {value!r}")
        return converted
    if hint is str:
        if value is None:
            raise CaiError(f"{where}: expected text, got null")
        if isinstance(value, (dict, list)):
            raise CaiError(f"{where}: expected text, got {value!r}")
        return str(value)
    return value


def build(cls, values: dict, source: str, cli_keys=()):
    """An instance of dataclass `cls` from `values`; unknown keys and bad types name `source`
    (or the `--option` for `cli_keys`, the values given on the command line)."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    names = list(fields)
    kwargs = {}
    for key, value in values.items():
        if key not in hints:
            match = difflib.get_close_matches(str(key), names, n=1)
            raise CaiError(f"{source}: unknown key '{key}'"
                           + (f" (did you mean '{match[0]}'?)" if match else ""))
        where = f"--{key.replace('_', '-')}" if key in cli_keys else f"{source}: '{key}'"
        kwargs[key] = coerce(value, hints[key], where)
        check_minimum(fields[key], kwargs[key], where)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
                   and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        raise CaiError(f"{source}: missing {', '.join(missing) or e}") from None


def load(cls, config_file: str | None, overrides: dict):
    """Config file values, then non-None CLI overrides on top."""
    values = read_yaml(config_file) if config_file else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    return build(cls, values, config_file or "options", cli_keys=set(given))


def as_dict(config) -> dict:
    return dataclasses.asdict(config)


def opt(default=None, help: str = "", factory=None, minimum=None):
    """A config field with its help text (shown by `--help` and kept next to the default) and,
    for a number, the smallest value it takes (checked when a config loads)."""
    metadata = {"help": help} if minimum is None else {"help": help, "minimum": minimum}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_minimum(field: dataclasses.Field, value, where: str) -> None:
    low = field.metadata.get("minimum")
    if low is not None and value is not None and value < low:
        raise CaiError(f"{where} must be at least {low}, got {value!r}")


def add_arguments(parser, cls, skip=()) -> None:
    """One `--field-name` option per dataclass field; values stay None unless given."""
    import argparse

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or typing.get_origin(hints[f.name]) is dict or hints[f.name] is dict:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else None
        text = f.metadata.get("help", "")
        if default not in (None, "", []):
            text += f" (default: {default})"
        if hints[f.name] is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=None, help=text)
        else:
            parser.add_argument(flag, dest=f.name, default=None, help=text,
                                metavar=f.name.upper())


def overrides(args, cls) -> dict:
    """The options a user gave on the command line, by field name."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
