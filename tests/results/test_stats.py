"""The statistics behind the report's verdicts, against independent computations (scipy's paired t-test,
Holm's procedure written out by hand for known p-values) and cases that tell the right procedure from
its usual mistakes (Bonferroni, no correction, a step-up procedure, unpaired intervals)."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from adaptconv.results import stats


def test_paired_difference_is_scipys_paired_t_test():
    a = {0: 1.10, 1: 1.31, 2: 0.92, 3: 1.25, 4: 1.02}
    b = {0: 1.00, 1: 1.25, 2: 0.80, 3: 1.20, 4: 0.97, 9: 5.0}  # seed 9 has no partner: left out
    d = stats.paired_difference(a, b)
    x = np.array([a[s] for s in range(5)])
    y = np.array([b[s] for s in range(5)])
    t = sps.ttest_rel(x, y)
    assert d.n == 5 and d.seeds == (0, 1, 2, 3, 4)
    assert d.mean == pytest.approx((x - y).mean())
    assert d.p_value == pytest.approx(t.pvalue)
    half = sps.t.ppf(0.975, 4) * (x - y).std(ddof=1) / math.sqrt(5)
    assert (d.low, d.high) == pytest.approx(((x - y).mean() - half, (x - y).mean() + half))


def test_pairing_finds_what_overlapping_intervals_hide():
    """Seeds move both rows together: the unpaired intervals overlap, the paired one excludes zero."""
    shared = [0.0, 0.5, -0.4, 0.3, -0.2]
    conv = {s: 2.0 + v for s, v in enumerate(shared)}
    op = {s: 2.0 + v - 0.1 + 0.01 * (s % 2) for s, v in enumerate(shared)}
    a, b = stats.mean_ci(list(op.values())), stats.mean_ci(list(conv.values()))
    assert a.high > b.low  # the unpaired intervals overlap
    d = stats.paired_difference(op, conv)
    assert d.excludes_zero and d.high < 0
    assert stats.verdict(d, higher_is_better=False) == stats.BETTER
    assert stats.verdict(d, higher_is_better=True) == stats.WORSE


def test_holm_against_the_procedure_written_out():
    # sorted p: 0.01 <= .05/3, 0.02 <= .05/2, 0.2 > .05: two rejected (Bonferroni would reject one)
    assert stats.holm([0.2, 0.01, 0.02]) == [False, True, True]
    # 0.01 <= .05/3, then 0.03 > .05/2: stop, although 0.04 <= .05 (no correction or a step-up
    # procedure such as Hochberg's would reject all three)
    assert stats.holm([0.04, 0.03, 0.01]) == [False, False, True]
    # NaN (no interval) is never rejected and is not counted in the family
    assert stats.holm([0.024, math.nan, 0.04]) == [True, False, True]
    assert stats.holm([]) == []
    assert stats.holm([0.05]) == [True] and stats.holm([0.0501]) == [False]


def test_verdicts_and_too_few_seeds():
    one = stats.paired_difference({0: 1.0}, {0: 2.0})
    assert one.n == 1 and math.isnan(one.low) and stats.verdict(one, True) == stats.NO_CI
    none = stats.paired_difference({0: 1.0}, {1: 2.0})
    assert none.n == 0 and stats.verdict(none, True) == stats.NO_CI
    noisy = stats.paired_difference({0: 1.0, 1: 3.0, 2: 2.0}, {0: 2.0, 1: 2.0, 2: 2.1})
    assert stats.verdict(noisy, True) == stats.NO_DIFFERENCE
    # a significant interval overruled by the multiple-comparison decision
    clear = stats.paired_difference({0: 3.0, 1: 3.1, 2: 3.05}, {0: 2.0, 1: 2.0, 2: 2.0})
    assert stats.verdict(clear, True) == stats.BETTER
    assert stats.verdict(clear, True, significant=False) == stats.NO_DIFFERENCE
    # every seed moved by the same amount: a point interval, significant
    same = stats.paired_difference({0: 1.5, 1: 2.5}, {0: 1.0, 1: 2.0})
    assert (same.low, same.high, same.p_value) == (0.5, 0.5, 0.0)


def test_digits_follow_the_interval():
    assert stats.format_mean_ci(3.5654819, 0.04) == "3.57 ± 0.04"
    assert stats.format_mean_ci(3.5614819, 0.043) == "3.56 ± 0.04"
    assert stats.format_mean_ci(92.734, 1.34) == "92.7 ± 1.3"  # leading 1: two digits
    assert stats.format_mean_ci(92.734, 13.2) == "93 ± 13"
    assert stats.format_mean_ci(0.123456, 0.0072) == "0.123 ± 0.007"
    assert stats.format_mean_ci(3.5654819, 0.04, significant=2) == "3.565 ± 0.040"
    assert stats.format_mean_ci(3.5654819, math.nan) == "3.565"  # one seed: 4 significant digits
    assert stats.format_mean_ci(12345.67, math.nan) == "12346"  # never scientific for a plain number
    assert stats.format_mean_ci(3.565, 0.0) == "3.565 ± 0"  # every seed the same
    assert stats.format_mean_ci(math.nan, 0.1) == "—"
    assert stats.format_delta(-0.3123, 0.041) == "-0.31 ± 0.04"
    assert stats.format_delta(0.0123456, math.nan) == "+0.0123"
    assert stats.format_delta(-0.3, 4.0) == "0 ± 4"  # rounds to zero: no sign
    assert stats.format_significant(0.00001234, 3) == "1.23e-05"
