"""The comparison tables of a report: per task, dataset and backbone, one row per operator variant.

A *section* is one (task, dataset, backbone). Inside a section, rows that share the values of every
other swept factor (scale, swapped stages, ...) form a *comparison group*: the best value per column
and the ratios to the ``conv`` baseline are taken inside it. Operator options that a suite sweeps
(``op_options.*``) make operator *variants*, e.g. ``pac (kernel_type=inv_0.5)``.

Each table is kept raw (numbers: mean, CI bounds, n, ratio, rank) for CSV, and rendered with the best
value per column marked for Markdown, LaTeX and HTML.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..results.collect import MEASURES, Collection, aggregate, rank
from .palette import BASELINE, op_order

SECTION_KEYS = ("task", "dataset", "backbone")
#: measurement columns a table shows: column → (heading, scale, unit)
TABLE_MEASURES = {
    "inference_ms": ("inference", 1.0, "ms"),
    "train_step_ms": ("training step", 1.0, "ms"),
    "train_step_peak_mb": ("peak memory (train)", 1.0, "MB"),
    "params": ("params", 1e-3, "k"),
    "flops": ("FLOPs", 1e-9, "G"),
}


def short_key(key: str) -> str:
    """``op_options.kernel_type`` → ``kernel_type`` (the prefix is clear from context)."""
    for prefix in ("op_options.", "task_options."):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def fmt_value(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def fmt_factor(v) -> str:
    """A swept factor's value; a missing one is the schema default, which the normalised config leaves out."""
    text = fmt_value(v)
    return "default" if text == "–" else text


@dataclass
class Layout:
    col: Collection
    trials: pd.DataFrame  # in-suite trials, with `variant` and `section`
    agg: pd.DataFrame  # aggregated over seeds, with `variant`, `section`, `group`
    section_keys: list[str]
    context: list[str]  # swept factors besides the operator and its options (in any section)
    op_factors: list[str]
    sections: list[str] = field(default_factory=list)
    section_context: dict[str, list[str]] = field(default_factory=dict)

    def measured(self, column: str) -> str:
        """The distinct values of a measurement setting (``measured_batch``, ``measured_resolution``), as "1/8"."""
        values = self.trials[column].dropna() if column in self.trials else []
        return "/".join(str(v) for v in sorted({int(v) for v in values})) or "?"

    def context_of(self, section: str) -> list[str]:
        """The factors that vary inside one section (a block's constant settings are not factors)."""
        return self.section_context.get(section, [])

    def metrics_of(self, section: str) -> list[str]:
        sub = self.agg[self.agg["section"] == section]
        ms = [c for c in self.col.metric_columns if c in sub and sub[c].notna().any()]
        primary = f"metric.{self._primary_name(sub)}"
        return sorted(ms, key=lambda m: (m != primary, m))

    def _primary_name(self, sub: pd.DataFrame) -> str | None:
        """The headline metric of the section's task (the most common one its records name)."""
        names = sub["primary_metric"].dropna() if "primary_metric" in sub else pd.Series(dtype=object)
        return names.value_counts().index[0] if len(names) else self.col.primary

    def primary_of(self, section: str) -> str | None:
        ms = self.metrics_of(section)
        return ms[0] if ms else None

    def higher_is_better(self, metric: str) -> bool:
        return bool(self.col.directions.get(metric[len("metric."):], True))


def _variant(row: pd.Series, op_factors: list[str]) -> str:
    opts = [f"{short_key(k)}={fmt_value(row[k])}" for k in op_factors
            if row[k] is not None and not (isinstance(row[k], float) and math.isnan(row[k]))]
    return f"{row['op']} ({', '.join(opts)})" if opts else str(row["op"])


def _section(row: pd.Series, keys: list[str]) -> str:
    return " · ".join(fmt_value(row[k]) for k in keys)


def build_layout(col: Collection) -> Layout:
    trials = col.trials[col.trials["in_suite"].astype(bool)].copy() if "in_suite" in col.trials else col.trials.copy()
    if "op" not in trials:
        trials["op"] = "?"
    sub = Collection(col.suite, col.description, trials, col.runs, col.curves, col.config_columns,
                     col.directions, col.primary)
    factors = sub.factors()
    op_factors = [f for f in factors if f.startswith("op_options.")]
    section_keys = [k for k in SECTION_KEYS if k in trials.columns]
    context = [f for f in factors if f not in section_keys and f != "op" and f not in op_factors]
    trials["variant"] = trials.apply(_variant, axis=1, op_factors=op_factors) if len(trials) else []
    trials["section"] = trials.apply(_section, axis=1, keys=section_keys) if len(trials) else []
    section_context = {}
    for section, rows in trials.groupby("section", sort=True):
        section_context[section] = [k for k in context if rows[k].map(repr).nunique() > 1]

    def group(r: pd.Series) -> str:
        return " · ".join([r["section"]] + [f"{short_key(k)}={fmt_factor(r[k])}" for k in section_context[r["section"]]])

    trials["group"] = trials.apply(group, axis=1) if len(trials) else []
    agg = aggregate(sub)
    if len(agg):
        agg["variant"] = agg.apply(_variant, axis=1, op_factors=op_factors)
        agg["section"] = agg.apply(_section, axis=1, keys=section_keys)
        agg["group"] = agg.apply(group, axis=1)
    else:
        agg["variant"] = agg["section"] = agg["group"] = []
    sections = sorted(agg["section"].unique().tolist()) if len(agg) else []
    return Layout(col, trials, agg, section_keys, context, op_factors, sections, section_context)


