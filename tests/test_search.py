"""Exact top-k: the shortlisted block search, its error bound, ties by pid, and the Ray stage
against float64 brute force."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rerank_ray.embed import to_fixed_size_list
from rerank_ray.ranking import merge_topk
from rerank_ray.search import exact_search, search_files
from rerank_ray.topk import BlockSearch, _round_down

#: bfloat16's unit roundoff: round to nearest moves a value by at most ``U`` of it.
U = 2.0**-8


def brute_force(queries, corpus, pids, k):
    """numpy in float64: all scores, then sort each row by (-score, pid)."""
    scores = queries.astype(np.float64) @ corpus.astype(np.float64).T
    pids = np.asarray(pids)
    out_ids, out_scores = [], []
    for row in scores:
        order = np.lexsort((pids, -row))[:k]
        out_ids.append(pids[order].tolist())
        out_scores.append(row[order].tolist())
    return out_ids, out_scores


#: Tile layouts: the default, and one whose grouped screening runs on the tests' small blocks
#: (groups of 4 columns in tiles of 64; a 150-row block also leaves a tile of 22, screened
#: column by column).
LAYOUTS = [{}, {"group": 4, "tile_columns": 64}]


def blockwise(queries, corpus, pids, k, block, **options):
    search = BlockSearch(queries, k, **options)
    for start in range(0, len(corpus), block):
        search.add(corpus[start : start + block], pids[start : start + block])
    return search.result()


def test_ties_go_by_pid():
    queries = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    corpus = np.array([[1, 2], [3, 2], [3, 2], [3, 2], [0, 2]], dtype=np.float32)
    top = blockwise(queries, corpus, np.array(["e", "d", "b", "c", "a"]), k=2, block=2)
    assert top.ids.tolist() == [["b", "c"], ["a", "b"]]
    assert top.scores.tolist() == [[3.0, 3.0], [2.0, 2.0]]


def test_fewer_passages_than_k_and_merge():
    query = np.array([[1.0, 0.0]], dtype=np.float32)
    first = blockwise(query, np.array([[0.1, 0], [0.9, 0]], np.float32), np.array(["x", "y"]), 3, 1)
    assert first.ids.tolist() == [["y", "x"]]
    second = blockwise(
        query, np.array([[0.5, 0], [0.9, 0]], np.float32), np.array(["a", "b"]), 3, 2
    )
    assert merge_topk(first, second, k=3).ids.tolist() == [["b", "y", "a"]]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shortlist", [True, False])
@pytest.mark.parametrize("kind", ["integers", "floats", "float16", "near-duplicates"])
def test_blockwise_equals_float64_brute_force(kind, shortlist, layout):
    rng = np.random.default_rng(3)
    if kind == "integers":  # every product exact: ties are real and must go by pid
        corpus = rng.integers(-2, 3, size=(700, 8)).astype(np.float32)
        queries = rng.integers(-2, 3, size=(30, 8)).astype(np.float32)
    else:
        corpus = rng.standard_normal((700, 32)).astype(np.float32) * rng.uniform(0.1, 10, (700, 1))
        queries = rng.standard_normal((30, 32)).astype(np.float32)
    if kind == "float16":
        corpus = corpus.astype(np.float16)
    if kind == "near-duplicates":
        # Passages that differ below bfloat16's resolution: the shortlist cannot tell them
        # apart, so only its error bound keeps the right ones.
        base = rng.standard_normal(32).astype(np.float32)
        corpus = (base + 1e-4 * rng.standard_normal((700, 32))).astype(np.float32)
    pids = np.array([f"p{i:04d}" for i in rng.permutation(700)])
    ids, scores = brute_force(queries, corpus, pids, 20)
    for block in (7, 64, 150, 700):
        top = blockwise(queries, corpus, pids, 20, block, shortlist=shortlist, **layout)
        assert top.ids.tolist() == ids
        np.testing.assert_allclose(top.scores, scores, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dim", [8, 384, 1024])
def test_shortlist_error_bound_holds(dim):
    """Every bfloat16 score is within the stated bound of the float64 one, and the bound is tight
    enough to be useful (within 20x of the largest error seen)."""
    import torch

    rng = np.random.default_rng(dim)
    queries = rng.standard_normal((50, dim)).astype(np.float32) * rng.uniform(0.01, 100, (50, 1))
    corpus = rng.standard_normal((2000, dim)).astype(np.float32) * rng.uniform(0.01, 100, (2000, 1))
    search = BlockSearch(queries, k=10)
    approx, error, relative = search._approximate(torch.from_numpy(corpus))
    exact = queries.astype(np.float64) @ corpus.astype(np.float64).T
    approx = approx.double().numpy()
    allowed = error.numpy()[:, None] + relative * np.abs(approx)
    assert np.all(np.abs(exact - approx) <= allowed)
    assert np.abs(exact - approx).max() > allowed.max() / 20


def _tie_direction(dim: int, rng) -> np.ndarray:
    """``dim`` signed powers of two (``1 .. 2^9``) whose squared norm ``W`` is ``2^20 + 2^12 -
    j``: the bfloat16 rounding tie ``2^20 (1 + 2^-8)`` (``j = 0``) or ``j <= 2`` below it, so a
    bfloat16 product of two multiples of it rounds down by (almost) ``U`` of the result. (A sum
    of ``n`` powers of 4 is ``n`` mod 3, hence ``j``.)"""
    j = (2 - dim) % 3
    total = 4**10 + 4**6 - j
    exponents = [e for e in range(11) for _ in range(total // 4**e % 4)]  # base-4 digits
    while len(exponents) < dim:  # 4^e = 4 * 4^(e-1): split the largest square
        exponents.sort()
        exponents += [exponents.pop() - 1] * 4
    assert len(exponents) == dim and sum(4**e for e in exponents) == total
    return rng.permutation(2.0 ** np.array(exponents) * rng.choice([-1.0, 1.0], dim))


def _rounding_down_by_u(direction, scales, rng, dtype) -> np.ndarray:
    """Rows ``scale * direction * (1 + 2^-8 - eta)``: every component on, or just below, the
    bfloat16 tie above ``scale * direction`` (``eta`` a multiple of ``dtype``'s resolution below
    ``2^-10``, zero in row 0), so each rounds down by (almost) ``U`` of itself, and the rounding
    residual is (nearly) parallel to the row."""
    step = 2.0**-10 if dtype == np.float16 else 2.0**-20
    eta = np.floor(rng.uniform(0, 2.0**-10, (len(scales), len(direction))) / step) * step
    eta[0] = 0
    return (scales[:, None] * direction * (1 + U - eta)).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("dim", [8, 384, 1024])
def test_shortlist_error_bound_is_tight_on_parallel_vectors(dim, dtype):
    """The bound holds, and is nearly attained, where every rounding goes the same way.

    Queries and passages are (near-)parallel: ``+-2^s w (1 + 2^-8 - eta)`` with ``w`` from
    :func:`_tie_direction` and ``eta`` below bfloat16's resolution (zero for the first query and
    passage). Stored as float32, or float16 (queries too), which the search widens to float32.
    Every component rounds down by ``U`` of itself, so the rounding residuals are parallel to
    the vectors (Cauchy-Schwarz is an equality) and the bound's three rounding terms are all
    attained at once, each ``U |q| |d|`` (a third of the bound) for the first pair:

    ==================================  =====================================  ================
    term of the bound                   attained because                       without the term
    ==================================  =====================================  ================
    passage residual                    ``d`` rounds down by ``U |d|``         the bound fails
    ``|bf16(q)| U |d|``
    query residual                      ``q`` rounds down by ``U |q|``         the bound fails
    ``|q - bf16(q)| |bf16(d)|``
    output rounding                     ``bf16(q) . bf16(d) = 2^s W``, at or   the bound fails
    ``relative |approx|``               just below a tie, rounds down
    ==================================  =====================================  ================

    The exact score is then ``(1 + 2^-8)^3`` times ``approx``, about ``3 U |approx|`` off, which
    the bound allows with only its 0.1 % norm padding and its float32 accumulation term to spare
    (the accumulation is exact here: a pair's products are powers of two of one sign, and their
    partial sums multiples of the smallest product, fewer than ``2^24`` of them). So the largest deviation is asserted to reach 98 % of the bound: without any one
    of the three terms the bound fails on the first pair. Negative multiples check ``|approx|``.
    """
    import torch

    rng = np.random.default_rng(dim)
    direction = _tie_direction(dim, rng)
    query_scales = 2.0 ** rng.integers(-3, 4, 16) * rng.choice([-1.0, 1.0], 16)
    queries = _rounding_down_by_u(direction, query_scales, rng, dtype)
    corpus = _rounding_down_by_u(direction, rng.choice([-1.0, 1.0], 64), rng, dtype)
    search = BlockSearch(queries, k=10)
    # As BlockSearch.add hands a block to _candidates: the stored dtype, on the search's device.
    approx, error, relative = search._approximate(torch.from_numpy(corpus).to(search.device))
    approx = approx.double().cpu().numpy()
    exact = queries.astype(np.float64) @ corpus.astype(np.float64).T
    deviation = np.abs(exact - approx)
    allowed = error.cpu().numpy()[:, None] + relative * np.abs(approx)
    assert np.all(deviation <= allowed)
    assert (deviation / allowed).max() >= 0.98


def _inverted_pair(dim: int, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(w, top, rival)``: a bfloat16-exact query whose exact top passage ``top`` has a
    bfloat16 score a full bfloat16 step more than the error bound below ``rival``'s.

    ====  ==================  =======================  ===============================
    comp  ``w``               ``top`` (its bf16)       ``rival`` (its bf16)
    ====  ==================  =======================  ===============================
    1     ``1 - 2^-7``        ``1 + 2^-8`` (``1``)     ``1 + 2^-8 + 2^-20`` (``1 + 2^-7``)
    2     ``2^-4 - 2^-12``    ``2^-5 (1 + 2^-8)``      0
    3     ``105 / 128``       0                        ``2^-1 (1 + 2^-8 + 2^-20)`` (up)
    4     ``209 / 256``       0                        ``-2^-1 (1 + 2^-8)`` (down)
    5     ``2^-5 + 2^-11``    0                        ``-2^-6 (1 + 2^-8)`` (down)
    rest  ``+-2^-9``          0                        0
    ====  ==================  =======================  ===============================

    ``top``'s float32 product is ``1 - 1.5 * 2^-8 - 2^-17``, just below a tie: it rounds down to
    ``1 - 2^-7``, and each component of ``top`` was rounded down at a tie as well. ``rival``'s
    is about ``1 + 1.18 * 2^-8``, past a tie: it rounds up to ``1 + 2^-7``, and each component of
    ``rival`` was rounded so as to raise its product. Exactly, ``top`` leads by about ``2^-11``;
    in bfloat16, ``rival`` leads by ``2^-6``. The bound is about ``1.9 * 2^-8`` (``error``,
    from ``|w| |rival|`` = 1.88) plus ``2^-8`` (``relative``): ``approx(rival)`` less it is
    about ``1 - 0.9 * 2^-8``, which rounds down to ``1 - 2^-8``, a step above ``approx(top)``.
    """
    core_w = [1 - 2.0**-7, 2.0**-4 - 2.0**-12, 105 / 128, 209 / 256, 2.0**-5 + 2.0**-11]
    core_top = [1 + U, 2.0**-5 * (1 + U), 0, 0, 0]
    up, down = 1 + U + 2.0**-20, -(1 + U)
    core_rival = [up, 0, 2.0**-1 * up, 2.0**-1 * down, 2.0**-6 * down]
    w = rng.choice([-1.0, 1.0], dim) * 2.0**-9
    top, rival = np.zeros(dim), np.zeros(dim)
    core = rng.permutation(dim)[:5]
    w[core], top[core], rival[core] = core_w, core_top, core_rival
    return w, top, rival


