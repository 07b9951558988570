r"""MIND
################################################

Reference:
    Chao Li et al. "Multi-Interest Network with Dynamic Routing for Recommendation at Tmall."
    In CIKM 2019 (arXiv:1904.08030).

A user's history is routed into up to ``K`` interest capsules (behaviour-to-interest dynamic
routing with one shared bilinear map), each capsule concatenated with the user profile goes through
a ReLU layer, and training weighs the interests by label-aware attention. An item is scored by its
best-matching interest, ``max_k e_i . v_u^k``.

In the loss, the paper scores every item with the user vector that label-aware attention built for
the *target* (``label_attention: target``). ``label_attention: every_item`` (not in the paper) lets
every scored item attend over the interests as its own label, so that training scores items the
way serving does (``p = inf``: exactly ``max_k``) and every interest is penalised for the negatives
it ranks high.

Training options beyond the paper (:mod:`mind_recbole.model.sampled_softmax`,
:mod:`mind_recbole.model.routing_regularisation`): in-batch negatives mixed with the sampled ones,
and REMI's interest-aware hard negatives and routing regularisation (Xie et al., RecSys 2023,
arXiv 2302.14532); the routing weights of the last routing iteration are the matrix RR regularises.
"""

from mind_recbole.config import number_from_text
from mind_recbole.model.base import ConfigErrors, InterestRecommender, _is_int, _is_number
from mind_recbole.model.layers import (
    B2IDynamicRouting,
    interest_count_mask,
    label_aware_attention,
    label_aware_scores,
)

LABEL_ATTENTION_MODES = ("target", "every_item")


def _to_float(value):
    """A number, or text such as ``inf`` / ``.inf``, as a float; else None."""
    if _is_number(value):
        return float(value)
    return number_from_text(value) if isinstance(value, str) else None


class MIND(InterestRecommender):
    """Multi-Interest Network with Dynamic Routing (see the module docstring)."""

    has_routing = True

    def __init__(self, config, dataset):
        # parameters from config (the shared ones are read by InterestRecommender)
        self.interest_num = config["interest_num"]
        self.routing_iterations = config["routing_iterations"]
        self.routing_init_std = config["routing_init_std"]
        self.fixed_routing_init = config["fixed_routing_init"]
        self.routing_detach_logits = config["routing_detach_logits"]
        self.attention_pow = _to_float(config["attention_pow"])  # checked by check_config
        self.label_attention = config["label_attention"]
        super().__init__(config, dataset)

        # layers
        self.routing = B2IDynamicRouting(
            self.embedding_size,
            self.interest_num,
            self.max_seq_length,
            self.routing_iterations,
            self.routing_init_std,
            self.fixed_routing_init,
            self.routing_detach_logits,
        )

    @classmethod
    def check_config(cls, config):
        super().check_config(config)
        error = ConfigErrors(config)
        interest_num = config["interest_num"]
        if not _is_int(interest_num):
            error("interest_num", f"interest_num (K) must be an integer, got {interest_num!r}")
        if interest_num < 1:
            error("interest_num", f"interest_num (K) must be >= 1, got {interest_num}")
        error.require_int("routing_iterations", 1)
        power = _to_float(config["attention_pow"])
        if power is None or not power > 0:
            error("attention_pow", f"attention_pow (p) must be > 0 (or .inf for hard attention), got {config['attention_pow']!r}")
        if config["label_attention"] not in LABEL_ATTENTION_MODES:
            error("label_attention", f"label_attention must be one of {LABEL_ATTENTION_MODES}, got {config['label_attention']!r}")
        sigma = config["routing_init_std"]
        if not _is_number(sigma) or not sigma >= 0:
            error("routing_init_std", f"routing_init_std must be >= 0, got {sigma!r}")
        for key in ("fixed_routing_init", "routing_detach_logits"):
            error.require_bool(key)
        if config["routing_regularisation"] and config["routing_detach_logits"]:
            error("routing_detach_logits", "routing_regularisation needs gradients through the routing weights, "
                                           "which routing_detach_logits: True cuts; set routing_detach_logits: False")

    @property
    def max_history_length(self):
        """The length of the fixed routing-logit draw used in eval mode."""
        return int(self.routing.eval_routing_logits.shape[-1])

    def extract_interests(self, history, seq_mask, item_seq_len):
        interest_mask = interest_count_mask(item_seq_len, self.interest_num)  # [B K]
        capsules, routing = self.routing.route(history, seq_mask, interest_mask)  # [B K D], [B K L]
        return capsules, interest_mask, routing

    def serving_item_table(self):
        """``S e_i`` for every item: the eval tower maps each history item by ``S`` and does nothing else with it."""
        return self.routing.map_behaviours(super().serving_item_table())  # [n_items D]

    def serving_interests(self, rows, item_seq, item_seq_len, user_ids=None):
        interest_mask = interest_count_mask(item_seq_len, self.interest_num)  # [B K]
        capsules = self.routing.route_mapped_eval(rows, interest_mask)  # [B K D]
        return self.user_tower(capsules, user_ids), interest_mask

    def training_user_vector(self, interests, interest_mask, target_vectors):
        return label_aware_attention(interests, interest_mask, target_vectors, self.attention_pow)

    def training_scores(self, interests, interest_mask, user_vectors, item_vectors):
        if self.label_attention == "every_item":  # each item attends over the interests as its own label
            return label_aware_scores(interests, interest_mask, item_vectors, self.attention_pow)  # [B N]
        return super().training_scores(interests, interest_mask, user_vectors, item_vectors)
