"""Paired significance against independent computations: the randomization test by
enumerating every sign flip, the t-test from its formula, Holm by hand, the bootstrap against
scipy's on the same vector; queries paired by id, never by position."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from rerank_ray.significance import ALPHA, RESAMPLES, SEED, compare_systems, holm


def _per_query(values: np.ndarray, metric: str = "m") -> dict:
    return {f"q{i:03d}": {metric: float(v)} for i, v in enumerate(values)}


def _enumerated_p(differences: np.ndarray) -> float:
    """Two-sided sign-flip p-value over all 2^n flips: min(1, 2 min(P[T>=t], P[T<=t]))."""
    observed = differences.mean()
    means = [
        np.mean(differences * np.array(signs))
        for signs in itertools.product((1, -1), repeat=len(differences))
    ]
    eps = 1e-12
    greater = np.mean([m >= observed - eps for m in means])
    less = np.mean([m <= observed + eps for m in means])
    return min(1.0, 2 * min(greater, less))


def _t_test_p(differences: np.ndarray) -> float:
    n = len(differences)
    t = differences.mean() / (differences.std(ddof=1) / math.sqrt(n))
    return 2 * stats.t.sf(abs(t), df=n - 1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_small_samples_equal_the_full_enumeration_and_the_t_formula(seed):
    rng = np.random.default_rng(seed)
    baseline = rng.choice([0.0, 0.25, 0.5, 1.0], size=11)  # 2^11 flips: enumerated exactly
    system = np.clip(baseline + rng.choice([-0.5, 0.0, 0.25, 0.5], size=11), 0, 1)
    [c] = compare_systems(
        {"retrieval": _per_query(baseline), "rerank": _per_query(system)}, "retrieval", ["m"]
    )
    differences = system - baseline
    assert c.queries == 11 and c.mean_difference == pytest.approx(differences.mean(), abs=1e-15)
    assert c.randomization_p == pytest.approx(_enumerated_p(differences), abs=1e-12)
    assert c.t_test_p == pytest.approx(_t_test_p(differences), rel=1e-9)
    assert c.holm_p == c.randomization_p  # one system: nothing to adjust
    assert c.significant == (c.randomization_p < ALPHA)
    interval = stats.bootstrap(
        (differences,),
        np.mean,
        n_resamples=RESAMPLES,
        method="BCa",
        rng=np.random.default_rng(SEED),
    ).confidence_interval
    assert (c.ci_low, c.ci_high) == pytest.approx((interval.low, interval.high), abs=1e-12)
    assert c.ci_low <= c.mean_difference <= c.ci_high


def test_large_samples_agree_with_the_t_test_and_find_a_real_lift():
    """At 400 queries the resampled p is within Monte Carlo error of the t-test's (both
    approximate the same mean's sampling distribution), and a lift of 0.1 is found."""
    rng = np.random.default_rng(7)
    baseline = rng.uniform(size=400)
    for lift in (0.0, 0.05, 0.1):
        system = baseline + lift + rng.normal(scale=0.3, size=400)
        [c] = compare_systems(
            {"retrieval": _per_query(baseline), "rerank": _per_query(system)}, "retrieval", ["m"]
        )
        assert abs(c.randomization_p - c.t_test_p) < 0.02, (lift, c)
        assert c.ci_low < c.mean_difference < c.ci_high
        assert c.significant == (c.randomization_p < ALPHA)
    assert c.significant and c.ci_low > 0  # the lift of 0.1 at 400 queries


def test_queries_are_paired_by_id_and_holm_runs_across_systems():
    rng = np.random.default_rng(3)
    baseline = rng.uniform(size=60)
    systems = {name: baseline + rng.normal(loc, 0.2, 60) for name, loc in
               (("a", 0.02), ("b", 0.06), ("c", 0.1))}  # fmt: skip
    per_query = {"retrieval": _per_query(baseline)}
    for name, values in systems.items():
        rows = list(_per_query(values).items())
        rng.shuffle(rows)  # another order of the same queries
        per_query[name] = dict(rows)
    found = {c.system: c for c in compare_systems(per_query, "retrieval", ["m"])}
    for name, values in systems.items():
        assert found[name].mean_difference == pytest.approx((values - baseline).mean(), abs=1e-12)
    raw = [found[name].randomization_p for name in "abc"]
    assert [found[name].holm_p for name in "abc"] == pytest.approx(holm(raw), abs=0)
    smallest = min(raw)
    assert min(found[name].holm_p for name in "abc") == pytest.approx(min(1.0, 3 * smallest))


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])


def test_a_metric_the_system_cannot_change_is_not_significant():
    baseline = np.array([0.0, 1.0, 1.0, 0.5])
    [c] = compare_systems(
        {"retrieval": _per_query(baseline), "rerank": _per_query(baseline)}, "retrieval", ["m"]
    )
    assert (c.mean_difference, c.ci_low, c.ci_high) == (0.0, 0.0, 0.0)
    assert c.randomization_p == c.t_test_p == c.holm_p == 1.0 and not c.significant


def test_the_table_marks_only_significant_differences():
    from rerank_ray.report import metrics_table, significance_note, significant_metrics

    significance = {
        "baseline": "retrieval",
        "alpha": ALPHA,
        "comparisons": [
            {"system": "rerank", "metric": "mrr@10", "significant": True},
            {"system": "rerank", "metric": "recall@1", "significant": False},
        ],
    }
    table = metrics_table(
        {"retrieval": {"recall@1": 0.5, "mrr@10": 0.5}, "rerank": {"recall@1": 0.6, "mrr@10": 0.7}},
        significant_metrics(significance),
    )
    assert table.splitlines()[-1] == "| Δ rerank | +0.1000 | +0.2000* |"
    assert significance_note(significance).startswith("* the difference is significant at α = 0.05")


@pytest.mark.parametrize("lift", [0.0, 0.03, 0.08])
def test_the_resampled_randomization_test_agrees_with_scipys(lift):
    """Past 2^n > RESAMPLES swaps the test samples them: within Monte Carlo error of
    scipy.stats.permutation_test on the same vector (other random draws)."""
    from rerank_ray.significance import randomization_p

    rng = np.random.default_rng(11)
    differences = rng.normal(loc=lift, scale=0.3, size=120)
    scipys = stats.permutation_test(
        (differences, np.zeros(120)),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=RESAMPLES,
        rng=np.random.default_rng(0),
    ).pvalue
    assert randomization_p(differences, np.random.default_rng(SEED)) == pytest.approx(
        scipys, abs=0.015
    )
