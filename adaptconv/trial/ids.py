"""Stable trial ids.

A trial id is the first 16 hex digits of the SHA-256 of the canonical JSON (sorted keys, no spaces)
of the trial's *normalised* config (every task default filled in, see
:func:`adaptconv.trial.parse_trial_config`) with two kinds of entries left out:

- the keys that only say where a trial runs (``device``, ``threads``, ``data_root``): the same trial
  on another machine or data mount is the same trial;
- entries equal to the config schema's own default: adding a new option with a default to
  ``TrialConfig`` later does not change the id of any existing trial.

So two suites that reach the same config (explicitly or through defaults) share ids, and changing
anything that changes what a trial computes gives a new id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from typing import Any

from ..schema import to_dict
from .config import RUN_KEYS, TrialConfig

ID_VERSION = 1
ID_PATTERN = re.compile(r"[0-9a-f]{16}")


def _schema_defaults() -> dict[str, Any]:
    fields = {}
    for f in dataclasses.fields(TrialConfig):
        if f.default is not dataclasses.MISSING:
            fields[f.name] = to_dict(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            fields[f.name] = to_dict(f.default_factory())
    return fields


_DEFAULTS = _schema_defaults()


def _strip_defaults(value: Any, default: Any) -> Any:
    if isinstance(value, dict) and isinstance(default, dict):
        return {
            k: _strip_defaults(v, default.get(k, _NONE))
            for k, v in value.items()
            if not (k in default and default[k] == v)
        }
    return value


_NONE = object()


def identity(config: dict[str, Any]) -> dict[str, Any]:
    """The part of a normalised config that identifies the trial."""
    core = {k: v for k, v in config.items() if k not in RUN_KEYS}
    return _strip_defaults(core, _DEFAULTS)


def trial_id(config: dict[str, Any]) -> str:
    payload = json.dumps(
        {"v": ID_VERSION, "config": identity(config)}, sort_keys=True, separators=(",", ":"), allow_nan=False
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def check_trial_id(tid: str) -> str:
    """Refuse anything that is not a trial id (so an id can never name a path outside its folder)."""
    if not isinstance(tid, str) or not ID_PATTERN.fullmatch(tid):
        raise ValueError(f"not a trial id: {tid!r} (16 lowercase hex digits)")
    return tid
