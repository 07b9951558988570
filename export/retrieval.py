"""Candidate retrieval from interests: exact max-over-interests top-k and faiss ANN (numpy only).

An item's score for a user is ``max_k e_i . v_u^k`` over the user's *active* interests (MIND's
serving rule; YouTubeDNN is K = 1).

- :func:`max_over_interests_topk`: exact top-N over the catalogue in chunks of ``chunk_size``
  items, so memory is ``O(B K chunk_size)`` however many items there are; a running top-k is
  merged per chunk with ``np.argpartition``. Row 0 (padding) and, optionally, each user's own
  history items are excluded.
- :func:`build_index` / :func:`ann_topk`: a faiss inner-product index over the item vectors
  (``flat``: exact ``IndexFlatIP``; ``hnsw``: ``IndexHNSWFlat``; ``ivf``: ``IndexIVFFlat``), one
  search per active interest, the candidates merged by score and de-duplicated per user.
  :func:`ann_recall` reports recall@N of ANN against the exact top-N.

faiss is optional (``pip install mind-recbole[faiss]``); without it the ANN functions raise
``ImportError`` with that hint. Results are ``TopK(ids, scores, interests)``, each ``[B, k]``;
where fewer than ``k`` items are eligible, rows end with id ``-1``, score ``-inf``, interest ``-1``.

Input checks (``ValueError`` subclasses from :mod:`export.artifacts`): an exclusion id outside
``0 .. N - 1`` is an :class:`~export.artifacts.ItemIdError` naming the user row and the id (ids
from another catalogue are a bug, not something to drop silently); NaN / inf in an *active*
interest is an :class:`~export.artifacts.InputError` naming the rows. Item vectors are not scanned
per call: :class:`export.runtime.UserTower` checks ``item_embeddings.npy`` once at load.

Threads: the exact functions only read their inputs (never write them), so many threads may score
against one shared ``item_vectors`` at once. An :class:`AnnIndex` may be searched from many
threads too, but :meth:`AnnIndex.set_search_effort` changes the shared index: do not call it
while other threads search.
"""

from typing import NamedTuple

import numpy as np

from export.artifacts import InputError, ItemIdError, listed

FAISS_HINT = "faiss is not installed: pip install mind-recbole[faiss] (or pip install faiss-cpu)"


class TopK(NamedTuple):
    ids: np.ndarray  # [B, k] int64 item ids (-1: no item)
    scores: np.ndarray  # [B, k] float32, descending
    interests: np.ndarray  # [B, k] int64, the interest that gave each item its score


def _check_inputs(interests, mask):
    interests = np.ascontiguousarray(interests, dtype=np.float32)
    if interests.ndim == 2:  # one vector per user (K = 1)
        interests = interests[:, None, :]
    if interests.ndim != 3:
        raise ValueError(f"interests must be [B, K, D], got shape {interests.shape}")
    if mask is None:
        mask = np.ones(interests.shape[:2], dtype=bool)
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != interests.shape[:2]:
        raise ValueError(f"mask must be [B, K] = {interests.shape[:2]}, got {mask.shape}")
    if not mask.any(axis=1).all():
        raise ValueError("every user needs at least one active interest (a mask row is all False)")
    broken = np.nonzero((~np.isfinite(interests).all(axis=2) & mask).any(axis=1))[0]
    if broken.size:
        raise InputError(f"active interests hold NaN or inf in row(s) {listed(broken.tolist())}", rows=broken)
    return interests, mask


def _exclusion_pairs(exclude, batch_size, n_items):
    """Per-user item ids -> (rows, cols) arrays, sorted by column; None -> empty; ids outside 0..N-1: ItemIdError."""
    if exclude is None:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if len(exclude) != batch_size:
        raise ValueError(f"exclude needs one id list per user ({batch_size}), got {len(exclude)}")
    rows, cols, bad = [], [], []
    for row, ids in enumerate(exclude):
        ids = np.asarray(ids, dtype=np.int64).ravel()
        outside = np.nonzero((ids < 0) | (ids >= n_items))[0]
        if outside.size:
            bad.append((row, int(outside[0]), int(ids[outside[0]])))
        rows.append(np.full(ids.shape, row, np.int64))
        cols.append(ids)
    if bad:
        shown = listed(f"user {r} has {v}" for r, _, v in bad)
        raise ItemIdError(f"exclude: item id(s) outside 0..{n_items - 1}: {shown}", rows=[r for r, _, _ in bad], first=bad[0])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    order = np.argsort(cols, kind="stable")
    return rows[order], cols[order]


