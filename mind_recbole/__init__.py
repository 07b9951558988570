"""mind-recbole: MIND (multi-interest retrieval) as a RecBole plugin.

``run_recbole`` and ``load_data_and_model`` mirror ``recbole.quick_start`` and find the plugin's
models (``MIND``, ``YouTubeDNN``) before RecBole's own. Importing this package imports neither
torch nor RecBole.
"""

__version__ = "0.1.0"


def run_recbole(model=None, dataset=None, config_file_list=None, config_dict=None, saved=True, **options):
    """Train and test a model; see :func:`mind_recbole.quick_start.run_recbole` (``options``:
    ``evaluate_test``, ``resume``)."""
    from mind_recbole.quick_start import run_recbole as _run_recbole

    return _run_recbole(model, dataset, config_file_list, config_dict, saved, **options)


def load_data_and_model(model_file, **options):
    """Rebuild a trained model and its data; see :func:`mind_recbole.quick_start.load_data_and_model`
    (``options``: ``state``, the log level while loading)."""
    from mind_recbole.quick_start import load_data_and_model as _load

    return _load(model_file, **options)
