"""Statistics over training seeds: mean with a 95 % confidence interval, and a paired
comparison of two schemes run on the same seeds (same init, same batches).

Plain Python (no scipy), so the benchmark runs wherever the example does. The
confidence interval uses Student's t; the paired test is the exact sign-flip
permutation test, which assumes nothing about the shape of the differences.
"""
from __future__ import annotations

import itertools
import math
import statistics
from typing import Dict, Sequence

__all__ = ["t_quantile_975", "mean_ci", "paired", "tail_slope"]

# Student t 97.5 % quantiles (two-sided 95 %) for 1 ... 30 degrees of freedom.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)
_Z975 = 1.960
_MAX_EXACT = 16  # 2^16 sign patterns; beyond that the permutation test is not run


def t_quantile_975(df: int) -> float:
    """t_{0.975, df}; beyond 30 degrees of freedom the table's last step to the normal
    quantile is below 0.1 %, so 1.96 + 2.4/df (within 0.003 of the exact value) is used."""
    if df < 1:
        raise ValueError(f"df must be >= 1, got {df}")
    return _T975[df - 1] if df <= len(_T975) else _Z975 + 2.4 / df


def mean_ci(values: Sequence[float]) -> Dict[str, float]:
    """{"n", "mean", "half": 95 % CI half-width (nan for n < 2), "sd"}; NaNs dropped."""
    clean = [float(v) for v in values if not math.isnan(v)]
    n = len(clean)
    if n == 0:
        return {"n": 0, "mean": math.nan, "half": math.nan, "sd": math.nan}
    mean = statistics.fmean(clean)
    if n < 2:
        return {"n": 1, "mean": mean, "half": math.nan, "sd": math.nan}
    sd = statistics.stdev(clean)
    return {"n": n, "mean": mean, "half": t_quantile_975(n - 1) * sd / math.sqrt(n), "sd": sd}


def paired(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """a - b seed by seed: the mean difference with its 95 % CI, wins / ties / losses of
    a, and the two-sided exact sign-flip permutation p-value (nan above 16 pairs)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have equal length, got {len(a)} and {len(b)}")
    diffs = [float(x) - float(y) for x, y in zip(a, b)]
    stats = mean_ci(diffs)
    stats.update(wins=sum(d > 0 for d in diffs), ties=sum(d == 0 for d in diffs),
                 losses=sum(d < 0 for d in diffs), p=_sign_flip_p(diffs))
    return stats


def _sign_flip_p(diffs: Sequence[float]) -> float:
    """Share of the 2^n sign patterns whose |sum| reaches the observed |sum| (under the
    null hypothesis each difference is as likely to have either sign)."""
    n = len(diffs)
    if n == 0 or n > _MAX_EXACT:
        return math.nan
    observed = abs(sum(diffs)) - 1e-12  # tolerance: sums of the same values in another order
    hits = sum(abs(sum(s * d for s, d in zip(signs, diffs))) >= observed
               for signs in itertools.product((1, -1), repeat=n))
    return hits / 2 ** n


def tail_slope(values: Sequence[float], fraction: float = 0.25) -> float:
    """Least-squares slope per step of the last `fraction` of a per-step series (a loss
    curve). Whether a run has converged: near 0 on a plateau, negative while it still
    learns. nan with fewer than 2 points in the tail."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction!r}")
    tail = [float(v) for v in values[len(values) - int(len(values) * fraction):]]
    n = len(tail)
    if n < 2:
        return math.nan
    x_mean, y_mean = (n - 1) / 2, statistics.fmean(tail)
    num = sum((i - x_mean) * (y - y_mean) for i, y in enumerate(tail))
    return num / sum((i - x_mean) ** 2 for i in range(n))
