"""A run's result as the command line reports it: a JSON-ready record and a metrics table."""


def result_record(model, dataset, result, config_files):
    """A JSON-ready summary of one run (metric names as RecBole writes them, e.g. ``recall@50``)."""
    epoch_seconds = result.get("train_epoch_seconds") or []
    return {
        "model": model,
        "dataset": dataset,
        "config_files": [str(f) for f in config_files],
        "best_valid_result": {k: float(v) for k, v in result["best_valid_result"].items()},
        "test_result": {k: float(v) for k, v in (result["test_result"] or {}).items()} or None,
        "epochs": len(epoch_seconds),
        "seconds_per_epoch": sum(epoch_seconds) / len(epoch_seconds) if epoch_seconds else None,
        "saved_model_file": result.get("saved_model_file"),
    }


def format_metrics_table(results, title):
    """Rows: models; columns: metrics (``{model: {metric: value}}``)."""
    metrics = list(next(iter(results.values())))
    width = max(len("model"), *(len(m) for m in results))
    lines = [title, "  ".join(["model".ljust(width)] + [m.rjust(10) for m in metrics])]
    for model, values in results.items():
        lines.append("  ".join([model.ljust(width)] + [f"{values.get(m, float('nan')):10.4f}" for m in metrics]))
    return "\n".join(lines)
