"""Compatibility shims that let RecBole 1.2.1 run correctly on numpy 2, pandas 3 and torch >= 2.6.

RecBole 1.2.1 (2023) predates these releases. Every fix lives in this one module and is applied
explicitly by :func:`apply`, which our entry points (``mind_recbole.run_recbole``, the
``mind-recbole`` command, ``load_data_and_model``) call before they import RecBole's trainer, data
or quick-start code. Importing :mod:`mind_recbole` alone changes nothing.

What is fixed, and why (each has a test in ``tests/test_compat.py``):

1. **numpy 2 aliases.** RecBole uses ``np.float`` / ``np.int`` in its metrics, interaction and
   dataset code and its ``Config.compatibility_settings()`` defines them from ``np.float_``,
   ``np.complex_`` and ``np.unicode_``, which numpy 2 removed, so ``Config(...)`` raises.
   ``from ray import tune`` (imported by RecBole) needs ``np.bool8``. We define the aliases with
   numpy 2's names and make ``compatibility_settings`` do the same.
2. **pandas 3 copy-on-write.** ``df[field].fillna(..., inplace=True)`` on a column is a no-op
   under copy-on-write, so RecBole's ``Dataset._fill_nan`` left missing token values as NaN
   (data silently changed) and ``Dataset._load_feat`` crashed on a missing ``token_seq`` value.
   ``Dataset._fill_nan`` is replaced by a copy that assigns the filled column back;
   ``Dataset._load_feat`` runs with a ``read_csv`` that fills missing sequence cells first.
   pandas 3 also made ``Series.agg(len)`` return the length of the Series instead of each
   cell's, so ``Dataset._remap`` put every ``token_seq`` value into one row and failed
   (``Length of values (1) does not match length of index``); it is replaced by a copy using
   ``Series.map(len)``. Known left alone (not used by this project's configs): the same
   ``agg(len)`` in ``_normalize`` / ``_discretization`` of ``float_seq`` fields and in
   ``KnowledgeBasedDataset``.
3. **torch >= 2.6 ``weights_only=True``.** RecBole's checkpoints pickle its ``Config``, so the
   trainer could not reload its own best model for the test evaluation (``UnpicklingError``).
   The trainer module's ``torch`` is swapped for a proxy whose ``load`` defaults to
   ``weights_only=False``; the rest of torch is untouched. Only load checkpoints you trust.
4. **Anomaly detection.** ``recbole/model/sequential_recommender/sine.py`` calls
   ``torch.autograd.set_detect_anomaly(True)`` at import, slowing every model's backward pass
   (about +60 % measured on SASRec). We import it and switch anomaly detection back off.
5. **Distributed training without GPUs.** ``Config._init_device`` starts every distributed run
   (``local_rank`` in the config) with the ``nccl`` backend on ``cuda:<local_rank>`` and asserts
   one ``gpu_id`` per process, and ``AbstractTrainer.__init__`` passes
   ``device_ids=[local_rank]`` to ``DistributedDataParallel``, which torch rejects for a CPU
   module. Where the run has no GPU (CUDA unavailable, ``gpu_id`` empty or ``use_gpu: False``),
   ``_init_device`` now starts the ``gloo`` backend with the same rank, world size and
   ``tcp://ip:port`` and keeps the process on the CPU, with RecBole's other settings unchanged
   (``single_spec`` False, ranks other than 0 quiet); GPU runs take RecBole's nccl path as
   before. The trainer module's ``DistributedDataParallel`` drops ``device_ids`` for CPU modules.
   (Tested end to end in ``tests/test_resume_distributed.py``.)
6. **Folder creation races.** ``recbole.utils.ensure_dir`` checks ``os.path.exists`` and then calls
   ``os.makedirs``; processes of a distributed run starting together both see no ``log/`` or
   ``saved/`` folder and the slower one fails with ``FileExistsError``. Every module's
   ``ensure_dir`` becomes ``os.makedirs(path, exist_ok=True)``.

``pkg_resources`` (needed by ``ray`` 2.6.3, RecBole's ``ray <= 2.6.3``) is handled by pinning
``setuptools < 82`` in ``pyproject.toml``, not here.
"""

