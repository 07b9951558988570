"""``results/NAME.md``, ``results/NAME.json`` and ``results/NAME.png`` from the comparison's runs.

The page follows RecBole's own results pages: the setting, the YAML used, dataset statistics, then
one table per protocol (mean ± std over seeds), training cost, and the interest diagnostics.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from mind_recbole.atomic_write import replaced_on_success, write_json, write_text

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
        "Hit@N here (one target per user). DIN cannot rank the catalogue (it scores given pairs) "
        "and is absent."
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
        "drive early stopping, test users are reported. The setting of ComiRec (Cen et al., KDD 2020)."
    ),
}
METRIC_ORDER = ("recall", "ndcg", "hit", "mrr")
DIAGNOSTICS = (
    ("interests", "active interests K'_u"),
    ("interest_cosine", "mean pairwise cosine of a user's interests"),
    ("interest_categories", "distinct dominant categories over the interests"),
    ("union_categories@10", "categories in the union of per-interest top-10 lists"),
    ("categories@50", "categories in the final top-50 list"),
    ("history_categories", "categories in the user's history"),
)


def aggregate(records):
    """``{protocol: {model: {metric: (mean, std, n)}}}`` over seeds."""
    values = {}
    for record in records:
        for protocol, metrics in record.results.items():
            for metric, value in metrics.items():
                values.setdefault(protocol, {}).setdefault(record.model, {}).setdefault(metric, []).append(value)
    return {
        protocol: {model: {m: _mean_std(v) for m, v in metrics.items()} for model, metrics in by_model.items()}
        for protocol, by_model in values.items()
    }


def _mean_std(values):
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0), len(values)


def write_report(dataset, records, out, config_files, statistics_rows, command, elapsed_seconds, missing=()):
    """Write the three files; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    table = aggregate(records)
    paths = {
        "json": write_json(out / f"{dataset}.json", _json_payload(dataset, records, table)),
        "png": plot_recall(dataset, table, out / f"{dataset}.png"),
    }
    markdown = render_markdown(dataset, records, table, config_files, statistics_rows, command, elapsed_seconds,
                               paths["png"], missing)
    paths["md"] = write_text(out / f"{dataset}.md", markdown)
    return paths


def _json_payload(dataset, records, table):
    def column(index):  # 0: mean, 1: std
        return {p: {m: {k: v[index] for k, v in metrics.items()} for m, metrics in by_model.items()}
                for p, by_model in table.items()}

    return {"dataset": dataset, "protocols": column(0), "std": column(1), "runs": [r.to_json() for r in records]}


