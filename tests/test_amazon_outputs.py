"""The files one ``prepare amazon`` writes switch together, a dropped file is reported, and the
dataset config written beside them lets ``train`` run with no config of its own."""

import errno
import os

import pytest
import yaml

from mind_recbole import cli
from mind_recbole.data import amazon
from mind_recbole.data.amazon import ConversionIOError, convert_amazon


def prepare(reviews, out, meta=None, **options):
    return convert_amazon(reviews, "syn", meta=meta, data_path=out, show_progress=False, **options)


def folder_state(folder):
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def test_the_dataset_config_names_every_written_column(synthetic_amazon, tmp_path):
    reviews, meta = synthetic_amazon
    report = prepare(reviews, tmp_path, meta=meta)
    config = yaml.safe_load(report.config_path.read_text())
    header = report.inter_path.read_text().splitlines()[0].split("\t")
    assert config["load_col"]["inter"] == [column.split(":")[0] for column in header]
    item_header = report.item_path.read_text().splitlines()[0].split("\t")
    assert config["load_col"]["item"] == [column.split(":")[0] for column in item_header]
    assert config["TIME_FIELD"] == "timestamp" and config["eval_args"]["order"] == "TO"
    assert config["item_side_fields"] == ["brand", "categories"]
    without_meta = prepare(reviews, tmp_path / "plain")
    plain = yaml.safe_load(without_meta.config_path.read_text())
    assert "item" not in plain["load_col"] and "item_side_fields" not in plain


def test_a_rerun_without_meta_says_it_removes_the_item_file(synthetic_amazon, tmp_path):
    reviews, meta = synthetic_amazon
    first = prepare(reviews, tmp_path, meta=meta)
    item_path = first.item_path
    second = prepare(reviews, tmp_path)
    assert not item_path.exists() and second.removed_paths == [item_path]
    assert f"removed {item_path}: an earlier run's item features" in second.summary()
    assert "give --meta to keep item features" in second.summary()
    assert prepare(reviews, tmp_path).removed_paths == []  # nothing left to remove: nothing said


def test_a_failed_switch_restores_every_earlier_file(synthetic_amazon, tmp_path, monkeypatch):
    reviews, meta = synthetic_amazon
    folder = prepare(reviews, tmp_path, meta=meta).inter_path.parent
    before = folder_state(folder)
    real_replace = os.replace

    def replace_failing_on_item(source, target):
        if str(target).endswith(".item"):  # the .inter is already in place when this fails
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(source, target)

    monkeypatch.setattr(amazon.os, "replace", replace_failing_on_item)
    with pytest.raises(ConversionIOError, match=r"syn\.item: cannot write: .*the previous files are unchanged"):
        prepare(reviews, tmp_path, meta=meta, k_core=6)  # other rows: a new .inter would differ
    monkeypatch.undo()
    assert folder_state(folder) == before  # the old .inter is back beside the old .item; no temporaries


def test_a_failed_removal_keeps_the_new_files_out_too(synthetic_amazon, tmp_path, monkeypatch):
    reviews, meta = synthetic_amazon
    folder = prepare(reviews, tmp_path, meta=meta).inter_path.parent
    before = folder_state(folder)
    real_unlink = amazon.Path.unlink

    def unlink_failing_on_item(self, *args, **kwargs):
        if self.name == "syn.item":
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES))
        return real_unlink(self, *args, **kwargs)

    monkeypatch.setattr(amazon.Path, "unlink", unlink_failing_on_item)
    with pytest.raises(ConversionIOError):
        prepare(reviews, tmp_path, k_core=6)
    monkeypatch.undo()
    assert folder_state(folder) == before


@pytest.mark.slow
def test_prepare_then_train_need_no_config(synthetic_amazon, tmp_path, monkeypatch, capsys):
    reviews, meta = synthetic_amazon
    monkeypatch.chdir(tmp_path)  # no configs/ here: train finds datasets/syn/syn.yaml
    monkeypatch.setattr("sys.argv", ["mind-recbole"])
    assert cli.main(["prepare", "amazon", "--reviews", str(reviews), "--meta", str(meta), "--dataset", "syn",
                     "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "next: mind-recbole train --model MIND --dataset syn" in printed
    status = cli.main(["train", "--model", "MIND", "--dataset", "syn", "--epochs=1", "--embedding_size=16",
                       "--num_negatives=32", "--state=WARNING", "--MAX_ITEM_LIST_LENGTH=10", "--topk=[10]",
                       "--metrics=['Recall']", "--valid_metric=Recall@10", "--result-json", "r.json"])
    assert status == 0, capsys.readouterr().err
    import json

    record = json.loads((tmp_path / "r.json").read_text())
    assert record["config_files"] == [os.path.join("datasets", "syn", "syn.yaml")]
    assert 0.0 <= record["test_result"]["recall@10"] <= 1.0


def test_train_on_data_without_the_time_field_names_it(synthetic_amazon, tmp_path, monkeypatch, capsys):
    reviews, meta = synthetic_amazon
    report = prepare(reviews, tmp_path / "datasets")
    lines = report.inter_path.read_text().splitlines()
    report.inter_path.write_text("\n".join("\t".join(line.split("\t")[:2]) for line in lines) + "\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["mind-recbole"])
    status = cli.main(["train", "--model", "MIND", "--dataset", "syn",
                       "--load_col={'inter': ['user_id', 'item_id']}"])
    err = capsys.readouterr().err
    assert status == 2
    assert f"{report.inter_path.resolve()} has no time field 'timestamp' (its fields: user_id, item_id)" in err
    assert "Prepare the data with review times, or set TIME_FIELD" in err
