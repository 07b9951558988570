"""``mind-recbole compare`` resumes a run stopped part-way from its last checkpoint (tested through the command)."""

import json
from dataclasses import replace

import numpy as np
import pytest

from mind_recbole.compare import progress as run_progress
from mind_recbole.compare.progress import PartialRun, partial_path, read_partial, write_partial
from mind_recbole.compare.runner import PROTOCOL_GROUPS
from mind_recbole.trainer import MindTrainerMixin
from tests.test_compare_cache import compare


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
    # written before partial runs kept the model's defaults: not checked against them
    assert read_partial(path, "h", "f", "d1")[0] is not None

    write_partial(path, replace(partial(checkpoint, epoch=1), defaults_hash="d1"))
    assert read_partial(path, "h", "f", "d1")[0] is not None
    assert read_partial(path, "h", "f", "d2") == (
        None, f"{path}: the model's defaults changed (mind_recbole/properties)")

    write_partial(path, partial(checkpoint, epoch=2, epochs=3))
    assert read_partial(path, "h", "f") == (
        None, f"{path}: its checkpoint is the last epoch's (the run stopped while testing)")
    write_partial(path, partial(tmp_path / "gone.pth"))
    assert read_partial(path, "h", "f") == (None, f"{path}: its checkpoint {tmp_path / 'gone.pth'} is gone")
    path.write_text('{"epoch": 1}')
    resumed, why_not = read_partial(path, "h", "f")
    assert resumed is None and why_not.startswith(f"{path} is unreadable (")
    assert not list(tmp_path.glob(".*tmp*"))  # written under a temporary name, then renamed


@pytest.mark.slow
@pytest.mark.parametrize("group", PROTOCOL_GROUPS)
def test_a_run_stopped_after_its_second_epoch_resumes_there_and_ends_as_an_uninterrupted_one(
    workdir, capsys, monkeypatch, group
):
    epochs_run = []
    train_epoch = MindTrainerMixin._train_epoch

    def recording(self, train_data, epoch_idx, *args, **kwargs):
        epochs_run.append(epoch_idx)
        return train_epoch(self, train_data, epoch_idx, *args, **kwargs)

    monkeypatch.setattr(MindTrainerMixin, "_train_epoch", recording)

    def run(out):
        epochs_run.clear()
        # learning rate 0.01: every validation of this tiny MIND improves, so each epoch writes a checkpoint
        return compare(workdir, capsys, "--epochs=4", "--learning_rate=0.01", models="MIND", protocols=group, out=out)

    def run_files(out):
        path = workdir / out / "amazon-beauty-mini-runs" / f"MIND-{group}-seed2020.json"
        return path, path.with_name(f"{path.stem}.partial.json"), path.with_name(f"{path.stem}.users.npz")

    assert run("whole")[0] == 0 and epochs_run == [0, 1, 2, 3]
    whole_file, _, whole_users = run_files("whole")
    uninterrupted = json.loads(whole_file.read_text())

    save = run_progress.RunProgress.save

    def save_then_stop(self, checkpoint, epoch, *args):
        save(self, checkpoint, epoch, *args)
        if epoch == 1:  # killed right after the second epoch's checkpoint
            raise KeyboardInterrupt

    monkeypatch.setattr(run_progress.RunProgress, "save", save_then_stop)
    status, lines = run("parts")
    assert (status, lines[-1]) == (130, "mind-recbole compare: interrupted") and epochs_run == [0, 1]
    monkeypatch.setattr(run_progress.RunProgress, "save", save)
    run_file, partial_file, users_file = run_files("parts")
    stopped = json.loads(partial_file.read_text())
    assert stopped["epoch"] == 1 and len(stopped["valid_scores"]) == len(stopped["epoch_seconds"]) == 2
    assert not run_file.exists() and not users_file.exists()

    status, lines = run("parts")
    assert status == 0 and epochs_run == [2, 3]  # only the epochs after the checkpoint
    assert lines[0] == (f"[1/1] MIND {group} seed 2020: resuming from {stopped['checkpoint']} "
                        f"(epochs 0-1 done, {stopped['wall_seconds'] / 60:.1f} min)")
    resumed = json.loads(run_file.read_text())
    for key in ("valid_scores", "best_valid", "results", "diagnostics"):
        assert resumed[key] == uninterrupted[key], key  # as if never stopped
    assert len(resumed["epoch_seconds"]) == 4 and resumed["epoch_seconds"][:2] == stopped["epoch_seconds"]
    assert resumed["wall_seconds"] > stopped["wall_seconds"]
    assert resumed["saved_model_file"] == stopped["checkpoint"]
    assert not partial_file.exists()  # the run is finished: its result replaces the partial file
    with np.load(users_file) as after, np.load(whole_users) as before:
        assert sorted(after.files) == sorted(before.files)
        assert all(np.array_equal(after[name], before[name]) for name in before.files)
