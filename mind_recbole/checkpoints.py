"""RecBole checkpoints: reading them safely, checking they fit the data, naming them, and the
training state the plugin's trainer adds to them (:mod:`mind_recbole.trainer`).

RecBole's checkpoint holds the weights, the optimizer, the epoch and the early-stopping counters,
but not the random number generators: a resumed run would shuffle its first epoch as the first
epoch of a fresh run (the training loader's generator is seeded at creation) and draw other
routing noise, negatives and dropout masks (torch's global generator). Nor does it hold the best
validation result, so a resumed run that never improves returned None. The plugin's trainer adds
both, plus a fingerprint of the item ids, under :data:`TRAINING_STATE_KEY`.
"""

import hashlib
import itertools
import os
import random

# Key of the training state in a checkpoint written by the plugin's trainer.
TRAINING_STATE_KEY = "mind_recbole_training_state"


def training_state(checkpoint):
    """The training state of a checkpoint, or None (a checkpoint RecBole's own trainer wrote).

    Checkpoints written before the state had a key of its own kept it inside ``other_parameter``:
    runs stopped part-way then are still resumed exactly.
    """
    return checkpoint.get(TRAINING_STATE_KEY) or (checkpoint.get("other_parameter") or {}).get(TRAINING_STATE_KEY)


def remove_if_empty(path):
    """Remove the checkpoint name :func:`reserve_checkpoint_file` reserved if nothing was written to it."""
    if path and os.path.isfile(path) and os.path.getsize(path) == 0:
        os.remove(path)


class CheckpointError(ValueError):
    """A checkpoint that cannot be read, or that does not fit the dataset found at its data_path."""


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


def item_ids_fingerprint(dataset):
    """SHA-1 of the dataset's item tokens in internal-id order (same count but other items differ)."""
    tokens = dataset.field2id_token[dataset.iid_field]
    return hashlib.sha1("\n".join(map(str, tokens)).encode("utf-8")).hexdigest()


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
    state = training_state(checkpoint)
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
