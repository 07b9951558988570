"""Paired tests of MIND against each model (compare/significance.py) on hand-made per-user values,
and the per-user files they read (compare/user_results.py)."""

import zipfile

import numpy as np
import pytest

from mind_recbole.compare.runner import RunRecord, run_path
from mind_recbole.compare.significance import (
    PairedTest,
    bootstrap_means,
    format_p,
    paired_test,
    paired_tests,
    seed_average,
)
from mind_recbole.compare.user_results import (
    PREDATES,
    UserValues,
    pseudonyms,
    read_user_results,
    user_results_path,
    write_user_results,
)

USERS = np.array([f"u{i}" for i in range(400)])


def test_identical_values_give_zero_difference_and_p_one():
    values = np.random.default_rng(1).random(len(USERS))
    test = paired_test(USERS, values, USERS, values.copy())
    assert test == PairedTest(0.0, 0.0, 0.0, 1.0, 1.0, len(USERS))


def test_a_clear_shift_is_significant_and_its_interval_covers_the_true_difference():
    rng = np.random.default_rng(2)
    base = rng.random(len(USERS))
    shifted = base + 0.05 + rng.normal(0.0, 0.02, len(USERS))  # true mean difference 0.05
    test = paired_test(USERS, shifted, USERS, base)
    assert test.mean_difference == pytest.approx(0.05, abs=0.004)
    assert test.ci_low < 0.05 < test.ci_high and test.ci_high - test.ci_low < 0.01
    assert test.p_bootstrap == pytest.approx(2 / 10_001)  # no resampled mean on the other side of 0
    assert test.p_wilcoxon < 1e-10
    reversed_test = paired_test(USERS, base, USERS, shifted)  # the sign follows the order
    assert reversed_test.mean_difference == pytest.approx(-test.mean_difference)
    assert reversed_test.p_bootstrap == test.p_bootstrap


def test_no_difference_on_average_is_not_significant():
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2, len(USERS)).astype(float)  # hit@50-like 0/1 values
    other = rng.permutation(base)  # the same hit rate, other users
    test = paired_test(USERS, base, USERS, other)
    assert test.mean_difference == 0.0
    assert test.p_bootstrap > 0.5 and test.p_wilcoxon > 0.5
    assert test.ci_low < 0.0 < test.ci_high


@pytest.mark.parametrize("kind", ["continuous", "three values"])  # gathered resamples / multinomial counts
def test_bootstrap_means_match_the_normal_approximation_of_the_mean(kind):
    rng = np.random.default_rng(4)
    if kind == "continuous":
        differences = rng.normal(0.1, 1.0, 2_000)
    else:
        differences = rng.choice([-1.0, 0.0, 1.0], size=2_000, p=[0.15, 0.65, 0.2])
    means = bootstrap_means(differences)
    assert len(means) == 10_000
    assert means.mean() == pytest.approx(differences.mean(), abs=0.003)
    assert means.std() == pytest.approx(differences.std() / np.sqrt(len(differences)), rel=0.05)
    assert np.array_equal(means, bootstrap_means(differences))  # fixed seed: the same resamples every time


def test_users_not_scored_by_both_models_are_left_out():
    # u0 and u1 are in both; "only-a" and "only-b" carry huge values that would dominate the mean.
    test = paired_test(np.array(["only-a", "u0", "u1"]), np.array([100.0, 0.5, 0.7]),
                       np.array(["u0", "u1", "only-b"]), np.array([0.25, 0.25, -100.0]))
    assert test.users == 2 and test.mean_difference == pytest.approx((0.25 + 0.45) / 2)
    with pytest.raises(ValueError, match="no user in common"):
        paired_test(np.array(["a"]), np.array([1.0]), np.array(["b"]), np.array([1.0]))


def test_seed_average_by_hand():
    # seed 1 tests u1, u2; seed 2 tests u2, u3 (multi-interest splits differ per seed)
    users, values = seed_average([(["u1", "u2"], [0.2, 0.4]), (["u2", "u3"], [0.8, 1.0])])
    assert users.tolist() == ["u1", "u2", "u3"]
    assert values.tolist() == pytest.approx([0.2, 0.6, 1.0])


def test_format_p():
    assert format_p(1.0) == "1.000" and format_p(0.0312) == "0.031" and format_p(2 / 10_001) == "2.0e-04"


def record(model, seed, protocol_results, group="leave_one_out"):
    return RunRecord(model=model, dataset="d", seed=seed, group=group, config_hash=f"h-{model}-{seed}",
                     config_files=[], results=protocol_results, data_fingerprint="f")


def write_users(run_dir, run, protocol, users, values):
    path = user_results_path(run_path(run_dir, run.model, run.group, run.seed))
    write_user_results(path, {protocol: UserValues(users, {"recall@50": values, "ndcg@50": np.asarray(values) / 2})},
                       run.config_hash, run.data_fingerprint)


