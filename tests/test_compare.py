"""``mind-recbole compare``: the report from synthetic runs, and the harness end to end on beauty-mini."""

import json

import numpy as np
import pytest

from mind_recbole.compare.report import aggregate, config_sections, model_colors, render_markdown, validation_results
from mind_recbole.compare.runner import (
    SEED_SWEEP_MODELS,
    RunRecord,
    collect_runs,
    config_hash,
    data_fingerprint,
    missing_runs,
    model_config_files,
    run_plan,
)
from mind_recbole.compare.significance import PairedTest, PairRow
from mind_recbole.config_files import plugin_default_files
from tests.conftest import AMAZON_CONFIG


def record(model, seed, recall, group="leave_one_out", protocol="full"):
    return RunRecord(
        model=model, dataset="d", seed=seed, group=group, config_hash="h", config_files=[], data_fingerprint="f",
        results={protocol: {"recall@50": recall, "ndcg@50": recall / 2}},
        valid_scores=[0.1, 0.3, 0.2], epoch_seconds=[2.0, 4.0, 3.0], parameters=1234,
        diagnostics={"interests": 2.0, "interest_cosine": 0.5} if model == "MIND" else {},
        best_valid={"recall@50": recall + 0.01}, wall_seconds=90.0,
    )


def test_aggregate_gives_mean_and_sample_std_over_seeds():
    table = aggregate([record("MIND", 1, 0.2), record("MIND", 2, 0.4), record("Pop", 1, 0.1)])
    mean, std, n = table["full"]["MIND"]["recall@50"]
    assert (mean, n) == (pytest.approx(0.3), 2) and std == pytest.approx(0.1414, abs=1e-4)
    assert table["full"]["Pop"]["recall@50"] == (0.1, 0.0, 1)


def test_markdown_has_tables_leader_cost_and_diagnostics():
    records = [record("MIND", 1, 0.2), record("MIND", 2, 0.4), record("Pop", 1, 0.1),
               record("MIND", 1, 0.05, "multi_interest", "multi_interest"),
               record("YouTubeDNN", 1, 0.07, "multi_interest", "multi_interest")]
    text = render_markdown("d", records, aggregate(records), [], [("users", "3")], "mind-recbole compare", 600, None)
    assert "| MIND | 0.3000 ± 0.1414 | 0.1500 ± 0.0707 |" in text
    assert "| Pop | 0.1000 | 0.0500 |" in text
    assert ("First in recall@50: **MIND** (0.3000), then Pop (0.1000); MIND leads by +0.2000 (+200.0%), "
            "more than the sum of their seed std (0.1414; Pop: one seed), but one seed has no spread to measure: "
            "not an established lead; no paired test.") in text
    close = [record("MIND", 1, 0.20), record("MIND", 2, 0.22), record("SASRec", 1, 0.205)]
    assert ("MIND leads by +0.0050 (+2.4%), within the sum of their seed std (0.0141; SASRec: one seed): not a lead;"
            in render_markdown("d", close, aggregate(close), [], [], "c", 60, None))
    seeded = [record("MIND", 1, 0.30), record("MIND", 2, 0.31), record("SASRec", 1, 0.20), record("SASRec", 2, 0.22)]
    assert ("MIND leads by +0.0950 (+45.2%), more than the sum of their seed std (0.0212); no paired test."
            in render_markdown("d", seeded, aggregate(seeded), [], [], "c", 60, None))
    assert "First in recall@50: **YouTubeDNN** (0.0700), then MIND (0.0500); MIND 0.0500 (-28.6% against the leader)." in text
    assert "| MIND | 3.0 | 3.0 | 2.0 | 1.5 | 1,234 |" in text  # 3 s per epoch, 3 epochs, best at the 2nd, 90 s
    assert "| MIND | 2.000 | 0.500 |" in text
    assert "(5 trainings, 10 min of training and evaluation wall time" in text
    assert "Seeds: 2020" not in text and "Seeds: 1, 2 (MIND); 1 (the others);" in text
    assert "Not in these tables" not in text
    partial = render_markdown("d", records, aggregate(records), [], [], "c", 60, None, ["DIN (leave_one_out)"])
    assert "**Not in these tables** (asked for, no finished run in `d-runs/`): DIN (leave_one_out)." in partial


