"""Each RecBole 1.2.1 fix of mind_recbole.compat, and the plugin's config and model lookup."""

import pickle

import numpy as np
import pytest
import torch

from mind_recbole import runtime_settings
from mind_recbole.training import build_config
from mind_recbole.registry import get_model


def write_atomic_dataset(folder, name="tiny"):
    """Six users x six items; item 3 has no brand and item 4 no categories."""
    folder = folder / name
    folder.mkdir(parents=True)
    lines = ["user_id:token\titem_id:token\ttimestamp:float"]
    for user in range(6):
        for step, item in enumerate(range(1, 7)):
            lines.append(f"u{user}\ti{(item + user) % 6 + 1}\t{100 * user + step}")
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    (folder / f"{name}.item").write_text(
        "item_id:token\tbrand:token\tcategories:token_seq\n"
        "i1\tAcme\tMakeup Nails\n"
        "i2\tAcme\tMakeup\n"
        "i3\t\tSkin_Care\n"
        "i4\tZeta\t\n"
        "i5\tZeta\tHair_Care Styling\n"
        "i6\tAcme\tMakeup\n"
    )
    return folder.parent


def tiny_dataset(data_path):
    from recbole.data import create_dataset

    config = build_config(
        "MIND",
        "tiny",
        config_dict={
            "data_path": str(data_path),
            "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "brand", "categories"]},
            "state": "WARNING",
            "use_gpu": False,
        },
    )
    return create_dataset(config)


def test_numpy_aliases_let_recbole_config_build():
    from recbole.config import Config

    assert np.float is np.float64 and np.int is np.int_ and np.bool8 is np.bool_
    config = Config(model="Pop", dataset="ml-100k", config_dict={"use_gpu": False})
    assert config["model"] == "Pop"


def test_ray_tune_imports_with_numpy_2_and_pinned_setuptools():
    from ray import tune  # needs np.bool8 and pkg_resources

    assert hasattr(tune, "run")


def test_missing_token_loads_as_padding_not_nan(tmp_path):
    dataset = tiny_dataset(write_atomic_dataset(tmp_path))
    items = dataset.get_item_feature()
    tokens = dataset.field2id_token["brand"]
    assert "nan" not in [str(t).lower() for t in tokens]
    i3 = dataset.token2id("item_id", "i3")
    i1 = dataset.token2id("item_id", "i1")
    assert int(items["brand"][i3]) == 0
    assert tokens[int(items["brand"][i1])] == "Acme"


def test_missing_token_seq_loads_as_empty_and_rows_stay_aligned(tmp_path):
    dataset = tiny_dataset(write_atomic_dataset(tmp_path))
    items = dataset.get_item_feature()
    names = dataset.field2id_token["categories"]

    def categories(token):
        row = items["categories"][dataset.token2id("item_id", token)]
        return [names[int(i)] for i in row if i > 0]

    assert categories("i4") == []
    assert categories("i1") == ["Makeup", "Nails"]
    assert categories("i5") == ["Hair_Care", "Styling"]


def test_checkpoint_with_config_reloads_for_test_evaluation(beauty_mini_data, tmp_path):
    from recbole.trainer import Trainer

    config, _, train_data, _, test_data = beauty_mini_data
    model = get_model("MIND")(config, train_data._dataset)
    trainer = Trainer(config, model)
    trainer.saved_model_file = str(tmp_path / "MIND.pth")
    trainer._save_checkpoint(0)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(trainer.saved_model_file)  # torch's default weights_only=True refuses RecBole's Config
    result = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
    assert 0.0 <= result["recall@50"] <= 1.0
    trainer.resume_checkpoint(trainer.saved_model_file)
    assert trainer.start_epoch == 1


def test_anomaly_detection_is_off_after_importing_sine():
    import recbole.model.sequential_recommender.sine  # noqa: F401

    assert not torch.is_anomaly_enabled()


def test_model_lookup_prefers_plugin_and_falls_back_to_recbole():
    from recbole.model.sequential_recommender.sasrec import SASRec

    assert get_model("MIND").__module__ == "mind_recbole.model.mind"
    assert get_model("YouTubeDNN").__module__ == "mind_recbole.model.youtubednn"
    assert get_model("SASRec") is SASRec


def test_unknown_model_is_a_clear_error_not_lightgbm():
    with pytest.raises(ValueError, match="Unknown model 'NoSuchModel'.*MIND, YouTubeDNN"):
        get_model("NoSuchModel")


def test_plugin_properties_load_under_user_settings():
    config = build_config("MIND", "ml-100k", config_dict={"interest_num": 6, "use_gpu": False})
    assert config["interest_num"] == 6  # the user's value wins
    assert config["routing_iterations"] == 3  # from properties/model/MIND.yaml
    assert config["torch_threads"] is None  # from properties/overall.yaml
    assert config["train_neg_sample_args"]["distribution"] == "none"  # the loss samples its own negatives


def test_partial_eval_args_are_merged_over_the_defaults():
    config = build_config("MIND", "ml-100k", config_dict={"eval_args": {"mode": "uni100"}, "use_gpu": False})
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"}
    assert config["eval_args"]["order"] == "TO"
    assert config["eval_args"]["mode"] == {"valid": "uni100", "test": "uni100"}


@pytest.mark.parametrize("cores, expected", [(1, 1), (2, 2), (16, 16)])
def test_default_thread_count_is_one_per_usable_core(cores, expected):
    assert runtime_settings.default_thread_count(cores, environ={}) == expected


@pytest.mark.parametrize("value, expected", [("1", 1), ("3", 3), ("2,1", 2), ("0", 16), ("many", 16), ("", 16)])
def test_default_thread_count_honours_omp_num_threads(value, expected):
    assert runtime_settings.default_thread_count(16, environ={"OMP_NUM_THREADS": value}) == expected


def test_thread_setting_is_applied_and_checked():
    previous = torch.get_num_threads()
    try:
        assert runtime_settings.set_torch_threads(1) == 1 and torch.get_num_threads() == 1
        with pytest.raises(ValueError, match="torch_threads must be >= 1"):
            runtime_settings.set_torch_threads(-2)
    finally:
        torch.set_num_threads(previous)


def test_malloc_tuning_takes_effect_on_glibc():
    import platform

    if platform.libc_ver()[0] != "glibc":
        pytest.skip("mallopt is glibc's")
    assert runtime_settings.tune_malloc() is True


def test_data_path_is_stored_absolute_so_checkpoints_reload_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = build_config("MIND", "beauty", config_dict={"data_path": "datasets/", "use_gpu": False})
    assert config["data_path"] == str(tmp_path / "datasets" / "beauty")
