"""Setting up a run: the config, then seeds, logs, runtime settings, data, model and trainer.

Used by :func:`mind_recbole.run_recbole` and by ``mind-recbole compare``; both then call the
trainer's ``fit``. Every check that can fail is made before training starts, most of them before
RecBole logs the config.
"""

import logging
import sys

from mind_recbole import compat
from mind_recbole.threads import configure_openmp


def build_config(model, dataset, config_file_list=None, config_dict=None):
    """Set OpenMP's wait policy, apply the compatibility shims and return the plugin's RecBole config."""
    configure_openmp()  # before compat.apply() imports torch
    compat.apply()
    from mind_recbole.config import MindConfig

    return MindConfig(model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict)


def prepare_training(config, prepare_data=None, resume=None):
    """Seeds, logging, runtime settings, dataset, data loaders, model and trainer for ``config``.

    Returns ``(dataset, loaders, trainer)``; ``loaders`` is what ``prepare_data(config, dataset)``
    returns (default: RecBole's ``data_preparation``: train, valid and test loaders), and the model
    is built on the first loader's dataset, as RecBole's ``run_recbole`` does. The trainer
    (:mod:`mind_recbole.trainer`) writes a fresh checkpoint name that rank 0 reserves (every rank
    gets rank 0's name), or, with ``resume``, continues from that checkpoint and goes on writing it.
    """
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_logger, init_seed

    from mind_recbole import distributed
    from mind_recbole.checkpoints import reserve_checkpoint_file
    from mind_recbole.data.atomic_files import check_dataset_files
    from mind_recbole.runtime_settings import apply_runtime_settings
    from mind_recbole.registry import get_model
    from mind_recbole.trainer import build_trainer

    check_dataset_files(config)  # a missing file or column: one clear error, before the config is logged
    init_seed(config["seed"], config["reproducibility"])
    init_logger(config)
    logger = logging.getLogger()
    logger.info(sys.argv)
    logger.info(config)
    distributed.share_cores(config)
    apply_runtime_settings(config)

    dataset = create_dataset(config)
    logger.info(dataset)
    check_valid_metric(config)
    check_cutoffs_fit_catalogue(config, dataset)
    loaders = (prepare_data or data_preparation)(config, dataset)

    init_seed(config["seed"] + config["local_rank"], config["reproducibility"])
    model = get_model(config["model"])(config, loaders[0]._dataset).to(config["device"])
    logger.info(model)
    trainer = build_trainer(config, model, loaders[0], dataset)
    if resume is not None:  # every rank was given the same name
        trainer.resume(str(resume))
    else:
        if distributed.rank(config) == 0:  # the only process that writes it; other ranks take its name
            trainer.saved_model_file = reserve_checkpoint_file(trainer.saved_model_file)
        distributed.share_checkpoint_file(trainer)
    return dataset, loaders, trainer


def metric_cutoffs(config):
    """``topk`` as a list (RecBole takes one cut-off or several)."""
    return config["topk"] if isinstance(config["topk"], list) else [config["topk"]]


def check_valid_metric(config):
    """``valid_metric`` must be one of the metrics computed (RecBole fails at the first
    validation, after a whole training epoch)."""
    given = config["metrics"] if isinstance(config["metrics"], list) else [config["metrics"]]
    metric, _, cutoff = str(config["valid_metric"]).lower().partition("@")
    metrics = [str(m).lower() for m in given]
    cutoffs = metric_cutoffs(config)
    if metric not in metrics:
        raise ValueError(
            f"valid_metric {config['valid_metric']!r} is not computed: metrics are {config['metrics']}; "
            "add it to metrics or choose another valid_metric"
        )
    if cutoff and (not cutoff.isdigit() or int(cutoff) not in cutoffs):
        raise ValueError(
            f"valid_metric {config['valid_metric']!r} is not computed: metrics are at topk {cutoffs}; "
            f"add {cutoff} to topk or choose another valid_metric"
        )


def check_cutoffs_fit_catalogue(config, dataset):
    """A ``topk`` cut-off above the number of items cannot be ranked: say so before training."""
    cutoffs = metric_cutoffs(config)
    items = dataset.item_num - 1  # id 0 is padding
    too_large = [k for k in cutoffs if k > items]
    if too_large:
        raise ValueError(
            f"topk {too_large} is larger than the {items:,} items of dataset {config['dataset']!r}: the metrics "
            f"cannot rank that many; set topk to cut-offs up to {items:,} (e.g. --topk=[10])"
        )
