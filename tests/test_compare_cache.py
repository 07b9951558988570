"""The comparison's cache rules, through the ``mind-recbole compare`` command itself: a second
identical call reuses, ``--rerun``, a changed setting, a changed default of the model and
re-prepared data retrain, and ``--valid-only`` never evaluates the test split and is never taken
for a tested run."""

import json
import shutil

import pytest

from mind_recbole import cli, config_files
from mind_recbole.compare import runner
from tests.conftest import AMAZON_CONFIG

DATASET = "amazon-beauty-mini"
TINY = ["--epochs=2", "--MAX_ITEM_LIST_LENGTH=20", "--embedding_size=16", "--num_negatives=64",
        "--train_batch_size=512", "--state=WARNING", "--use_gpu=False", "--torch_threads=1"]


@pytest.fixture
def trainings(monkeypatch):
    """``(model, group)`` of every training started, in order."""
    started = []
    train = runner._train

    def counting(config, *args, **kwargs):
        started.append((config["model"], kwargs.get("group", "leave_one_out")))
        return train(config, *args, **kwargs)

    monkeypatch.setattr(runner, "_train", counting)
    return started


def compare(workdir, capsys, *arguments, models="Pop", protocols="leave_one_out", configs=(AMAZON_CONFIG,),
            out="results"):
    """Run ``mind-recbole compare`` on the copy (``arguments`` after :data:`TINY`: they win); its exit
    status and printed lines."""
    command = ["compare", "--dataset", DATASET, "--models", models, "--protocols", protocols,
               "--out", str(workdir / out), f"--data_path={workdir / 'data'}",
               f"--checkpoint_dir={workdir / 'saved'}", *TINY, *arguments]
    for config in configs:
        command += ["--config", str(config)]
    capsys.readouterr()
    status = cli.main(command)
    captured = capsys.readouterr()
    return status, captured.out.splitlines() + captured.err.splitlines()


@pytest.mark.slow
def test_compare_reuses_a_run_until_rerun_or_its_settings_or_data_change(workdir, capsys, trainings):
    extra = workdir / "extra.yaml"
    extra.write_text("stopping_step: 5  # patience\n")
    configs = (AMAZON_CONFIG, extra)
    run_file = workdir / "results" / f"{DATASET}-runs" / "Pop-leave_one_out-seed2020.json"
    users_file = run_file.with_name("Pop-leave_one_out-seed2020.users.npz")

    def compare_and_count(*arguments):
        before = len(trainings)
        status, lines = compare(workdir, capsys, *arguments, configs=configs)
        assert status == 0, lines
        return len(trainings) - before, lines

    assert compare_and_count()[0] == 1
    assert users_file.is_file() and (workdir / "results" / f"{DATASET}.md").is_file()
    written = run_file.stat().st_mtime_ns
    trained, lines = compare_and_count()
    assert trained == 0 and f"[1/1] Pop leave_one_out seed 2020: reused {run_file}" in lines
    assert run_file.stat().st_mtime_ns == written

    assert compare_and_count("--rerun")[0] == 1
    assert compare_and_count("--stopping_step=4")[0] == 1  # an override changes the run's settings
    assert compare_and_count("--stopping_step=4")[0] == 0
    assert compare_and_count()[0] == 1  # and back
    extra.write_text("# the patience\nstopping_step:   5\n")  # layout and comments: the same settings
    assert compare_and_count()[0] == 0
    extra.write_text("stopping_step: 6\n")
    trained, lines = compare_and_count()
    assert trained == 1 and any(line.startswith("[1/1] Pop leave_one_out seed 2020: training") for line in lines)

    inter = workdir / "data" / DATASET / f"{DATASET}.inter"
    inter.touch()  # a newer file with the same bytes: the same data
    assert compare_and_count()[0] == 0
    header, first, second, *rest = inter.read_text().splitlines(keepends=True)
    inter.write_text("".join([header, second, first, *rest]))  # re-prepared: two lines in another order
    status, lines = compare(workdir, capsys, "--report-only", configs=configs)
    assert status == 2 and lines[-1].endswith("nothing to report")  # the one run no longer counts
    assert lines[0].startswith("[1/1] Pop leave_one_out seed 2020: stale: trained on other data files")
    assert compare_and_count()[0] == 1


