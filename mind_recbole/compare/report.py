"""``results/NAME.md``, ``results/NAME.json`` and ``results/NAME.png`` from the comparison's runs.

The page opens with a summary of where MIND stands (its place in each protocol, the paired test
against the model next to it, its diagnostics beside YouTubeDNN's), then follows RecBole's own
results pages: the setting, the YAML used, dataset statistics, then
one table per protocol (mean ± std over seeds; "n/a" for a model the protocol has no place for),
paired tests of MIND against each model (:mod:`mind_recbole.compare.significance`), training cost,
and the interest diagnostics. A valid-only comparison writes ``NAME-valid.md`` / ``.json`` /
``.png`` instead: the best validation results, nothing of the test split.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict
from pathlib import Path

from mind_recbole.atomic_write import replaced_on_success, write_json, write_text
from mind_recbole.compare.runner import CTR_MODELS, no_place
from mind_recbole.compare.significance import REFERENCE, RESAMPLES, format_p
from mind_recbole.config_files import plugin_default_files

PROTOCOLS = {
    "full": "Leave-one-out, full ranking",
    "sampled": "Leave-one-out, target among 100 sampled negatives",
    "multi_interest": "Multi-interest protocol (ComiRec): held-out users, 20 % of each sequence as targets",
}
PROTOCOL_TEXT = {
    "full": (
        "Each user's last interaction (by time) is the test target, the one before it validates; the "
        "model ranks **every item** of the catalogue (as RecBole does, a general model such as Pop has the "
        "user's past items removed from its list, a sequential model does not). Recall@N equals "
        "Hit@N here (one target per user). DIN cannot rank the catalogue (it scores given pairs): n/a."
    ),
    "sampled": (
        "The same trained models and test targets, but each target is ranked against **100 items "
        "sampled uniformly** from those the user never interacted with (RecBole `uni100`; the same "
        "negatives for every model). Easier than full ranking, and the only protocol DIN supports; "
        "numbers are not comparable with the full-ranking table."
    ),
    "multi_interest": (
        "Users are split 8/1/1 (seeded); models train on the training users only. For a held-out "
        "user the first 80 % of the sequence is the history and **all remaining 20 %** are targets; "
        "the model ranks the whole catalogue once. Recall@N = found targets / targets, NDCG with the "
        "ideal DCG of min(N, targets) hits, Hit@N = at least one target found; validation users "
        "drive early stopping, test users are reported. The setting of ComiRec (Cen et al., KDD 2020). "
        "ItemKNN and EASE are n/a: RecBole's implementations score a user by the user's row of the "
        "training interaction matrix, and a held-out user has none (both are item-item models that "
        "could score a new history folded in; RecBole's do not)."
    ),
}
SHORT_TITLES = {
    "full": "Full ranking (leave-one-out)",
    "sampled": "100 sampled negatives (leave-one-out)",
    "multi_interest": "Multi-interest protocol (held-out users)",
}
VALIDATION_TITLE = "Validation split, best epoch: "
METRIC_ORDER = ("recall", "ndcg", "hit", "mrr")
DIAGNOSTICS = (
    ("interests", "active interests K'_u"),
    ("interest_cosine", "mean pairwise cosine of a user's interests"),
    ("interest_categories", "distinct dominant categories over the interests"),
    ("union_categories@10", "categories in the union of per-interest top-10 lists"),
    ("categories@50", "categories in the final top-50 list"),
    ("history_categories", "categories in the user's history"),
)


def protocol_title(key):
    """The title of a protocol's table: ``full``, ``sampled``, ``multi_interest`` or their ``valid_`` forms."""
    protocol = key.removeprefix("valid_")
    if protocol == key:
        return PROTOCOLS[key]
    return VALIDATION_TITLE + PROTOCOLS[protocol][0].lower() + PROTOCOLS[protocol][1:]


