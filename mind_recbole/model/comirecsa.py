r"""ComiRecSA
################################################

Reference:
    Yukuo Cen et al. "Controllable Multi-Interest Framework for Recommendation." In KDD 2020
    (arXiv:2005.09347), multi-interest extraction by self-attention (after Lin et al., "A
    Structured Self-Attentive Sentence Embedding", ICLR 2017); the authors' ``Model_ComiRec_SA``
    (github.com/THUDM/ComiRec, ``src/model.py``).

The history ``H`` (``L x D``) is attended by ``K`` heads,
``A = softmax(W_2 tanh(W_1 H^T))`` (``K x L``, a softmax over the history positions, padded
positions masked), and the interests are ``V = A H`` (``K x D``). As in the reference
(``add_pos=True``), learned position embeddings are added to ``H`` where the attention is computed
but not to the items the interests average; ``W_1`` (``d_a x D``) and ``W_2`` (``K x d_a``) have
biases (``tf.layers.dense``); the reference's ``d_a`` is ``4 x`` its hidden size. Differences:
position embeddings start from ``N(0, 0.02^2)`` like every embedding of this package (the
reference: Glorot uniform), and a history with no item at all (which neither training nor serving
produces) gets zero interests instead of an average over padding. ``A`` is also the routing matrix
that REMI's routing regularisation (``routing_regularisation``, built on ComiRec-SA in REMI's paper)
penalises.

What ComiRecSA shares with ComiRecDR (all interests active, hard readout in training) and with
MIND (item tower, user tower, losses): :mod:`mind_recbole.model.comirec`.
"""

import torch
from torch import nn

from mind_recbole.model.base import ConfigErrors
from mind_recbole.model.comirec import ComiRecBase


class SelfAttentiveInterests(nn.Module):
    """ComiRec-SA's multi-head self-attentive pooling of a history into ``K`` interests.

    ``A = softmax_L(W_2 tanh(W_1 (H + P)^T))`` with padded positions masked, ``V = A H``.

    Args:
        embedding_size (int): D, the size of behaviour embeddings and interests.
        interest_num (int): K, the number of attention heads (interests).
        hidden_size (int): d_a, the width of ``W_1``.
        max_seq_length (int or None): size of the position-embedding table; None: no positions.

    Shape:
        - history: ``[B, L, D]``; seq_mask: ``[B, L]`` bool (at least one True per row for the
          weights to sum to 1; ``L <= max_seq_length`` with positions).
        - Output: interests ``[B, K, D]`` and attention ``A`` ``[B, K, L]`` (0 at padded positions;
          each row sums to 1).
    """

    def __init__(self, embedding_size, interest_num, hidden_size, max_seq_length=None):
        super().__init__()
        self.hidden = nn.Linear(embedding_size, hidden_size)  # W_1
        self.heads = nn.Linear(hidden_size, interest_num)  # W_2
        self.position_embedding = nn.Embedding(max_seq_length, embedding_size) if max_seq_length else None

    def forward(self, history, seq_mask):
        keys = history  # [B L D]
        if self.position_embedding is not None:
            positions = torch.arange(history.shape[1], device=history.device)  # [L]
            keys = history + self.position_embedding(positions).unsqueeze(0)
        logits = self.heads(torch.tanh(self.hidden(keys))).transpose(1, 2)  # [B K L]
        # the lowest finite float, not -inf, so that no row is ever a softmax over -inf only (NaN)
        logits = logits.masked_fill(~seq_mask.unsqueeze(1), torch.finfo(logits.dtype).min)
        attention = torch.softmax(logits, dim=-1) * seq_mask.unsqueeze(1).to(logits.dtype)  # [B K L]
        return attention @ history, attention  # [B K D], [B K L]


class ComiRecSA(ComiRecBase):
    """ComiRec with self-attentive interest extraction (see the module docstring)."""

    def __init__(self, config, dataset):
        # parameters from config (interest_num and the shared ones are read by the base classes)
        self.attention_hidden_size = config["attention_hidden_size"]
        self.use_position_embedding = config["position_embedding"]
        super().__init__(config, dataset)

        # layers, initialised as the rest of the model (Xavier-normal linear maps, N(0, 0.02^2) embeddings)
        self.interest_extractor = SelfAttentiveInterests(
            self.embedding_size,
            self.interest_num,
            self.attention_hidden_size,
            self.max_seq_length if self.use_position_embedding else None,
        )
        self.interest_extractor.apply(self._init_weights)

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        error = ConfigErrors(config)
        error.require_int("attention_hidden_size", 1, " (d_a, the width of W_1)")
        error.require_bool("position_embedding")

    @property
    def max_history_length(self):
        """With position embeddings, the length of their table; else any length."""
        return self.max_seq_length if self.use_position_embedding else None