@pytest.mark.parametrize("shortlist", [True, False])
@pytest.mark.parametrize("dim", [8, 384, 1024])
def test_first_block_keeps_a_passage_its_approximate_kth_outranks_by_more_than_the_bound(
    dim, shortlist
):
    """Before a query has k exact scores, a block's lower bound is its approximate k-th score
    minus the error bound; the approximate k-th itself would drop the exact top-1 here.

    :func:`_inverted_pair` gives a query ``w`` (also as ``2^s w``, all bfloat16-exact, and
    ``-w``) whose exact top passage ``top`` has a bfloat16 score more than the bound and a
    bfloat16 step below ``rival``'s. With k = 1 and both in the first block, a lower bound of
    ``approx(rival)`` itself puts the bar (it less the bound, rounded down) at ``1 - 2^-8``,
    above ``approx(top) = 1 - 2^-7``, and loses ``top``; the right lower bound (``approx(rival)``
    less the bound) puts it at ``1 - 2^-6``. Asserted: the inversion (against
    ``_approximate``), then the result against float64 brute force for block splits that put
    both in the first block, with fillers of half ``rival``'s norm. float32 only: ``rival`` lies
    ``2^-20`` above ties, closer than float16 resolves. Rounding the bar down gives a bfloat16
    step of slack, which is why the inversion has to exceed the bound by a step to show a
    missing error term.
    """
    import torch

    rng = np.random.default_rng(dim)
    w, top, rival = _inverted_pair(dim, rng)
    fillers = rng.standard_normal((30, dim))
    fillers *= np.linalg.norm(rival) / 2 / np.linalg.norm(fillers, axis=1, keepdims=True)
    corpus = np.vstack([rival, top, fillers]).astype(np.float32)
    queries = (np.array([1, 2.0**-3, 2.0**4, -1])[:, None] * w).astype(np.float32)
    pids = np.array([f"p{i:03d}" for i in rng.permutation(len(corpus))])
    exact = queries.astype(np.float64) @ corpus.astype(np.float64).T
    assert np.all(exact[:3, 1] > exact[:3, 0])
    search = BlockSearch(queries, k=1)
    approx, error, relative = search._approximate(torch.from_numpy(corpus).to(search.device))
    approx = approx.double().cpu().numpy()
    if shortlist:
        allowed = error.cpu().numpy()[:3] + relative * np.abs(approx[:3, 1])
        assert np.all(approx[:3, 0] - approx[:3, 1] > allowed)
    ids, scores = brute_force(queries, corpus, pids, 1)
    assert [row[0] for row in ids[:3]] == [pids[1]] * 3
    for block in (2, 7, len(corpus)):
        result = blockwise(queries, corpus, pids, 1, block, shortlist=shortlist)
        assert result.ids.tolist() == ids
        np.testing.assert_allclose(result.scores, scores, rtol=1e-12, atol=1e-12)