def _sort_rows(ids, scores, interests):
    """Sort each row by score descending, ties by item id ascending; empty slots (-inf) last."""
    order = np.lexsort((ids, -scores), axis=-1)
    ids = np.take_along_axis(ids, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    interests = np.take_along_axis(interests, order, axis=1)
    empty = ~np.isfinite(scores)
    ids[empty], interests[empty] = -1, -1
    return TopK(ids, scores, interests)


DEFAULT_WORKING_SET = 1 << 24  # floats in the [B, K, chunk] score block (64 MiB)


def default_chunk_size(batch, interest_num, working_set=DEFAULT_WORKING_SET):
    """Items per chunk so that ``batch * K * chunk`` stays near ``working_set`` floats."""
    return max(1024, working_set // max(1, batch * interest_num))


def max_over_interests_topk(
    interests, mask, item_vectors, topk=50, chunk_size=None, exclude=None, exclude_padding=True
):
    """Exact top-``topk`` items per user by ``max over active k of e_i . v_u^k``, in bounded memory.

    Args:
        interests: ``[B, K, D]`` (or ``[B, D]`` for one interest).
        mask: ``[B, K]`` bool, active interests (None: all active).
        item_vectors: ``[N, D]`` (a ``np.memmap`` works: only ``chunk_size`` rows are read at a time).
        topk: items per user (at most the number of items).
        chunk_size: items scored per step; the working set is ``B * K * chunk_size`` floats
            (None: :func:`default_chunk_size`, about 64 MiB).
        exclude: per user, item ids never to return (e.g. the user's history; each in ``0 .. N - 1``,
            else :class:`~export.artifacts.ItemIdError`), or None.
        exclude_padding: never return item 0 (RecBole's padding id).

    Returns :class:`TopK` ``(ids, scores, interests)``, each ``[B, topk]``, scores descending.
    """
    interests, mask = _check_inputs(interests, mask)
    batch, k_max, dim = interests.shape
    n_items = item_vectors.shape[0]
    if item_vectors.ndim != 2 or item_vectors.shape[1] != dim:
        raise ValueError(f"item_vectors must be [N, {dim}], got {item_vectors.shape}")
    topk = int(min(topk, n_items))
    if topk < 1:
        raise ValueError("topk must be >= 1 and the catalogue non-empty")
    chunk_size = max(1, int(chunk_size or default_chunk_size(batch, k_max)))
    rows, cols = _exclusion_pairs(exclude, batch, n_items)
    # An inactive interest is replaced by the user's first active one: the max over K is then the
    # max over active interests without a masking pass over the [B, K, chunk] block.
    first_active = interests[np.arange(batch), mask.argmax(axis=1)]  # [B D]
    flat = np.where(mask[:, :, None], interests, first_active[:, None, :]).reshape(batch * k_max, dim)

    best_ids = np.empty((batch, 0), np.int64)
    best_scores = np.empty((batch, 0), np.float32)
    for start in range(0, n_items, chunk_size):
        chunk = np.asarray(item_vectors[start : start + chunk_size], dtype=np.float32)
        n = chunk.shape[0]
        scores = flat @ chunk.T  # [B*K n]: one SGEMM per chunk
        chunk_best = scores.reshape(batch, k_max, n).max(axis=1) if k_max > 1 else scores  # [B n]
        if exclude_padding and start == 0:
            chunk_best[:, 0] = -np.inf
        lo, hi = np.searchsorted(cols, [start, start + n])
        if hi > lo:
            chunk_best[rows[lo:hi], cols[lo:hi] - start] = -np.inf
        if n > topk:  # this chunk's top-k only
            keep = np.argpartition(chunk_best, n - topk, axis=1)[:, n - topk :]
            chunk_scores = np.take_along_axis(chunk_best, keep, axis=1)
        else:
            keep, chunk_scores = np.broadcast_to(np.arange(n), (batch, n)), chunk_best
        cand_scores = np.concatenate([best_scores, chunk_scores], axis=1)
        cand_ids = np.concatenate([best_ids, keep + start], axis=1)
        if cand_scores.shape[1] > topk:  # merge with the running top-k
            width = cand_scores.shape[1]
            keep = np.argpartition(cand_scores, width - topk, axis=1)[:, width - topk :]
            cand_scores = np.take_along_axis(cand_scores, keep, axis=1)
            cand_ids = np.take_along_axis(cand_ids, keep, axis=1)
        best_scores, best_ids = cand_scores, cand_ids
    return _sort_rows(best_ids.copy(), best_scores.copy(), _winning_interests(interests, mask, item_vectors, best_ids))


def _winning_interests(interests, mask, item_vectors, ids):
    """For each selected item, the active interest with the highest score (``[B, k]``)."""
    vectors = np.asarray(item_vectors[np.clip(ids, 0, None).ravel()], dtype=np.float32).reshape(*ids.shape, -1)
    scores = np.einsum("bkd,btd->bkt", interests, vectors)  # [B K k]
    scores[~mask] = -np.inf
    return scores.argmax(axis=1).astype(np.int64)


# ---------------------------------------------------------------------------------------------- faiss
def require_faiss():
    try:
        import faiss
    except ImportError as error:
        raise ImportError(FAISS_HINT) from error
    return faiss


class AnnIndex:
    """A faiss inner-product index over ``item_vectors[first_id:]``; faiss ids + ``first_id`` = item ids.

    Keeps a reference to ``item_vectors`` (no copy), which :func:`ann_topk` scores exactly for a
    user the index returned too few items for.
    """

    def __init__(self, index, kind, first_id, n_items, item_vectors=None):
        self.index, self.kind, self.first_id, self.n_items = index, kind, first_id, n_items
        self.item_vectors = item_vectors

    def set_search_effort(self, ef_search=None, nprobe=None):
        """HNSW ``efSearch`` / IVF ``nprobe``: higher is slower and closer to exact (not while other threads search)."""
        if ef_search is not None and self.kind == "hnsw":
            self.index.hnsw.efSearch = int(ef_search)
        if nprobe is not None and self.kind == "ivf":
            self.index.nprobe = int(nprobe)

    def search(self, queries, k):
        scores, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), int(k))
        ids = ids.astype(np.int64)
        found = ids >= 0
        ids[found] += self.first_id
        return scores, ids


