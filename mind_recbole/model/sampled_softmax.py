"""The sampled softmax of MIND and YouTubeDNN: mixed negatives, log-Q correction, hard negatives.

A training step scores each row's target against ``M`` negatives, never the whole catalogue, so it
costs ``O(B x K x M)`` item scores with ``M = S`` (sampled) or ``M = B + S`` (mixed):

* **sampled negatives**: ``S`` items drawn with replacement from ``q(i) ~ (count_i + 1)^alpha``,
  shared by the batch (Jean et al., ACL 2015, "On Using Very Large Target Vocabulary for Neural
  Machine Translation");
* **in-batch negatives**: the other rows' targets (Yi et al., RecSys 2019, "Sampling-Bias-Corrected
  Neural Modeling for Large Corpus Item Recommendations"); both kinds together are Mixed Negative
  Sampling (Yang et al., WWW 2020 companion, "Mixed Negative Sampling for Learning Two-tower Neural
  Networks in Recommendations");
* **log-Q correction**: every logit, the target's too, is lowered by the log of the item's expected
  number of copies among the candidates, ``log(B p(i) + S q(i))``, where ``p`` is the item's
  frequency as a training target (the chance that a batch row holds it) and ``q`` the sampling
  distribution. With in-batch negatives off this is the usual ``log(S q(i))``. Mixed Negative
  Sampling corrects by the mixture of its two sampling distributions in the same way;
* a candidate equal to the row's own target (the row's own column, a duplicate target elsewhere in
  the batch, an accidental hit among the samples) is never a negative of that row;
* **interest-aware hard negatives** (IHN) of REMI (Xie et al., RecSys 2023, "Rethinking
  Multi-Interest Learning for Candidate Matching in Recommender Systems", arXiv 2302.14532,
  section "Interest-aware Hard Negative Mining"): the negatives' sum in the softmax's denominator
  is taken under the ideal distribution ``~ exp(beta s_j)`` that favours the negatives the user's
  interest scores high, estimated by Monte-Carlo from the drawn negatives: negative ``j`` counts
  ``w_j = exp(beta s_j) / mean_k exp(beta s_k)`` times (the mean over the row's negatives, so the
  weights average to 1). This is
  REMI's estimator (its code, ``NCELoss.sampled_softmax_loss`` of github.com/Tokkiu/REMI), with
  the weights carrying gradients as there. ``s_j`` is the score the loss uses, so with MIND's
  ``label_attention: target`` and hard attention it is the target's interest (REMI's hard
  read-out), with ``every_item`` each negative's own best interest (the served score). REMI draws
  uniformly; with popularity sampling the weights are normalised by the mean over the drawn
  negatives (as REMI's code does for its log-uniform sampler), on top of the log-Q correction.
"""

import torch
from torch.nn import functional as F


def negative_mask(targets, candidates):
    """Which candidates may be negatives of each row: every one but the row's own target item.

    Shape:
        - targets ``[B]``, candidates ``[M]`` (item ids). Output: ``[B, M]`` bool.
    """
    return targets.unsqueeze(1) != candidates.unsqueeze(0)


def log_expected_copies(items, target_probs, batch_rows, sample_probs, sample_count):
    """The log-Q term: log of an item's expected copies among the candidates, ``log(B p(i) + S q(i))``.

    Args:
        items (LongTensor): item ids.
        target_probs (Tensor): ``[n_items]`` ``p``, each item's frequency as a training target.
        batch_rows (int): ``B``, the rows whose targets are candidates (0 without in-batch negatives).
        sample_probs (Tensor): ``[n_items]`` ``q``, the sampling distribution.
        sample_count (int): ``S``, the number of sampled negatives.

    Shape:
        - items ``[*]``. Output: ``[*]``.
    """
    return torch.log(batch_rows * target_probs[items] + sample_count * sample_probs[items])


def hard_negative_log_weights(negative_scores, usable, beta):
    """Log of REMI's IHN weights ``w_j = exp(beta s_j) / mean_k exp(beta s_k)`` over each row's usable negatives.

    ``beta = 0`` gives weight 1 (log 0) to every usable negative. A row without usable negatives
    gets finite values, which the loss never uses.

    Shape:
        - negative_scores ``[B, M]``, usable ``[B, M]`` bool. Output: ``[B, M]`` (-inf where not usable).
    """
    hardness = (beta * negative_scores).masked_fill(~usable, float("-inf"))  # [B M]
    hardness = hardness.masked_fill(~usable.any(1, keepdim=True), 0.0)  # rows with no negative stay finite
    count = usable.sum(1, keepdim=True).clamp(min=1)  # [B 1]
    return torch.log_softmax(hardness, dim=1) + count.log()


def sampled_softmax(positive_scores, negative_scores, positive_log_q, negative_log_q, usable, hard_negative_beta=0.0):
    """Mean cross-entropy of each row's target against its usable negatives, log-Q corrected.

    Args:
        positive_scores (Tensor): the row's target score ``s_+``.
        negative_scores (Tensor): the candidates' scores ``s_j`` for the row.
        positive_log_q (Tensor): the target's log-Q term (:func:`log_expected_copies`).
        negative_log_q (Tensor): the candidates' log-Q terms.
        usable (BoolTensor): :func:`negative_mask`.
        hard_negative_beta (float): REMI's ``beta`` (0: every negative counts once).

    Shape:
        - positive_scores ``[B]``, negative_scores ``[B, M]``, positive_log_q ``[B]``,
          negative_log_q ``[M]``, usable ``[B, M]``. Output: a scalar.
    """
    positive = positive_scores - positive_log_q  # [B]
    negative = negative_scores - negative_log_q  # [B M]
    if hard_negative_beta:
        negative = negative + hard_negative_log_weights(negative_scores, usable, hard_negative_beta)
    negative = negative.masked_fill(~usable, float("-inf"))
    logits = torch.cat([positive.unsqueeze(1), negative], dim=1)  # [B 1+M]: the target first
    return F.cross_entropy(logits, torch.zeros_like(positive, dtype=torch.long))
