"""ComiRec's multi-interest protocol: user split, held-out histories and targets, set metrics."""

import math

import numpy as np
import pytest
import torch

from mind_recbole.evaluation import multi_interest
from mind_recbole.evaluation.multi_interest import HeldOutEvaluator, HeldOutUsers, set_metrics, split_users


def write_inter(path, rows):
    path.write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in rows))
    return path


def test_read_sequences_orders_by_time_and_keeps_file_order_for_ties(tmp_path):
    inter = write_inter(tmp_path / "d.inter", [("u1", "c", 30), ("u2", "x", 5), ("u1", "a", 10), ("u1", "b", 30)])
    assert multi_interest.read_sequences(inter) == {"u1": ["a", "c", "b"], "u2": ["x"]}


def test_read_sequences_names_a_missing_column(tmp_path):
    inter = tmp_path / "d.inter"
    inter.write_text("user_id:token\titem_id:token\nu\ti\n")
    with pytest.raises(ValueError, match=r"d.inter: no column \['timestamp'\]"):
        multi_interest.read_sequences(inter)


def sequences(users=100, length=10):
    return {f"u{n:03d}": [f"i{n}-{k}" for k in range(length + n % 7)] for n in range(users)}


def test_split_is_8_1_1_disjoint_and_seeded():
    data = sequences()
    split = split_users(data, seed=1)
    assert (len(split.train_users), len(split.valid), len(split.test)) == (80, 10, 10)
    groups = [set(split.train_users), set(split.valid.users), set(split.test.users)]
    assert set.union(*groups) == set(data) and sum(map(len, groups)) == len(data)
    assert split_users(data, seed=1).test.users == split.test.users
    assert split_users(data, seed=2).test.users != split.test.users


def test_held_out_history_is_the_first_80_percent_and_the_rest_are_targets():
    data = sequences()
    split = split_users(data, seed=3)
    for user, history, targets in zip(split.test.users, split.test.histories, split.test.targets):
        cut = int(len(data[user]) * 0.8)
        assert history == data[user][:cut] and targets == data[user][cut:]
        assert history + targets == data[user]


def test_users_too_short_for_history_and_target_stay_in_training():
    data = {f"u{n}": ["a"] for n in range(20)}
    split = split_users(data, seed=0)
    assert len(split.valid) == len(split.test) == 0 and len(split.train_users) == 20


def test_set_metrics_by_hand():
    ranked = [[5, 3, 9, 1], [8, 7, 6, 4]]
    targets = [[3, 1, 7], [2]]  # user 2: nothing found
    metrics = set_metrics(ranked, targets, cutoffs=(2, 4))
    d = [1 / math.log2(r + 1) for r in range(1, 5)]
    assert metrics["recall@2"] == pytest.approx((1 / 3 + 0) / 2)
    assert metrics["recall@4"] == pytest.approx((2 / 3 + 0) / 2)
    assert metrics["hit@2"] == pytest.approx(0.5) and metrics["hit@4"] == pytest.approx(0.5)
    assert metrics["ndcg@2"] == pytest.approx((d[1] / (d[0] + d[1])) / 2)
    assert metrics["ndcg@4"] == pytest.approx(((d[1] + d[3]) / (d[0] + d[1] + d[2])) / 2)


def test_unknown_targets_count_as_misses():
    assert set_metrics([[1, 2]], [[1, -1]], cutoffs=(2,))["recall@2"] == pytest.approx(0.5)


def test_training_dataset_keeps_only_training_users_and_links_the_items(tmp_path):
    source = tmp_path / "shop"
    source.mkdir()
    write_inter(source / "shop.inter", [("u1", "a", 1), ("u2", "b", 2), ("u3", "c", 3), ("u1", "d", 4)])
    (source / "shop.item").write_text("item_id:token\tbrand:token\na\tx\nb\ty\nc\tz\nd\tw\n")
    name = multi_interest.write_training_dataset(tmp_path, "shop", 7, ["u1", "u3"])
    assert name == "shop-comirec-7"
    lines = (tmp_path / name / f"{name}.inter").read_text().splitlines()
    assert lines == ["user_id:token\titem_id:token\ttimestamp:float", "u1\ta\t1", "u3\tc\t3", "u1\td\t4"]
    assert (tmp_path / name / f"{name}.item").read_text() == (source / "shop.item").read_text()
    assert not [p for p in (tmp_path / name).iterdir() if ".tmp" in p.name]


class FixedScores(torch.nn.Module):
    """A stand-in model: every user gets the same scores, item i scoring i (so higher ids rank first)."""

    def __init__(self, n_items):
        super().__init__()
        self.n_items = n_items
        self.seen = []

    def full_sort_predict(self, interaction):
        self.seen.append((interaction["item_id_list"].clone(), interaction["item_length"].clone()))
        users = interaction["item_length"].shape[0]
        return torch.arange(self.n_items, dtype=torch.float).repeat(users, 1)


class Catalogue:
    def __init__(self, n_items):
        self.field2token_id = {"item_id": {"[PAD]": 0, **{f"i{n}": n for n in range(1, n_items)}}}


CONFIG = {
    "MAX_ITEM_LIST_LENGTH": 3, "ITEM_ID_FIELD": "item_id", "USER_ID_FIELD": "user_id", "LIST_SUFFIX": "_list",
    "ITEM_LIST_LENGTH_FIELD": "item_length", "device": "cpu",
}


def test_evaluator_excludes_history_and_padding_and_truncates_to_the_most_recent_items():
    held_out = HeldOutUsers(["a", "b"], [["i1", "i9", "i8", "i7"], ["i2", "unknown"]], [["i6", "i9"], ["i9", "i8"]])
    model = FixedScores(10)
    evaluator = HeldOutEvaluator(held_out, Catalogue(10), CONFIG, cutoffs=(2,), batch_size=1)
    ranked = evaluator.ranked_items(model, 3)
    np.testing.assert_array_equal(ranked, [[6, 5, 4], [9, 8, 7]])  # user a's history 1, 9, 8, 7 excluded
    (first_seq, first_len), (second_seq, second_len) = model.seen
    assert first_seq.tolist() == [[9, 8, 7]] and first_len.tolist() == [3]
    assert second_seq.tolist() == [[2, 0, 0]] and second_len.tolist() == [1]
    assert evaluator.unknown_history_items == 1
    metrics = evaluator.evaluate(model)
    assert metrics["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["hit@2"] == pytest.approx(1.0)