def validation_results(record):
    """A run's best validation result under its protocol's name with a ``valid_`` prefix (DIN
    validates on sampled negatives, the other leave-one-out runs on full ranking)."""
    if record.group == "multi_interest":
        protocol = "multi_interest"
    else:
        protocol = "sampled" if record.model in CTR_MODELS else "full"
    return {f"valid_{protocol}": record.best_valid} if record.best_valid else {}


def aggregate(records, results_of=lambda record: record.results):
    """``{protocol: {model: {metric: (mean, std, n)}}}`` over seeds, of ``results_of(record)``
    (protocol -> metric -> value; default: the test results)."""
    values = {}
    for record in records:
        for protocol, metrics in results_of(record).items():
            for metric, value in metrics.items():
                values.setdefault(protocol, {}).setdefault(record.model, {}).setdefault(metric, []).append(value)
    return {
        protocol: {model: {m: _mean_std(v) for m, v in metrics.items()} for model, metrics in by_model.items()}
        for protocol, by_model in values.items()
    }


def _mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def report_name(dataset, valid_only=False):
    """The report's file name stem: ``DATASET``, or ``DATASET-valid`` for a valid-only comparison."""
    return f"{dataset}-valid" if valid_only else dataset


def write_report(dataset, records, out, config_files, statistics_rows, command, elapsed_seconds, missing=(),
                 paired=(), valid_only=False, groups=()):
    """Write the three files (``paired``: :class:`~mind_recbole.compare.significance.PairRow` list,
    ``groups``: :class:`~mind_recbole.compare.interest_groups.GroupRow` list); return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = aggregate(records, validation_results) if valid_only else aggregate(records)
    stem = report_name(dataset, valid_only)
    paths = {
        "json": write_json(out / f"{stem}.json", _json_payload(dataset, records, table, paired, valid_only, groups)),
        "png": plot_recall(dataset, table, out / f"{stem}.png"),
    }
    markdown = render_markdown(dataset, records, table, config_files, statistics_rows, command, elapsed_seconds,
                               paths["png"], missing, paired, valid_only, read_alone_speed(out / f"{dataset}-epoch-speed.json"),
                               groups)
    paths["md"] = write_text(out / f"{stem}.md", markdown)
    return paths


def _json_payload(dataset, records, table, paired=(), valid_only=False, groups=()):
    def column(index):  # 0: mean, 1: std
        return {p: {m: {k: v[index] for k, v in metrics.items()} for m, metrics in by_model.items()}
                for p, by_model in table.items()}

    return {"dataset": dataset, "valid_only": valid_only, "protocols": column(0), "std": column(1),
            "paired_tests": [asdict(row) for row in paired], "interest_groups": [asdict(row) for row in groups],
            "runs": [r.to_json() for r in records]}


def read_alone_speed(path):
    """What ``benchmarks/epoch_speed.py --json PATH`` wrote (seconds per epoch measured alone), or None."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def render_markdown(dataset, records, table, config_files, statistics_rows, command, elapsed_seconds, plot,
                    missing=(), paired=(), valid_only=False, alone_speed=None, groups=()):
    lines = [
        f"# {dataset}: MIND against the baselines" + (", validation only" if valid_only else ""),
        "",
        f"Command: `{command}` ({len(records)} trainings, {elapsed_seconds / 60:.0f} min of training "
        f"and evaluation wall time on this machine). Seeds: {_seed_text(records)}; "
        "tables give mean ± std over seeds. Each run's raw numbers are in "
        f"`{dataset}-runs/`, all of them in `{report_name(dataset, valid_only)}.json`.",
        "",
    ]
    if valid_only:
        lines += ["Validation results only (`--valid-only`): each run's best validation epoch. The test split "
                  "was not evaluated (and the test results of tested runs reused here are left out).", ""]
    lines += _data_lines(records)
    summary = [] if valid_only else _summary_lines(table, records, paired, groups)
    if summary:
        lines += ["## Summary", "", *summary, ""]
    if missing:
        lines += [f"**Not in these tables** (asked for, no finished run in `{dataset}-runs/`): {', '.join(missing)}.", ""]
    lines += ["## Setting", ""]
    for protocol, text in PROTOCOL_TEXT.items():
        if protocol in table or f"valid_{protocol}" in table:
            lines += [f"- **{PROTOCOLS[protocol]}**: {text}"]
    lines += ["", "## Dataset", "", "| statistic | value |", "| --- | ---: |"]
    lines += [f"| {name} | {value} |" for name, value in statistics_rows]
    models = _unique(r.model for r in records)
    for protocol in PROTOCOLS:
        key = f"valid_{protocol}" if valid_only else protocol
        if key in table:
            lines += ["", f"## {protocol_title(key)}", "", *_metric_table(table[key], models, protocol)]
            runner_up = _runner_up(table[key], "recall@50")
            best = _leader(table[key], "recall@50", _find_pair(paired, protocol, runner_up, "recall@50"))
            if best:
                lines += ["", best]
    if paired:
        lines += ["", f"## Paired tests: {REFERENCE} against each model", "", *_paired_tables(paired)]
    if groups:
        lines += ["", *_interest_group_tables(groups)]
    lines += ["", "## Training cost (leave-one-out runs)", "", *_cost_table(records), "",
              "Seconds per epoch are the wall time each run saw; runs that shared the machine with others "
              "are slower than alone (clean speed figures come from `benchmarks/`). Minutes per run include "
              "building the model (all of ItemKNN's and EASE's fitting: their one epoch does nothing) and "
              "evaluation."]
    if alone_speed:
        lines += ["", *_alone_speed_lines(alone_speed, f"{dataset}-epoch-speed.json")]
    if not valid_only:
        lines += ["", "## Interest diagnostics (leave-one-out test users)", "", *_diagnostics_table(records)]
    if plot:
        lines += ["", f"![Recall@N per model]({Path(plot).name})"]
    lines += ["", "## Configuration", "",
              "Each run reads RecBole's defaults, then the plugin's defaults for the model (its recipe), then the "
              "config files it was given, later files winning:", ""]
    defaults = [f for model in models for f in plugin_default_files(model)]
    for name, text in config_sections([*defaults, *config_files, *(f for r in records for f in r.config_files)]):
        lines += [f"`{name}`:", ""] + (["```yaml", text.rstrip(), "```"] if text is not None else
                                       ["(no longer on disk)"]) + [""]
    return "\n".join(lines).rstrip() + "\n"


