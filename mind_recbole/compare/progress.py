"""An unfinished ``compare`` run: what it needs to resume from its last checkpoint.

A run's result is written only when it ends, and a leave-one-out SASRec takes hours on 2 cores,
so a stopped comparison would lose its run in progress. While a run trains, every checkpoint
(RecBole writes one after each validation that improved) is followed by
``OUT/DATASET-runs/MODEL-GROUP-seedSEED.partial.json``: the checkpoint's path and epoch, the run's
hashes (settings, the model's defaults) and data fingerprint, and what the run has measured so far (validation scores, epoch
seconds, wall time). A later ``compare`` that finds it, on the same settings and files, resumes
training from that checkpoint with the random generators restored
(:meth:`mind_recbole.trainer.MindTrainerMixin.resume`), so the finished run equals an uninterrupted
one; the epochs between the checkpoint and the stop are trained again. The file is removed when
the run's result is written.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from mind_recbole.atomic_write import write_json


@dataclass
class PartialRun:
    """How far a run got: the checkpoint to resume from and the measurements up to it."""

    config_hash: str
    data_fingerprint: str
    checkpoint: str
    epoch: int  # 0-based epoch the checkpoint holds
    epochs: int  # the run's epoch budget
    valid_scores: list
    epoch_seconds: list
    wall_seconds: float
    defaults_hash: str = ""  # the model's plugin defaults (runner.defaults_hash); "" in files written before it


@dataclass
class RunProgress:
    """Where a training records its checkpoints as it goes, and the partial run it resumes (if any)."""

    path: Path
    config_hash: str
    data_fingerprint: str
    resume_from: PartialRun | None = None
    defaults_hash: str = ""

    def save(self, checkpoint, epoch, epochs, valid_scores, epoch_seconds, wall_seconds):
        """RecBole just wrote ``checkpoint`` after (0-based) ``epoch``: record it and the measurements so far."""
        write_partial(self.path, PartialRun(
            self.config_hash, self.data_fingerprint, str(Path(checkpoint).resolve()), epoch, epochs,
            list(valid_scores), list(epoch_seconds), wall_seconds, self.defaults_hash,
        ))

    def finish(self):
        """The run's result is written: its partial file goes."""
        Path(self.path).unlink(missing_ok=True)


def partial_path(run_path):
    """``X.partial.json`` beside the run's result ``X.json``."""
    run_path = Path(run_path)
    return run_path.with_name(f"{run_path.stem}.partial.json")


def write_partial(path, partial):
    """Write ``partial`` (a :class:`PartialRun`) to ``path``, atomically."""
    write_json(path, asdict(partial))


def stale_reason(run, config_hash, data_fingerprint, defaults_hash=""):
    """Why ``run`` (a finished :class:`~mind_recbole.compare.runner.RunRecord` or a :class:`PartialRun`)
    does not belong to these settings and files (None: it does).

    ``defaults_hash`` is the model's plugin defaults now (:func:`mind_recbole.compare.runner.defaults_hash`);
    a run written before runs recorded theirs has none, and is not checked against it.
    """
    if run.config_hash != config_hash:
        return "its settings changed"
    if run.defaults_hash and run.defaults_hash != defaults_hash:
        return "the model's defaults changed (mind_recbole/properties)"
    if run.data_fingerprint != data_fingerprint:
        return f"trained on other data files (fingerprint {run.data_fingerprint}, now {data_fingerprint})"
    return None


def read_partial(path, config_hash, data_fingerprint, defaults_hash=""):
    """``(PartialRun, None)`` if the partial run at ``path`` can be resumed, else ``(None, why not)``;
    ``(None, None)`` where there is none."""
    path = Path(path)
    if not path.is_file():
        return None, None
    try:
        partial = PartialRun(**json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        return None, f"{path} is unreadable ({error})"
    stale = stale_reason(partial, config_hash, data_fingerprint, defaults_hash)
    if stale:
        return None, f"{path}: {stale}"
    if not Path(partial.checkpoint).is_file():
        return None, f"{path}: its checkpoint {partial.checkpoint} is gone"
    if partial.epoch + 1 >= partial.epochs:
        return None, f"{path}: its checkpoint is the last epoch's (the run stopped while testing)"
    return partial, None