def test_round_down_gives_the_largest_value_not_above():
    """The shortlist bar is rounded down to the comparison's dtype, not to nearest: past a
    midpoint, ``1 + 0.75 * 2^-7`` gives 1, not ``1 + 2^-7``. Checked independently of how it
    rounds: ``rounded <= value < the next value of dtype above rounded``.

    Rounding the bar to nearest at the call site is an equivalent mutant no search can expose:
    the approximate scores are themselves values of that dtype, and for those ``approx >= B``
    holds exactly when ``approx >= ceil(B)``; nearest is the floor (keeps more) or the ceiling
    (keeps the same). Rounding down is the invariant stated once, and tested here."""
    import torch

    rng = np.random.default_rng(5)
    midpoints = [1 + 0.75 * 2.0**-7, -(1 + 0.25 * 2.0**-7), 1 + 0.75 * 2.0**-23, 3.0, -0.0]
    spread = rng.standard_normal(2000) * 10.0 ** rng.uniform(-30, 30, 2000)
    values = torch.tensor([*midpoints, *spread, 1e-45, -1e-45], dtype=torch.float64)
    for dtype in (torch.bfloat16, torch.float32):
        rounded = _round_down(values, dtype)
        above = torch.nextafter(rounded, torch.tensor(torch.inf, dtype=dtype))
        assert rounded.dtype == dtype
        assert bool((rounded.double() <= values).all())
        assert bool((above.double() > values).all())
    assert _round_down(values[:2], torch.bfloat16).tolist() == [1.0, -(1 + 2.0**-7)]


