"""MIND against another model within groups of test users: the number of interests MIND gives them.

MIND gives a user ``K'_u = max(1, min(K, floor(log2 |I_u|)))`` interests, ``|I_u|`` the history it
reads (at most ``MAX_ITEM_LIST_LENGTH`` items). Several interests can only help a user who has
several, so the overall paired test (:mod:`mind_recbole.compare.significance`) may hide a gain on
long histories under a loss on short ones. This splits each protocol's test users by ``K'_u`` and
runs the same paired test within each group. YouTubeDNN (mean pooling, one interest, the same item
tower and ReLU tower) is the comparison that isolates the interests.

A test user's history is what the protocol gives the model: leave-one-out, every interaction
before the test target (``n_u - 1``); the multi-interest protocol, the first 80 %
(:func:`mind_recbole.evaluation.multi_interest.split_users`).

Numpy only; no torch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mind_recbole.compare.significance import (
    REFERENCE,
    PairedTest,
    RunUserValues,
    left_out_note,
    paired_test,
    runs_by_model,
    seed_averaged_values,
    unavailable_note,
)
from mind_recbole.compare.user_results import pseudonyms
from mind_recbole.evaluation.multi_interest import HISTORY_FRACTION

GROUP_MODELS = ("YouTubeDNN",)
GROUP_PROTOCOLS = ("full", "multi_interest")  # leave-one-out's sampled protocol has the same users as full
GROUP_METRIC = "recall@50"


@dataclass
class GroupRow:
    """MIND against ``model`` on ``protocol``'s ``metric`` among the test users MIND gives
    ``interests`` interests (histories of ``lengths`` items); ``test`` None (and ``interests`` 0):
    no test could be made, ``note`` says why."""

    protocol: str
    model: str
    metric: str
    interests: int
    lengths: str
    reference_mean: float | None = None
    other_mean: float | None = None
    test: PairedTest | None = None
    note: str = ""


def interest_counts(lengths, interest_num):
    """``K'_u`` for each history length, as MIND's ``interest_count_mask`` counts it: how many
    ``k`` in ``1..K`` have ``length >= 2^k``, at least 1.

    Shape: lengths ``[U]`` (int). Output: ``[U]`` int in ``1..interest_num``.
    """
    powers = 2 ** np.arange(1, interest_num + 1)  # [K]
    return np.clip((np.asarray(lengths)[:, None] >= powers).sum(1), 1, interest_num)


def length_range(interests, interest_num):
    """The history lengths that get ``interests`` interests: ``1-3``, ``4-7``, ..., ``16+`` (K = 4)."""
    low = 1 if interests == 1 else 2 ** interests
    return f"{2 ** interests}+" if interests == interest_num else f"{low}-{2 ** (interests + 1) - 1}"


def history_lengths(sequences, max_length):
    """Each user's history length as each protocol gives it to a model.

    Args:
        sequences: ``{user token: [item tokens in time order]}``
            (:func:`mind_recbole.evaluation.multi_interest.read_sequences`).
        max_length (int): ``MAX_ITEM_LIST_LENGTH``, the most history items a model reads.

    Returns:
        ``{protocol: (users, lengths)}`` for ``full`` and ``multi_interest``: ``[U]`` user
        pseudonyms, sorted, and ``[U]`` lengths.
    """
    users = pseudonyms(list(sequences))
    counts = np.array([len(items) for items in sequences.values()])
    order = np.argsort(users)
    leave_one_out = np.minimum(counts - 1, max_length)
    held_out = np.minimum((counts * HISTORY_FRACTION).astype(np.int64), max_length)  # int(n * 0.8), as the split
    return {"full": (users[order], leave_one_out[order]), "multi_interest": (users[order], held_out[order])}


def paired_tests_by_interest_count(
    records, run_dir, lengths, interest_num, reference=REFERENCE, models=GROUP_MODELS, metric=GROUP_METRIC,
    protocols=GROUP_PROTOCOLS,
):
    """:class:`GroupRow` per protocol, model and interest count, from the runs' per-user files in
    ``run_dir`` (each model's values averaged over its seeds, users scored by both models only).

    Args:
        records: the comparison's :class:`~mind_recbole.compare.runner.RunRecord` list.
        lengths: :func:`history_lengths`.
        interest_num (int): MIND's ``K``.
    """
    user_values = RunUserValues(run_dir)
    rows = []
    for protocol in protocols:
        runs = runs_by_model(records, protocol)
        if reference not in runs or protocol not in lengths:
            continue
        for model in (m for m in models if m in runs):
            (reference_values, skipped), (other_values, other_skipped) = (
                seed_averaged_values(runs[name], protocol, metric, user_values) for name in (reference, model))
            if reference_values is None or other_values is None:  # one row saying why
                rows.append(GroupRow(protocol, model, metric, 0, "", note=unavailable_note(skipped + other_skipped)))
                continue
            rows += _group_rows(protocol, model, metric, reference_values, other_values, lengths[protocol],
                                interest_num, left_out_note(skipped + other_skipped))
    return rows


def _group_rows(protocol, model, metric, reference_values, other_values, lengths, interest_num, note):
    """One :class:`GroupRow` per interest count among the users both models scored (counts without
    such a user have none)."""
    (users_a, values_a), (users_b, values_b) = reference_values, other_values
    users, index_a, index_b = np.intersect1d(users_a, users_b, assume_unique=True, return_indices=True)
    known_users, known_lengths = lengths
    position = np.searchsorted(known_users, users).clip(max=len(known_users) - 1)
    if not np.array_equal(known_users[position], users):
        raise ValueError(f"{protocol}: per-user results name users the dataset does not have "
                         "(results of other data files?)")
    counts = interest_counts(known_lengths[position], interest_num)
    rows = []
    for interests in np.unique(counts).tolist():  # the groups that have test users
        chosen = counts == interests
        a, b = values_a[index_a][chosen], values_b[index_b][chosen]
        rows.append(GroupRow(protocol, model, metric, interests, length_range(interests, interest_num),
                             float(a.mean()), float(b.mean()), paired_test(users[chosen], a, users[chosen], b), note))
    return rows
