"""harness.report.stats against hand computations, exact enumerations and scipy."""
import itertools

import numpy as np
import pytest
from scipy import stats as scipy_stats

from harness.report.resampling import Resampling
from harness.report.stats import clustered_mean, holm, paired_difference, rank_intervals, sign_flip_p

# A small fixed table: 3 prompts, 2 seeds each (prompt-major), a method and its baseline.
PROMPTS = np.array(["a", "a", "b", "b", "c", "c"])
METHOD = np.array([0.9, 0.7, 0.4, 0.6, 0.8, 1.0])
BASE = np.array([0.5, 0.6, 0.5, 0.4, 0.2, 0.3])


def test_paired_ci_equals_a_hand_computed_cluster_bootstrap():
    resampling = Resampling(draws=500, seed=3)
    # by hand: each draw picks 3 prompts with replacement (the documented protocol: numpy's default
    # generator seeded with `seed`, integers(0, k, (draws, k))) and averages the differences of all
    # videos of the picked prompts, each prompt bringing both of its seeds
    pairs = {"a": [0.4, 0.1], "b": [-0.1, 0.2], "c": [0.6, 0.7]}
    labels = sorted(pairs)
    picks = np.random.default_rng(3).integers(0, 3, size=(500, 3))
    means = [np.mean([d for i in row for d in pairs[labels[i]]]) for row in picks]
    low, high = np.quantile(means, [0.025, 0.975])

    result = paired_difference(METHOD, BASE, PROMPTS, resampling)
    assert result.delta == pytest.approx(np.mean([d for v in pairs.values() for d in v]))
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high), abs=1e-12)
    assert result.n_pairs == 6 and result.prompts == 3
    # the p-value is the exact sign-flip test over the 3 prompts' summed differences
    sums = np.array([sum(pairs[k]) for k in labels])
    flips = [np.dot(s, sums) for s in itertools.product([1, -1], repeat=3)]
    exact = min(1.0, 2 * min(np.mean(np.array(flips) >= sums.sum() - 1e-12), np.mean(np.array(flips) <= sums.sum() + 1e-12)))
    assert result.p_value == pytest.approx(exact)