def test_passage_residual_is_the_largest_of_the_block():
    """The passages' rounding term is the largest residual measured in the block, whichever
    passage has it. A block of small bfloat16-exact passages and one large passage whose every
    component rounds down by ``U`` of itself at a tie (:func:`_rounding_down_by_u`), parallel to
    the queries: on the large passage all three rounding terms are attained, as in
    :func:`test_shortlist_error_bound_is_tight_on_parallel_vectors`, so a residual taken from
    another passage (the first, the smallest, an average) leaves the bound short of the
    deviation there."""
    import torch

    rng = np.random.default_rng(8)
    direction = _tie_direction(8, rng)
    queries = _rounding_down_by_u(direction, np.array([1.0, -2.0]), rng, np.float32)
    large = _rounding_down_by_u(direction, np.array([1.0]), rng, np.float32)
    small = (2.0**-3 * direction).astype(np.float32)  # signed powers of two: bfloat16-exact
    corpus = np.vstack([small, -small, large, 2 * small])
    search = BlockSearch(queries, k=1)
    approx, error, relative = search._approximate(torch.from_numpy(corpus).to(search.device))
    approx = approx.double().cpu().numpy()
    deviation = np.abs(queries.astype(np.float64) @ corpus.astype(np.float64).T - approx)
    allowed = error.cpu().numpy()[:, None] + relative * np.abs(approx)
    assert np.all(deviation <= allowed)
    assert (deviation[:, 2] / allowed[:, 2]).max() >= 0.98


def _best_first(queries, corpus, count):
    """Corpus row indices: each query's ``count`` best passages first, then the rest."""
    best = np.unique(np.argsort(-(queries @ corpus.T), axis=1)[:, :count].ravel())
    return np.r_[best, np.setdiff1d(np.arange(len(corpus)), best)]


def test_a_guess_too_high_is_reported_not_trusted():
    """A guessed lower bound from a sample of each query's best passages is far above the k-th
    score: the pairs it drops are the top-k's, and every query is reported failed (``ranked``)
    instead of returned short or wrong; ``result`` refuses."""
    rng = np.random.default_rng(11)
    corpus = rng.standard_normal((3000, 16)).astype(np.float32)
    queries = rng.standard_normal((12, 16)).astype(np.float32)
    pids = np.array([f"p{i:04d}" for i in range(3000)])
    order = _best_first(queries, corpus, 5)
    search = BlockSearch(queries, k=40)
    search.estimate(corpus[order[:60]], total=100_000)  # guess: a query's 2nd best approx
    for start in range(0, 3000, 500):
        search.add(corpus[start : start + 500], pids[start : start + 500])
    assert search.ranked().failed.tolist() == list(range(12))
    with pytest.raises(RuntimeError, match="without a guess"):
        search.result()


def test_a_guess_that_climbs_too_high_is_caught_by_its_claim():
    """A query can end with k kept pairs and still have lost some of its top-k: a first block of
    its 5 best passages and its ranks 51-100 lifts the guess (:meth:`BlockSearch._climb`) above
    its 50th score; later blocks then drop ranks up to it, while ranks 51-100, kept under the
    first guess, fill the count. Only the check against the claimed bound reports it."""
    rng = np.random.default_rng(13)
    corpus = rng.standard_normal((10_000, 16)).astype(np.float32)
    query = rng.standard_normal((1, 16)).astype(np.float32)
    pids = np.array([f"p{i:05d}" for i in range(10_000)])
    by_rank = np.argsort(-(corpus @ query[0]))
    first = np.r_[by_rank[:5], by_rank[50:100]]
    rest = rng.permutation(np.setdiff1d(np.arange(10_000), first))
    search = BlockSearch(query, k=50)
    search.estimate(corpus[rng.choice(10_000, 1000, replace=False)], total=10_000)
    search.add(corpus[first], pids[first])
    kth = float(corpus[by_rank[49]] @ query[0])
    assert float(search._guess[0]) > kth  # climbed past the 50th score
    for start in range(0, len(rest), 500):
        search.add(corpus[rest[start : start + 500]], pids[rest[start : start + 500]])
    ranked = search.ranked()
    assert ranked.failed.tolist() == [0] and len(ranked.rows) == 0


@pytest.mark.parametrize("heads", ["best", "random"])
def test_search_files_is_exact_whatever_the_sample(tmp_path, monkeypatch, heads):
    """:func:`search_files` guesses from the first vectors it reads: each query's 30 best
    passages (a guess too high, searched again without one) or random ones (a guess below the
    k-th); both give the float64 brute force, ties by pid."""
    from rerank_ray import search as search_module

    monkeypatch.setattr(search_module, "SAMPLE_ROWS", 8)
    rng = np.random.default_rng(12)
    corpus = rng.integers(-3, 4, size=(4000, 12)).astype(np.float32)
    queries = rng.integers(-3, 4, size=(3, 12)).astype(np.float32)
    pids = np.array([f"d{i}" for i in rng.permutation(4000)])
    order = _best_first(queries, corpus, 30) if heads == "best" else rng.permutation(4000)
    for index, rows in enumerate(np.array_split(order, 4)):
        table = pa.table({"pid": pids[rows], "embedding": to_fixed_size_list(corpus[rows])})
        pq.write_table(table, tmp_path / f"part-{index}.parquet")
    seconds = {}
    paths = [str(tmp_path / f"part-{index}.parquet") for index in range(4)]
    ranked = search_files(paths, queries, 30, rows=300, seconds=seconds)
    assert (seconds.get("guess_failed", 0) > 0) == (heads == "best")
    ids, scores = brute_force(queries, corpus, pids, 30)
    assert ranked.rows.tolist() == np.repeat(np.arange(3), 30).tolist()
    assert ranked.ids.to_pylist() == [pid for row in ids for pid in row]
    np.testing.assert_allclose(ranked.scores, np.ravel(scores), rtol=1e-12, atol=1e-12)