def test_cost_measured_alone_comes_from_the_epoch_speed_file(tmp_path):
    """``benchmarks/epoch_speed.py --json`` rows (idle ones only) in the report, relative to MIND at the same threads."""
    from mind_recbole.compare.report import read_alone_speed

    speed = {"command": "python benchmarks/epoch_speed.py --recipes", "date": "2026-12-02T11:00", "cpus": 2, "epochs": 1,
             "rows": [{"model": "YouTubeDNN", "setting": "passive", "machine": "idle", "threads": 2, "seconds_per_epoch": 16.0},
                      {"model": "MIND", "setting": "passive", "machine": "idle", "threads": 2, "seconds_per_epoch": 24.0},
                      {"model": "MIND", "setting": "passive", "machine": "beside 1 busy", "threads": 2, "seconds_per_epoch": 99.0},
                      {"model": "SASRec", "setting": "one-thread", "machine": "idle", "threads": 1, "seconds_per_epoch": 50.0}]}
    path = tmp_path / "d-epoch-speed.json"
    path.write_text(json.dumps(speed))
    assert read_alone_speed(tmp_path / "absent.json") is None
    records = [record("MIND", 1, 0.2)]
    text = render_markdown("d", records, aggregate(records), [], [], "c", 60, None, alone_speed=read_alone_speed(path))
    assert "**measured alone** (nothing else running; `python benchmarks/epoch_speed.py --recipes`; 2026-12-02T11:00" in text
    assert "| SASRec | 1 | 50.0 | - |\n| YouTubeDNN | 2 | 16.0 | 0.67x |\n| MIND | 2 | 24.0 | 1.00x |" in text
    assert "99.0" not in text  # a run beside a busy process is not "alone"
    assert "measured alone" not in render_markdown("d", records, aggregate(records), [], [], "c", 60, None)


def test_protocols_without_a_place_for_a_model_show_n_a_and_say_why():
    records = [record("MIND", 1, 0.2), record("DIN", 1, 0.8, protocol="sampled"), record("EASE", 1, 0.3),
               record("MIND", 1, 0.05, "multi_interest", "multi_interest")]
    text = render_markdown("d", records, aggregate(records), [], [], "c", 60, None)
    full = text.split("## Leave-one-out, full ranking")[1].split("##")[0]
    assert "| EASE | 0.3000 | 0.1500 |" in full and "| DIN | n/a | n/a |" in full
    assert "n/a: DIN: scores given (user, item) pairs: cannot rank the catalogue." in full
    multi = text.split("## Multi-interest protocol (ComiRec)")[1].split("##")[0]
    assert "| EASE | n/a | n/a |" in multi and "| DIN | n/a | n/a |" in multi
    assert "EASE: scores users by their row of the training matrix: held-out users have none" in multi
    sampled = text.split("## Leave-one-out, target among 100 sampled negatives")[1].split("##")[0]
    assert "n/a" not in sampled  # every model ranks sampled negatives
    assert "ItemKNN and EASE are n/a: RecBole's implementations score a user by the user's row" in text


def test_paired_tests_are_rendered_per_protocol_with_n_a_for_runs_without_per_user_values():
    records = [record("MIND", 1, 0.2), record("Pop", 1, 0.1), record("SASRec", 1, 0.19)]
    paired = [PairRow("full", "Pop", "recall@50", PairedTest(0.1, 0.08, 0.12, 2 / 10_001, 3e-9, 22_363)),
              PairRow("full", "SASRec", "recall@50", note="n/a (run predates per-user results: SASRec seed 1)"),
              PairRow("full", "SINE", "recall@50", PairedTest(0.01, -0.02, 0.04, 0.5, 0.4, 22_363),
                      note="left out, run predates per-user results: SINE seed 1")]
    text = render_markdown("d", records, aggregate(records), [], [], "c", 60, None, paired=paired)
    section = text.split("## Paired tests: MIND against each model")[1].split("## Training cost")[0]
    assert "### Leave-one-out, full ranking" in section and "10,000 resamples" in section
    assert "| MIND vs Pop | recall@50 | +0.1000 | [+0.0800, +0.1200] | 2.0e-04 | 3.0e-09 | 22,363 |" in section
    assert "| MIND vs SASRec | recall@50 | n/a (run predates per-user results: SASRec seed 1) | | | | |" in section
    assert "| MIND vs SINE (left out, run predates per-user results: SINE seed 1) | recall@50 | +0.0100 |" in section


