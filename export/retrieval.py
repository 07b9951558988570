"""Candidate retrieval from interests: exact max-over-interests top-k and faiss ANN (numpy only).

An item's score for a user is ``max_k e_i . v_u^k`` over the user's *active* interests (MIND's
serving rule; YouTubeDNN is K = 1).

- :func:`max_over_interests_topk`: exact top-N over the catalogue in chunks of ``chunk_size``
  items, so memory is ``O(R chunk_size)`` per thread (``R`` active interests in the batch) however
  many items there are; the catalogue is split into one part per core, each scanned by its own
  thread, and the parts' lists merged. Per chunk one SGEMM of the active interests only; then a user whose running
  top-N is full looks only at items above its current N-th score, found by one read-only pass
  over the block (the max of each group of ``SCAN_GROUP`` items per interest), so nearly all the
  time is the SGEMM (``results/serving.md``). Row 0 (padding) and, optionally, each user's own
  history items are excluded. Ties: score descending, then item id ascending.
- :func:`build_index` / :func:`ann_topk`: a faiss inner-product index over the item vectors
  (``flat``: exact ``IndexFlatIP``; ``hnsw``: ``IndexHNSWFlat``; ``ivf``: ``IndexIVFFlat``), one
  search per active interest, the candidates merged by score and de-duplicated per user, and a
  user the index left short of N scored exactly. :func:`ann_recall` reports recall@N of ANN
  against the exact top-N. :mod:`export.ann_index` saves an index in the model directory and
  loads it back, checked against the export.

faiss is optional (``pip install mind-recbole[faiss]``); without it the ANN functions raise
``ImportError`` with that hint. Results are ``TopK(ids, scores, interests)``, each ``[B, k]``;
where fewer than ``k`` items are eligible, rows end with id ``-1``, score ``-inf``, interest ``-1``.

Input checks (``ValueError`` subclasses from :mod:`export.artifacts`): an exclusion id outside
``0 .. N - 1`` is an :class:`~export.artifacts.ItemIdError` naming the user row and the id (ids
from another catalogue are a bug, not something to drop silently); NaN / inf in an *active*
interest is an :class:`~export.artifacts.InputError` naming the rows. Item vectors are not scanned
per call: :class:`export.runtime.UserTower` checks ``item_embeddings.npy`` once at load.

Threads: the exact functions only read their inputs (never write them), so many threads may score
against one shared ``item_vectors`` at once. :func:`max_over_interests_topk` itself runs one thread
per core (``threads``) and holds BLAS to one thread while they run (process-wide, restored after). An :class:`AnnIndex` may be searched from many
threads too, but :meth:`AnnIndex.set_search_effort` changes the shared index: do not call it
while other threads search.
"""

import functools
import os
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


DEFAULT_WORKING_SET = 1 << 20  # floats in the [chunk, R] score block (4 MiB: it stays in cache between its scans)
SCAN_GROUP = 32  # items per group whose max the scan compares with the threshold (see _RunningTopK)


