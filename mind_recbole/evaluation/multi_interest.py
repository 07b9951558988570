"""The multi-interest protocol of ComiRec (Cen et al., "Controllable Multi-Interest Framework for
Recommendation", KDD 2020), next to RecBole's leave-one-out.

Users, not interactions, are split 8/1/1 (seeded). Models train on the training users' whole
sequences. A held-out user's first 80 % of interactions (in time order) are the history and the
remaining 20 % are all targets; the model ranks the whole catalogue once from the history, and

* ``recall@N`` = |top-N ∩ targets| / |targets|,
* ``ndcg@N``   = DCG of the hits in the top-N / ideal DCG of min(N, |targets|) hits,
* ``hit@N``    = 1 if any target is in the top-N,

averaged over held-out users. Validation users drive early stopping, test users are scored once.
Two choices differ from ComiRec's published code and are deliberate: the history's own items are
not recommended (as in RecBole's full ranking), and NDCG divides by the ideal DCG of
min(N, |targets|) hits (ComiRec divides by the ideal DCG of the hits found, which makes every user
with one hit score 1 whatever the rank).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mind_recbole.atomic_write import atomic_open
from mind_recbole.data.atomic_files import atomic_file_fields

SPLIT_RATIOS = (0.8, 0.1, 0.1)
HISTORY_FRACTION = 0.8
CUTOFFS = (20, 50)
METRICS = ("recall", "ndcg", "hit")


@dataclass
class HeldOutUsers:
    """Held-out users with their history and target item tokens (time order)."""

    users: list[str]
    histories: list[list[str]]
    targets: list[list[str]]

    def __len__(self):
        return len(self.users)


@dataclass
class UserSplit:
    """The 8/1/1 user split of one seed."""

    train_users: list[str]
    valid: HeldOutUsers
    test: HeldOutUsers


def read_sequences(inter_file, user_field="user_id", item_field="item_id", time_field="timestamp"):
    """``{user token: [item tokens in time order]}`` from a RecBole ``.inter`` file.

    Ties in time keep the file's order (the converter writes each user's same-day reviews in the
    order of the source file).
    """
    import pandas as pd

    inter_file = Path(inter_file)
    fields = atomic_file_fields(inter_file)
    missing = [f for f in (user_field, item_field, time_field) if f not in fields]
    if missing:
        raise ValueError(f"{inter_file}: no column {missing} (columns: {', '.join(fields)})")
    columns = [fields.index(f) for f in (user_field, item_field, time_field)]
    frame = pd.read_csv(inter_file, sep="\t", usecols=columns, dtype={columns[0]: str, columns[1]: str},
                        keep_default_na=False)
    frame.columns = [fields[c] for c in sorted(columns)]
    frame = frame.sort_values([user_field, time_field], kind="stable")
    return {
        user: items.tolist() for user, items in frame.groupby(user_field, sort=True)[item_field]
    }


def split_users(sequences, seed, ratios=SPLIT_RATIOS, history_fraction=HISTORY_FRACTION):
    """Split users 8/1/1 with ``seed``; held-out histories are the first 80 % of each sequence.

    A held-out user whose sequence is too short to give both a history and a target (fewer than
    two items) cannot be evaluated and is kept for training instead.
    """
    users = sorted(sequences)
    order = np.random.default_rng(seed).permutation(len(users))
    valid_count = int(round(len(users) * ratios[1]))
    test_count = int(round(len(users) * ratios[2]))
    valid_ids = order[len(users) - valid_count - test_count : len(users) - test_count]
    test_ids = order[len(users) - test_count :]
    held_out_ids = set(valid_ids.tolist()) | set(test_ids.tolist())
    train_users = [users[i] for i in range(len(users)) if i not in held_out_ids]

    def held_out(ids):
        split = HeldOutUsers([], [], [])
        for i in sorted(ids.tolist()):
            sequence = sequences[users[i]]
            cut = int(len(sequence) * history_fraction)
            if cut < 1 or cut >= len(sequence):
                train_users.append(users[i])
                continue
            split.users.append(users[i])
            split.histories.append(sequence[:cut])
            split.targets.append(sequence[cut:])
        return split

    valid, test = held_out(valid_ids), held_out(test_ids)
    return UserSplit(sorted(train_users), valid, test)


def write_training_dataset(source_root, dataset, seed, train_users, target_root=None, user_field="user_id"):
    """Atomic files of the training users only, as dataset ``{dataset}-comirec-{seed}``.

    The ``.item`` file (and ``.user`` when present) is linked unchanged, so every item keeps its
    side features and an id even when only held-out users bought it. Returns the new name.
    """
    source = Path(source_root) / dataset
    name = f"{dataset}-comirec-{seed}"
    target = Path(target_root or source_root) / name
    target.mkdir(parents=True, exist_ok=True)
    keep = set(train_users)
    inter_source = source / f"{dataset}.inter"
    user_column = atomic_file_fields(inter_source).index(user_field)
    with inter_source.open(encoding="utf-8") as reader, atomic_open(target / f"{name}.inter") as writer:
        writer.write(reader.readline())
        for line in reader:
            if line.split("\t", user_column + 1)[user_column] in keep:
                writer.write(line)
    for suffix in ("item", "user"):
        original = source / f"{dataset}.{suffix}"
        linked = target / f"{name}.{suffix}"
        if original.is_file():
            linked.unlink(missing_ok=True)
            os.symlink(original.resolve(), linked)
    return name


def set_metrics(ranked, targets, cutoffs=CUTOFFS):
    """Recall, NDCG and hit rate at each cut-off, averaged over users (0.0 without users).

    ``ranked`` is ``[U, >= max(cutoffs)]`` item ids, best first; ``targets`` one collection of
    item ids per user (ids that cannot be ranked, e.g. unknown items, still count as targets).
    """
    return average_over_users(user_set_metrics(ranked, targets, cutoffs))


def average_over_users(user_values):
    """``{name: [U] values}`` -> ``{name: mean}`` (0.0 without users)."""
    return {name: float(values.mean()) if len(values) else 0.0 for name, values in user_values.items()}


def user_set_metrics(ranked, targets, cutoffs=CUTOFFS):
    """:func:`set_metrics` per user, not averaged: ``{"recall@20": [U] values, ...}``."""
    ranked = np.asarray(ranked)
    discounts = 1.0 / np.log2(np.arange(2, max(*cutoffs, ranked.shape[1]) + 2))
    values = {f"{metric}@{n}": np.zeros(len(targets)) for metric in METRICS for n in cutoffs}
    for user, (row, target) in enumerate(zip(ranked, targets)):
        target = set(target)
        hits = np.fromiter((item in target for item in row), dtype=bool, count=len(row))
        for n in cutoffs:
            found = int(hits[:n].sum())
            values[f"recall@{n}"][user] = found / len(target)
            values[f"hit@{n}"][user] = float(found > 0)
            ideal = discounts[: min(n, len(target))].sum()
            top = hits[:n]
            values[f"ndcg@{n}"][user] = float(discounts[: len(top)][top].sum() / ideal)
    return values


class HeldOutEvaluator:
    """Scores held-out users with any RecBole model that has ``full_sort_predict``.

    The history (its most recent ``MAX_ITEM_LIST_LENGTH`` items) is given as RecBole's
    ``item_id_list`` / ``item_length`` fields; users are unknown to the model, so ``user_id`` is
    the padding id 0. Truthy and sized, so RecBole's ``Trainer.fit`` validates with it when it
    stands in for the validation loader (the plugin's trainer calls :meth:`evaluate` then).
    """

    def __init__(self, held_out, dataset, config, cutoffs=CUTOFFS, batch_size=1024):
        self.held_out = held_out
        self.cutoffs = tuple(cutoffs)
        self.batch_size = batch_size
        self.max_length = config["MAX_ITEM_LIST_LENGTH"]
        self.item_field = config["ITEM_ID_FIELD"]
        self.user_field = config["USER_ID_FIELD"]
        self.seq_field = self.item_field + config["LIST_SUFFIX"]
        self.length_field = config["ITEM_LIST_LENGTH_FIELD"]
        self.device = config["device"]
        token_ids = dataset.field2token_id[self.item_field]
        self.histories = [[token_ids[t] for t in h if t in token_ids][-self.max_length :] for h in held_out.histories]
        self.targets = [[token_ids.get(t, -1) for t in targets] for targets in held_out.targets]
        self.unknown_history_items = sum(
            sum(t not in token_ids for t in h) for h in held_out.histories
        )

    def __len__(self):
        return len(self.held_out)

    def ranked_items(self, model, topk):
        """``[U, topk]`` item ids per held-out user, best first, history items excluded (fewer
        columns when the catalogue is smaller than ``topk``)."""
        import torch
        from recbole.data.interaction import Interaction

        model.eval()
        ranked = []
        with torch.no_grad():
            for start in range(0, len(self), self.batch_size):
                histories = self.histories[start : start + self.batch_size]
                lengths = torch.tensor([max(1, len(h)) for h in histories])
                sequences = torch.zeros(len(histories), self.max_length, dtype=torch.long)
                for row, history in enumerate(histories):
                    sequences[row, : len(history)] = torch.tensor(history, dtype=torch.long)
                interaction = Interaction(
                    {
                        self.seq_field: sequences,
                        self.length_field: lengths,
                        self.user_field: torch.zeros(len(histories), dtype=torch.long),
                    }
                ).to(self.device)
                scores = model.full_sort_predict(interaction).view(len(histories), -1).float()
                scores[:, 0] = -math.inf
                rows = torch.arange(len(histories)).repeat_interleave(
                    torch.tensor([len(h) for h in histories])
                )
                columns = torch.tensor([i for h in histories for i in h], dtype=torch.long)
                scores[rows.to(scores.device), columns.to(scores.device)] = -math.inf
                ranked.append(scores.topk(min(topk, scores.shape[1]), dim=1).indices.cpu().numpy())
        return np.concatenate(ranked) if ranked else np.zeros((0, topk), dtype=np.int64)

    def evaluate(self, model):
        """``{recall@20: ..., ndcg@20: ..., hit@20: ..., ...@50}`` for the held-out users."""
        return average_over_users(self.evaluate_users(model))

    def evaluate_users(self, model):
        """:meth:`evaluate` per user: ``{"recall@20": [U] values, ...}`` in the order of ``held_out.users``."""
        ranked = self.ranked_items(model, max(self.cutoffs))
        return user_set_metrics(ranked, self.targets, self.cutoffs)
