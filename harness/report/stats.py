"""What a comparison means: prompt-clustered bootstrap CIs, paired differences, p-values, Holm.

The unit of comparison is the (prompt, seed) pair: every method sees the same keyed noise for it, so
method − baseline is a paired difference. Videos of one prompt are correlated (one prompt is easy for
every seed), so every bootstrap resamples *prompts* with replacement, each drawn prompt bringing all
of its videos (its seeds), and a statistic is the mean over the drawn videos. The p-value of a paired
difference comes from a sign-flip permutation test at the same level: under "no difference" the sign
of each prompt's summed difference is arbitrary (scipy.stats.permutation_test flips them).

Everything is deterministic for a given `Resampling.seed`, so a rerun gives the same table.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from harness.report.resampling import Resampling


@dataclass(frozen=True)
class Estimate:
    """A clustered mean: its CI is NaN with fewer than two prompts (nothing to resample)."""
    mean: float
    ci_low: float
    ci_high: float
    n: int  # values (videos)
    prompts: int


@dataclass(frozen=True)
class Paired:
    delta: float  # mean over pairs of (cell − baseline)
    ci_low: float
    ci_high: float
    p_value: float
    n_pairs: int
    prompts: int
    mde: float = math.nan  # minimal detectable effect at 80% power (minimal_detectable_effect)

    def significant(self, alpha: float) -> bool:
        """The permutation test rejects "no difference" at level alpha (uncorrected)."""
        return not math.isnan(self.p_value) and self.p_value < alpha


def cluster_sums(values: np.ndarray, clusters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster (sorted by label, NaN values dropped): the sum of its values and their count."""
    values = np.asarray(values, dtype=float)
    keep = ~np.isnan(values)
    labels, inverse = np.unique(np.asarray(clusters, dtype=object)[keep].astype(str), return_inverse=True)
    sums = np.bincount(inverse, weights=values[keep], minlength=len(labels))
    counts = np.bincount(inverse, minlength=len(labels)).astype(float)
    return sums, counts


@functools.lru_cache(maxsize=32)
def bootstrap_weights(clusters: int, draws: int, seed: int) -> np.ndarray:
    """(draws, clusters): how often each cluster is drawn when `clusters` of them are drawn with
    replacement, once per draw. Cached (read-only): a report draws the same prompts for every cell."""
    picks = np.random.default_rng(seed).integers(0, clusters, size=(draws, clusters))
    weights = np.zeros((draws, clusters))
    np.add.at(weights, (np.repeat(np.arange(draws), clusters), picks.ravel()), 1.0)
    weights.setflags(write=False)
    return weights


def bootstrap_means(sums: np.ndarray, counts: np.ndarray, resampling: Resampling) -> np.ndarray:
    """The pooled mean of every bootstrap draw; `sums` may be (clusters,) or (series, clusters) for
    several series resampled with the same draws (their clusters aligned)."""
    weights = bootstrap_weights(counts.size, resampling.draws, resampling.seed)
    return (np.atleast_2d(sums) @ weights.T) / (weights @ counts)


def _percentile_ci(means: np.ndarray, resampling: Resampling) -> tuple[float, float]:
    low, high = np.quantile(means, [resampling.alpha / 2, 1 - resampling.alpha / 2])
    return float(low), float(high)


def clustered_mean(values: np.ndarray, clusters: np.ndarray, resampling: Resampling = Resampling()) -> Estimate:
    """Mean of the non-NaN values with a prompt-clustered percentile bootstrap CI."""
    sums, counts = cluster_sums(values, clusters)
    n = int(counts.sum())
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, 0)
    mean = float(sums.sum() / n)
    if counts.size < 2:
        return Estimate(mean, math.nan, math.nan, n, int(counts.size))
    low, high = _percentile_ci(bootstrap_means(sums, counts, resampling)[0], resampling)
    return Estimate(mean, low, high, n, int(counts.size))


def paired_difference(values: np.ndarray, baseline: np.ndarray, clusters: np.ndarray,
                      resampling: Resampling = Resampling()) -> Paired:
    """values − baseline over aligned pairs (NaN on either side drops the pair): the mean difference,
    its prompt-clustered bootstrap CI and the sign-flip permutation p-value (two-sided)."""
    diff = np.asarray(values, dtype=float) - np.asarray(baseline, dtype=float)
    sums, counts = cluster_sums(diff, clusters)
    n = int(counts.sum())
    if n == 0:
        return Paired(math.nan, math.nan, math.nan, math.nan, 0, 0)
    delta = float(sums.sum() / n)
    if counts.size < 2:
        return Paired(delta, math.nan, math.nan, math.nan, n, int(counts.size))
    low, high = _percentile_ci(bootstrap_means(sums, counts, resampling)[0], resampling)
    return Paired(delta, low, high, sign_flip_p(sums, n, resampling), n, int(counts.size),
                  minimal_detectable_effect(sums, counts, resampling.alpha))


