"""The comparison figures of a report (matplotlib + seaborn styling, written as PNG).

Every figure function takes the report :class:`~adaptconv.report.tables.Layout` and a folder, writes
zero or more PNG files and returns a :class:`Figure` for each: its file, a caption and the legend
entries actually drawn (the report's tests check them). PNGs are written without a timestamp or
software tag so a regenerated report is byte-identical.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..results.atomic import write_bytes_atomic  # noqa: E402
from .palette import BASELINE, op_order, variant_styles  # noqa: E402
from .tables import Layout, fmt_factor, fmt_value, short_key  # noqa: E402

MAX_FACETS = 6
MAX_PARTS = 4  # figure files per kind and section; a sweep with more groups is in the tables
DPI = 110
_USED: set[str] = set()  # figure names written by the current all_figures call
_REPORT_STYLES: dict = {}  # the style of every operator variant of the report, fixed once per report


def _styles(labels) -> dict:
    """Styles of the report's variants (the same in every figure), computed for labels it does not know."""
    local = variant_styles(labels)
    return {label: _REPORT_STYLES.get(label, local[label]) for label in local}


@dataclass
class Figure:
    file: str  # relative to the report folder
    caption: str
    kind: str
    legend: list[str] = field(default_factory=list)
    section: str | None = None  # the task · dataset · backbone it belongs to, if one


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", str(text).lower()).strip("-")[:80] or "all"


def _style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.0)
    plt.rcParams.update({"figure.dpi": DPI, "savefig.dpi": DPI, "axes.titlesize": 9, "legend.fontsize": 7})


def _save(fig, folder: Path, name: str) -> str:
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    plt.close(fig)
    stem, n = name, 2
    while stem in _USED:  # two figures whose labels slug alike must not overwrite each other
        stem, n = f"{name}-{n}", n + 1
    _USED.add(stem)
    path = folder / f"{stem}.png"
    write_bytes_atomic(path, buf.getvalue())
    return f"{folder.name}/{path.name}"


def _legend(fig, axes) -> list[str]:
    """One legend for the whole figure, in the report's operator order; returns its entries."""
    handles = {}
    for ax in np.ravel(axes):
        _plain_ticks(ax)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    order = [lab for lab in op_order(handles) if lab in handles]
    if order:
        # "outside": constrained layout makes room for it, so no second (tight-bbox) draw is needed
        fig.legend([handles[lab] for lab in order], order, loc="outside right upper", frameon=False,
                   title="operator")
    return order


def _plain_ticks(ax) -> None:
    """No '+3.565' offset above the axis: metrics of close operators must read as themselves."""
    for axis in (ax.xaxis, ax.yaxis):
        fmt = axis.get_major_formatter()
        if isinstance(fmt, matplotlib.ticker.ScalarFormatter):
            fmt.set_useOffset(False)


def _log_if_wide(ax, values, axis: str) -> None:
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0])
    if len(v) >= 2 and v.max() / v.min() >= 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")
        # unlabelled minor ticks: labelling them is most of the drawing time and clutters the axis
        (ax.xaxis if axis == "x" else ax.yaxis).set_minor_formatter(matplotlib.ticker.NullFormatter())


def _facets(n: int, rows: int = 1, width: float = 4.0, height: float = 3.2):
    fig, axes = plt.subplots(rows, n, figsize=(width * n, height * rows), squeeze=False, layout="constrained")
    return fig, axes


def _chunks(items: list, size: int) -> list[list]:
    """Facets per figure file, at most MAX_PARTS files (the tables hold every group)."""
    return [items[i:i + size] for i in range(0, len(items), size)][:MAX_PARTS] or [[]]


def _drawn(groups: list, what: str) -> str:
    """A caption note when a sweep has more comparison groups than the figures draw."""
    shown = min(len(groups), MAX_FACETS * MAX_PARTS)
    return f" The first {shown} of {len(groups)} {what} are drawn; the tables list all." if shown < len(groups) else ""


