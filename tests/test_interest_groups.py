"""MIND against another model by the number of interests MIND gives a user (compare/interest_groups.py),
on hand-made histories and per-user values."""

import json

import numpy as np
import pytest
import torch

from mind_recbole.compare.interest_groups import (
    history_lengths,
    interest_counts,
    length_range,
    paired_tests_by_interest_count,
)
from mind_recbole.compare.report import aggregate, render_markdown
from mind_recbole.compare.user_results import PREDATES, pseudonyms
from mind_recbole.evaluation.multi_interest import split_users
from mind_recbole.model.layers import interest_count_mask
from tests.test_significance import record, write_users


@pytest.mark.parametrize("interest_num", [1, 3, 4])
def test_interest_counts_are_the_models_own(interest_num):
    lengths = np.arange(0, 70)
    expected = interest_count_mask(torch.from_numpy(lengths), interest_num).sum(1).numpy()
    assert np.array_equal(interest_counts(lengths, interest_num), expected)


def test_length_ranges_name_the_lengths_of_each_count():
    assert [length_range(k, 4) for k in (1, 2, 3, 4)] == ["1-3", "4-7", "8-15", "16+"]
    for k in (1, 2, 3, 4):  # each range's ends get that count
        low, _, high = length_range(k, 4).partition("-")
        ends = [int(low.rstrip("+"))] + ([int(high)] if high else [100])
        assert interest_counts(np.array(ends), 4).tolist() == [k] * len(ends)


def test_history_lengths_are_what_each_protocol_gives_the_model():
    sequences = {f"u{n}": [f"i{j}" for j in range(n)] for n in (2, 5, 10, 11, 64)}
    lengths = history_lengths(sequences, max_length=50)
    users, full = lengths["full"]
    assert np.all(np.diff(users.astype(np.float64)) > 0)  # sorted pseudonyms
    by_user = dict(zip(pseudonyms(list(sequences)).tolist(), range(len(sequences))))
    order = [by_user[u] for u in users.tolist()]
    assert full.tolist() == [[1, 4, 9, 10, 50][i] for i in order]  # all but the target, at most 50
    held_out = lengths["multi_interest"][1]
    assert held_out.tolist() == [[1, 4, 8, 8, 50][i] for i in order]  # int(0.8 n), at most 50
    # the same lengths as the protocol's own split gives its held-out users
    split = split_users({f"u{n}": [f"i{j}" for j in range(n)] for n in range(2, 40)}, seed=3)
    many = history_lengths({f"u{n}": [f"i{j}" for j in range(n)] for n in range(2, 40)}, max_length=50)
    users, held_out = many["multi_interest"]
    for user, history in zip(split.test.users + split.valid.users, split.test.histories + split.valid.histories):
        assert held_out[np.searchsorted(users, pseudonyms([user])[0])] == len(history)


