"""What MIND and YouTubeDNN share: item tower, user profile, ReLU tower, losses and scoring.

A subclass implements :meth:`InterestRecommender.extract_interests` (history -> capsules) and may
override :meth:`InterestRecommender.training_user_vector` (MIND: label-aware attention).
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
    best_interest,
    max_over_interests,
)

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


class InterestRecommender(SequentialRecommender):
    """A retrieval model whose user is ``K`` interest vectors and whose item is one vector.

    ``forward`` returns the interests ``[B, K, D]`` and their mask ``[B, K]``; an item's score is
    ``max_k e_i . v_u^k`` over the active interests.
    """

    interest_num = 1

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
        self.register_buffer("negative_log_probs", self._negative_log_probs(dataset), persistent=False)
        self.register_buffer("negative_probs", self.negative_log_probs.exp(), persistent=False)  # for sampling

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
        if config["loss_type"] == "sampled_softmax":
            error.require_int("num_negatives", 1, " for sampled_softmax")
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

    def _negative_log_probs(self, dataset):
        """Log of the negative-sampling distribution ``q(i) ~ (count_i + 1)^alpha``; padding excluded."""
        counts = torch.bincount(dataset.inter_feat[self.ITEM_ID].long(), minlength=self.n_items).float()
        weights = (counts + 1.0).pow(self.negative_sampling_alpha)
        weights[0] = 0.0
        return torch.log(weights / weights.sum())

    # ------------------------------------------------------------------ representations
    def extract_interests(self, history, seq_mask, item_seq_len):
        """History ``[B, L, D]`` -> capsules ``[B, K, D]`` and interest mask ``[B, K]``."""
        raise NotImplementedError

    def forward(self, item_seq, item_seq_len, user_ids=None):
        """Interests ``[B, K, D]`` and their mask ``[B, K]`` (False for inactive interests)."""
        seq_mask = item_seq > 0  # [B L]
        history = self.history_dropout(self.item_tower(item_seq))  # [B L D]
        capsules, interest_mask = self.extract_interests(history, seq_mask, item_seq_len)  # [B K D]
        if self.user_profile.output_size:
            profile = self.user_profile(user_ids)  # [B P]
            profile = profile.unsqueeze(1).expand(-1, capsules.shape[1], -1)  # [B K P]
            capsules = torch.cat([capsules, profile], dim=-1)
        interests = self.tower(capsules)  # [B K D]
        return interests, interest_mask

    def user_interests(self, interaction):
        user_ids = interaction[self.USER_ID] if self.user_profile.output_size else None
        return self.forward(interaction[self.ITEM_SEQ], interaction[self.ITEM_SEQ_LEN], user_ids)

    def all_item_vectors(self):
        """The item tower over the whole catalogue, ``[n_items, D]`` (row 0 is padding)."""
        return self.item_tower(torch.arange(self.n_items, device=self.negative_log_probs.device))

    def training_user_vector(self, interests, interest_mask, target_vectors):
        """One user vector per target ``[B, D]``; a single-interest model has nothing to choose."""
        return interests[:, 0]

    def training_scores(self, interests, interest_mask, user_vectors, item_vectors):
        """Scores ``[B, N]`` of ``item_vectors [N, D]`` in the loss: each row's user vector ``[B, D]``."""
        return user_vectors @ item_vectors.transpose(0, 1)

    # ------------------------------------------------------------------ training
    def calculate_loss(self, interaction):
        interests, interest_mask = self.user_interests(interaction)
        targets = interaction[self.POS_ITEM_ID]  # [B]
        target_vectors = self.item_tower(targets)  # [B D]
        user_vectors = self.training_user_vector(interests, interest_mask, target_vectors)  # [B D]
        if self.loss_type == "CE":
            logits = self.training_scores(interests, interest_mask, user_vectors, self.all_item_vectors())  # [B N]
            logits[:, 0] = float("-inf")
            return F.cross_entropy(logits, targets)
        return self.sampled_softmax_loss(interests, interest_mask, user_vectors, target_vectors, targets)

    def sampled_softmax_loss(self, interests, interest_mask, user_vectors, target_vectors, targets):
        """Sampled softmax with log-Q correction (Jean et al. 2015; Yi et al. 2019).

        ``num_negatives`` items are drawn with replacement from ``q`` and shared by the batch;
        every logit is corrected by ``-log(num_negatives * q(i))``; a negative equal to the row's
        target (an accidental hit) is masked out.
        """
        negatives = torch.multinomial(self.negative_probs, self.num_negatives, replacement=True)  # [S]
        log_sample_count = math.log(self.num_negatives)  # log-Q of item i: log(S q(i)), only where needed
        positive_logits = (user_vectors * target_vectors).sum(-1) - (
            self.negative_log_probs[targets] + log_sample_count
        )  # [B]
        negative_logits = self.training_scores(interests, interest_mask, user_vectors, self.item_tower(negatives))  # [B S]
        negative_logits = negative_logits - (self.negative_log_probs[negatives] + log_sample_count)
        negative_logits = negative_logits.masked_fill(targets.unsqueeze(1) == negatives, float("-inf"))
        logits = torch.cat([positive_logits.unsqueeze(1), negative_logits], dim=1)  # [B 1+S]
        return F.cross_entropy(logits, torch.zeros_like(targets))

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
        return best_interest(torch.einsum("bkd,bd->bk", interests, item_vectors), interest_mask).values  # [B]

    def full_sort_predict(self, interaction):
        interests, interest_mask = self.user_interests(interaction)
        return max_over_interests(
            interests, interest_mask, self.all_item_vectors(), self._item_chunk_size(interests.shape[0])
        )  # [B n_items]

    def _item_chunk_size(self, batch_size):
        """Items per scoring chunk so that ``B * K * chunk`` stays near ``score_chunk_size``."""
        return max(1, self.score_chunk_size // max(1, batch_size * self.interest_num))