def render_markdown(dataset, records, table, config_files, statistics_rows, command, elapsed_seconds, plot,
                    missing=()):
    seeds = sorted({r.seed for r in records})
    lines = [
        f"# {dataset}: MIND against the baselines",
        "",
        f"Command: `{command}` ({len(records)} trainings, {elapsed_seconds / 60:.0f} min of training "
        f"and evaluation wall time on this machine). Seeds: {', '.join(map(str, seeds))}; "
        "tables give mean ± std over seeds. Each run's raw numbers are in "
        f"`{dataset}-runs/`, all of them in `{dataset}.json`.",
        "",
    ]
    lines += _data_lines(records)
    if missing:
        lines += [f"**Not in these tables** (asked for, no finished run in `{dataset}-runs/`): {', '.join(missing)}.", ""]
    lines += ["## Setting", ""]
    for protocol, text in PROTOCOL_TEXT.items():
        if protocol in table:
            lines += [f"- **{PROTOCOLS[protocol]}**: {text}"]
    lines += ["", "## Dataset", "", "| statistic | value |", "| --- | ---: |"]
    lines += [f"| {name} | {value} |" for name, value in statistics_rows]
    for protocol in PROTOCOLS:
        if protocol in table:
            lines += ["", f"## {PROTOCOLS[protocol]}", "", *_metric_table(table[protocol])]
            best = _leader(table[protocol], "recall@50")
            if best:
                lines += ["", best]
    lines += ["", "## Training cost (leave-one-out runs)", "", *_cost_table(records), "",
              "Seconds per epoch are the wall time each run saw; runs that shared the machine with others "
              "are slower than alone (clean speed figures come from `benchmarks/`)."]
    lines += ["", "## Interest diagnostics (leave-one-out test users)", "", *_diagnostics_table(records)]
    if plot:
        lines += ["", f"![Recall@N per model]({Path(plot).name})"]
    lines += ["", "## Configuration", ""]
    for file in _unique(str(Path(f).resolve()) for f in [*config_files, *(f for r in records for f in r.config_files)]):
        lines += [f"`{_display(file)}`:", "", "```yaml", Path(file).read_text().rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def _data_lines(records):
    """Which atomic files the runs were trained on (:func:`~mind_recbole.compare.runner.data_fingerprint`)."""
    fingerprints = _unique(r.data_fingerprint for r in records)
    return [f"Atomic files: SHA-256 `{'`, `'.join(fingerprints)}` ({len(records)} runs).", ""]


def _metric_table(by_model):
    metrics = sorted({m for metrics in by_model.values() for m in metrics}, key=_metric_key)
    lines = ["| model | " + " | ".join(metrics) + " |", "| --- |" + " ---: |" * len(metrics)]
    ranked = sorted(by_model, key=lambda m: -by_model[m].get("recall@50", (0,))[0])
    for model in ranked:
        cells = []
        for metric in metrics:
            mean, std, n = by_model[model].get(metric, (float("nan"), 0.0, 0))
            cells.append(f"{mean:.4f} ± {std:.4f}" if n > 1 else f"{mean:.4f}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return lines


def _metric_key(metric):
    name, cutoff = metric.split("@")
    return (METRIC_ORDER.index(name) if name in METRIC_ORDER else len(METRIC_ORDER), int(cutoff))


def _leader(by_model, metric):
    scored = sorted(((v[metric][0], m) for m, v in by_model.items() if metric in v), reverse=True)
    if len(scored) < 2:
        return ""
    (first, leader), (second, runner_up) = scored[0], scored[1]
    mind = dict((m, s) for s, m in scored).get("MIND")
    text = f"First in {metric}: **{leader}** ({first:.4f}), then {runner_up} ({second:.4f})"
    if mind is not None and leader != "MIND":
        text += f"; MIND {mind:.4f} ({(mind - first) / first:+.1%} against the leader)"
    elif leader == "MIND":
        text += f"; MIND leads by {first - second:+.4f} ({(first - second) / second:+.1%})"
    return text + "."


def _cost_table(records):
    lines = ["| model | seconds per epoch | epochs run | epochs to best | parameters |", "| --- | ---: | ---: | ---: | ---: |"]
    for model in _unique(r.model for r in records if r.group == "leave_one_out"):
        runs = [r for r in records if r.model == model and r.group == "leave_one_out"]
        seconds = statistics.fmean(r.seconds_per_epoch for r in runs if r.seconds_per_epoch)
        epochs = statistics.fmean(r.epochs for r in runs)
        best = [r.best_epoch for r in runs if r.best_epoch]
        best_text = f"{statistics.fmean(best):.1f}" if best else "-"
        lines.append(f"| {model} | {seconds:.1f} | {epochs:.1f} | {best_text} | {runs[0].parameters:,} |")
    return lines


def _diagnostics_table(records):
    names = [n for n, _ in DIAGNOSTICS if any(n in r.diagnostics for r in records if r.group == "leave_one_out")]
    if not names:
        return ["(no diagnostics: the dataset has no category field)"]
    lines = ["| model | " + " | ".join(names) + " |", "| --- |" + " ---: |" * len(names)]
    for model in _unique(r.model for r in records if r.group == "leave_one_out"):
        runs = [r.diagnostics for r in records if r.model == model and r.group == "leave_one_out"]
        cells = []
        for name in names:
            values = [d[name] for d in runs if name in d]
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
    panels = [p for p in ("full", "multi_interest", "sampled") if p in table]
    colors = model_colors(table)
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for axis, protocol in zip(axes[0], panels):
        for model, metrics in sorted(table[protocol].items()):
            cutoffs = sorted(int(m.split("@")[1]) for m in metrics if m.startswith("recall@"))
            means = [metrics[f"recall@{n}"][0] for n in cutoffs]
            stds = [metrics[f"recall@{n}"][1] for n in cutoffs]
            axis.errorbar(cutoffs, means, yerr=stds, marker="o", capsize=3, label=model, color=colors[model],
                          linewidth=2.5 if model == "MIND" else 1.2)
        axis.set_title(PROTOCOLS[protocol], fontsize=9)
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


def _display(file):
    """A config path relative to the working directory when it lies below it."""
    path = Path(file).resolve()
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(file)


def _unique(items):
    return list(dict.fromkeys(items))

