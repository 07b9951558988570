"""``mind-recbole compare`` resumes a run stopped part-way from its last checkpoint."""

import json

import pytest

from mind_recbole.compare import progress as run_progress
from mind_recbole.compare.progress import PartialRun, partial_path, read_partial, write_partial
from mind_recbole.compare.runner import PROTOCOL_GROUPS, collect_runs
from tests.conftest import AMAZON_CONFIG

OVERRIDES = {
    "epochs": 3, "MAX_ITEM_LIST_LENGTH": 20, "embedding_size": 16, "num_negatives": 64, "train_batch_size": 512,
    "state": "WARNING", "use_gpu": False,
}


def partial(checkpoint, epoch=0, epochs=3, config_hash="h", fingerprint="f"):
    return PartialRun(config_hash, fingerprint, str(checkpoint), epoch, epochs, [0.1] * (epoch + 1),
                      [2.0] * (epoch + 1), 60.0)


def test_partial_path_sits_beside_the_run_file(tmp_path):
    assert partial_path(tmp_path / "MIND-leave_one_out-seed2020.json") == (
        tmp_path / "MIND-leave_one_out-seed2020.partial.json")


def test_a_partial_run_is_resumed_only_on_its_settings_files_and_checkpoint(tmp_path):
    checkpoint = tmp_path / "MIND.pth"
    checkpoint.write_bytes(b"weights")
    path = tmp_path / "run.partial.json"
    assert read_partial(path, "h", "f") == (None, None)  # nothing to resume, nothing to say

    write_partial(path, partial(checkpoint, epoch=1))
    resumed, why_not = read_partial(path, "h", "f")
    assert why_not is None and resumed.epoch == 1 and resumed.valid_scores == [0.1, 0.1]
    assert read_partial(path, "other", "f") == (None, f"{path}: its settings changed")
    assert read_partial(path, "h", "g") == (None, f"{path}: trained on other data files (fingerprint f, now g)")

    write_partial(path, partial(checkpoint, epoch=2, epochs=3))
    assert read_partial(path, "h", "f") == (
        None, f"{path}: its checkpoint is the last epoch's (the run stopped while testing)")
    write_partial(path, partial(tmp_path / "gone.pth"))
    assert read_partial(path, "h", "f") == (None, f"{path}: its checkpoint {tmp_path / 'gone.pth'} is gone")
    path.write_text('{"epoch": 1}')
    resumed, why_not = read_partial(path, "h", "f")
    assert resumed is None and why_not.startswith(f"{path} is unreadable (")
    assert not list(tmp_path.glob(".*tmp*"))  # written under a temporary name, then renamed


class Stop(Exception):
    """Stands for the process being killed."""


@pytest.mark.slow
@pytest.mark.parametrize("group", PROTOCOL_GROUPS)
def test_a_stopped_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(
    beauty_mini_path, tmp_path, monkeypatch, group
):
    monkeypatch.chdir(tmp_path)  # RecBole writes saved/ and log/ into the working directory
    overrides = {**OVERRIDES, "data_path": str(beauty_mini_path)}

    def run(out, messages):
        return collect_runs("amazon-beauty-mini", ["MIND"], [str(AMAZON_CONFIG)], seeds=1, out=tmp_path / out,
                       groups=[group], overrides=overrides, log=messages.append)

    (uninterrupted,) = run("whole", [])
    assert len(uninterrupted.valid_scores) == 3

    save = run_progress.RunProgress.save

    def save_then_stop(self, *args):
        save(self, *args)
        raise Stop  # killed right after the first checkpoint (epoch 0's: a first validation always improves)

    monkeypatch.setattr(run_progress.RunProgress, "save", save_then_stop)
    with pytest.raises(Stop):
        run("parts", [])
    monkeypatch.setattr(run_progress.RunProgress, "save", save)
    run_dir = tmp_path / "parts" / "amazon-beauty-mini-runs"
    partial_file = run_dir / f"MIND-{group}-seed2020.partial.json"
    stopped = json.loads(partial_file.read_text())
    assert stopped["epoch"] == 0 and len(stopped["valid_scores"]) == len(stopped["epoch_seconds"]) == 1
    assert not (run_dir / f"MIND-{group}-seed2020.json").exists()

    messages = []
    (resumed,) = run("parts", messages)
    assert messages[0] == (f"[1/1] MIND {group} seed 2020: resuming from {stopped['checkpoint']} "
                           f"(epochs 0-0 done, {stopped['wall_seconds'] / 60:.1f} min)")
    assert resumed.valid_scores == uninterrupted.valid_scores  # epochs 1 and 2 trained as if never stopped
    assert resumed.best_valid == uninterrupted.best_valid
    assert resumed.results == uninterrupted.results
    assert resumed.diagnostics == uninterrupted.diagnostics
    assert len(resumed.epoch_seconds) == 3 and resumed.epoch_seconds[0] == stopped["epoch_seconds"][0]
    assert resumed.wall_seconds > stopped["wall_seconds"]
    assert resumed.saved_model_file == stopped["checkpoint"]
    assert not partial_file.exists()  # the run is finished: its result replaces the partial file
    assert json.loads((run_dir / f"MIND-{group}-seed2020.json").read_text())["valid_scores"] == resumed.valid_scores
