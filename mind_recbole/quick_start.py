"""``run_recbole`` and ``load_data_and_model`` that know the plugin's models.

Same signatures and return values as ``recbole.quick_start``; the differences are the model lookup
(:func:`mind_recbole.registry.get_model`), the plugin's default properties (:class:`MindConfig`),
the compatibility shims (:mod:`mind_recbole.compat`), OpenMP's wait policy
(:mod:`mind_recbole.threads`) and the runtime settings (:mod:`mind_recbole.performance`), all
applied here, explicitly. On top of RecBole:

- checkpoints are read by :func:`read_checkpoint` and checked against the model built from the
  current dataset (:func:`check_checkpoint_fits`), so a corrupt file or a checkpoint of another
  dataset is an error naming the file and the sizes, not a pickle traceback or ``size mismatch``;
- ``run_recbole(..., resume=PATH)`` continues training with RecBole's
  ``Trainer.resume_checkpoint``; the checkpoints our ``run_recbole`` writes also hold the random
  number generator states and the best validation result (in the model's ``other_parameter``,
  under :data:`TRAINING_STATE_KEY`), so a resumed run repeats an uninterrupted one exactly on
  the same machine;
- in a distributed run (:mod:`mind_recbole.distributed`) every process uses rank 0's checkpoint
  file and waits for it to be written before the test evaluation reads it.
"""

import hashlib
import itertools
import logging
import os
import random
import sys
import time
from contextlib import contextmanager

from mind_recbole import compat
from mind_recbole.threads import configure_openmp

# Key of the training state inside a checkpoint's ``other_parameter`` (see install_training_state).
TRAINING_STATE_KEY = "mind_recbole_training_state"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the dataset found at its data_path."""


def build_config(model, dataset, config_file_list=None, config_dict=None):
    """Set OpenMP's wait policy, apply the compatibility shims and return the plugin's RecBole config."""
    configure_openmp()  # before compat.apply() imports torch
    compat.apply()
    from mind_recbole.config import MindConfig

    return MindConfig(
        model=model, dataset=dataset, config_file_list=config_file_list, config_dict=config_dict
    )


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
    (:func:`mind_recbole.distributed.run`), rank 0 puts the result there.
    """
    config = build_config(model, dataset, config_file_list, config_dict)

    from recbole.utils import set_color

    from mind_recbole import distributed

    dataset, (train_data, valid_data, test_data), trainer = prepare_training(config, checkpoint_file=resume)
    install_training_state(trainer, train_data, dataset)
    if resume is not None:
        resume_training(trainer, resume, train_data, dataset)
    epoch_seconds, epoch_losses = record_training_epochs(trainer)
    with removing_unwritten_checkpoint(trainer):
        best_valid_score, best_valid_result = trainer.fit(
            train_data, valid_data, saved=saved, show_progress=config["show_progress"]
        )
    test_result = None
    if evaluate_test:
        distributed.wait_for_checkpoint(config)
        test_result = trainer.evaluate(
            test_data, load_best_model=saved, show_progress=config["show_progress"]
        )
    logger = logging.getLogger()
    logger.info(set_color("best valid ", "yellow") + f": {best_valid_result}")
    logger.info(set_color("test result", "yellow") + f": {test_result}")
    result = {
        "best_valid_score": best_valid_score,
        "valid_score_bigger": config["valid_metric_bigger"],
        "best_valid_result": best_valid_result,
        "test_result": test_result,
        "saved_model_file": trainer.saved_model_file if saved else None,
        "train_epoch_seconds": epoch_seconds,
        "train_losses": epoch_losses,
    }
    distributed.finish(config, result, queue, trainer.model)
    return result