def default_chunk_size(batch, interest_num, working_set=DEFAULT_WORKING_SET):
    """Items per chunk so that ``chunk * batch * K`` stays near ``working_set`` floats (at least 1024 items)."""
    return max(1024, working_set // max(1, batch * interest_num))


def max_over_interests_topk(
    interests, mask, item_vectors, topk=50, chunk_size=None, exclude=None, exclude_padding=True, threads=None
):
    """Exact top-``topk`` items per user by ``max over active k of e_i . v_u^k``, in bounded memory.

    Per chunk of items, one SGEMM of the chunk against the batch's *active* interests only (``R``
    of them) into a reused ``[chunk, R]`` block; padding and exclusions set to ``-inf`` where they
    fall in the chunk; then :class:`_RunningTopK` keeps each user's best ``topk`` (a user whose
    list is full only looks at items above its current ``topk``-th score: after the first chunks
    almost none), so nearly all the time goes to the SGEMM.

    Args:
        interests: ``[B, K, D]`` (or ``[B, D]`` for one interest).
        mask: ``[B, K]`` bool, active interests (None: all active).
        item_vectors: ``[N, D]`` finite vectors (a ``np.memmap`` works: only ``chunk_size`` rows
            are read at a time).
        topk: items per user (at most the number of items).
        chunk_size: items scored per step; the working set is ``chunk_size * R`` floats
            (None: :func:`default_chunk_size`, about 4 MiB).
        exclude: per user, item ids never to return (e.g. the user's history; each in ``0 .. N - 1``,
            else :class:`~export.artifacts.ItemIdError`), or None.
        exclude_padding: never return item 0 (RecBole's padding id).
        threads: scan the catalogue in this many parts at once, one thread each with one BLAS thread
            (the parts' lists merged at the end), so the selection runs on every core as the SGEMM
            does (None: the cores this process may use; 1: one pass, the SGEMM on BLAS's own threads).

    Returns :class:`TopK` ``(ids, scores, interests)``, each ``[B, topk]``: scores descending, equal
    scores by item id ascending; ids ``-1`` / scores ``-inf`` / interests ``-1`` past the eligible items.

    Shape:
        interests ``[B, K, D]``, mask ``[B, K]``, item_vectors ``[N, D]`` -> each result ``[B, topk]``.
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
    starts = np.arange(0, n_items, chunk_size)
    bounds = np.searchsorted(cols, [*starts, n_items])  # exclusions of chunk c: bounds[c] .. bounds[c + 1]
    interests_t, row_user, user_columns = _score_columns(interests, mask)

    def scan(chunks):
        """Each user's best ``topk`` over the given chunks (ascending): ``(ids, scores)``, ``[B topk]``."""
        running = _RunningTopK(row_user, user_columns, topk)
        block = np.empty((_round_up(min(chunk_size, n_items)), len(row_user)), np.float32)  # [chunk R], reused
        for start, lo, hi in zip(starts[chunks].tolist(), bounds[chunks].tolist(), bounds[chunks + 1].tolist()):
            chunk = np.asarray(item_vectors[start : start + chunk_size], dtype=np.float32)  # [n D]
            n = len(chunk)
            scores = block[: _round_up(n)]  # [n rounded up to SCAN_GROUP, R]
            np.matmul(chunk, interests_t, out=scores[:n])  # one SGEMM per chunk
            if n < len(scores):
                scores[n:] = -np.inf  # rows that round the last chunk up
            if exclude_padding and start == 0:
                scores[0] = -np.inf
            if hi > lo:  # exclusions in this chunk
                scores[cols[lo:hi, None] - start, user_columns[rows[lo:hi]]] = -np.inf
            running.add_chunk(scores, start)
        return running.result()

    parts = min(len(starts), int(threads or usable_cores()))
    if parts <= 1:
        ids, best = scan(np.arange(len(starts)))
    else:
        ids, best = _merge_parts(map_in_threads(scan, np.array_split(np.arange(len(starts)), parts)), batch, topk)
    return _sort_rows(ids, best, _winning_interests(interests, mask, item_vectors, ids))


def usable_cores():
    """The cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def map_in_threads(function, parts):
    """``[function(part) for part in parts]``, one thread per part, BLAS held to one thread meanwhile.

    numpy releases the GIL in its products and reductions, so the parts run on separate cores;
    BLAS's own threads would only compete with them. The limit is process-wide while it holds
    (threadpoolctl), and restored after.
    """
    from concurrent.futures import ThreadPoolExecutor

    with _blas_controller().limit(limits=1, user_api="blas"), ThreadPoolExecutor(len(parts)) as pool:
        return list(pool.map(function, parts))


@functools.lru_cache(maxsize=1)
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, taken once (0.3-0.8 ms each time otherwise;
    numpy's BLAS is loaded with numpy, before any call)."""
    from threadpoolctl import ThreadpoolController

    return ThreadpoolController()


def _merge_parts(results, batch, topk):
    """The best ``topk`` per user over several parts' ``(ids, scores)`` lists (:func:`_best_per_user`).

    Each part kept, under the same order (score descending, then id ascending), its own best
    ``topk``, so every item of the overall best ``topk`` is in its part's list.
    """
    ids = np.concatenate([part_ids for part_ids, _ in results], axis=1)  # [B parts*topk]
    scores = np.concatenate([part_scores for _, part_scores in results], axis=1)
    users, slots = np.nonzero(np.isfinite(scores))
    return _best_per_user(users, ids[users, slots], scores[users, slots], batch, topk)[:2]


def _round_up(n_items):
    """``n_items`` rounded up to a multiple of ``SCAN_GROUP``."""
    return -(-n_items // SCAN_GROUP) * SCAN_GROUP


def _score_columns(interests, mask):
    """The active interests as the columns of the score block, and where each interest slot reads.

    An inactive slot reads its user's first active column, so the max over K is the max over
    active interests, and no inactive interest is ever multiplied.

    Returns ``(interests_t, row_user, user_columns)``:

    Shape:
        interests_t ``[D, R]`` (``R`` active interests, user by user), row_user ``[R]`` the user of
        each column, user_columns ``[B, K]`` the column of each slot.
    """
    batch, k_max, _ = interests.shape
    row_user, row_slot = np.nonzero(mask)
    column = (np.cumsum(mask.ravel()) - 1).reshape(batch, k_max)  # [B K] valid where active
    user_columns = np.where(mask, column, column[np.arange(batch), mask.argmax(axis=1)][:, None])
    return np.ascontiguousarray(interests[row_user, row_slot].T), row_user, user_columns


class _RunningTopK:
    """Each user's best ``topk`` items over the chunks seen so far (ties at the ``topk``-th score:
    the smaller item ids), as :func:`max_over_interests_topk` scores chunk after chunk.

    Chunks come in ascending item ids, so an item of a later chunk enters a full list only with a
    score *above* its ``topk``-th (an equal score loses to the smaller id already there). Per chunk:

    - users whose list is full: one read-only pass takes the max of every ``SCAN_GROUP`` items
      of each score column; only the groups above the column's threshold are compared item by
      item, and only the items above it become candidates (after the first chunks, a handful);
    - users whose list is not full yet (the first chunk, or fewer eligible items than ``topk``):
      the chunk's best ``topk`` by the max over interests, all items tied with the ``topk``-th
      included (``np.partition``, then ``>=``), so the smallest ids among equal scores are kept.

    Candidates wait in a buffer and are merged (:meth:`_merge`: one per user and item, by its best
    score) when they reach ``B * topk`` or when a list was not full, so a call merges a few times,
    not once per chunk. Until a merge the thresholds are lower than they could be: a few more
    candidates, never one fewer.

    Args:
        row_user: ``[R]`` the user of each score column (each active interest).
        user_columns: ``[B, K]`` the score column of each interest slot (inactive: an active one's).
        topk: items kept per user.
    """

    def __init__(self, row_user, user_columns, topk):
        self.row_user, self.user_columns, self.topk = row_user, user_columns, topk
        batch = len(user_columns)
        self.ids = np.full((batch, topk), -1, np.int64)  # [B topk], unordered until the end
        self.scores = np.full((batch, topk), -np.inf, np.float32)  # [B topk]
        self.filling = np.ones(batch, bool)  # [B] lists with an empty slot
        self.any_filling = True
        self.threshold = np.full(len(row_user), np.inf, np.float32)  # [R] the user's topk-th score; +inf: not scanned
        self.pending, self.pending_count = [], 0

    def add_chunk(self, scores, start):
        """Take the candidates of one chunk: ``scores`` ``[n, R]`` for items ``start ..``, ``n`` a
        multiple of ``SCAN_GROUP``, excluded items and rows past the catalogue ``-inf``."""
        n = scores.shape[0]
        groups = scores.reshape(n // SCAN_GROUP, SCAN_GROUP, -1)  # [G SCAN_GROUP R], a view
        group_max = np.fmax.reduce(groups, axis=1)  # [G R] (fmax: numpy's faster loop; scores hold no NaN)
        above = np.greater(np.fmax.reduce(group_max, axis=0), self.threshold)  # [R] interests with a candidate
        if above.any():  # after the first chunks, rarely
            columns = np.flatnonzero(above)
            hot_group, hot = np.nonzero(group_max[:, columns] > self.threshold[columns])  # groups holding a candidate
            hot_column = columns[hot]
            values = groups[hot_group, :, hot_column]  # [H SCAN_GROUP]
            passed = np.flatnonzero(values > self.threshold[hot_column, None])
            pair, offset = np.divmod(passed, SCAN_GROUP)
            # one interest's score: an item found by several interests is merged to its best (= max over K,
            # the others being at most the threshold)
            self._hold(self.row_user[hot_column[pair]], hot_group[pair] * SCAN_GROUP + offset + start, values.ravel()[passed])
        if self.any_filling:
            users = np.flatnonzero(self.filling)
            best = scores[:, self.user_columns[users]].max(axis=2).T  # [F n] max over interests
            floor = np.partition(best, n - self.topk, axis=1)[:, n - self.topk, None] if n > self.topk else -np.inf
            user, item = np.nonzero((best >= floor) & (best > -np.inf))
            self._hold(users[user], item + start, best[user, item])
            self._merge()
        elif self.pending_count >= self.scores.size:
            self._merge()

    def result(self):
        """``(ids, scores)``, each ``[B, topk]`` in no particular order, after the last chunk."""
        self._merge()
        return self.ids, self.scores

    def _hold(self, users, ids, scores):
        """Queue candidates ``[M]`` each for the next merge."""
        self.pending.append((users, ids, scores))
        self.pending_count += len(users)

    def _merge(self):
        """The ``topk`` best of each user's list and candidates (:func:`_best_per_user`); new thresholds."""
        if not self.pending_count:
            return
        batch, topk = self.scores.shape
        listed = np.isfinite(self.scores)  # [B topk] the list's filled slots
        kept = (np.nonzero(listed)[0], self.ids[listed], self.scores[listed])
        users, ids, scores = (np.concatenate([mine, *held]) for mine, held in zip(kept, zip(*self.pending)))
        self.ids, self.scores, _ = _best_per_user(users, ids, scores, batch, topk)
        kth = self.scores.min(axis=1)  # [B] the topk-th score (-inf: an empty slot left)
        self.filling = np.isneginf(kth)
        self.any_filling = bool(self.filling.any())
        self.threshold = np.where(self.filling, np.inf, kth)[self.row_user].astype(np.float32)
        self.pending, self.pending_count = [], 0


def _best_per_user(users, ids, scores, batch, topk, payload=None):
    """Each user's ``topk`` best items from ``(user, id, score)`` candidates, in no particular order.

    An item listed several times for a user counts once, with its best score (and the smallest
    payload among the listings with that score: for interests, the first of tied interests, as
    in exact scoring). Of items tied at the ``topk``-th score, the smallest ids are kept. Users
    with fewer items get ids ``-1`` and scores ``-inf`` (payload ``-1``).

    Args:
        users, ids, scores: ``[M]`` candidates (finite scores, ids >= 0).
        batch: number of users; topk: items kept per user.
        payload: ``[M]`` int64 carried along (e.g. the interest that found the item), or None.

    Returns ``(ids, scores, payload)``, each ``[batch, topk]`` (payload None when not given).

    Each user's candidates go into one row of a ``[batch, most candidates]`` table; ``np.partition``
    finds each row's ``topk``-th score, and only rows with more ties at it than slots are sorted.
    """
    code = users * (int(ids.max(initial=0)) + 1) + ids  # (user, item) as one number
    order = np.argsort(code)
    code, scores = code[order], scores[order]
    starts = np.flatnonzero(np.diff(code, prepend=-1))  # the first listing of each (user, item)
    users, ids = users[order[starts]], ids[order[starts]]
    best = np.maximum.reduceat(scores, starts)
    if payload is not None:  # of the listings with the best score, the smallest payload
        runs = np.repeat(np.arange(len(starts)), np.diff(starts, append=len(code)))
        payload = np.minimum.reduceat(np.where(scores == best[runs], payload[order], np.iinfo(np.int64).max), starts)
    scores = best
    counts = np.bincount(users, minlength=batch)
    position = np.arange(len(users)) - (np.cumsum(counts) - counts)[users]
    width = max(topk, int(counts.max(initial=0)))
    table_scores = np.full((batch, width), -np.inf, np.float32)  # [B W]
    table_ids = np.full((batch, width), -1, np.int64)  # [B W]
    table_scores[users, position], table_ids[users, position] = scores, ids
    kth = np.partition(table_scores, width - topk, axis=1)[:, width - topk, None]  # [B 1] the topk-th score
    keep = table_scores > kth
    tied = table_scores == kth
    missing = topk - keep.sum(axis=1)  # [B] slots left for the items scoring exactly kth
    crowded = tied.sum(axis=1) > missing
    keep |= tied & ~crowded[:, None]
    crowded = np.flatnonzero(crowded)  # more ties than slots: the smallest ids win
    if crowded.size:
        by_id = np.argsort(np.where(tied[crowded], table_ids[crowded], np.iinfo(np.int64).max), axis=1, kind="stable")
        chosen = np.arange(width) < missing[crowded, None]  # [C W] the first `missing` tied items of each row
        keep[np.repeat(crowded, missing[crowded]), by_id[chosen]] = True
    kept = None
    if payload is not None:
        table_payload = np.full((batch, width), -1, np.int64)
        table_payload[users, position] = payload
        kept = table_payload[keep].reshape(batch, topk)
    return table_ids[keep].reshape(batch, topk), table_scores[keep].reshape(batch, topk), kept


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
    user the index returned too few items for. ``params`` holds the build and search settings
    (:func:`build_index`'s arguments that apply to ``kind``; the search effort kept current).
    """

    def __init__(self, index, kind, first_id, n_items, item_vectors=None, params=None):
        self.index, self.kind, self.first_id, self.n_items = index, kind, first_id, n_items
        self.item_vectors = item_vectors
        self.params = dict(params or {})

    def set_search_effort(self, ef_search=None, nprobe=None):
        """HNSW ``efSearch`` / IVF ``nprobe``: higher is slower and closer to exact (not while other threads search)."""
        if ef_search is not None and self.kind == "hnsw":
            self.index.hnsw.efSearch = self.params["ef_search"] = int(ef_search)
        if nprobe is not None and self.kind == "ivf":
            self.index.nprobe = self.params["nprobe"] = int(nprobe)

    def describe(self):
        """``'hnsw M=32 efSearch=128'``-like: the kind and its settings, for logs and tables."""
        names = {"hnsw_m": "M", "ef_construction": "efConstruction", "ef_search": "efSearch"}
        shown = [f"{names.get(key, key)}={value}" for key, value in self.params.items() if key != "seed"]
        return " ".join([self.kind, *shown])

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
        index, params = faiss.IndexFlatIP(dim), {}
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, int(hnsw_m), faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(ef_construction)
        params = {"hnsw_m": int(hnsw_m), "ef_construction": int(ef_construction), "ef_search": int(ef_search)}
    elif kind == "ivf":
        nlist = int(nlist or max(1, min(n // 39, int(4 * np.sqrt(n)))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = int(seed)
        index.train(vectors)
        params = {"nlist": nlist, "nprobe": int(nprobe), "seed": int(seed)}
    else:
        raise ValueError(f"kind must be flat, hnsw or ivf, got {kind!r}")
    index.add(vectors)
    ann = AnnIndex(index, kind, first_id, item_vectors.shape[0], item_vectors=item_vectors, params=params)
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
    cand_user, cand_interest = np.repeat(users, k_search), np.repeat(slots, k_search)
    cand_ids, cand_scores = ids.ravel(), scores.ravel()
    valid = cand_ids >= 0
    if exclude is not None:
        rows, cols = _exclusion_pairs(exclude, batch, index.n_items)
        valid &= ~np.isin(cand_user * index.n_items + cand_ids, rows * index.n_items + cols)
    best = _best_per_user(cand_user[valid], cand_ids[valid], cand_scores[valid], batch, topk, payload=cand_interest[valid])
    result = _sort_rows(*best)
    short = _users_served_short(result, index, topk, exclude)
    if short.size and index.item_vectors is not None:
        exact = max_over_interests_topk(interests[short], mask[short], index.item_vectors, topk,
                                        exclude=None if exclude is None else [exclude[u] for u in short],
                                        exclude_padding=index.first_id == 1)
        width = exact.ids.shape[1]  # topk, or the catalogue when topk is larger
        result.ids[short, :width], result.scores[short, :width], result.interests[short, :width] = exact
    return result


def _users_served_short(result, index, topk, exclude):
    """Users with fewer than ``topk`` items although the indexed catalogue, less their exclusions, has them."""
    indexed = index.n_items - index.first_id
    available = np.full(len(result.ids), indexed, np.int64)
    if exclude is not None:
        available -= [len({int(i) for i in ids if int(i) >= index.first_id}) for ids in exclude]
    served = (result.ids >= 0).sum(axis=1)
    return np.nonzero(served < np.minimum(topk, available))[0]


def user_recalls(approx_ids, exact_ids):
    """``|approx ∩ exact| / |exact|`` of each user with an exact item (ids ``-1`` ignored), ``[users]``."""
    recalls = []
    for approx, exact in zip(np.asarray(approx_ids), np.asarray(exact_ids)):
        exact = set(exact[exact >= 0].tolist())
        if exact:
            recalls.append(len(exact & set(approx[approx >= 0].tolist())) / len(exact))
    return np.asarray(recalls, dtype=np.float64)


def recall_at_n(approx_ids, exact_ids):
    """Mean over users of ``|approx ∩ exact| / |exact|`` (ids ``-1`` ignored; 1.0 without exact items)."""
    recalls = user_recalls(approx_ids, exact_ids)
    return float(recalls.mean()) if recalls.size else 1.0


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
