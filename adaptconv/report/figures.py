"""The comparison figures of a report (matplotlib + seaborn styling, written as PNG).

Every figure function takes the report :class:`~adaptconv.report.tables.Layout` and a folder, writes
zero or more PNG files and returns a :class:`Figure` for each: its file, a caption and the legend
entries actually drawn (the report's tests check them). PNGs are written without a timestamp or
software tag so a regenerated report is byte-identical.

What keeps them honest (tests/report/test_figures.py):

- a bar's length is its value: bar axes start at zero, and conv's mean (dashed, black) and the task's
  trivial baselines (dotted, grey; ``Layout.baselines_of``) are named reference lines, also in the
  Pareto figures (a baseline has no latency: a horizontal line) and the ablations;
- no error bar where there is no interval (one seed);
- panels are as wide as their content, titled only by what sets their comparison group apart;
- log axes carry several plain-number labels;
- training curves are smoothed and, below them, each operator's loss is divided by conv's at the same
  step and seed, which takes out the batch noise that every operator shares;
- an ablation line needs two points; a factor with no such line gets no figure.
"""

from __future__ import annotations

import math
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a window
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from ..atomic import write_bytes_atomic  # noqa: E402
from ..results.collect import raised  # noqa: E402
from .palette import BASELINE, CONV_LINE, TRIVIAL_LINE, op_order, variant_styles  # noqa: E402
from .tables import Layout, fmt_factor, fmt_value, short_key  # noqa: E402

MAX_FACETS = 6
MAX_PARTS = 4  # figure files per kind and section; a sweep with more groups is in the tables
DPI = 110
PANEL_HEIGHT = 3.2  # inches per row of panels
LABEL_ROOM = 0.8  # inches right of a panel for the names of its reference lines
RATIO_SPAN = 0.01  # the loss-ratio axis shows at least 1 ± this
MAX_BANDS = 4  # training-curve panels with more lines than this draw no min-max bands
AXIS_ROOM = 0.8  # inches of a panel outside its plotting area: the metric axis's ticks and label
TITLE_CHARS_PER_INCH = 14  # characters of an 8-pt panel title per inch of panel width
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
    baselines: list[str] = field(default_factory=list)  # trivial baselines drawn as reference lines


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


def _finish(fig, axes) -> list[str]:
    """Readable ticks on every panel and one legend for the whole figure, in the report's operator
    order; returns the legend's entries."""
    handles = {}
    for ax in np.ravel(axes):
        if not ax.get_visible():
            continue
        _plain_ticks(ax)
        _log_ticks(ax)
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    order = [lab for lab in op_order(handles) if lab in handles]
    if order:
        # "outside": constrained layout makes room for it, so no second (tight-bbox) draw is needed
        fig.legend([handles[lab] for lab in order], order, loc="outside right upper", frameon=False, title="operator")
        # room for the legend on top of the panels' own width, so it never squeezes them
        w, h = fig.get_size_inches()
        fig.set_size_inches(w + 0.6 + 0.055 * max(len(lab) for lab in order), h)
    return order


def _plain_ticks(ax) -> None:
    """No '+3.565' offset above the axis: metrics of close operators must read as themselves."""
    for axis in (ax.xaxis, ax.yaxis):
        fmt = axis.get_major_formatter()
        if isinstance(fmt, matplotlib.ticker.ScalarFormatter):
            fmt.set_useOffset(False)


def _plain_number(v: float, _pos=None) -> str:
    return f"{v:g}"


def log_subs(low: float, high: float) -> tuple[float, ...]:
    """Mantissas of the labelled ticks of a log axis over [low, high]: every decade alone only when
    the range spans many; 1-2-5 over a few; 1-2-3-5-7 over about one, so an axis never shows just
    one or two labels."""
    decades = math.log10(high / low) if low > 0 and high > low else 0.0
    if decades > 4:
        return (1.0,)
    if decades > 1.6:
        return (1.0, 2.0, 5.0)
    return (1.0, 2.0, 3.0, 5.0, 7.0)


def _log_ticks(ax) -> None:
    """Log axes labelled with plain numbers (0.5, 1, 2, 5, 10 - not 10^0) at enough places to read
    a value off; axes with ticks set explicitly (the measured resolutions) are left alone."""
    for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
        if axis.get_scale() != "log" or not isinstance(axis.get_major_locator(), matplotlib.ticker.LogLocator):
            continue
        low, high = sorted(lim)
        axis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=log_subs(low, high), numticks=12))
        axis.set_major_formatter(matplotlib.ticker.FuncFormatter(_plain_number))
        axis.set_minor_locator(matplotlib.ticker.LogLocator(base=10, subs=np.arange(1, 10), numticks=12))
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())