def prepare_training(config, prepare_data=None, checkpoint_file=None):
    """Seeds, logging, runtime settings, dataset, data loaders, model and RecBole trainer for ``config``.

    Returns ``(dataset, loaders, trainer)``; ``loaders`` is what ``prepare_data(config, dataset)``
    returns (default: RecBole's ``data_preparation``: train, valid and test loaders), and the model
    is built on the first loader's dataset, as RecBole's ``run_recbole`` does. The trainer writes
    ``checkpoint_file`` (a resumed run goes on writing the checkpoint it resumes), by default a
    fresh name that rank 0 reserves; every rank gets rank 0's name.
    """
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import get_trainer, init_logger, init_seed

    from mind_recbole import distributed
    from mind_recbole.data.atomic_files import check_dataset_files
    from mind_recbole.performance import apply_runtime_settings
    from mind_recbole.registry import get_model

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
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    if checkpoint_file is not None:  # every rank was given the same name
        trainer.saved_model_file = checkpoint_file
    else:
        if _rank(config) == 0:  # the only process that writes it; other ranks take its name
            trainer.saved_model_file = reserve_checkpoint_file(trainer.saved_model_file)
        distributed.share_checkpoint_file(trainer)
    return dataset, loaders, trainer


def check_valid_metric(config):
    """``valid_metric`` must be one of the metrics computed (RecBole fails at the first
    validation, after a whole training epoch)."""
    given = config["metrics"] if isinstance(config["metrics"], list) else [config["metrics"]]
    metric, _, cutoff = str(config["valid_metric"]).lower().partition("@")
    metrics = [str(m).lower() for m in given]
    cutoffs = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
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
    cutoffs = config["topk"] if isinstance(config["topk"], list) else [config["topk"]]
    items = dataset.item_num - 1  # id 0 is padding
    too_large = [k for k in cutoffs if k > items]
    if too_large:
        raise ValueError(
            f"topk {too_large} is larger than the {items:,} items of dataset {config['dataset']!r}: the metrics "
            f"cannot rank that many; set topk to cut-offs up to {items:,} (e.g. --topk=[10])"
        )


@contextmanager
def removing_unwritten_checkpoint(trainer):
    """Training that fails before its first checkpoint leaves no empty file behind.

    The checkpoint's name is reserved as an empty file (:func:`reserve_checkpoint_file`); RecBole
    writes it after the first validation that improves.
    """
    try:
        yield
    except BaseException:
        path = trainer.saved_model_file
        if path and os.path.isfile(path) and os.path.getsize(path) == 0:
            os.remove(path)
        raise


def reserve_checkpoint_file(path):
    """A checkpoint name no other run holds: ``MODEL-<time>-<pid>[-n].pth``, created empty.

    RecBole names checkpoints ``MODEL-<local time to the second>.pth``: two runs started in the
    same second (two ``compare`` processes, say) wrote, and reloaded for their test, one file.
    """
    stem, extension = os.path.splitext(path)
    for attempt in itertools.count():
        candidate = f"{stem}-{os.getpid()}{f'-{attempt}' if attempt else ''}{extension}"
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return candidate
        except FileExistsError:
            continue


def record_training_epochs(trainer):
    """Lists filled as ``trainer`` trains: each epoch's wall time (validation excluded) and loss
    (RecBole's: the sum of the batch losses; this process's batches)."""
    seconds, losses = [], []
    train_epoch = trainer._train_epoch

    def recording_train_epoch(*args, **kwargs):
        start = time.perf_counter()
        loss = train_epoch(*args, **kwargs)
        seconds.append(time.perf_counter() - start)
        losses.append(float(sum(loss)) if isinstance(loss, tuple) else float(loss))
        return loss

    trainer._train_epoch = recording_train_epoch
    return seconds, losses


# ---------------------------------------------------------------------------------------------- resume
def install_training_state(trainer, train_data, dataset):
    """Make the trainer's checkpoints also hold what an exact resume needs.

    RecBole's checkpoint holds the weights, the optimizer, the epoch and the early-stopping
    counters, but not the random number generators: a resumed run would shuffle its first epoch
    as the first epoch of a fresh run (the training loader's generator is seeded at creation) and
    draw other routing noise, negatives and dropout masks (torch's global generator). Nor does it
    hold the best validation result, so a resumed run that never improves returned None. We add
    both, plus a fingerprint of the item ids, to the model's ``other_parameter`` (which RecBole
    saves with every checkpoint) while the trainer saves, and filter them out when it loads.
    """
    model = trainer.model
    save_checkpoint = trainer._save_checkpoint
    valid_epoch = trainer._valid_epoch
    latest_valid = {}

    def recording_valid_epoch(*args, **kwargs):
        valid_score, valid_result = valid_epoch(*args, **kwargs)
        latest_valid["result"] = valid_result
        return valid_score, valid_result

    def saving_training_state(*args, **kwargs):
        # RecBole saves right after a validation that improved (or every epoch without validation).
        state = {
            "rng": _gather_over_ranks(trainer.config, capture_rng_state(train_data)),
            "best_valid_result": latest_valid.get("result", trainer.best_valid_result),
            "item_ids_sha1": item_ids_fingerprint(dataset),
        }
        other_parameter = model.other_parameter
        model.other_parameter = lambda: {**(other_parameter() or {}), TRAINING_STATE_KEY: state}
        try:
            return save_checkpoint(*args, **kwargs)
        finally:
            model.other_parameter = other_parameter

    load_other_parameter = model.load_other_parameter

    def loading_without_training_state(parameters):
        load_other_parameter(without_training_state(parameters))

    trainer._valid_epoch = recording_valid_epoch
    trainer._save_checkpoint = saving_training_state
    model.load_other_parameter = loading_without_training_state


