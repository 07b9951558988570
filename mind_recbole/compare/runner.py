"""Train and evaluate every model on one dataset, one split, one evaluation: ``mind-recbole compare``.

Each (model, seed) gets up to two trainings:

* **leave-one-out** (the dataset's config, e.g. ``configs/amazon-beauty.yaml``): early stopping
  on validation, then the test split scored twice: full ranking over the catalogue (``full``) and
  the target among 100 uniformly sampled negatives (``sampled``, RecBole's ``uni100``, the same
  negatives for every model). CTR models (DIN) score (user, item) pairs only: they validate on
  the sampled protocol and have no full-ranking result.
* **multi-interest** (:mod:`mind_recbole.evaluation.multi_interest`, ComiRec's protocol): users
  split 8/1/1, held-out users' first 80 % as history, the rest as targets; every model that ranks
  the catalogue from a history takes part (not ItemKNN and EASE: RecBole's score a user from the
  user's row of the training matrix, and a held-out user has none).

``--seeds N`` trains the contenders (:data:`SEED_SWEEP_MODELS`) with N seeds and the other models
with one. Every run is written to ``OUT/DATASET-runs/MODEL-PROTOCOL-seedSEED.json`` with a hash of
its configuration, a hash of the model's plugin defaults (:func:`defaults_hash`) and a fingerprint
of the atomic files it was trained on, and its test users'
metric values to ``...seedSEED.users.npz`` (:mod:`mind_recbole.compare.user_results`, for the
paired tests of :mod:`mind_recbole.compare.significance`); a later ``compare`` reuses a run whose
hashes and fingerprint match, and retrains one whose config, defaults or data changed. A run stopped part-way
resumes from its last checkpoint (:mod:`mind_recbole.compare.progress`) unless ``rerun``.

``valid_only`` (tuning) trains and validates, never evaluates the test split, and writes
``...seedSEED.valid.json``: a full comparison never takes such a run for a tested one, while a
valid-only comparison reuses a tested run's validation results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import yaml

from mind_recbole.atomic_write import write_json
from mind_recbole.compare.progress import RunProgress, partial_path, read_partial, stale_reason
from mind_recbole.compare.user_results import user_results_path, write_user_results
from mind_recbole.config_files import plugin_default_files, tuned_config_file
from mind_recbole.training import build_config, prepare_training

DEFAULT_MODELS = ("MIND", "ComiRecSA", "ComiRecDR", "YouTubeDNN", "DIN", "SASRec", "GRU4Rec", "SINE", "Pop", "ItemKNN", "EASE")
# The contenders: ``--seeds N`` trains these N times each, every other model once.
SEED_SWEEP_MODELS = ("MIND", "YouTubeDNN", "SASRec", "SINE", "ComiRecSA", "ComiRecDR")
CTR_MODELS = ("DIN",)  # RecBole's DIN scores given (user, item) pairs: no full ranking
# RecBole's ItemKNN and EASE score a user by the user's row of the training interaction matrix:
# the multi-interest protocol's held-out users have none (no fold-in of a new history).
USER_ROW_MODELS = ("ItemKNN", "EASE")
PROTOCOL_GROUPS = ("leave_one_out", "multi_interest")
BASE_SEED = 2020  # the first seed, unless a ``seed`` override says otherwise
COMPARE_PROPERTIES = Path(__file__).resolve().parents[1] / "properties" / "compare"
SAMPLED_MODE = "uni100"
# Settings that do not change results (speed, logging, where files are, how strictly keys are
# checked): left out of a run's hashes, so a run trained with one torch thread is reused by a
# comparison run with two. The data's content is in the run's fingerprint (data_fingerprint).
RUNTIME_KEYS = ("torch_threads", "malloc_tuning", "show_progress", "state", "checkpoint_dir", "data_path",
                "strict_config_keys")
ATOMIC_SUFFIXES = (".inter", ".item", ".user")  # the files a run reads (ComiRec's split is derived from them)


@dataclass
class RunRecord:
    """One training of one model with one seed, and what it measured."""

    model: str
    dataset: str
    seed: int
    group: str  # leave_one_out or multi_interest
    config_hash: str
    config_files: list[str]
    results: dict = field(default_factory=dict)  # protocol -> metric -> value (test split)
    best_valid: dict = field(default_factory=dict)
    valid_scores: list = field(default_factory=list)  # valid_metric after each validation
    valid_metric: str = ""
    eval_step: int = 1
    epoch_seconds: list = field(default_factory=list)
    parameters: int = 0
    diagnostics: dict = field(default_factory=dict)
    wall_seconds: float = 0.0
    saved_model_file: str | None = None
    data_fingerprint: str = ""  # data_fingerprint() of the atomic files it was trained on
    defaults_hash: str = ""  # defaults_hash() of the model's plugin defaults ("": written before runs kept it)
    valid_only: bool = False  # trained and validated; the test split was never evaluated

    @property
    def epochs(self):
        return len(self.epoch_seconds)

    @property
    def best_epoch(self):
        """1-based epoch of the best validation score (None without validation)."""
        if not self.valid_scores:
            return None
        best = max(range(len(self.valid_scores)), key=self.valid_scores.__getitem__)
        return (best + 1) * self.eval_step

    @property
    def seconds_per_epoch(self):
        return sum(self.epoch_seconds) / len(self.epoch_seconds) if self.epoch_seconds else None

    def to_json(self):
        return {**asdict(self), "epochs": self.epochs, "best_epoch": self.best_epoch,
                "seconds_per_epoch": self.seconds_per_epoch}

    @classmethod
    def from_json(cls, payload):
        names = cls.__dataclass_fields__
        return cls(**{k: v for k, v in payload.items() if k in names})

    def without_test(self):
        """This run as a valid-only run: its test results and test-user diagnostics left out."""
        return replace(self, results={}, diagnostics={}, valid_only=True)


def no_place(model, protocol):
    """Why ``protocol`` (``full``, ``sampled``, ``multi_interest`` or a ``valid_`` form) has no place
    for ``model``; None when it has (see the module docstring)."""
    protocol = protocol.removeprefix("valid_")
    if model in CTR_MODELS and protocol != "sampled":
        return "scores given (user, item) pairs: cannot rank the catalogue"
    if model in USER_ROW_MODELS and protocol == "multi_interest":
        return "scores users by their row of the training matrix: held-out users have none"
    return None


def takes_part(model, group):
    """Whether ``model`` has a place in protocol ``group``: every model has one in leave-one-out's
    sampled protocol, the multi-interest group is its one protocol."""
    return group != "multi_interest" or no_place(model, "multi_interest") is None


def run_plan(models, groups, seeds, base_seed=BASE_SEED, seed_models=SEED_SWEEP_MODELS):
    """``(model, seed, group)`` of every run, in run order: ``seeds`` seeds for ``seed_models``, one for the rest."""
    return [
        (model, base_seed + i, group)
        for group in groups for model in models for i in range(seeds if model in seed_models else 1)
        if takes_part(model, group)
    ]


def missing_runs(plan, done):
    """The runs of ``plan`` not in ``done`` (both ``(model, seed, group)``), one entry per model and
    group: ``'SINE (leave_one_out)'`` when none of its seeds ran, else the seeds that did not."""
    asked, absent = {}, {}
    for model, seed, group in plan:
        asked.setdefault((model, group), []).append(seed)
        if (model, seed, group) not in done:
            absent.setdefault((model, group), []).append(seed)
    return [f"{model} ({group})" if seeds == asked[model, group]
            else f"{model} ({group} seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})"
            for (model, group), seeds in absent.items()]


def first_seed(overrides):
    """The first seed of a comparison: the ``seed`` override, else :data:`BASE_SEED`."""
    return int(overrides.get("seed", BASE_SEED))


def run_path(run_dir, model, group, seed):
    """``RUN_DIR/MODEL-GROUP-seedSEED.json``: where a finished (tested) run is kept."""
    return Path(run_dir) / f"{model}-{group}-seed{seed}.json"


def valid_run_path(path):
    """``X.valid.json`` beside the tested run's ``X.json``: where a valid-only run is kept."""
    path = Path(path)
    return path.with_name(f"{path.stem}.valid.json")