def _log_if_wide(ax, values, axis: str) -> None:
    v = np.asarray([x for x in values if np.isfinite(x) and x > 0])
    if len(v) >= 2 and v.max() / v.min() >= 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _facets(widths: list[float], rows: int = 1, height: float = PANEL_HEIGHT, room: float = AXIS_ROOM):
    """Panels whose plotting areas are ``widths`` inches wide (their content: a one-bar panel is
    narrow), each with ``room`` inches for its axis and labels; the legend's room is added by
    :func:`_finish`."""
    fig = plt.figure(figsize=(sum(widths) + room * len(widths), height * rows), layout="constrained")
    axes = fig.subplots(rows, len(widths), squeeze=False, gridspec_kw={"width_ratios": widths})
    return fig, axes


def _chunks(items: list, size: int) -> list[list]:
    """Facets per figure file, at most MAX_PARTS files (the tables hold every group)."""
    return [items[i : i + size] for i in range(0, len(items), size)][:MAX_PARTS] or [[]]


def _drawn(groups: list, what: str) -> str:
    """A caption note when a sweep has more comparison groups than the figures draw."""
    shown = min(len(groups), MAX_FACETS * MAX_PARTS)
    return f" The first {shown} of {len(groups)} {what} are drawn; the tables list all." if shown < len(groups) else ""


def _group_figures(
    folder: Path,
    kind: str,
    section: str,
    groups: list,
    draw,
    caption: str,
    widths: dict | None = None,
    rows: int = 1,
    room: float = AXIS_ROOM,
) -> list[Figure]:
    """One facet per comparison group, ``draw(axes, group)`` in each (``axes``: the column of
    ``rows`` panels, or the one panel; it returns the names of the trivial baselines it drew): at most
    MAX_FACETS facets per file and MAX_PARTS files (the caption says when groups were left out).
    ``widths``: inches of plotting area per group (default 3.2), ``room``: inches around each."""
    out = []
    for part, chunk in enumerate(_chunks(groups, MAX_FACETS)):
        fig, axes = _facets([(widths or {}).get(g, 3.2) for g in chunk], rows=rows, room=room)
        drawn: set[str] = set()
        for j, group in enumerate(chunk):
            drawn.update(draw(axes[:, j] if rows > 1 else axes[0][j], group) or ())
        legend = _finish(fig, axes)
        name = f"{kind}-{slug(section)}" + (f"-{part + 1}" if len(groups) > MAX_FACETS else "")
        out.append(
            Figure(
                _save(fig, folder, name),
                caption + _reference_caption(sorted(drawn)) + _drawn(groups, "groups"),
                kind,
                legend,
                section,
                sorted(drawn),
            )
        )
    return out


def _metric_name(metric: str, layout: Layout) -> str:
    arrow = "↑" if layout.higher_is_better(metric) else "↓"
    return f"{metric[len('metric.') :]} ({arrow} better)"


def panel_title(section: str, group: str, width: float) -> str:
    """A panel's title: what sets its comparison group apart (``upsampler=carafe``), never the section
    again (the caption names it), wrapped to the panel's width."""
    rest = group[len(section) :].lstrip(" ·") if group.startswith(section) else group
    return textwrap.fill(
        rest, max(12, int((width + AXIS_ROOM) * TITLE_CHARS_PER_INCH)), break_long_words=False, break_on_hyphens=False
    )


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
    """Error bar half-widths (below, above): the t-CI over seeds, or with one seed the measurement's own
    CI if it has one. NaN where there is no interval (one seed): no error bar is drawn there."""
    mean = agg[col].astype(float).values
    lo, hi = agg[f"{col}.ci_low"].astype(float).values, agg[f"{col}.ci_high"].astype(float).values
    if measured is not None:
        one = agg[f"{col}.n"].values < 2
        lo = np.where(one, agg[measured[0]].astype(float).values if measured[0] in agg else np.nan, lo)
        hi = np.where(one, agg[measured[1]].astype(float).values if measured[1] in agg else np.nan, hi)
    return (mean - lo).clip(0), (hi - mean).clip(0)


def _err(err: tuple[np.ndarray, np.ndarray], i: int):
    """The error bar of point ``i`` for matplotlib, or None without an interval (no cap is drawn)."""
    lo, hi = err[0][i], err[1][i]
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi == 0:
        return None
    return [[lo], [hi]]


# ---- reference lines: conv's mean and the task's trivial baselines ----------------------------------


@dataclass
class Reference:
    name: str
    value: float
    low: float = math.nan  # the baseline's 95% CI over seeds, when it has one
    high: float = math.nan
    style: dict = field(default_factory=lambda: dict(TRIVIAL_LINE))


