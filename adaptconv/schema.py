"""Validation of plain mappings (YAML, CLI key=value) into typed dataclasses, with errors a user can act on.

``parse(Cls, mapping, where="trial")`` checks every key against the dataclass fields (unknown keys get
a did-you-mean and the list of allowed keys), checks types (int, float, bool, str, Literal choices,
lists, optional values, nested dataclasses, free-form dicts), and reports the dotted key path of
every problem at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin


class ConfigError(ValueError):
    """One or more problems in a configuration, each with its key path."""

    def __init__(self, problems: list[str], where: str = "") -> None:
        self.problems = problems
        self.where = where
        head = f"invalid {where}: " if where else "invalid configuration: "
        super().__init__(head + ("; ".join(problems) if len(problems) == 1 else "\n  - " + "\n  - ".join(problems)))


class FileConfigError(ConfigError):
    """Problems in one configuration file (a suite, a claims file), each naming its key path and line;
    the message starts with the file. Subclasses say what the file is (``kind``)."""

    kind = "configuration"

    def __init__(self, problems: list[str], path) -> None:
        self.path = str(path)
        ValueError.__init__(self, f"{path}: invalid {self.kind}:\n  - " + "\n  - ".join(problems))
        self.problems = problems
        self.where = str(path)


def did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {_type_name(args[0])}" if args else "list"
    if origin is dict:
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _convert(value: Any, tp, path: str, problems: list[str]) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        choices = get_args(tp)
        if value in choices:
            return value
        problems.append(
            f"{path}: {value!r} is not one of {', '.join(map(repr, choices))}{did_you_mean(value, choices)}"
        )
        return None
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:  # an optional value: the value's own message (choices, did-you-mean) says more
            return _convert(value, others[0], path, problems)
        for arg in args:
            if arg is type(None):
                continue
            trial: list[str] = []
            out = _convert(value, arg, path, trial)
            if not trial:
                return out
        problems.append(f"{path}: expected {_type_name(tp)}, got {value!r}")
        return None
    if origin in (list, tuple):
        (item_tp,) = get_args(tp)[:1] or (Any,)
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            problems.append(f"{path}: expected a list, got {value!r}")
            return None
        return [_convert(v, item_tp, f"{path}[{i}]", problems) for i, v in enumerate(value)]
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            problems.append(f"{path}: expected a mapping, got {value!r}")
            return None
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            problems.append(
                f"{path}: expected a mapping with keys {', '.join(f.name for f in dataclasses.fields(tp))}, "
                f"got {value!r}"
            )
            return None
        return _parse(tp, value, path, problems)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else as_float(value)
        if number is not None:
            if not math.isfinite(number):  # a config is hashed as strict JSON, and nothing here means inf
                problems.append(f"{path}: expected a finite number, got {value!r}")
                return None
            return number
        if isinstance(value, str):
            problems.append(
                f"{path}: expected float, got {value!r}, which is not a number (write e.g. 0.001, 1e-3 or 1.0e-3)"
            )
            return None
    elif tp is str:
        if isinstance(value, str):
            return value
    elif isinstance(value, tp):
        return value
    problems.append(f"{path}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")
    return None


def as_float(value: Any) -> float | None:
    """A string that Python's ``float()`` reads (``"1e-3"``, ``"1_000.5"``, ``" 2 "``, ``"inf"``), as a
    float; None for anything else. YAML 1.1 (PyYAML) reads ``1e-3`` as a string — only ``1.0e-3`` is a
    float there — so a float field accepts what a user means by a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


@functools.cache
def _schema_of(cls) -> tuple[dict, dict]:
    """(type hints, init fields) of a dataclass; resolving string annotations is slow, so once per class."""
    return typing.get_type_hints(cls), {f.name: f for f in dataclasses.fields(cls) if f.init}


def _parse(cls, mapping: dict, path: str, problems: list[str]):
    hints, fields = _schema_of(cls)
    kwargs = {}
    for key, value in mapping.items():
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            problems.append(f"{where}: unknown key{did_you_mean(key, fields)}; allowed: {', '.join(fields)}")
            continue
        kwargs[key] = _convert(value, hints[key], f"{path}.{key}" if path else key, problems)
    for name, f in fields.items():
        if name not in mapping and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{path + '.' if path else ''}{name}: required key is missing")
    if problems:
        return None
    return cls(**kwargs)


def parse(cls, mapping: dict, where: str = "", validate: bool = True) -> Any:
    """Build dataclass ``cls`` from ``mapping``, raising :class:`ConfigError` listing every problem
    (with ``validate``, also those of the dataclass's own ``validate()``)."""
    if not isinstance(mapping, dict):
        raise ConfigError([f"expected a mapping, got {type(mapping).__name__}"], where)
    problems: list[str] = []
    out = _parse(cls, mapping, "", problems)
    if problems:
        raise ConfigError(problems, where)
    post = getattr(out, "validate", None) if validate else None
    if post is not None:
        extra = post()
        if extra:
            raise ConfigError(extra, where)
    return out


def set_dotted(mapping: dict, dotted: str, value: Any) -> None:
    """``set_dotted(d, "optimizer.lr", 0.1)`` → ``d["optimizer"]["lr"] = 0.1``, creating the levels that
    are missing or null (``swap: null`` then ``swap.stages``). A level that holds another value is an
    error naming it: setting inside it would silently throw that value away."""
    keys = dotted.split(".")
    node = mapping
    for i, k in enumerate(keys[:-1]):
        if node.get(k) is None:
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise ConfigError(
                [f"{dotted}: {'.'.join(keys[: i + 1])} is {node!r}, not a mapping to set {'.'.join(keys[i + 1 :])} in"]
            )
    node[keys[-1]] = value


def flatten_config(mapping: dict, prefix: str = "", keep_empty: bool = True) -> dict[str, Any]:
    """Nested config → dotted keys (``{"op_options": {"k": 1}}`` → ``{"op_options.k": 1}``). An empty
    mapping stays as a value with ``keep_empty``, else it adds no key."""
    out = {}
    for k, v in mapping.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and (v or not keep_empty):
            out.update(flatten_config(v, key + ".", keep_empty))
        else:
            out[key] = v
    return out


def to_dict(obj) -> Any:
    """A dataclass tree as plain JSON-friendly data."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj
