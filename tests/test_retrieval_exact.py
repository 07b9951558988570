"""Exact max-over-interests top-k (``export.retrieval.max_over_interests_topk``) against a brute-force reference.

The reference (``tests/reference_topk.py``) scores the whole catalogue in float64, masks inactive
interests, padding and exclusions, and sorts each row by score descending then item id ascending. Cases with ties use
small integer or dyadic vectors, whose float32 products and sums are exact, so equal scores are
equal in both and the tie order is checked exactly.
"""

import numpy as np
import pytest

from export.retrieval import SCAN_GROUP, max_over_interests_topk
from tests.reference_topk import reference_topk


def assert_matches_reference(result, expected, exact_scores=False):
    ids, scores, won = expected
    assert result.ids.shape == ids.shape == result.scores.shape == result.interests.shape
    assert result.ids.dtype == np.int64 and result.scores.dtype == np.float32 and result.interests.dtype == np.int64
    np.testing.assert_array_equal(result.ids, ids)
    np.testing.assert_array_equal(result.interests, won)
    if exact_scores:
        np.testing.assert_array_equal(result.scores, scores.astype(np.float32))
    else:
        np.testing.assert_allclose(result.scores, scores, rtol=1e-5, atol=1e-5)


def problem(seed, batch, k, dim, n_items, kind):
    """Random interests, a mask with 1..K active per user (garbage in the inactive slots), items.

    ``kind``: ``gaussian``; ``integer`` (values -2..2: many exact ties); ``duplicates`` (dyadic
    vectors, each item row repeated several times at scattered ids: ties across chunks).
    """
    rng = np.random.default_rng(seed)
    active = rng.integers(1, k + 1, batch)
    mask = np.zeros((batch, k), bool)
    for user, count in enumerate(active):
        mask[user, rng.choice(k, count, replace=False)] = True
    if kind == "gaussian":
        interests = rng.standard_normal((batch, k, dim)).astype(np.float32)
        items = rng.standard_normal((n_items, dim)).astype(np.float32)
    elif kind == "integer":
        interests = rng.integers(-2, 3, (batch, k, dim)).astype(np.float32)
        items = rng.integers(-2, 3, (n_items, dim)).astype(np.float32)
    else:
        interests = (rng.integers(-8, 9, (batch, k, dim)) / 4).astype(np.float32)
        distinct = (rng.integers(-8, 9, (max(1, n_items // 5), dim)) / 4).astype(np.float32)
        items = distinct[rng.integers(0, len(distinct), n_items)]
    interests[~mask] = 1e30  # inactive slots are never scored: their values must not matter
    return rng, interests, mask, items


@pytest.mark.parametrize("threads", [1, 3])  # one pass; the catalogue in three parts scanned at once, then merged
@pytest.mark.parametrize("kind", ["gaussian", "integer", "duplicates"])
@pytest.mark.parametrize("chunk_size", [1, 7, SCAN_GROUP + 1, "N", None])
@pytest.mark.parametrize("seed", range(3))
def test_random_cases_equal_the_reference(seed, chunk_size, kind, threads):
    n_items = 211 + 97 * seed
    rng, interests, mask, items = problem(seed, 5, 4, 6, n_items, kind)
    exclude = [rng.integers(0, n_items, rng.integers(0, 12)) for _ in range(5)]  # ids may repeat
    topk = [1, 20, 64][seed]
    chunk = n_items if chunk_size == "N" else chunk_size
    result = max_over_interests_topk(interests, mask, items, topk, chunk_size=chunk, exclude=exclude, threads=threads)
    assert_matches_reference(result, reference_topk(interests, mask, items, topk, exclude), exact_scores=kind != "gaussian")


@pytest.mark.parametrize("threads", [1, 4])
@pytest.mark.parametrize("chunk_size", [1, 7, 100, 1000])
def test_all_items_tied_returns_the_smallest_ids(chunk_size, threads):
    """Every item scores the same: the top-k is ids 1..k (0 is padding) whatever the chunking and parts."""
    items = np.ones((1000, 4), np.float32)
    interests = np.ones((3, 2, 4), np.float32)
    mask = np.array([[True, True], [True, False], [False, True]])
    result = max_over_interests_topk(interests, mask, items, 60, chunk_size=chunk_size, threads=threads)
    assert (result.ids == np.arange(1, 61)).all()
    assert (result.scores == 4.0).all()
    assert result.interests.tolist() == [[0] * 60, [0] * 60, [1] * 60]  # first active interest of a tie


def test_ties_at_the_boundary_across_chunks_keep_the_smallest_ids():
    """The k-th score is shared by items in several chunks, and later chunks hold better items."""
    items = np.zeros((400, 2), np.float32)
    items[:, 0] = np.tile([3.0, 1.0, 2.0, 2.0], 100)  # scores 3, 1, 2, 2 repeating
    items[350:, 0] = 5.0  # the best items come last
    interests = np.array([[[1.0, 0.0]]], np.float32)
    for chunk_size, threads in ((1, 1), (3, 1), (64, 1), (400, 1), (3, 2), (64, 3), (1, 7)):
        result = max_over_interests_topk(interests, None, items, 80, chunk_size=chunk_size, threads=threads)
        expected = reference_topk(interests, np.ones((1, 1), bool), items, 80)
        assert_matches_reference(result, expected, exact_scores=True)
        assert result.ids[0, :50].tolist() == list(range(350, 400))
        assert result.ids[0, 50:].tolist() == [i for i in range(350) if i % 4 == 0][1:31]  # score 3, id 0 excluded


def test_padding_is_returned_only_when_not_excluded():
    _, interests, mask, items = problem(7, 4, 3, 5, 150, "integer")
    items[0] = 2.0  # the padding row would score high
    for exclude_padding in (True, False):
        result = max_over_interests_topk(interests, mask, items, 30, chunk_size=16, exclude_padding=exclude_padding)
        assert_matches_reference(
            result, reference_topk(interests, mask, items, 30, exclude_padding=exclude_padding), exact_scores=True
        )
    assert (result.ids == 0).any()  # exclude_padding=False: item 0 is an ordinary item here


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("chunk_size", [1, 7, 500])
def test_fewer_eligible_items_than_topk_are_padded_with_minus_one(chunk_size, threads):
    """Exclusions leave 3 items (plus padding) for user 0 and 0 items for user 1; ids repeat."""
    rng, interests, mask, items = problem(8, 3, 4, 6, 500, "gaussian")
    keep = [17, 250, 499]
    everything_but = [i for i in range(500) if i not in keep]
    exclude = [everything_but * 2, list(range(500)), [3, 3, 3]]
    result = max_over_interests_topk(interests, mask, items, 10, chunk_size=chunk_size, exclude=exclude, threads=threads)
    assert_matches_reference(result, reference_topk(interests, mask, items, 10, exclude))
    assert sorted(result.ids[0, :3]) == keep and (result.ids[0, 3:] == -1).all()
    assert np.isneginf(result.scores[0, 3:]).all() and (result.interests[0, 3:] == -1).all()
    assert (result.ids[1] == -1).all() and np.isneginf(result.scores[1]).all()
    assert (result.ids[2] >= 1).all()  # a full list: padding and item 3 excluded


def test_topk_above_the_catalogue_is_the_whole_catalogue():
    _, interests, mask, items = problem(9, 2, 2, 4, 40, "integer")
    result = max_over_interests_topk(interests, mask, items, 100, chunk_size=7)
    assert result.ids.shape == (2, 40)  # topk is clipped to the catalogue
    assert_matches_reference(result, reference_topk(interests, mask, items, 100), exact_scores=True)
    assert sorted(result.ids[0, :39]) == list(range(1, 40)) and result.ids[0, 39] == -1


def test_long_catalogue_with_many_merges():
    """Small chunks and topk over many items: candidates merge many times; still the reference."""
    rng, interests, mask, items = problem(10, 16, 4, 8, 6000, "gaussian")
    exclude = [rng.integers(1, 6000, 30) for _ in range(16)]
    for topk, chunk_size in ((5, 64), (50, 256), (200, 1000)):
        result = max_over_interests_topk(interests, mask, items, topk, chunk_size=chunk_size, exclude=exclude)
        assert_matches_reference(result, reference_topk(interests, mask, items, topk, exclude))


def test_memory_mapped_items_and_single_interest_input(tmp_path):
    _, interests, mask, items = problem(11, 4, 3, 8, 700, "duplicates")
    np.save(tmp_path / "items.npy", items)
    mapped = np.load(tmp_path / "items.npy", mmap_mode="r")
    result = max_over_interests_topk(interests, mask, mapped, 25, chunk_size=100, exclude=[[5], [], [1, 2], [699]])
    assert_matches_reference(result, reference_topk(interests, mask, items, 25, [[5], [], [1, 2], [699]]), exact_scores=True)
    one = interests[np.arange(4), mask.argmax(axis=1)]  # [B D] an active interest of each user
    single = max_over_interests_topk(one, None, mapped, 25, chunk_size=64)  # K = 1, no mask
    assert_matches_reference(single, reference_topk(one[:, None], np.ones((4, 1), bool), items, 25), exact_scores=True)
    assert (single.interests == 0).all()


def test_inputs_are_not_written():
    _, interests, mask, items = problem(12, 3, 4, 6, 300, "gaussian")
    copies = interests.copy(), mask.copy(), items.copy()
    exclude = [np.array([4, 5]), np.array([], np.int64), np.array([9])]
    max_over_interests_topk(interests, mask, items, 10, chunk_size=50, exclude=exclude)
    for before, after in zip(copies, (interests, mask, items)):
        np.testing.assert_array_equal(before, after)
    assert exclude[0].tolist() == [4, 5]


def test_threaded_scan_restores_blas_threads_and_matches_one_pass():
    """The parts run with BLAS held to one thread; the process's BLAS setting is back afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    _, interests, mask, items = problem(11, 6, 4, 8, 3000, "gaussian")
    with threadpool_limits(limits=2, user_api="blas"):
        before = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
        threaded = max_over_interests_topk(interests, mask, items, 40, chunk_size=128, threads=4)
        after = [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]
    one_pass = max_over_interests_topk(interests, mask, items, 40, chunk_size=128, threads=1)
    assert before == after
    np.testing.assert_array_equal(threaded.ids, one_pass.ids)
    np.testing.assert_array_equal(threaded.interests, one_pass.interests)
    np.testing.assert_allclose(threaded.scores, one_pass.scores, rtol=1e-6)