def _baseline_frame(layout: Layout, section: str) -> pd.DataFrame:
    """``Layout.baselines_of(section)``: one row per comparison group × trivial baseline (empty when
    the layout or the records have none)."""
    get = getattr(layout, "baselines_of", None)
    frame = get(section) if get is not None else None
    if frame is None or len(frame) == 0 or "baseline" not in frame:
        return pd.DataFrame()
    return frame


def _metric_column(frame: pd.DataFrame, metric: str) -> str | None:
    """The baseline frame's column of ``metric`` (``metric.rmse``, or ``rmse`` without the prefix)."""
    for c in (metric, metric.removeprefix("metric.")):
        if c in frame and pd.to_numeric(frame[c], errors="coerce").notna().any():
            return c
    return None


def _matching(frame: pd.DataFrame, values: dict) -> pd.DataFrame:
    """Rows of ``frame`` whose columns agree with ``values`` (as the tables print them); a column the
    frame lacks does not separate its rows."""
    for k, v in values.items():
        if k in frame:
            frame = frame[frame[k].map(fmt_factor) == fmt_factor(v)]
    return frame


def _references(frame: pd.DataFrame, metric: str, where: dict) -> list[Reference]:
    """The trivial baselines of one comparison group (``where``: its group and context values)."""
    col = _metric_column(frame, metric) if len(frame) else None
    if col is None:
        return []
    rows = _matching(frame, where)
    out = []
    for name, g in rows.groupby("baseline", sort=True):
        r = g.iloc[0]  # one row per group and baseline (the layout's contract)
        value = float(r[col])
        if not np.isfinite(value):
            continue
        lo, hi = (float(r.get(f"{col}.{b}", math.nan)) for b in ("ci_low", "ci_high"))
        out.append(Reference(str(name), value, lo, hi))
    return out


def _group_where(layout: Layout, section: str, rows: pd.DataFrame) -> dict:
    """The group and context values shared by ``rows`` (one comparison group)."""
    if rows.empty:
        return {}
    first = rows.iloc[0]
    return {k: first[k] for k in ["group"] + layout.context_of(section) if k in rows}


def _draw_references(ax, refs: list[Reference]) -> None:
    """Horizontal lines across the panel, with a band for a baseline's CI when it has one."""
    for ref in refs:
        ax.axhline(ref.value, zorder=1.5, **ref.style)
        if np.isfinite(ref.low) and np.isfinite(ref.high) and ref.high > ref.low:
            ax.axhspan(ref.low, ref.high, color=ref.style["color"], alpha=0.12, lw=0, zorder=0.5)


def _label_lines(ax, labels: list[tuple[float, str, tuple]]) -> None:
    """Name reference lines just right of the panel at their height, nudged apart so close lines
    (chance and majority class) stay readable. Call once the axis limits are final."""
    if not labels:
        return
    to_axes = ax.transData + ax.transAxes.inverted()
    # minimum gap: one line of 6.5-pt text in a panel about PANEL_HEIGHT - 1 inches tall
    gap = 1.25 * 6.5 / (72 * (PANEL_HEIGHT - 1.0))
    placed = sorted((float(to_axes.transform((0, y))[1]), text, color) for y, text, color in labels)
    ys = [min(max(p[0], 0.0), 1.0) for p in placed]
    for i in range(1, len(ys)):
        ys[i] = max(ys[i], ys[i - 1] + gap)
    if ys[-1] > 1.0:  # pushed off the top: shift the stack down
        ys[-1] = 1.0
        for i in range(len(ys) - 2, -1, -1):
            ys[i] = min(ys[i], ys[i + 1] - gap)
    for y, (_, text, color) in zip(ys, placed):
        ax.annotate(
            text,
            xy=(1.0, y),
            xycoords="axes fraction",
            xytext=(3, 0),
            textcoords="offset points",
            va="center",
            ha="left",
            fontsize=6.5,
            color=color,
            annotation_clip=False,
        )


def _reference_caption(names: list[str]) -> str:
    if not names:
        return ""
    return f" Dotted: the task's trivial baselines ({', '.join(names)}) on the same test data."


# ---- metric vs latency, with the Pareto front -----------------------------------------------------


#: what a hollow marker means, in every figure that draws one
HOLLOW_NOTE = " Hollow: a latency timed while other processes competed for the CPU, or noisy."


def _doubtful(row: pd.Series, phase: str) -> bool:
    """Whether a row's latency of ``phase`` was contended or noisy (for any seed)."""
    return raised(row.get(f"{phase}_contended")) or raised(row.get(f"{phase}_noisy"))


