"""One registry style for what adaptconv can be extended with: operators, tasks and data sets.

Each of the three is a :class:`Registry` with

- a **group of entry points** that plugin packages declare in their ``pyproject.toml``::

      [project.entry-points."adaptconv.ops"]        # an operator class (AdaptiveConv2d / AdaptiveModule)
      myop = "my_package.ops:MyOp"
      [project.entry-points."adaptconv.tasks"]      # a Task subclass
      mytask = "my_package.tasks:MyTask"
      [project.entry-points."adaptconv.datasets"]   # a DatasetSpec
      mydata = "my_package.data:MY_DATA"

- a **table of built-ins** in the same form, name → ``"module:attr"`` (:data:`BUILTIN_OPS`,
  :data:`BUILTIN_TASKS`, :data:`BUILTIN_DATASETS`): built-ins are loaded exactly as plugins are, and
  adding a built-in is one line in its table.

Nothing is imported before it is asked for: listing the names reads the tables and the installed
packages' metadata only, so this module (and the tables) import neither torch nor the registries'
contents. A plugin that fails to import or names the wrong kind of object is recorded
(:meth:`Registry.errors`) and logged, and everything else keeps working; a plugin whose name is
taken is refused with an error naming both sources.
"""

from __future__ import annotations

import difflib
import importlib
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

#: The built-in operators, in the fixed order the report's palette colours them (conv, the baseline,
#: first); each module registers its class with ``@register_op(name)`` too, which the table agrees with.
BUILTIN_OPS: dict[str, str] = {
    "conv": "adaptconv.ops.conv:Conv2d",
    "pac": "adaptconv.ops.pac:PacConv2d",
    "paka": "adaptconv.ops.paka:PakaConv2d",
    "acda": "adaptconv.ops.acda:AcdaConv2d",
    "dfn": "adaptconv.ops.dfn:DfnConv2d",
    "deform": "adaptconv.ops.deform:DeformConv2d",
    "mdeform": "adaptconv.ops.deform:ModulatedDeformConv2d",
    "condconv": "adaptconv.ops.condconv:CondConv2d",
    "dynconv": "adaptconv.ops.dynconv:DynamicConv2d",
    "involution": "adaptconv.ops.involution:Involution2d",
    "ddf": "adaptconv.ops.ddf:DdfConv2d",
    "odconv": "adaptconv.ops.odconv:ODConv2d",
    "sparse_gated": "adaptconv.ops.sparse_gated:SparseGatedConv2d",
    "carafe": "adaptconv.ops.carafe:Carafe",
    "paccrf": "adaptconv.ops.paccrf:PacCRF",
}

#: The built-in tasks (the order ``adaptconv`` lists them in).
BUILTIN_TASKS: dict[str, str] = {
    "classification": "adaptconv.tasks.classification:Classification",
    "segmentation": "adaptconv.tasks.segmentation:Segmentation",
    "upsampling": "adaptconv.tasks.upsampling:Upsampling",
    "denoising": "adaptconv.tasks.denoising:Denoising",
    "opbench": "adaptconv.tasks.opbench:OpBench",
    "spatial_segmentation": "adaptconv.tasks.spatial_segmentation:SpatialSegmentation",
    "spatial_video": "adaptconv.tasks.spatial_video:SpatialVideo",
}

#: The built-in data sets (each a :class:`adaptconv.data.DatasetSpec`).
BUILTIN_DATASETS: dict[str, str] = {
    "digits": "adaptconv.data.specs:DIGITS",
    "middlebury": "adaptconv.data.specs:MIDDLEBURY",
    "photos": "adaptconv.data.specs:PHOTOS",
    "synthetic": "adaptconv.data.specs:SYNTHETIC",
    "cifar10": "adaptconv.data.specs:CIFAR10",
    "cifar100": "adaptconv.data.specs:CIFAR100",
    "imagefolder": "adaptconv.data.specs:IMAGEFOLDER",
    "nyu_depth_v2": "adaptconv.data.specs:NYU_DEPTH_V2",
    "voc2012": "adaptconv.data.specs:VOC2012",
    "cityscapes": "adaptconv.data.specs:CITYSCAPES",
    "image_folder_denoise": "adaptconv.data.specs:IMAGE_FOLDER_DENOISE",
    "synthetic_video": "adaptconv.data.specs:SYNTHETIC_VIDEO",
    "frames": "adaptconv.data.specs:FRAMES",
}