def minimal_detectable_effect(cluster_diff_sums: np.ndarray, counts: np.ndarray, alpha: float,
                              power: float = 0.8) -> float:
    """The smallest true mean difference that a two-sided test at level `alpha` detects with
    probability `power`, given the measured spread of the paired differences between prompts: a
    "not significant" result reads as "smaller than this", not "no effect".

    The design is clustered: the unit is the prompt, whose videos (seeds) are correlated, so the
    standard error is the cluster-robust one of the pooled mean (each prompt's summed deviation from
    it), and the test is the one-sample t-test on k prompts (df = k - 1), solved exactly with the
    noncentral t distribution (as statsmodels' TTestPower solves it); with equally many seeds per
    prompt this is the t-test on the prompts' mean differences."""
    from scipy import optimize
    from scipy import stats as scipy_stats

    sums, counts = np.asarray(cluster_diff_sums, dtype=float), np.asarray(counts, dtype=float)
    k = sums.size
    if k < 2:
        return math.nan
    mean = sums.sum() / counts.sum()
    deviations = (sums - counts * mean) / counts.mean()
    se = math.sqrt(float(deviations @ deviations) / (k * (k - 1)))
    if se == 0.0:
        return 0.0
    df, crit = k - 1, scipy_stats.t.ppf(1 - alpha / 2, k - 1)

    def shortfall(shift: float) -> float:  # power at a noncentrality of `shift` standard errors, minus the goal
        return scipy_stats.nct.sf(crit, df, shift) + scipy_stats.nct.cdf(-crit, df, shift) - power

    approximate = crit + scipy_stats.t.ppf(power, df)  # the usual approximation, near the exact shift
    high = approximate
    while shortfall(high) < 0:
        high *= 1.5
    if math.isnan(shortfall(high)):  # nct's tails fail far out at 1 df (2 prompts): keep the approximation
        return float(approximate * se)
    return float(optimize.brentq(shortfall, 0.0, high) * se)


def sign_flip_p(cluster_diff_sums: np.ndarray, n_pairs: int, resampling: Resampling) -> float:
    """Two-sided p-value of "mean difference = 0": the sign of each prompt's summed difference is
    flipped at random; every one of the 2^k sign patterns when there are at most `permutations`.

    This is scipy.stats.permutation_test(..., permutation_type="samples") for one sample (the tests
    check equality), written out because scipy's general pairing machinery costs ~100 ms a call and
    a report makes hundreds of them."""
    sums = np.asarray(cluster_diff_sums, dtype=float)
    k = sums.size
    exact = 2 ** k <= resampling.permutations
    if exact:
        signs = 1.0 - 2.0 * ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1)
    else:
        signs = np.where(np.random.default_rng(resampling.seed).random((resampling.permutations, k)) < 0.5, -1.0, 1.0)
    null = signs @ sums / n_pairs
    observed = sums.sum() / n_pairs
    tol = 1e-14 * max(abs(observed), 1.0)  # as scipy: equal up to rounding counts as "as extreme"
    greater, less = np.count_nonzero(null >= observed - tol), np.count_nonzero(null <= observed + tol)
    if exact:
        p_greater, p_less = greater / null.size, less / null.size
    else:  # the observed pattern is one of the possible ones (scipy's +1)
        p_greater, p_less = (greater + 1) / (null.size + 1), (less + 1) / (null.size + 1)
    return float(min(1.0, 2 * min(p_greater, p_less)))


def holm(p_values: list[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment of a family of p-values (NaN entries are not in the family)."""
    p = np.asarray(p_values, dtype=float)
    adjusted = np.full_like(p, math.nan)
    present = np.flatnonzero(~np.isnan(p))
    order = present[np.argsort(p[present], kind="stable")]
    m = order.size
    steps = (m - np.arange(m)) * p[order]
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted


@dataclass(frozen=True)
class RankInterval:
    rank: int  # 1 = best, by the observed means (ties share the better rank)
    low: int
    high: int


def rank_intervals(values: np.ndarray, clusters: np.ndarray, higher_is_better: bool,
                   resampling: Resampling = Resampling()) -> list[RankInterval]:
    """Ranks of the rows of `values` (series × pairs, pairs aligned, no NaN) with bootstrap intervals:
    every draw resamples the same prompts for all series and ranks their means."""
    from scipy import stats as scipy_stats  # here, not at the top: scipy.stats takes seconds to import

    values = np.asarray(values, dtype=float)
    sign = -1.0 if higher_is_better else 1.0
    per_series = [cluster_sums(row, clusters) for row in values]
    sums = np.stack([s for s, _ in per_series])
    counts = per_series[0][1]
    # means equal up to rounding tie (the sum order of equal scores must not decide a rank)
    observed = scipy_stats.rankdata(np.round(sign * sums.sum(axis=1) / counts.sum(), 12), method="min")
    if counts.size < 2:
        return [RankInterval(int(r), int(r), int(r)) for r in observed]
    means = bootstrap_means(sums, counts, resampling)  # (series, draws)
    ranks = scipy_stats.rankdata(np.round(sign * means, 12), method="min", axis=0)
    low = np.quantile(ranks, resampling.alpha / 2, axis=1, method="inverted_cdf")
    high = np.quantile(ranks, 1 - resampling.alpha / 2, axis=1, method="inverted_cdf")
    return [RankInterval(int(r), int(lo), int(hi)) for r, lo, hi in zip(observed, low, high)]
