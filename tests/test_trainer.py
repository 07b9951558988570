"""The plugin's trainer: RecBole's, subclassed; nothing in the package replaces a method on a live object."""

import ast
from pathlib import Path

import pytest
import torch

from mind_recbole.checkpoints import TRAINING_STATE_KEY, read_checkpoint
from mind_recbole.evaluation.multi_interest import HeldOutEvaluator, HeldOutUsers
from mind_recbole.registry import get_model
from mind_recbole.trainer import MindTrainerMixin, build_trainer
from tests.conftest import PROJECT_ROOT, tiny_config

# Methods of RecBole's trainers and models the package once replaced on instances.
PATCHED_BEFORE = {"_train_epoch", "_valid_epoch", "_save_checkpoint", "other_parameter", "load_other_parameter",
                  "predict", "full_sort_predict", "forward", "evaluate", "fit", "calculate_loss"}


def trainer_for(name, beauty_mini_data, tmp_path, **overrides):
    config, dataset, train_data, _, test_data = beauty_mini_data
    config = tiny_config(config["data_path"].rsplit("/", 1)[0], model=name, checkpoint_dir=str(tmp_path), **overrides)
    model = get_model(name)(config, train_data._dataset)
    return build_trainer(config, model, train_data, dataset), config, dataset, test_data


def test_no_method_is_assigned_onto_an_object_anywhere_in_the_package():
    offenders = []
    for path in (PROJECT_ROOT / "mind_recbole").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            targets = node.targets if isinstance(node, ast.Assign) else []
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr in PATCHED_BEFORE:
                    offenders.append(f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} .{target.attr} = ...")
    assert offenders == []


def test_the_trainer_subclasses_recboles_trainer_for_the_model(beauty_mini_data, tmp_path):
    from recbole.trainer import Trainer

    trainer, *_ = trainer_for("MIND", beauty_mini_data, tmp_path)
    assert isinstance(trainer, MindTrainerMixin) and isinstance(trainer, Trainer)
    assert type(trainer).__name__ == "MindTrainer"
    again, *_ = trainer_for("YouTubeDNN", beauty_mini_data, tmp_path)
    assert type(again) is type(trainer)  # one class per RecBole trainer class


def test_fit_records_epochs_and_writes_the_training_state_beside_the_model(beauty_mini_data, tmp_path):
    trainer, *_ = trainer_for("MIND", beauty_mini_data, tmp_path, epochs=2)
    written = []
    trainer.on_checkpoint = written.append
    _, best = trainer.fit(trainer.train_data, None, saved=True, show_progress=False)  # no validation: saved each epoch
    assert len(trainer.epoch_seconds) == len(trainer.epoch_losses) == 2 and min(trainer.epoch_seconds) > 0
    assert written == [0, 1]
    checkpoint = read_checkpoint(trainer.saved_model_file)
    state = checkpoint[TRAINING_STATE_KEY]
    assert set(state) == {"rng", "best_valid_result", "item_ids_sha1"} and len(state["rng"]) == 1
    assert TRAINING_STATE_KEY not in (checkpoint["other_parameter"] or {})
    for obj in (trainer, trainer.model):  # nothing shadows a method of the class
        assert not [n for n, v in vars(obj).items() if callable(v) and n in dir(type(obj)) and not n.startswith("__")]


def test_held_out_validation_needs_a_metric_the_protocol_reports(beauty_mini_data, tmp_path):
    trainer, config, dataset, _ = trainer_for("MIND", beauty_mini_data, tmp_path, valid_metric="NDCG@10")
    tokens = list(dataset.field2id_token["item_id"][1:6])
    evaluator = HeldOutEvaluator(HeldOutUsers(["u"], [tokens[:3]], [tokens[3:]]), dataset, config)
    trainer.valid_metric = "mrr@10"
    with pytest.raises(ValueError, match="valid_metric 'mrr@10' is not reported by the multi-interest protocol"):
        trainer._valid_epoch(evaluator)
    trainer.valid_metric = "recall@50"
    score, result = trainer._valid_epoch(evaluator)
    assert score == result["recall@50"] == evaluator.evaluate(trainer.model)["recall@50"]
    assert trainer.latest_valid_result is result


@pytest.mark.parametrize("name", ["MIND", "SASRec", "Pop", "ItemKNN", "EASE"])  # the last three: one ranking per user
def test_sampled_scores_from_the_full_ranking_equal_predict(beauty_mini_data, tmp_path, name):
    from recbole.data.interaction import Interaction

    trainer, _, dataset, test_data = trainer_for(name, beauty_mini_data, tmp_path, hidden_size=16, inner_size=32,
                                                 train_neg_sample_args=None)
    model = trainer.model.eval()
    if name == "Pop":
        model.calculate_loss(next(iter(beauty_mini_data[2])))  # counts one training batch's items
    users = next(iter(test_data))[0][:5]
    items = torch.randint(1, dataset.item_num, (5, 7))
    rows = Interaction({k: v.repeat_interleave(7, dim=0) for k, v in users.interaction.items()})
    rows.update(Interaction({model.ITEM_ID: items.reshape(-1)}))
    with torch.no_grad():
        expected = trainer._predict_rows(rows)  # the flag is off: model.predict
        torch.testing.assert_close(expected, model.predict(rows), rtol=0, atol=0)
        trainer.score_sampled_from_full_ranking = True
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(type(model), "predict", lambda *_: pytest.fail("scored row by row"))
            fast = trainer._predict_rows(rows)
            split = trainer._spilt_predict(rows, len(rows))  # blocks of eval_batch_size, as RecBole splits
    torch.testing.assert_close(fast, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(split, fast, rtol=1e-5, atol=1e-5)


def test_a_failed_fit_removes_the_checkpoint_name_it_reserved(beauty_mini_data, tmp_path, monkeypatch):
    trainer, *_ = trainer_for("MIND", beauty_mini_data, tmp_path)
    reserved = Path(tmp_path) / "reserved.pth"
    reserved.touch()
    trainer.saved_model_file = str(reserved)
    monkeypatch.setattr(type(trainer.model), "calculate_loss", lambda self, interaction: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        trainer.fit(trainer.train_data, None, saved=True)
    assert not reserved.exists()