def pareto_figures(layout: Layout, folder: Path) -> list[Figure]:
    out = []
    for section in layout.sections:
        metric = layout.primary_of(section)
        agg = layout.agg[layout.agg["section"] == section]
        if metric is None or "inference_ms" not in agg or not agg["inference_ms"].notna().any():
            continue
        agg = agg[agg[metric].notna() & agg["inference_ms"].notna()]
        frame = _baseline_frame(layout, section)

        def draw(ax, group):
            g = agg[agg["group"] == group]
            g = g.set_index("variant").loc[[v for v in op_order(g["variant"])]].reset_index()
            xerr = _ci(g, "inference_ms", ("inference_ms_ci_low", "inference_ms_ci_high"))
            yerr = _ci(g, metric)
            style = _styles(g["variant"])
            for i, r in g.iterrows():
                color, marker, _ = style[r["variant"]]
                # hollow: a latency that is contended or noisy (‡/† in the tables), not the operator's speed
                face = "white" if _doubtful(r, "inference") else color
                ax.plot(r["inference_ms"], r[metric], marker, ms=6, color=color, mfc=face, label=r["variant"], zorder=3)
                xe, ye = _err(xerr, i), _err(yerr, i)
                if xe is not None or ye is not None:  # no interval (one seed): no bar, no cap
                    ax.errorbar(
                        r["inference_ms"],
                        r[metric],
                        xerr=xe,
                        yerr=ye,
                        fmt="none",
                        color=color,
                        capsize=2,
                        lw=1,
                        zorder=2,
                    )
            front = pareto_front(list(zip(g["inference_ms"], g[metric])), layout.higher_is_better(metric))
            if len(front) >= 2:
                fx, fy = zip(*front)
                ax.step(fx, fy, where="post", color="0.5", ls="--", lw=1, zorder=0)
            # a trivial baseline has no latency: a horizontal line at its metric, across every latency
            refs = _references(frame, metric, _group_where(layout, section, g))
            _draw_references(ax, refs)
            _log_if_wide(ax, g["inference_ms"], "x")
            if ax.get_xscale() == "linear" and ax.get_xlim()[0] < 0:
                ax.set_xlim(left=0)  # a latency's t-interval over few seeds can reach below zero; a latency cannot
            ax.set_xlabel(f"inference latency, batch {layout.measured('measured_batch')} (ms, ↓)")
            ax.set_ylabel(_metric_name(metric, layout))
            ax.set_title(panel_title(section, group, widths[group]), fontsize=8)
            _label_lines(ax, [(r.value, r.name, r.style["color"]) for r in refs])
            return [r.name for r in refs]

        groups = sorted(agg["group"].unique())
        # content-sized: a group of one or two points needs less room than a cloud of thirteen
        widths = {gr: 1.8 + 0.1 * min(int((agg["group"] == gr).sum()), 10) for gr in groups}
        hollow = (
            f"{HOLLOW_NOTE[:-1]} (‡/† in the table)."
            if agg.apply(lambda r: _doubtful(r, "inference"), axis=1).any()
            else ""
        )
        out += _group_figures(
            folder,
            "pareto",
            section,
            groups,
            draw,
            f"{section}: {metric[len('metric.') :]} against inference latency, mean ± 95% CI over "
            f"seeds (with one seed, the latency's bootstrap CI; no bar where there is no "
            f"interval); dashed: the Pareto front.{hollow}",
            widths,
            room=AXIS_ROOM + LABEL_ROOM,
        )
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
            fig, axes = _facets([3.2] * len(phases), rows=2)
            hollow = False
            for j, phase in enumerate(phases):
                p = sub[sub["phase"] == phase]
                p = p.assign(
                    doubtful=[
                        raised(c) or raised(n)
                        for c, n in zip(p.get("contended", [None] * len(p)), p.get("noisy", [None] * len(p)))
                    ]
                )
                grouped = p.groupby(["variant", "resolution"], sort=True)
                stats = grouped[["latency_ms", "peak_mb"]].median().join(grouped["doubtful"].any()).reset_index()
                hollow |= bool(stats["doubtful"].any())
                for row, (col, label) in enumerate((("latency_ms", "latency (ms)"), ("peak_mb", "peak memory (MB)"))):
                    ax = axes[row][j]
                    style = _styles(stats["variant"])
                    for variant in op_order(stats["variant"]):
                        s = stats[stats["variant"] == variant]
                        color, marker, dash = style[variant]
                        ax.plot(
                            s["resolution"], s[col], marker=marker, ls=dash, color=color, label=variant, ms=4, lw=1.2
                        )
                        bad = s[s["doubtful"]] if col == "latency_ms" else s.iloc[:0]
                        if len(bad):  # hollow over the filled marker: contended or noisy latency
                            ax.plot(
                                bad["resolution"],
                                bad[col],
                                marker=marker,
                                ls="none",
                                color=color,
                                mfc="white",
                                ms=4,
                                zorder=3,
                            )
                    ax.set_xscale("log", base=2)
                    res = sorted(stats["resolution"].unique())
                    ax.set_xticks(res, [str(int(v)) for v in res])  # the measured sides, not 2^k labels
                    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
                    _log_if_wide(ax, stats[col], "y")
                    ax.set_xlabel("input resolution (px)")
                    ax.set_ylabel(label)
                    ax.set_title(f"{phase.replace('_', ' ')}, batch {batch}", fontsize=8)
            legend = _finish(fig, axes)
            where = ", ".join(f"{short_key(c.removeprefix('config.'))}={v}" for c, v in zip(context, combo))
            name = f"scaling-{slug(section)}" + (f"-{slug(where)}" if where else "")
            method = ", ".join(sorted(set(sub["memory_method"].dropna().astype(str)))) if "memory_method" in sub else ""
            out.append(
                Figure(
                    _save(fig, folder, name),
                    f"{section}{' (' + where + ')' if where else ''}: latency and peak memory against input "
                    f"resolution, median over seeds (memory: {method or 'n/a'})." + (HOLLOW_NOTE if hollow else ""),
                    "scaling",
                    legend,
                    section,
                )
            )
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
    with the section's other swept factors held at their most common values (one factor at a time).
    A variant measured at only one value of the factor is no line and is left out (the caption says
    so); a factor with no line of two points or more gets no figure."""
    out = []
    agg = layout.agg
    for key in layout.context + layout.op_factors:
        if key not in agg:
            continue
        facets = []  # (section, rows, values, held, left out)
        for section in layout.sections:
            rows = agg[agg["section"] == section]
            if key in layout.op_factors:  # the operators that take the option; a missing value is its default
                ops = set(rows.loc[rows[key].notna(), "op"])
                rows = rows[rows["op"].isin(ops)].copy()
                rows[key] = rows[key].map(
                    lambda v: DEFAULT if v is None or (isinstance(v, float) and math.isnan(v)) else v
                )
            elif key in layout.context_of(section):  # inside a task, a missing value is the schema default
                earlier = layout.context_of(section)[: layout.context_of(section).index(key)]
                if any(_moves_with(rows, k, key) and _moves_with(rows, key, k) for k in earlier):
                    continue  # swept together with an earlier factor (crf_iters with crf): one figure says it
                rows = rows.copy()
                rows[key] = rows[key].map(
                    lambda v: DEFAULT if v is None or (isinstance(v, float) and math.isnan(v)) else v
                )
            else:
                continue
            # hold the other factors fixed, except those that move with this one (crf and crf_iters)
            others = [k for k in layout.context_of(section) if k != key and not _moves_with(rows, key, k)]
            ref = _reference(rows, others)
            for k, v in ref.items():
                rows = rows[rows[k].map(fmt_factor) == v]
            metric = layout.primary_of(section)
            if metric is None or rows.empty:
                continue
            rows = rows.copy()
            rows["line"] = rows.apply(lambda r: _line_label(r, key, layout), axis=1)
            # a line needs two points of the headline metric; fewer is a bar in the bars figure, not a trend
            points = rows[rows[metric].notna()].groupby("line")[key].nunique()
            lines = sorted(points[points >= 2].index)
            left_out = op_order(set(rows["line"]) - set(lines))
            rows = rows[rows["line"].isin(lines)]
            values = sorted(set(rows[key]), key=lambda v: (str(type(v)), v)) if len(rows) else []
            if lines and len(values) >= 2:
                facets.append((section, rows, values, ref, left_out))
        if not facets:
            continue
        facets = facets[:MAX_FACETS]
        panels = ("primary", "inference_ms")
        widths = [min(3.2, 1.1 + 0.35 * len(f[2])) for f in facets]
        fig, axes = _facets(widths, rows=len(panels), room=AXIS_ROOM + LABEL_ROOM)
        drawn: set[str] = set()
        hollow = False
        for j, (section, s, values, ref, _) in enumerate(facets):
            numeric = _is_numeric(values)
            metric = layout.primary_of(section)
            style = _styles(s["line"])
            position = {v: float(v) if numeric else i for i, v in enumerate(values)}
            for i, panel in enumerate(panels):
                ax = axes[i][j]
                col = metric if panel == "primary" else "inference_ms"
                if col not in s or not s[col].notna().any():
                    ax.set_visible(False)
                    continue
                for line in op_order(s["line"]):
                    g = s[(s["line"] == line) & s[col].notna()].copy()
                    g["_x"] = g[key].map(position)
                    g = g.sort_values("_x").reset_index(drop=True)
                    color, marker, dash = style[line]
                    ax.plot(g["_x"], g[col], marker=marker, ls=dash, color=color, label=line, ms=4, lw=1.2)
                    if panel != "primary":  # hollow over the filled marker: contended or noisy latency
                        bad = g[g.apply(lambda r: _doubtful(r, "inference"), axis=1)] if len(g) else g
                        hollow |= bool(len(bad))
                        if len(bad):
                            ax.plot(
                                bad["_x"], bad[col], marker=marker, ls="none", color=color, mfc="white", ms=4, zorder=3
                            )
                    err = _ci(g, col)
                    has = np.isfinite(err[0]) & np.isfinite(err[1]) & ((err[0] > 0) | (err[1] > 0))
                    if has.any():  # only where there is an interval: no caps at n=1
                        ax.errorbar(
                            g["_x"][has],
                            g[col][has],
                            yerr=[err[0][has], err[1][has]],
                            fmt="none",
                            color=color,
                            capsize=2,
                            lw=1,
                        )
                if panel == "primary":
                    drawn.update(_ablation_references(ax, layout, section, key, metric, ref, position))
                if numeric:
                    _log_if_wide(ax, [float(v) for v in values], "x")
                    if len(values) <= 8:
                        ax.set_xticks([float(v) for v in values])
                        ax.set_xticklabels([fmt_value(v) for v in values])
                        ax.minorticks_off()
                else:
                    ax.set_xticks(range(len(values)))
                    ax.set_xticklabels([fmt_value(v) for v in values], rotation=30, ha="right")
                    ax.set_xlim(-0.4, len(values) - 0.6)
                ax.set_xlabel(short_key(key))
                ax.set_ylabel(_metric_name(col, layout) if panel == "primary" else "inference latency (ms, ↓)")
                if i == 0:
                    held = ", ".join(f"{short_key(k)}={v}" for k, v in ref.items())
                    ax.set_title(
                        textwrap.fill(
                            section + (f" ({held})" if held else ""),
                            int((widths[j] + AXIS_ROOM) * TITLE_CHARS_PER_INCH),
                            break_long_words=False,
                        ),
                        fontsize=8,
                    )
        legend = _finish(fig, axes)
        helds = ["; ".join(f"{short_key(k)}={v}" for k, v in f[3].items()) for f in facets]
        held = f"; other swept factors held at {', '.join(h for h in helds if h)}" if any(helds) else ""
        left = op_order({v for f in facets for v in f[4]})
        left_note = ""
        if left:
            names = ", ".join(left) if len(left) <= 4 else f"{len(left)} variants"
            left_note = f" Left out, measured at only one {short_key(key)} (see the tables): {names}."
        out.append(
            Figure(
                _save(fig, folder, f"ablation-{slug(key)}"),
                f"Ablation over {key}: headline metric and inference latency, mean ± 95% CI over seeds"
                f"{held}.{left_note}{_reference_caption(sorted(drawn))}" + (HOLLOW_NOTE if hollow else ""),
                "ablation",
                legend,
                baselines=sorted(drawn),
            )
        )
    return out


def _ablation_references(
    ax, layout: Layout, section: str, key: str, metric: str, held: dict, position: dict
) -> list[str]:
    """The trivial baselines in an ablation panel: across the panel when the factor is the
    operator's (the baseline does not depend on it), else a dotted line over the factor's values (a
    baseline depends on the scale, say). Returns the names drawn."""
    frame = _baseline_frame(layout, section)
    col = _metric_column(frame, metric) if len(frame) else None
    if col is None:
        return []
    rows = _matching(frame, held)
    names, labels = [], []
    for name, g in rows.groupby("baseline", sort=True):
        if key in g:
            g = g.assign(_x=g[key].map(lambda v: position.get(DEFAULT if fmt_factor(v) == "default" else v)))
            g = g[g["_x"].notna() & pd.to_numeric(g[col], errors="coerce").notna()].sort_values("_x")
            if g.empty:
                continue
            ax.plot(g["_x"], g[col].astype(float), marker=".", ms=3, zorder=1.5, **TRIVIAL_LINE)
            value = float(g[col].iloc[-1])
        else:
            value = float(g[col].iloc[0])
            if not np.isfinite(value):
                continue
            ax.axhline(value, zorder=1.5, **TRIVIAL_LINE)
        names.append(str(name))
        labels.append((value, str(name), TRIVIAL_LINE["color"]))
    _label_lines(ax, labels)
    return names


def _line_label(row: pd.Series, key: str, layout: Layout) -> str:
    """The operator variant without the swept key (the key is the x axis)."""
    opts = [
        f"{short_key(k)}={fmt_value(row[k])}"
        for k in layout.op_factors
        if k != key and row[k] is not None and not (isinstance(row[k], float) and math.isnan(row[k]))
    ]
    return f"{row['op']} ({', '.join(opts)})" if opts else str(row["op"])


# ---- training curves -------------------------------------------------------------------------------


def smoothing_window(steps: int) -> int:
    """Trailing moving-average window over the per-step losses: a tenth of the run (1 below 20 steps),
    so the batch-to-batch noise every operator shares does not hide the trend."""
    return 1 if steps < 20 else max(2, round(steps / 10))


def _smoothed(ls: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Per (group, variant, seed): the loss by step, moving-averaged; one column per seed run."""
    window = smoothing_window(int(ls.groupby("trial_id")["step"].nunique().max()))
    ls = ls.sort_values(["trial_id", "step"])
    ls = ls.assign(value=ls.groupby("trial_id")["value"].transform(lambda v: v.rolling(window, min_periods=1).mean()))
    return ls, window


