"""The plugin's trainer: RecBole's trainer for the model, subclassed (RecBole-GNN's pattern).

:func:`build_trainer` takes the trainer class RecBole would use for the model (``Trainer`` for most,
a model's own trainer where RecBole has one) and puts :class:`MindTrainerMixin` in front of it.
On top of RecBole the trainer

- records the wall time (validation excluded) and the loss of every training epoch
  (``epoch_seconds``, ``epoch_losses``);
- writes the training state into every checkpoint, under :data:`TRAINING_STATE_KEY`: the random
  number generators of every rank, the best validation result and a fingerprint of the item ids,
  so that :meth:`MindTrainerMixin.resume` continues a run exactly as if it had not stopped;
- validates on held-out users when the validation data is a
  :class:`~mind_recbole.evaluation.multi_interest.HeldOutEvaluator` (ComiRec's protocol);
- scores sampled-negative evaluation rows from one full ranking per distinct history when
  ``score_sampled_from_full_ranking`` is set (the same numbers as ``predict``, 101 times fewer
  history encodings);
- removes the empty checkpoint it reserved when training fails before writing it or runs with
  ``saved=False``, and calls
  ``on_checkpoint(epoch)`` after each checkpoint it writes.
"""

import functools
import logging
import time

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.utils import EvaluatorType, get_trainer, set_color

from mind_recbole import distributed
from mind_recbole.checkpoints import (
    TRAINING_STATE_KEY,
    CheckpointError,
    capture_rng_state,
    check_checkpoint_fits,
    item_ids_fingerprint,
    read_checkpoint,
    remove_if_empty,
    restore_rng_state,
    training_state,
)
from mind_recbole.evaluation.multi_interest import HeldOutEvaluator


def build_trainer(config, model, train_data, dataset):
    """The plugin's trainer for ``model`` (see the module docstring)."""
    base = get_trainer(config["MODEL_TYPE"], config["model"])
    return trainer_class(base)(config, model, train_data=train_data, dataset=dataset)


@functools.lru_cache(maxsize=None)
def trainer_class(base):
    """``MindTrainerMixin`` in front of RecBole's trainer class ``base``."""
    return type(f"Mind{base.__name__}", (MindTrainerMixin, base), {"__doc__": MindTrainerMixin.__doc__})


