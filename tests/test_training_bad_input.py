"""Bad input is a clear error naming the key, file or field; awkward but valid data trains.

Config keys (typos, where they came from), out-of-range model settings, side / profile fields the
dataset does not have, corrupt and foreign checkpoints; and training on users with one or two
interactions, histories longer than MAX_ITEM_LIST_LENGTH and an item seen only in the test split.
"""

import random
import shutil
import sys
from pathlib import Path

import pytest
import recbole
import torch
import yaml

from mind_recbole.config import UnknownConfigKeyError, known_config_keys
from mind_recbole.model.mind import MIND
from mind_recbole.checkpoints import CheckpointError
from mind_recbole.training import build_config
from tests.conftest import AMAZON_CONFIG, BEAUTY_MINI, PROJECT_ROOT, load_checkpoint, tiny_config

RECBOLE_PROPERTIES = Path(recbole.__file__).parent / "properties"


@pytest.fixture
def no_argv(monkeypatch):
    """RecBole reads --key=value from sys.argv: start from none (pytest's own arguments removed)."""
    monkeypatch.setattr(sys, "argv", sys.argv[:1])


# ---------------------------------------------------------------------------------------------- config keys
def test_typo_in_a_config_file_names_the_key_the_file_and_a_suggestion(tmp_path, no_argv):
    config_file = tmp_path / "mind.yaml"
    config_file.write_text("interest_nm: 8\nepochs: 2\n")
    with pytest.raises(UnknownConfigKeyError) as error:
        build_config("MIND", "amazon-beauty-mini", [str(config_file)])
    message = str(error.value)
    assert "unknown config key 'interest_nm' in config file " + str(config_file) in message
    assert "did you mean 'interest_num'?" in message
    assert "strict_config_keys: False" in message


def test_typos_in_config_dict_name_their_source(no_argv):
    with pytest.raises(ValueError) as error:
        build_config("MIND", "amazon-beauty-mini", config_dict={"max_item_list_length": 20, "xyzzy": 1, "epochs": 1})
    message = str(error.value)
    # a key in the wrong case is suggested in the right one; a key like nothing gets no suggestion
    assert "unknown config keys 'max_item_list_length' in config_dict (did you mean 'MAX_ITEM_LIST_LENGTH'?)" in message
    assert "'xyzzy' in config_dict" in message and "'xyzzy' in config_dict (did you mean" not in message
    assert "epochs" not in message


def test_unknown_keys_on_a_host_programs_command_line_are_a_warning(monkeypatch, caplog):
    # RecBole reads every --key=value in sys.argv, also pytest's own (--durations=10) or a script's
    monkeypatch.setattr(sys, "argv", [sys.argv[0], "--interest_nm=8", "--epochs=1"])
    config = build_config("MIND", "amazon-beauty-mini")
    assert config["epochs"] == 1 and config["interest_num"] == 4
    assert "unknown config key 'interest_nm' in the command line (--interest_nm=8) (did you mean 'interest_num'?)" in (
        caplog.text
    )


def test_check_command_line_keys_rejects_a_typo():
    from mind_recbole.config import check_command_line_keys

    check_command_line_keys(["--epochs=2", "--interest_num=8"])
    check_command_line_keys(["--my_key=1", "--strict_config_keys=False"])
    with pytest.raises(UnknownConfigKeyError, match=r"'interest_nm' in the command line \(--interest_nm=8\)"):
        check_command_line_keys(["--epochs=2", "--interest_nm=8"])


def test_strict_config_keys_false_lets_a_custom_key_through(no_argv):
    config = build_config(
        "MIND", "amazon-beauty-mini", config_dict={"my_model_depth": 3, "strict_config_keys": False}
    )
    assert config["my_model_depth"] == 3