def model_config_files(dataset, model, config_dir):
    """The harness defaults for ``model`` (e.g. DIN's training negatives), then its tuned file."""
    files = [COMPARE_PROPERTIES / f"{model}.yaml", tuned_config_file(config_dir, dataset, model)]
    return [f for f in files if f is not None and f.is_file()]


def config_hash(model, dataset, seed, group, config_files, overrides):
    """Hash of everything that defines a run: names, seed, the config files' settings, overrides
    (except :data:`RUNTIME_KEYS`). Files are hashed as parsed YAML: editing a comment or the
    layout of a config keeps its runs."""
    overrides = {k: v for k, v in overrides.items() if k not in RUNTIME_KEYS}
    settings = [yaml.safe_load(Path(file).read_text()) for file in config_files]
    return _digest([model, dataset, seed, group, overrides, settings])


def _digest(payload):
    """16 hex digits of the SHA-256 of ``payload`` as sorted JSON: the same settings give the same hash."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def defaults_hash(model):
    """Hash of the plugin's defaults for ``model`` (:func:`~mind_recbole.config_files.plugin_default_files`:
    MIND's recipe lives in ``properties/model/MIND.yaml``), parsed as :func:`config_hash` parses files,
    :data:`RUNTIME_KEYS` left out: a changed default retrains a run as a changed config file does.
    RecBole's own defaults are fixed by its pinned version."""
    settings = [{key: value for key, value in (yaml.safe_load(file.read_text()) or {}).items() if key not in RUNTIME_KEYS}
                for file in plugin_default_files(model)]
    return _digest(settings)


