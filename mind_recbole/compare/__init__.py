"""``mind-recbole compare``: every model on one dataset, one split, one evaluation; tables and a plot."""

import time
from pathlib import Path

from mind_recbole.compare.interest_groups import history_lengths, paired_tests_by_interest_count
from mind_recbole.compare.report import write_report
from mind_recbole.compare.runner import (
    DEFAULT_MODELS,
    PROTOCOL_GROUPS,
    SEED_SWEEP_MODELS,
    collect_runs,
    first_seed,
    missing_runs,
    model_config_files,
    run_plan,
)
from mind_recbole.compare.significance import REFERENCE, paired_tests

__all__ = ["DEFAULT_MODELS", "PROTOCOL_GROUPS", "SEED_SWEEP_MODELS", "compare", "dataset_statistics"]


def dataset_sequences(dataset, config_files, overrides=None):
    """``(config, sequences)``: the dataset's RecBole config (as Pop reads it) and
    ``{user token: [item tokens in time order]}`` of its ``.inter`` file."""
    from mind_recbole.evaluation.multi_interest import read_sequences
    from mind_recbole.training import build_config

    config = build_config("Pop", dataset, [str(f) for f in config_files], dict(overrides or {}))
    sequences = read_sequences(
        Path(config["data_path"]) / f"{dataset}.inter",
        config["USER_ID_FIELD"], config["ITEM_ID_FIELD"], config["TIME_FIELD"],
    )
    return config, sequences


def dataset_statistics(config, sequences):
    """Rows ``(name, value)`` describing the atomic files the comparison reads (:func:`dataset_sequences`)."""
    import statistics

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


def interest_group_tests(records, run_dir, dataset, config_files, overrides, config_dir, config, sequences):
    """:func:`~mind_recbole.compare.interest_groups.paired_tests_by_interest_count` with MIND's ``K`` from
    MIND's config in this comparison; [] without a tested MIND run."""
    from mind_recbole.training import build_config

    if not any(r.model == REFERENCE and r.results for r in records):
        return []
    files = [str(f) for f in (*config_files, *model_config_files(dataset, REFERENCE, config_dir))]
    interest_num = build_config(REFERENCE, dataset, files, dict(overrides or {}))["interest_num"]
    lengths = history_lengths(sequences, config["MAX_ITEM_LIST_LENGTH"])
    return paired_tests_by_interest_count(records, run_dir, lengths, interest_num)


def compare(dataset, models=DEFAULT_MODELS, config_files=(), seeds=1, out="results", groups=PROTOCOL_GROUPS,
            overrides=None, rerun=False, command="", log=print, report_only=False, config_dir="configs",
            seed_models=SEED_SWEEP_MODELS, valid_only=False):
    """Train / reuse every run, then write ``OUT/DATASET.md``, ``.json`` and ``.png`` (``DATASET-valid.*``
    when ``valid_only``); their paths. ``seeds`` seeds for ``seed_models``, one for the other models."""
    started = time.perf_counter()
    records = collect_runs(dataset, models, config_files, seeds, out, groups, overrides, rerun=rerun, log=log,
                           report_only=report_only, config_dir=config_dir, seed_models=seed_models,
                           valid_only=valid_only)
    if not records:
        raise ValueError(f"no runs of {dataset} in {out}: nothing to report")
    trained = sum(r.wall_seconds for r in records)
    config, sequences = dataset_sequences(dataset, config_files, overrides)
    rows = dataset_statistics(config, sequences)
    done = {(r.model, r.seed, r.group) for r in records}
    plan = run_plan(models, groups, seeds, first_seed(dict(overrides or {})), seed_models)
    missing = missing_runs(plan, done)
    run_dir = Path(out) / f"{dataset}-runs"
    paired, groups = [], []
    if not valid_only:
        paired = paired_tests(records, run_dir)
        groups = interest_group_tests(records, run_dir, dataset, config_files, overrides, config_dir, config,
                                      sequences)
    paths = write_report(dataset, records, out, config_files, rows, command, trained, missing, paired, valid_only,
                         groups)
    log(f"compare: {len(records)} runs, {(time.perf_counter() - started) / 60:.1f} min in this call")
    return paths
