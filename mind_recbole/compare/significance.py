"""Paired significance tests of MIND against each other model, over the test users both scored.

For one protocol and one metric, each model's per-user values
(:mod:`mind_recbole.compare.user_results`) are averaged over its seeds user by user (in the
multi-interest protocol each seed's split picks its own test users: a user's value is the mean
over the seeds that tested them); users scored by only one of the two models are left out; the
differences ``d_u = MIND_u - other_u`` are then tested two ways:

* **paired bootstrap** (Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 16):
  the users are resampled with replacement :data:`RESAMPLES` times with a fixed seed and the mean
  difference recomputed; the 95 % interval is the 2.5 and 97.5 percentiles, the two-sided p-value
  twice the smaller share of resampled means on either side of 0 (each share counted with the
  +1 of Davison & Hinkley, *Bootstrap Methods and their Application*, 1997, so never 0), at most 1;
* **Wilcoxon's signed-rank test** (``scipy.stats.wilcoxon``, zero differences dropped) as a
  second opinion that rests on ranks, not on the mean.

Numpy and scipy only; no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mind_recbole.compare.runner import run_path
from mind_recbole.compare.user_results import read_user_results, user_results_path

RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
REFERENCE = "MIND"
TESTED_METRICS = ("recall@50", "ndcg@50")
GATHER_LIMIT = 4_000_000  # resampled values drawn at once: bounds memory at about 32 MB
# A multinomial draw costs about 6 gathers per distinct value (measured): use it below 1 value per 8 users.
DISTINCT_RATIO = 8


@dataclass
class PairedTest:
    """The tests of one pair of per-user value arrays (``a - b``)."""

    mean_difference: float
    ci_low: float
    ci_high: float
    p_bootstrap: float
    p_wilcoxon: float
    users: int


@dataclass
class PairRow:
    """One line of the report's table: MIND against ``model`` on ``protocol``'s ``metric``;
    ``test`` is None when no run of a model has per-user values, ``note`` then says why; with a
    test, ``note`` names the seeds left out (runs without per-user values), if any."""

    protocol: str
    model: str
    metric: str
    test: PairedTest | None = None
    note: str = ""


def seed_average(runs):
    """Average each user's value over the runs (seeds) that scored the user.

    Args:
        runs: ``(users, values)`` per seed: ``[U_s]`` user pseudonyms and ``[U_s]`` floats.

    Returns:
        ``(users, values)``: ``[U]`` distinct pseudonyms, sorted, and each one's mean value.
    """
    users = np.concatenate([np.asarray(u) for u, _ in runs])
    values = np.concatenate([np.asarray(v, dtype=np.float64) for _, v in runs])
    distinct, inverse = np.unique(users, return_inverse=True)
    return distinct, np.bincount(inverse, weights=values) / np.bincount(inverse)


def paired_test(users_a, values_a, users_b, values_b, resamples=RESAMPLES, seed=BOOTSTRAP_SEED):
    """Test ``a - b`` on the users in both (each array: distinct users, as :func:`seed_average` gives).

    Shape: ``users_a`` / ``values_a`` ``[U_a]``, ``users_b`` / ``values_b`` ``[U_b]``.
    """
    _, index_a, index_b = np.intersect1d(users_a, users_b, assume_unique=True, return_indices=True)
    if len(index_a) == 0:
        raise ValueError("paired test: the two models scored no user in common")
    differences = np.asarray(values_a, dtype=np.float64)[index_a] - np.asarray(values_b, dtype=np.float64)[index_b]
    means = bootstrap_means(differences, resamples, seed)
    tail = (1.0 - CONFIDENCE) / 2
    below = (np.count_nonzero(means <= 0) + 1) / (resamples + 1)
    above = (np.count_nonzero(means >= 0) + 1) / (resamples + 1)
    return PairedTest(
        mean_difference=float(differences.mean()),
        ci_low=float(np.quantile(means, tail)), ci_high=float(np.quantile(means, 1 - tail)),
        p_bootstrap=min(1.0, 2 * min(below, above)),
        p_wilcoxon=wilcoxon_p(differences), users=len(differences),
    )


def bootstrap_means(differences, resamples=RESAMPLES, seed=BOOTSTRAP_SEED):
    """``[resamples]`` means of ``differences`` ``[U]`` resampled with replacement (fixed ``seed``).

    Drawing U users with replacement is drawing how often each distinct value comes up: a
    multinomial over the distinct values, far cheaper than gathering U values per resample when
    they are few (differences of hit@N take 3 values). Otherwise the values are gathered in chunks.
    """
    rng = np.random.default_rng(seed)
    users = len(differences)
    values, counts = np.unique(differences, return_counts=True)
    if len(values) * DISTINCT_RATIO <= users:
        return rng.multinomial(users, counts / users, size=resamples) @ values / users
    means = np.empty(resamples)
    chunk = max(1, GATHER_LIMIT // users)
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        means[start : start + size] = differences[rng.integers(0, users, size=(size, users))].mean(axis=1)
    return means


def wilcoxon_p(differences):
    """Two-sided p-value of Wilcoxon's signed-rank test; 1.0 when every difference is 0."""
    from scipy.stats import wilcoxon

    if not np.any(differences):
        return 1.0
    return float(wilcoxon(differences, zero_method="wilcox").pvalue)