def curve_figures(layout: Layout, folder: Path) -> list[Figure]:
    """Training loss per comparison group (top) and, where the group has conv and another variant,
    each variant's loss divided by conv's at the same step and seed (bottom): operators that share
    the seed share the batches, so the ratio separates lines the shared batch noise puts on top of
    each other."""
    curves = layout.col.curves
    if curves.empty:
        return []
    loss = curves[curves["series"] == "loss"][["trial_id", "step", "value"]]
    t = layout.trials[layout.trials["state"] == "done"]
    t = t[["trial_id", "variant", "section", "group"] + [c for c in ("seed", "kind") if c in t]]
    if "seed" not in t:
        t = t.assign(seed=0)
    if "kind" not in t:
        t = t.assign(kind="operator")
    loss = loss.merge(t, on="trial_id")
    loss = loss[np.isfinite(loss["value"].astype(float))]
    out = []
    for section in sorted(loss["section"].unique()):
        ls, window = _smoothed(loss[loss["section"] == section])
        stats = ls.groupby(["group", "variant", "step"], sort=True)["value"].agg(["mean", "min", "max"]).reset_index()
        # each variant against conv, paired by seed and step
        conv = ls[ls["variant"] == BASELINE][["group", "seed", "step", "value"]].rename(columns={"value": "conv"})
        # operators only: a network variant (another upsampler) has its own loss scale and is in the top row
        paired = ls[(ls["variant"] != BASELINE) & (ls["kind"] == "operator")].merge(conv, on=["group", "seed", "step"])
        paired = paired[paired["conv"] > 0].assign(ratio=lambda d: d["value"] / d["conv"])
        ratios = paired.groupby(["group", "variant", "step"], sort=True)["ratio"].mean().reset_index()
        groups = sorted(stats["group"].unique())
        with_ratio = bool(len(ratios))

        def draw(axes, group):
            axes = np.atleast_1d(axes)
            ax = axes[0]
            g = stats[stats["group"] == group]
            style = _styles(g["variant"])
            band = g["variant"].nunique() <= MAX_BANDS  # more bands than that cover each other and the lines
            for variant in op_order(g["variant"]):
                v = g[g["variant"] == variant]
                color, _, dash = style[variant]
                ax.plot(v["step"], v["mean"], color=color, ls=dash, lw=1.1, label=variant)
                if band:
                    ax.fill_between(v["step"], v["min"], v["max"], color=color, alpha=0.12, lw=0)
            _log_if_wide(ax, g["mean"], "y")
            ax.set_xlabel("step")
            ax.set_ylabel("training loss")
            ax.set_title(panel_title(section, group, widths[group]), fontsize=8)
            if len(axes) < 2:
                return []
            ax = axes[1]
            r = ratios[ratios["group"] == group]
            if r.empty:  # conv alone (or no conv): nothing to divide by
                ax.set_visible(False)
                return []
            ax.axhline(1.0, zorder=1.5, **CONV_LINE)
            for variant in op_order(r["variant"]):
                v = r[r["variant"] == variant]
                color, _, dash = style[variant]
                ax.plot(v["step"], v["ratio"], color=color, ls=dash, lw=1.1, label=variant)
            _log_if_wide(ax, r["ratio"], "y")
            if ax.get_yscale() == "linear":  # at least 1 ± 1%: a 1e-4 relative difference must look flat
                low, high = ax.get_ylim()
                ax.set_ylim(min(low, 1 - RATIO_SPAN), max(high, 1 + RATIO_SPAN))
            ax.set_xlabel("step")
            ax.set_ylabel("loss ÷ conv's loss")
            return []

        widths = {gr: 1.8 if stats.loc[stats["group"] == gr, "variant"].nunique() == 1 else 3.0 for gr in groups}
        smooth = f"moving average over {window} steps, " if window > 1 else ""
        caption = (
            f"{section}: training loss ({smooth}mean over seeds; band, in panels of at most {MAX_BANDS} "
            f"lines: min to max over seeds)"
            + (
                "; below, each variant's loss divided by conv's at the same step and seed (the same "
                "batches), mean over seeds — under 1 (dashed) is lower than conv"
                if with_ratio
                else ""
            )
            + "."
        )
        out += _group_figures(folder, "curves", section, groups, draw, caption, widths, rows=2 if with_ratio else 1)
    return out