def test_summary_says_where_mind_stands_with_the_paired_test_and_its_diagnostics():
    records = [record("MIND", 1, 0.20), record("MIND", 2, 0.22), record("SASRec", 1, 0.10), record("SASRec", 2, 0.12),
               record("YouTubeDNN", 1, 0.05),
               record("MIND", 1, 0.05, "multi_interest", "multi_interest"),
               record("YouTubeDNN", 1, 0.07, "multi_interest", "multi_interest"),
               record("Pop", 1, 0.01, "multi_interest", "multi_interest")]
    records[4].diagnostics.update({"categories@50": 4.3})
    records[0].diagnostics.update({"categories@50": 4.0})
    records[1].diagnostics.update({"categories@50": 4.2})
    paired = [PairRow("full", "SASRec", "recall@50", PairedTest(0.1, 0.08, 0.12, 2 / 10_001, 3e-9, 22_363)),
              PairRow("multi_interest", "YouTubeDNN", "recall@50",
                      note="n/a (run predates per-user results: YouTubeDNN seed 1)")]
    text = render_markdown("d", records, aggregate(records), [], [], "c", 60, None, paired=paired)
    summary = text.split("## Summary")[1].split("##")[0]
    assert ("- Full ranking (leave-one-out): MIND is first in recall@50 (0.2100 against SASRec's 0.1100, +0.1000), "
            "more than the sum of their seed std (0.0283); paired test p = 2.0e-04 (bootstrap, 22,363 users).") in summary
    assert ("- Multi-interest protocol (held-out users): MIND is **not first**: 2nd of 3 in recall@50 (0.0500 against "
            "YouTubeDNN's 0.0700, -0.0200); no paired test (run predates per-user results: YouTubeDNN seed 1).") in summary
    assert "mean pairwise cosine of 0.500" in summary
    assert "Categories in the top-50 list: MIND 4.100, YouTubeDNN 4.300 (not more diverse" in summary
    leader_line = text.split("## Leave-one-out, full ranking")[1].split("##")[0]
    assert "paired test p = 2.0e-04" in leader_line
    assert "## Summary" not in render_markdown("d", [r.without_test() for r in records[:2]],
                                               aggregate([r.without_test() for r in records[:2]], validation_results),
                                               [], [], "c", 60, None, valid_only=True)


def test_config_files_of_runs_from_another_checkout_are_shown_once_by_their_project_path(tmp_path, monkeypatch):
    checkouts = {}
    for name, learning_rate in [("main", 0.01), ("worktree", 0.01), ("other", 0.003)]:
        root = tmp_path / name
        (root / "configs").mkdir(parents=True)
        (root / "pyproject.toml").write_text("")
        (root / "configs" / "d.yaml").write_text(f"learning_rate: {learning_rate}\n")
        checkouts[name] = root / "configs" / "d.yaml"
    monkeypatch.chdir(tmp_path / "main")
    same = config_sections([checkouts["main"], checkouts["worktree"], "configs/d.yaml"])
    assert same == [("configs/d.yaml", "learning_rate: 0.01\n")]
    differing = config_sections([checkouts["main"], checkouts["other"]])
    assert differing == [(str(checkouts["main"]), "learning_rate: 0.01\n"),
                         (str(checkouts["other"]), "learning_rate: 0.003\n")]
    gone = tmp_path / "removed" / "configs" / "d.yaml"
    assert config_sections([gone]) == [(str(gone), None)]
    runs = [record("MIND", 1, 0.2)]
    runs[0].config_files = [str(checkouts["worktree"]), str(gone)]
    text = render_markdown("d", runs, aggregate(runs), ["configs/d.yaml"], [], "c", 60, None)
    configuration = text.split("## Configuration")[1]
    assert configuration.count("`configs/d.yaml`:") == 1 and str(tmp_path / "worktree") not in configuration
    assert f"`{gone}`:\n\n(no longer on disk)" in configuration
    recipe = plugin_default_files("MIND")[-1].read_text().rstrip()  # MIND's defaults come first, in full
    assert configuration.index("`mind_recbole/properties/model/MIND.yaml`:") < configuration.index("`configs/d.yaml`:")
    assert recipe in configuration