def test_the_cli_reports_an_unknown_key_and_exits_2(tmp_path, monkeypatch, capsys):
    from mind_recbole.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    status = main(["train", "--model", "MIND", "--dataset", "amazon-beauty-mini", "--interest_nm=8"])
    err = capsys.readouterr().err
    assert status == 2
    assert "mind-recbole train: error: unknown config key 'interest_nm' in the command line (--interest_nm=8)" in err
    assert "did you mean 'interest_num'?" in err


@pytest.mark.parametrize("model", ["SASRec", "GRU4Rec", "DIN", "SINE", "Pop", "MIND", "YouTubeDNN"])
def test_every_key_of_a_models_own_properties_and_the_shipped_configs_is_known(model, no_argv):
    own = RECBOLE_PROPERTIES / "model" / f"{model}.yaml"
    if not own.is_file():
        own = PROJECT_ROOT / "mind_recbole" / "properties" / "model" / f"{model}.yaml"
    config_dict = yaml.safe_load(own.read_text()) or {}
    config = build_config(model, "amazon-beauty", [str(AMAZON_CONFIG)], config_dict=dict(config_dict))
    assert config["model"] == model
    quickstart = PROJECT_ROOT / "mind_recbole" / "properties" / "quickstart-ml-100k.yaml"
    assert build_config(model, "ml-100k", [str(quickstart)])["dataset"] == "ml-100k"


def test_keys_recbole_reads_only_in_code_are_known():
    keys = known_config_keys()
    for key in ("local_rank", "nproc", "world_size", "offset", "ip", "port", "gpu_id", "single_spec", "worker",
                "torch_threads", "malloc_tuning", "strict_config_keys", "val_interval", "shuffle"):
        assert key in keys, key
    assert "ml-1m" not in keys  # recbole/properties/dataset/url.yaml maps dataset names, not keys


@pytest.mark.parametrize(
    "text, message",
    [("- a\n- b\n", "expected 'key: value' lines at the top level, got a list"), ("epochs: [1\n", "is not valid YAML")],
)
def test_a_malformed_config_file_is_named(text, message, tmp_path, no_argv):
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(text)
    with pytest.raises(ValueError, match=message) as error:
        build_config("MIND", "amazon-beauty-mini", [str(config_file)])
    assert str(config_file) in str(error.value)


def test_an_empty_config_file_is_no_settings(tmp_path, no_argv):
    config_file = tmp_path / "empty.yaml"
    config_file.write_text("# nothing yet\n")
    assert build_config("MIND", "amazon-beauty-mini", [str(config_file)])["interest_num"] == 4


# ---------------------------------------------------------------------------------------------- model settings
def build_mind(beauty_mini_path, beauty_mini_data, **overrides):
    config = tiny_config(beauty_mini_path, **overrides)
    return MIND(config, beauty_mini_data[2]._dataset)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"interest_num": 0}, "interest_num (K) must be >= 1, got 0 (set in config_dict)"),
        ({"interest_num": "four"}, "interest_num (K) must be an integer, got 'four'"),
        ({"routing_iterations": 0}, "routing_iterations must be an integer >= 1, got 0 (set in config_dict)"),
        ({"attention_pow": 0.0}, "attention_pow (p) must be > 0 (or .inf for hard attention), got 0.0"),
        ({"attention_pow": -2}, "attention_pow (p) must be > 0"),
        ({"attention_pow": "steep"}, "attention_pow (p) must be > 0"),
        ({"num_negatives": 0}, "num_negatives must be an integer >= 1 for sampled_softmax, got 0"),
        ({"embedding_size": 8.5}, "embedding_size must be an integer >= 1, got 8.5"),
        ({"dropout_prob": 1.0}, "dropout_prob must be in [0, 1), got 1.0"),
        ({"tower_hidden_sizes": [32, 0]}, "tower_hidden_sizes must be an integer >= 1 (each size), got 0"),
        ({"routing_init_std": -1.0}, "routing_init_std must be >= 0, got -1.0"),
        ({"fixed_routing_init": "yes"}, "fixed_routing_init must be True or False, got 'yes'"),
        ({"item_side_fields": [1, 2]}, "item_side_fields must be a list of field names"),
    ],
)
def test_out_of_range_settings_name_the_key(overrides, message, beauty_mini_path, beauty_mini_data):
    with pytest.raises(ValueError) as error:
        build_mind(beauty_mini_path, beauty_mini_data, **overrides)
    assert message in str(error.value)