class MindTrainerMixin:
    """What the plugin adds to a RecBole trainer; see :mod:`mind_recbole.trainer`.

    Args:
        config, model: as for RecBole's trainers.
        train_data: the training loader, whose shuffling generator the checkpoints hold.
        dataset: the dataset, whose item ids the checkpoints fingerprint.
    """

    def __init__(self, config, model, *, train_data=None, dataset=None):
        super().__init__(config, model)
        self.train_data = train_data
        self.dataset = dataset
        self.epoch_seconds, self.epoch_losses = [], []
        self.latest_valid_result = None
        self.score_sampled_from_full_ranking = False
        self.on_checkpoint = None  # called with the epoch after each checkpoint written

    # ------------------------------------------------------------------ training
    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        try:
            result = super().fit(train_data, valid_data, verbose, saved, show_progress, callback_fn)
        except BaseException:
            remove_if_empty(self.saved_model_file)  # reserved, never written: no empty checkpoint left
            raise
        if not saved:  # a run that saves nothing (benchmarks, tuning) leaves no reserved name behind
            remove_if_empty(self.saved_model_file)
        return result

    def _train_epoch(self, train_data, epoch_idx, loss_func=None, show_progress=False):
        start = time.perf_counter()
        loss = super()._train_epoch(train_data, epoch_idx, loss_func=loss_func, show_progress=show_progress)
        self.epoch_seconds.append(time.perf_counter() - start)
        self.epoch_losses.append(float(sum(loss)) if isinstance(loss, tuple) else float(loss))
        return loss

    def _valid_epoch(self, valid_data, show_progress=False):
        if isinstance(valid_data, HeldOutEvaluator):  # ComiRec's held-out users
            valid_result = valid_data.evaluate(self.model)
            if self.valid_metric not in valid_result:
                raise ValueError(
                    f"valid_metric {self.valid_metric!r} is not reported by the multi-interest protocol "
                    f"(it reports {', '.join(valid_result)})"
                )
            valid_score = valid_result[self.valid_metric]
        else:
            valid_score, valid_result = super()._valid_epoch(valid_data, show_progress=show_progress)
        self.latest_valid_result = valid_result
        return valid_score, valid_result

    # ------------------------------------------------------------------ checkpoints and resume
    def _save_checkpoint(self, epoch, verbose=True, **kwargs):
        """RecBole's checkpoint plus the training state. RecBole saves right after a validation
        that improved (or every epoch without validation); every rank takes part in gathering the
        random generators, rank 0 alone writes."""
        state = {
            "rng": distributed.gather_over_ranks(self.config, capture_rng_state(self.train_data)),
            "best_valid_result": self.latest_valid_result or self.best_valid_result,
            "item_ids_sha1": item_ids_fingerprint(self.dataset) if self.dataset is not None else None,
        }
        if not self.config["single_spec"] and self.config["local_rank"] != 0:  # as RecBole: one writer per machine
            return
        saved_model_file = kwargs.pop("saved_model_file", self.saved_model_file)
        checkpoint = {
            "config": self.config,
            "epoch": epoch,
            "cur_step": self.cur_step,
            "best_valid_score": self.best_valid_score,
            "state_dict": self.model.state_dict(),
            "other_parameter": self.model.other_parameter(),
            "optimizer": self.optimizer.state_dict(),
            TRAINING_STATE_KEY: state,
        }
        torch.save(checkpoint, saved_model_file, pickle_protocol=4)
        if verbose:
            self.logger.info(set_color("Saving current", "blue") + f": {saved_model_file}")
        if self.on_checkpoint is not None:
            self.on_checkpoint(epoch)

    def resume(self, resume_file):
        """Continue training from ``resume_file`` (RecBole's ``resume_checkpoint``, after checking
        the file fits), with the random generators and best validation result it holds."""
        config = self.config
        checkpoint = read_checkpoint(resume_file)
        if checkpoint["config"]["model"] != config["model"]:
            raise CheckpointError(
                f"{resume_file}: a {checkpoint['config']['model']} checkpoint cannot resume training of {config['model']}"
            )
        check_checkpoint_fits(checkpoint, self.model, self.dataset, resume_file)
        if checkpoint["epoch"] + 1 >= config["epochs"]:
            raise CheckpointError(
                f"{resume_file}: training already reached epoch {checkpoint['epoch']} of 0..{config['epochs'] - 1}; "
                f"set epochs above {checkpoint['epoch'] + 1} to train further (load_data_and_model evaluates it as is)"
            )
        self.resume_checkpoint(resume_file)  # RecBole goes on writing resume_file
        state = training_state(checkpoint)
        logger = logging.getLogger()
        if state is None:
            logger.warning(
                f"{resume_file} holds no random number generator state (not written by mind_recbole.run_recbole): "
                "the resumed run will not repeat an uninterrupted one exactly"
            )
            return
        self.best_valid_result = state["best_valid_result"]
        rng_states = state["rng"]
        if len(rng_states) != distributed.world_size(config):
            logger.warning(
                f"{resume_file} was written by a run of {len(rng_states)} process(es), this run has "
                f"{distributed.world_size(config)}: random number generators not restored"
            )
            return
        restore_rng_state(rng_states[distributed.rank(config)], self.train_data)

    def load_best_checkpoint(self):
        """Load the weights of the best validation epoch (RecBole's checkpoint) into the model."""
        checkpoint = read_checkpoint(self.saved_model_file)
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.load_other_parameter(checkpoint.get("other_parameter"))

    # ------------------------------------------------------------------ sampled evaluation
    def _neg_sample_batch_eval(self, batched_data):
        """RecBole's, with the row scores from :meth:`_predict_rows` (RecBole calls ``model.predict``)."""
        interaction, row_idx, positive_u, positive_i = batched_data
        batch_size = interaction.length
        if batch_size <= self.test_batch_size:
            origin_scores = self._predict_rows(interaction.to(self.device))
        else:
            origin_scores = self._spilt_predict(interaction, batch_size)
        if self.config["eval_type"] == EvaluatorType.VALUE:
            return interaction, origin_scores, positive_u, positive_i
        col_idx = interaction[self.config["ITEM_ID_FIELD"]]
        batch_user_num = positive_u[-1] + 1
        scores = torch.full((batch_user_num, self.tot_item_num), -np.inf, device=self.device)
        scores[row_idx, col_idx] = origin_scores
        return interaction, scores, positive_u, positive_i

    def _spilt_predict(self, interaction, batch_size):
        """RecBole's split of a large batch into ``eval_batch_size`` blocks, scored by :meth:`_predict_rows`."""
        blocks = {key: tensor.split(self.test_batch_size, dim=0) for key, tensor in interaction.interaction.items()}
        count = (batch_size + self.test_batch_size - 1) // self.test_batch_size
        results = []
        for index in range(count):
            block = Interaction({key: parts[index] for key, parts in blocks.items()}).to(self.device)
            result = self._predict_rows(block)
            results.append(result.unsqueeze(0) if len(result.shape) == 0 else result)
        return torch.cat(results, dim=0)

    def _predict_rows(self, interaction):
        """Each row's score: ``model.predict``, or read off one full ranking per distinct history
        (a general model's, such as Pop, ItemKNN or EASE: per distinct user).

        RecBole's ``uni100`` evaluation scores 101 rows per user, re-encoding the same history 101
        times (minutes for MIND's routing on 22k users; EASE's ``predict`` gathers a column block of
        its items x items matrix per batch). For a model that ranks the catalogue, the score of
        (history, item) is the number its full ranking gives the item.
        """
        ranking_key = getattr(self.model, "ITEM_SEQ", None) or getattr(self.model, "USER_ID", None)
        if not self.score_sampled_from_full_ranking or ranking_key is None:
            return self.model.predict(interaction)
        histories, inverse = torch.unique(interaction[ranking_key], dim=0, return_inverse=True)
        rows = torch.arange(len(inverse), device=inverse.device)
        representative = torch.empty(len(histories), dtype=torch.long, device=inverse.device)
        representative.scatter_(0, inverse, rows)  # one row of each distinct history
        scores = self.model.full_sort_predict(interaction[representative]).view(len(histories), -1)  # [H n_items]
        return scores[inverse, interaction[self.model.ITEM_ID]].float()  # [rows]; Pop ranks in float64, predicts in float32
