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


def _scipys_permutation_p(differences: np.ndarray) -> float:
    """scipy's paired permutation test of the mean difference (its own random swaps)."""
    return stats.permutation_test(
        (differences, np.zeros(len(differences))),
        lambda x, y, axis: np.mean(x - y, axis=axis),
        permutation_type="samples",
        vectorized=True,
        n_resamples=RESAMPLES,
        rng=np.random.default_rng(0),
    ).pvalue


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


def _significance(significant: bool) -> dict:
    comparison = {"system": "rerank", "metric": "mrr@10", "queries": 3, "mean_difference": 0.2,
                  "ci_low": -0.1, "ci_high": 0.5, "randomization_p": 0.01, "t_test_p": 0.02,
                  "holm_p": 0.01, "significant": significant}  # fmt: skip
    return {"baseline": "retrieval", "alpha": ALPHA, "comparisons": [comparison]}


@pytest.mark.parametrize("significant", [True, False], ids=["marked", "unmarked"])
def test_the_legend_of_the_mark_is_shown_only_with_a_mark(significant, tmp_path, capsys):
    """The summary, report.md, compare's summary and compare.md explain ``*`` only when a
    table shows one."""
    import json

    from rerank_ray.cli import _print_summary
    from rerank_ray.compare import comparison_note, comparison_table, render_comparison
    from rerank_ray.config import RunConfig
    from rerank_ray.report import render_report

    metrics = {"retrieval": {"mrr@10": 0.5}, "rerank": {"mrr@10": 0.7}}
    significance = _significance(significant)
    config = RunConfig(out=str(tmp_path), metrics=("mrr@10",))
    (tmp_path / "manifest.json").write_text(json.dumps({"config": config.to_dict(), "stages": {}}))
    (tmp_path / "significance.json").write_text(json.dumps(significance))
    _print_summary(config, metrics, depth=100)
    summary = capsys.readouterr().out
    report = render_report(metrics, {"config": config.to_dict()}, significance)
    result = {**significance, "runs": ["a", "b"], "baseline": "a:retrieval",
              "systems": {"a:retrieval": {"mrr@10": 0.5}, "b:rerank": {"mrr@10": 0.7}}}  # fmt: skip
    result["comparisons"] = [{**c, "system": "b:rerank"} for c in result["comparisons"]]
    compared = comparison_table(result) + "\n" + render_comparison(result)
    for text in (summary, report, compared):
        assert ("*" in text) == significant, text
    assert ("* the difference is significant" in summary) == significant
    assert ("* the difference is significant" in report) == significant
    assert bool(comparison_note(result)) == significant
    assert ("significant at α" in render_comparison(result)) == significant


@pytest.mark.parametrize("lift", [0.0, 0.03, 0.08])
def test_the_resampled_randomization_test_agrees_with_scipys(lift):
    """Past 2^n > RESAMPLES swaps the test samples them: within Monte Carlo error of
    scipy.stats.permutation_test on the same vector (other random draws)."""
    from rerank_ray.significance import randomization_p

    rng = np.random.default_rng(11)
    differences = rng.normal(loc=lift, scale=0.3, size=120)
    scipys = _scipys_permutation_p(differences)
    assert randomization_p(differences, np.random.default_rng(SEED)) == pytest.approx(
        scipys, abs=0.015
    )


def _systems_at(n: int, seed: int) -> dict:
    """A baseline and three systems over ``n`` queries, on metrics shaped like the real ones:
    0/1 (ties galore), reciprocal ranks (fractions whose sums round), a skewed continuous one
    (a clear acceleration) and a plain continuous one."""
    rng = np.random.default_rng(seed)

    def system() -> dict:
        rank = rng.integers(1, 15, size=n)
        values = {
            "recall@1": (rank == 1).astype(float),
            "mrr@10": np.where(rank <= 10, 1 / rank, 0.0),
            "skewed": rng.exponential(size=n) ** 2,
            "plain": rng.normal(size=n),
        }
        return {f"q{i:05d}": {m: float(v[i]) for m, v in values.items()} for i in range(n)}

    return {"retrieval": system(), "a": system(), "b": system(), "c": system()}


def test_intervals_computed_together_equal_scipys_bootstrap_of_each_vector():
    """Twelve comparisons share their resamples (batched: BATCH_VALUES // n < RESAMPLES) and
    each interval equals scipy's BCa bootstrap of that one vector with the same seed, on 0/1
    metrics (resample means tie the observed one), reciprocal ranks and skewed values."""
    from rerank_ray.significance import BATCH_VALUES

    n = 2_500
    assert BATCH_VALUES // n < RESAMPLES
    per_query = _systems_at(n, seed=4)
    metrics = ["recall@1", "mrr@10", "skewed", "plain"]
    found = compare_systems(per_query, "retrieval", metrics)
    assert len(found) == 12
    qids = sorted(per_query["retrieval"])
    for c in found:
        differences = np.array(
            [per_query[c.system][q][c.metric] - per_query["retrieval"][q][c.metric] for q in qids]
        )
        interval = stats.bootstrap(
            (differences,),
            np.mean,
            n_resamples=RESAMPLES,
            method="BCa",
            batch=BATCH_VALUES // n,
            rng=np.random.default_rng(SEED),
        ).confidence_interval
        assert (c.ci_low, c.ci_high) == pytest.approx((interval.low, interval.high), abs=1e-12), c
        assert c.t_test_p == pytest.approx(stats.ttest_rel(differences, 0 * differences).pvalue)


