"""The report's opening "Findings": what the statistics of each section say, in words.

Generated only from :meth:`~adaptconv.report.tables.Layout.comparisons` (paired by seed, Holm–Bonferroni
within each comparison group), never from raw means: per comparison group, whether ``conv`` beats the
trivial baselines (whether the budget learns at all), which rows are better or worse than conv with their
difference and 95% interval, and which the budget is too small to tell apart. Text is Markdown (code spans
for operator names); the HTML report renders it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..results import stats
from .palette import BASELINE
from .tables import NO_REFERENCE, OPERATOR, REFERENCE, TRIVIAL, VARIANT, Layout

METHOD = (
    "Every difference is paired by seed with `conv` of the same comparison group (a network variant with "
    "the same network without it): mean per-seed difference Δ with its 95% Student-t interval. Verdicts "
    "and bold values are decided after Holm–Bonferroni correction within each group (family-wise α = 0.05), "
    "in two families: the operators and network variants against their reference, and `conv` against "
    "the trivial baselines; a row with fewer than two seeds gets no verdict."
)


def _names(labels: list[str]) -> str:
    return ", ".join(f"`{x}`" for x in labels)


def _delta(d: float, lo: float, hi: float, n: int) -> str:
    half = (hi - lo) / 2 if n >= 2 and np.isfinite(lo) and np.isfinite(hi) else math.nan
    return "Δ " + stats.format_delta(d, half)


def group_findings(layout: Layout, section: str, metric: str, rows: pd.DataFrame, cmp: pd.DataFrame) -> str:
    """One comparison group's sentence(s); ``rows``/``cmp`` are that group's rows of
    :meth:`Layout.rows_of` and :meth:`Layout.comparisons`."""
    name = f"`{metric[len('metric.') :]}`"
    conv = [i for i in rows.index if cmp.at[i, "verdict"] == REFERENCE]
    if not conv:
        return (
            f"no `conv` row to compare with ({_names(list(rows['variant']))}), so no verdict; add `conv` to this block."
        )
    c = conv[0]
    out = [
        f"`conv` scores {stats.format_mean_ci(*_mean_half(rows.loc[c], metric))} ({name}, n={_n(rows.loc[c], metric)})."
    ]
    trivial = [i for i in rows.index if rows.at[i, "kind"] == TRIVIAL]
    if not trivial:
        out.append("The records carry no trivial baseline, so whether the network learned at all is not shown.")
    else:
        beats, ties, loses, untold = [], [], [], []
        for i in trivial:
            v, label = cmp.at[i, "verdict"], f"`{rows.at[i, 'variant']}`"
            # the comparison is baseline − conv: turn it round to say it from conv's side
            d = -cmp.at[i, "delta"]
            text = (
                f"{label} ({_delta(d, -cmp.at[i, 'delta_ci_high'], -cmp.at[i, 'delta_ci_low'], cmp.at[i, 'delta_n'])})"
            )
            {stats.WORSE: beats, stats.BETTER: loses, stats.NO_DIFFERENCE: ties}.get(v, untold).append(text)
        if beats and not (ties or loses or untold):
            out.append(f"It beats every trivial baseline — {', '.join(beats)} — so the budget learns.")
        else:
            if beats:
                out.append(f"It beats {', '.join(beats)}.")
            if loses:
                out.append(
                    f"It is **worse** than {', '.join(loses)}: at this budget the network has not learned "
                    "what a trivial predictor does, so its comparisons between operators say little."
                )
            if ties and beats:
                out.append(
                    f"It is not distinguishable from {', '.join(ties)}: it learns, but not yet beyond "
                    "every classical predictor."
                )
            elif ties:
                out.append(
                    f"It is not distinguishable from {', '.join(ties)}: the budget is too small to show "
                    "that the network learns."
                )
            if untold:
                out.append(
                    f"Against {', '.join(t.split(' (')[0] for t in untold)} there are fewer than two seeds to compare."
                )
    compared = [i for i in rows.index if rows.at[i, "kind"] in (OPERATOR, VARIANT) and i != c]
    better, worse, same, single, missing = [], [], [], [], []
    for i in compared:
        v = cmp.at[i, "verdict"]
        label = rows.at[i, "variant"]
        ref = cmp.at[i, "reference"]
        text = f"`{label}` ({_delta(cmp.at[i, 'delta'], cmp.at[i, 'delta_ci_low'], cmp.at[i, 'delta_ci_high'], cmp.at[i, 'delta_n'])}"
        text += f" vs `{ref}`)" if isinstance(ref, str) and ref != BASELINE else ")"
        if v == stats.BETTER:
            better.append(text)
        elif v == stats.WORSE:
            worse.append(text)
        elif v == stats.NO_DIFFERENCE:
            same.append(f"`{label}`")
        elif v == stats.NO_CI and cmp.at[i, "delta_n"] == 1:
            single.append(f"`{label}`")
        else:
            missing.append(f"`{label}`")
    if not compared:
        out.append("No other operator in this group.")
    out.append(
        f"Better than `conv`: {', '.join(better)}."
        if better
        else ("No operator is better than `conv`." if compared else "")
    )
    if worse:
        out.append(f"Worse: {', '.join(worse)}.")
    if same:
        out.append(f"No detectable difference at this budget: {', '.join(same)}.")
    if single:
        out.append(f"One seed only, no verdict: {', '.join(single)}.")
    if missing:
        out.append(f"No result to compare: {', '.join(missing)}.")
    return " ".join(t for t in out if t)


def _mean_half(row: pd.Series, m: str) -> tuple[float, float]:
    n = row[f"{m}.n"]
    lo, hi = row[f"{m}.ci_low"], row[f"{m}.ci_high"]
    return row[m], ((hi - lo) / 2 if n >= 2 and np.isfinite(lo) else math.nan)


def _n(row: pd.Series, m: str) -> int:
    return int(row[f"{m}.n"]) if np.isfinite(row[f"{m}.n"]) else 0


#: a section with more comparison groups than this gets one summary paragraph instead of one per group
MAX_GROUPS = 6


def section_findings(layout: Layout, section: str) -> list[str]:
    """The findings of one section (Markdown): one paragraph per comparison group, or, for a sweep with
    more than :data:`MAX_GROUPS` groups, one paragraph counting the verdicts over the groups."""
    metric = layout.primary_of(section)
    if metric is None:
        return []
    rows = layout.rows_of(section)
    cmp = layout.comparisons(section, metric)
    groups = list(dict.fromkeys(rows["group"]))
    if len(groups) > MAX_GROUPS:
        return [summary_findings(rows, cmp, metric, len(groups))]
    out = []
    for group in groups:
        idx = rows.index[rows["group"] == group]
        text = group_findings(layout, section, metric, rows.loc[idx], cmp.loc[idx])
        where = group[len(section) :].lstrip(" ·") if group.startswith(section) else group
        out.append(f"*{where}:* {text}" if len(groups) > 1 and where else text)
    return out


def summary_findings(rows: pd.DataFrame, cmp: pd.DataFrame, metric: str, n_groups: int) -> str:
    """Verdicts counted over many comparison groups: how often conv beats the trivial baselines, and per
    operator in how many groups it is better, worse or not distinguishable from conv."""
    name = f"`{metric[len('metric.') :]}`"
    out = [f"{n_groups} comparison groups (the settings this section sweeps); verdicts on {name} counted over them."]
    trivial = rows["kind"] == TRIVIAL
    if trivial.any():
        by_group = {}
        for i in rows.index[trivial]:  # conv learns in a group when it beats every baseline there
            by_group.setdefault(rows.at[i, "group"], []).append(cmp.at[i, "verdict"])
        learns = sum(all(v == stats.WORSE for v in vs) for vs in by_group.values())
        loses = sum(any(v == stats.BETTER for v in vs) for vs in by_group.values())
        out.append(
            f"`conv` beats every trivial baseline in {learns} of {len(by_group)} groups"
            + (f" and is worse than one in {loses}" if loses else "")
            + "."
        )
    else:
        out.append("The records carry no trivial baseline, so whether the network learned at all is not shown.")
    counts: dict[str, dict[str, int]] = {}
    for i in rows.index[rows["kind"].isin([OPERATOR, VARIANT])]:
        v = cmp.at[i, "verdict"]
        if v == REFERENCE:
            continue
        counts.setdefault(rows.at[i, "variant"], {}).setdefault(v, 0)
        counts[rows.at[i, "variant"]][v] += 1
    parts = []
    for label, c in counts.items():
        said = [
            f"{c[v]} {word}"
            for v, word in (
                (stats.BETTER, "better"),
                (stats.WORSE, "worse"),
                (stats.NO_DIFFERENCE, "no detectable difference"),
                (stats.NO_CI, "too few seeds"),
                (NO_REFERENCE, "no conv"),
            )
            if c.get(v)
        ]
        parts.append(f"`{label}` {', '.join(said)}")
    if parts:
        out.append("Against `conv`, in groups: " + "; ".join(parts) + ". The tables give each group's Δ and interval.")
    return " ".join(out)


def findings(layout: Layout) -> list[tuple[str, list[str]]]:
    """``[(section, [paragraph, ...]), ...]`` for every section with an accuracy metric."""
    out = []
    for section in layout.sections:
        paragraphs = section_findings(layout, section)
        if paragraphs:
            out.append((section, paragraphs))
    return out


__all__ = ["MAX_GROUPS", "METHOD", "findings", "group_findings", "section_findings", "summary_findings"]