def test_validation_report_shows_best_validation_only():
    records = [record("MIND", 1, 0.2).without_test(), record("DIN", 1, 0.8, protocol="sampled").without_test(),
               record("MIND", 1, 0.05, "multi_interest", "multi_interest").without_test()]
    assert validation_results(records[1]) == {"valid_sampled": {"recall@50": 0.81}}  # DIN validates on sampled
    table = aggregate(records, validation_results)
    assert set(table) == {"valid_full", "valid_sampled", "valid_multi_interest"}
    text = render_markdown("d", records, table, [], [], "c", 60, None, valid_only=True)
    assert text.startswith("# d: MIND against the baselines, validation only")
    assert "## Validation split, best epoch: leave-one-out, full ranking" in text
    assert "| MIND | 0.2100 |" in text and "0.2000" not in text  # the best validation, never the test result
    assert "Interest diagnostics" not in text and "all of them in `d-valid.json`" in text


def test_missing_runs_name_the_seeds_left_when_some_ran():
    plan = run_plan(["MIND", "Pop"], ["leave_one_out", "multi_interest"], 3)
    done = {("MIND", 2020, "leave_one_out"), ("Pop", 2020, "multi_interest")}
    assert missing_runs(plan, done) == [
        "MIND (leave_one_out seeds 2021, 2022)", "Pop (leave_one_out)", "MIND (multi_interest)"]
    assert missing_runs(plan, done | {("MIND", 2022, "leave_one_out")})[0] == "MIND (leave_one_out seed 2021)"
    assert missing_runs(plan, set(plan)) == []


def test_seeds_go_to_the_contenders_and_one_to_every_other_model():
    plan = run_plan(["MIND", "Pop", "EASE", "DIN"], ["leave_one_out", "multi_interest"], seeds=3)
    assert plan == [
        ("MIND", 2020, "leave_one_out"), ("MIND", 2021, "leave_one_out"), ("MIND", 2022, "leave_one_out"),
        ("Pop", 2020, "leave_one_out"), ("EASE", 2020, "leave_one_out"), ("DIN", 2020, "leave_one_out"),
        ("MIND", 2020, "multi_interest"), ("MIND", 2021, "multi_interest"), ("MIND", 2022, "multi_interest"),
        ("Pop", 2020, "multi_interest"),  # EASE and DIN have no place in the multi-interest protocol
    ]
    assert run_plan(["MIND", "Pop"], ["leave_one_out"], seeds=2, base_seed=7, seed_models=["Pop"]) == [
        ("MIND", 7, "leave_one_out"), ("Pop", 7, "leave_one_out"), ("Pop", 8, "leave_one_out")]
    assert {"MIND", "YouTubeDNN", "SASRec", "SINE", "ComiRecSA", "ComiRecDR"} == set(SEED_SWEEP_MODELS)


