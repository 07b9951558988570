"""RecBole ``Config`` that knows the plugin's models and default settings.

After RecBole has read its own defaults (``overall.yaml``, the model type's quick-start file and
``properties/model/<Model>.yaml`` for its own models), we lay ``mind_recbole/properties/overall.yaml``
and ``mind_recbole/properties/model/<Model>.yaml`` over them. Both count as *internal* defaults, so
the user's config files, ``config_dict`` and ``--key=value`` command-line arguments still win, as in
RecBole-GNN's ``Config``.

Two RecBole pitfalls are mended here. ``data_path`` is made absolute, so that a checkpoint (which
stores the config) reloads from any working directory. And a user-supplied ``eval_args`` used to
replace the whole default dict, so ``{'mode': 'full'}`` alone silently fell back to a random
8/1/1 split; we merge the user's keys over the defaults instead.
"""

import os
from pathlib import Path

from recbole.config import Config

from mind_recbole.registry import get_model

PROPERTIES_DIR = Path(__file__).resolve().parent / "properties"


class MindConfig(Config):
    """``recbole.config.Config`` with the plugin's model lookup and default properties."""

    def _get_model_and_dataset(self, model, dataset):
        if isinstance(model, str):
            model = get_model(model)
        elif model is None and isinstance(self.external_config_dict.get("model"), str):
            model = get_model(self.external_config_dict["model"])
        return super()._get_model_and_dataset(model, dataset)

    def _load_internal_config_dict(self, model, model_class, dataset):
        super()._load_internal_config_dict(model, model_class, dataset)
        for file in (PROPERTIES_DIR / "overall.yaml", PROPERTIES_DIR / "model" / f"{model}.yaml"):
            if file.is_file():
                self._update_internal_config_dict(str(file))

    def _set_default_parameters(self):
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