class RunUserValues:
    """Each run's per-user values (:func:`~mind_recbole.compare.user_results.read_user_results`), read
    from ``run_dir`` once: calling it with a record gives ``(by_protocol, why_not)``."""

    def __init__(self, run_dir):
        self.run_dir = run_dir
        self.loaded = {}

    def __call__(self, record):
        key = (record.model, record.group, record.seed)
        if key not in self.loaded:
            path = user_results_path(run_path(self.run_dir, *key))
            self.loaded[key] = read_user_results(path, record.config_hash, record.data_fingerprint)
        return self.loaded[key]


def runs_by_model(records, protocol):
    """``{model: [records tested on protocol]}``, models in the order of ``records``."""
    runs = {}
    for record in records:
        if protocol in record.results:
            runs.setdefault(record.model, []).append(record)
    return runs


def paired_tests(records, run_dir, reference=REFERENCE, metrics=TESTED_METRICS):
    """:class:`PairRow` for ``reference`` against every other model of ``records`` on each
    protocol both were tested on, reading the runs' per-user files from ``run_dir``."""
    user_values = RunUserValues(run_dir)
    rows = []
    protocols = list(dict.fromkeys(p for r in records for p in r.results))
    for protocol in protocols:
        runs = runs_by_model(records, protocol)
        if reference not in runs:
            continue
        for model in (m for m in runs if m != reference):
            for metric in metrics:
                pair = runs[reference] + runs[model]
                if not all(metric in r.results[protocol] for r in pair):
                    continue
                rows.append(_pair_row(protocol, model, metric, runs[reference], runs[model], user_values))
    return rows


def seed_averaged_values(runs, protocol, metric, user_values):
    """``(users, values)`` of :func:`seed_average` over the runs (seeds) that kept per-user ``metric``
    of ``protocol`` (None when none did), and ``(why, model, seed)`` of each run left out."""
    seeds, skipped = [], []
    for record in runs:
        by_protocol, why_not = user_values(record)
        if by_protocol is not None and metric not in getattr(by_protocol.get(protocol), "metrics", {}):
            why_not = f"no per-user {metric} of protocol {protocol}"
        if why_not:
            skipped.append((why_not, record.model, record.seed))
            continue
        values = by_protocol[protocol]
        seeds.append((values.users, values.metrics[metric]))
    return (seed_average(seeds) if seeds else None), skipped


def _pair_row(protocol, model, metric, reference_runs, other_runs, user_values):
    """The test of one pair over the seeds that kept per-user values (``note`` names any seed left
    out), or the reason it cannot be made when a model has no such seed."""
    averaged, left_out = [], []
    for runs in (reference_runs, other_runs):
        values, skipped = seed_averaged_values(runs, protocol, metric, user_values)
        if values is None:
            return PairRow(protocol, model, metric, note=unavailable_note(skipped))
        left_out += skipped
        averaged.append(values)
    (users_a, values_a), (users_b, values_b) = averaged
    return PairRow(protocol, model, metric, paired_test(users_a, values_a, users_b, values_b), left_out_note(left_out))


def unavailable_note(skipped):
    """``n/a (run predates per-user results: SASRec seed 2020)`` for a test no seed could make."""
    return f"n/a ({runs_text(skipped)})"


def left_out_note(skipped):
    """``left out, run predates per-user results: SASRec seed 2020`` for a test made without some
    seeds (see :func:`runs_text`); ``""`` when none was left out."""
    return f"left out, {runs_text(skipped)}" if skipped else ""


def runs_text(skipped):
    """``run predates per-user results: MIND seed 2022, SINE seeds 2020, 2021`` from ``(why, model, seed)``
    triples: one clause per reason, each model's seeds together."""
    by_reason = {}
    for why, model, seed in skipped:
        by_reason.setdefault(why, {}).setdefault(model, []).append(seed)
    return "; ".join(
        f"{why}: " + ", ".join(f"{model} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
                               for model, seeds in models.items())
        for why, models in by_reason.items())


def format_p(p):
    """A p-value for the report: three decimals, or two significant digits below 0.001."""
    if math.isnan(p):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"