def test_config_hash_follows_settings_and_overrides_not_comments(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 1\n")
    first = config_hash("MIND", "d", 1, "leave_one_out", [config], {})
    assert config_hash("MIND", "d", 1, "leave_one_out", [config], {}) == first
    assert config_hash("MIND", "d", 1, "leave_one_out", [config], {"epochs": 2}) != first
    assert config_hash("MIND", "d", 1, "leave_one_out", [config], {"torch_threads": 1, "state": "INFO"}) == first
    assert config_hash("MIND", "d", 2, "leave_one_out", [config], {}) != first
    config.write_text("# a comment\nepochs:   1   # the same setting\n")
    assert config_hash("MIND", "d", 1, "leave_one_out", [config], {}) == first
    config.write_text("epochs: 2\n")
    assert config_hash("MIND", "d", 1, "leave_one_out", [config], {}) != first


SMALL = {
    "epochs": 1, "MAX_ITEM_LIST_LENGTH": 20, "embedding_size": 16, "num_negatives": 64, "train_batch_size": 512,
    "state": "WARNING", "use_gpu": False,
}


def test_plot_gives_each_model_one_colour_in_every_panel():
    records = [record("MIND", 1, 0.2), record("Pop", 1, 0.1), record("DIN", 1, 0.8, protocol="sampled"),
               record("MIND", 1, 0.9, protocol="sampled")]
    colors = model_colors(aggregate(records))
    assert colors == {"DIN": "C0", "MIND": "C1", "Pop": "C2"}  # MIND keeps C1 in the panel without DIN too


def test_markdown_names_the_data_fingerprint():
    fingerprinted = [record("MIND", 1, 0.2), record("Pop", 1, 0.1)]
    for run in fingerprinted:
        run.data_fingerprint = "0123abcd0123abcd"
    text = render_markdown("d", fingerprinted, aggregate(fingerprinted), [], [], "c", 60, None)
    assert "Atomic files: SHA-256 `0123abcd0123abcd` (2 runs)." in text


INTER = "user_id:token\titem_id:token\ttimestamp:float\nu1\ti1\t10\nu1\ti2\t10\nu2\ti1\t20\n"


def test_data_fingerprint_follows_the_atomic_files_and_nothing_else(tmp_path):
    (tmp_path / "d.inter").write_text(INTER)
    first = data_fingerprint(tmp_path, "d")
    assert len(first) == 16 and data_fingerprint(tmp_path, "d") == first
    (tmp_path / "d.bad_lines.txt").write_text("line 3: not JSON\n")  # converter reports are not training data
    assert data_fingerprint(tmp_path, "d") == first
    lines = INTER.splitlines(keepends=True)
    (tmp_path / "d.inter").write_text("".join([lines[0], lines[2], lines[1], lines[3]]))  # two same-day reviews swapped
    swapped = data_fingerprint(tmp_path, "d")
    assert swapped != first
    (tmp_path / "d.item").write_text("item_id:token\tbrand:token\ni1\tb\n")
    assert data_fingerprint(tmp_path, "d") not in (first, swapped)
    with pytest.raises(FileNotFoundError, match=r"other\.inter: no such file"):
        data_fingerprint(tmp_path, "other")


@pytest.mark.parametrize(
    "stored, message_end",
    [("current", "reused {path}"),
     (None, "stale: trained on other data files (fingerprint None, now {now}), left out"),
     ("0000000000000000", "stale: trained on other data files (fingerprint 0000000000000000, now {now}), left out")],
)
def test_cached_runs_are_reused_only_on_the_files_they_were_trained_on(tmp_path, stored, message_end):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "d.inter").write_text(INTER)
    now = data_fingerprint(tmp_path / "d", "d")
    overrides = {"data_path": str(tmp_path)}
    files = [str(f) for f in model_config_files("d", "Pop", tmp_path)]
    run = record("Pop", 2020, 0.1)
    run.config_hash = config_hash("Pop", "d", 2020, "leave_one_out", files, overrides)
    run.data_fingerprint = now if stored == "current" else stored
    path = tmp_path / "out" / "d-runs" / "Pop-leave_one_out-seed2020.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(run.to_json()))
    messages = []
    records = collect_runs("d", ["Pop"], seeds=1, out=tmp_path / "out", groups=["leave_one_out"], overrides=overrides,
                      config_dir=tmp_path, log=messages.append, report_only=True)
    assert messages == [f"[1/1] Pop leave_one_out seed 2020: {message_end.format(path=path, now=now)}"]
    assert len(records) == (0 if "stale" in message_end else 1)


