"""A run that cannot succeed fails early with one clear error and leaves nothing half-made: no
training on zero epochs, no crash at the first validation, no empty checkpoint, no partial export."""

import sys
from pathlib import Path

import pytest

from mind_recbole import cli
from mind_recbole.config import ConfigValueError
from mind_recbole.training import build_config
from tests.conftest import train_tiny_checkpoint


@pytest.fixture
def no_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


@pytest.fixture(scope="module")
def synthetic_path(synthetic_amazon, tmp_path_factory):
    """A data_path holding the synthetic Amazon-format set as dataset ``amazon-syn`` (111 items)."""
    from mind_recbole.data.amazon import convert_amazon

    reviews, meta = synthetic_amazon
    data_path = tmp_path_factory.mktemp("synthetic-datasets")
    convert_amazon(reviews, "amazon-syn", meta=meta, data_path=data_path, show_progress=False)
    return data_path


@pytest.mark.parametrize("overrides, message", [
    ({"epochs": 0}, "'epochs' in config_dict is 0; it must be at least 1"),
    ({"train_batch_size": -5}, "'train_batch_size' in config_dict is -5; it must be at least 1"),
    ({"epochs": 2.5}, "'epochs' in config_dict is 2.5, but it takes an integer"),
    ({"learning_rate": "fast"}, "'learning_rate' in config_dict is 'fast', but it takes a number"),
    ({"reproducibility": "yes"}, "'reproducibility' in config_dict is 'yes', but it takes a bool"),
])
def test_a_value_of_the_wrong_type_or_range_is_named_before_anything_runs(overrides, message, no_argv):
    with pytest.raises(ConfigValueError) as error:
        build_config("MIND", "ml-100k", config_dict={"use_gpu": False, **overrides})
    assert message in str(error.value)


def test_fractions_stay_allowed_where_the_default_is_a_number(no_argv):
    config = build_config("MIND", "ml-100k", config_dict={"use_gpu": False, "learning_rate": 1, "dropout_prob": 0})
    assert config["learning_rate"] == 1 and config["dropout_prob"] == 0


def test_a_cutoff_above_the_catalogue_fails_before_training_and_leaves_no_checkpoint(synthetic_path, tmp_path):
    with pytest.raises(ValueError, match=r"topk \[500\] is larger than the 111 items of dataset 'amazon-syn'"):
        train_tiny_checkpoint("MIND", synthetic_path, tmp_path, dataset="amazon-syn", topk=[50, 500])
    assert not (tmp_path / "saved").exists() or list((tmp_path / "saved").iterdir()) == []


@pytest.mark.parametrize("overrides, message", [
    ({"topk": [10]}, "valid_metric 'Recall@50' is not computed: metrics are at topk [10]"),
    ({"metrics": ["NDCG"]}, "valid_metric 'Recall@50' is not computed: metrics are ['NDCG']"),
    ({"metrics": "[Recall]"}, "metrics: unknown ['[Recall]']; RecBole's metrics are auc,"),
])
def test_a_valid_metric_that_is_not_computed_fails_before_training(overrides, message, synthetic_path, tmp_path):
    with pytest.raises(ValueError) as error:
        train_tiny_checkpoint("MIND", synthetic_path, tmp_path, dataset="amazon-syn", **overrides)
    assert message in str(error.value)


def test_training_that_fails_leaves_no_empty_checkpoint(synthetic_path, tmp_path, monkeypatch):
    from mind_recbole.model.mind import MIND

    def failing_loss(self, interaction):
        raise RuntimeError("loss exploded")

    monkeypatch.setattr(MIND, "calculate_loss", failing_loss)
    with pytest.raises(RuntimeError, match="loss exploded"):
        train_tiny_checkpoint("MIND", synthetic_path, tmp_path, dataset="amazon-syn")
    assert (tmp_path / "saved").is_dir() and list((tmp_path / "saved").iterdir()) == []


def test_a_run_that_saves_nothing_leaves_no_empty_checkpoint(synthetic_path, tmp_path):
    """``saved=False`` (benchmarks/epoch_speed.py, tuning) once left its reserved name behind, 0 bytes."""
    assert train_tiny_checkpoint("MIND", synthetic_path, tmp_path, dataset="amazon-syn", saved=False) is None
    assert (tmp_path / "saved").is_dir() and list((tmp_path / "saved").iterdir()) == []


@pytest.fixture(scope="module")
def pop_checkpoint(synthetic_path, tmp_path_factory):
    return train_tiny_checkpoint("Pop", synthetic_path, tmp_path_factory.mktemp("pop"), dataset="amazon-syn")


def test_export_of_a_model_without_interests_is_one_line_and_writes_nothing(pop_checkpoint, tmp_path, capsys):
    out = tmp_path / "export"
    assert cli.main(["export", "--checkpoint", str(pop_checkpoint), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mind-recbole export: error: cannot export a Pop model: export takes a checkpoint of an interest model")
    assert "Traceback" not in err and not out.exists()


def test_export_out_that_is_a_file_is_named_and_left_alone(pop_checkpoint, tmp_path, capsys, monkeypatch):
    from export import onnx_export

    monkeypatch.setattr(onnx_export, "check_exportable", lambda model: None)  # reach the --out check
    out = tmp_path / "export"
    out.write_text("keep me")
    assert cli.main(["export", "--checkpoint", str(pop_checkpoint), "--out", str(out)]) == 2
    assert f"--out {out}: exists and is not a folder" in capsys.readouterr().err
    assert out.read_text() == "keep me"


def test_an_export_that_fails_parity_keeps_the_previous_export(mind_export, tmp_path, monkeypatch):
    import shutil

    from export import onnx_export
    from export.onnx_export import ParityError, export_model

    model_dir, model, dataset, _ = mind_export
    out = tmp_path / "model"
    shutil.copytree(model_dir, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_check = onnx_export.check_parity
    with monkeypatch.context() as patch:  # a tolerance no difference can meet: the check fails
        patch.setattr(onnx_export, "check_parity", lambda path, m, **kw: real_check(path, m, **{**kw, "atol": -1.0, "rtol": 0.0}))
        with pytest.raises(ParityError):
            export_model(model, dataset, out, checkpoint=Path("x.pth"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no staging folder left
    fresh = export_model(model, dataset, tmp_path / "new", checkpoint=Path("x.pth"))
    assert fresh.out_dir == tmp_path / "new" and all(Path(f).parent == fresh.out_dir for f in fresh.files)
    assert all(Path(f).is_file() for f in fresh.files) and fresh.parity.passed


def test_export_never_replaces_a_folder_holding_other_files(mind_export, tmp_path, capsys):
    out = tmp_path / "home"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert cli.main(["export", "--checkpoint", str(tmp_path / "missing.pth"), "--out", str(out)]) == 2
    capsys.readouterr()
    from export.onnx_export import export_model

    _, model, dataset, _ = mind_export
    with pytest.raises(FileExistsError, match=r"holds files that are not part of an export \(notes\.txt\)"):
        export_model(model, dataset, out)
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "precious"
