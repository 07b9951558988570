"""Checkpoint names of ``mind_recbole.quick_start``: one per run, reserved by rank 0 and released on resume."""

from pathlib import Path

from mind_recbole.quick_start import release_checkpoint_file, reserve_checkpoint_file


def test_runs_started_in_the_same_second_get_their_own_checkpoint(tmp_path):
    recbole_name = str(tmp_path / "MIND-Dec-01-2026_01-34-33.pth")  # RecBole's name: model and local time
    first, second = reserve_checkpoint_file(recbole_name), reserve_checkpoint_file(recbole_name)
    assert first != second and Path(first).is_file() and Path(second).is_file()
    assert Path(first).name.startswith("MIND-Dec-01-2026_01-34-33-") and first.endswith(".pth")


def test_only_rank_0_releases_the_reserved_checkpoint_name_of_a_resumed_run(tmp_path):
    reserved, resumed = reserve_checkpoint_file(str(tmp_path / "MIND.pth")), str(tmp_path / "MIND-resumed.pth")
    rank_1 = {"single_spec": False, "local_rank": 1, "offset": 0}
    release_checkpoint_file(rank_1, reserved, resumed)
    assert Path(reserved).is_file()  # rank 0's name: removing it on every rank raced (CI: FileNotFoundError)
    release_checkpoint_file({**rank_1, "local_rank": 0}, reserved, reserved)
    assert Path(reserved).is_file()  # the run still writes it
    release_checkpoint_file({**rank_1, "local_rank": 0}, reserved, resumed)
    assert not Path(reserved).exists()
    release_checkpoint_file({"single_spec": True}, reserved, resumed)  # gone already: nothing to do


def test_a_reserved_name_holding_a_checkpoint_is_never_released(tmp_path):
    written = tmp_path / "MIND-written.pth"
    written.write_bytes(b"weights")
    release_checkpoint_file({"single_spec": True}, str(written), str(tmp_path / "MIND-resumed.pth"))
    assert written.read_bytes() == b"weights"
