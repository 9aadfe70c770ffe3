"""Statistics for the bench's results: t intervals, paired contrasts, Holm's adjustment.

Pure functions over plain numbers; the t distribution comes from :mod:`scipy.stats`.

Sources:

* t interval of a mean: Student (1908), "The probable error of a mean", Biometrika 6(1);
  any text, e.g. Wasserman, *All of Statistics* (2004), section 10.1 / NIST/SEMATECH
  e-Handbook of Statistical Methods, section 7.2.2.1 ("Confidence limits for the mean").
* Paired t test: the one-sample t test on the differences (NIST e-Handbook, section 7.4.7.1;
  ``scipy.stats.ttest_rel``).
* Holm's step-down adjustment: S. Holm (1979), "A simple sequentially rejective multiple test
  procedure", Scandinavian Journal of Statistics 6(2), 65-70; adjusted p-values as in
  Wright (1992), "Adjusted P-values for simultaneous inference", Biometrics 48(4), 1005-1013.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

from scipy import stats as _scipy_stats


def _mean_sd(values: Sequence[float]) -> tuple[float, float | None]:
    n = len(values)
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile of Student's t distribution with ``df`` degrees of freedom."""
    return float(_scipy_stats.t.ppf(probability, df))


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """Mean of ``values`` and the two-sided Student t confidence interval of the mean at ``level``.

    ``mean ± t_{(1+level)/2, n-1} · s / sqrt(n)``, ``s`` the sample standard deviation (n - 1 in
    the denominator). Returns ``(mean, low, high)``; ``low`` and ``high`` are None when there are
    fewer than two values (no spread to estimate). Raises ValueError on an empty list or a level
    outside (0, 1).
    """
    values = [float(v) for v in values]
    if not values:
        raise ValueError("t_interval needs at least one value")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    mean, sd = _mean_sd(values)
    if sd is None:
        return mean, None, None
    half = t_quantile((1.0 + level) / 2.0, len(values) - 1) * sd / math.sqrt(len(values))
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class Paired:
    """A paired difference ``a - b`` over the keys present on both sides, and its one-sample t test.

    ``n`` pairs (``unpaired``: keys on one side only, left out), their mean difference and sample
    standard deviation ``sd``, ``t = mean / (sd / sqrt(n))`` on ``df = n - 1`` degrees of freedom,
    the two-sided ``p`` and the t interval ``[low, high]`` at ``level``. With fewer than two pairs,
    or differences that do not vary (``sd == 0``: no spread to test against), ``t``, ``p`` and the
    interval are None.
    """

    n: int
    unpaired: int
    mean: float | None
    sd: float | None
    t: float | None
    p: float | None
    level: float
    low: float | None
    high: float | None

    @property
    def df(self) -> int | None:
        return self.n - 1 if self.n >= 2 else None

    @property
    def testable(self) -> bool:
        return self.p is not None

    def half_width(self, level: float) -> float | None:
        """Half the width of the t interval of the mean difference at ``level`` (None when not testable)."""
        if not self.testable:
            return None
        return t_quantile((1.0 + level) / 2.0, self.n - 1) * self.sd / math.sqrt(self.n)

    def interval(self, level: float) -> tuple[float | None, float | None]:
        half = self.half_width(level)
        return (None, None) if half is None else (self.mean - half, self.mean + half)


