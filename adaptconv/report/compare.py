"""Two result sets side by side: the same trials run at two commits, on two GPUs or two clusters.

Trials are matched by trial id (a hash of the config that excludes run keys such as the device, the
thread count and the data path), so the same suite run in two places lines up row by row. For each
metric and headline measurement the table gives A, B and the ratio B/A; the summary gives the
geometric mean of the ratios per column, and which environment each side ran in.

A latency timed while other processes competed for the CPU (``contended``, see
:mod:`adaptconv.measure.contention`) is left out of the ratios unless asked for: two runs of the same code
then differ by the machines' loads, not by the code (ratios from 0.01 to 181 were seen that way).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..results.collect import MEASURES, Collection, raised
from .tables import environment_summary

#: the measurements that time something, with the flag that says a side's timing was contended
TIMED = {
    "inference_ms": "inference_contended",
    "train_step_ms": "train_step_contended",
    "throughput_ips": "throughput_contended",
}


@dataclass
class Comparison:
    table: pd.DataFrame  # one row per trial present in both
    summary: pd.DataFrame  # one row per compared column: n, geometric-mean ratio, min, max
    only_a: list[str]
    only_b: list[str]
    env_a: pd.DataFrame
    env_b: pd.DataFrame
    #: per timed column, the trials left out because A's or B's timing was contended
    contended: dict[str, int] = field(default_factory=dict)


def _environment(col: Collection) -> pd.DataFrame:
    return environment_summary(
        col.trials, ("env.device_name", "env.torch", "env.git_commit", "env.git_dirty", "env.hostname")
    )


def compare(a: Collection, b: Collection, *, include_contended: bool = False) -> Comparison:
    """Match finished trials of ``a`` and ``b`` by id; ratio B/A of every metric and measurement.

    A timed measurement (:data:`TIMED`) that either side took under contention is left out (NaN in the
    table, not in the summary) and counted in ``contended``, unless ``include_contended``."""
    ta = a.trials[a.trials["status"] == "ok"].set_index("trial_id")
    tb = b.trials[b.trials["status"] == "ok"].set_index("trial_id")
    common = sorted(set(ta.index) & set(tb.index))
    values = [c for c in sorted(set(a.metric_columns) | set(b.metric_columns)) if c in ta and c in tb]
    values += [c for c in MEASURES if c in ta and c in tb]
    factors = [c for c in dict.fromkeys(a.factors() + b.factors()) if c in ta]
    table = ta.loc[common, factors].copy() if common else pd.DataFrame(columns=factors)
    rows = []
    dropped: dict[str, int] = {}
    for v in values:
        va = pd.to_numeric(ta.loc[common, v], errors="coerce") if common else pd.Series(dtype=float)
        vb = pd.to_numeric(tb.loc[common, v], errors="coerce") if common else pd.Series(dtype=float)
        flag = TIMED.get(v)
        if flag and common and not include_contended:
            bad = pd.Series(False, index=va.index)
            for t in (ta, tb):
                if flag in t:
                    bad |= t.loc[common, flag].map(raised).astype(bool)
            if bad.any():
                dropped[v] = int(bad.sum())
                va, vb = va.mask(bad), vb.mask(bad)
        ratio = vb / va.where(va != 0)
        table[f"{v} A"] = va
        table[f"{v} B"] = vb
        table[f"{v} B/A"] = ratio
        r = ratio[np.isfinite(ratio) & (ratio > 0)]
        rows.append(
            {
                "column": v,
                "n": int(len(r)),
                "geomean B/A": float(np.exp(np.log(r).mean())) if len(r) else np.nan,
                "min B/A": float(r.min()) if len(r) else np.nan,
                "max B/A": float(r.max()) if len(r) else np.nan,
            }
        )
    table = table.reset_index().rename(columns={"index": "trial_id"})
    return Comparison(
        table,
        pd.DataFrame(rows),
        sorted(set(ta.index) - set(tb.index)),
        sorted(set(tb.index) - set(ta.index)),
        _environment(a),
        _environment(b),
        dropped,
    )