def _seed_text(records):
    """``2020, 2021, 2022 (MIND, SASRec); 2020 (the others)``, or the seeds alone when every model had them."""
    by_model = {}
    for record in records:
        by_model.setdefault(record.model, set()).add(record.seed)
    groups = {}
    for model, seeds in by_model.items():
        groups.setdefault(tuple(sorted(seeds)), []).append(model)
    if len(groups) <= 1:
        return ", ".join(map(str, next(iter(groups), ())))
    ordered = sorted(groups.items(), key=lambda item: -len(item[0]))
    parts = [f"{', '.join(map(str, seeds))} ({', '.join(models)})" for seeds, models in ordered[:-1]]
    seeds, _ = ordered[-1]
    return "; ".join([*parts, f"{', '.join(map(str, seeds))} (the others)"])


def _paired_tables(paired):
    """One table per protocol of :class:`~mind_recbole.compare.significance.PairRow`."""
    lines = [
        f"Per test user, each model's value averaged over its seeds; users scored by both models only. "
        f"Mean difference {REFERENCE} minus the other, its 95 % interval and two-sided p-value from a paired "
        f"bootstrap over users ({RESAMPLES:,} resamples, fixed seed), and Wilcoxon's signed-rank p-value "
        "(zero differences dropped) as a second opinion. Full ranking: Recall@50 is Hit@50 (one target).",
    ]
    for protocol, title in PROTOCOLS.items():
        rows = [row for row in paired if row.protocol == protocol]
        if not rows:
            continue
        lines += ["", f"### {title}", "",
                  "| pair | metric | mean difference | 95 % CI | p (bootstrap) | p (Wilcoxon) | users |",
                  "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in rows:
            pair = f"{REFERENCE} vs {row.model}"
            test = row.test
            if test is None:
                lines.append(f"| {pair} | {row.metric} | {row.note} | | | | |")
                continue
            if row.note:
                pair += f" ({row.note})"
            lines.append(
                f"| {pair} | {row.metric} | {test.mean_difference:+.4f} | [{test.ci_low:+.4f}, {test.ci_high:+.4f}] "
                f"| {format_p(test.p_bootstrap)} | {format_p(test.p_wilcoxon)} | {test.users:,} |"
            )
    return lines


def _interest_group_tables(groups):
    """The section of :mod:`~mind_recbole.compare.interest_groups`: one table per protocol and model."""
    lines = []
    for model, model_rows in _grouped(groups, lambda row: row.model).items():
        metric = model_rows[0].metric
        lines += [
            f"## {REFERENCE} against {model} by the number of interests {REFERENCE} gives a user", "",
            f"Test users grouped by K'_u = max(1, min(K, floor(log2 |I_u|))), the interests {REFERENCE} gives a "
            f"history of |I_u| items (leave-one-out: every interaction before the target; multi-interest: the "
            f"first 80 %; at most MAX_ITEM_LIST_LENGTH). Several interests can only help users who have several. "
            f"{metric.capitalize()} of each model averaged over its seeds per user, users scored by both; the "
            f"difference {REFERENCE} minus {model} with a paired bootstrap within each group, as above.",
        ]
        for protocol, title in PROTOCOLS.items():
            rows = [row for row in model_rows if row.protocol == protocol]
            if not rows:
                continue
            lines += ["", f"### {title}", "",
                      f"| {REFERENCE}'s interests | history length | users | {REFERENCE} | {model} | "
                      "difference | 95 % CI | p (bootstrap) |",
                      "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for row in rows:
                test = row.test
                if test is None:
                    lines.append(f"| | | | | | {row.note} | | |")
                    continue
                lines.append(
                    f"| {row.interests} | {row.lengths} | {test.users:,} | {row.reference_mean:.4f} | "
                    f"{row.other_mean:.4f} | {test.mean_difference:+.4f} | "
                    f"[{test.ci_low:+.4f}, {test.ci_high:+.4f}] | {format_p(test.p_bootstrap)} |")
            notes = _unique(row.note for row in rows if row.test is not None and row.note)
            if notes:
                lines += ["", f"({'; '.join(notes)})"]
        lines.append("")
    return lines[:-1]


def _data_lines(records):
    """Which atomic files the runs were trained on (:func:`~mind_recbole.compare.runner.data_fingerprint`)."""
    fingerprints = _unique(r.data_fingerprint for r in records)
    return [f"Atomic files: SHA-256 `{'`, `'.join(fingerprints)}` ({len(records)} runs).", ""]


def _metric_table(by_model, models=(), protocol=""):
    """Models ranked by recall@50, then an n/a row for each of ``models`` that ``protocol`` has no place for."""
    metrics = sorted({m for metrics in by_model.values() for m in metrics}, key=_metric_key)
    lines = ["| model | " + " | ".join(metrics) + " |", "| --- |" + " ---: |" * len(metrics)]
    ranked = sorted(by_model, key=lambda m: -by_model[m].get("recall@50", (0,))[0])
    for model in ranked:
        cells = []
        for metric in metrics:
            mean, std, n = by_model[model].get(metric, (float("nan"), 0.0, 0))
            cells.append(f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    absent = [(model, no_place(model, protocol)) for model in models if model not in by_model]
    lines += [f"| {model} | " + " | ".join(["n/a"] * len(metrics)) + " |" for model, why in absent if why]
    notes = [f"{model}: {why}" for model, why in absent if why]
    return lines + (["", "n/a: " + "; ".join(notes) + "."] if notes else [])


def _metric_key(metric):
    name, cutoff = metric.split("@")
    return (METRIC_ORDER.index(name) if name in METRIC_ORDER else len(METRIC_ORDER), int(cutoff))


def _leader(by_model, metric, pair=None):
    """The first two models in ``metric``, and where MIND stands: its gap to the leader, or its margin
    judged against the seed spread and the paired test (``pair``: MIND's
    :class:`~mind_recbole.compare.significance.PairRow` against the runner-up, if any)."""
    scored = _ranked(by_model, metric)
    if len(scored) < 2:
        return ""
    (first, leader), (second, runner_up) = scored[0], scored[1]
    mind = dict((m, s) for s, m in scored).get(REFERENCE)
    text = f"First in {metric}: **{leader}** ({first:.4f}), then {runner_up} ({second:.4f})"
    if mind is not None and leader != REFERENCE:
        text += f"; {REFERENCE} {mind:.4f} ({_percent(mind - first, first)} against the leader)"
    elif leader == REFERENCE:
        text += f"; {REFERENCE} leads by {first - second:+.4f} ({_percent(first - second, second)})" + _margin_verdict(
            by_model, metric, leader, runner_up, first - second) + _pair_verdict(pair)
    return text + "."


def _percent(change, base):
    """``change`` relative to ``base`` as a signed percentage; ``n/a %`` when ``base`` is 0."""
    return f"{change / base:+.1%}" if base else "n/a %"


def _ranked(by_model, metric):
    """``[(mean, model)]`` of the models that have ``metric``, best first."""
    return sorted(((v[metric][0], m) for m, v in by_model.items() if metric in v), reverse=True)


def _runner_up(by_model, metric):
    """The second model in ``metric`` (None with fewer than two)."""
    scored = _ranked(by_model, metric)
    return scored[1][1] if len(scored) > 1 else None


def _margin_verdict(by_model, metric, leader, runner_up, margin):
    """``, within the sum of their seed std (0.0011; SASRec: one seed): not a lead``, or ``, more than ...``;
    a model with one seed has no measured spread, so a margin above the other's std alone is not called a lead."""
    spread = sum(by_model[m][metric][1] for m in (leader, runner_up))
    single = [m for m in (leader, runner_up) if by_model[m][metric][2] < 2]
    spread_text = f"{spread:.4f}" + "".join(f"; {m}: one seed" for m in single)
    if margin <= spread:
        return f", within the sum of their seed std ({spread_text}): not a lead"
    if single:
        return (f", more than the sum of their seed std ({spread_text}), but one seed has no spread to measure: "
                "not an established lead")
    return f", more than the sum of their seed std ({spread_text})"


def _pair_verdict(pair):
    """``; paired test p = 0.003 (bootstrap)`` for MIND against the runner-up, or why there is none."""
    if pair is None:
        return "; no paired test"
    if pair.test is None:  # the note reads "n/a (why)"
        return f"; no paired test ({pair.note.removeprefix('n/a (').removesuffix(')')})"
    return f"; paired test p = {format_p(pair.test.p_bootstrap)} (bootstrap, {pair.test.users:,} users)"


def _summary_lines(table, records, paired, groups=()):
    """Where MIND stands, in a few lines: its place in each protocol's recall@50, the paired test against
    the model next to it, its difference to each model of ``groups`` by its number of interests, and its
    diagnostics beside YouTubeDNN's (its single-interest twin)."""
    lines = []
    for protocol, title in SHORT_TITLES.items():
        by_model = table.get(protocol, {})
        ranked = [m for _, m in _ranked(by_model, "recall@50")]
        if REFERENCE not in ranked or len(ranked) < 2:
            continue
        place = ranked.index(REFERENCE)
        neighbour = ranked[1] if place == 0 else ranked[0]
        mind, other = by_model[REFERENCE]["recall@50"][0], by_model[neighbour]["recall@50"][0]
        standing = "first" if place == 0 else f"**not first**: {_ordinal(place + 1)} of {len(ranked)}"
        margin = _margin_verdict(by_model, "recall@50", REFERENCE, neighbour, mind - other) if place == 0 else ""
        pair = _find_pair(paired, protocol, neighbour, "recall@50")
        lines.append(f"- {title}: {REFERENCE} is {standing} in recall@50 ({mind:.4f} against {neighbour}'s "
                     f"{other:.4f}, {mind - other:+.4f}){margin}{_pair_verdict(pair)}.")
    lines += _group_summary_lines(groups)
    runs_of = _leave_one_out_runs(records)
    mean = {(model, name): statistics.fmean(r.diagnostics[name] for r in runs_of[model] if name in r.diagnostics)
            for model in (REFERENCE, "YouTubeDNN") if model in runs_of for name in ("interest_cosine", "categories@50")
            if any(name in r.diagnostics for r in runs_of[model])}
    if (REFERENCE, "interest_cosine") in mean:
        lines.append(f"- {REFERENCE}'s interests of a user have a mean pairwise cosine of "
                     f"{mean[REFERENCE, 'interest_cosine']:.3f} (1 would be one interest repeated).")
    if (REFERENCE, "categories@50") in mean and ("YouTubeDNN", "categories@50") in mean:
        mine, single = mean[REFERENCE, "categories@50"], mean["YouTubeDNN", "categories@50"]
        lines.append(f"- Categories in the top-50 list: {REFERENCE} {mine:.3f}, YouTubeDNN {single:.3f} "
                     f"({'more' if mine > single else 'not more'} diverse than its single-interest twin).")
    return lines


def _group_summary_lines(groups):
    """A line per protocol and model of :mod:`~mind_recbole.compare.interest_groups`: the difference in
    each group of users, by how many interests MIND gives them."""
    lines = []
    for (protocol, model), rows in _grouped(groups, lambda row: (row.protocol, row.model)).items():
        tested = [row for row in rows if row.test is not None]
        if protocol not in SHORT_TITLES or not tested:
            continue
        parts = [f"{row.test.mean_difference:+.4f} at {row.interests} interests ({row.lengths} items, "
                 f"{row.test.users:,} users, p = {format_p(row.test.p_bootstrap)})" for row in tested]
        lines.append(f"- {SHORT_TITLES[protocol]}, {REFERENCE} minus {model} in {tested[0].metric} by the interests "
                     f"{REFERENCE} gives a user: {'; '.join(parts)}.")
    return lines


def _grouped(items, key):
    """``{key(item): [items]}`` in first-seen order."""
    grouped = {}
    for item in items:
        grouped.setdefault(key(item), []).append(item)
    return grouped


def _find_pair(paired, protocol, model, metric):
    return next((row for row in paired if (row.protocol, row.model, row.metric) == (protocol, model, metric)), None)


def _ordinal(n):
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


def _leave_one_out_runs(records):
    """``{model: [leave-one-out records]}``, models in run order."""
    by_model = {}
    for record in records:
        if record.group == "leave_one_out":
            by_model.setdefault(record.model, []).append(record)
    return by_model


def _cost_table(records):
    lines = ["| model | seconds per epoch | epochs run | epochs to best | minutes per run | parameters |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for model, runs in _leave_one_out_runs(records).items():
        seconds = statistics.fmean(r.seconds_per_epoch for r in runs if r.seconds_per_epoch)
        epochs = statistics.fmean(r.epochs for r in runs)
        best = [r.best_epoch for r in runs if r.best_epoch]
        best_text = f"{statistics.fmean(best):.1f}" if best else "-"
        minutes = statistics.fmean(r.wall_seconds for r in runs) / 60
        lines.append(f"| {model} | {seconds:.1f} | {epochs:.1f} | {best_text} | {minutes:.1f} | {runs[0].parameters:,} |")
    return lines


def _alone_speed_lines(speed, file_name):
    """Seconds per epoch of each model's recipe measured alone (:func:`read_alone_speed`), relative to MIND's."""
    rows = [row for row in speed["rows"] if row["machine"] == "idle"]
    reference = {row["threads"]: row["seconds_per_epoch"] for row in rows if row["model"] == REFERENCE}
    commands = speed["command"] if isinstance(speed["command"], list) else [speed["command"]]
    note = f" {speed['note']}" if speed.get("note") else ""
    lines = [f"Seconds per training epoch **measured alone** (nothing else running; "
             f"{', then '.join(f'`{command}`' for command in commands)}; {speed['date']}, {speed['cpus']} CPUs, "
             f"in `{file_name}`): each model with the config files above.{note}",
             "", f"| model | torch threads | seconds per epoch | relative to {REFERENCE} |", "| --- | ---: | ---: | ---: |"]
    for row in sorted(rows, key=lambda row: (row["threads"], row["seconds_per_epoch"])):
        mine = reference.get(row["threads"])
        relative = f"{row['seconds_per_epoch'] / mine:.2f}x" if mine else "-"
        lines.append(f"| {row['model']} | {row['threads']} | {row['seconds_per_epoch']:.1f} | {relative} |")
    return lines


def _diagnostics_table(records):
    by_model = _leave_one_out_runs(records)
    names = [n for n, _ in DIAGNOSTICS if any(n in r.diagnostics for runs in by_model.values() for r in runs)]
    if not names:
        return ["(no diagnostics: the dataset has no category field)"]
    lines = ["| model | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for model, runs in by_model.items():
        cells = []
        for name in names:
            values = [r.diagnostics[name] for r in runs if name in r.diagnostics]
            cells.append(f"{statistics.fmean(values):.3f}" if values else "-")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    lines += ["", *(f"- `{n}`: {text}" for n, text in DIAGNOSTICS if n in names)]
    return lines


def plot_recall(dataset, table, path):
    """Recall@N per model, one panel per ranking protocol; None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [key for p in ("full", "multi_interest", "sampled") for key in (p, f"valid_{p}") if key in table]
    if not panels:
        return None
    colors = model_colors(table)
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for axis, protocol in zip(axes[0], panels):
        for model, metrics in sorted(table[protocol].items()):
            cutoffs = sorted(int(m.split("@")[1]) for m in metrics if m.startswith("recall@"))
            means = [metrics[f"recall@{n}"][0] for n in cutoffs]
            stds = [metrics[f"recall@{n}"][1] for n in cutoffs]
            axis.errorbar(cutoffs, means, yerr=stds, marker="o", capsize=3, label=model, color=colors[model],
                          linewidth=2.5 if model == "MIND" else 1.2)
        axis.set_title(protocol_title(protocol), fontsize=9)
        axis.set_xlabel("N")
        axis.set_ylabel("Recall@N")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    figure.suptitle(f"{dataset}: Recall@N (mean ± std over seeds)")
    figure.tight_layout()
    with replaced_on_success(path) as temporary:
        figure.savefig(temporary, dpi=110)
    plt.close(figure)
    return path


def model_colors(table):
    """One matplotlib colour per model, the same in every panel (DIN appears in one panel only)."""
    models = sorted({model for by_model in table.values() for model in by_model})
    return {model: f"C{index % 10}" for index, model in enumerate(models)}


def config_sections(files):
    """``(name, text)`` per distinct config file of the comparison, in first-seen order.

    Runs may have been trained from another checkout of the project (a second worktree, another
    machine's path): a file is named relative to the project root above it (the folder with
    ``pyproject.toml``), else to the working directory, so the same ``configs/...`` file is shown
    once. Copies whose contents differ are each shown under their full path; a file no longer on
    disk has ``None`` as its text.
    """
    copies = {}  # name -> {text: first path with that text}
    for path in _unique(Path(f).resolve() for f in files):
        text = path.read_text() if path.is_file() else None
        copies.setdefault(_display(path), {}).setdefault(text, str(path))
    sections = []
    for name, by_text in copies.items():
        if len(by_text) == 1:
            sections.append((name, next(iter(by_text))))
        else:
            sections += [(file, text) for text, file in by_text.items()]
    return sections


def _display(path):
    """A config path relative to the nearest project root above it, else to the working directory, else as given."""
    root = next((parent for parent in path.parents if (parent / "pyproject.toml").is_file()), Path.cwd())
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _unique(items):
    return list(dict.fromkeys(items))