def build_index(item_vectors, kind="hnsw", exclude_padding=True, hnsw_m=32, ef_construction=200, ef_search=128,
                nlist=None, nprobe=16, seed=0):
    """A faiss inner-product index over the items: ``flat`` (exact), ``hnsw`` or ``ivf``.

    Row 0 (padding) is left out when ``exclude_padding``. ``nlist`` (IVF lists) defaults to about
    ``4 sqrt(N)``. Returns an :class:`AnnIndex`.
    """
    faiss = require_faiss()
    vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
    first_id = 1 if exclude_padding else 0
    vectors = np.ascontiguousarray(vectors[first_id:])
    n, dim = vectors.shape
    if n == 0:
        raise ValueError("no item vectors to index")
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
    elif kind == "ivf":
        nlist = int(nlist or max(1, min(n // 39, int(4 * np.sqrt(n)))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        index.train(vectors)
    else:
        raise ValueError(f"kind must be flat, hnsw or ivf, got {kind!r}")
    index.add(vectors)
    ann = AnnIndex(index, kind, first_id, item_vectors.shape[0], item_vectors=item_vectors)
    ann.set_search_effort(ef_search=ef_search, nprobe=nprobe)
    return ann


def ann_topk(index, interests, mask, topk=50, exclude=None, per_interest_k=None):
    """Top-``topk`` per user from ``index``: one search per active interest, merged by max score.

    Each active interest fetches ``per_interest_k`` items (default ``topk`` plus the user's
    exclusion count, so exclusions cannot starve the result); an item found by several interests
    keeps its best score and that interest. Returns :class:`TopK` like the exact function.

    Never silently fewer: a user for whom the index returned fewer than ``topk`` items while the
    catalogue (less the user's exclusions) has them (an HNSW search returns at most about
    ``efSearch`` items per query) is scored exactly over ``index.item_vectors``; ids ``-1`` remain
    only where the catalogue has fewer items than ``topk``.
    """
    interests, mask = _check_inputs(interests, mask)
    batch, k_max, _ = interests.shape
    topk = int(topk)
    n_excluded = [len(e) for e in exclude] if exclude is not None else [0] * batch
    if exclude is not None and len(exclude) != batch:
        raise ValueError(f"exclude needs one id list per user ({batch}), got {len(exclude)}")
    k_search = int(per_interest_k or topk + max(n_excluded, default=0))
    k_search = max(1, min(k_search, index.index.ntotal))
    users, slots = np.nonzero(mask)  # one query per active interest
    scores, ids = index.search(interests[users, slots], k_search)  # [Q, k]
    cand_user = np.repeat(users, k_search)
    cand_interest = np.repeat(slots, k_search)
    cand_ids, cand_scores = ids.ravel(), scores.ravel()
    valid = cand_ids >= 0
    if exclude is not None:
        rows, cols = _exclusion_pairs(exclude, batch, index.n_items)
        excluded = np.isin(cand_user * index.n_items + cand_ids, rows * index.n_items + cols)
        valid &= ~excluded
    cand_user, cand_interest, cand_ids, cand_scores = (
        cand_user[valid], cand_interest[valid], cand_ids[valid], cand_scores[valid]
    )
    # de-duplicate (user, item), keeping the best score: sort by user, item, score descending
    order = np.lexsort((-cand_scores, cand_ids, cand_user))
    cand_user, cand_interest, cand_ids, cand_scores = (
        cand_user[order], cand_interest[order], cand_ids[order], cand_scores[order]
    )
    first = np.ones(len(order), dtype=bool)
    first[1:] = (cand_user[1:] != cand_user[:-1]) | (cand_ids[1:] != cand_ids[:-1])
    cand_user, cand_interest, cand_ids, cand_scores = (
        cand_user[first], cand_interest[first], cand_ids[first], cand_scores[first]
    )
    # rank within each user by score descending (ties: smaller id first), keep topk
    order = np.lexsort((cand_ids, -cand_scores, cand_user))
    cand_user, cand_interest, cand_ids, cand_scores = (
        cand_user[order], cand_interest[order], cand_ids[order], cand_scores[order]
    )
    starts = np.searchsorted(cand_user, np.arange(batch))
    rank = np.arange(len(cand_user)) - starts[cand_user]
    keep = rank < topk
    out_ids = np.full((batch, topk), -1, np.int64)
    out_scores = np.full((batch, topk), -np.inf, np.float32)
    out_interest = np.full((batch, topk), -1, np.int64)
    out_ids[cand_user[keep], rank[keep]] = cand_ids[keep]
    out_scores[cand_user[keep], rank[keep]] = cand_scores[keep]
    out_interest[cand_user[keep], rank[keep]] = cand_interest[keep]
    result = TopK(out_ids, out_scores, out_interest)
    short = _users_served_short(result, index, topk, exclude)
    if short.size and index.item_vectors is not None:
        exact = max_over_interests_topk(interests[short], mask[short], index.item_vectors, topk,
                                        exclude=None if exclude is None else [exclude[u] for u in short],
                                        exclude_padding=index.first_id == 1)
        result.ids[short], result.scores[short], result.interests[short] = exact.ids, exact.scores, exact.interests
    return result


def _users_served_short(result, index, topk, exclude):
    """Users with fewer than ``topk`` items although the indexed catalogue, less their exclusions, has them."""
    indexed = index.n_items - index.first_id
    available = np.full(len(result.ids), indexed, np.int64)
    if exclude is not None:
        available -= [len({int(i) for i in ids if int(i) >= index.first_id}) for ids in exclude]
    served = (result.ids >= 0).sum(axis=1)
    return np.nonzero(served < np.minimum(topk, available))[0]


def recall_at_n(approx_ids, exact_ids):
    """Mean over users of ``|approx ∩ exact| / |exact|`` (ids ``-1`` ignored)."""
    approx_ids, exact_ids = np.asarray(approx_ids), np.asarray(exact_ids)
    recalls = []
    for approx, exact in zip(approx_ids, exact_ids):
        exact = set(exact[exact >= 0].tolist())
        if exact:
            recalls.append(len(exact & set(approx[approx >= 0].tolist())) / len(exact))
    return float(np.mean(recalls)) if recalls else 1.0


def ann_recall(index, interests, mask, item_vectors, topk=50, exclude=None, chunk_size=None):
    """Recall@``topk`` of :func:`ann_topk` against :func:`max_over_interests_topk` (same users).

    Returns a dict: ``recall``, ``topk``, ``users``, ``index`` (kind).
    """
    approx = ann_topk(index, interests, mask, topk, exclude=exclude)
    exact = max_over_interests_topk(
        interests, mask, item_vectors, topk, chunk_size=chunk_size, exclude=exclude,
        exclude_padding=index.first_id == 1,
    )
    return {"recall": recall_at_n(approx.ids, exact.ids), "topk": int(topk), "users": int(len(approx.ids)), "index": index.kind}


# ---------------------------------------------------------------------------------------------- end to end
class Recommendation(NamedTuple):
    item: str
    item_id: int
    score: float
    interest: int


def retrieve(tower, histories, topk=50, index=None, exclude_history=True, on_unknown="error", users=None,
             chunk_size=None, batch_size=256):
    """Token histories -> ``(recommendations, mask)``: per user a list of :class:`Recommendation`
    (best first), and the ``[B, K]`` active-interest mask.

    ``tower`` is an :class:`export.runtime.UserTower`; ``index`` an :class:`AnnIndex` (None:
    exact scoring over ``tower.item_vectors``). The user's history items are not recommended
    when ``exclude_history``.
    """
    interests, mask = tower.encode(histories, users=users, batch_size=batch_size, on_unknown=on_unknown)
    exclude = None
    if exclude_history:  # the whole history, not only the most recent max_seq_length items
        exclude = [[tower.item_index[str(t)] for t in h if str(t) in tower.item_index] for h in histories]
    if index is None:
        result = max_over_interests_topk(interests, mask, tower.item_vectors, topk, chunk_size=chunk_size, exclude=exclude)
    else:
        result = ann_topk(index, interests, mask, topk, exclude=exclude)
    recommendations = []
    for ids, scores, matched in zip(*result):
        recommendations.append(
            [
                Recommendation(tower.item_tokens[i], int(i), float(s), int(k))
                for i, s, k in zip(ids, scores, matched)
                if i >= 0
            ]
        )
    return recommendations, mask
