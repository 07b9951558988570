r"""YouTubeDNN
################################################

Reference:
    Paul Covington, Jay Adams, Emre Sargin. "Deep Neural Networks for YouTube Recommendations."
    In RecSys 2016.

The candidate-generation network: the user's watched items are average-pooled, concatenated with
the user profile and passed through a ReLU tower into one user vector (MIND with ``K = 1`` in
spirit). It shares MIND's item tower, tower, losses and scoring, so the comparison isolates the
multi-interest extractor.
"""

import torch

from mind_recbole.model.base import InterestRecommender


class YouTubeDNN(InterestRecommender):
    """YouTube DNN candidate generation (see the module docstring)."""

    def extract_interests(self, history, seq_mask, item_seq_len):
        weights = seq_mask.unsqueeze(-1).to(history.dtype)  # [B L 1]
        pooled = (history * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # [B D]
        interest_mask = torch.ones_like(item_seq_len, dtype=torch.bool).unsqueeze(1)  # [B 1]
        return pooled.unsqueeze(1), interest_mask, None  # no routing