class PoisonedTestSplit:
    """Stands for the test split in a valid-only comparison: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"--valid-only used the test split ({name})")

    def __iter__(self):
        raise AssertionError("--valid-only iterated over the test split")

    def __len__(self):
        raise AssertionError("--valid-only asked the test split's size")


@pytest.mark.slow
def test_valid_only_never_touches_the_test_split_and_is_never_taken_for_a_tested_run(
    workdir, capsys, trainings, monkeypatch
):
    import recbole.data

    from mind_recbole.evaluation import multi_interest

    data_preparation, split_users = recbole.data.data_preparation, multi_interest.split_users

    def without_test_loader(config, dataset):
        train, valid, _ = data_preparation(config, dataset)
        return train, valid, PoisonedTestSplit()

    def without_test_users(sequences, seed, *args, **kwargs):
        split = split_users(sequences, seed, *args, **kwargs)
        split.test = PoisonedTestSplit()
        return split

    with monkeypatch.context() as patch:
        patch.setattr(recbole.data, "data_preparation", without_test_loader)
        patch.setattr(multi_interest, "split_users", without_test_users)
        status, lines = compare(workdir, capsys, "--valid-only", models="MIND,Pop",
                                protocols="leave_one_out,multi_interest")
    assert status == 0, lines
    runs = workdir / "results" / f"{DATASET}-runs"
    assert sorted(p.name for p in runs.iterdir()) == [
        "MIND-leave_one_out-seed2020.valid.json", "MIND-multi_interest-seed2020.valid.json",
        "Pop-leave_one_out-seed2020.valid.json", "Pop-multi_interest-seed2020.valid.json",
    ]
    mind = json.loads((runs / "MIND-leave_one_out-seed2020.valid.json").read_text())
    assert mind["valid_only"] and mind["results"] == {} and mind["diagnostics"] == {}
    assert 0 < mind["best_valid"]["recall@50"] <= 1 and len(mind["valid_scores"]) == 2
    report = (workdir / "results" / f"{DATASET}-valid.md").read_text()
    assert "## Validation split, best epoch: leave-one-out, full ranking" in report
    assert "## Validation split, best epoch: multi-interest protocol (ComiRec)" in report
    assert "the test split was not evaluated" in report.lower() and "Paired tests" not in report
    assert not (workdir / "results" / f"{DATASET}.md").exists()

    # A full report finds no tested run: valid-only runs are not taken for them (nor shown as zeros).
    status, lines = compare(workdir, capsys, "--report-only", models="MIND,Pop", protocols="leave_one_out,multi_interest")
    assert status == 2 and lines[-1].endswith("nothing to report")

    trainings.clear()
    status, lines = compare(workdir, capsys, models="MIND,Pop", protocols="leave_one_out,multi_interest")
    assert status == 0, lines
    assert trainings == [("MIND", "leave_one_out"), ("Pop", "leave_one_out"),
                         ("MIND", "multi_interest"), ("Pop", "multi_interest")]
    tested = json.loads((runs / "MIND-leave_one_out-seed2020.json").read_text())
    assert set(tested["results"]) == {"full", "sampled"} and not tested["valid_only"]
    assert tested["best_valid"] == mind["best_valid"]  # the same training
    assert "| MIND vs Pop | recall@50 |" in (workdir / "results" / f"{DATASET}.md").read_text()

    # A valid-only comparison reuses the tested runs, without their test results.
    trainings.clear()
    status, lines = compare(workdir, capsys, "--valid-only", models="MIND,Pop", protocols="leave_one_out,multi_interest")
    assert status == 0 and trainings == []
    assert f"[1/4] MIND leave_one_out seed 2020: reused {runs / 'MIND-leave_one_out-seed2020.json'}" in lines
    payload = json.loads((workdir / "results" / f"{DATASET}-valid.json").read_text())
    assert all(run["results"] == {} and run["valid_only"] for run in payload["runs"])
    assert set(payload["protocols"]) == {"valid_full", "valid_multi_interest"}


def test_defaults_hash_follows_the_plugin_defaults_values_not_their_comments(tmp_path, monkeypatch):
    properties = tmp_path / "properties"
    shutil.copytree(config_files.PLUGIN_PROPERTIES, properties)
    monkeypatch.setattr(config_files, "PLUGIN_PROPERTIES", properties)
    defaults = properties / "model" / "YouTubeDNN.yaml"
    original = runner.defaults_hash("YouTubeDNN")
    assert original != runner.defaults_hash("MIND")  # each model its own defaults file
    assert runner.defaults_hash("Pop") == runner.defaults_hash("SASRec")  # RecBole's: the plugin's overall.yaml only

    defaults.write_text("# reformatted\n" + defaults.read_text().replace("dropout_prob: 0.1 ", "dropout_prob:   0.1"))
    assert runner.defaults_hash("YouTubeDNN") == original  # comments and layout: the same defaults
    overall = properties / "overall.yaml"
    overall.write_text(overall.read_text() + "torch_threads: 1\nstrict_config_keys: False\n")
    assert runner.defaults_hash("YouTubeDNN") == original  # runtime settings change no result
    defaults.write_text(defaults.read_text().replace("dropout_prob:   0.1", "dropout_prob: 0.2"))
    assert runner.defaults_hash("YouTubeDNN") != original


@pytest.mark.slow
def test_a_changed_default_of_the_model_retrains_its_runs(workdir, capsys, monkeypatch):
    properties = workdir / "properties"
    shutil.copytree(config_files.PLUGIN_PROPERTIES, properties)
    monkeypatch.setattr(config_files, "PLUGIN_PROPERTIES", properties)  # what MindConfig reads, and the hash
    dropouts = []
    train = runner._train

    def recording(config, *args, **kwargs):
        dropouts.append(config["dropout_prob"])
        return train(config, *args, **kwargs)

    monkeypatch.setattr(runner, "_train", recording)
    run_file = workdir / "results" / f"{DATASET}-runs" / "YouTubeDNN-leave_one_out-seed2020.json"

    def compare_and_count():
        before = len(dropouts)
        status, lines = compare(workdir, capsys, models="YouTubeDNN")
        assert status == 0, lines
        return len(dropouts) - before

    assert compare_and_count() == 1 and dropouts == [0.1]
    recorded = json.loads(run_file.read_text())["defaults_hash"]
    assert recorded == runner.defaults_hash("YouTubeDNN")
    assert compare_and_count() == 0

    defaults = properties / "model" / "YouTubeDNN.yaml"
    defaults.write_text(defaults.read_text().replace("dropout_prob: 0.1 ", "dropout_prob: 0.2 "))
    status, lines = compare(workdir, capsys, "--report-only", models="YouTubeDNN")
    assert lines[0] == ("[1/1] YouTubeDNN leave_one_out seed 2020: stale: the model's defaults changed "
                        "(mind_recbole/properties), left out")
    assert compare_and_count() == 1 and dropouts[-1] == 0.2  # retrained, with the new default
    assert json.loads(run_file.read_text())["defaults_hash"] not in ("", recorded)

    run = json.loads(run_file.read_text())
    del run["defaults_hash"]  # a run written before runs kept their defaults: not checked against them
    run_file.write_text(json.dumps(run))
    defaults.write_text(defaults.read_text().replace("dropout_prob: 0.2 ", "dropout_prob: 0.3 "))
    assert compare_and_count() == 0