import types
import warnings

import numpy as np

_NUMPY_ALIASES = {
    "bool": np.bool_,
    "bool8": np.bool_,
    "int": np.int_,
    "long": np.int_,
    "float": np.float64,
    "float_": np.float64,
    "complex": np.complex128,
    "complex_": np.complex128,
    "object": np.object_,
    "str": np.str_,
    "unicode": np.str_,
    "unicode_": np.str_,
}

_applied = False


def apply():
    """Apply every shim once (idempotent). Call before importing RecBole's trainer or data code."""
    global _applied
    if _applied:
        return
    define_numpy_aliases()
    _patch_config()
    _patch_dataset()
    _patch_trainer_checkpoint_loading()
    _disable_sine_anomaly_detection()
    _patch_distributed_cpu()
    _patch_ensure_dir()
    _applied = True


def define_numpy_aliases():
    """Define the numpy 1 aliases RecBole and ray 2.6.3 use, with numpy 2's names."""
    for alias, target in _NUMPY_ALIASES.items():
        if alias not in vars(np):  # hasattr would trigger numpy 2's FutureWarning for np.object / np.str
            setattr(np, alias, target)


def _patch_config():
    from recbole.config import configurator

    configurator.Config.compatibility_settings = lambda self: define_numpy_aliases()


def _patch_dataset():
    from recbole.data.dataset import dataset

    dataset.Dataset._fill_nan = _fill_nan
    dataset.Dataset._remap = _remap
    dataset.Dataset._load_feat = _make_load_feat(dataset.Dataset._load_feat)


def _fill_nan(self):
    """RecBole's ``Dataset._fill_nan`` with the filled column assigned back (copy-on-write safe).

    Missing ``token`` values become the padding id 0, missing ``float`` values the column mean,
    missing sequences an empty array.
    """
    from recbole.utils import FeatureType

    for feat_name in self.feat_name_list:
        feat = getattr(self, feat_name)
        for field in feat:
            ftype = self.field2type[field]
            if ftype == FeatureType.TOKEN:
                feat[field] = feat[field].fillna(value=0)
            elif ftype == FeatureType.FLOAT:
                feat[field] = feat[field].fillna(value=feat[field].mean())
            else:
                dtype = np.int64 if ftype == FeatureType.TOKEN_SEQ else np.float64
                feat[field] = feat[field].apply(
                    lambda x: np.array([], dtype=dtype) if isinstance(x, float) else x
                )


def _remap(self, remap_list):
    """RecBole's ``Dataset._remap`` with ``Series.map(len)`` for per-row token_seq lengths."""
    import pandas as pd
    from recbole.utils import FeatureType

    if len(remap_list) == 0:
        return
    tokens, split_point = self._concat_remaped_tokens(remap_list)
    new_ids_list, mp = pd.factorize(tokens)
    new_ids_list = np.split(new_ids_list + 1, split_point)
    mp = np.array(["[PAD]"] + list(mp))
    token_id = {t: i for i, t in enumerate(mp)}

    for (feat, field, ftype), new_ids in zip(remap_list, new_ids_list):
        if field not in self.field2id_token:
            self.field2id_token[field] = mp
            self.field2token_id[field] = token_id
        if ftype == FeatureType.TOKEN:
            feat[field] = new_ids
        elif ftype == FeatureType.TOKEN_SEQ:
            split_point = np.cumsum(feat[field].map(len).to_numpy())[:-1]
            feat[field] = np.split(new_ids, split_point)