def resume_training(trainer, resume_file, train_data, dataset):
    """``trainer.resume_checkpoint(resume_file)`` after checking the file; then restore the RNG state."""
    config = trainer.config
    checkpoint = read_checkpoint(resume_file)
    if checkpoint["config"]["model"] != config["model"]:
        raise CheckpointError(
            f"{resume_file}: a {checkpoint['config']['model']} checkpoint cannot resume training of {config['model']}"
        )
    check_checkpoint_fits(checkpoint, trainer.model, dataset, resume_file)
    if checkpoint["epoch"] + 1 >= config["epochs"]:
        raise CheckpointError(
            f"{resume_file}: training already reached epoch {checkpoint['epoch']} of 0..{config['epochs'] - 1}; "
            f"set epochs above {checkpoint['epoch'] + 1} to train further (load_data_and_model evaluates it as is)"
        )
    trainer.resume_checkpoint(resume_file)  # RecBole goes on writing resume_file
    state = (checkpoint.get("other_parameter") or {}).get(TRAINING_STATE_KEY)
    logger = logging.getLogger()
    if state is None:
        logger.warning(
            f"{resume_file} holds no random number generator state (not written by mind_recbole.run_recbole): "
            "the resumed run will not repeat an uninterrupted one exactly"
        )
        return
    trainer.best_valid_result = state["best_valid_result"]
    rng_states = state["rng"]
    if len(rng_states) != _world_size(config):
        logger.warning(
            f"{resume_file} was written by a run of {len(rng_states)} process(es), this run has "
            f"{_world_size(config)}: random number generators not restored"
        )
        return
    restore_rng_state(rng_states[_rank(config)], train_data)


def capture_rng_state(train_data):
    """The states of every generator training draws from: python, numpy, torch (CPU, CUDA), the loader's."""
    import numpy as np
    import torch

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "train_loader": [generator.get_state() for generator in _loader_generators(train_data)],
    }


def restore_rng_state(state, train_data):
    """Undo :func:`capture_rng_state` (CUDA states only where CUDA is available)."""
    import numpy as np
    import torch

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generators = _loader_generators(train_data)
    if len(generators) == len(state["train_loader"]):
        for generator, generator_state in zip(generators, state["train_loader"]):
            generator.set_state(generator_state)


def _loader_generators(train_data):
    """The shuffling generators of a training loader (a knowledge-graph loader has two inner loaders)."""
    import torch

    loaders = [train_data] + [getattr(train_data, name, None) for name in ("general_dataloader", "kg_dataloader")]
    return [
        loader.generator for loader in loaders if isinstance(getattr(loader, "generator", None), torch.Generator)
    ]


def _gather_over_ranks(config, value):
    """``[value]`` in a single process; every rank's value (rank order) in a distributed run."""
    if config["single_spec"]:
        return [value]
    import torch.distributed as dist

    values = [None] * config["world_size"]
    dist.all_gather_object(values, value)
    return values


def _world_size(config):
    return 1 if config["single_spec"] else config["world_size"]


def _rank(config):
    return 0 if config["single_spec"] else config["local_rank"] + config["offset"]


def without_training_state(parameters):
    """A checkpoint's ``other_parameter`` without our training state (what the model itself saved)."""
    if not parameters or TRAINING_STATE_KEY not in parameters:
        return parameters
    return {key: value for key, value in parameters.items() if key != TRAINING_STATE_KEY}


