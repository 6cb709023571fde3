"""benchmarks/seed_stats.py: the confidence intervals and the paired test the training
study reports."""
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from seed_stats import mean_ci, paired, t_quantile_975, tail_slope  # noqa: E402


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for df in list(range(1, 41)) + [60, 120, 1000]:
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=3e-3), df
    with pytest.raises(ValueError, match="df"):
        t_quantile_975(0)


def test_mean_ci_by_hand():
    ci = mean_ci([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(5 / 3)
    assert ci["n"] == 4 and ci["mean"] == 2.5 and ci["sd"] == pytest.approx(sd)
    assert ci["half"] == pytest.approx(3.182 * sd / 2)
    assert math.isnan(mean_ci([0.5])["half"]) and mean_ci([0.5])["mean"] == 0.5
    assert mean_ci([float("nan"), 1.0, 3.0])["n"] == 2
    assert mean_ci([])["n"] == 0


def test_paired_counts_and_exact_p():
    d = paired([0.9, 0.8, 0.7, 0.95], [0.5, 0.6, 0.7, 0.5])
    assert (d["wins"], d["ties"], d["losses"]) == (3, 1, 0)
    assert d["mean"] == pytest.approx((0.4 + 0.2 + 0 + 0.45) / 4)
    # 3 non-zero differences of one sign: all +, all - (each with the zero either way)
    # are the 4 of 16 sign patterns that reach |sum|
    assert d["p"] == pytest.approx(4 / 16)
    with pytest.raises(ValueError, match="equal length"):
        paired([1.0], [1.0, 2.0])


def test_sign_flip_p_by_hand():
    # +-1 +-2 +-3: only (+,+,+) and (-,-,-) reach |6| -> 2/8; |+-1 +-2| >= 1 always
    assert paired([1.0, 2.0, 3.0], [0.0] * 3)["p"] == pytest.approx(0.25)
    assert paired([1.0, -2.0], [0.0, 0.0])["p"] == pytest.approx(1.0)
    assert paired([0.2] * 8, [0.1] * 8)["p"] == pytest.approx(2 / 256)
    assert math.isnan(paired([1.0] * 17, [0.0] * 17)["p"])  # beyond the exact enumeration


def test_tail_slope_by_hand():
    # the last quarter of 0..99 is 75..99, slope 1; of a flat tail, 0
    assert tail_slope([float(i) for i in range(100)]) == pytest.approx(1.0)
    assert tail_slope([5.0] * 40 + [2.0] * 40, fraction=0.5) == pytest.approx(0.0)
    # only the tail counts: a falling start then a rising tail of slope 0.5
    assert tail_slope([9.0, 5.0, 1.0, 1.0, 1.5, 2.0], fraction=0.5) == pytest.approx(0.5)
    assert math.isnan(tail_slope([1.0, 2.0, 3.0]))  # a quarter of 3 is no points
    with pytest.raises(ValueError, match="fraction"):
        tail_slope([1.0, 2.0], fraction=0.0)
