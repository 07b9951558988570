"""RecBole ``Config`` that knows the plugin's models and default settings.

After RecBole has read its own defaults (``overall.yaml``, the model type's quick-start file and
``properties/model/<Model>.yaml`` for its own models), we lay ``mind_recbole/properties/overall.yaml``
and ``mind_recbole/properties/model/<Model>.yaml`` over them. Both count as *internal* defaults, so
the user's config files, ``config_dict`` and ``--key=value`` command-line arguments still win, as in
RecBole-GNN's ``Config``.

Three RecBole pitfalls are mended here. ``data_path`` is made absolute, so that a checkpoint (which
stores the config) reloads from any working directory. RecBole replaces the whole default
``eval_args`` with a user's, so ``{'mode': 'full'}`` alone would silently fall back to a random
8/1/1 split; the user's keys are merged over the defaults instead. And RecBole accepts any key, so a
typo (``interest_nm: 8``) silently trained with the default; an unknown key in a config file or
``config_dict`` is now an error naming the key, where it came from and the closest known key
(``strict_config_keys: False`` turns the error into a warning, for a model of your own with keys
of its own). On the command line RecBole also sees the host program's own options, so there an
unknown key is a warning, except under ``mind-recbole train`` (:func:`check_command_line_keys`).
"""

import difflib
import functools
import os
import sys
from logging import getLogger
from pathlib import Path

import recbole
import yaml
from recbole.config import Config

from mind_recbole.config_files import PLUGIN_PROPERTIES as PROPERTIES_DIR
from mind_recbole.config_files import plugin_default_files
from mind_recbole.registry import get_model

RECBOLE_PROPERTIES_DIR = Path(recbole.__file__).resolve().parent / "properties"

# Dataset-name -> download-URL tables under recbole/properties/dataset, not config keys.
_NOT_CONFIG_FILES = {"url.yaml", "kg_url.yaml"}

# Keys RecBole 1.2.1 reads in its code that no properties YAML defines (found by searching its
# source for config["..."], config.get("...") and "..." in config): the distributed-run keys
# (set by recbole.quick_start.run), the keys Config derives itself, deprecated keys it still
# warns about, and model / metric / transform keys without a YAML default.
RECBOLE_CODE_KEYS = frozenset(
    {
        # distributed training (recbole.quick_start.run, Config._init_device)
        "local_rank", "nproc", "world_size", "ip", "port", "offset", "single_spec",
        # derived by Config
        "model", "dataset", "device", "MODEL_TYPE", "MODEL_INPUT_TYPE", "eval_type",
        "valid_neg_sample_args", "test_neg_sample_args", "verbose", "config_file", "config_files",
        # deprecated, still read (with a warning)
        "neg_sampling", "training_neg_sample_num",
        # dataset, metric and data-transform keys without a YAML default
        "encoding", "tail_ratio", "eta", "token_num_threshold",
        "CROP_ITEM_SEQ", "CROP_ITEM_SEQ_LEN", "INVERSE_ITEM_SEQ", "MASK_INDEX", "MASK_ITEM_SEQ",
        "NEG_ITEMS", "POS_ITEMS", "REORDER_ITEM_SEQ",
        # model keys without a YAML default
        "cin", "feature_num", "contrast", "sim", "use_filter", "norm", "has_residual",
        "xgb_early_stopping_rounds",
    }
)


class UnknownConfigKeyError(ValueError):
    """A config key that neither RecBole nor mind-recbole knows (usually a typo)."""