def _write_embedding_files(directory, id_column, ids, vectors, parts):
    directory.mkdir(parents=True)
    for index, chunk in enumerate(np.array_split(np.arange(len(ids)), parts)):
        pq.write_table(
            pa.table(
                {
                    id_column: [ids[i] for i in chunk],
                    "embedding": to_fixed_size_list(vectors[chunk]),
                }
            ),
            directory / f"part-{index}.parquet",
        )


def test_ray_stage_equals_brute_force(ray_session, tmp_path):
    rng = np.random.default_rng(7)
    corpus = rng.integers(-3, 4, size=(3000, 16)).astype(np.float32)
    queries = rng.integers(-3, 4, size=(40, 16)).astype(np.float32)
    pids = [f"d{i}" for i in range(3000)]
    qids = [f"q{i:02d}" for i in range(40)]
    _write_embedding_files(tmp_path / "corpus", "pid", pids, corpus, parts=5)
    _write_embedding_files(tmp_path / "queries", "qid", qids, queries, parts=2)
    out = tmp_path / "retrieval.parquet"
    stats = exact_search(str(tmp_path / "corpus"), str(tmp_path / "queries"), str(out), k=50)
    table = pq.read_table(out)
    assert stats.rows == table.num_rows == 40 * 50
    # 40 queries make one chunk; the session's 2 CPUs split the 5 files into 2 groups, merged.
    assert stats.resources["tasks"] == stats.resources["file_groups"] == 2
    assert stats.resources["devices"] == ["cpu"]
    assert table.schema.names == ["qid", "pid", "rank", "score"]
    ids, scores = brute_force(queries, corpus, pids, 50)
    for q, qid in enumerate(qids):
        rows = table.filter(pa.compute.equal(table["qid"], qid)).sort_by("rank").to_pydict()
        assert rows["rank"] == list(range(1, 51))
        assert rows["pid"] == ids[q]
        assert rows["score"] == pytest.approx(scores[q])


def test_k_larger_than_corpus(ray_session, tmp_path):
    rng = np.random.default_rng(1)
    _write_embedding_files(
        tmp_path / "corpus", "pid", ["a", "b", "c"], rng.random((3, 4), dtype=np.float32), 2
    )
    _write_embedding_files(
        tmp_path / "queries", "qid", ["q"], rng.random((1, 4), dtype=np.float32), 1
    )
    exact_search(
        str(tmp_path / "corpus"), str(tmp_path / "queries"), str(tmp_path / "r.parquet"), k=10
    )
    assert pq.read_table(tmp_path / "r.parquet").num_rows == 3


def test_ray_stage_query_chunks_in_qid_order(ray_session, tmp_path):
    """600 queries make two chunks (one task each, every file read by both); the rows come out
    by qid, then rank, equal to the float64 brute force."""
    rng = np.random.default_rng(8)
    corpus = rng.integers(-3, 4, size=(2000, 8)).astype(np.float32)
    queries = rng.integers(-3, 4, size=(600, 8)).astype(np.float32)
    pids = [f"d{i}" for i in range(2000)]
    qids = [f"q{i:03d}" for i in rng.permutation(600)]
    _write_embedding_files(tmp_path / "corpus", "pid", pids, corpus, parts=1)
    _write_embedding_files(tmp_path / "queries", "qid", qids, queries, parts=3)
    out = tmp_path / "retrieval.parquet"
    stats = exact_search(str(tmp_path / "corpus"), str(tmp_path / "queries"), str(out), k=25)
    assert stats.resources["query_chunks"] == 2 and stats.resources["file_groups"] == 1
    table = pq.read_table(out).to_pydict()
    order = np.argsort(qids)
    assert table["qid"] == [qids[q] for q in order for _ in range(25)]
    assert table["rank"] == list(range(1, 26)) * 600
    ids, scores = brute_force(queries[order], corpus, pids, 25)
    assert table["pid"] == [pid for row in ids for pid in row]
    assert table["score"] == pytest.approx(np.ravel(scores))