def data_fingerprint(data_dir, dataset):
    """SHA-256 (16 hex digits) of ``DATA_DIR/DATASET.inter`` and the ``.item`` / ``.user`` files present.

    Leave-one-out splits by time, so re-prepared files that differ in as little as the order of two
    same-day reviews change test targets: runs are only comparable on one fingerprint.
    """
    data_dir = Path(data_dir)
    if not (data_dir / f"{dataset}.inter").is_file():
        raise FileNotFoundError(f"{data_dir / f'{dataset}.inter'}: no such file (prepare the dataset first)")
    digest = hashlib.sha256()
    for suffix in ATOMIC_SUFFIXES:
        path = data_dir / f"{dataset}{suffix}"
        if path.is_file():
            digest.update(suffix.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


def leave_one_out_config(model, dataset, config_files, seed, overrides, sampled=False):
    """The RecBole config of a leave-one-out run (``sampled``: the same with ``uni100`` evaluation)."""
    config = build_config(model, dataset, config_files, {"seed": seed, **overrides})
    if not (sampled or model in CTR_MODELS):
        return config
    eval_args = {**config["eval_args"], "mode": SAMPLED_MODE}
    return build_config(model, dataset, config_files, {"seed": seed, **overrides, "eval_args": eval_args})


def run_leave_one_out(model_name, dataset_name, config_files, seed, overrides, category_field, tracking=None,
                      valid_only=False):
    """Train with early stopping on validation; score the test split on both protocols (not when
    ``valid_only``). Returns the record and the test users' values per protocol (:class:`UserValues`)."""
    from recbole.utils import init_seed

    from mind_recbole.compare.user_metrics import last_evaluation_per_user
    from mind_recbole.evaluation.diagnostics import interest_diagnostics, item_categories

    config = leave_one_out_config(model_name, dataset_name, config_files, seed, overrides)
    record, trainer, dataset, (train_data, valid_data, test_data) = _train(config, tracking=tracking)
    if valid_only:
        return record, {}
    users = {}
    if model_name not in CTR_MODELS:
        record.results["full"] = _floats(trainer.evaluate(test_data, load_best_model=True))
        users["full"] = last_evaluation_per_user(trainer, dataset)
        categories = item_categories(dataset, category_field)
        record.diagnostics = interest_diagnostics(trainer.model, test_data, categories)
        sampled_config = leave_one_out_config(model_name, dataset_name, config_files, seed, overrides, sampled=True)
        sampled_test = sampled_test_loader(sampled_config, dataset, (train_data, valid_data, test_data))
    else:
        sampled_test = test_data
    init_seed(seed, True)  # the same sampled negatives for every model
    trainer.score_sampled_from_full_ranking = model_name not in CTR_MODELS
    record.results["sampled"] = _floats(trainer.evaluate(sampled_test, load_best_model=model_name in CTR_MODELS))
    users["sampled"] = last_evaluation_per_user(trainer, dataset)
    return record, users


def sampled_test_loader(sampled_config, dataset, loaders):
    """The test split of ``loaders`` with ``uni100`` negatives (RecBole's ``data_preparation`` steps,
    reusing the already built splits: ``Dataset.build`` cannot run twice)."""
    from recbole.data.utils import create_samplers, get_dataloader

    built = [loader._dataset for loader in loaders]
    _, _, test_sampler = create_samplers(sampled_config, dataset, built)
    return get_dataloader(sampled_config, "test")(sampled_config, built[2], test_sampler, shuffle=False)


def run_multi_interest(model_name, dataset_name, config_files, seed, overrides, tracking=None, valid_only=False):
    """ComiRec's protocol: train on 80 % of the users, early-stop on 10 %, test on the other 10 %
    (not when ``valid_only``). Returns the record and the test users' values (:class:`UserValues`)."""
    from recbole.data import data_preparation

    from mind_recbole.compare.user_results import UserValues
    from mind_recbole.evaluation import multi_interest

    base = build_config(model_name, dataset_name, config_files, {"seed": seed, **overrides})
    root = Path(base["data_path"]).parent
    sequences = multi_interest.read_sequences(
        Path(base["data_path"]) / f"{dataset_name}.inter",
        base["USER_ID_FIELD"], base["ITEM_ID_FIELD"], base["TIME_FIELD"],
    )
    split = multi_interest.split_users(sequences, seed)
    training_name = multi_interest.write_training_dataset(
        root, dataset_name, seed, split.train_users, user_field=base["USER_ID_FIELD"]
    )
    eval_args = {"split": {"RS": [1.0, 0.0, 0.0]}, "order": "TO", "group_by": "user", "mode": "full"}
    config = build_config(
        model_name, training_name, config_files,
        {"seed": seed, **overrides, "data_path": str(root), "eval_args": eval_args},
    )

    def prepare(config_, dataset_):
        """Training loader of the training users; the validation and (unless valid-only) test users' evaluators."""
        train_data, _, _ = data_preparation(config_, dataset_)
        valid = multi_interest.HeldOutEvaluator(split.valid, dataset_, config_)
        test = None if valid_only else multi_interest.HeldOutEvaluator(split.test, dataset_, config_)
        return train_data, valid, test

    record, trainer, _, loaders = _train(config, prepare, group="multi_interest", tracking=tracking)
    record.dataset = dataset_name
    if valid_only:
        return record, {}
    trainer.load_best_checkpoint()  # the best validation epoch's weights
    per_user = loaders[2].evaluate_users(trainer.model)
    record.results["multi_interest"] = multi_interest.average_over_users(per_user)
    record.diagnostics = {
        "train_users": len(split.train_users), "valid_users": len(split.valid), "test_users": len(split.test)
    }
    return record, {"multi_interest": UserValues(split.test.users, per_user)}


def _train(config, prepare_data=None, group="leave_one_out", tracking=None):
    """Build data, model and trainer from ``config`` and fit; the record and the objects.

    ``tracking`` (:class:`RunProgress`): the partial run to resume, if any, and where to record
    each checkpoint so that a stopped run can be resumed.
    """
    from mind_recbole.compare.user_metrics import UserCollector

    resume = tracking.resume_from if tracking else None
    started = time.perf_counter() - (resume.wall_seconds if resume else 0.0)
    dataset, loaders, trainer = prepare_training(config, prepare_data, resume=resume and resume.checkpoint)
    trainer.eval_collector = UserCollector(config)  # RecBole's, keeping each user's row of the last evaluation
    record = RunRecord(
        model=config["model"], dataset=config["dataset"], seed=config["seed"], group=group,
        config_hash="", config_files=[], valid_metric=config["valid_metric"], eval_step=config["eval_step"],
        parameters=sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    )
    if resume:
        trainer.epoch_seconds[:0] = resume.epoch_seconds
        record.valid_scores.extend(resume.valid_scores)
    record.epoch_seconds = trainer.epoch_seconds

    def after_validation(epoch, score):
        record.valid_scores.append(float(score))
        if tracking and trainer.cur_step == 0:  # this validation improved: RecBole just wrote the checkpoint
            tracking.save(trainer.saved_model_file, epoch, config["epochs"], record.valid_scores,
                          record.epoch_seconds, time.perf_counter() - started)

    _, best_valid = trainer.fit(
        loaders[0], loaders[1], saved=True, show_progress=config["show_progress"], callback_fn=after_validation,
    )
    record.best_valid = _floats(best_valid or {})
    record.saved_model_file = trainer.saved_model_file
    record.wall_seconds = time.perf_counter() - started
    return record, trainer, dataset, loaders


def _floats(result):
    return {k: float(v) for k, v in result.items()}


def collect_runs(dataset, models=DEFAULT_MODELS, config_files=(), seeds=1, out="results", groups=PROTOCOL_GROUPS,
                 overrides=None, config_dir="configs", rerun=False, category_field="category", log=print,
                 report_only=False, seed_models=SEED_SWEEP_MODELS, valid_only=False):
    """Run (or reuse) every run of :func:`run_plan`; return the records in run order.

    ``log``: prints one line per run. ``report_only``: train nothing; runs not already in ``out`` are
    reported missing and left out. ``valid_only``: train and validate only (see the module docstring);
    the records then hold no test results.
    """
    overrides = dict(overrides or {})
    run_dir = Path(out) / f"{dataset}-runs"
    run_dir.mkdir(parents=True, exist_ok=True)
    plan = run_plan(models, groups, seeds, first_seed(overrides), seed_models)
    overrides.pop("seed", None)  # each run gets its own
    fingerprint = data_fingerprint(build_config("Pop", dataset, list(config_files), overrides)["data_path"], dataset)
    records = []
    for number, (model, seed, group) in enumerate(plan, 1):
        name = f"[{number}/{len(plan)}] {model} {group} seed {seed}"
        files = [str(f) for f in (*config_files, *model_config_files(dataset, model, config_dir))]
        digest = config_hash(model, dataset, seed, group, files, overrides)
        defaults = defaults_hash(model)
        path = run_path(run_dir, model, group, seed)
        result_path = valid_run_path(path) if valid_only else path
        resume, not_resumed = None, None
        if not (rerun or report_only):  # a training stopped part-way resumes before a finished run is reused
            resume, not_resumed = read_partial(partial_path(path), digest, fingerprint, defaults)
        if not_resumed:
            log(f"{name}: not resumed: {not_resumed}")
        unusable = f"missing (not in {run_dir})"
        if resume is None and not rerun:
            cached, cached_path, stale = finished_run(list(dict.fromkeys([path, result_path])), digest, fingerprint,
                                                      defaults)
            if cached is not None:
                log(f"{name}: reused {cached_path}")
                records.append(cached.without_test() if valid_only else cached)
                continue
            unusable = stale or unusable
        if report_only:
            log(f"{name}: {unusable}, left out")
            continue
        if resume:
            log(f"{name}: resuming from {resume.checkpoint} "
                f"(epochs 0-{resume.epoch} done, {resume.wall_seconds / 60:.1f} min)")
        else:
            log(f"{name}: training ({', '.join(files)})")
        tracking = RunProgress(partial_path(path), digest, fingerprint, resume, defaults)
        if group == "leave_one_out":
            record, users = run_leave_one_out(model, dataset, files, seed, overrides, category_field, tracking,
                                              valid_only)
        else:
            record, users = run_multi_interest(model, dataset, files, seed, overrides, tracking, valid_only)
        record.config_hash, record.config_files, record.data_fingerprint = digest, files, fingerprint
        record.defaults_hash = defaults
        record.valid_only = valid_only
        if not valid_only:  # first: a run file on disk always has its per-user file
            write_user_results(user_results_path(path), users, digest, fingerprint)
        write_json(result_path, record.to_json())
        tracking.finish()
        log(f"{name}: {headline(record)}, {record.epochs} epochs in {record.wall_seconds / 60:.1f} min")
        logging.getLogger().handlers.clear()  # RecBole's init_logger adds handlers on every run
        records.append(record)
    return records


def finished_run(paths, config_hash, fingerprint, defaults=""):
    """The first of ``paths`` holding a finished run of these settings and files: ``(record, path, None)``;
    else ``(None, None, "stale: why")``, or ``(None, None, None)`` when none of them exists."""
    stale = None
    for path in paths:
        if path.is_file():
            record = RunRecord.from_json(json.loads(path.read_text()))
            why = stale_reason(record, config_hash, fingerprint, defaults)
            if why is None:
                return record, path, None
            stale = stale or f"stale: {why}"
    return None, None, stale


def headline(record):
    """Recall@50 per test protocol, or the best validation score of a valid-only run."""
    if record.valid_only:
        metric = record.valid_metric.lower()
        return f"best valid {metric} {round(record.best_valid.get(metric, float('nan')), 4)}"
    recall = {protocol: round(m.get("recall@50", float("nan")), 4) for protocol, m in record.results.items()}
    return f"recall@50 {recall}"