OPS_GROUP = "adaptconv.ops"
TASKS_GROUP = "adaptconv.tasks"
DATASETS_GROUP = "adaptconv.datasets"
GROUPS = (OPS_GROUP, TASKS_GROUP, DATASETS_GROUP)


@dataclass(frozen=True)
class PluginError:
    """A plugin entry point that could not be registered, and why."""

    entry_point: str  # "name = module:attr"
    distribution: str
    error: str


def load_target(value: str) -> Any:
    """The object a ``"module:attr"`` reference (an entry point's value) names."""
    module, _, attr = value.partition(":")
    obj: Any = importlib.import_module(module.strip())
    for part in filter(None, attr.strip().split(".")):
        obj = getattr(obj, part)
    return obj


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


T = TypeVar("T")


class Registry(Generic[T]):
    """Names → objects of one kind (operator classes, task classes, data set specs).

    ``check(name, obj, source)`` raises ``error`` (an exception type taking a message) when ``obj``
    cannot be registered under ``name``; ``on_add`` / ``on_remove`` are told of each registration
    and of each plugin forgotten by :meth:`reload_plugins`."""

    def __init__(
        self,
        what: str,
        group: str,
        builtins: Mapping[str, str],
        check: Callable[[str, Any, str], None],
        error: Callable[[str], Exception],
        on_add: Callable[[str, T], None] | None = None,
        on_remove: Callable[[str, T], None] | None = None,
    ) -> None:
        self.what, self.group, self.builtins = what, group, dict(builtins)
        self._check, self._error, self._on_add, self._on_remove = check, error, on_add, on_remove
        self.entries: dict[str, T] = {}
        self.sources: dict[str, str] = {}
        self._errors: list[PluginError] = []
        self._plugins: dict[str, EntryPoint] | None = None  # entry points not loaded yet

    # ---- discovery ---------------------------------------------------------------------------------
    def _scan(self) -> dict[str, EntryPoint]:
        """The group's entry points by name (read once; nothing imported). One whose name is taken is
        refused here, before its package is imported."""
        if self._plugins is None:
            self._plugins = {}
            for ep in entry_points(group=self.group):
                taken = self._taken_by(ep.name)
                if taken or ep.name in self._plugins:
                    by = taken or f"plugin {_dist(self._plugins[ep.name])} ({self._plugins[ep.name].value})"
                    self._record(
                        ep,
                        f"{self.what} name {ep.name!r} is already registered by {by}; "
                        f"plugin {_dist(ep)} ({ep.value}) tries to register it again",
                    )
                else:
                    self._plugins[ep.name] = ep
        return self._plugins

    def _taken_by(self, name: str) -> str | None:
        if name in self.sources:
            return self.sources[name]
        return self.builtins.get(name)

    def _record(self, ep: EntryPoint, error: str) -> None:
        err = PluginError(f"{ep.name} = {ep.value}", _dist(ep), error)
        self._errors.append(err)
        log.warning("adaptconv plugin %s from %s was not loaded: %s", err.entry_point, err.distribution, error)

    def _load_builtin(self, name: str) -> None:
        value = self.builtins[name]
        self.add(name, load_target(value), value)  # a built-in that fails to import is a bug: it raises

    def _load_plugin(self, name: str) -> None:
        ep = self._scan().pop(name)
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the suite
            self._record(ep, f"import failed: {type(exc).__name__}: {exc}")
            return
        try:
            self.add(name, obj, f"plugin {_dist(ep)} ({ep.value})")
        except Exception as exc:
            self._record(ep, str(exc))

    def load_all(self) -> None:
        """Load every built-in and every plugin (what listing by a property of the objects needs)."""
        for name in self.builtins:
            if name not in self.entries:
                self._load_builtin(name)
        for name in list(self._scan()):
            self._load_plugin(name)

    # ---- registration ------------------------------------------------------------------------------
    def add(self, name: str, obj: Any, source: str) -> None:
        """Register ``obj`` under ``name``; ``source`` says where from ("module:attr" for a built-in
        or an in-process registration, "plugin DIST (module:attr)" for a plugin)."""
        self._check(name, obj, source)
        existing = self.entries.get(name)
        if existing is not None:
            if existing is obj:
                return
            raise self._error(
                f"{self.what} name {name!r} is already registered by {self.sources[name]}; "
                f"{source} tries to register it again"
            )
        builtin = self.builtins.get(name)
        if builtin is not None and source != builtin:
            raise self._error(
                f"{self.what} name {name!r} is already registered by {builtin}; {source} tries to register it again"
            )
        if builtin is None and not source.startswith("plugin ") and name in self._scan():
            self._load_plugin(name)  # an installed plugin keeps its name whatever the import order
            if name in self.entries:
                raise self._error(
                    f"{self.what} name {name!r} is already registered by {self.sources[name]}; "
                    f"{source} tries to register it again"
                )
        self.entries[name] = obj
        self.sources[name] = source
        if self._on_add is not None:
            self._on_add(name, obj)

    def remove(self, name: str) -> None:
        """Forget ``name`` (a registration made in this process; built-ins come back when asked for)."""
        obj = self.entries.pop(name)
        del self.sources[name]
        if self._on_remove is not None:
            self._on_remove(name, obj)

    def reload_plugins(self) -> None:
        """Forget plugin registrations and errors, then read the entry points again (for tests and tools)."""
        for name in [n for n, src in self.sources.items() if src.startswith("plugin ")]:
            self.remove(name)
        self._errors.clear()
        self._plugins = None
        self._scan()

    # ---- lookup ------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        """Every name, built-ins first (in their table's order), then the others sorted; nothing loaded."""
        others = (set(self.entries) | set(self._scan())) - set(self.builtins)
        return [*self.builtins, *sorted(others)]

    def __contains__(self, name: object) -> bool:
        return name in self.builtins or name in self.entries or name in self._scan()

    def get(self, name: str) -> T:
        """The object registered under ``name`` (loaded on first use); unknown names raise ``error``
        naming the choices and, if a plugin of that name failed to load, why."""
        if name not in self.entries:
            if name in self.builtins:
                self._load_builtin(name)
            elif name in self._scan():
                self._load_plugin(name)
        try:
            return self.entries[name]
        except KeyError:
            raise self._error(self.unknown(name)) from None

    def unknown(self, name: str, choices: list[str] | None = None, label: str = "choices") -> str:
        """The message for an unknown ``name``: a close match, a failed plugin of that name, the choices."""
        choices = self.names() if choices is None else choices
        hint = _did_you_mean(name, choices)
        failed = [e for e in self._errors if e.entry_point.split(" = ")[0] == name]
        if failed:
            hint += f" (a plugin providing {name!r} failed to load: {failed[0].error})"
        return f"unknown {self.what} {name!r}{hint}; {label}: {', '.join(choices)}"

    def source(self, name: str) -> str:
        self.get(name)
        return self.sources[name]

    def errors(self) -> list[PluginError]:
        """Plugins that could not be registered so far, with the reason."""
        self._scan()
        return list(self._errors)

    def items(self) -> Iterator[tuple[str, T]]:
        """(name, object) of every loadable entry, loading them."""
        for name in self.names():
            try:
                yield name, self.get(name)
            except Exception:  # a plugin that failed to load: recorded in errors()
                continue


def _dist(ep: EntryPoint) -> str:
    return getattr(getattr(ep, "dist", None), "name", None) or "?"
