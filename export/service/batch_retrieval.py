"""The retrieval behind ``mind-recbole serve``: requests checked one by one, answered a batch at a time.

:meth:`BatchRetriever.check` turns one request's fields into a :class:`Query`, or raises
:class:`RequestError` naming the field at fault (``history[3]`` for an unknown item token). It
runs per request, before batching, so one bad request never fails the others of its batch.

:meth:`BatchRetriever.answer` serves checked queries together through
:func:`export.retrieval.retrieve` (``UserTower.encode``, then exact or ANN scoring): one
user-tower call and one scoring pass for all the queries of a batch that share the search (exact
or ANN) and ``include_history``, so a batch of like requests is one call. Exact queries are scored
with the largest ``topk`` among them and each cut to its own (the exact top-k is the head of any
larger exact top-k); ANN queries are also grouped by ``topk``, since a faiss search for more items
may find better ones. A query's answer is then what ``retrieve(tower, [history], topk, ...)`` gives
for it alone, up to float rounding between batch shapes (:func:`same_ranking`). For an HNSW index this
holds while each interest's search (``topk`` plus the group's longest history, which
:func:`~export.retrieval.ann_topk` asks of every user of a call) stays within HNSW's
``efSearch`` (128): beyond it a user's search in a batch may only find better items than alone.

numpy and onnxruntime only (faiss for ANN), like :mod:`export.runtime`: never torch or RecBole.
"""

import dataclasses
import json
import logging

import numpy as np

from export import artifacts
from export.ann_index import tower_index
from export.artifacts import ArtifactError, listed
from export.retrieval import retrieve
from export.runtime import UserTower
from export.service import DEFAULT_MAX_TOPK
from export.service.batcher import check_number

logger = logging.getLogger(__name__)

DEFAULT_TOPK = 50
MAX_HISTORY = 10_000  # item tokens per request; the tower keeps the most recent max_seq_length, the rest only excluded


class RequestError(ValueError):
    """A request the model cannot serve; ``field`` names the request field at fault (``history[3]``)."""

    def __init__(self, field, message):
        self.field = field
        super().__init__(f"{field}: {message}")


class BatchFailure(RuntimeError):
    """Serving a batch failed inside the model code; the server log has the traceback."""


@dataclasses.dataclass(frozen=True)
class Query:
    """One checked request: ``history`` holds known item tokens only (oldest first)."""

    history: tuple
    user: object  # user token, or None for models without user profile fields
    topk: int
    include_history: bool
    ann: bool
    skipped: tuple  # unknown item tokens dropped from the request (skip_unknown)


@dataclasses.dataclass(frozen=True)
class Answer:
    """A query's result: ``items`` are :class:`export.retrieval.Recommendation` (best first)."""

    items: list
    active_interests: int
    search: str  # "exact", or the ANN index's kind ("hnsw", "ivf", "flat")
    skipped: tuple


def open_retriever(model_dir, provider="auto", ann=False, max_topk=DEFAULT_MAX_TOPK, intra_op_num_threads=0,
                   precision="fp32"):
    """A :class:`BatchRetriever` over ``model_dir`` (loaded and checked once; ``precision`` picks the
    float or the int8 tower), with a faiss index when ``ann``: the one saved by ``mind-recbole index``,
    else an HNSW index built at start (``ImportError`` with the install hint without faiss)."""
    tower = UserTower(model_dir, provider=provider, intra_op_num_threads=intra_op_num_threads, precision=precision)
    return BatchRetriever(tower, index=tower_index(tower) if ann else None, max_topk=max_topk)