def _group_figures(folder: Path, kind: str, section: str, groups: list, draw, caption: str,
                   width: float = 4.0) -> list[Figure]:
    """One facet per comparison group, ``draw(ax, group)`` in each: at most MAX_FACETS facets per
    file and MAX_PARTS files (the caption says when groups were left out)."""
    out = []
    for part, chunk in enumerate(_chunks(groups, MAX_FACETS)):
        fig, axes = _facets(len(chunk), width=width)
        for ax, group in zip(axes[0], chunk):
            draw(ax, group)
        legend = _legend(fig, axes)
        name = f"{kind}-{slug(section)}" + (f"-{part + 1}" if len(groups) > MAX_FACETS else "")
        out.append(Figure(_save(fig, folder, name), caption + _drawn(groups, "groups"), kind, legend, section))
    return out


def _metric_name(metric: str, layout: Layout) -> str:
    arrow = "↑" if layout.higher_is_better(metric) else "↓"
    return f"{metric[len('metric.'):]} ({arrow} better)"


def pareto_front(points: list[tuple[float, float]], higher_is_better: bool) -> list[tuple[float, float]]:
    """Points no other point beats on both latency (lower) and metric; sorted by latency."""
    front = []
    best = -math.inf
    for x, y in sorted(points, key=lambda p: (p[0], -p[1] if higher_is_better else p[1])):
        score = y if higher_is_better else -y
        if score > best:
            front.append((x, y))
            best = score
    return front