def _sort_rows(df: pd.DataFrame, context: list[str]) -> pd.DataFrame:
    """Rows by the context factors (numbers before text), then in the report's operator order."""
    order = {v: i for i, v in enumerate(op_order(df["variant"]))}
    keys = list(zip(*[df[c].map(lambda v: (0, v) if isinstance(v, (int, float)) and not isinstance(v, bool)
                                else (1, str(v))) for c in context], df["variant"].map(order)))
    return df.iloc[sorted(range(len(df)), key=keys.__getitem__)]


def section_table(layout: Layout, section: str) -> pd.DataFrame:
    """The raw table of one section: numbers only (means, CI bounds, n, ranks, ratios to conv)."""
    agg = layout.agg[layout.agg["section"] == section].copy()
    metrics = layout.metrics_of(section)
    for m in metrics:
        agg = rank(agg, m, layout.higher_is_better(m), ["group"]).rename(
            columns={"rank": f"{m}.rank", "best": f"{m}.best", "significant": f"{m}.significant_vs_best"})
    measures = [c for c in TABLE_MEASURES if c in agg]
    for c in measures:
        base = agg[agg["op"] == BASELINE].groupby("group")[c].first()
        agg[f"{c}.x_conv"] = agg[c] / agg["group"].map(base)
        finite = agg[np.isfinite(agg[c].astype(float))]
        best = finite.groupby("group")[c].transform("min") if len(finite) else pd.Series(dtype=float)
        agg[f"{c}.best"] = False
        agg.loc[finite.index, f"{c}.best"] = finite[c] == best
    context = layout.context_of(section)
    agg = _sort_rows(agg, context)
    cols = context + ["variant", "n_trials", "n_done", "n_failed", "n_running", "n_pending"]
    for m in metrics:
        cols += [m, f"{m}.ci_low", f"{m}.ci_high", f"{m}.n", f"{m}.std", f"{m}.rank", f"{m}.best", f"{m}.significant_vs_best"]
    for c in measures:
        cols += [c, f"{c}.x_conv", f"{c}.best"]
    out = agg[cols].rename(columns={"variant": "operator"}).reset_index(drop=True)
    return out


# ---- rendering -------------------------------------------------------------------------------------

def _num(v: float, digits: int = 4) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    if v == 0:
        return "0"
    mag = math.floor(math.log10(abs(v)))
    decimals = max(0, digits - 1 - mag)
    return f"{v:.{decimals}f}"


def _metric_cell(row: pd.Series, m: str) -> str:
    mean, lo, hi, n = row[m], row[f"{m}.ci_low"], row[f"{m}.ci_high"], row[f"{m}.n"]
    if not np.isfinite(mean):
        return "–"
    if n >= 2 and np.isfinite(lo):
        half = (hi - lo) / 2
        return f"{_num(mean)} ± {_num(half, 2)}"
    return _num(mean)


def _status_cell(row: pd.Series) -> str:
    parts = [f"{row['n_done']}/{row['n_trials']} done"]
    for s in ("failed", "running", "pending"):
        if row[f"n_{s}"]:
            parts.append(f"{row[f'n_{s}']} {s}")
    return ", ".join(parts)