def test_groups_by_hand(tmp_path):
    # u4..u7: 4-7 history items (2 interests), u8..u15: 8-15 (3), u16: 16+ (4); leave-one-out: n - 1
    sequences = {f"u{h}": [f"i{j}" for j in range(h + 1)] for h in list(range(4, 16)) + [16]}
    users = list(sequences)
    mind = [record("MIND", 2020, {"full": {"recall@50": 0.0}}), record("MIND", 2021, {"full": {"recall@50": 0.0}})]
    youtube = record("YouTubeDNN", 2020, {"full": {"recall@50": 0.0}})
    hits = {u: float(u in ("u5", "u8", "u9", "u16")) for u in users}
    write_users(tmp_path, mind[0], "full", users, [hits[u] for u in users])
    write_users(tmp_path, mind[1], "full", users, [0.0 if u == "u16" else hits[u] for u in users])
    write_users(tmp_path, youtube, "full", users[:-1], [float(u == "u4") for u in users[:-1]])  # u16 untested

    rows = paired_tests_by_interest_count([*mind, youtube], tmp_path, history_lengths(sequences, 50), interest_num=4)
    assert [(r.protocol, r.model, r.interests, r.lengths) for r in rows] == [
        ("full", "YouTubeDNN", 2, "4-7"), ("full", "YouTubeDNN", 3, "8-15")]  # u16: scored by MIND only
    two, three = rows
    assert two.test.users == 4 and two.reference_mean == 0.25 and two.other_mean == 0.25  # u5 against u4
    assert two.test.mean_difference == 0.0 and two.note == ""
    assert three.test.users == 8 and three.reference_mean == 0.25 and three.other_mean == 0.0
    assert three.test.mean_difference == pytest.approx(0.25)
    assert three.test.p_bootstrap > 0.05  # two hits among 8 users: no evidence

    for run in (*mind, youtube):
        run.epoch_seconds = [1.0]  # the report's cost table needs them
    text = render_markdown("d", [*mind, youtube], aggregate([*mind, youtube]), [], [], "c", 60, None, groups=rows)
    assert "## MIND against YouTubeDNN by the number of interests MIND gives a user" in text
    assert "| 3 | 8-15 | 8 | 0.2500 | 0.0000 | +0.2500 |" in text
    assert ("- Full ranking (leave-one-out), MIND minus YouTubeDNN in recall@50 by the interests MIND gives a user: "
            "+0.0000 at 2 interests (4-7 items, 4 users, p = 1.000); +0.2500 at 3 interests (8-15 items, 8 users, p = ") in text


def test_a_model_without_per_user_values_gets_one_row_saying_why(tmp_path):
    sequences = {f"u{h}": [f"i{j}" for j in range(h + 1)] for h in range(4, 9)}
    mind = record("MIND", 2020, {"full": {"recall@50": 0.0}})
    write_users(tmp_path, mind, "full", list(sequences), [1.0] * len(sequences))
    youtube = record("YouTubeDNN", 2020, {"full": {"recall@50": 0.0}})  # no per-user file
    rows = paired_tests_by_interest_count([mind, youtube], tmp_path, history_lengths(sequences, 50), interest_num=4)
    assert len(rows) == 1 and rows[0].test is None
    assert rows[0].note == f"n/a ({PREDATES}: YouTubeDNN seed 2020)"
    assert paired_tests_by_interest_count([youtube], tmp_path, history_lengths(sequences, 50), 4) == []  # no MIND


def test_users_the_dataset_does_not_have_are_an_error(tmp_path):
    mind = record("MIND", 2020, {"full": {"recall@50": 0.0}})
    youtube = record("YouTubeDNN", 2020, {"full": {"recall@50": 0.0}})
    for run in (mind, youtube):
        write_users(tmp_path, run, "full", ["stranger"], [1.0])
    with pytest.raises(ValueError, match="users the dataset does not have"):
        paired_tests_by_interest_count([mind, youtube], tmp_path, history_lengths({"u1": ["a", "b"]}, 50), 4)


@pytest.mark.slow
def test_compare_reports_mind_against_youtubednn_by_interest_count(workdir, capsys):
    from tests.test_compare_cache import DATASET, compare

    status, lines = compare(workdir, capsys, models="MIND,YouTubeDNN")
    assert status == 0, lines
    payload = json.loads((workdir / "results" / f"{DATASET}.json").read_text())
    groups = payload["interest_groups"]
    overall = next(row for row in payload["paired_tests"]
                   if row["protocol"] == "full" and row["model"] == "YouTubeDNN" and row["metric"] == "recall@50")
    full = [row for row in groups if row["protocol"] == "full"]
    assert [row["interests"] for row in full] == sorted({row["interests"] for row in full})
    assert sum(row["test"]["users"] for row in full) == overall["test"]["users"]  # every test user in one group
    weighted = sum(row["test"]["mean_difference"] * row["test"]["users"] for row in full) / overall["test"]["users"]
    assert weighted == pytest.approx(overall["test"]["mean_difference"])  # the groups make up the whole
    report = (workdir / "results" / f"{DATASET}.md").read_text()
    assert "## MIND against YouTubeDNN by the number of interests MIND gives a user" in report
