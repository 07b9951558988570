"""Shared fixtures: the real Amazon Beauty logs from ../shared/data, converted once per session."""

import os
from pathlib import Path

import pytest

from mind_recbole.threads import configure_openmp

configure_openmp()  # before anything imports torch: tests often share the machine with other work

from mind_recbole import compat  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = PROJECT_ROOT.parent / "shared" / "data"
BEAUTY_MINI = SHARED_DATA / "amazon-beauty-mini"

compat.apply()  # the tests import RecBole's data and trainer code directly


def tiny_config(data_path, model="MIND", **overrides):
    """Config for the model tests: beauty-mini, short histories, quiet, CPU."""
    from mind_recbole.training import build_config

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


def require_real_data(folder=BEAUTY_MINI):
    """Skip a test that needs the real Amazon logs where they are absent; under CI (``CI=true``)
    their absence fails it instead, so CI cannot pass on skipped tests."""
    if (folder / "reviews.json.gz").is_file() and (folder / "meta.json.gz").is_file():
        return
    message = (
        f"real Amazon data not found at {folder}: the project's tests read it from ../shared/data "
        f"beside the project root (see {SHARED_DATA / 'README.md'})"
    )
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; under CI it must be there")
    pytest.skip(message)


@pytest.fixture
def real_data():
    """Marks a test that reads the real logs itself (see :func:`require_real_data`)."""
    require_real_data()


@pytest.fixture(scope="session")
def beauty_mini_path(tmp_path_factory):
    """A data_path holding amazon-beauty-mini as RecBole atomic files."""
    require_real_data()
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


@pytest.fixture
def workdir(beauty_mini_path, tmp_path, monkeypatch):
    """A private copy of beauty-mini's atomic files under ``tmp_path/data`` (tests alter them), the
    working directory (RecBole writes log/ there) and ``sys.argv`` restored after a command trims it."""
    import shutil
    import sys

    shutil.copytree(beauty_mini_path / "amazon-beauty-mini", tmp_path / "data" / "amazon-beauty-mini")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", sys.argv[:1])
    return tmp_path


@pytest.fixture(scope="session")
def synthetic_amazon(tmp_path_factory):
    """``(reviews, meta)``: a small synthetic data set in the McAuley format (tests/synthetic_amazon.py)."""
    from tests.synthetic_amazon import write_synthetic_amazon

    return write_synthetic_amazon(tmp_path_factory.mktemp("synthetic-amazon"))


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


# ---------------------------------------------------------------------------------------------- serving
AMAZON_CONFIG = PROJECT_ROOT / "configs" / "amazon-beauty.yaml"


def train_tiny_checkpoint(model, data_path, workdir, dataset="amazon-beauty-mini", saved=True, **overrides):
    """Train ``model`` for 1 epoch on beauty-mini (cwd = ``workdir``, sys.argv trimmed); the checkpoint path
    (None with ``saved=False``)."""
    import sys

    from mind_recbole import run_recbole

    config_dict = {
        "data_path": str(data_path), "epochs": 1, "MAX_ITEM_LIST_LENGTH": 20, "embedding_size": 16,
        "num_negatives": 64, "checkpoint_dir": str(Path(workdir) / "saved"), "state": "WARNING",
        "show_progress": False,
    }
    config_dict.update(overrides)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setattr(sys, "argv", sys.argv[:1])
        result = run_recbole(
            model=model, dataset=dataset, config_file_list=[str(AMAZON_CONFIG)], config_dict=config_dict, saved=saved
        )
    return Path(result["saved_model_file"]) if saved else result["saved_model_file"]


def load_checkpoint(checkpoint, workdir):
    """``load_data_and_model`` with cwd = ``workdir`` (RecBole writes its log there)."""
    import sys

    from mind_recbole import load_data_and_model

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(workdir)
        patch.setattr(sys, "argv", sys.argv[:1])
        return load_data_and_model(str(checkpoint))


@pytest.fixture(scope="session")
def mind_checkpoint(beauty_mini_path, tmp_path_factory):
    """A MIND checkpoint trained 1 epoch on beauty-mini (K=4, D=16, max_seq_length=20)."""
    return train_tiny_checkpoint("MIND", beauty_mini_path, tmp_path_factory.mktemp("mind-train"))


@pytest.fixture(scope="session")
def mind_export(mind_checkpoint, tmp_path_factory):
    """(model_dir, model, dataset, ExportResult): the MIND checkpoint exported with the default exporter."""
    from export.onnx_export import export_model

    workdir = tmp_path_factory.mktemp("mind-export")
    _config, model, dataset, *_ = load_checkpoint(mind_checkpoint, workdir)
    result = export_model(model, dataset, workdir / "model", checkpoint=mind_checkpoint)
    return workdir / "model", model, dataset, result


def free_port():
    """A TCP port free on this machine now (for distributed runs in tests)."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return str(sock.getsockname()[1])
