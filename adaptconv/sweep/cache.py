"""A cache of expanded suites, so that the commands that only read (``status``, ``cancel``, ``collect``,
``report``, and ``plan`` of a suite already checked) start without importing torch.

Expanding a suite validates every trial against the operator registry and the tasks (both import
torch) and builds each distinct operator configuration once; that costs seconds, while the answer
depends only on the suite's text, the adaptconv source, the installed operator plugins and the
versions of torch/timm. The expansion is stored under that fingerprint in
``$ADAPTCONV_CACHE`` (default ``$XDG_CACHE_HOME/adaptconv/suites``, else ``~/.cache/adaptconv/suites``)
and reused while the fingerprint is unchanged; anything else (a changed suite, edited code, a plugin
installed) misses and the suite is expanded and checked again. A damaged cache file is a miss too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from pathlib import Path

from .suite import Block, Resources, Suite, SuiteSpec, Trial, load_suite, resolve_suite_path

#: bump when the cached layout changes
FORMAT = 1
#: cache entries kept (the most recently written)
KEEP = 64
PACKAGE_ROOT = Path(__file__).resolve().parents[1]


def cache_dir() -> Path:
    if os.environ.get("ADAPTCONV_CACHE"):
        return Path(os.environ["ADAPTCONV_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "adaptconv" / "suites"


def _environment_fingerprint(in_process: bool = True) -> str:
    """What else the expansion depends on: adaptconv's source files (path, size, mtime), the operator
    plugins installed (entry points) and the torch/timm versions (operators' refusals may change)."""
    from importlib.metadata import PackageNotFoundError, entry_points, version

    h = hashlib.sha256()
    for path in sorted(PACKAGE_ROOT.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(PACKAGE_ROOT)}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    for ep in sorted(entry_points(group="adaptconv.ops"), key=lambda e: (e.name, e.value)):
        dist = getattr(ep, "dist", None)
        h.update(f"ep:{ep.name}={ep.value}@{dist.version if dist else '?'}\n".encode())
    if in_process and "adaptconv.ops" in sys.modules:  # operators registered in this process (register_op) count too
        from ..ops import get_op, list_ops

        for name in list_ops():
            cls = get_op(name)
            h.update(f"op:{name}={cls.__module__}.{cls.__qualname__}\n".encode())
    for name in ("torch", "timm"):
        try:
            h.update(f"{name}=={version(name)}\n".encode())
        except PackageNotFoundError:
            h.update(f"{name} missing\n".encode())
    return h.hexdigest()


def _key(text: bytes, check_registry: bool) -> str:
    h = hashlib.sha256()
    h.update(f"format {FORMAT}; check_registry {check_registry}\n".encode())
    h.update(_environment_fingerprint().encode())
    h.update(text)
    return h.hexdigest()[:32]


def _to_json(suite: Suite) -> dict:
    return {
        "spec": dataclasses.asdict(suite.spec),
        "path": str(suite.path),
        "trials": [dataclasses.asdict(t) for t in suite.trials],
        "warnings": list(suite.warnings),
    }


def _from_json(data: dict) -> Suite:
    spec = dict(data["spec"])
    spec["blocks"] = [Block(**b) for b in spec["blocks"]]
    spec["resources"] = Resources(**spec["resources"])
    return Suite(SuiteSpec(**spec), Path(data["path"]), [Trial(**t) for t in data["trials"]], list(data["warnings"]))


def load_suite_cached(suite: str | Path, check_registry: bool = True, force: bool = False) -> tuple[Suite, bool]:
    """``load_suite`` through the cache: (the suite, whether it came from the cache). The suite file
    is always read (its text is part of the key); problems in it raise ``SuiteError`` as usual.
    ``force`` expands and checks afresh, and stores the result."""
    path = resolve_suite_path(suite)
    try:
        text = path.read_bytes()
    except OSError:  # load_suite says what is wrong with the file
        return load_suite(path, check_registry=check_registry), False
    file = cache_dir() / f"{_key(text, check_registry)}.json"
    # an expansion checked against the registry also serves a reading without it (same trials, same ids)
    candidates = [] if force else [file] if check_registry else [file, cache_dir() / f"{_key(text, True)}.json"]
    for candidate in candidates:
        try:
            found = _from_json(json.loads(candidate.read_text(encoding="utf-8")))
            return dataclasses.replace(found, path=path), True
        except (OSError, ValueError, KeyError, TypeError):
            continue  # no cache entry (or a damaged one): expand and check
    loaded = load_suite(path, check_registry=check_registry)
    try:
        from ..results.atomic import write_text_atomic

        file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(file, json.dumps(_to_json(loaded)))
        # every edit of a suite or of the code makes a new entry: keep the most recent ones only
        entries = sorted(file.parent.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only home: the next command expands again, nothing else changes
    return loaded, False


# ---- what this installation knows, as plain data -------------------------------------------------------


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

    from ..ops import get_op, list_ops
    from ..tasks import get_task, list_tasks
    from ..trial.config import TrialConfig, _op_options

    ops = {}
    for name in list_ops():
        ops[name] = {
            n: {"default": _jsonable(p.default)}
            for n, p in _op_options(get_op(name)).items()
            if p.default is not inspect.Parameter.empty and _jsonable(p.default) is not None or p.default is None
        }
    tasks = {}
    for name in list_tasks():
        cls = get_task(name)
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
    fp = hashlib.sha256(f"format {FORMAT}; installation\n{_environment_fingerprint(in_process=False)}".encode())
    file = cache_dir() / f"installation-{fp.hexdigest()[:32]}.json"
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    found = describe_installation()
    try:
        from ..results.atomic import write_text_atomic

        file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(file, json.dumps(found))
    except OSError:
        pass
    return found