def display_table(raw: pd.DataFrame, layout: Layout, section: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Strings for each cell and a same-shaped boolean frame saying which cells are the best of their column."""
    metrics = layout.metrics_of(section)
    cells: dict[str, list] = {}
    marks: dict[str, list] = {}
    for c in layout.context_of(section):
        cells[short_key(c)] = [fmt_factor(v) for v in raw[c]]
        marks[short_key(c)] = [False] * len(raw)
    cells["operator"] = list(raw["operator"])
    marks["operator"] = [False] * len(raw)
    for m in metrics:
        arrow = "↑" if layout.higher_is_better(m) else "↓"
        head = f"{m[len('metric.'):]} {arrow}"
        cells[head] = [_metric_cell(r, m) for _, r in raw.iterrows()]
        marks[head] = list(raw[f"{m}.best"].astype(bool))
    primary = layout.primary_of(section)
    if primary:
        verdict = []
        for _, r in raw.iterrows():
            if not np.isfinite(r[primary]):
                verdict.append("–")
            elif r[f"{primary}.best"]:
                verdict.append("best")
            elif r[f"{primary}.n"] < 2:
                verdict.append("n=1, no CI")
            else:
                verdict.append("worse (CIs separate)" if r[f"{primary}.significant_vs_best"] else "tied (CIs overlap)")
        cells["vs best"] = verdict
        marks["vs best"] = [False] * len(raw)
        cells["n"] = [str(int(v)) for v in raw[f"{primary}.n"]]
        marks["n"] = [False] * len(raw)
    for c, (head, scale, unit) in TABLE_MEASURES.items():
        if c not in raw:
            continue
        cells[f"{head} ({unit})"] = [_num(v * scale, 3) for v in raw[c]]
        marks[f"{head} ({unit})"] = list(raw[f"{c}.best"].astype(bool))
        cells[f"{head} ×conv"] = [("×" + _num(v, 3)) if np.isfinite(v) else "–" for v in raw[f"{c}.x_conv"]]
        marks[f"{head} ×conv"] = [False] * len(raw)
    if (raw["n_done"] < raw["n_trials"]).any():
        cells["trials"] = [_status_cell(r) for _, r in raw.iterrows()]
        marks["trials"] = [False] * len(raw)
    return pd.DataFrame(cells), pd.DataFrame(marks)


def to_markdown(cells: pd.DataFrame, marks: pd.DataFrame) -> str:
    body = cells.copy()
    for c in body:
        body[c] = [f"**{v}**" if m else v for v, m in zip(body[c], marks[c])]
    return body.to_markdown(index=False)


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                  "±": r"$\pm$", "×": r"$\times$", "↑": r"$\uparrow$", "↓": r"$\downarrow$", "–": "--",
                  "·": r"$\cdot$"}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(cells: pd.DataFrame, marks: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``); the best value of each column in bold."""
    align = "l" * (list(cells.columns).index("operator") + 1) + "r" * (len(cells.columns) - list(cells.columns).index("operator") - 1)
    lines = [r"\begin{table}[t]", r"\centering", r"\small", rf"\caption{{{latex_escape(caption)}}}",
             rf"\label{{{label}}}", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(latex_escape(c) for c in cells.columns) + r" \\", r"\midrule"]
    for i in range(len(cells)):
        row = []
        for c in cells.columns:
            text = latex_escape(cells[c].iloc[i])
            row.append(rf"\textbf{{{text}}}" if marks[c].iloc[i] else text)
        lines.append(" & ".join(row) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def to_html(cells: pd.DataFrame, marks: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells.columns)
    rows = []
    for i in range(len(cells)):
        tds = []
        for c in cells.columns:
            text = html.escape(str(cells[c].iloc[i]))
            tds.append(f"<td class=\"best\">{text}</td>" if marks[c].iloc[i] else f"<td>{text}</td>")
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>"


def status_table(layout: Layout) -> pd.DataFrame:
    """Every trial that is not done: its state, its config factors and, for a failure, the error."""
    t = layout.trials
    t = t[t["state"] != "done"]
    cols = ["trial_id", "state", "status", "variant"] + [c for c in layout.section_keys + layout.context if c in t]
    out = t[cols].copy()
    out["error"] = t["error"].fillna("") if "error" in t else ""
    out["error"] = out["error"].map(lambda s: str(s).splitlines()[0][:160] if s else "")
    return out.sort_values(["state", "trial_id"]).reset_index(drop=True)


def environment_summary(trials: pd.DataFrame, keys: tuple[str, ...], short_commit: bool = False) -> pd.DataFrame:
    """Where the finished trials ran: one row per distinct combination of the ``env.*`` ``keys``, with
    the number of trials (the ``env.`` prefix is dropped from the column names)."""
    t = trials[trials["state"] == "done"]
    cols = [c for c in keys if c in t and t[c].notna().any()]  # keys older records lack are left out
    if not cols or t.empty:
        return pd.DataFrame(columns=[c.replace("env.", "") for c in cols] + ["trials"])
    out = t[cols].map(str).value_counts(sort=False).rename("trials").reset_index()
    if short_commit and "env.git_commit" in out:
        out["env.git_commit"] = out["env.git_commit"].str[:10]
    out.columns = [c.replace("env.", "") for c in out.columns]
    return out.sort_values(list(out.columns[:-1])).reset_index(drop=True)


def environment_table(layout: Layout) -> pd.DataFrame:
    """The report's environment table: device, threads, torch, commit, precision, and whether PAC ran
    on its compiled CPU kernels (a CPU timing of PAC depends on it)."""
    return environment_summary(layout.trials, ("env.device", "env.device_name", "env.threads", "env.torch",
                                               "env.git_commit", "env.git_dirty", "env.precision",
                                               "env.pac_cpu_kernels"), short_commit=True)

__all__ = ["Layout", "MEASURES", "build_layout", "display_table", "environment_summary", "environment_table", "section_table",
           "status_table", "to_html", "to_latex", "to_markdown"]