def test_paired_tests_average_seeds_and_say_which_run_predates_per_user_results(tmp_path):
    full = {"full": {"recall@50": 0.0, "ndcg@50": 0.0}}
    mind = [record("MIND", 2020, full), record("MIND", 2021, full)]
    pop, old = record("Pop", 2020, full), record("SASRec", 2020, full)
    users = ["u1", "u2", "u3"]
    write_users(tmp_path, mind[0], "full", users, [1.0, 0.0, 1.0])
    write_users(tmp_path, mind[1], "full", users, [1.0, 1.0, 0.0])
    write_users(tmp_path, pop, "full", users, [0.0, 0.0, 0.0])
    rows = paired_tests([*mind, pop, old], tmp_path)
    assert [(r.model, r.metric) for r in rows] == [
        ("Pop", "recall@50"), ("Pop", "ndcg@50"), ("SASRec", "recall@50"), ("SASRec", "ndcg@50")]
    # MIND's seed average per user: 1.0, 0.5, 0.5 -> mean difference to Pop's zeros 2/3
    assert rows[0].test.mean_difference == pytest.approx(2 / 3) and rows[0].test.users == 3
    assert rows[1].test.mean_difference == pytest.approx(1 / 3)
    assert rows[2].test is None and rows[2].note == f"n/a ({PREDATES}: SASRec seed 2020)"
    assert rows[0].note == ""


def test_paired_tests_use_the_seeds_with_per_user_values_and_name_those_left_out(tmp_path):
    full = {"full": {"recall@50": 0.0, "ndcg@50": 0.0}}
    mind = [record("MIND", 2020, full), record("MIND", 2021, full)]  # 2020 predates per-user results
    pop = record("Pop", 2020, full)
    write_users(tmp_path, mind[1], "full", ["u1", "u2"], [1.0, 0.0])
    write_users(tmp_path, pop, "full", ["u1", "u2"], [0.0, 0.0])
    row = paired_tests([*mind, pop], tmp_path)[0]
    assert row.test.mean_difference == pytest.approx(0.5) and row.test.users == 2  # seed 2021 alone
    assert row.note == f"left out, {PREDATES}: MIND seed 2020"


def test_runs_left_out_are_named_once_per_reason_with_each_models_seeds_together():
    from mind_recbole.compare.significance import runs_text

    skipped = [(PREDATES, "MIND", 2022), (PREDATES, "SINE", 2020), (PREDATES, "SINE", 2021), ("no file", "Pop", 2020)]
    assert runs_text(skipped) == f"{PREDATES}: MIND seed 2022, SINE seeds 2020, 2021; no file: Pop seed 2020"


def test_paired_tests_only_compare_a_protocol_both_models_were_tested_on(tmp_path):
    mind = record("MIND", 2020, {"multi_interest": {"recall@50": 0.0}}, group="multi_interest")
    din = record("DIN", 2020, {"sampled": {"recall@50": 0.0}})
    write_users(tmp_path, mind, "multi_interest", ["u1"], [1.0])
    write_users(tmp_path, din, "sampled", ["u1"], [1.0])
    assert paired_tests([mind, din], tmp_path) == []


def test_user_results_round_trip_and_refuse_another_training(tmp_path):
    path = tmp_path / "MIND-leave_one_out-seed2020.users.npz"
    values = UserValues(["A1", "B22"], {"recall@50": [1.0, 0.0], "ndcg@50": [0.5, 0.0]})
    write_user_results(path, {"full": values, "sampled": values}, "hash", "print")
    loaded, why_not = read_user_results(path, "hash", "print")
    assert why_not is None and sorted(loaded) == ["full", "sampled"]
    assert loaded["full"].users.tolist() == pseudonyms(["A1", "B22"]).tolist()
    assert loaded["full"].metrics["ndcg@50"].tolist() == [0.5, 0.0]
    assert read_user_results(path, "other hash", "print") == (
        None, f"{path.name} belongs to another training of this run")
    assert read_user_results(tmp_path / "none.users.npz", "hash", "print") == (None, PREDATES)
    np.savez(path, config_hash="hash", data_fingerprint="print", **{"full.recall@50": [1.0]})  # no users
    assert read_user_results(path, "hash", "print") == (
        None, f"{path.name} is unreadable (protocol full: users and values do not match)")
    path.write_bytes(b"not a zip")
    loaded, why_not = read_user_results(path, "hash", "print")
    assert loaded is None and why_not.startswith(f"{path.name} is unreadable (")
    assert not list(tmp_path.glob(".*tmp*"))  # written under a temporary name, then renamed
    with pytest.raises(ValueError, match=r"2 users but metric lengths \{'recall@50': 1\}"):
        UserValues(["A1", "B22"], {"recall@50": [1.0]})


