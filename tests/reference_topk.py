"""The brute-force reference for exact max-over-interests top-k, shared by the scoring tests.

It scores the whole catalogue in float64, masks inactive interests, padding and exclusions, and
sorts each row by score descending then item id ascending (what ``export.retrieval.TopK`` promises).
"""

import numpy as np


def reference_topk(interests, mask, items, topk, exclude=None, exclude_padding=True):
    """``(ids, scores, interests)``, each ``[B, min(topk, N)]``, from the full ``[B, K, N]`` score tensor.

    ``interests`` is the winning interest (the first of tied ones); slots left without an eligible
    item hold id ``-1``, score ``-inf`` and interest ``-1``.
    """
    scores = np.einsum("bkd,nd->bkn", interests.astype(np.float64), items.astype(np.float64))  # [B K N]
    scores[~mask] = -np.inf
    best, winner = scores.max(axis=1), scores.argmax(axis=1)  # [B N]; argmax: the first of tied interests
    if exclude_padding:
        best[:, 0] = -np.inf
    for row, ids in enumerate(exclude or []):
        best[row, np.asarray(ids, dtype=np.int64)] = -np.inf
    topk = min(topk, items.shape[0])
    order = np.lexsort((np.broadcast_to(np.arange(items.shape[0]), best.shape), -best), axis=1)[:, :topk]
    ids, top, won = order, np.take_along_axis(best, order, 1), np.take_along_axis(winner, order, 1)
    empty = np.isneginf(top)
    ids[empty], won[empty] = -1, -1
    return ids, top, won
