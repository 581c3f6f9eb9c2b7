"""The comparison tables of a report: per task, dataset and backbone, one row per operator variant.

A *section* is one (task, dataset, backbone). Inside a section, rows that share the values of every
other swept factor (scale, training budget, ...) form a *comparison group*. A group holds

- *operator* rows: the operator and how it is applied (``op_options.*``, ``swap.*``, ``guide``,
  ``dynconv_anneal`` of older records) make its label, e.g. ``pac (kernel_type=inv_0.5)``;
- *network variant* rows: the same network with a different upsampler or a CRF head
  (``task_options.upsampler``/``crf``/``crf_iters``), e.g. ``conv (upsampler=carafe)``; each is compared
  with the same network without them, never left alone in a group of its own;
- *baseline* rows: the task's trivial, non-learned predictors on the same test data (``bilinear``,
  ``majority``, ...), from the records' ``baselines``.

Every row is compared with its reference (``conv`` of the group; for a network variant, the same
operator without the variant) *paired by seed*, with the 95% t interval of the mean per-seed
difference, and Holm–Bonferroni over the comparisons of the group decides which differences count
(:mod:`adaptconv.results.stats`). A value is in bold only when its advantage over conv is significant.

Each table is kept raw (numbers: means, CI bounds, n, differences, p-values, Holm decisions) for CSV,
and rendered with the digits the intervals support for Markdown, LaTeX and HTML.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..results import stats
from ..results.collect import (
    BASELINE_COLUMN,
    MEASURES,
    NETWORK_VARIANT_KEYS,
    NOT_A_FACTOR,
    Collection,
    aggregate,
    is_op_key,
    raised,
)
from ..results.store import STATES
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
#: the latency columns of a table and the phase whose flags (``<phase>_noisy``, ``<phase>_contended``) they carry
LATENCY_PHASES = {"inference_ms": "inference", "train_step_ms": "train_step"}
#: how a table cell marks a latency that cannot be read as the operator's speed
NOISY_MARK, CONTENDED_MARK = "†", "‡"
#: what a row of a comparison group is
OPERATOR, VARIANT, TRIVIAL = "operator", "network variant", "baseline"
KIND_ORDER = {OPERATOR: 0, VARIANT: 1, TRIVIAL: 2}
REFERENCE = "reference"  # the verdict of the row the others are compared with
NO_REFERENCE = "no conv to compare"
#: config keys that cannot change a plain convolution (swapping conv for conv is the identity)
_CONV_IGNORES = ("swap.", "guide", "dynconv_anneal")  # dynconv_anneal: records from before op_options.anneal


def short_key(key: str) -> str:
    """``op_options.kernel_type`` → ``kernel_type`` (the prefix is clear from context)."""
    for prefix in ("op_options.", "task_options.", "swap."):
        if key.startswith(prefix):
            return key[len(prefix) :]
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


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


@dataclass
class Layout:
    col: Collection
    trials: pd.DataFrame  # in-suite trials, with `variant`, `section`, `group`, `kind`, `row_key`
    agg: pd.DataFrame  # operator and network-variant rows aggregated over seeds (the same columns, + `reference`)
    section_keys: list[str]
    context: list[str]  # swept factors that make comparison groups (in any section)
    op_factors: list[str]  # swept keys of how the operator is applied (op_options.*, swap.*, guide, ...)
    sections: list[str] = field(default_factory=list)
    section_context: dict[str, list[str]] = field(default_factory=dict)
    variant_factors: list[str] = field(default_factory=list)  # swept network variant keys (upsampler, crf)
    #: the trivial baselines per seed (in-suite rows of ``col.baselines``), with `variant`, `section`, `group`
    baseline_trials: pd.DataFrame = None
    #: the trivial baselines aggregated over seeds, one row per (comparison group, baseline)
    baseline_agg: pd.DataFrame = None
    _values: dict = field(default_factory=dict, repr=False)
    _comparisons: dict = field(default_factory=dict, repr=False)

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
        return bool(self.col.directions.get(metric[len("metric.") :], True))

    def baselines_of(self, section: str) -> pd.DataFrame:
        """The trivial baselines of a section: one row per (comparison group, baseline), with columns
        ``baseline`` (its name), ``section``, ``group``, the section's context columns, and for each metric
        ``<metric>``, ``<metric>.ci_low``, ``<metric>.ci_high``, ``<metric>.n`` (mean and 95% t interval
        over seeds, as in :attr:`agg`). Empty (with those columns) when the records carry no baselines."""
        metrics = self.metrics_of(section)
        cols = [BASELINE_COLUMN, "section", "group"] + self.context_of(section)
        for m in metrics:
            cols += [m, f"{m}.ci_low", f"{m}.ci_high", f"{m}.n"]
        b = self.baseline_agg
        b = b[b["section"] == section] if len(b) else b
        if not len(b):
            return pd.DataFrame(columns=cols)
        for m in metrics:  # a metric the baselines do not report (e.g. top5 of chance): no value
            if m not in b:
                b = b.assign(**{m: np.nan, f"{m}.ci_low": np.nan, f"{m}.ci_high": np.nan, f"{m}.n": 0})
        return b[cols].reset_index(drop=True)

    def rows_of(self, section: str) -> pd.DataFrame:
        """Every row of a section's table (operators, network variants, baselines), in the table's order."""
        parts = [self.agg[self.agg["section"] == section]]
        if len(self.baseline_agg):
            parts.append(self.baseline_agg[self.baseline_agg["section"] == section])
        rows = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
        return _sort_rows(rows, self.context_of(section))

    def values_by_seed(self, row_key: str, metric: str) -> dict:
        """``{seed: value}`` of one table row (its ``row_key``) over its finished trials."""
        if not self._values:
            self._values = _values_by_seed(self)
        return self._values.get((row_key, metric), {})

    def seed_values(self, section: str, label: str, metric: str, group: str | None = None) -> dict:
        """``{seed: value}`` of the row labelled ``label`` (an operator variant such as ``pac`` or
        ``conv (upsampler=carafe)``, or a baseline's name) in a section; ``group`` picks the comparison
        group when the section has several. Raises ``KeyError`` naming what exists when there is no such row."""
        rows = self.rows_of(section)
        hit = rows[rows["variant"] == label]
        if group is not None:
            hit = hit[hit["group"] == group]
        if hit.empty:
            raise KeyError(
                f"section {section!r}: no row {label!r}"
                + (f" in group {group!r}" if group else "")
                + f"; rows: {', '.join(sorted(set(rows['variant'])))}"
            )
        if hit["group"].nunique() > 1:
            raise KeyError(
                f"section {section!r}: {label!r} is in several comparison groups; pick one of "
                f"{', '.join(sorted(set(hit['group'])))}"
            )
        return self.values_by_seed(hit["row_key"].iloc[0], metric)

    def comparisons(self, section: str, metric: str | None = None) -> pd.DataFrame:
        """The paired comparisons of every row of a section with its reference on ``metric`` (default:
        the headline metric); one row per table row, aligned with :meth:`rows_of`. See :func:`compare_rows`."""
        metric = metric or self.primary_of(section)
        key = (section, metric)
        if key not in self._comparisons:
            self._comparisons[key] = compare_rows(self, section, metric)
        return self._comparisons[key]


def _variant(row: pd.Series, op_factors: dict | list[str], variant_factors: list[str] = ()) -> str:
    """The row's label: the operator, how it is applied, and the network variant (``conv (upsampler=carafe)``).

    ``op_factors``: the operator keys to show, or ``{(section, op): keys}`` — those that vary among the
    trials of that operator in that section (a key constant for an operator, such as the guide every
    ``pac`` of a block takes, does not need saying)."""
    conv = row["op"] == BASELINE
    if isinstance(op_factors, dict):
        op_factors = op_factors.get((row["section"], row["op"]), [])
    keys = [k for k in op_factors if not (conv and any(k.startswith(p) for p in _CONV_IGNORES))]
    opts = [f"{short_key(k)}={fmt_value(row[k])}" for k in [*keys, *variant_factors] if not _missing(row[k])]
    return f"{row['op']} ({', '.join(opts)})" if opts else str(row["op"])


def _kind(row: pd.Series, variant_factors: list[str]) -> str:
    return VARIANT if any(not _missing(row[k]) for k in variant_factors) else OPERATOR


def _section(row: pd.Series, keys: list[str]) -> str:
    return " · ".join(fmt_value(row[k]) for k in keys)


def _row_keys(df: pd.DataFrame, keys: list[str]) -> pd.Series:
    """One string per distinct config without the seed: ties trials to their aggregated row."""
    if df.empty:
        return pd.Series([], dtype=object, index=df.index)
    present = [k for k in keys if k in df]
    return df[present].apply(lambda r: repr(tuple(repr(v) for v in r)), axis=1)


def build_layout(col: Collection) -> Layout:
    trials = col.trials[col.trials["in_suite"].astype(bool)].copy() if "in_suite" in col.trials else col.trials.copy()
    if "op" not in trials:
        trials["op"] = "?"
    sub = Collection(
        col.suite,
        col.description,
        trials,
        col.runs,
        col.curves,
        col.config_columns,
        col.directions,
        col.primary,
        col.baselines,
    )
    factors = sub.factors()
    op_keys = [f for f in factors if is_op_key(f) and f != "op"]
    variant_factors = [f for f in factors if f in NETWORK_VARIANT_KEYS]
    section_keys = [k for k in SECTION_KEYS if k in trials.columns]
    context = [
        f for f in factors if f not in section_keys and f != "op" and f not in op_keys and f not in variant_factors
    ]
    keys = [c for c in col.config_columns if c not in NOT_A_FACTOR]
    section_context = {}
    section_variants: dict[str, list[str]] = {}
    label_keys: dict[tuple, list[str]] = {}  # (section, op) → the operator keys that tell its rows apart
    if len(trials):
        trials["section"] = trials.apply(_section, axis=1, keys=section_keys)
        for section, rows in trials.groupby("section", sort=True):
            section_context[section] = [k for k in context if rows[k].map(repr).nunique() > 1]
            # a network variant key makes variants only where it varies: a setting every row of the
            # section shares (spatial_segmentation's fixed decoder) is not a variant of anything
            section_variants[section] = [k for k in variant_factors if rows[k].map(repr).nunique() > 1]
        for (section, op), rows in trials.groupby(["section", "op"], sort=True):
            label_keys[(section, op)] = [k for k in op_keys if rows[k].map(repr).nunique() > 1]
    op_factors = [k for k in op_keys if any(k in ks for ks in label_keys.values())]

    def group(r: pd.Series) -> str:
        return " · ".join(
            [r["section"]] + [f"{short_key(k)}={fmt_factor(r[k])}" for k in section_context.get(r["section"], [])]
        )

    def label(df: pd.DataFrame, baseline: bool = False) -> pd.DataFrame:
        if not len(df):
            for c in ("variant", "section", "group", "kind", "row_key", "base_label"):
                df[c] = []
            return df
        df["section"] = df.apply(_section, axis=1, keys=section_keys)
        df["variant"] = (
            df[BASELINE_COLUMN]
            if baseline
            else df.apply(lambda r: _variant(r, label_keys, section_variants.get(r["section"], [])), axis=1)
        )
        df["base_label"] = df["variant"] if baseline else df.apply(_variant, axis=1, op_factors=label_keys)
        df["kind"] = (
            TRIVIAL if baseline else df.apply(lambda r: _kind(r, section_variants.get(r["section"], [])), axis=1)
        )
        df["group"] = df.apply(group, axis=1)
        df["row_key"] = _row_keys(df, keys + ([BASELINE_COLUMN] if baseline else []))
        return df

    trials = label(trials)
    agg = label(aggregate(sub))
    base = col.baselines
    if len(base) and "in_suite" in base:
        base = base[base["in_suite"].astype(bool)]
    # a baseline belongs to the sections whose trials carry it; its group is built like theirs
    base = base[base.apply(_section, axis=1, keys=section_keys).isin(section_context)].copy() if len(base) else base
    base_trials = label(base.copy(), baseline=True)
    base_agg = label(aggregate(sub, trials=base), baseline=True) if len(base) else label(pd.DataFrame(), True)
    sections = sorted(agg["section"].unique().tolist()) if len(agg) else []
    return Layout(
        col,
        trials,
        agg,
        section_keys,
        context,
        op_factors,
        sections,
        section_context,
        variant_factors,
        base_trials,
        base_agg,
    )


def _values_by_seed(layout: Layout) -> dict:
    """``{(row_key, metric): {seed: value}}`` for every finished trial and baseline row."""
    out: dict = {}
    for df in (layout.trials, layout.baseline_trials):
        if df is None or not len(df) or "seed" not in df:
            continue
        ok = df[df["status"] == "ok"]
        for m in [c for c in ok.columns if c.startswith("metric.")]:
            for key, seed, v in zip(ok["row_key"], ok["seed"], ok[m]):
                if v is not None and np.isfinite(v):
                    out.setdefault((key, m), {})[seed] = float(v)
    return out


def _sort_rows(df: pd.DataFrame, context: list[str]) -> pd.DataFrame:
    """Rows by the context factors (numbers before text), then operators in the report's order, the
    network variants, and the trivial baselines last."""
    kinds = df["kind"].map(KIND_ORDER) if "kind" in df else pd.Series(0, index=df.index)
    trivial = set(df.loc[kinds == KIND_ORDER[TRIVIAL], "variant"])
    order = {v: i for i, v in enumerate(op_order(set(df["variant"]) - trivial))}
    order.update({v: len(order) + i for i, v in enumerate(sorted(trivial))})  # baselines by name
    keys = list(
        zip(
            *[
                df[c].map(lambda v: (0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, str(v)))
                for c in context
            ],
            kinds,
            df["variant"].map(order),
        )
    )
    return df.iloc[sorted(range(len(df)), key=keys.__getitem__)].reset_index(drop=True)


def compare_rows(layout: Layout, section: str, metric: str) -> pd.DataFrame:
    """Paired comparisons of each row of a section's table with its reference, on ``metric``.

    The reference of an operator or baseline row is ``conv`` of the same comparison group (the conv row
    without a network variant); of a network variant, the same operator without the variant. Per row:
    ``reference`` (its label), ``delta`` = mean over the common seeds of value − reference value, its 95%
    t interval ``delta_ci_low``/``delta_ci_high``, ``delta_n`` (pairs), ``p_value``, ``holm_reject``
    (Holm–Bonferroni over the operator and variant comparisons of the group; the trivial baselines'
    comparisons with conv are a family of their own), ``verdict`` (better / worse / no detectable
    difference / n<2, no CI, from the row's side; ``reference`` for the reference row, ``no conv to compare``
    without one) and ``best``: the advantage is significant — the row is better than conv after Holm, or
    it is conv and every other row of the group is worse after Holm. Then, against the strongest trivial
    baseline of the group (best mean), for the rows that are not baselines: ``vs_baseline`` (its name),
    ``vs_baseline_delta``, ``_ci_low``, ``_ci_high``, ``_n``, ``_p_value``, ``_holm_reject`` (Holm over those
    comparisons) and ``vs_baseline_verdict``."""
    rows = layout.rows_of(section)
    hib = layout.higher_is_better(metric) if metric else True
    n = len(rows)
    # plain lists, filled per group and made a frame once (per-cell pandas writes are slow at scale)
    out: dict[str, list] = {
        "reference": [None] * n,
        "delta": [math.nan] * n,
        "delta_ci_low": [math.nan] * n,
        "delta_ci_high": [math.nan] * n,
        "delta_n": [0] * n,
        "p_value": [math.nan] * n,
        "holm_reject": [False] * n,
        "verdict": [NO_REFERENCE] * n,
        "best": [False] * n,
        "vs_baseline": [""] * n,
        "vs_baseline_delta": [math.nan] * n,
        "vs_baseline_ci_low": [math.nan] * n,
        "vs_baseline_ci_high": [math.nan] * n,
        "vs_baseline_n": [0] * n,
        "vs_baseline_p_value": [math.nan] * n,
        "vs_baseline_holm_reject": [False] * n,
        "vs_baseline_verdict": [""] * n,
    }
    if metric is None or not n:
        return pd.DataFrame(out, index=rows.index)
    label, kind, op, base = (list(rows[c]) for c in ("variant", "kind", "op", "base_label"))
    mean = [float(v) for v in rows[metric]]
    values = [layout.values_by_seed(k, metric) for k in rows["row_key"]]
    groups: dict[str, list[int]] = {}
    for i, g in enumerate(rows["group"]):
        groups.setdefault(g, []).append(i)
    for g in groups.values():
        convs = [i for i in g if op[i] == BASELINE and kind[i] == OPERATOR]
        conv = convs[0] if convs else None
        refs = {}
        for i in g:
            if i == conv:
                continue
            if kind[i] == VARIANT:  # the same network without the variant
                same = [j for j in g if kind[j] == OPERATOR and label[j] == base[i]]
                refs[i] = same[0] if same else None
            else:
                refs[i] = conv
        compared = [i for i, r in refs.items() if r is not None]
        diffs = {i: stats.paired_difference(values[i], values[refs[i]]) for i in compared}
        # two families, each Holm-corrected on its own: the operators and variants against their
        # reference (which operator wins), and conv against the trivial baselines (does it learn at all)
        reject = {}
        for family in ([i for i in compared if kind[i] != TRIVIAL], [i for i in compared if kind[i] == TRIVIAL]):
            reject.update(zip(family, stats.holm([diffs[i].p_value for i in family])))
        for i in compared:
            d = diffs[i]
            out["reference"][i] = label[refs[i]]
            out["delta"][i], out["delta_ci_low"][i], out["delta_ci_high"][i] = d.mean, d.low, d.high
            out["delta_n"][i], out["p_value"][i] = d.n, d.p_value
            out["holm_reject"][i] = bool(reject[i])
            out["verdict"][i] = stats.verdict(d, hib, significant=reject[i])
        if conv is not None:
            out["verdict"][conv] = REFERENCE
            out["reference"][conv] = label[conv]
            for i in compared:
                if refs[i] == conv:
                    out["best"][i] = out["verdict"][i] == stats.BETTER
            others = [i for i in g if i != conv and np.isfinite(mean[i])]
            out["best"][conv] = bool(others) and all(
                refs.get(i) == conv and out["verdict"][i] == stats.WORSE for i in others
            )
        # the strongest trivial baseline of the group: what every trained row must beat
        trivial = [i for i in g if kind[i] == TRIVIAL and np.isfinite(mean[i])]
        if not trivial:
            continue
        strongest = sorted(trivial, key=lambda i: -mean[i] if hib else mean[i])[0]
        trained = [i for i in g if kind[i] != TRIVIAL]
        diffs = {i: stats.paired_difference(values[i], values[strongest]) for i in trained}
        reject = dict(zip(trained, stats.holm([diffs[i].p_value for i in trained])))
        for i in trained:
            d = diffs[i]
            out["vs_baseline"][i] = label[strongest]
            out["vs_baseline_delta"][i], out["vs_baseline_ci_low"][i] = d.mean, d.low
            out["vs_baseline_ci_high"][i], out["vs_baseline_n"][i], out["vs_baseline_p_value"][i] = (
                d.high,
                d.n,
                d.p_value,
            )
            out["vs_baseline_holm_reject"][i] = bool(reject[i])
            out["vs_baseline_verdict"][i] = stats.verdict(d, hib, significant=reject[i])
    return pd.DataFrame(out, index=rows.index)


def section_table(layout: Layout, section: str) -> pd.DataFrame:
    """The raw table of one section: numbers only (means, CI bounds, n, paired differences with their
    intervals, p-values, Holm decisions and verdicts per metric, ratios to conv)."""
    rows = layout.rows_of(section)
    metrics = layout.metrics_of(section)
    raw = rows.copy()
    for m in metrics:
        cmp = layout.comparisons(section, m)
        for c in cmp.columns:
            if c == "reference" and m != metrics[0]:
                continue  # the same for every metric
            raw[f"{m}.{c}" if c != "reference" else "reference"] = cmp[c].values
    measures = [c for c in TABLE_MEASURES if c in raw]
    is_conv = (raw["op"] == BASELINE) & (raw["kind"] == OPERATOR)
    for c in measures:
        base = raw[is_conv].groupby("group")[c].first()
        raw[f"{c}.x_conv"] = raw[c] / raw["group"].map(base)
    flags = []
    for c, phase in LATENCY_PHASES.items():
        if c not in measures:
            continue
        for flag in ("noisy", "contended"):
            col = f"{phase}_{flag}"
            raw[f"{c}.{flag}"] = raw[col].map(raised).astype(bool) if col in raw else False
            # a ratio is as doubtful as the worse of its two latencies
            conv_flag = raw[is_conv].groupby("group")[f"{c}.{flag}"].first()
            raw[f"{c}.x_conv.{flag}"] = raw[f"{c}.{flag}"] | raw["group"].map(conv_flag).map(raised).astype(bool)
            flags += [f"{c}.{flag}", f"{c}.x_conv.{flag}"]
    context = layout.context_of(section)
    counts = ["n_trials"] + [c for c in rows.columns if c.startswith("n_") and c not in ("n_trials", "n_records")]
    for c in counts:  # a baseline row counts the seeds it was stored for
        raw[c] = raw[c].fillna(0).astype(int) if c in raw else 0
    cols = context + ["variant", "kind", "reference"] + counts
    for m in metrics:
        cols += [m, f"{m}.ci_low", f"{m}.ci_high", f"{m}.n", f"{m}.std"]
        cols += [f"{m}.{c}" for c in layout.comparisons(section, m).columns if c != "reference"]
    for c in measures:
        cols += [c, f"{c}.x_conv"]
    cols += flags
    for c in cols:
        if c not in raw:
            raw[c] = np.nan
    return raw[cols].rename(columns={"variant": "operator"}).reset_index(drop=True)


# ---- rendering -------------------------------------------------------------------------------------


def _num(v: float, digits: int = 4) -> str:
    if v is None or not np.isfinite(v):
        return "–"
    return stats.format_significant(v, digits)


def _metric_cell(row: pd.Series, m: str) -> str:
    """``3.56 ± 0.04`` to the digits the interval supports; one seed: 4 significant digits."""
    mean, lo, hi, n = row[m], row[f"{m}.ci_low"], row[f"{m}.ci_high"], row[f"{m}.n"]
    if mean is None or not np.isfinite(mean):
        return "–"
    half = (hi - lo) / 2 if n >= 2 and np.isfinite(lo) and np.isfinite(hi) else math.nan
    return stats.format_mean_ci(mean, half)


def _delta_cell(row: pd.Series, m: str) -> str:
    """The paired difference to the reference: ``-0.31 ± 0.04`` (``(n=1)`` without an interval);
    ``vs <label>`` when the reference is not conv (a network variant against the same network)."""
    verdict = row[f"{m}.verdict"]
    if verdict == REFERENCE:
        return REFERENCE
    if verdict == NO_REFERENCE or not row[f"{m}.delta_n"]:
        return "–"
    lo, hi = row[f"{m}.delta_ci_low"], row[f"{m}.delta_ci_high"]
    half = (hi - lo) / 2 if row[f"{m}.delta_n"] >= 2 and np.isfinite(lo) else math.nan
    text = stats.format_delta(row[f"{m}.delta"], half)
    if row[f"{m}.delta_n"] < 2:
        text += " (n=1)"
    ref = row["reference"]
    if isinstance(ref, str) and ref != BASELINE:
        text += f" vs {ref}"
    return text


def _verdict_cell(row: pd.Series, m: str) -> str:
    verdict = row[f"{m}.verdict"]
    if row["kind"] == TRIVIAL and verdict in (stats.BETTER, stats.WORSE):
        # from the baseline's side, so say what it means for the network
        return f"{verdict} (conv {'beats it' if verdict == stats.WORSE else 'does not beat it'})"
    return verdict


def _vs_baseline_cell(row: pd.Series, m: str) -> str:
    if row["kind"] == TRIVIAL or not row[f"{m}.vs_baseline"]:
        return "–"
    verdict, name = row[f"{m}.vs_baseline_verdict"], row[f"{m}.vs_baseline"]
    if verdict == stats.NO_CI:
        return f"{verdict} ({name})"
    return f"{verdict} {'from' if verdict == stats.NO_DIFFERENCE else 'than'} {name}"


def _latency_mark(row: pd.Series, column: str) -> str:
    """‡ after a latency (or a ratio of latencies) measured while other processes competed for the device,
    † after one whose repeats spread more than the noise threshold; nothing after any other cell."""
    mark = ""
    if raised(row.get(f"{column}.contended")):
        mark += CONTENDED_MARK
    if raised(row.get(f"{column}.noisy")):
        mark += NOISY_MARK
    return mark


def _status_cell(row: pd.Series) -> str:
    if row["kind"] == TRIVIAL:
        return "trivial baseline"
    parts = [f"{row['n_done']}/{row['n_trials']} done"]
    for s in STATES[1:]:  # every state but done, crashed and corrupt included
        if row.get(f"n_{s}"):
            parts.append(f"{row[f'n_{s}']} {s}")
    return ", ".join(parts)


def display_table(raw: pd.DataFrame, layout: Layout, section: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Strings for each cell and a same-shaped boolean frame saying which cells are in bold: a metric whose
    advantage over conv is significant after Holm (see :func:`compare_rows`)."""
    metrics = layout.metrics_of(section)
    cells: dict[str, list] = {}
    marks: dict[str, list] = {}

    def put(head: str, values: list, bold: list | None = None) -> None:
        cells[head] = values
        marks[head] = bold if bold is not None else [False] * len(raw)

    for c in layout.context_of(section):
        put(short_key(c), [fmt_factor(v) for v in raw[c]])
    put("operator", list(raw["operator"]))
    for m in metrics:
        arrow = "↑" if layout.higher_is_better(m) else "↓"
        put(
            f"{m[len('metric.') :]} {arrow}",
            [_metric_cell(r, m) for _, r in raw.iterrows()],
            list(raw[f"{m}.best"].astype(bool)),
        )
    primary = layout.primary_of(section)
    if primary:
        put("n", [str(int(v)) if np.isfinite(v) else "0" for v in raw[f"{primary}.n"].astype(float)])
        put("Δ vs conv (95% CI)", [_delta_cell(r, primary) for _, r in raw.iterrows()])
        put("verdict", [_verdict_cell(r, primary) for _, r in raw.iterrows()])
        if (raw["kind"] == TRIVIAL).any():
            put("vs trivial baseline", [_vs_baseline_cell(r, primary) for _, r in raw.iterrows()])
    for c, (head, scale, unit) in TABLE_MEASURES.items():
        if c not in raw:
            continue
        put(
            f"{head} ({unit})",
            [_num(v * scale, 3) + _latency_mark(r, c) for v, (_, r) in zip(raw[c].astype(float), raw.iterrows())],
        )
        put(
            f"{head} ×conv",
            [
                ("×" + _num(v, 3) + _latency_mark(r, f"{c}.x_conv")) if np.isfinite(v) else "–"
                for v, (_, r) in zip(raw[f"{c}.x_conv"].astype(float), raw.iterrows())
            ],
        )
    if ((raw["n_done"] < raw["n_trials"]) & (raw["kind"] != TRIVIAL)).any():
        put("trials", [_status_cell(r) for _, r in raw.iterrows()])
    return pd.DataFrame(cells), pd.DataFrame(marks)


def to_markdown(cells: pd.DataFrame, marks: pd.DataFrame) -> str:
    body = cells.copy()
    for c in body:
        body[c] = [f"**{v}**" if m else v for v, m in zip(body[c], marks[c])]
    return body.to_markdown(index=False)


_LATEX_ESCAPES = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "×": r"$\times$",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "–": "--",
    "·": r"$\cdot$",
    "Δ": r"$\Delta$",
    "<": r"$<$",
    ">": r"$>$",
    "−": "-",
    "—": "---",
}


def latex_escape(text: str) -> str:
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in str(text))


def to_latex(cells: pd.DataFrame, marks: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table (needs ``\\usepackage{booktabs}``); significant advantages over conv in bold."""
    align = "l" * (list(cells.columns).index("operator") + 1) + "r" * (
        len(cells.columns) - list(cells.columns).index("operator") - 1
    )
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        r"\small",
        rf"\caption{{{latex_escape(caption)}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(latex_escape(c) for c in cells.columns) + r" \\",
        r"\midrule",
    ]
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
            tds.append(f'<td class="best">{text}</td>' if marks[c].iloc[i] else f"<td>{text}</td>")
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
    return environment_summary(
        layout.trials,
        (
            "env.device",
            "env.device_name",
            "env.threads",
            "env.torch",
            "env.git_commit",
            "env.git_dirty",
            "env.precision",
            "env.pac_cpu_kernels",
            "env.cpu_kernels",
        ),
        short_commit=True,
    )


__all__ = [
    "Layout",
    "MEASURES",
    "build_layout",
    "compare_rows",
    "display_table",
    "environment_summary",
    "environment_table",
    "section_table",
    "status_table",
    "to_html",
    "to_latex",
    "to_markdown",
]