class BatchRetriever:
    """Checks requests against one loaded model and answers batches of them (see the module doc).

    Args:
        tower: an :class:`export.runtime.UserTower` with its item vectors.
        index: an :class:`export.retrieval.AnnIndex` for ``ann`` requests, or None (they are refused).
        max_topk: the largest ``topk`` a request may ask (capped at the catalogue's item count).

    ``tower_calls`` counts the :func:`~export.retrieval.retrieve` calls made (each one user-tower
    call and one scoring pass), ``queries`` the queries answered.
    """

    def __init__(self, tower, index=None, max_topk=DEFAULT_MAX_TOPK):
        check_number("max_topk", max_topk, minimum=1, integer=True)
        self.tower, self.index = tower, index
        self.max_topk = min(max_topk, tower.n_items - 1)
        self.manifest = read_manifest(tower.model_dir)
        self.tower_calls = 0
        self.queries = 0

    # ------------------------------------------------------------------ one request
    def check(self, history, user=None, topk=DEFAULT_TOPK, include_history=False, ann=False, skip_unknown=False):
        """One request's fields -> :class:`Query`; :class:`RequestError` naming the first field at fault."""
        tower = self.tower
        if not history:
            raise RequestError("history", "is empty; a user needs at least one item (serve cold-start users elsewhere)")
        if len(history) > MAX_HISTORY:
            raise RequestError("history", f"has {len(history):,} items; at most {MAX_HISTORY:,} are accepted")
        if not 1 <= topk <= self.max_topk:
            raise RequestError("topk", f"must be in 1..{self.max_topk}, got {topk}")
        if ann and self.index is None:
            raise RequestError("ann", "this server has no ANN index; start it with `mind-recbole serve --ann`")
        if tower.uses_user_id and user is None:
            example = next(iter(tower.user_index), "USER")
            raise RequestError(
                "user", f"this model embeds user profile fields: give the user token (a user of its training data, "
                f"e.g. {example!r})"
            )
        if not tower.uses_user_id and user is not None:
            raise RequestError("user", "this model has no user profile fields; leave user out")
        if user is not None and user not in tower.user_index and not skip_unknown:
            raise RequestError("user", f"unknown user token {user!r}; pass \"skip_unknown\": true to serve it without a profile")
        unknown = [(position, token) for position, token in enumerate(history) if token not in tower.item_index]
        if unknown and not skip_unknown:
            raise RequestError(
                f"history[{unknown[0][0]}]",
                f"{len(unknown)} unknown item token(s): {listed(repr(token) for _, token in unknown)}; "
                "pass \"skip_unknown\": true to drop them",
            )
        known = tuple(token for token in history if token in tower.item_index)
        if not known:
            raise RequestError("history", "has no known item token (all were unknown and skipped)")
        return Query(known, user, int(topk), bool(include_history), bool(ann), tuple(token for _, token in unknown))

    # ------------------------------------------------------------------ a batch
    def answer(self, queries):
        """One :class:`Answer` per query, in order; a :class:`BatchFailure` for each query of a group
        whose retrieval raised (logged here with its traceback)."""
        groups = {}
        for row, query in enumerate(queries):
            key = (query.ann, query.include_history, query.topk if query.ann else None)
            groups.setdefault(key, []).append(row)
        answers = [None] * len(queries)
        for (ann, include_history, _), rows in groups.items():
            group = [queries[row] for row in rows]
            search = self.index.kind if ann else "exact"
            try:
                recommendations, mask = retrieve(
                    self.tower, [list(q.history) for q in group], topk=max(q.topk for q in group),
                    index=self.index if ann else None, exclude_history=not include_history,
                    on_unknown="skip",  # check() let through only the unknown users that skip_unknown allows
                    users=[q.user for q in group] if self.tower.uses_user_id else None, batch_size=len(group),
                )
            except Exception:  # noqa: BLE001 - a bug or a broken export: logged, and a 500 for these callers
                logger.exception("retrieval failed for a batch of %d queries", len(group))
                failure = BatchFailure("retrieval failed inside the server (the server log has the details)")
                for row in rows:
                    answers[row] = failure
                continue
            self.tower_calls += 1
            self.queries += len(group)
            for row, query, items, active in zip(rows, group, recommendations, mask.sum(axis=1)):
                answers[row] = Answer(items[: query.topk], int(active), search, query.skipped)
        return answers

    # ------------------------------------------------------------------ the model
    def describe(self):
        """What the service serves: model, K, D, items, export versions and the manifest's digests."""
        tower, metadata = self.tower, self.tower.metadata
        return {
            "model": metadata.get(artifacts.META_MODEL),
            "dataset": metadata.get(artifacts.META_DATASET),
            "interest_num": tower.interest_num,
            "embedding_size": tower.embedding_size,
            "max_seq_length": tower.max_seq_length,
            "items": tower.n_items - 1,  # id 0 is padding
            "uses_user_id": tower.uses_user_id,
            "provider": tower.providers[0],
            "graph": tower.onnx_path.name,  # user_tower.onnx, or user_tower.int8.onnx (--precision int8)
            "ann_index": None if self.index is None else self.index.kind,
            "max_topk": self.max_topk,
            "checkpoint": metadata.get(artifacts.META_CHECKPOINT),
            "checkpoint_sha256": metadata.get(artifacts.META_CHECKPOINT_SHA256),
            "export_time": metadata.get(artifacts.META_EXPORT_TIME),
            "versions": {key: metadata.get(key) for key in artifacts.META_VERSIONS},
            "file_digests": None if self.manifest is None else self.manifest.get("files"),
        }


def read_manifest(model_dir):
    """``manifest.json`` of an export as a dict (None when the export has none);
    :class:`~export.artifacts.ArtifactError` naming the file when it is not a JSON object."""
    path = model_dir / artifacts.MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(path, f"not valid JSON ({error}); export the checkpoint again") from error
    if not isinstance(manifest, dict):
        raise ArtifactError(path, f"expected a JSON object, got {type(manifest).__name__}")
    return manifest


def same_ranking(items, reference, rtol=1e-5, atol=1e-5):
    """Whether two rankings, lists of ``(item, score)`` best first, agree up to float rounding.

    Equal length; scores rank by rank within ``atol + rtol * |reference score|``; an item placed
    differently only where its score is that close to the reference's score at its place (a
    near-tie, which rounding may order either way), or, when it is missing from the reference,
    to the reference's last score (a near-tie at the cut).
    """
    if len(items) != len(reference):
        return False
    scores = np.asarray([score for _, score in items], dtype=np.float64)
    expected = np.asarray([score for _, score in reference], dtype=np.float64)
    if not np.allclose(scores, expected, rtol=rtol, atol=atol):
        return False
    reference_rank = {item: rank for rank, (item, _) in enumerate(reference)}
    for rank, (item, score) in enumerate(items):
        if reference[rank][0] == item:
            continue
        other = reference_rank.get(item)
        compared = expected[-1] if other is None else expected[other]  # its own score in the reference, or the cut
        if not np.isclose(score, compared, rtol=rtol, atol=atol):
            return False
    return True