def _ci(agg: pd.DataFrame, col: str, measured: tuple[str, str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Error bar half-widths: the t-CI over seeds, or with one seed the measurement's own CI if it has one."""
    mean = agg[col].astype(float).values
    lo, hi = agg[f"{col}.ci_low"].astype(float).values, agg[f"{col}.ci_high"].astype(float).values
    if measured is not None:
        one = agg[f"{col}.n"].values < 2
        lo = np.where(one, agg[measured[0]].astype(float).values if measured[0] in agg else np.nan, lo)
        hi = np.where(one, agg[measured[1]].astype(float).values if measured[1] in agg else np.nan, hi)
    return np.nan_to_num(mean - lo, nan=0.0).clip(0), np.nan_to_num(hi - mean, nan=0.0).clip(0)


# ---- metric vs latency, with the Pareto front -----------------------------------------------------

def pareto_figures(layout: Layout, folder: Path) -> list[Figure]:
    out = []
    for section in layout.sections:
        metric = layout.primary_of(section)
        agg = layout.agg[layout.agg["section"] == section]
        if metric is None or "inference_ms" not in agg or not agg["inference_ms"].notna().any():
            continue

        def draw(ax, group):
            g = agg[(agg["group"] == group) & agg[metric].notna() & agg["inference_ms"].notna()]
            g = g.set_index("variant").loc[[v for v in op_order(g["variant"])]].reset_index()
            xerr = _ci(g, "inference_ms", ("inference_ms_ci_low", "inference_ms_ci_high"))
            yerr = _ci(g, metric)
            style = _styles(g["variant"])
            for i, r in g.iterrows():
                color, marker, _ = style[r["variant"]]
                ax.errorbar(r["inference_ms"], r[metric], xerr=[[xerr[0][i]], [xerr[1][i]]],
                            yerr=[[yerr[0][i]], [yerr[1][i]]], fmt=marker, ms=6,
                            color=color, capsize=2, label=r["variant"], lw=1)
            front = pareto_front(list(zip(g["inference_ms"], g[metric])), layout.higher_is_better(metric))
            if len(front) >= 2:
                fx, fy = zip(*front)
                ax.step(fx, fy, where="post", color="0.5", ls="--", lw=1, zorder=0)
            _log_if_wide(ax, g["inference_ms"], "x")
            ax.set_xlabel(f"inference latency, batch {layout.measured('measured_batch')} (ms, ↓)")
            ax.set_ylabel(_metric_name(metric, layout))
            ax.set_title(group, fontsize=8)

        out += _group_figures(folder, "pareto", section, sorted(agg["group"].unique()), draw,
                              f"{section}: {metric[len('metric.'):]} against inference latency, mean ± 95% CI over "
                              f"seeds (with one seed, the latency's bootstrap CI); dashed: the Pareto front.")
    return out


# ---- latency and memory against resolution ------------------------------------------------------------

def scaling_figures(layout: Layout, folder: Path) -> list[Figure]:
    runs = layout.col.runs
    if runs.empty or "resolution" not in runs:
        return []
    t = layout.trials[["trial_id", "variant", "section", "group"] + layout.context]
    # a config key may share a run column's name (batch_size): the run's own value wins
    t = t.rename(columns={c: f"config.{c}" for c in layout.context if c in runs.columns})
    runs = runs.merge(t, on="trial_id")
    runs = runs[runs["status"] == "ok"]
    out = []
    for section in sorted(runs["section"].unique()):
        r = runs[runs["section"] == section]
        if r["resolution"].nunique() < 2:
            continue
        batch = int(r["batch_size"].min())
        r = r[r["batch_size"] == batch]
        context = [f"config.{c}" if f"config.{c}" in r else c for c in layout.context_of(section)]
        combos = r[context].drop_duplicates().map(fmt_factor).values.tolist() if context else [[]]
        for combo in sorted(combos)[:MAX_PARTS]:
            sub = r
            for c, v in zip(context, combo):
                sub = sub[sub[c].map(fmt_factor) == v]
            phases = [p for p in ("inference", "train_step") if p in set(sub["phase"])]
            fig, axes = _facets(len(phases), rows=2)
            for j, phase in enumerate(phases):
                p = sub[sub["phase"] == phase]
                stats = p.groupby(["variant", "resolution"], sort=True)[["latency_ms", "peak_mb"]].median().reset_index()
                for row, (col, label) in enumerate((("latency_ms", "latency (ms)"), ("peak_mb", "peak memory (MB)"))):
                    ax = axes[row][j]
                    style = _styles(stats["variant"])
                    for variant in op_order(stats["variant"]):
                        s = stats[stats["variant"] == variant]
                        color, marker, dash = style[variant]
                        ax.plot(s["resolution"], s[col], marker=marker, ls=dash, color=color, label=variant, ms=4, lw=1.2)
                    ax.set_xscale("log", base=2)
                    res = sorted(stats["resolution"].unique())
                    ax.set_xticks(res, [str(int(v)) for v in res])  # the measured sides, not 2^k labels
                    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
                    _log_if_wide(ax, stats[col], "y")
                    ax.set_xlabel("input resolution (px)")
                    ax.set_ylabel(label)
                    ax.set_title(f"{phase.replace('_', ' ')}, batch {batch}", fontsize=8)
            legend = _legend(fig, axes)
            where = ", ".join(f"{short_key(c.removeprefix('config.'))}={v}" for c, v in zip(context, combo))
            name = f"scaling-{slug(section)}" + (f"-{slug(where)}" if where else "")
            method = ", ".join(sorted(set(sub["memory_method"].dropna().astype(str)))) if "memory_method" in sub else ""
            out.append(Figure(_save(fig, folder, name),
                              f"{section}{' (' + where + ')' if where else ''}: latency and peak memory against input "
                              f"resolution, median over seeds (memory: {method or 'n/a'}).", "scaling", legend, section))
    return out


# ---- ablations: every swept hyperparameter ---------------------------------------------------------

def _is_numeric(values) -> bool:
    try:
        [float(v) for v in values]
    except (TypeError, ValueError):
        return False
    return not any(isinstance(v, bool) for v in values)


DEFAULT = "(default)"  # an operator option left at its default is not stored in the config


def _reference(rows: pd.DataFrame, keys: list[str]) -> dict:
    """The values the other swept factors are held at: the most common combination (ties: the first)."""
    if not keys or rows.empty:
        return {}
    combos = rows[keys].map(fmt_factor).value_counts(sort=False)
    ranked = sorted(combos.items(), key=lambda kv: (-kv[1], kv[0]))
    return dict(zip(keys, ranked[0][0]))


def _moves_with(rows: pd.DataFrame, key: str, other: str) -> bool:
    """Whether ``other`` takes one value per value of ``key`` (they were swept together)."""
    pairs = pd.DataFrame({"k": rows[key].map(fmt_factor), "o": rows[other].map(fmt_factor)})
    return bool((pairs.groupby("k")["o"].nunique() == 1).all()) and pairs["o"].nunique() > 1


def ablation_figures(layout: Layout, folder: Path) -> list[Figure]:
    """One figure per swept factor: the metric and latency against it, one line per operator variant,
    with the section's other swept factors held at their most common values (one factor at a time)."""
    out = []
    agg = layout.agg
    for key in layout.context + layout.op_factors:
        if key not in agg:
            continue
        facets = []  # (section, rows, values, held)
        for section in layout.sections:
            rows = agg[agg["section"] == section]
            if key in layout.op_factors:  # the operators that take the option; a missing value is its default
                ops = set(rows.loc[rows[key].notna(), "op"])
                rows = rows[rows["op"].isin(ops)].copy()
                rows[key] = rows[key].map(lambda v: DEFAULT if v is None or (isinstance(v, float) and math.isnan(v)) else v)
            elif key in layout.context_of(section):  # inside a task, a missing value is the schema default
                earlier = layout.context_of(section)[:layout.context_of(section).index(key)]
                if any(_moves_with(rows, k, key) and _moves_with(rows, key, k) for k in earlier):
                    continue  # swept together with an earlier factor (crf_iters with crf): one figure says it
                rows = rows.copy()
                rows[key] = rows[key].map(lambda v: DEFAULT if v is None or (isinstance(v, float) and math.isnan(v)) else v)
            else:
                continue
            # hold the other factors fixed, except those that move with this one (crf and crf_iters)
            others = [k for k in layout.context_of(section) if k != key and not _moves_with(rows, key, k)]
            ref = _reference(rows, others)
            for k, v in ref.items():
                rows = rows[rows[k].map(fmt_factor) == v]
            values = sorted(set(rows[key]), key=lambda v: (str(type(v)), v)) if len(rows) else []
            if len(values) >= 2:
                facets.append((section, rows, values, ref))
        if not facets:
            continue
        facets = facets[:MAX_FACETS]
        panels = ("primary", "inference_ms")
        fig, axes = _facets(len(facets), rows=len(panels))
        for j, (section, s, values, ref) in enumerate(facets):
            numeric = _is_numeric(values)
            metric = layout.primary_of(section)
            s = s.copy()
            s["line"] = s.apply(lambda r: _line_label(r, key, layout), axis=1)
            style = _styles(s["line"])
            for i, panel in enumerate(panels):
                ax = axes[i][j]
                col = metric if panel == "primary" else "inference_ms"
                if col is None or col not in s or not s[col].notna().any():
                    ax.set_visible(False)
                    continue
                for line in op_order(s["line"]):
                    g = s[s["line"] == line].copy()
                    g["_x"] = g[key].map(lambda v: float(v) if numeric else values.index(v))
                    g = g.sort_values("_x")
                    err = _ci(g.reset_index(drop=True), col)
                    color, marker, dash = style[line]
                    ax.errorbar(g["_x"], g[col], yerr=err, marker=marker, ls=dash, color=color, label=line,
                                capsize=2, ms=4, lw=1.2)
                if numeric:
                    _log_if_wide(ax, [float(v) for v in values], "x")
                    if len(values) <= 8:
                        ax.set_xticks([float(v) for v in values])
                        ax.set_xticklabels([fmt_value(v) for v in values])
                        ax.minorticks_off()
                else:
                    ax.set_xticks(range(len(values)))
                    ax.set_xticklabels([fmt_value(v) for v in values], rotation=30, ha="right")
                ax.set_xlabel(short_key(key))
                ax.set_ylabel(_metric_name(col, layout) if panel == "primary" else "inference latency (ms, ↓)")
                if i == 0:
                    held = ", ".join(f"{short_key(k)}={v}" for k, v in ref.items())
                    ax.set_title(section + (f"\n({held})" if held else ""), fontsize=8)
        legend = _legend(fig, axes)
        helds = ["; ".join(f"{short_key(k)}={v}" for k, v in f[3].items()) for f in facets]
        held = f"; other swept factors held at {', '.join(h for h in helds if h)}" if any(helds) else ""
        out.append(Figure(_save(fig, folder, f"ablation-{slug(key)}"),
                          f"Ablation over {key}: headline metric and inference latency, mean ± 95% CI over seeds"
                          f"{held}.", "ablation", legend))
    return out


def _line_label(row: pd.Series, key: str, layout: Layout) -> str:
    """The operator variant without the swept key (the key is the x axis)."""
    opts = [f"{short_key(k)}={fmt_value(row[k])}" for k in layout.op_factors
            if k != key and row[k] is not None and not (isinstance(row[k], float) and math.isnan(row[k]))]
    return f"{row['op']} ({', '.join(opts)})" if opts else str(row["op"])


# ---- training curves -------------------------------------------------------------------------------

def curve_figures(layout: Layout, folder: Path) -> list[Figure]:
    curves = layout.col.curves
    if curves.empty:
        return []
    loss = curves[curves["series"] == "loss"]
    t = layout.trials[layout.trials["state"] == "done"][["trial_id", "variant", "section"]]
    loss = loss.merge(t, on="trial_id").merge(layout.trials[["trial_id", "group"]], on="trial_id")
    out = []
    for section in sorted(loss["section"].unique()):
        ls = loss[loss["section"] == section]
        stats = ls.groupby(["group", "variant", "step"], sort=True)["value"].agg(["mean", "min", "max"]).reset_index()

        def draw(ax, group):
            g = stats[stats["group"] == group]
            style = _styles(g["variant"])
            for variant in op_order(g["variant"]):
                v = g[g["variant"] == variant]
                color, _, dash = style[variant]
                ax.plot(v["step"], v["mean"], color=color, ls=dash, lw=1.1, label=variant)
                ax.fill_between(v["step"], v["min"], v["max"], color=color, alpha=0.12, lw=0)
            _log_if_wide(ax, g["mean"], "y")
            ax.set_xlabel("step")
            ax.set_ylabel("training loss")
            ax.set_title(" · ".join(x for x in (section, group) if x), fontsize=8)

        out += _group_figures(folder, "curves", section, sorted(stats["group"].unique()), draw,
                              f"{section}: training loss (mean over seeds; band: min to max).")
    return out


# ---- per-task bars ---------------------------------------------------------------------------------

def bar_figures(layout: Layout, folder: Path) -> list[Figure]:
    out = []
    for section in layout.sections:
        metric = layout.primary_of(section)
        if metric is None:
            continue
        agg = layout.agg[(layout.agg["section"] == section) & layout.agg[metric].notna()]

        def draw(ax, group):
            g = agg[agg["group"] == group]
            order = op_order(g["variant"])
            g = g.set_index("variant").loc[order].reset_index()
            err = _ci(g, metric)
            style = _styles(g["variant"])
            hatches = {v: ("" if style[v][2] == "-" else "//") for v in style}  # variants of one op: hatched
            for i, r in g.iterrows():
                ax.bar(i, r[metric], yerr=[[err[0][i]], [err[1][i]]], color=style[r["variant"]][0],
                       hatch=hatches[r["variant"]], label=r["variant"], capsize=2, edgecolor="black", lw=0.5)
            base = g[g["op"] == BASELINE]
            if len(base):
                ax.axhline(base[metric].iloc[0], color="black", ls=":", lw=1)
            lo = np.nanmin(g[metric] - err[0])
            hi = np.nanmax(g[metric] + err[1])
            pad = (hi - lo) * 0.15 or abs(hi) * 0.05 or 1.0
            ax.set_ylim(lo - pad, hi + pad)  # bars of close values: zoom to where they differ
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels(order, rotation=40, ha="right", fontsize=7)
            ax.set_ylabel(_metric_name(metric, layout))
            ax.set_title(group, fontsize=8)

        out += _group_figures(folder, "bars", section, sorted(agg["group"].unique()), draw,
                              f"{section}: {metric[len('metric.'):]} per operator, mean ± 95% CI over seeds "
                              f"(dotted: conv). The axis is zoomed to the range of the values.",
                              width=max(3.5, 0.45 * agg["variant"].nunique() + 1.5))
    return out


def all_figures(layout: Layout, folder: Path) -> list[Figure]:
    _style()
    _USED.clear()
    _REPORT_STYLES.clear()
    _REPORT_STYLES.update(variant_styles(layout.agg["variant"]) if len(layout.agg) else {})
    figures = []
    for make in (bar_figures, pareto_figures, scaling_figures, ablation_figures, curve_figures):
        figures += make(layout, folder)
    return figures


__all__ = ["Figure", "all_figures", "pareto_front"]