def test_a_comparisons_figures_do_not_depend_on_those_computed_alongside():
    """The draws depend only on the number of queries and the seed: alone or with others, a
    comparison gets the same p and (up to the matrix product's rounding) the same interval."""
    per_query = _systems_at(300, seed=5)
    together = compare_systems(per_query, "retrieval", ["mrr@10", "plain"])
    for c in together:
        [alone] = compare_systems(
            {"retrieval": per_query["retrieval"], c.system: per_query[c.system]},
            "retrieval",
            [c.metric],
        )
        assert (alone.randomization_p, alone.t_test_p) == (c.randomization_p, c.t_test_p)
        assert (alone.ci_low, alone.ci_high) == pytest.approx((c.ci_low, c.ci_high), abs=1e-15)


def test_small_samples_computed_together_equal_the_full_enumeration():
    """2^12 <= RESAMPLES: every swap enumerated, for several comparisons at once, with
    reciprocal-rank differences whose swapped sums tie the observed one up to rounding."""
    per_query = _systems_at(12, seed=6)
    qids = sorted(per_query["retrieval"])
    for c in compare_systems(per_query, "retrieval", ["recall@1", "mrr@10", "plain"]):
        differences = np.array(
            [per_query[c.system][q][c.metric] - per_query["retrieval"][q][c.metric] for q in qids]
        )
        assert c.randomization_p == pytest.approx(_enumerated_p(differences), abs=1e-12), c


def test_resampled_p_values_computed_together_agree_with_scipys_permutation_test():
    """Past 2^n > RESAMPLES: each p of comparisons sharing their swaps is within Monte Carlo
    error of scipy.stats.permutation_test on that vector (other random draws)."""
    n = 600
    per_query = _systems_at(n, seed=8)
    qids = sorted(per_query["retrieval"])
    for system in ("a", "b", "c"):  # a lift for b, so that some p are small
        for q in qids:
            per_query[system][q]["plain"] += {"a": 0.0, "b": 0.12, "c": 0.05}[system]
    for c in compare_systems(per_query, "retrieval", ["recall@1", "mrr@10", "plain"]):
        differences = np.array(
            [per_query[c.system][q][c.metric] - per_query["retrieval"][q][c.metric] for q in qids]
        )
        scipys = _scipys_permutation_p(differences)
        assert c.randomization_p == pytest.approx(scipys, abs=0.02), (c, scipys)


def test_comparisons_over_other_queries_and_without_spread_alongside_others():
    """A system with fewer queries is tested over those; one that changes nothing, or adds
    the same to every query, has no spread: its interval is its mean, its t-test decided."""
    rng = np.random.default_rng(9)
    baseline = rng.choice([0.0, 0.25, 0.5, 0.75], size=40)  # + 0.25 exactly
    per_query = {
        "retrieval": _per_query(baseline),
        "same": _per_query(baseline),
        "shifted": _per_query(baseline + 0.25),
        "noisy": _per_query(baseline + rng.normal(0.1, 0.2, size=40)),
        "fewer": dict(list(_per_query(baseline + rng.normal(size=40)).items())[:30]),
    }
    found = {c.system: c for c in compare_systems(per_query, "retrieval", ["m"])}
    assert (found["same"].ci_low, found["same"].ci_high, found["same"].t_test_p) == (0, 0, 1)
    assert found["shifted"].ci_low == found["shifted"].ci_high == pytest.approx(0.25)
    assert found["shifted"].t_test_p == 0.0
    assert found["noisy"].ci_low < found["noisy"].mean_difference < found["noisy"].ci_high
    assert found["fewer"].queries == 30 and found["noisy"].queries == 40


def test_swaps_tying_the_observed_sum_in_exact_arithmetic_count_as_ties():
    """Differences in tenths summing to 0 (or 0.1): many swaps give the observed mean exactly,
    which floating point misses by a few ulps, far beyond 100 ε of an observed mean near 0;
    they count as ties however the matrix product adds the terms up."""
    from rerank_ray.significance import randomization_p

    rng = np.random.default_rng(0)
    tenths = rng.integers(-10, 11, size=(40, 12))
    tenths[:, -1] = rng.integers(0, 2, size=40) - tenths[:, :-1].sum(axis=1)
    rows = tenths / 10
    together = randomization_p(rows, np.random.default_rng(SEED))
    assert together == pytest.approx([_enumerated_p(row) for row in rows], abs=1e-12)
