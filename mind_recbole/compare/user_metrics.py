"""Each evaluated user's values of RecBole's top-k metrics, for paired tests between models.

RecBole's ``Trainer.evaluate`` gathers, in its ``Collector``, a ``rec.topk`` matrix (for each
evaluated user: whether the item at each rank is a target, then the number of targets), averages
each metric over its rows and drops it. :class:`UserCollector` keeps the last evaluation's matrix
and the user of each row; :func:`topk_metrics_per_user` applies RecBole's own metric classes to it
without the average, so the mean of each column is the number RecBole reported (before it rounds).
"""

from __future__ import annotations

import inspect

import torch
from recbole.evaluator import Collector
from recbole.evaluator.base_metric import TopkMetric

from mind_recbole.compare.user_results import UserValues


class UserCollector(Collector):
    """RecBole's ``Collector`` that also keeps the last evaluation's ``rec.topk`` and its users.

    Args:
        config: the run's RecBole config.

    Attributes:
        last_struct: the ``DataStruct`` the last evaluation's metrics were computed from.
        last_users: ``[U]`` internal user ids, one per row of ``last_struct``'s ``rec.topk``.
    """

    def __init__(self, config):
        super().__init__(config)
        self.user_field = config["USER_ID_FIELD"]
        self.batch_users = []
        self.last_struct, self.last_users = None, None

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        users = interaction[self.user_field]  # [rows]
        if len(users) != len(scores_tensor):  # sampled: a user's 1 + 100 rows lie together, users differ in turn
            users = torch.unique_consecutive(users)
        if len(users) != len(scores_tensor):
            raise RuntimeError(
                f"cannot tell the user of each scored row: {len(scores_tensor)} score rows, {len(users)} users"
            )
        self.batch_users.append(users.cpu())

    def get_data_struct(self):
        struct = super().get_data_struct()
        self.last_struct = struct
        self.last_users = torch.cat(self.batch_users) if self.batch_users else torch.zeros(0, dtype=torch.long)
        self.batch_users = []
        return struct


def topk_metrics_per_user(evaluator, struct):
    """``{"recall@50": [U] values, ...}``: every top-k metric of RecBole's ``evaluator``, per row of
    ``struct``'s ``rec.topk`` (metrics that are not top-k ones, e.g. AUC, are left out)."""
    values = {}
    for name, metric in evaluator.metric_class.items():
        if not isinstance(metric, TopkMetric):
            continue
        hits, targets = metric.used_info(struct)  # [U max(topk)] bool, [U]
        takes_targets = "pos_len" in inspect.signature(metric.metric_info).parameters  # Hit, MRR: hits only
        per_rank = metric.metric_info(hits, targets) if takes_targets else metric.metric_info(hits)  # [U max(topk)]
        values.update({f"{name}@{k}": per_rank[:, k - 1] for k in metric.topk})
    return values


def last_evaluation_per_user(trainer, dataset):
    """:class:`UserValues` of the trainer's last evaluation (its ``eval_collector`` a :class:`UserCollector`),
    users as tokens of ``dataset``."""
    collector = trainer.eval_collector
    users = dataset.id2token(dataset.uid_field, collector.last_users.numpy())
    return UserValues(users, topk_metrics_per_user(trainer.evaluator, collector.last_struct))