def paired_difference(a: Mapping[Hashable, float], b: Mapping[Hashable, float], level: float = 0.95) -> Paired:
    """The paired t test of ``a - b``: ``a`` and ``b`` map a pairing key (e.g. a run's seeds) to a value.

    Keys present on one side only are left out and counted (``unpaired``). The two-sided p is
    ``2 * P(T_{n-1} > |t|)`` (``scipy.stats.t.sf``), the same as ``scipy.stats.ttest_rel`` on the
    paired values; the interval is :func:`t_interval` of the differences.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    keys = [k for k in a if k in b]
    unpaired = len(set(a) ^ set(b))
    diffs = [float(a[k]) - float(b[k]) for k in keys]
    if not diffs:
        return Paired(0, unpaired, None, None, None, None, level, None, None)
    mean, sd = _mean_sd(diffs)
    if sd is None or sd == 0.0:
        return Paired(len(diffs), unpaired, mean, sd, None, None, level, None, None)
    t = mean / (sd / math.sqrt(len(diffs)))
    p = min(1.0, 2.0 * float(_scipy_stats.t.sf(abs(t), len(diffs) - 1)))
    _, low, high = t_interval(diffs, level)
    return Paired(len(diffs), unpaired, mean, sd, t, p, level, low, high)


def holm_ranks(pvalues: Sequence[float]) -> list[int]:
    """Each p-value's rank (1-based) by increasing value; ties keep their input order."""
    order = sorted(range(len(pvalues)), key=lambda i: (pvalues[i], i))
    ranks = [0] * len(pvalues)
    for rank, i in enumerate(order, start=1):
        ranks[i] = rank
    return ranks


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's (1979) step-down adjusted p-values, in the input order.

    Sorted ascending, ``p_(1) <= ... <= p_(m)``, the i-th gets ``max_{k <= i} min(1, (m - k + 1) p_(k))``:
    the running maximum keeps the adjusted values in the order of the raw ones, so an adjusted
    p below ``alpha`` is exactly a hypothesis that Holm's procedure rejects at family-wise error
    rate ``alpha`` (Wright 1992). scipy has no Holm; ``statsmodels.stats.multitest.multipletests(
    method="holm")`` computes the same.
    """
    pvalues = [float(p) for p in pvalues]
    if any(not 0.0 <= p <= 1.0 for p in pvalues):
        raise ValueError(f"p-values must lie in [0, 1], got {pvalues}")
    m = len(pvalues)
    ranks = holm_ranks(pvalues)
    order = sorted(range(m), key=lambda i: ranks[i])
    adjusted = [0.0] * m
    running = 0.0
    for i in order:
        running = max(running, min(1.0, (m - ranks[i] + 1) * pvalues[i]))
        adjusted[i] = running
    return adjusted


@dataclass(frozen=True)
class Adjusted:
    """A contrast within its family of ``m`` testable contrasts (Holm's step-down, family-wise ``alpha``).

    ``p``: Holm-adjusted p; ``level``: ``1 - alpha / (m - i + 1)`` for the contrast ranked i-th by
    increasing raw p, the level of Holm's i-th step, and ``[low, high]`` the t interval at that level;
    ``resolved``: ``p < alpha`` and that interval excludes 0; ``resolvable``: the half-width of the
    contrast's interval at the strictest level ``1 - alpha / m`` (a difference at least that large,
    with the same spread and pairs, is resolved whatever the other contrasts give). All None (and
    ``resolved`` False) for a contrast that is not testable (:attr:`Paired.testable`).
    """

    p: float | None = None
    level: float | None = None
    low: float | None = None
    high: float | None = None
    resolved: bool = False
    resolvable: float | None = None


def holm_family(tests: Sequence[Paired], alpha: float = 0.05) -> tuple[list[Adjusted], float | None]:
    """Holm's adjustment of one family of paired contrasts, and the smallest difference it could resolve.

    The family is the testable contrasts among ``tests`` (``m`` of them); the others get an empty
    :class:`Adjusted`. The second value is the smallest ``resolvable`` half-width of the family
    (None when nothing is testable): the smallest difference this run could resolve, given the
    spreads and pair counts it observed.
    """
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha}")
    index = [i for i, test in enumerate(tests) if test.testable]
    m = len(index)
    out = [Adjusted() for _ in tests]
    if not m:
        return out, None
    raw = [tests[i].p for i in index]
    for i, rank, p in zip(index, holm_ranks(raw), holm(raw)):
        level = 1.0 - alpha / (m - rank + 1)
        low, high = tests[i].interval(level)
        out[i] = Adjusted(p, level, low, high, p < alpha and (low > 0.0 or high < 0.0),
                          tests[i].half_width(1.0 - alpha / m))
    return out, min(out[i].resolvable for i in index)
