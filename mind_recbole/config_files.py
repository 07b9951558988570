"""Which YAML config files a run reads when the user names none (``train`` and ``compare``).

In order, the first that exists:

1. ``configs/NAME.yaml`` in the working directory, else in the project checkout (the tuned
   settings for a dataset, e.g. ``configs/amazon-beauty.yaml``), followed by
   ``configs/NAME/MODEL.yaml`` beside it when there is one (a model's tuned settings);
2. ``DATA_PATH/NAME/NAME.yaml``, which ``mind-recbole prepare`` writes beside the atomic files
   (the dataset's fields, split by time), so a freshly prepared dataset trains without a config.
"""

from pathlib import Path

PROJECT_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEFAULT_DATA_PATH = Path("datasets")
PLUGIN_PROPERTIES = Path(__file__).resolve().parent / "properties"


def plugin_default_files(model):
    """The plugin's defaults that :class:`mind_recbole.config.MindConfig` lays over RecBole's for
    ``model`` (a name), in order: ``properties/overall.yaml``, then ``properties/model/MODEL.yaml``
    where the plugin has one (its own models)."""
    files = [PLUGIN_PROPERTIES / "overall.yaml", PLUGIN_PROPERTIES / "model" / f"{model}.yaml"]
    return [file for file in files if file.is_file()]


def tuned_config_file(config_dir, dataset, model):
    """``CONFIG_DIR/DATASET/MODEL.yaml``, a model's tuned settings for a dataset, or None."""
    path = Path(config_dir) / dataset / f"{model}.yaml"
    return path if path.is_file() else None


def dataset_config_files(dataset, model=None, data_path=None):
    """The config files for ``dataset`` (and ``model``'s tuned file), as listed above; [] if none."""
    for folder in (Path.cwd() / "configs", PROJECT_CONFIGS):
        candidate = folder / f"{dataset}.yaml"
        if candidate.is_file():
            tuned = tuned_config_file(folder, dataset, model) if model else None
            return [candidate] + ([tuned] if tuned else [])
    prepared = Path(data_path or DEFAULT_DATA_PATH) / dataset / f"{dataset}.yaml"
    return [prepared] if prepared.is_file() else []
