"""The plugin's entry points: ``run_recbole``, ``run`` (several processes) and ``load_data_and_model``.

Same signatures and return values as ``recbole.quick_start``; the differences are the model lookup
(:func:`mind_recbole.registry.get_model`), the plugin's default properties
(:class:`~mind_recbole.config.MindConfig`), the compatibility shims (:mod:`mind_recbole.compat`),
OpenMP's wait policy (:mod:`mind_recbole.threads`) and the runtime settings
(:mod:`mind_recbole.runtime_settings`), all applied explicitly (:mod:`mind_recbole.training`). On top
of RecBole:

- checkpoints are read by :func:`~mind_recbole.checkpoints.read_checkpoint` and checked against the
  model built from the current dataset, so a corrupt file or a checkpoint of another dataset is an
  error naming the file and the sizes, not a pickle traceback or ``size mismatch``;
- ``run_recbole(..., resume=PATH)`` continues training exactly as if it had not stopped: the
  plugin's trainer (:mod:`mind_recbole.trainer`) keeps the random generators and the best
  validation result in its checkpoints;
- :func:`run` trains on several processes with RecBole's distributed mode; every process uses rank
  0's checkpoint file and waits for it to be written before the test evaluation reads it
  (:mod:`mind_recbole.distributed`).
"""

import logging
import os
import re

from mind_recbole import compat
from mind_recbole.checkpoints import check_checkpoint_fits, portable_config, read_checkpoint
from mind_recbole.threads import configure_openmp
from mind_recbole.training import build_config, prepare_training

DEFAULT_PORT = "5678"  # RecBole's


def run_recbole(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    saved=True,
    *,
    evaluate_test=True,
    resume=None,
    queue=None,
):
    """Train and test ``model`` on ``dataset``, as ``recbole.quick_start.run_recbole`` does.

    Returns RecBole's dict (``best_valid_score``, ``valid_score_bigger``, ``best_valid_result``,
    ``test_result``: metric name, e.g. ``recall@50``, to value) plus ``saved_model_file`` (the
    checkpoint, when ``saved``), ``train_epoch_seconds`` (wall time of each training epoch) and
    ``train_losses`` (each epoch's training loss as RecBole logs it).
    ``evaluate_test=False`` is for tuning: the test split is not touched and ``test_result`` is None.
    ``resume``: a checkpoint of this model and dataset; training continues after its epoch up to
    ``epochs`` (RecBole's ``resume_checkpoint``: weights, optimizer, epoch, early-stopping state),
    and later checkpoints overwrite that file, as in RecBole. ``queue``: in a distributed run
    (:func:`run`), rank 0 puts the result there.
    """
    config = build_config(model, dataset, config_file_list, config_dict)

    from recbole.utils import set_color

    from mind_recbole import distributed

    dataset, (train_data, valid_data, test_data), trainer = prepare_training(config, resume=resume)
    best_valid_score, best_valid_result = trainer.fit(
        train_data, valid_data, saved=saved, show_progress=config["show_progress"]
    )
    test_result = None
    if evaluate_test:
        distributed.wait_for_checkpoint(config)
        test_result = trainer.evaluate(test_data, load_best_model=saved, show_progress=config["show_progress"])
    logger = logging.getLogger()
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
        "train_epoch_seconds": trainer.epoch_seconds,
        "train_losses": trainer.epoch_losses,
    }
    distributed.finish(config, result, queue, trainer.model)
    return result