def item_ids_fingerprint(dataset):
    """SHA-1 of the dataset's item tokens in internal-id order (same count but other items differ)."""
    tokens = dataset.field2id_token[dataset.iid_field]
    return hashlib.sha1("\n".join(map(str, tokens)).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------- checkpoints
def read_checkpoint(model_file):
    """``torch.load`` a RecBole checkpoint on the CPU; :class:`CheckpointError` naming the file if it is unusable.

    The checkpoint is unpickled in full (RecBole stores its ``Config`` in it): only load files you trust.
    """
    import torch

    model_file = str(model_file)
    if not os.path.isfile(model_file):
        raise FileNotFoundError(f"checkpoint not found: {model_file}")
    try:
        checkpoint = torch.load(model_file, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated zip, bad pickle, not a torch file: torch raises many kinds
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{model_file}: cannot read this checkpoint ({os.path.getsize(model_file):,} bytes): it is corrupt, "
            f"truncated (an interrupted copy or save, a full disk) or not a torch checkpoint "
            f"[{type(error).__name__}: {reason}]; copy it again or train again"
        ) from error
    missing = [key for key in ("config", "state_dict") if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise CheckpointError(
            f"{model_file}: not a RecBole checkpoint (no {' or '.join(repr(k) for k in missing)} entry); "
            "expected a file written by mind-recbole train / run_recbole"
        )
    return checkpoint


def check_checkpoint_fits(checkpoint, model, dataset, model_file):
    """Raise :class:`CheckpointError` if ``checkpoint`` was trained on another dataset than ``dataset``.

    The model is built from the dataset found at the checkpoint's ``data_path``; a weight of
    another shape means the data differ (e.g. the dataset was prepared again with other
    filters), and RecBole would fail with a bare ``size mismatch``. Item and user counts are
    named as RecBole counts them (``item_num`` / ``user_num``, the padding id included).
    """
    expected = model.state_dict()
    mismatched = [
        (key, tuple(value.shape), tuple(expected[key].shape))
        for key, value in checkpoint["state_dict"].items()
        if key in expected and hasattr(value, "shape") and tuple(value.shape) != tuple(expected[key].shape)
    ]
    where = f"the dataset {dataset.dataset_name} at {dataset.dataset_path}"
    for key, saved, current in mismatched:
        for count_name, count in (("item", dataset.item_num), ("user", dataset.user_num)):
            if current[:1] == (count,) and saved[:1] != (count,):
                raise CheckpointError(
                    f"{model_file}: checkpoint of another dataset: it was trained with {saved[0]:,} {count_name} ids, "
                    f"but {where} has {count:,} ({count_name}_num, padding included; weight {key!r} is "
                    f"{list(saved)} in the checkpoint, {list(current)} here). Prepare the dataset as it was for "
                    "training (same files, same filters) or train again"
                )
    if mismatched:
        details = "; ".join(
            f"{key!r}: {list(saved)} in the checkpoint, {list(current)} here" for key, saved, current in mismatched
        )
        raise CheckpointError(
            f"{model_file}: the checkpoint does not fit the model built from its config and {where} "
            f"({details}): the dataset (e.g. a side feature's vocabulary) or the config differs from training"
        )
    state = (checkpoint.get("other_parameter") or {}).get(TRAINING_STATE_KEY)
    if state and state.get("item_ids_sha1") not in (None, item_ids_fingerprint(dataset)):
        raise CheckpointError(
            f"{model_file}: checkpoint of another dataset: {where} has as many item ids ({dataset.item_num:,}) "
            "but not the same items in the same order. Prepare the dataset as it was for training or train again"
        )


def portable_config(config):
    """A checkpoint's config for this process: single-process, and on the CPU where CUDA is missing."""
    import torch

    if not config["single_spec"]:  # written by a distributed run: its loaders would need a process group
        config["single_spec"] = True
        config["local_rank"] = 0
    device = config["device"]
    if getattr(device, "type", str(device)).startswith("cuda") and not torch.cuda.is_available():
        config["device"] = torch.device("cpu")
    return config


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
    model.load_other_parameter(without_training_state(checkpoint.get("other_parameter")))
    return config, model, dataset, train_data, valid_data, test_data
