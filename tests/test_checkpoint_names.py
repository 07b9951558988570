"""Checkpoint names of ``mind_recbole.quick_start``: one per run (a resumed run writes the file it resumed)."""

from pathlib import Path

from mind_recbole.checkpoints import reserve_checkpoint_file


def test_runs_started_in_the_same_second_get_their_own_checkpoint(tmp_path):
    recbole_name = str(tmp_path / "MIND-Dec-01-2026_01-34-33.pth")  # RecBole's name: model and local time
    first, second = reserve_checkpoint_file(recbole_name), reserve_checkpoint_file(recbole_name)
    assert first != second and Path(first).is_file() and Path(second).is_file()
    assert Path(first).name.startswith("MIND-Dec-01-2026_01-34-33-") and first.endswith(".pth")

