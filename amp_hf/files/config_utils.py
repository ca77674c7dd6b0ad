"""YAML configs with dotted command-line overrides, parsed into (nested) dataclasses.

Unknown keys and wrong types fail fast with a message that names the key and the valid choices, so a typo
in a long run's config is caught before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from ..errors import ConfigError

T = TypeVar("T")


def parse_overrides(overrides: Sequence[str]) -> dict:
    """``["search.delta_e=0.01", "data.source=digits"]`` -> nested dict (values parsed as YAML scalars)."""
    tree: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not KEY=VALUE (e.g. search.delta_e=0.01)")
        node = tree
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {part!r}")
        try:
            node[leaf] = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as error:  # e.g. a !!python/object tag: safe_load refuses to build it
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ConfigError(
                f"override {item!r}: the value is not a plain YAML value ({' '.join(str(problem).split())}); "
                "give a number, string, true/false or a [list]"
            ) from error
    return tree


def merge(base: dict, update: dict) -> dict:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one silently)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(
                    f"key {key!r} appears twice (line {key_node.start_mark.line + 1}): merge the two entries into one"
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict:
    path = Path(os.path.expanduser(str(path)))
    if path.is_dir():
        raise ConfigError(f"config {path} is a folder: pass a YAML file (see configs/ for examples)")
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist (see configs/ for examples)")
    try:
        values = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}): save it as UTF-8") from error
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
    except yaml.YAMLError as error:
        where = getattr(error, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{line} ({problem}): fix the file") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values at top level")
    return values


def build(cls: type[T], values: dict, where: str = "") -> T:
    """Instantiate dataclass ``cls`` from a nested dict, checking keys and simple types."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {type(values).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} {', '.join(where + k for k in unknown)}; "
            f"valid keys{' under ' + where.rstrip('.') if where else ''}: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(hints[name], value, f"{where}{name}")
    try:
        instance = cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: {error}") from error
    return instance


def _coerce(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value or {}, where + ".")
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint)]
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, where)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"{where} must be one of {', '.join(map(repr, choices))}; got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where} must be a list; got {value!r}")
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return [_coerce(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping; got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads exponents without a dot (1e-5) as strings
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number; got {value!r}")
        # every comparison with NaN is false, so NaN would pass each range check of __post_init__; no float
        # option means anything at infinity (an unlimited one is null or a large number)
        if not math.isfinite(value):
            raise ConfigError(f"{where} must be a finite number; got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer; got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false; got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a string; got {value!r}")
        return str(value)
    return value


def load_config(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Read ``path`` (YAML), apply dotted ``overrides``, build and validate ``cls``."""
    return build(cls, config_values(path, overrides))


def config_values(path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict:
    """The values ``path`` (YAML) and the dotted ``overrides`` give, before any dataclass sees them: a missing
    file, bad YAML or a malformed override is refused here, without the (heavy) module of the config class."""
    values = read_yaml(path) if path else {}
    return merge(values, parse_overrides(overrides))

