"""The operator registry: built-in operators register by decorator, plugins by entry point.

A plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."adaptconv.ops"]
    myop = "my_package.module:MyOpClass"

where ``MyOpClass`` subclasses :class:`adaptconv.AdaptiveConv2d` (or, for an operator of another
kind — an upsampler or a refiner — :class:`adaptconv.ops.base.AdaptiveModule`). Plugins are discovered the first
time the registry is read. A plugin that fails to import, or that names a non-operator, is recorded
(see :func:`plugin_errors`) and logged, and everything else keeps working; a plugin whose name is
already taken is refused with an error naming both sources.
"""

from __future__ import annotations

import importlib
import logging
import re
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Callable, TypeVar

from .base import OP_KINDS, AdaptiveConv2d, AdaptiveModule

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "adaptconv.ops"
T = TypeVar("T", bound=type[AdaptiveConv2d] | type[AdaptiveModule])
AnyOp = type[AdaptiveConv2d] | type[AdaptiveModule]
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")

_BUILTIN_MODULES = (
    "adaptconv.ops.conv",
    "adaptconv.ops.pac",
    "adaptconv.ops.paka",
    "adaptconv.ops.acda",
    "adaptconv.ops.dfn",
    "adaptconv.ops.deform",
    "adaptconv.ops.condconv",
    "adaptconv.ops.dynconv",
    "adaptconv.ops.carafe",
    "adaptconv.ops.paccrf",
    "adaptconv.ops.involution",
    "adaptconv.ops.ddf",
    "adaptconv.ops.sparse_gated",
    "adaptconv.ops.odconv",
)


class OpRegistryError(Exception):
    """A registration conflict or a lookup of an unknown operator."""


@dataclass(frozen=True)
class PluginError:
    entry_point: str  # "name = module:attr"
    distribution: str
    error: str


_REGISTRY: dict[str, AnyOp] = {}
_SOURCES: dict[str, str] = {}
_PLUGIN_ERRORS: list[PluginError] = []
_discovered = False


def _source_of(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _add(name: str, cls: AnyOp, source: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise OpRegistryError(f"operator name must be an identifier-like string, got {name!r} (from {source})")
    if not (isinstance(cls, type) and issubclass(cls, (AdaptiveConv2d, AdaptiveModule))):
        raise OpRegistryError(f"{source} registers {name!r} but is not an AdaptiveConv2d subclass "
                              "(nor an AdaptiveModule of another kind)")
    # a conv must be an AdaptiveConv2d, any other kind an AdaptiveModule: the checks rely on it
    if cls.kind not in OP_KINDS or issubclass(cls, AdaptiveConv2d) != (cls.kind == "conv"):
        raise OpRegistryError(f"{source} registers {name!r} with kind={cls.kind!r}; AdaptiveConv2d subclasses "
                              f"are kind 'conv', AdaptiveModule subclasses one of {OP_KINDS[1:]}")
    existing = _REGISTRY.get(name)
    if existing is not None:
        if existing is cls:
            return
        raise OpRegistryError(
            f"operator name {name!r} is already registered by {_SOURCES[name]}; {source} tries to register it again"
        )
    own_name = cls.__dict__.get("name")  # a subclass of a registered operator may take a new name
    if own_name and own_name != name:
        raise OpRegistryError(f"{source} is already registered as {cls.name!r}; it cannot also be {name!r}")
    cls.name = name
    _REGISTRY[name] = cls
    _SOURCES[name] = source


def register_op(name: str) -> Callable[[T], T]:
    """Class decorator registering an :class:`AdaptiveConv2d` (or :class:`AdaptiveModule`) subclass under ``name``."""

    def decorate(cls: T) -> T:
        if cls.__module__ not in _BUILTIN_MODULES:
            _ensure_loaded()  # so a clash with a built-in or plugin is caught whatever the import order
        _add(name, cls, _source_of(cls))
        return cls

    return decorate


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def _discover_plugins() -> None:
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        dist = getattr(getattr(ep, "dist", None), "name", "?")
        label = f"{ep.name} = {ep.value}"
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not break the suite
            err = PluginError(label, dist, f"import failed: {type(exc).__name__}: {exc}")
        else:
            try:
                _add(ep.name, cls, f"plugin {dist} ({ep.value})")
                continue
            except OpRegistryError as exc:
                err = PluginError(label, dist, str(exc))
        _PLUGIN_ERRORS.append(err)
        log.warning("adaptconv plugin %s from %s was not loaded: %s", label, dist, err.error)


def _ensure_loaded() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    _load_builtins()
    _discover_plugins()


def reload_plugins() -> None:
    """Forget plugin registrations and errors, then discover entry points again (for tests and tools)."""
    global _discovered
    _ensure_loaded()
    for name in [n for n, src in _SOURCES.items() if src.startswith("plugin ")]:
        cls = _REGISTRY.pop(name)
        del _SOURCES[name]
        cls.name = ""
    _PLUGIN_ERRORS.clear()
    _discover_plugins()


def list_ops(kind: str | None = None) -> list[str]:
    """Names of every registered operator, built-in and plugin, sorted; only those of ``kind``
    ("conv", "upsampler", "refiner") when given."""
    _ensure_loaded()
    if kind is not None and kind not in OP_KINDS:
        raise ValueError(f"kind must be one of {OP_KINDS}, got {kind!r}")
    return sorted(n for n, cls in _REGISTRY.items() if kind is None or cls.kind == kind)


def op_kind(name: str) -> str:
    """The kind of operator ``name``: "conv" (drop-in nn.Conv2d), "upsampler" or "refiner"."""
    return get_op(name).kind


def get_op(name: str) -> AnyOp:
    """The operator class registered under ``name``."""
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, _REGISTRY, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        failed = [e for e in _PLUGIN_ERRORS if e.entry_point.split(" = ")[0] == name]
        if failed:
            hint += f" (a plugin providing {name!r} failed to load: {failed[0].error})"
        raise OpRegistryError(f"unknown operator {name!r}{hint}; known: {', '.join(sorted(_REGISTRY))}") from None


def op_source(name: str) -> str:
    """Where ``name`` was registered from ("module:Class" or "plugin DIST (module:Class)")."""
    _ensure_loaded()
    get_op(name)
    return _SOURCES[name]


def plugin_errors() -> list[PluginError]:
    """Plugins that could not be loaded, with the reason."""
    _ensure_loaded()
    return list(_PLUGIN_ERRORS)


def create_op(name: str, in_channels: int, out_channels: int, kernel_size, **kwargs: Any) -> AdaptiveConv2d:
    """Build operator ``name`` with nn.Conv2d's arguments plus its own options."""
    cls = get_op(name)
    if cls.kind != "conv":
        raise OpRegistryError(f"{name!r} is an operator of kind {cls.kind!r}, not a convolution: build it with "
                              f"get_op({name!r})(channels, ...) instead of create_op")
    try:
        return cls(in_channels, out_channels, kernel_size, **kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            import inspect

            params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
            raise TypeError(f"{name}: {exc}; accepted arguments: {', '.join(params)}") from None
        raise
