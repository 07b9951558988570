"""REMI's routing regularisation (RR) against routing collapse.

Xie et al., RecSys 2023, "Rethinking Multi-Interest Learning for Candidate Matching in Recommender
Systems" (arXiv 2302.14532), section "Routing Regularization": an interest whose routing weights
collapse onto a single history item carries that item only. With ``A`` a user's ``K x L`` item-to-interest routing
matrix and ``A_bar`` its row means, REMI penalises the diagonal of ``C = (A - A_bar)(A - A_bar)^T / D``
(each interest's spread of weight over the history, ``D`` the embedding size):
``L_RR = ||diag(C)||^2``, added to the loss with weight ``lambda``
(``calculate_atten_loss`` in github.com/Tokkiu/REMI, src/REMI.py).

REMI's matrix (ComiRec-SA's attention) has rows that sum to 1: each row is the composition of one
interest. MIND's routing weights sum to 1 over the *interests* of each history item instead, so
each row is first divided by its sum, giving the interest's composition (an inactive interest's row
is all zeros and adds nothing). As in REMI the row mean runs over all ``L`` positions, padding
included (the padding weights are 0). REMI sums the penalty over its batch of 128 users; here it is
the mean over users, so its weight does not depend on the batch size (REMI's ``lambda`` is
``128 x lambda`` here).
"""


def routing_regularisation(routing, embedding_size):
    """REMI's RR penalty: mean over users of ``sum_k C_kk^2`` (see the module docstring).

    Args:
        routing (Tensor): each history position's weight in each interest (0 at padding).
        embedding_size (int): ``D``, REMI's normaliser of the covariance.

    Shape:
        - routing ``[B, K, L]``. Output: a scalar.
    """
    composition = routing / routing.sum(-1, keepdim=True).clamp(min=1e-12)  # [B K L]: each row sums to 1 (or is 0)
    centred = composition - composition.mean(-1, keepdim=True)  # [B K L]
    covariance_diagonal = (centred * centred).sum(-1) / embedding_size  # [B K]: C_kk
    return covariance_diagonal.pow(2).sum(-1).mean()