def test_the_error_names_the_config_file_a_bad_value_came_from(beauty_mini_path, beauty_mini_data, tmp_path, no_argv):
    config_file = tmp_path / "k.yaml"
    config_file.write_text("interest_num: -3\n")
    with pytest.raises(ValueError, match=r"interest_num \(K\) must be >= 1, got -3 \(set in config file .*k\.yaml\)"):
        build_config("MIND", "amazon-beauty-mini", [str(config_file)], {"data_path": str(beauty_mini_path)})


def test_hard_attention_from_the_command_line_and_a_single_side_field(beauty_mini_path, beauty_mini_data):
    model = build_mind(beauty_mini_path, beauty_mini_data, attention_pow="inf", item_side_fields="brand")
    assert model.attention_pow == float("inf")
    assert model.item_side_fields == ["brand"]  # one field, not the letters b, r, a, n, d


# ---------------------------------------------------------------------------------------------- fields
def test_a_side_field_the_item_file_lacks_names_the_file_and_its_fields(beauty_mini_path, beauty_mini_data):
    item_file = Path(beauty_mini_path) / "amazon-beauty-mini" / "amazon-beauty-mini.item"
    with pytest.raises(ValueError) as error:
        build_mind(beauty_mini_path, beauty_mini_data, item_side_fields=["brand", "colour"])
    assert str(error.value) == (
        f"item_side_fields names 'colour', but {item_file} has no such field "
        "(its fields: item_id, brand, categories, category); fix the name or remove it from item_side_fields"
    )


def test_a_side_field_in_the_file_but_not_loaded_says_load_col(beauty_mini_path, beauty_mini_data):
    with pytest.raises(ValueError) as error:
        build_mind(beauty_mini_path, beauty_mini_data, item_side_fields=["category"])
    message = str(error.value)
    assert "item_side_fields names 'category'" in message and "amazon-beauty-mini.item has it" in message
    assert "load_col['item'] does not load it (loaded: item_id, brand, categories)" in message


def test_a_profile_field_without_a_user_file_names_the_missing_file(beauty_mini_path, beauty_mini_data):
    user_file = Path(beauty_mini_path) / "amazon-beauty-mini" / "amazon-beauty-mini.user"
    with pytest.raises(ValueError) as error:
        build_mind(beauty_mini_path, beauty_mini_data, user_profile_fields=["age"])
    assert f"user_profile_fields names 'age', but the dataset has no user features: {user_file} does not exist" in str(
        error.value
    )


# ---------------------------------------------------------------------------------------------- checkpoints
@pytest.fixture
def corrupt_checkpoints(mind_checkpoint, tmp_path):
    """A truncated copy of a real checkpoint, random bytes, and a torch file that is not a checkpoint."""
    data = mind_checkpoint.read_bytes()
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(random.Random(0).randbytes(4096))
    not_recbole = tmp_path / "weights-only.pth"
    torch.save({"weights": torch.zeros(3)}, not_recbole)
    return {"truncated": truncated, "garbage": garbage, "not_recbole": not_recbole}


@pytest.mark.parametrize(
    "kind, message",
    [
        ("truncated", "cannot read this checkpoint"),
        ("garbage", "cannot read this checkpoint"),
        ("not_recbole", "not a RecBole checkpoint (no 'config' or 'state_dict' entry)"),
    ],
)
def test_a_corrupt_checkpoint_is_an_error_naming_the_file(kind, message, corrupt_checkpoints, tmp_path):
    path = corrupt_checkpoints[kind]
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path, tmp_path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert isinstance(error.value, ValueError)