class MindConfig(Config):
    """``recbole.config.Config`` with the plugin's model lookup and default properties."""

    def __init__(self, model=None, dataset=None, config_file_list=None, config_dict=None):
        super().__init__(model, dataset, config_file_list, config_dict)
        self._check_settings()

    # ------------------------------------------------------------------ values
    def _check_settings(self):
        """Every setting checked before anything is loaded or logged: the model's own checks
        (``check_config`` of the plugin's models, whose messages say what each setting means),
        then the types and ranges of every value the user gave (:meth:`_check_value_types`)."""
        self._read_number_words()
        check_model = getattr(self.model_class, "check_config", None)
        if check_model is not None:
            check_model(self)
        self._check_value_types()

    def _read_number_words(self):
        """``inf`` / ``.inf`` / ``1e-3`` given as text where the default is a number become numbers
        (RecBole parses command-line values with ``eval``, which does not know ``inf``)."""
        for key, value in self.external_config_dict.items():
            if not isinstance(value, str) or expected_value_kind(self.internal_config_dict.get(key)) != "a number":
                continue
            number = number_from_text(value)
            if number is not None:
                self.external_config_dict[key] = self.final_config_dict[key] = number

    # ------------------------------------------------------------------ where keys come from
    def _load_config_files(self, file_list):
        """RecBole's loader, remembering which file set each key; clear errors for a bad file."""
        self.config_key_sources = {}
        file_config_dict = dict()
        for file in file_list or []:
            try:
                with open(file, "r", encoding="utf-8") as f:
                    values = yaml.load(f.read(), Loader=self.yaml_loader)
            except yaml.YAMLError as error:
                raise ValueError(f"config file {file} is not valid YAML: {error}") from error
            if values is None:  # an empty file (RecBole's own loader fails on it)
                continue
            if not isinstance(values, dict):
                raise ValueError(
                    f"config file {file}: expected 'key: value' lines at the top level, got a {type(values).__name__}"
                )
            file_config_dict.update(values)
            self.config_key_sources.update({key: f"config file {file}" for key in values})
        return file_config_dict

    def _merge_external_config_dict(self):
        super()._merge_external_config_dict()
        self.config_key_sources.update({key: "config_dict" for key in self.variable_config_dict})
        arguments = {arg[2:].split("=")[0]: arg for arg in sys.argv[1:] if arg.startswith("--")}
        self.config_key_sources.update(
            {key: f"the command line ({arguments.get(key, f'--{key}=...')})" for key in self.cmd_config_dict}
        )
        self._check_config_keys()

    def key_source(self, key):
        """Where ``key``'s value came from: a config file, ``config_dict``, the command line or the defaults."""
        # getattr: configs pickled in checkpoints saved before this attribute existed lack it
        return getattr(self, "config_key_sources", {}).get(key, "the defaults")

    def _check_config_keys(self):
        """Raise :class:`UnknownConfigKeyError` for keys of config files and ``config_dict`` nothing reads.

        Unknown command-line keys are only logged: RecBole reads every ``--key=value`` of the host
        program's command line too (``pytest --durations=10``, a script's own options), so only
        ``mind-recbole train``, whose command line is all config, rejects them
        (:func:`check_command_line_keys`).
        """
        unknown = [key for key in self.external_config_dict if key not in known_config_keys()]
        given = [key for key in unknown if key in self.file_config_dict or key in self.variable_config_dict]
        command_line_only = [key for key in unknown if key not in given]
        if command_line_only:
            getLogger().warning(
                f"{unknown_keys_message(command_line_only, self.key_source)}; "
                "RecBole takes every --key=value of the command line as a config key"
            )
        if not given:
            return
        message = unknown_keys_message(given, self.key_source)
        if self.external_config_dict.get("strict_config_keys", True) is False:
            getLogger().warning(f"{message}; used anyway, as strict_config_keys is False")
            return
        raise UnknownConfigKeyError(f"{message}. {KNOWN_KEYS_HINT}")

    # ------------------------------------------------------------------ model and defaults
    def _get_model_and_dataset(self, model, dataset):
        if isinstance(model, str):
            model = get_model(model)
        elif model is None and isinstance(self.external_config_dict.get("model"), str):
            model = get_model(self.external_config_dict["model"])
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for file in plugin_default_files(model):
            self._update_internal_config_dict(str(file))

    def _set_default_parameters(self):
        check_metric_names(self.final_config_dict.get("metrics"))
        super()._set_default_parameters()
        self.final_config_dict["data_path"] = os.path.abspath(self.final_config_dict["data_path"])

    def _get_final_config_dict(self):
        final_config_dict = super()._get_final_config_dict()
        user_eval_args = self.external_config_dict.get("eval_args")
        if isinstance(user_eval_args, dict):
            final_config_dict["eval_args"] = {
                **(self.internal_config_dict.get("eval_args") or {}),
                **user_eval_args,
            }
        return final_config_dict


    def _check_value_types(self):
        """Raise :class:`ConfigValueError` for a user value whose type cannot stand where the default's
        does: a number for a numeric default, a bool for a bool, and an integer for the counts of
        :data:`INTEGER_KEYS` (other integer defaults, such as a regularisation weight written ``0``,
        may take fractions).

        RecBole keeps a value it cannot parse as a string (``--epochs=ten``), which then fails deep
        in training with a traceback. Keys whose default is None, a string or a container are left
        to RecBole (several take either a number or a list, e.g. ``topk``).
        """
        for key, value in self.external_config_dict.items():
            default = self.internal_config_dict.get(key)
            expected = expected_value_kind(default, integer=key in INTEGER_KEYS)
            if expected is not None and value is not None and not value_fits(value, expected):
                raise ConfigValueError(
                    f"config key {key!r} in {self.key_source(key)} is {value!r}, but it takes {expected} "
                    f"(its default is {default!r})"
                )
            lowest = MINIMUM_VALUES.get(key)
            if lowest is not None and isinstance(value, (int, float)) and value < lowest:
                raise ConfigValueError(
                    f"config key {key!r} in {self.key_source(key)} is {value!r}; it must be at least {lowest}"
                )


def number_from_text(text):
    """``"inf"``, ``".inf"`` (YAML's spelling), ``"1e-3"`` as a float; None for text that is no number."""
    try:
        return float(text.strip().lower().replace(".inf", "inf"))
    except ValueError:
        return None


