"""Options: YAML files and `--key value` overrides into the typed dataclasses of job configs.

Unknown keys fail loudly with the file and key named (and a did-you-mean); values are checked
against the field's type. The resolved config is what jobs write into their manifest.

A config's options are flat keys wherever a user meets them: YAML keys, `--flags`, JSON Schema
properties and the `as_dict` a manifest holds. A field may hold a small dataclass of its own
(`group`, e.g. a model role: model, engine, dtype, ...), whose attributes are options under flat
keys of their own (`labeler`, `labeler_engine`, ...); `flat_options` lists them all, and a
`flat_init` class takes them as keyword arguments too.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import math
import types
import typing
from collections.abc import Callable
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
    """An instance of dataclass `cls` from `values` by flat key; unknown keys and bad types name
    `source` (or the `--option` for `cli_keys`, the values given on the command line)."""
    known = {o.key: o for o in flat_options(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in known:
            match = difflib.get_close_matches(str(key), list(known), n=1)
            raise CaiError(f"{source}: unknown key '{key}'"
                           + (f" (did you mean '{match[0]}'?)" if match else ""))
        where = f"--{key.replace('_', '-')}" if key in cli_keys else f"{source}: '{key}'"
        kwargs[key] = coerce(value, known[key].hint, where)
        check_minimum(known[key].minimum, kwargs[key], where)
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        missing = [o.key for o in known.values() if o.key not in kwargs and o.required]
        raise CaiError(f"{source}: missing {', '.join(missing) or e}") from None


def load(cls, config_file: str | None, overrides: dict):
    """Config file values, then non-None CLI overrides on top."""
    values = read_yaml(config_file) if config_file else {}
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    return build(cls, values, config_file or "options", cli_keys=set(given))


def as_dict(config) -> dict:
    """The config by its flat keys, values copied: what a manifest holds."""
    return {o.key: copy.deepcopy(o.value(config)) for o in flat_options(type(config))}


def opt(default=None, help: str = "", factory=None, minimum=None):
    """A config field with its help text (shown by `--help` and kept next to the default) and,
    for a number, the smallest value it takes (checked when a config loads)."""
    metadata = {"help": help} if minimum is None else {"help": help, "minimum": minimum}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def check_minimum(low, value, where: str) -> None:
    """A number below its option's floor (`opt(minimum=...)`) is an error naming `where`."""
    if low is not None and value is not None and value < low:
        raise CaiError(f"{where} must be at least {low}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Options: a config's flat keys, groups included


@dataclasses.dataclass(frozen=True)
class Option:
    """One option of a config as users see it: its flat `key` (YAML key, `--key`, schema
    property, `as_dict` key), its type, default and help, and where its value lives: the
    dataclass `field`, or attribute `attr` of the object a `group` field holds."""

    key: str
    field: str
    attr: str | None
    hint: typing.Any
    default: typing.Any = dataclasses.MISSING  # MISSING: made by `factory`, or required
    factory: Callable | None = None
    help: str = ""
    minimum: float | None = None

    @property
    def required(self) -> bool:
        return self.default is dataclasses.MISSING and self.factory is None

    def value(self, config):
        value = getattr(config, self.field)
        return value if self.attr is None else getattr(value, self.attr)


def group(cls, keys: dict[str, str], *, defaults: dict | None = None,
          hints: dict | None = None, help: dict[str, str] | None = None):
    """A config field holding a `cls` object whose attributes are options of their own: attribute
    `a` under the flat key `keys[a]` (an attribute without a key is no option and keeps its
    default). `defaults`, `hints` (types) and `help` are this field's own, over `cls`'s."""
    defaults = dict(defaults or {})
    spec = {"cls": cls, "keys": dict(keys), "defaults": defaults, "hints": dict(hints or {}),
            "help": dict(help or {})}
    return dataclasses.field(default_factory=lambda: cls(**defaults), metadata={"group": spec})


@functools.cache
def flat_options(cls) -> tuple[Option, ...]:
    """Every option of dataclass `cls` in declaration order, a group's in its own order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("group")
        if spec is None:
            out.append(Option(f.name, f.name, None, hints[f.name], f.default,
                              None if f.default_factory is dataclasses.MISSING
                              else f.default_factory,
                              f.metadata.get("help", ""), f.metadata.get("minimum")))
            continue
        inner = typing.get_type_hints(spec["cls"])
        for g in dataclasses.fields(spec["cls"]):
            if g.name not in spec["keys"]:
                continue
            default, factory = (spec["defaults"][g.name], None) if g.name in spec["defaults"] \
                else (g.default, None if g.default_factory is dataclasses.MISSING
                      else g.default_factory)
            out.append(Option(spec["keys"][g.name], f.name, g.name,
                              spec["hints"].get(g.name, inner[g.name]), default, factory,
                              spec["help"].get(g.name, g.metadata.get("help", "")),
                              g.metadata.get("minimum")))
    return tuple(out)


def flat_init(cls):
    """Class decorator for a dataclass with `group` fields: `cls(**values)` takes a group's
    flat keys (`labeler_dtype=...`), as YAML and the command line give them, each over the
    field's defaults; a group given whole, as its object, is taken as a copy."""
    nested_init = cls.__init__
    fields = {f.name: f for f in dataclasses.fields(cls)}

    @functools.wraps(nested_init)
    def __init__(self, **values):
        by_key = {o.key: o for o in flat_options(cls)}
        kwargs, parts = {}, {}
        for key, value in values.items():
            spec = fields[key].metadata.get("group") if key in fields else None
            option = by_key.get(key)
            if spec is not None and isinstance(value, spec["cls"]):
                kwargs[key] = copy.copy(value)  # its own, not shared with another config
            elif option is None or option.attr is None:
                kwargs[key] = value  # a field (an unknown key: the dataclass says so)
            else:
                parts.setdefault(option.field, {})[option.attr] = value
        for name, attrs in parts.items():
            if name in kwargs:
                raise TypeError(f"{name} given whole and by its keys {', '.join(attrs)}")
            kwargs[name] = dataclasses.replace(fields[name].default_factory(), **attrs)
        nested_init(self, **kwargs)

    cls.__init__ = __init__
    return cls


def add_arguments(parser, cls, skip=()) -> None:
    """One `--key-name` option per option of `cls`; values stay None unless given."""
    import argparse

    for o in flat_options(cls):
        if o.key in skip or typing.get_origin(o.hint) is dict or o.hint is dict:
            continue
        flag = "--" + o.key.replace("_", "-")
        default = o.default if o.default is not dataclasses.MISSING else None
        text = o.help
        if default not in (None, "", []):
            text += f" (default: {default})"
        if o.hint is bool:
            parser.add_argument(flag, dest=o.key, action=argparse.BooleanOptionalAction,
                                default=None, help=text)
        else:
            parser.add_argument(flag, dest=o.key, default=None, help=text,
                                metavar=o.key.upper())


def overrides(args, cls) -> dict:
    """The options a user gave on the command line, by flat key."""
    names = {o.key for o in flat_options(cls)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}
