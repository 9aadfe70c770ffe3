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
