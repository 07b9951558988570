r"""ComiRec: what ComiRec-SA and ComiRec-DR share
################################################

Reference:
    Yukuo Cen, Jianwei Zhang, Xu Zou, Chang Zhou, Hongxia Yang, Jie Tang. "Controllable
    Multi-Interest Framework for Recommendation." In KDD 2020 (arXiv:2005.09347). The authors'
    TensorFlow code: github.com/THUDM/ComiRec, ``src/model.py`` (``Model_ComiRec_SA``,
    ``Model_ComiRec_DR``, ``CapsuleNetwork``).

ComiRec's multi-interest module turns a history into ``K`` interest vectors, either by
self-attention (:mod:`mind_recbole.model.comirecsa`) or by dynamic routing
(:mod:`mind_recbole.model.comirecdr`). What the two share, as in the paper and its code:

- every user has all ``K`` interests (no per-user ``K'_u`` as in MIND): the interest mask is all
  True;
- training reads out *one* interest per target: the one with the largest inner product with the
  target item (the reference's ``argmax`` over ``softmax(V^T e_i)``, i.e. hard attention, which is
  :func:`mind_recbole.model.layers.label_aware_attention` with ``p = inf``); that vector scores the
  target and the sampled negatives;
- serving scores an item by its best interest, ``max_k e_i . v_u^k`` (the reference searches each
  interest's top-N with faiss and merges the lists by score, which ranks items the same way).

Where this package differs from the reference, on purpose: the item vector is this project's
shared item tower (the id embedding averaged with ``item_side_fields``; the reference embeds the
id only), every interest goes through the shared user tower (user profile, ReLU layers,
projection; the reference's ComiRec models have none), and the loss is the shared sampled softmax
with log-Q correction (or full softmax); the reference uses TensorFlow's ``sampled_softmax_loss``
with its default log-uniform sampler and ``10 x batch`` negatives. MIND, YouTubeDNN and both
ComiRec models share these towers and losses, so a comparison between them isolates the interest
extractor.
"""

import math

import torch

from mind_recbole.model.base import ConfigErrors, InterestRecommender
from mind_recbole.model.layers import label_aware_attention


class ComiRecBase(InterestRecommender):
    """A ComiRec model: all ``K`` interests active and hard (argmax) readout in training.

    A subclass sets ``interest_extractor``, a module taking the history ``[B, L, D]`` and its mask
    ``[B, L]`` to the interests ``[B, K, D]`` and each behaviour's weight in each interest
    ``[B, K, L]``.
    """

    attention_pow = math.inf  # hard readout; recorded in the export metadata as MIND's p is
    has_routing = True  # extract_interests returns each behaviour's weight in each interest

    def __init__(self, config, dataset):
        # parameters from config (the shared ones are read by InterestRecommender)
        self.interest_num = config["interest_num"]
        super().__init__(config, dataset)

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        ConfigErrors(config).require_int("interest_num", 1, " (K, the number of interests)")

    def extract_interests(self, history, seq_mask, item_seq_len):
        """Capsules ``[B, K, D]``, the interest mask ``[B, K]`` (all True) and the routing ``[B, K, L]``."""
        capsules, routing = self.interest_extractor(history, seq_mask)  # [B K D], [B K L]
        interest_mask = torch.ones_like(capsules[..., 0], dtype=torch.bool)  # [B K]
        return capsules, interest_mask, routing

    def training_user_vector(self, interests, interest_mask, target_vectors):
        """The interest closest to the target (largest inner product), ``[B, D]``."""
        return label_aware_attention(interests, interest_mask, target_vectors, self.attention_pow)
