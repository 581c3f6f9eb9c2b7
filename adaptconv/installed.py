"""What this installation knows, as plain data, and the fingerprint of the installation that cached
answers depend on.

Reading commands (``report``'s claims, ``collect`` of old records) need a few facts that live in the
registries — the operators and their options' defaults, the tasks' datasets, metrics and options — and
asking the registries imports torch. :func:`installation` describes them once and keeps the description
under ``$ADAPTCONV_CACHE/..`` (default ``~/.cache/adaptconv``), keyed by :func:`environment_fingerprint`:
edited code, an installed plugin or another torch/timm version makes a new description.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

from .plugins import GROUPS

#: bump when the description's layout changes
FORMAT = 1
PACKAGE_ROOT = Path(__file__).resolve().parent


def cache_root() -> Path:
    """The cache folder of the suites and of this description: ``$ADAPTCONV_CACHE``, else
    ``$XDG_CACHE_HOME/adaptconv/suites`` (``~/.cache/...``); :mod:`adaptconv.sweep.cache` uses it too."""
    if os.environ.get("ADAPTCONV_CACHE"):
        return Path(os.environ["ADAPTCONV_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adaptconv" / "suites"


def environment_fingerprint(in_process: bool = True) -> str:
    """What a cached answer about this installation depends on: adaptconv's source files (path, size,
    mtime), the plugins installed (the entry points of every group: operators, tasks, data sets) and the
    torch/timm versions. ``in_process``: operators registered in this process (``register_op``) count too."""
    from importlib.metadata import PackageNotFoundError, entry_points, version

    h = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(PACKAGE_ROOT)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    for group in GROUPS:
        for ep in sorted(entry_points(group=group), key=lambda e: (e.name, e.value)):
            dist = getattr(ep, "dist", None)
            h.update(f"ep:{group}:{ep.name}={ep.value}@{dist.version if dist else '?'}\n".encode())
    if in_process and "adaptconv.ops" in sys.modules:
        from .ops import get_op, list_ops

        for name in list_ops():
            cls = get_op(name)
            h.update(f"op:{name}={cls.__module__}.{cls.__qualname__}\n".encode())
    for name in ("torch", "timm"):
        try:
            h.update(f"{name}=={version(name)}\n".encode())
        except PackageNotFoundError:
            h.update(f"{name} missing\n".encode())
    return h.hexdigest()


def _jsonable(value):
    """A default as JSON (tuples become lists); None when it has no JSON form (a class, a function)."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return None


def describe_installation() -> dict:
    """The operators (with their options' defaults), the tasks (datasets, backbones, metrics, options'
    defaults, late options, trivial baselines), the trial config keys and, where a task takes timm
    backbones, timm's model names: what checking a claims file needs. Imports torch (the registry)."""
    import inspect

    from .ops import get_op, list_ops
    from .tasks import get_task, list_tasks
    from .trial.config import TrialConfig, _op_options

    ops = {}
    for name in list_ops():
        ops[name] = {
            n: {"default": _jsonable(p.default)}
            for n, p in _op_options(get_op(name)).items()
            if p.default is not inspect.Parameter.empty and _jsonable(p.default) is not None or p.default is None
        }
    tasks = {}
    for name in list_tasks():
        try:
            cls = get_task(name)
        except Exception:  # a task plugin that does not load: the others are still described
            continue
        options = {}
        for f in dataclasses.fields(cls.Options):
            if f.default is not dataclasses.MISSING:
                options[f.name] = {"default": _jsonable(f.default)}
            elif f.default_factory is not dataclasses.MISSING:
                options[f.name] = {"default": _jsonable(f.default_factory())}
            else:
                options[f.name] = {}
        tasks[name] = {
            "datasets": list(cls.datasets),
            "backbones": list(cls.backbones),
            "accepts_timm": bool(cls.accepts_timm),
            "metrics": list(dict.fromkeys([*cls.metrics, *cls.higher_is_better])),
            "options": options,
            "higher_is_better": dict(cls.higher_is_better),
            "late_options": {k: _jsonable(v) for k, v in cls.late_options.items()},
            "baselines": list(getattr(cls, "baseline_names", ()) or ()),
        }
    timm_models: list[str] = []
    if any(t["accepts_timm"] for t in tasks.values()):
        import timm

        timm_models = sorted(timm.list_models())
    return {
        "ops": ops,
        "tasks": tasks,
        "config_keys": [f.name for f in dataclasses.fields(TrialConfig)],
        "timm_models": timm_models,
    }


def installation() -> dict:
    """:func:`describe_installation` through the cache (same fingerprint as the suites: adaptconv's
    source, the installed plugins, torch and timm versions), so a report's claims need no torch."""
    # the installed code and plugins only: whether this process has imported the operators already
    # (a suite was just expanded) must not change the key, or the next command misses
    fp = hashlib.sha256(f"format {FORMAT}; installation\n{environment_fingerprint(in_process=False)}".encode())
    file = cache_root() / f"installation-{fp.hexdigest()[:32]}.json"
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    found = describe_installation()
    try:
        from .atomic import write_text_atomic

        file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(file, json.dumps(found))
    except OSError:
        pass
    return found
