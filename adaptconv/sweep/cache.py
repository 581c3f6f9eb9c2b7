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
from pathlib import Path

from ..installed import cache_root as cache_dir
from ..installed import environment_fingerprint
from .suite import Block, Resources, Suite, SuiteSpec, Trial, load_suite, resolve_suite_path

#: bump when the cached layout changes
FORMAT = 1
#: cache entries kept (the most recently written)
KEEP = 64


def _key(text: bytes, check_registry: bool) -> str:
    h = hashlib.sha256()
    h.update(f"format {FORMAT}; check_registry {check_registry}\n".encode())
    h.update(environment_fingerprint().encode())
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
        from ..atomic import write_text_atomic

        file.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(file, json.dumps(_to_json(loaded)))
        # every edit of a suite or of the code makes a new entry: keep the most recent ones only
        entries = sorted(file.parent.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # a read-only home: the next command expands again, nothing else changes
    return loaded, False