# ---- per-task bars ---------------------------------------------------------------------------------


def bar_limits(values: list[float], ends: list[float] = ()) -> tuple[float, float]:
    """The metric axis of a bar panel: from zero (a bar's length is its value, so a 1e-7 difference
    stays invisible) to past the largest value, error bar end or reference line. It goes below zero
    only for a negative value: a t-interval reaching below zero around a positive mean (mIoU 9 ± 18)
    is cut at the axis, as the metric is."""
    v = [x for x in values if np.isfinite(x)] + [0.0]
    e = [x for x in ends if np.isfinite(x)]
    hi = max(v + e)
    lo = min(v + e) if min(v) < 0 else 0.0
    pad = 0.06 * (hi - lo) or 1.0
    return (lo - pad if lo < 0 else 0.0), (hi + pad if hi > 0 else 0.0)


def bar_figures(layout: Layout, folder: Path) -> list[Figure]:
    out = []
    for section in layout.sections:
        metric = layout.primary_of(section)
        if metric is None:
            continue
        agg = layout.agg[(layout.agg["section"] == section) & layout.agg[metric].notna()]
        frame = _baseline_frame(layout, section)

        def draw(ax, group):
            g = agg[agg["group"] == group]
            order = op_order(g["variant"])
            g = g.set_index("variant").loc[order].reset_index()
            err = _ci(g, metric)
            style = _styles(g["variant"])
            hatches = {v: ("" if style[v][2] == "-" else "//") for v in style}  # variants of one op: hatched
            for i, r in g.iterrows():
                e = _err(err, i)
                color = style[r["variant"]][0]
                ax.bar(
                    i,
                    r[metric],
                    yerr=e,
                    color=color,
                    hatch=hatches[r["variant"]],
                    label=r["variant"],
                    capsize=3 if e is not None else 0,
                    edgecolor="black",
                    lw=0.5,
                    width=0.7,
                    hatchcolor="white" if sum(color) < 0.6 else "black",
                )  # a hatch shows on conv's black too
            labels = []
            conv = g[g["variant"] == BASELINE]
            if len(conv) and len(g) > 1:  # conv's line reads across the other bars
                ax.axhline(conv[metric].iloc[0], zorder=1.5, **CONV_LINE)
                labels.append((float(conv[metric].iloc[0]), BASELINE, CONV_LINE["color"]))
            refs = _references(frame, metric, _group_where(layout, section, g))
            _draw_references(ax, refs)
            labels += [(r.value, r.name, r.style["color"]) for r in refs]
            ends = list(g[metric] - np.nan_to_num(err[0])) + list(g[metric] + np.nan_to_num(err[1]))
            ends += [x for r in refs for x in (r.low, r.high)]
            ax.set_ylim(*bar_limits(list(g[metric]) + [r.value for r in refs], ends))
            ax.set_xlim(-0.6, len(order) - 0.4)
            ax.set_xticks(range(len(order)))
            ax.set_xticklabels(order, rotation=40, ha="right", fontsize=7)
            ax.grid(False, axis="x")
            ax.set_ylabel(_metric_name(metric, layout))
            ax.set_title(panel_title(section, group, widths[group]), fontsize=8)
            _label_lines(ax, labels)
            return [r.name for r in refs]

        groups = sorted(agg["group"].unique())
        # a panel as wide as its bars (plus the axis and the reference lines' names)
        widths = {gr: 0.3 + 0.38 * int((agg["group"] == gr).sum()) for gr in groups}
        out += _group_figures(
            folder,
            "bars",
            section,
            groups,
            draw,
            f"{section}: {metric[len('metric.') :]} per operator, mean ± 95% CI over seeds (no "
            f"bar where one seed gives no interval); the axis starts at zero. Dashed: conv.",
            widths,
            room=AXIS_ROOM + LABEL_ROOM,
        )
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
