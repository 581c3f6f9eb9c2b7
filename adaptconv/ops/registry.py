"""The operator registry: one :class:`adaptconv.plugins.Registry` of operator classes.

Built-in operators are listed in :data:`adaptconv.plugins.BUILTIN_OPS` (name → ``"module:Class"``) and
each registers itself with :func:`register_op`; a plugin package declares, in its ``pyproject.toml``::

    [project.entry-points."adaptconv.ops"]
    myop = "my_package.module:MyOpClass"

where ``MyOpClass`` subclasses :class:`adaptconv.AdaptiveConv2d` (or, for an operator of another
kind — an upsampler or a refiner — :class:`adaptconv.AdaptiveModule`, whose docstring gives
each kind's constructor; the tasks then take it by name: ``task_options.upsampler: myop``). Operators
are loaded the first time the registry is read. A plugin that fails to import, or that names a
non-operator, is recorded (see :func:`plugin_errors`) and logged, and everything else keeps working; a
plugin whose name is already taken is refused with an error naming both sources.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, TypeVar, cast

from ..plugins import BUILTIN_OPS, OPS_GROUP, PluginError, Registry
from .base import OP_KINDS, AdaptiveConv2d, AdaptiveModule

ENTRY_POINT_GROUP = OPS_GROUP
T = TypeVar("T", bound=type[AdaptiveConv2d] | type[AdaptiveModule])
AnyOp = type[AdaptiveConv2d] | type[AdaptiveModule]
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*")

__all__ = [
    "ENTRY_POINT_GROUP",
    "OpRegistryError",
    "PluginError",
    "create_op",
    "get_op",
    "list_ops",
    "op_kind",
    "op_source",
    "plugin_errors",
    "register_op",
    "reload_plugins",
]


class OpRegistryError(Exception):
    """A registration conflict or a lookup of an unknown operator."""


def _source_of(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _check(name: str, cls: Any, source: str) -> None:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise OpRegistryError(f"operator name must be an identifier-like string, got {name!r} (from {source})")
    if not (isinstance(cls, type) and issubclass(cls, (AdaptiveConv2d, AdaptiveModule))):
        raise OpRegistryError(
            f"{source} registers {name!r} but is not an AdaptiveConv2d subclass (nor an AdaptiveModule of another kind)"
        )
    # a conv must be an AdaptiveConv2d, any other kind an AdaptiveModule: the checks rely on it
    if cls.kind not in OP_KINDS or issubclass(cls, AdaptiveConv2d) != (cls.kind == "conv"):
        raise OpRegistryError(
            f"{source} registers {name!r} with kind={cls.kind!r}; AdaptiveConv2d subclasses "
            f"are kind 'conv', AdaptiveModule subclasses one of {OP_KINDS[1:]}"
        )
    own_name = cls.__dict__.get("name")  # a subclass of a registered operator may take a new name
    if own_name and own_name != name:
        raise OpRegistryError(f"{source} is already registered as {cls.name!r}; it cannot also be {name!r}")


def _named(name: str, cls: AnyOp) -> None:
    cls.name = name


def _unnamed(name: str, cls: AnyOp) -> None:
    cls.name = ""


OPS: Registry[AnyOp] = Registry("operator", OPS_GROUP, BUILTIN_OPS, _check, OpRegistryError, _named, _unnamed)
# the registry's tables under their former names (tests and tools reach into them)
_REGISTRY = OPS.entries
_SOURCES = OPS.sources
_loaded = False


def _add(name: str, cls: AnyOp, source: str) -> None:
    OPS.add(name, cls, source)


def register_op(name: str) -> Callable[[T], T]:
    """Class decorator registering an :class:`AdaptiveConv2d` (or :class:`AdaptiveModule`) subclass under ``name``."""

    def decorate(cls: T) -> T:
        OPS.add(name, cls, _source_of(cls))
        return cls

    return decorate


def _ensure_loaded() -> None:
    # every operator is loaded at the first read: listing by kind needs the classes
    global _loaded
    if not _loaded:
        _loaded = True
        OPS.load_all()


def reload_plugins() -> None:
    """Forget plugin registrations and errors, then discover entry points again (for tests and tools)."""
    _ensure_loaded()
    OPS.reload_plugins()
    OPS.load_all()


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
        raise OpRegistryError(OPS.unknown(name, sorted(_REGISTRY), "known")) from None


def op_source(name: str) -> str:
    """Where ``name`` was registered from ("module:Class" or "plugin DIST (module:Class)")."""
    get_op(name)
    return _SOURCES[name]


def plugin_errors() -> list[PluginError]:
    """Plugins that could not be loaded, with the reason."""
    _ensure_loaded()
    return OPS.errors()


def create_op(name: str, in_channels: int, out_channels: int, kernel_size, **kwargs: Any) -> AdaptiveConv2d:
    """Build operator ``name`` with nn.Conv2d's arguments plus its own options."""
    cls = get_op(name)
    if cls.kind != "conv":
        raise OpRegistryError(
            f"{name!r} is an operator of kind {cls.kind!r}, not a convolution: build it with "
            f"get_op({name!r})(channels, ...) instead of create_op"
        )
    conv_cls = cast(type[AdaptiveConv2d], cls)  # kind "conv" is always an AdaptiveConv2d (checked at registration)
    try:
        return conv_cls(in_channels, out_channels, kernel_size, **kwargs)
    except TypeError as exc:
        if "unexpected keyword argument" in str(exc):
            import inspect

            params = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "args", "kwargs")]
            raise TypeError(f"{name}: {exc}; accepted arguments: {', '.join(params)}") from None
        raise
