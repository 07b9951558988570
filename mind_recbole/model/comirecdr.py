r"""ComiRecDR
################################################

Reference:
    Yukuo Cen et al. "Controllable Multi-Interest Framework for Recommendation." In KDD 2020
    (arXiv:2005.09347), multi-interest extraction by dynamic routing (after Sabour et al., "Dynamic
    Routing Between Capsules", NIPS 2017); the authors' ``Model_ComiRec_DR``, which is their
    ``CapsuleNetwork`` with ``bilinear_type=2`` (github.com/THUDM/ComiRec, ``src/model.py``).

Each behaviour ``e_j`` (history position ``j``) is mapped to every interest ``k`` by its own matrix,
``e_{k|j} = W_{jk} e_j`` (the reference's weight ``[seq_len, K * D, D]``: one ``D x D`` map per
position and interest, drawn from ``N(0, 1)``), and routed: logits ``b_kj`` start at 0, the weights
are a softmax over the *interests*, padded behaviours get weight 0,
``v_k = squash(sum_j c_kj e_{k|j})`` and ``b_kj += e_{k|j} . v_k`` between iterations, 3 iterations.
As in the reference, the logit updates carry no gradient (``e_{k|j}`` is detached in every
iteration but the last), so only the last iteration's capsules back-propagate; the routing weights
carry no gradient, so REMI's routing regularisation cannot act on them and is refused.

Unlike MIND (one map ``S`` shared by all, logits drawn from a normal; the reference's code does
that only for its MIND, ``bilinear_type=0``), nothing here is random: training and inference route
the same way, so inference is deterministic without an eval buffer.
The maps are per position, so the layer takes at most ``max_seq_length`` behaviours (the graph's
``max_history_length``); positions count from the oldest kept item, as histories are left-aligned
both here (RecBole) and in the reference's data iterator.

What ComiRecDR shares with ComiRecSA (all interests active, hard readout in training) and with
MIND (item tower, user tower, losses): :mod:`mind_recbole.model.comirec`.
"""

import torch
from torch import nn

from mind_recbole.model.base import ConfigErrors
from mind_recbole.model.comirec import ComiRecBase
from mind_recbole.model.layers import squash


class CapsuleInterests(nn.Module):
    """ComiRec-DR's dynamic routing with one map per history position and interest.

    Args:
        embedding_size (int): D, the size of behaviour embeddings and capsules.
        interest_num (int): K, the number of interest capsules.
        max_seq_length (int): the longest history, the number of per-position maps.
        iterations (int): routing iterations (3 in the paper and the reference).

    Shape:
        - history: ``[B, L, D]`` (``L <= max_seq_length``); seq_mask: ``[B, L]`` bool.
        - Output: capsules ``[B, K, D]`` and the last iteration's routing weights ``[B, K, L]``
          (a softmax over the interests at every valid position: each column sums to 1; 0 at
          padded positions).
    """

    def __init__(self, embedding_size, interest_num, max_seq_length, iterations=3):
        super().__init__()
        self.interest_num = interest_num
        self.iterations = iterations
        self.maps = nn.Parameter(torch.randn(max_seq_length, interest_num, embedding_size, embedding_size))  # W_jk

    def forward(self, history, seq_mask):
        batch_size, seq_len, _ = history.shape
        mapped = torch.einsum("lkde,ble->bkld", self.maps[:seq_len], history)  # [B K L D]: W_jk e_j
        detached = mapped.detach()  # the logit updates carry no gradient
        logits = history.new_zeros(batch_size, self.interest_num, seq_len)  # [B K L]
        behaviour_weight = seq_mask.unsqueeze(1).to(history.dtype)  # [B 1 L]
        for iteration in range(self.iterations):
            last = iteration == self.iterations - 1
            weights = torch.softmax(logits, dim=1) * behaviour_weight  # [B K L]
            source = mapped if last else detached
            capsules = squash((weights.unsqueeze(2) @ source).squeeze(2))  # [B K D]
            if not last:
                logits = logits + (source @ capsules.unsqueeze(-1)).squeeze(-1)  # [B K L]
        return capsules, weights


class ComiRecDR(ComiRecBase):
    """ComiRec with dynamic-routing interest extraction (see the module docstring)."""

    def __init__(self, config, dataset):
        # parameters from config (interest_num and the shared ones are read by the base classes)
        self.routing_iterations = config["routing_iterations"]
        super().__init__(config, dataset)

        # layers (the maps keep the reference's N(0, 1) draw)
        self.interest_extractor = CapsuleInterests(
            self.embedding_size, self.interest_num, self.max_seq_length, self.routing_iterations
        )

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        error = ConfigErrors(config)
        error.require_int("routing_iterations", 1)
        if config["routing_regularisation"]:
            error("routing_regularisation", "routing_regularisation needs gradients through the routing weights; "
                                            "ComiRecDR's routing logits carry none (stop-gradient, as in ComiRec)")

    @property
    def max_history_length(self):
        """The number of per-position maps."""
        return self.max_seq_length