def _make_load_feat(original_load_feat):
    """Wrap ``Dataset._load_feat`` so missing sequence cells are read as empty strings.

    RecBole reads the file with ``pandas.read_csv`` and then (no-op under copy-on-write) fills
    missing sequence cells with ``""`` before splitting them. We run the original with its
    module's ``pd`` replaced by a proxy whose ``read_csv`` fills missing ``*_seq`` columns, which
    is exactly what the original meant to do.
    """
    from recbole.data.dataset import dataset as dataset_module

    real_pandas = dataset_module.pd

    def read_csv_filling_sequences(*args, **kwargs):
        frame = real_pandas.read_csv(*args, **kwargs)
        for column in kwargs.get("usecols") or []:
            if column.endswith("_seq"):
                frame[column] = frame[column].fillna("")
        return frame

    pandas_proxy = _ModuleProxy(real_pandas, read_csv=read_csv_filling_sequences)

    def load_feat(self, filepath, source):
        dataset_module.pd = pandas_proxy
        try:
            with warnings.catch_warnings():  # the no-op fillna it still calls, now harmless
                warnings.simplefilter("ignore", category=getattr(real_pandas.errors, "ChainedAssignmentError", Warning))
                return original_load_feat(self, filepath, source)
        finally:
            dataset_module.pd = real_pandas

    load_feat.__doc__ = original_load_feat.__doc__
    return load_feat


class _ModuleProxy(types.SimpleNamespace):
    """A module stand-in: the given attributes overridden, everything else forwarded."""

    def __init__(self, module, **overrides):
        super().__init__(**overrides)
        self._module = module

    def __getattr__(self, name):
        return getattr(self._module, name)


def _patch_trainer_checkpoint_loading():
    import torch
    from recbole.trainer import trainer

    def load_trusted_checkpoint(*args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return torch.load(*args, **kwargs)

    trainer.torch = _ModuleProxy(torch, load=load_trusted_checkpoint)


def _disable_sine_anomaly_detection():
    import torch

    import recbole.model.sequential_recommender.sine  # noqa: F401  (its import turns anomaly mode on)

    torch.autograd.set_detect_anomaly(False)


def _patch_distributed_cpu():
    import torch
    from recbole.config import configurator
    from recbole.trainer import trainer

    init_device = configurator.Config._init_device

    def init_device_with_gloo_on_cpu(self):
        config = self.final_config_dict
        gpu_id = config["gpu_id"]  # normalised as RecBole's _init_device does (it accepts the string)
        config["gpu_id"] = ",".join(map(str, gpu_id)) if isinstance(gpu_id, tuple) else str(gpu_id)
        if "local_rank" not in config or _distributed_run_uses_cuda(config):
            return init_device(self)  # single process, or GPUs: RecBole's own code (nccl)
        torch.distributed.init_process_group(
            backend="gloo",
            rank=config["local_rank"] + config["offset"],
            world_size=config["world_size"],
            init_method=f"tcp://{config['ip']}:{config['port']}",
        )
        config["device"] = torch.device("cpu")
        config["single_spec"] = False
        if config["local_rank"] != 0:
            config["state"] = "error"
            config["show_progress"] = False
            config["verbose"] = False

    configurator.Config._init_device = init_device_with_gloo_on_cpu
    trainer.DistributedDataParallel = _distributed_data_parallel


def _distributed_run_uses_cuda(config):
    """RecBole's own device rule (a non-empty gpu_id string and CUDA), and ``use_gpu`` not False."""
    import torch

    return bool(config["gpu_id"]) and torch.cuda.is_available() and config.get("use_gpu", True) is not False


def _distributed_data_parallel(module, device_ids=None, **kwargs):
    """``DistributedDataParallel`` without ``device_ids`` for a CPU module (torch rejects them there)."""
    from torch.nn.parallel import DistributedDataParallel

    if all(parameter.device.type == "cpu" for parameter in module.parameters()):
        device_ids = None
    return DistributedDataParallel(module, device_ids=device_ids, **kwargs)


def ensure_dir(dir_path):
    """RecBole's ``ensure_dir`` without its check-then-create race: ``os.makedirs(exist_ok=True)``."""
    import os

    os.makedirs(dir_path, exist_ok=True)


def _patch_ensure_dir():
    import recbole.data.dataset.dataset
    import recbole.data.utils
    import recbole.trainer.trainer
    import recbole.utils
    import recbole.utils.logger
    import recbole.utils.utils

    for module in (
        recbole.utils.utils,
        recbole.utils,
        recbole.utils.logger,
        recbole.trainer.trainer,
        recbole.data.utils,
        recbole.data.dataset.dataset,
    ):
        module.ensure_dir = ensure_dir