def test_export_of_a_truncated_checkpoint_names_the_file(corrupt_checkpoints, tmp_path, monkeypatch, capsys):
    from mind_recbole.cli import main

    monkeypatch.chdir(tmp_path)
    status = main(["export", "--checkpoint", str(corrupt_checkpoints["truncated"]), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2
    assert f"mind-recbole export: error: {corrupt_checkpoints['truncated']}: cannot read this checkpoint" in err
    assert "Traceback" not in err


def copy_checkpoint_with_data_path(checkpoint, data_path, out):
    """The checkpoint as if trained on the dataset under ``data_path`` (its config's data_path changed)."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    state["config"]["data_path"] = str(Path(data_path) / "amazon-beauty-mini")
    torch.save(state, out)
    return out


def test_a_checkpoint_of_a_dataset_prepared_differently_names_both_item_counts(mind_checkpoint, tmp_path):
    from mind_recbole.data.amazon import convert_amazon

    other = tmp_path / "datasets"  # the same reviews prepared again with a stricter k-core filter
    convert_amazon(
        reviews=BEAUTY_MINI / "reviews.json.gz", meta=BEAUTY_MINI / "meta.json.gz", dataset="amazon-beauty-mini",
        data_path=other, k_core=8, show_progress=False,
    )
    moved = copy_checkpoint_with_data_path(mind_checkpoint, other, tmp_path / "moved.pth")
    trained = torch.load(mind_checkpoint, weights_only=False)["state_dict"]["item_tower.id_embedding.weight"].shape[0]
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(moved, tmp_path)
    message = str(error.value)
    assert message.startswith(f"{moved}: checkpoint of another dataset: it was trained with {trained:,} item ids, but ")
    assert f"the dataset amazon-beauty-mini at {other / 'amazon-beauty-mini'} has " in message
    assert "size mismatch" not in message
    current = int(message.split(" has ")[1].split(" ")[0].replace(",", ""))
    assert 1 < current < trained


def test_a_dataset_with_the_same_item_count_but_other_ids_is_detected(mind_checkpoint, beauty_mini_path, tmp_path):
    source = Path(beauty_mini_path) / "amazon-beauty-mini"
    other = tmp_path / "datasets" / "amazon-beauty-mini"
    shutil.copytree(source, other, ignore=shutil.ignore_patterns("saved"))
    inter = other / "amazon-beauty-mini.inter"
    header, *rows = inter.read_text().splitlines(keepends=True)
    inter.write_text(header + "".join(reversed(rows)))  # same interactions: internal ids in another order
    moved = copy_checkpoint_with_data_path(mind_checkpoint, other.parent, tmp_path / "moved.pth")
    with pytest.raises(CheckpointError, match="has as many item ids .* but not the same items in the same order"):
        load_checkpoint(moved, tmp_path)


# ---------------------------------------------------------------------------------------------- awkward data
def write_edge_dataset(root, name="edge"):
    """Atomic files of a tiny dataset with the awkward cases; returns the long user's item history.

    20 users with 6 interactions over 15 items, plus ``one`` (1 interaction), ``two`` (2),
    ``three`` (3), ``long`` (30, far beyond MAX_ITEM_LIST_LENGTH = 8) and ``fresh``, whose last
    (test) item ``i_test_only`` nobody else has.
    """
    folder = Path(root) / name
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    items = [f"i{n:02d}" for n in range(1, 16)]
    rows = []
    for user in range(20):
        rows += [(f"u{user:02d}", item) for item in rng.sample(items, 6)]
    rows += [("one", "i01"), ("two", "i02"), ("two", "i03")]
    rows += [("three", item) for item in ("i04", "i05", "i06")]
    long_history = [items[n % 15] for n in range(30)]
    rows += [("long", item) for item in long_history]
    rows += [("fresh", item) for item in ("i07", "i08", "i09", "i10", "i_test_only")]
    lines = [f"{user}\t{item}\t{1000 + t}\n" for t, (user, item) in enumerate(rows)]
    (folder / f"{name}.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n" + "".join(lines))
    item_lines = [f"{item}\tb{n % 3}\tc{n % 4} c{n % 5}\n" for n, item in enumerate(items + ["i_test_only"])]
    (folder / f"{name}.item").write_text("item_id:token\tbrand:token\tcategories:token_seq\n" + "".join(item_lines))
    return long_history


EDGE_CONFIG = {
    "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "brand", "categories"]},
    "MAX_ITEM_LIST_LENGTH": 8,
    "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"},
    "metrics": ["Recall", "NDCG"], "topk": [5], "valid_metric": "Recall@5",
    "item_side_fields": ["brand", "categories"], "embedding_size": 8, "tower_hidden_sizes": [16],
    "num_negatives": 5, "epochs": 2, "train_batch_size": 16, "state": "WARNING", "show_progress": False,
    "torch_threads": 1,
}


@pytest.mark.parametrize("loss_type", ["sampled_softmax", "CE"])
def test_short_and_long_histories_and_a_test_only_item_train_and_evaluate(loss_type, tmp_path, monkeypatch):
    from mind_recbole.quick_start import run_recbole

    long_history = write_edge_dataset(tmp_path / "datasets")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    config_dict = {**EDGE_CONFIG, "data_path": str(tmp_path / "datasets"), "checkpoint_dir": str(tmp_path / "saved"),
                   "loss_type": loss_type}
    result = run_recbole("MIND", "edge", config_dict=config_dict)
    assert all(loss == loss and loss > 0 for loss in result["train_losses"])  # finite, not NaN
    for metrics in (result["best_valid_result"], result["test_result"]):
        assert all(0.0 <= value <= 1.0 for value in metrics.values()), metrics

    _, model, dataset, train_data, _, test_data = load_checkpoint(result["saved_model_file"], tmp_path)
    users, items = dataset.field2id_token["user_id"], dataset.field2id_token["item_id"]
    test_only = dataset.field2token_id["item_id"]["i_test_only"]
    train_users = {users[u] for u in train_data._dataset.inter_feat["user_id"].tolist()}
    assert "one" not in train_users and "two" in train_users  # one interaction: nothing to learn from
    assert test_only not in set(train_data._dataset.inter_feat["item_id"].tolist())
    assert test_only not in set(train_data._dataset.inter_feat["item_id_list"].flatten().tolist())

    model.eval()
    interaction = test_data._dataset.inter_feat
    rows = {users[u]: i for i, u in enumerate(interaction["user_id"].tolist())}
    with torch.no_grad():
        _, mask = model.user_interests(interaction)
        scores = model.full_sort_predict(interaction)
    assert torch.isfinite(scores[:, 1:]).all()
    lengths = interaction["item_length"]
    # K'_u = max(1, min(K, floor(log2 |I_u|))): 1 for histories of 1-3 items, K = 4 at most
    assert mask[rows["three"]].sum() == 1 and lengths[rows["three"]] == 2
    assert mask[rows["fresh"]].sum() == 2 and lengths[rows["fresh"]] == 4
    assert mask[rows["long"]].sum() == 3 and lengths[rows["long"]] == 8
    # the long history is cut to its 8 most recent items before the test item, oldest first
    long_row = rows["long"]
    assert [items[i] for i in interaction["item_id_list"][long_row].tolist()] == long_history[-9:-1]
    assert items[interaction["item_id"][long_row]] == long_history[-1]
    # the item nobody trained on is the fresh user's test item and gets a finite score
    assert interaction["item_id"][rows["fresh"]] == test_only
    assert torch.isfinite(scores[rows["fresh"], test_only])
    with torch.no_grad():
        train_batch = next(iter(train_data))
        model.train()
        assert torch.isfinite(model.calculate_loss(train_batch))