class ConfigValueError(ValueError):
    """A config value of the wrong type (a word where a number is needed, ...)."""


# Counts that RecBole or our models use as sizes or in range(): a fraction there is a crash later.
INTEGER_KEYS = frozenset({
    "epochs", "train_batch_size", "eval_batch_size", "stopping_step", "eval_step", "seed", "worker",
    "MAX_ITEM_LIST_LENGTH", "embedding_size", "hidden_size", "inner_size", "n_layers", "n_heads",
    "interest_num", "routing_iterations", "num_negatives", "score_chunk_size",
})


# The smallest value each count may take (``epochs: 0`` evaluated an untrained model, then crashed).
MINIMUM_VALUES = {key: 1 for key in INTEGER_KEYS - {"seed", "worker"}} | {"worker": 0}


def expected_value_kind(default, integer=False):
    """'a bool', 'an integer' or 'a number' for a default of that type (an integer only when
    ``integer``); None for any other default."""
    if isinstance(default, bool):
        return "a bool (True or False)"
    if isinstance(default, (int, float)):
        return "an integer" if integer and isinstance(default, int) else "a number"
    return None


def value_fits(value, expected):
    """Whether ``value`` can stand where :func:`expected_value_kind` says ``expected``."""
    if expected.startswith("a bool"):
        return isinstance(value, bool)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return expected == "a number" or isinstance(value, int)


def check_metric_names(metrics):
    """A :class:`ConfigValueError` for metric names RecBole does not have (RecBole raises
    ``NotImplementedError``, and a list mistyped on the command line arrives as one string)."""
    from recbole.evaluator.register import metrics_dict

    given = metrics if isinstance(metrics, list) else [metrics]
    unknown = [m for m in given if str(m).lower() not in metrics_dict]
    if unknown:
        raise ConfigValueError(
            f"metrics: unknown {unknown}; RecBole's metrics are {', '.join(sorted(metrics_dict))} "
            "(on the command line a list is written --metrics=\"['Recall','NDCG']\")"
        )


KNOWN_KEYS_HINT = (
    "Known keys are those of RecBole's and mind-recbole's properties YAML files (recbole/properties, "
    "mind_recbole/properties) and the few RecBole reads in code; set strict_config_keys: False to allow "
    "keys of a model of your own"
)


def check_command_line_keys(arguments):
    """Raise :class:`UnknownConfigKeyError` for ``--key=value`` arguments whose key nothing reads.

    For a command line that is all config overrides (``mind-recbole train``); skipped when it
    sets ``--strict_config_keys=False``.
    """
    overrides = {arg[2:].split("=")[0]: arg for arg in arguments if arg.startswith("--") and "=" in arg}
    if "strict_config_keys" in overrides and overrides["strict_config_keys"].split("=", 1)[1].lower() == "false":
        return
    unknown = [key for key in overrides if key not in known_config_keys()]
    if unknown:
        message = unknown_keys_message(unknown, lambda key: f"the command line ({overrides[key]})")
        raise UnknownConfigKeyError(f"{message}. {KNOWN_KEYS_HINT}")


def unknown_keys_message(keys, key_source):
    """``unknown config key 'x' in config file a.yaml (did you mean 'y'?)``, one clause per key."""
    clauses = []
    for key in keys:
        clause = f"{key!r} in {key_source(key)}"
        suggestion = closest_known_key(key)
        if suggestion:
            clause += f" (did you mean {suggestion!r}?)"
        clauses.append(clause)
    noun = "key" if len(keys) == 1 else "keys"
    return f"unknown config {noun} " + "; ".join(clauses)


def closest_known_key(key):
    """The known key most like ``key`` (case-insensitive), or None."""
    by_lower = {}
    for known in sorted(known_config_keys()):
        by_lower.setdefault(known.lower(), known)
    matches = difflib.get_close_matches(str(key).lower(), list(by_lower), n=1, cutoff=0.75)
    return by_lower[matches[0]] if matches else None


@functools.lru_cache(maxsize=None)
def known_config_keys():
    """Every key RecBole 1.2.1 or mind-recbole reads (see :data:`RECBOLE_CODE_KEYS`)."""
    from recbole.utils import argument_list

    keys = set(RECBOLE_CODE_KEYS)
    for names in (
        argument_list.general_arguments,
        argument_list.training_arguments,
        argument_list.evaluation_arguments,
        argument_list.dataset_arguments,
    ):
        keys.update(names)
    for folder in (RECBOLE_PROPERTIES_DIR, PROPERTIES_DIR):
        for file in folder.rglob("*.yaml"):
            if file.name not in _NOT_CONFIG_FILES:
                keys.update(_top_level_keys(file))
    return frozenset(keys)


def _top_level_keys(file):
    with open(file, "r", encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    return [key for key in values if isinstance(key, str)]