def test_the_bootstrap_resamples_prompts_not_videos():
    """The bootstrap distribution's variance equals the exact variance over all k^k equally likely
    draws of prompts (which a bootstrap over videos would underestimate here)."""
    prompts = np.array(["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3)
    values = np.array([0.1, 0.12, 0.11, 0.5, 0.52, 0.48, 0.9, 0.88, 0.91, 0.3, 0.29, 0.33])
    per_prompt = values.reshape(4, 3).mean(axis=1)
    exact = [per_prompt[list(draw)].mean() for draw in itertools.product(range(4), repeat=4)]
    from harness.report.stats import bootstrap_means, cluster_sums

    sums, counts = cluster_sums(values, prompts)
    draws = bootstrap_means(sums, counts, Resampling(draws=20000, seed=1))[0]
    assert draws.var() == pytest.approx(np.var(exact), rel=0.05)
    videos = np.random.default_rng(1).choice(values, size=(20000, values.size)).mean(axis=1)
    assert videos.var() < 0.5 * np.var(exact)  # what resampling videos would claim


def test_marginal_ci_contains_the_mean_is_deterministic_and_narrows_with_prompts():
    rng = np.random.default_rng(1)
    few = rng.normal(2.0, 1.0, 20)
    estimate = clustered_mean(few, np.arange(20).astype(str))
    assert estimate.ci_low < few.mean() < estimate.ci_high
    assert clustered_mean(few, np.arange(20).astype(str)) == estimate
    many = rng.normal(2.0, 1.0, 2000)
    wide = clustered_mean(many, np.arange(2000).astype(str))
    assert wide.ci_high - wide.ci_low < (estimate.ci_high - estimate.ci_low) / 3
    nan = clustered_mean(np.array([1.0, np.nan, 3.0]), np.array(["a", "b", "c"]))
    assert nan.mean == 2.0 and nan.n == 2 and nan.prompts == 2
    one_prompt = clustered_mean(np.array([1.0, 2.0]), np.array(["a", "a"]))
    assert one_prompt.mean == 1.5 and np.isnan(one_prompt.ci_low)  # nothing to resample
    assert clustered_mean(np.array([]), np.array([])).n == 0


@pytest.mark.parametrize("k", [3, 6, 10, 13])
def test_sign_flip_p_equals_scipy_permutation_test(k):
    rng = np.random.default_rng(k)
    sums = rng.normal(0.3, 1.0, k)
    expected = scipy_stats.permutation_test((sums,), lambda x, axis: x.sum(axis=axis) / (2 * k),
                                            permutation_type="samples", vectorized=True,
                                            n_resamples=9999).pvalue  # exact: 2^k <= 9999
    assert sign_flip_p(sums, 2 * k, Resampling()) == pytest.approx(expected, abs=1e-12)


def test_sign_flip_p_by_monte_carlo_is_close_to_scipy():
    sums = np.random.default_rng(5).normal(0.25, 1.0, 30)
    ours = sign_flip_p(sums, 60, Resampling(permutations=20000))
    theirs = scipy_stats.permutation_test((sums,), lambda x, axis: x.sum(axis=axis) / 60,
                                          permutation_type="samples", vectorized=True, n_resamples=20000,
                                          rng=np.random.default_rng(0)).pvalue
    assert ours == pytest.approx(theirs, abs=0.015)


def test_a_planted_difference_is_significant_paired_and_not_unpaired():
    """Scores = base + 0.05 on every pair: paired, Δ is exactly 0.05 and significant; compared
    unpaired at the same n (the marginal CIs, or Welch's t-test), it is not."""
    from synthetic import base_values

    prompts = np.repeat([f"p{i}" for i in range(20)], 2)
    base = base_values(seed=2, prompts=20, spread=0.25)
    method = base + 0.05
    paired = paired_difference(method, base, prompts)
    assert paired.delta == pytest.approx(0.05) and paired.ci_low == pytest.approx(0.05)
    assert paired.p_value < 0.001 and holm([paired.p_value] * 6).max() < 0.05
    a, b = clustered_mean(method, prompts), clustered_mean(base, prompts)
    assert a.ci_low < b.mean < a.ci_high and b.ci_low < a.mean < b.ci_high  # the CIs overlap widely
    assert scipy_stats.ttest_ind(method, base, equal_var=False).pvalue > 0.2


def test_holm_against_a_worked_example():
    # m = 4 sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 = 0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # Holm (1979)'s rule keeps step-down order and caps at 1; NaN is not in the family
    assert holm([0.5, np.nan, 0.4]) == pytest.approx([0.8, np.nan, 0.8], nan_ok=True)
    assert holm([0.9, 0.6]) == pytest.approx([1.0, 1.0])
    assert holm([]).size == 0


def test_rank_intervals_separate_clear_gaps_and_overlap_ties():
    prompts = np.repeat([f"p{i}" for i in range(12)], 2)
    rng = np.random.default_rng(0)
    base = np.repeat(rng.normal(0.5, 0.2, 12), 2)
    clear = rank_intervals(np.stack([base, base + 0.2, base - 0.2]), prompts, True)
    assert [(r.rank, r.low, r.high) for r in clear] == [(2, 2, 2), (1, 1, 1), (3, 3, 3)]
    swing = np.repeat([0.05, -0.05] * 6, 2)  # equal means, but which is ahead depends on the prompts drawn
    noisy = np.stack([base + swing, base - swing, base - 0.3])
    tied = rank_intervals(noisy, prompts, True)
    assert [(r.rank, r.low, r.high) for r in tied] == [(1, 1, 2), (1, 1, 2), (3, 3, 3)]
    lower_is_better = rank_intervals(np.stack([base, base + 0.2]), prompts, False)
    assert [r.rank for r in lower_is_better] == [1, 2]
    assert rank_intervals(noisy, prompts, True) == tied  # seeded


def test_the_minimal_detectable_effect_is_detected_with_80_percent_power():
    """By definition: prompts whose true mean difference is the MDE are found significant by the
    two-sided t-test at 0.05 in 80% of draws (simulated, 40,000 experiments of 12 prompts)."""
    from harness.report.stats import minimal_detectable_effect

    rng = np.random.default_rng(0)
    k, spread = 12, 0.05
    observed = rng.normal(0.0, spread, k)  # one evaluation: 12 prompts, one pair each
    mde = minimal_detectable_effect(observed, np.ones(k), alpha=0.05)
    sd = observed.std(ddof=1)
    experiments = rng.normal(mde, sd, (40_000, k))  # the same spread, the true effect at the MDE
    rejected = scipy_stats.ttest_1samp(experiments, 0.0, axis=1).pvalue < 0.05
    assert rejected.mean() == pytest.approx(0.80, abs=0.01)
    # with many prompts it tends to the normal approximation (z_0.975 + z_0.8) SE
    many = rng.normal(0.0, spread, 400)
    se = many.std(ddof=1) / np.sqrt(many.size)
    normal = (scipy_stats.norm.ppf(0.975) + scipy_stats.norm.ppf(0.8)) * se
    assert minimal_detectable_effect(many, np.ones(many.size), 0.05) == pytest.approx(normal, rel=0.01)


def test_the_mde_is_clustered_by_prompt_as_the_report_bootstrap_is():
    """Seeds of one prompt are correlated: the MDE's standard error is that of the prompt-clustered
    design, which the report's own bootstrap of the paired mean estimates too (not the smaller one
    that would treat every video as independent)."""
    from harness.report.stats import bootstrap_means, cluster_sums, minimal_detectable_effect
    from scipy import stats as st

    rng = np.random.default_rng(1)
    prompts = np.repeat(np.arange(30), rng.integers(1, 5, 30)).astype(str)  # 1-4 seeds per prompt
    per_prompt = rng.normal(0.0, 0.1, 30)[prompts.astype(int)]
    diff = per_prompt + rng.normal(0.0, 0.01, prompts.size)  # mostly shared within a prompt
    sums, counts = cluster_sums(diff, prompts)
    mde = minimal_detectable_effect(sums, counts, 0.05)
    boot_se = bootstrap_means(sums, counts, Resampling(draws=4000, seed=0))[0].std()
    factor = st.t.ppf(0.975, 29) + st.t.ppf(0.8, 29)  # about the noncentral-t factor at 29 df
    assert mde == pytest.approx(factor * boot_se, rel=0.1)
    naive = factor * diff.std(ddof=1) / np.sqrt(diff.size)
    assert mde > 1.3 * naive


def test_a_paired_difference_states_its_mde():
    result = paired_difference(METHOD, BASE, PROMPTS, Resampling(draws=200))
    assert result.mde > abs(result.delta) > 0  # 3 prompts: this evaluation could not detect its own Δ
