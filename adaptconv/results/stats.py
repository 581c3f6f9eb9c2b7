"""The statistics behind the report's verdicts and the claims table (numpy/scipy only).

- Seeds are the unit of replication. Trials that differ only in the operator and share a seed share
  the data order, the split and (through ``from_conv``) the initial convolution, so comparisons with
  a reference row are *paired by seed*: d_s = value(row, s) − value(reference, s), and the verdict
  comes from the 95% Student-t interval of mean(d) (n − 1 degrees of freedom).
- Many rows against one reference: Holm–Bonferroni over the rows of a comparison group keeps the
  family-wise error at α.
- n < 2 pairs: no interval, no verdict.
See ``shared/reference/statistics.md`` for the protocol this follows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ALPHA = 0.05

BETTER, WORSE, NO_DIFFERENCE, NO_CI = "better", "worse", "no detectable difference", "n<2, no CI"


def t_quantile(n) -> np.ndarray:
    """Two-sided 95% Student-t quantile for n samples (NaN below two); n may be an array."""
    from scipy import stats

    n = np.asarray(n, dtype=float)
    out = np.full(n.shape, np.nan)
    ok = n >= 2
    out[ok] = stats.t.ppf(1 - ALPHA / 2, n[ok] - 1)
    return out


@dataclass(frozen=True)
class MeanCI:
    """Mean of n values with the half-width of its 95% t interval (NaN when n < 2)."""

    mean: float
    half: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half

    @property
    def high(self) -> float:
        return self.mean + self.half


def mean_ci(values: Sequence[float]) -> MeanCI:
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    if v.size == 0:
        return MeanCI(math.nan, math.nan, 0)
    if v.size == 1:
        return MeanCI(float(v[0]), math.nan, 1)
    half = float(t_quantile(v.size) * v.std(ddof=1) / math.sqrt(v.size))
    return MeanCI(float(v.mean()), half, int(v.size))


@dataclass(frozen=True)
class PairedDifference:
    """mean(d) over the seeds both sides have, d = value − reference, with its 95% t interval and
    the two-sided p-value of mean(d) = 0 (NaN when n < 2; 0 when every d is the same non-zero value)."""

    mean: float
    low: float
    high: float
    n: int
    p_value: float
    seeds: tuple = ()

    @property
    def half(self) -> float:
        return (self.high - self.low) / 2

    @property
    def excludes_zero(self) -> bool:
        return self.n >= 2 and np.isfinite(self.low) and (self.low > 0 or self.high < 0)


def paired_difference(values: Mapping, reference: Mapping) -> PairedDifference:
    """Pair ``values`` and ``reference`` (each ``{seed: value}``) on their common seeds."""
    from scipy import stats

    seeds = tuple(sorted(s for s in values if s in reference and _finite(values[s]) and _finite(reference[s])))
    d = np.asarray([float(values[s]) - float(reference[s]) for s in seeds], dtype=float)
    n = d.size
    if n == 0:
        return PairedDifference(math.nan, math.nan, math.nan, 0, math.nan, seeds)
    mean = float(d.mean())
    if n == 1:
        return PairedDifference(mean, math.nan, math.nan, 1, math.nan, seeds)
    sd = float(d.std(ddof=1))
    if sd == 0.0:  # every seed moved by the same amount: the interval is that point
        return PairedDifference(mean, mean, mean, n, 0.0 if mean != 0 else 1.0, seeds)
    se = sd / math.sqrt(n)
    half = float(t_quantile(n)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, n - 1))
    return PairedDifference(mean, mean - half, mean + half, n, p, seeds)


def holm(p_values: Sequence[float], alpha: float = ALPHA) -> list[bool]:
    """Holm–Bonferroni step-down: which hypotheses are rejected at family-wise level ``alpha``.

    NaN p-values (no interval) are never rejected and do not count in the family size."""
    p = [(v, i) for i, v in enumerate(p_values) if v is not None and np.isfinite(v)]
    p.sort()
    m = len(p)
    out = [False] * len(p_values)
    for rank, (v, i) in enumerate(p):
        if v <= alpha / (m - rank):
            out[i] = True
        else:
            break
    return out


def verdict(diff: PairedDifference, higher_is_better: bool, significant: bool | None = None) -> str:
    """better / worse / no detectable difference (or ``NO_CI`` below two pairs).

    ``significant``: the multiple-comparison decision (e.g. from :func:`holm`); by default the
    interval excluding zero."""
    if diff.n < 2 or not np.isfinite(diff.mean):
        return NO_CI
    if significant is None:
        significant = diff.excludes_zero
    if not significant or diff.mean == 0:
        return NO_DIFFERENCE
    return BETTER if (diff.mean > 0) == higher_is_better else WORSE


def decimals_for(half: float, significant: int | None = 2) -> int | None:
    """Decimal places that show ``significant`` digits of a CI half-width (None without a CI).

    ``significant=None``: the usual rounding rule — two digits when the half-width's leading digit is
    1 or 2 (0.013, 0.24: one digit would change it by up to 40%), one otherwise (0.04, 0.7)."""
    if half is None or not np.isfinite(half) or half <= 0:
        return None
    mag = int(math.floor(math.log10(half)))
    if significant is None:
        lead = int(f"{half:.1e}"[0])  # after rounding to two digits (0.0299 → 3.0e-02)
        mag = int(math.floor(math.log10(float(f"{half:.1e}"))))
        significant = 2 if lead in (1, 2) else 1
    return max(0, significant - 1 - mag)


def format_significant(value: float, digits: int = 4) -> str:
    """``value`` to ``digits`` significant digits in plain notation (``3.565``, ``92.89``, ``12345``);
    scientific only below 1e-3, where plain notation would be all zeros."""
    if value is None or not np.isfinite(value):
        return "—"
    if value == 0:
        return "0"
    mag = int(math.floor(math.log10(abs(value))))
    if mag < -3:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{max(0, digits - 1 - mag)}f}"


def format_mean_ci(mean: float, half: float, *, significant: int | None = None, fallback_digits: int = 4) -> str:
    """``3.56 ± 0.04``: the mean to the digits its interval supports (``significant`` digits of the
    half-width; by default one, two when it starts with 1 or 2: ``92.7 ± 1.3``); without an interval (NaN: fewer than two values), the mean to ``fallback_digits``
    significant digits; an interval of width zero (every seed gave the same value): ``3.565 ± 0``."""
    if mean is None or not np.isfinite(mean):
        return "—"
    if half is not None and np.isfinite(half) and half == 0:
        return f"{format_significant(mean, fallback_digits)} ± 0"
    d = decimals_for(half, significant)
    if d is None:
        return format_significant(mean, fallback_digits)
    return f"{mean:.{d}f} ± {half:.{d}f}"


def format_delta(mean: float, half: float, *, significant: int | None = None, fallback_digits: int = 3) -> str:
    """A signed difference with its interval: ``+0.012 ± 0.004``, ``-1.3 ± 0.9``; without an interval,
    ``fallback_digits`` significant digits (``+0.0123``)."""
    if mean is None or not np.isfinite(mean):
        return "—"
    text = format_mean_ci(abs(mean), half, significant=significant, fallback_digits=fallback_digits)
    # no sign on a mean that rounds to zero at the digits shown ("0 ± 4", not "-0 ± 4")
    shown = text.split(" ±")[0]
    sign = "" if not any(ch in "123456789" for ch in shown) else "+" if mean > 0 else "-" if mean < 0 else ""
    return f"{sign}{text}"


def _finite(v) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False
