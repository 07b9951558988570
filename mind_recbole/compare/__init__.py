"""``mind-recbole compare``: every model on one dataset, one split, one evaluation; tables and a plot."""

import time
from pathlib import Path

from mind_recbole.compare.report import write_report
from mind_recbole.compare.runner import CTR_MODELS, DEFAULT_MODELS, PROTOCOL_GROUPS, collect_runs

__all__ = ["DEFAULT_MODELS", "PROTOCOL_GROUPS", "compare", "dataset_statistics", "compare"]


def dataset_statistics(dataset, config_files, overrides=None):
    """Rows ``(name, value)`` describing the atomic files the comparison reads."""
    import statistics

    from mind_recbole.evaluation.multi_interest import read_sequences
    from mind_recbole.training import build_config

    config = build_config("Pop", dataset, [str(f) for f in config_files], dict(overrides or {}))
    sequences = read_sequences(
        Path(config["data_path"]) / f"{dataset}.inter",
        config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["TIME_FIELD"],
    )
    lengths = [len(s) for s in sequences.values()]
    items = len({i for s in sequences.values() for i in s})
    interactions = sum(lengths)
    return [
        ("users", f"{len(sequences):,}"),
        ("items", f"{items:,}"),
        ("interactions", f"{interactions:,}"),
        ("interactions per user (mean / median / max)",
         f"{statistics.fmean(lengths):.1f} / {statistics.median(lengths):g} / {max(lengths)}"),
        ("density", f"{interactions / (len(sequences) * items):.5f}"),
        ("history length kept (MAX_ITEM_LIST_LENGTH)", str(config["MAX_ITEM_LIST_LENGTH"])),
    ]


def compare(dataset, models=DEFAULT_MODELS, config_files=(), seeds=1, out="results",
                   groups=PROTOCOL_GROUPS, overrides=None, rerun=False, command="", log=print,
                   report_only=False, config_dir="configs"):
    """Train / reuse every run, then write ``OUT/DATASET.md``, ``.json`` and ``.png``; their paths."""
    started = time.perf_counter()
    records = collect_runs(dataset, models, config_files, seeds, out, groups, overrides, rerun=rerun, log=log,
                      report_only=report_only, config_dir=config_dir)
    if not records:
        raise ValueError(f"no runs of {dataset} in {out}: nothing to report")
    trained = sum(r.wall_seconds for r in records)
    rows = dataset_statistics(dataset, config_files, overrides)
    done = {(r.model, r.group, r.seed) for r in records}
    seed_list = sorted({r.seed for r in records})
    missing = [f"{m} ({g})" for g in groups for m in models
               if m not in CTR_MODELS or g != "multi_interest"
               if any((m, g, s) not in done for s in seed_list)]
    paths = write_report(dataset, records, out, config_files, rows, command, trained, missing)
    log(f"compare: {len(records)} runs, {(time.perf_counter() - started) / 60:.1f} min in this call")
    return paths