def run(
    model=None,
    dataset=None,
    config_file_list=None,
    config_dict=None,
    saved=True,
    nproc=1,
    world_size=-1,
    ip="localhost",
    port=DEFAULT_PORT,
    group_offset=0,
    *,
    evaluate_test=True,
    resume=None,
):
    """Train and test on ``nproc`` local processes (of ``world_size`` in all); rank 0's result.

    Same arguments as ``recbole.quick_start.run`` plus :func:`mind_recbole.run_recbole`'s
    keywords. ``nproc=1`` and ``world_size=-1`` is a plain single-process run. The result is that
    of this machine's first process (as in RecBole; metrics are gathered over all ranks, so every
    machine reports the same). Processes are started with ``spawn``; command-line
    ``--key=value`` overrides reach them through ``sys.argv``.
    """
    if nproc == 1 and world_size <= 0:
        return run_recbole(
            model, dataset, config_file_list, config_dict, saved, evaluate_test=evaluate_test, resume=resume
        )
    if nproc < 1:
        raise ValueError(f"nproc must be >= 1, got {nproc}")
    if world_size == -1:
        world_size = nproc
    if group_offset + nproc > world_size:
        raise ValueError(
            f"ranks {group_offset}..{group_offset + nproc - 1} (group_offset {group_offset}, nproc {nproc}) "
            f"do not fit in world_size {world_size}"
        )
    import torch.multiprocessing as mp

    queue = mp.get_context("spawn").SimpleQueue()
    config_dict = dict(config_dict or {})
    config_dict.update(
        {"world_size": world_size, "ip": ip, "port": str(port), "nproc": nproc, "offset": group_offset}
    )
    build_config(model, dataset, config_file_list, config_dict)  # a bad key: one clear error, before spawning
    options = {"saved": saved, "evaluate_test": evaluate_test, "resume": resume}
    try:
        mp.spawn(
            _worker, args=(model, dataset, config_file_list, config_dict, options, queue), nprocs=nproc, join=True
        )
    except mp.ProcessRaisedException as error:
        translated = _worker_error(error)
        if translated is None:
            raise
        raise translated from error
    return None if queue.empty() else queue.get()


# What a worker raised -> what the caller sees (the CLI reports ValueError / FileNotFoundError cleanly).
_WORKER_ERRORS = {
    "ValueError": ValueError,
    "FileNotFoundError": FileNotFoundError,
    "mind_recbole.checkpoints.CheckpointError": ValueError,
    "mind_recbole.config.UnknownConfigKeyError": ValueError,
}


def _worker_error(error):
    """A worker's ValueError / FileNotFoundError as the same kind here, its message and rank kept; else None."""
    lines = str(error).strip().splitlines()
    for index in range(len(lines) - 1, -1, -1):  # the last "SomeError: message" line starts the message
        match = re.match(r"([A-Za-z_][\w.]*(?:Error|Exception)): (.*)", lines[index])
        if match:
            kind = _WORKER_ERRORS.get(match.group(1))
            if kind is None:
                return None
            message = "\n".join([match.group(2), *lines[index + 1 :]])
            return kind(f"process {error.error_index} of the distributed run: {message}")
    return None


def _worker(local_rank, model, dataset, config_file_list, config_dict, options, queue):
    """One spawned process: :func:`mind_recbole.run_recbole` as rank ``offset + local_rank``."""
    run_recbole(
        model,
        dataset,
        config_file_list,
        {**config_dict, "local_rank": local_rank},
        options["saved"],
        evaluate_test=options["evaluate_test"],
        resume=options["resume"],
        queue=queue,
    )


def load_data_and_model(model_file, *, state=None):
    """Rebuild config, model (weights loaded), dataset and data loaders from a checkpoint.

    Works for the plugin's models and RecBole's. ``state`` overrides the checkpoint's log level
    (RecBole's ``state``: ``INFO`` logs the config and the dataset). Raises :class:`CheckpointError` (a ``ValueError``)
    naming the file for a corrupt or truncated file and for a checkpoint whose dataset (found at
    its ``data_path``) has other items than it was trained on. The checkpoint is unpickled in full
    (RecBole stores its ``Config`` in it): only load files you trust.
    """
    configure_openmp()  # before compat.apply() imports torch
    compat.apply()
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_logger, init_seed

    from mind_recbole.registry import get_model

    checkpoint = read_checkpoint(model_file)
    config = portable_config(checkpoint["config"])
    if state is not None:  # e.g. "WARNING": no log of the config and dataset while loading
        config["state"] = state
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
    check_checkpoint_fits(checkpoint, model, dataset, model_file)
    model.load_state_dict(checkpoint["state_dict"])
    model.load_other_parameter(checkpoint.get("other_parameter"))
    return config, model, dataset, train_data, valid_data, test_data