def collector_config(mode):
    """The config keys RecBole's Collector and Evaluator read."""
    return {"eval_args": {"mode": mode}, "topk": [1, 2], "device": "cpu", "metrics": ["Recall", "NDCG", "Hit"],
            "metric_decimal_place": 4, "USER_ID_FIELD": "user_id"}


def test_user_collector_keeps_each_users_row_of_a_full_ranking():
    import torch
    from recbole.data.interaction import Interaction
    from recbole.evaluator import Evaluator

    from mind_recbole.compare.user_metrics import UserCollector, topk_metrics_per_user

    config = collector_config("full")
    collector = UserCollector(config)
    # batch 1: users 7 and 3 over 4 items; user 7's targets are items 2 and 0, user 3's is item 3
    scores = torch.tensor([[0.1, 0.0, 0.9, 0.5], [0.9, 0.8, 0.0, 0.1]])
    collector.eval_batch_collect(scores, Interaction({"user_id": torch.tensor([7, 3])}),
                                 torch.tensor([0, 0, 1]), torch.tensor([2, 0, 3]))
    # batch 2: user 9, target item 1 ranked first
    collector.eval_batch_collect(torch.tensor([[0.0, 1.0, 0.5, 0.2]]), Interaction({"user_id": torch.tensor([9])}),
                                 torch.tensor([0]), torch.tensor([1]))
    struct = collector.get_data_struct()
    assert collector.last_users.tolist() == [7, 3, 9] and collector.batch_users == []
    values = topk_metrics_per_user(Evaluator(config), struct)
    # user 7 ranks 2, 3, 0, 1: a hit at rank 1 of 2 targets; user 3 ranks 0, 1: none; user 9: its one target first
    assert values["recall@1"].tolist() == [0.5, 0.0, 1.0] and values["recall@2"].tolist() == [0.5, 0.0, 1.0]
    assert values["hit@2"].tolist() == [1.0, 0.0, 1.0]
    ideal_two = 1 + 1 / np.log2(3)
    assert values["ndcg@2"] == pytest.approx([1 / ideal_two, 0.0, 1.0])
    reported = Evaluator(config).evaluate(struct)
    assert reported["ndcg@2"] == pytest.approx(values["ndcg@2"].mean(), abs=5e-5)  # RecBole rounds to 4 places


def test_user_collector_reads_one_user_per_block_of_sampled_rows():
    import torch
    from recbole.data.interaction import Interaction

    from mind_recbole.compare.user_metrics import UserCollector

    collector = UserCollector(collector_config("uni100"))
    rows = Interaction({"user_id": torch.tensor([5, 5, 5, 2, 2, 2])})  # each user: its target, then 2 negatives
    collector.eval_batch_collect(torch.rand(2, 6), rows, torch.tensor([0, 1]), torch.tensor([1, 4]))
    collector.get_data_struct()
    assert collector.last_users.tolist() == [5, 2]
    with pytest.raises(RuntimeError, match="cannot tell the user of each scored row: 3 score rows, 2 users"):
        collector.eval_batch_collect(torch.rand(3, 6), rows, torch.tensor([0, 1]), torch.tensor([1, 4]))


def test_pseudonyms_are_fixed_and_the_file_holds_no_token(tmp_path):
    # committed files are paired with runs written later: the scheme must never change
    assert pseudonyms(["A1", "B22"]).tolist() == [10776033278222397497, 8176012895781349053]
    path = tmp_path / "MIND-leave_one_out-seed2020.users.npz"
    write_user_results(path, {"full": UserValues(["A1ZTOKEN", "B22TOKEN"], {"recall@50": [1.0, 1 / 3]})}, "h", "f")
    with np.load(path) as stored:
        assert stored["full.users"].dtype == np.uint64 and stored["full.recall@50"].dtype == np.float32
    raw = zipfile.ZipFile(path).read("full.users.npy")
    assert b"TOKEN" not in raw and b"T\x00\x00\x00O" not in raw  # neither bytes nor numpy's UTF-32


def test_a_file_written_with_tokens_pairs_with_one_written_with_pseudonyms(tmp_path):
    full = {"full": {"recall@50": 0.0}}
    mind, pop = record("MIND", 2020, full), record("Pop", 2020, full)
    old = user_results_path(run_path(tmp_path, mind.model, mind.group, mind.seed))
    np.savez_compressed(old, config_hash=mind.config_hash, data_fingerprint="f",  # the earlier layout: tokens
                        **{"full.users": np.array(["u1", "u2"]), "full.recall@50": np.array([1.0, 1.0])})
    write_users(tmp_path, pop, "full", ["u2", "u1"], [0.0, 1.0])
    row = paired_tests([mind, pop], tmp_path, metrics=["recall@50"])[0]
    assert row.test.users == 2 and row.test.mean_difference == pytest.approx(0.5)
