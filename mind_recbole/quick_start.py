"""``run_recbole`` and ``load_data_and_model`` that know the plugin's models.

Same signatures and return values as ``recbole.quick_start``; the differences are the model lookup
(:func:`mind_recbole.registry.get_model`), the plugin's default properties (:class:`MindConfig`),
the compatibility shims (:mod:`mind_recbole.compat`) and the runtime settings
(:mod:`mind_recbole.performance`), all applied here, explicitly.
"""

import logging
import os
import sys
import time

from mind_recbole import compat


def build_config(model, dataset, config_file_list=None, config_dict=None):
    """Apply the compatibility shims and return the plugin's RecBole config."""
    compat.apply()
    from mind_recbole.config import MindConfig

    return MindConfig(
        model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict
    )


def run_recbole(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True):
    """Train and test ``model`` on ``dataset``, as ``recbole.quick_start.run_recbole`` does.

    Returns RecBole's dict (``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
    ``test_result``: metric name, e.g. ``recall@50``, to value) plus ``saved_model_file`` (the
    checkpoint, when ``saved``) and ``train_epoch_seconds`` (wall time of each training epoch).
    """
    config = build_config(model, dataset, config_file_list, config_dict)

    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_trainer, init_logger, init_seed, set_color

    from mind_recbole.performance import apply_runtime_settings
    from mind_recbole.registry import get_model

    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = logging.getLogger()
    logger.info(sys.argv)
    logger.info(config)
    apply_runtime_settings(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    train_data, valid_data, test_data = data_preparation(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    logger.info(model)

    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    epoch_seconds = time_training_epochs(trainer)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = trainer.evaluate(
        test_data, load_best_model=saved, show_progress=config["show_progress"]
    )
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    return {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
        "train_epoch_seconds": epoch_seconds,
    }


def time_training_epochs(trainer):
    """Record the wall time of each training epoch (validation excluded) in the returned list."""
    seconds = []
    train_epoch = trainer._train_epoch

    def timed_train_epoch(*args, **kwargs):
        start = time.perf_counter()
        loss = train_epoch(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        return loss

    trainer._train_epoch = timed_train_epoch
    return seconds


def load_data_and_model(model_file):
    """Rebuild config, model (weights loaded), dataset and data loaders from a checkpoint.

    Works for the plugin's models and RecBole's. The checkpoint is unpickled in full (RecBole stores
    its ``Config`` in it): only load files you trust.
    """
    compat.apply()
    import torch
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_logger, init_seed

    from mind_recbole.registry import get_model

    checkpoint = torch.load(model_file, map_location="cpu", weights_only=False)
    config = checkpoint["config"]
    if not os.path.isdir(config["data_path"]):
        raise FileNotFoundError(
            f"{model_file}: its dataset folder {config['data_path']} does not exist here "
            "(prepare the dataset again, or run from the folder the model was trained in)"
        )
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(config["model"])(config, train_data._dataset).to(config["device"])
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
