"""Model lookup: the plugin's models first, then RecBole's own (the RecBole-GNN pattern)."""

import importlib
import importlib.util

PLUGIN_MODELS = ("MIND", "YouTubeDNN", "ComiRecSA", "ComiRecDR")

_RECBOLE_SUBMODULES = (
    "general_recommender",
    "context_aware_recommender",
    "sequential_recommender",
    "knowledge_aware_recommender",
    "exlib_recommender",
)


def get_model(model_name):
    """Return the model class called ``model_name``.

    Looks in ``mind_recbole.model.<name lower-cased>`` first, then in RecBole's model packages.
    Raises ``ValueError`` naming the model when neither has it (RecBole's own lookup fails with
    ``No module named 'lightgbm'`` instead, from its optional ``exlib_recommender`` package).
    """
    module_name = model_name.lower()
    for package in ["mind_recbole.model"] + [f"recbole.model.{sub}" for sub in _RECBOLE_SUBMODULES]:
        module_path = f"{package}.{module_name}"
        try:
            if importlib.util.find_spec(module_path) is None:
                continue
            module = importlib.import_module(module_path)
        except ImportError as error:  # exlib_recommender needs lightgbm / xgboost
            if package.endswith("exlib_recommender"):
                continue
            raise ImportError(f"model {model_name!r}: importing {module_path} failed: {error}") from error
        if hasattr(module, model_name):
            return getattr(module, model_name)
    raise ValueError(
        f"Unknown model {model_name!r}: it is neither a mind_recbole model ({', '.join(PLUGIN_MODELS)}) "
        "nor a RecBole model (names are case-sensitive, e.g. 'SASRec', 'GRU4Rec', 'Pop')."
    )