@pytest.mark.slow
def test_compare_end_to_end_on_beauty_mini(beauty_mini_path, tmp_path, monkeypatch):
    from mind_recbole.compare import compare

    monkeypatch.chdir(tmp_path)  # RecBole writes saved/ and log/ into the working directory
    messages = []
    overrides = {**SMALL, "data_path": str(beauty_mini_path), "checkpoint_dir": str(tmp_path / "saved")}
    models = ["MIND", "DIN", "Pop", "ItemKNN", "EASE"]
    paths = compare(
        "amazon-beauty-mini", models, [AMAZON_CONFIG], seeds=1, out=tmp_path / "results",
        overrides=overrides, log=messages.append,
    )
    payload = json.loads(paths["json"].read_text())
    protocols = payload["protocols"]
    assert set(protocols["full"]) == {"MIND", "Pop", "ItemKNN", "EASE"}  # DIN cannot rank the catalogue
    assert set(protocols["sampled"]) == set(models)
    assert set(protocols["multi_interest"]) == {"MIND", "Pop"}  # nor can ItemKNN and EASE score held-out users
    for protocol, by_model in protocols.items():
        for model, metrics in by_model.items():
            assert 0.0 <= metrics["recall@50"] <= 1.0, (protocol, model)
    assert protocols["full"]["MIND"]["recall@50"] == protocols["full"]["MIND"]["hit@50"]  # one target per user
    assert protocols["sampled"]["Pop"]["recall@50"] > protocols["full"]["Pop"]["recall@50"]  # 101 candidates
    runs = {(r["model"], r["group"]): r for r in payload["runs"]}
    assert runs[("MIND", "leave_one_out")]["diagnostics"]["interests"] >= 1.0
    assert runs[("MIND", "multi_interest")]["diagnostics"]["test_users"] > 0
    text = paths["md"].read_text()
    assert "## Multi-interest protocol (ComiRec)" in text and "| users | 1,137 |" in text
    assert "| EASE | n/a | n/a | n/a | n/a | n/a | n/a |" in text
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"

    for run in payload["runs"]:  # each user's values average to the run's reported numbers
        name = f"{run['model']}-{run['group']}-seed{run['seed']}.users.npz"
        with np.load(tmp_path / "results" / "amazon-beauty-mini-runs" / name) as users:
            assert str(users["config_hash"]) == run["config_hash"]
            for protocol, metrics in run["results"].items():
                count = 1137 if run["group"] == "leave_one_out" else run["diagnostics"]["test_users"]
                assert len(set(users[f"{protocol}.users"])) == count
                for metric, value in metrics.items():  # RecBole rounds to 4 decimals
                    assert users[f"{protocol}.{metric}"].mean() == pytest.approx(value, abs=5e-5), (name, metric)
    pairs = {(row["protocol"], row["model"], row["metric"]): row for row in payload["paired_tests"]}
    assert {(p, m) for p, m, _ in pairs} == {
        *(("full", m) for m in ("Pop", "ItemKNN", "EASE")), *(("sampled", m) for m in ("DIN", "Pop", "ItemKNN", "EASE")),
        ("multi_interest", "Pop")}
    pop = pairs[("full", "Pop", "recall@50")]["test"]
    mind_minus_pop = protocols["full"]["MIND"]["recall@50"] - protocols["full"]["Pop"]["recall@50"]
    assert pop["users"] == 1137 and pop["mean_difference"] == pytest.approx(mind_minus_pop, abs=1e-4)
    assert 0 < pop["p_bootstrap"] <= 1 and pop["ci_low"] <= pop["mean_difference"] <= pop["ci_high"]

    messages.clear()
    compare("amazon-beauty-mini", models, [AMAZON_CONFIG], seeds=1, out=tmp_path / "results",
                   overrides=overrides, log=messages.append)
    assert sum("reused" in m for m in messages) == 7 and not any(": training" in m for m in messages)
    assert not any("not recorded" in m for m in messages)
    assert {r["data_fingerprint"] for r in payload["runs"]} == {data_fingerprint(beauty_mini_path / "amazon-beauty-mini", "amazon-beauty-mini")}
