"""What MIND and YouTubeDNN share: item tower, user profile, ReLU tower, losses and scoring.

A subclass implements :meth:`InterestRecommender.extract_interests` (history -> capsules, their
mask and routing weights) and may override :meth:`InterestRecommender.training_user_vector` and
:meth:`InterestRecommender.training_scores` (MIND: label-aware attention). The losses are the
sampled softmax of :mod:`mind_recbole.model.sampled_softmax` (sampled or mixed negatives, log-Q
correction, REMI's hard negatives) or the full softmax, plus REMI's routing regularisation
(:mod:`mind_recbole.model.routing_regularisation`) for models with routing.
"""

import math

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from torch import nn
from torch.nn import functional as F

from mind_recbole.data.features import feature_table
from mind_recbole.model.layers import (
    ItemTower,
    ReLUTower,
    UserProfileEmbedding,
    interest_max,
    max_over_interests,
)
from mind_recbole.model.routing_regularisation import routing_regularisation
from mind_recbole.model.sampled_softmax import log_expected_copies, negative_mask, sampled_softmax

LOSS_TYPES = ("sampled_softmax", "CE")


def field_list(value, key):
    """A config list of field names; a single name is a list of one (not a list of its letters)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(field, str) for field in value):
        raise ValueError(f"{key} must be a list of field names, got {value!r}")
    return list(value)


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class ConfigErrors:
    """Raises ``ValueError`` for a bad setting of ``config``, naming where it was set (a
    :class:`mind_recbole.config.MindConfig` knows each key's source)."""

    def __init__(self, config):
        self.config = config
        self.source = getattr(config, "key_source", None)

    def __call__(self, key, message):
        source = self.source(key) if self.source else None
        raise ValueError(f"{message} (set in {source})" if source else message)

    def require_int(self, key, minimum, what=""):
        value = self.config[key]
        if not _is_int(value) or value < minimum:
            self(key, f"{key} must be an integer >= {minimum}{what}, got {value!r}")

    def require_number(self, key, minimum=0):
        value = self.config[key]
        if not _is_number(value) or not math.isfinite(value) or value < minimum:
            self(key, f"{key} must be a number >= {minimum}, got {value!r}")

    def require_bool(self, key):
        if not isinstance(self.config[key], bool):
            self(key, f"{key} must be True or False, got {self.config[key]!r}")

    def user_set(self, key):
        """True when a config file, ``config_dict`` or the command line set ``key`` (not the defaults)."""
        return key in (getattr(self.config, "external_config_dict", None) or {})


class InterestRecommender(SequentialRecommender):
    """A retrieval model whose user is ``K`` interest vectors and whose item is one vector.

    ``forward`` returns the interests ``[B, K, D]`` and their mask ``[B, K]``; an item's score is
    ``max_k e_i . v_u^k`` over the active interests.
    """

    interest_num = 1
    has_routing = False  # True where extract_interests returns routing weights (routing_regularisation needs them)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)

        # parameters from config
        self.check_config(config)
        self.embedding_size = config["embedding_size"]
        self.item_side_fields = field_list(config["item_side_fields"], "item_side_fields")
        self.user_profile_fields = field_list(config["user_profile_fields"], "user_profile_fields")
        self.tower_hidden_sizes = list(config["tower_hidden_sizes"] or [])
        self.dropout_prob = config["dropout_prob"]
        self.loss_type = config["loss_type"]
        self.num_negatives = config["num_negatives"]
        self.negative_sampling_alpha = config["negative_sampling_alpha"]
        # None: a config saved before the key existed, or a model without it: the option is off
        self.in_batch_negatives = config["in_batch_negatives"] or False
        self.hard_negative_beta = config["hard_negative_beta"] or 0.0
        self.routing_regularisation_weight = config["routing_regularisation"] or 0.0
        self.score_chunk_size = config["score_chunk_size"]

        # layers and loss
        side_tables = feature_table(dataset, "item", self.item_side_fields)
        profile_tables = feature_table(dataset, "user", self.user_profile_fields)
        self.item_tower = ItemTower(
            self.n_items, self.embedding_size, side_tables, {f: dataset.num(f) for f in side_tables}
        )
        self.user_profile = UserProfileEmbedding(
            profile_tables, {f: dataset.num(f) for f in profile_tables}, self.embedding_size
        )
        self.history_dropout = nn.Dropout(self.dropout_prob)
        self.tower = ReLUTower(
            self.embedding_size + self.user_profile.output_size,
            self.tower_hidden_sizes,
            self.embedding_size,
            self.dropout_prob,
        )
        target_counts = torch.bincount(dataset.inter_feat[self.ITEM_ID].long(), minlength=self.n_items).float()
        self.register_buffer("target_probs", target_counts / target_counts.sum(), persistent=False)  # in-batch p(i)
        # q(i), for sampling and log-Q (through the log: the same floats, so the same draws, as ever)
        self.register_buffer("negative_probs", self._negative_log_probs(target_counts).exp(), persistent=False)

        # initialisation
        self.apply(self._init_weights)

    @classmethod
    def check_config(cls, config):
        """Raise ``ValueError`` naming the key (and where it was set) for a setting out of range.

        :class:`mind_recbole.config.MindConfig` calls it as soon as the config is built, before
        anything is loaded or logged; ``__init__`` calls it again for a config built elsewhere.
        """
        error = ConfigErrors(config)
        if config["loss_type"] not in LOSS_TYPES:
            error("loss_type", f"loss_type must be one of {LOSS_TYPES}, got {config['loss_type']!r}")
        error.require_int("embedding_size", 1)
        for key, check in (("in_batch_negatives", error.require_bool), ("hard_negative_beta", error.require_number),
                           ("routing_regularisation", error.require_number)):
            if config[key] is not None:  # None: off (a config saved before the key existed, a model without it)
                check(key)
        if config["loss_type"] == "sampled_softmax":
            error.require_int("num_negatives", 1, " for sampled_softmax")
        for key in ("in_batch_negatives", "hard_negative_beta"):
            # a default that CE does not use is fine; a user's setting that cannot apply is an error
            if config["loss_type"] == "CE" and config[key] and error.user_set(key):
                error(key, f"{key} ({config[key]!r}) is an option of loss_type: sampled_softmax; "
                           "loss_type: CE scores every item, so it cannot apply")
        if config["routing_regularisation"] and not cls.has_routing:
            error("routing_regularisation", f"routing_regularisation needs a routing model; {cls.__name__} "
                                            f"has no routing weights (got {config['routing_regularisation']!r})")
        error.require_int("score_chunk_size", 1)
        for size in config["tower_hidden_sizes"] or []:
            if not _is_int(size) or size < 1:
                error("tower_hidden_sizes", f"tower_hidden_sizes must be an integer >= 1 (each size), got {size!r}")
        dropout = config["dropout_prob"]
        if not _is_number(dropout) or not 0 <= dropout < 1:
            error("dropout_prob", f"dropout_prob must be in [0, 1), got {dropout!r}")
        alpha = config["negative_sampling_alpha"]
        if not _is_number(alpha) or not math.isfinite(alpha):
            error("negative_sampling_alpha", f"negative_sampling_alpha must be a number, got {alpha!r}")

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                module.weight.data[module.padding_idx].zero_()
        elif isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            nn.init.zeros_(module.bias)

    def _negative_log_probs(self, counts):
        """Log of the negative-sampling distribution ``q(i) ~ (count_i + 1)^alpha``; padding excluded."""
        weights = (counts + 1.0).pow(self.negative_sampling_alpha)
        weights[0] = 0.0
        return torch.log(weights / weights.sum())

    # ------------------------------------------------------------------ representations
    def extract_interests(self, history, seq_mask, item_seq_len):
        """History -> capsules, interest mask and routing weights.

        The routing weights are each history position's weight in each interest (0 at padding),
        or None for a model without routing (:attr:`has_routing` False).

        Shape:
            - history ``[B, L, D]``, seq_mask ``[B, L]`` bool, item_seq_len ``[B]``.
            - Output: capsules ``[B, K, D]``, interest_mask ``[B, K]`` bool, routing ``[B, K, L]`` or None.
        """
        raise NotImplementedError

    def forward(self, item_seq, item_seq_len, user_ids=None):
        """Interests ``[B, K, D]`` and their mask ``[B, K]`` (False for inactive interests)."""
        interests, interest_mask, _ = self._interests_and_routing(item_seq, item_seq_len, user_ids)
        return interests, interest_mask

    def _interests_and_routing(self, item_seq, item_seq_len, user_ids=None):
        """:meth:`forward`'s interests and mask, and the routing weights ``[B, K, L]`` (or None) for the loss."""
        seq_mask = item_seq > 0  # [B L]
        history = self.history_dropout(self.item_tower(item_seq))  # [B L D]
        capsules, interest_mask, routing = self.extract_interests(history, seq_mask, item_seq_len)  # [B K D]
        return self.user_tower(capsules, user_ids, interest_mask), interest_mask, routing

    def user_tower(self, capsules, user_ids=None, interest_mask=None):
        """Capsules ``[B, K, D]``, each concatenated with the user profile, through the ReLU tower: ``[B, K, D]``.

        In training, with ``interest_mask`` ``[B, K]``, only the active interests go through the
        tower (a training batch of amazon-beauty averages 2.0 of 4) and the inactive ones are 0,
        which nothing reads (:meth:`ReLUTower.forward_rows`: the same values and random draws).
        """
        if self.user_profile.output_size:
            profile = self.user_profile(user_ids)  # [B P]
            profile = profile.unsqueeze(1).expand(-1, capsules.shape[1], -1)  # [B K P]
            capsules = torch.cat([capsules, profile], dim=-1)
        if not self.training or interest_mask is None or bool(interest_mask.all()):
            return self.tower(capsules)  # [B K D]
        rows = torch.nonzero(interest_mask.flatten()).squeeze(1)  # [P]: active (user, interest) pairs
        active = self.tower.forward_rows(capsules.flatten(0, 1)[rows], rows, interest_mask.numel())  # [P D]
        return active.new_zeros(interest_mask.numel(), active.shape[-1]).index_copy_(0, rows, active).view(
            *interest_mask.shape, -1)  # [B K D]

    # ------------------------------------------------------------------ the served user tower
    def serving_item_table(self):
        """``[n_items, D']``: what the eval-mode user tower reads per history item, computed once at
        export (``export.onnx_export``) instead of per request. Here the item tower (side features
        pooled); row 0 (padding) is zero."""
        return self.all_item_vectors()

    def serving_interests(self, rows, item_seq, item_seq_len, user_ids=None):
        """:meth:`forward` in eval mode from ``rows = serving_item_table()[item_seq]`` ``[B, L, D']``."""
        capsules, interest_mask = self.extract_interests(rows, item_seq > 0, item_seq_len)[:2]
        return self.user_tower(capsules, user_ids), interest_mask

    def _user_inputs(self, interaction):
        user_ids = interaction[self.USER_ID] if self.user_profile.output_size else None
        return interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], user_ids

    def user_interests(self, interaction):
        return self.forward(*self._user_inputs(interaction))

    def all_item_vectors(self):
        """The item tower over the whole catalogue, ``[n_items, D]`` (row 0 is padding)."""
        return self.item_tower(torch.arange(self.n_items, device=self.negative_probs.device))

    def training_user_vector(self, interests, interest_mask, target_vectors):
        """One user vector per target ``[B, D]``; a single-interest model has nothing to choose."""
        return interests[:, 0]

    def training_scores(self, interests, interest_mask, user_vectors, item_vectors):
        """Scores ``[B, N]`` of ``item_vectors [N, D]`` in the loss: each row's user vector ``[B, D]``."""
        return user_vectors @ item_vectors.transpose(0, 1)

    # ------------------------------------------------------------------ training
    def calculate_loss(self, interaction):
        interests, interest_mask, routing = self._interests_and_routing(*self._user_inputs(interaction))
        targets = interaction[self.POS_ITEM_ID]  # [B]
        target_vectors = self.item_tower(targets)  # [B D]
        user_vectors = self.training_user_vector(interests, interest_mask, target_vectors)  # [B D]
        if self.loss_type == "CE":
            logits = self.training_scores(interests, interest_mask, user_vectors, self.all_item_vectors())  # [B N]
            logits[:, 0] = float("-inf")
            loss = F.cross_entropy(logits, targets)
        else:
            loss = self.sampled_softmax_loss(interests, interest_mask, user_vectors, target_vectors, targets)
        if self.routing_regularisation_weight:
            loss = loss + self.routing_regularisation_weight * routing_regularisation(routing, self.embedding_size)
        return loss

    def sampled_softmax_loss(self, interests, interest_mask, user_vectors, target_vectors, targets):
        """Each row's target against ``num_negatives`` shared samples and, with
        ``in_batch_negatives``, the batch's other targets: log-Q corrected, the row's own target
        never a negative, REMI's hard-negative weights when ``hard_negative_beta > 0``
        (:mod:`mind_recbole.model.sampled_softmax`). Every candidate is scored by
        :meth:`training_scores`, so MIND's ``every_item`` scores it as served.

        Shape:
            - interests ``[B, K, D]``, interest_mask ``[B, K]``, user_vectors ``[B, D]``,
              target_vectors ``[B, D]``, targets ``[B]``. Output: a scalar.
        """
        sampled = torch.multinomial(self.negative_probs, self.num_negatives, replacement=True)  # [S]
        candidates, candidate_vectors = sampled, self.item_tower(sampled)  # [M], [M D]
        if self.in_batch_negatives:
            candidates = torch.cat([targets, sampled])  # [B+S]: row b's own target is column b
            candidate_vectors = torch.cat([target_vectors, candidate_vectors])  # [B+S D]
        batch_rows = targets.shape[0] if self.in_batch_negatives else 0

        def log_q(items):
            return log_expected_copies(items, self.target_probs, batch_rows, self.negative_probs, self.num_negatives)

        return sampled_softmax(
            (user_vectors * target_vectors).sum(-1),  # [B]
            self.training_scores(interests, interest_mask, user_vectors, candidate_vectors),  # [B M]
            log_q(targets),
            log_q(candidates),
            negative_mask(targets, candidates),
            self.hard_negative_beta,
        )

    # ------------------------------------------------------------------ what export needs
    @property
    def uses_user_profile(self):
        """True when the user tower takes user ids (profile embeddings are concatenated)."""
        return self.user_profile.output_size > 0

    @property
    def profile_user_count(self):
        """How many user ids the profile tables hold (padding included); 0 without profile fields."""
        return self.user_profile.user_count

    @property
    def max_history_length(self):
        """The longest history the user tower takes in eval mode (None: any length)."""
        return None

    # ------------------------------------------------------------------ scoring
    def predict(self, interaction):
        interests, interest_mask = self.user_interests(interaction)  # [B K D]
        item_vectors = self.item_tower(interaction[self.ITEM_ID])  # [B D]
        return interest_max(torch.einsum("bkd,bd->bk", interests, item_vectors), interest_mask)  # [B]

    def full_sort_predict(self, interaction):
        interests, interest_mask = self.user_interests(interaction)
        return max_over_interests(
            interests, interest_mask, self.all_item_vectors(), self._item_chunk_size(interests.shape[0])
        )  # [B n_items]

    def _item_chunk_size(self, batch_size):
        """Items per scoring chunk so that ``B * K * chunk`` stays near ``score_chunk_size``."""
        return max(1, self.score_chunk_size // max(1, batch_size * self.interest_num))
