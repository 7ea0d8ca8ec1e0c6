"""Is a difference real? Paired tests of each system against a baseline over the same queries.

Each metric's per-query values of a system and of the baseline are paired by query (the
queries with at least one relevant passage, the ones the averages run over), and the
differences ``d_q = system_q - baseline_q`` are tested:

* **paired randomization test** (Fisher's sign-flip permutation test): the mean difference
  ``t`` against its distribution ``T`` when each query's pair is swapped at random; two-sided,
  ``p = min(1, 2 min(P[T >= t], P[T <= t]))``, exact over all ``2^n`` swaps when ``2^n`` is at
  most :data:`RESAMPLES`, else over that many random swaps with the observed one counted
  (``(hits + 1) / (RESAMPLES + 1)``), as ``scipy.stats.permutation_test`` defines it. A swap
  whose ``T`` is within scipy's ``100 ε |t|`` of ``t``, widened by the rounding bound of any
  order of summing the ``n`` terms (``4 n ε mean|d|``), counts as a tie (it reaches ``t`` both
  ways), so equal sums are ties whatever the order the matrix product adds them in;
* **paired t-test**: ``t = mean(d) / (sd(d) / sqrt(n))`` with ``n - 1`` degrees of freedom
  (``scipy.stats.ttest_rel``'s p);
* **bootstrap 95 % confidence interval** of the mean difference, BCa, queries resampled with
  replacement, seeded: equal to ``scipy.stats.bootstrap((d,), np.mean, method="BCa",
  n_resamples=RESAMPLES, batch=BATCH_VALUES // n, rng=np.random.default_rng(seed))``. Its
  resample indices are drawn exactly as scipy draws them, turned into per-query counts
  ``c_b``, and the resample means are ``c_b · d / n``; a resample whose sum is within rounding
  of the observed sum is re-averaged the way scipy averages it, so the bias correction
  ``z0 = Φ⁻¹((#{θ*_b < θ} + #{θ*_b <= θ}) / 2B)`` counts the same resamples as scipy's. The
  acceleration is the jackknife's, whose leave-one-out means are analytic:
  ``θ_(i) = (Σd - d_i) / (n - 1)``, so ``U_i = (n - 1)(θ_(·) - θ_(i)) = d_i - mean(d)`` and
  ``a = Σ U_i³ / (6 (Σ U_i²)^{3/2})``. The interval is the linearly interpolated quantiles of
  the resample means at ``α_{1,2} = Φ(z0 + (z0 ± z_{α/2}) / (1 - a (z0 ± z_{α/2})))``;
* **Holm–Bonferroni** across the systems compared with the baseline, per metric, on the
  randomization p-values: the ``i``-th smallest of ``m`` is multiplied by ``m - i + 1`` and
  made non-decreasing. A difference is *significant* when that adjusted p is below
  :data:`ALPHA`.

Comparisons over the same number of queries share their random swaps and resamples: the sign
vectors (or resample counts) of a batch form one matrix, multiplied once by the matrix of all
those comparisons' differences. The draws depend only on the number of queries and the seed,
so a comparison's figures do not depend on which others are computed alongside it (its
interval up to the rounding of the matrix product). Every test is seeded (:data:`SEED`), so
a run's figures are reproducible.

Example:
    >>> baseline = {"q1": {"mrr@10": 0.5}, "q2": {"mrr@10": 1.0}, "q3": {"mrr@10": 0.0}}
    >>> better = {"q1": {"mrr@10": 1.0}, "q2": {"mrr@10": 1.0}, "q3": {"mrr@10": 0.5}}
    >>> [c] = compare_systems({"retrieval": baseline, "rerank": better}, "retrieval", ["mrr@10"])
    >>> c.system, c.mean_difference, c.randomization_p  # 2 of the 2^3 swaps reach +1/3: 2 x 2/8
    ('rerank', 0.3333333333333333, 0.5)
    >>> holm([0.01, 0.04, 0.03])
    [0.03, 0.06, 0.06]
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

import numpy as np

#: Significance level of the decisions the report marks.
ALPHA = 0.05
#: Resamples of the randomization test and the bootstrap.
RESAMPLES = 10_000
#: Seed of both resampling tests.
SEED = 20240917
#: Most values a resampling test holds at once (queries x resamples per batch).
BATCH_VALUES = 4_000_000
#: Confidence level of the bootstrap interval.
CONFIDENCE = 0.95

_EPS = np.finfo(np.float64).eps
Key = TypeVar("Key", bound=Hashable)


@dataclass(frozen=True)
class Comparison:
    """One system against the baseline on one metric."""

    system: str
    baseline: str
    metric: str
    queries: int
    mean_difference: float
    ci_low: float
    ci_high: float
    randomization_p: float
    t_test_p: float
    holm_p: float
    significant: bool

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class PairedTests:
    """The tests of one vector of paired differences."""

    queries: int
    mean_difference: float
    randomization_p: float
    t_test_p: float
    ci_low: float
    ci_high: float


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input's order (capped at 1)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - position) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def _rows(differences: np.ndarray) -> np.ndarray:
    """``differences`` as a C-contiguous float64 matrix, one vector of differences per row."""
    return np.ascontiguousarray(np.atleast_2d(np.asarray(differences, dtype=np.float64)))


def randomization_p(differences: np.ndarray, rng: np.random.Generator) -> float | np.ndarray:
    """The paired randomization test's two-sided p-value of the mean of each row of
    ``differences`` (``(n,)`` gives a float, ``(m, n)`` an array of ``m``), all rows under the
    same swaps."""
    rows = _rows(differences)
    m, n = rows.shape
    observed = rows.sum(axis=1)
    # T = 2h - s, h the sum of the entries that keep their sign, s the observed sum:
    # T >= s - tie  <=>  h >= s - tie / 2 (and alike for <=).
    tie = 100 * _EPS * np.abs(observed) + 4 * n * _EPS * np.abs(rows).sum(axis=1)
    exact = 2**n <= RESAMPLES
    total = 2**n if exact else RESAMPLES
    batch = max(1, BATCH_VALUES // n)
    greater = np.zeros(m, dtype=np.int64)
    less = np.zeros(m, dtype=np.int64)
    for start in range(0, total, batch):
        count = min(batch, total - start)
        if exact:
            keep = (np.arange(start, start + count)[:, None] >> np.arange(n)) & 1
        else:
            packed = rng.integers(0, 256, size=(count, (n + 7) // 8), dtype=np.uint8)
            keep = np.unpackbits(packed, axis=1, count=n)
        kept = keep.astype(np.float64) @ rows.T  # (count, m): h of every swap
        greater += np.count_nonzero(kept >= observed - tie / 2, axis=0)
        less += np.count_nonzero(kept <= observed + tie / 2, axis=0)
    extra = 0 if exact else 1  # the observed assignment is one of the random ones
    p_greater = (greater + extra) / (total + extra)
    p_less = (less + extra) / (total + extra)
    p = np.minimum(1.0, 2 * np.minimum(p_greater, p_less))
    return float(p[0]) if np.ndim(differences) == 1 else p


def bootstrap_means(differences: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The :data:`RESAMPLES` bootstrap means of each row of ``differences`` (``(m, n)`` ->
    ``(m, RESAMPLES)``), the resamples scipy's ``bootstrap`` draws from ``rng`` in batches of
    ``BATCH_VALUES // n``, shared by all rows."""
    rows = _rows(differences)
    m, n = rows.shape
    theta_hat = np.mean(rows, axis=1)  # per row, summed as scipy sums one vector
    # A resample sum this close to the observed one may fall on either side of it by
    # rounding alone (any order of summing n terms of at most n * max|d| in all); such
    # resamples are re-averaged exactly as scipy averages them.
    band = 4 * n * n * _EPS * np.abs(rows).max(axis=1)
    means = np.empty((m, RESAMPLES))
    batch = max(1, BATCH_VALUES // n)
    counts = np.empty((min(batch, RESAMPLES), n))
    for start in range(0, RESAMPLES, batch):
        count = min(batch, RESAMPLES - start)
        picks = rng.integers(0, n, size=(count, n))  # scipy's _bootstrap_resample draw
        for r in range(count):  # how often each query is drawn, one resample per row
            counts[r] = np.bincount(picks[r], minlength=n)
        sums = counts[:count] @ rows.T  # (count, m)
        means[:, start : start + count] = sums.T / n
        for r, j in zip(*np.nonzero(np.abs(sums - n * theta_hat) <= band), strict=True):
            means[j, start + r] = np.mean(rows[j][picks[r]])
    return means


def bca_interval(
    differences: np.ndarray, means: np.ndarray, confidence: float = CONFIDENCE
) -> tuple[np.ndarray, np.ndarray]:
    """BCa interval ``(low, high)`` (arrays of ``m``) of the mean of each row of
    ``differences`` ``(m, n)`` from its bootstrap ``means`` ``(m, B)``; NaN where the levels
    are undefined (every resample on one side of the observed mean)."""
    from scipy.special import ndtr, ndtri

    rows = _rows(differences)
    resamples = means.shape[1]
    theta_hat = np.mean(rows, axis=1)[:, None]
    below = np.count_nonzero(means < theta_hat, axis=1)
    at_or_below = np.count_nonzero(means <= theta_hat, axis=1)
    z0 = ndtri((below + at_or_below) / (2 * resamples))
    n = rows.shape[1]
    deviations = rows - theta_hat  # the jackknife's U_i of the mean
    acceleration = (
        np.sum(deviations**3, axis=1) / n**3 / (np.sum(deviations**2, axis=1) / n**2) ** 1.5 / 6
    )
    z_alpha = float(ndtri((1 - confidence) / 2))
    levels = []
    for z in (z_alpha, -z_alpha):
        shifted = z0 + z
        levels.append(ndtr(z0 + shifted / (1 - acceleration * shifted)))
    low = np.full(len(rows), np.nan)
    high = np.full(len(rows), np.nan)
    for j, (level_low, level_high) in enumerate(zip(*levels, strict=True)):
        if np.isfinite(level_low) and np.isfinite(level_high):
            low[j], high[j] = np.quantile(means[j], [level_low, level_high])
    return low, high


def paired_tests(differences: Mapping[Key, np.ndarray], seed: int = SEED) -> dict[Key, PairedTests]:
    """Every test of each vector of paired ``differences`` (``{key: d}``); vectors of the same
    length share one computation (their draws are the same)."""
    found: dict[Key, PairedTests] = {}
    by_length: dict[int, list[Key]] = {}
    for key, vector in differences.items():
        vector = np.asarray(vector, dtype=np.float64)
        n = len(vector)
        if n < 2:  # nothing to resample
            mean = float(vector.mean()) if n else 0.0
            found[key] = PairedTests(n, mean, 1.0, 1.0, mean, mean)
        else:
            by_length.setdefault(n, []).append(key)
    for n, keys in by_length.items():
        rows = _rows([differences[key] for key in keys])
        randomization = randomization_p(rows, np.random.default_rng(seed))
        # No spread: t is infinite (0/0 when every difference is 0) and every bootstrap
        # resample has the same mean.
        spread = np.array([np.any(row != row[0]) for row in rows])
        t_test, low, high = np.ones(len(keys)), np.zeros(len(keys)), np.zeros(len(keys))
        if spread.any():
            from scipy import stats  # about a second to import: only when there is a test

            t_test[spread] = stats.ttest_1samp(rows[spread], 0.0, axis=1).pvalue
            means = bootstrap_means(rows[spread], np.random.default_rng(seed))
            low[spread], high[spread] = bca_interval(rows[spread], means)
        for j, key in enumerate(keys):
            mean = float(rows[j].mean())
            if spread[j]:
                tests = (float(t_test[j]), float(low[j]), float(high[j]))
            else:
                tests = (1.0 if mean == 0 else 0.0, mean, mean)
            found[key] = PairedTests(n, mean, float(randomization[j]), *tests)
    return found


def compare_systems(
    per_query: Mapping[str, Mapping[str, Mapping[str, float]]],
    baseline: str,
    metrics: Sequence[str],
    alpha: float = ALPHA,
    seed: int = SEED,
) -> list[Comparison]:
    """Every system of ``per_query`` (``{system: {qid: {metric: value}}}``) against
    ``baseline`` on each metric, over the queries both have; Holm across systems per metric."""
    systems = [name for name in per_query if name != baseline]
    differences = {}
    for system in systems:
        qids = sorted(set(per_query[system]) & set(per_query[baseline]))
        for metric in metrics:
            differences[system, metric] = np.array(
                [per_query[system][q][metric] - per_query[baseline][q][metric] for q in qids],
                dtype=np.float64,
            )
    tests = paired_tests(differences, seed)
    found: list[Comparison] = []
    for metric in metrics:
        rows = [tests[system, metric] for system in systems]
        for system, row, p_holm in zip(
            systems, rows, holm([row.randomization_p for row in rows]), strict=True
        ):
            found.append(
                Comparison(
                    system,
                    baseline,
                    metric,
                    row.queries,
                    row.mean_difference,
                    row.ci_low,
                    row.ci_high,
                    row.randomization_p,
                    row.t_test_p,
                    p_holm,
                    p_holm < alpha,
                )  # fmt: skip
            )
    return found
