"""Shared fixtures: the real Amazon Beauty logs from ../shared/data, converted once per session."""

from pathlib import Path

import pytest

from mind_recbole import compat

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
BEAUTY_MINI = SHARED_DATA / "amazon-beauty-mini"

compat.apply()  # the tests import RecBole's data and trainer code directly


def tiny_config(data_path, model="MIND", **overrides):
    """Config for the model tests: beauty-mini, short histories, quiet, CPU."""
    from mind_recbole.quick_start import build_config

    config_dict = {
        "data_path": str(data_path),
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "brand", "categories"]},
        "MAX_ITEM_LIST_LENGTH": 20,
        "eval_args": {"split": {"LS": "valid_and_test"}, "group_by": "user", "order": "TO", "mode": "full"},
        "metrics": ["Recall", "NDCG"],
        "topk": [10, 50],
        "valid_metric": "Recall@50",
        "item_side_fields": ["brand", "categories"],
        "train_batch_size": 256,
        "eval_batch_size": 512,
        "embedding_size": 16,
        "tower_hidden_sizes": [32],
        "num_negatives": 64,
        "show_progress": False,
        "use_gpu": False,
        "state": "WARNING",
        "checkpoint_dir": str(Path(data_path) / "saved"),
    }
    config_dict.update(overrides)
    return build_config(model, "amazon-beauty-mini", config_dict=config_dict)


@pytest.fixture(scope="session")
def beauty_mini_path(tmp_path_factory):
    """A data_path holding amazon-beauty-mini as RecBole atomic files."""
    if not (BEAUTY_MINI / "reviews.json.gz").is_file():
        pytest.skip(f"real data not found at {BEAUTY_MINI} (see DEVELOPERS.md: ../shared/data)")
    from mind_recbole.data.amazon import convert_amazon

    data_path = tmp_path_factory.mktemp("datasets")
    convert_amazon(
        reviews=BEAUTY_MINI / "reviews.json.gz",
        meta=BEAUTY_MINI / "meta.json.gz",
        dataset="amazon-beauty-mini",
        data_path=data_path,
        show_progress=False,
    )
    return data_path


@pytest.fixture(scope="session")
def beauty_mini_data(beauty_mini_path):
    """(config, dataset, train_data, valid_data, test_data) for MIND on beauty-mini."""
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    config = tiny_config(beauty_mini_path)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    return config, dataset, train_data, valid_data, test_data
