"""Multi-interest diagnostics: do a user's interests differ, and do they reach different categories?

For every test user of RecBole's leave-one-out split:

* ``interests``: active interests K'_u (1 for single-vector models);
* ``interest_cosine``: mean pairwise cosine of the active interest vectors, over users with two or
  more (1.0 would be total collapse: K copies of one vector);
* ``interest_categories``: distinct categories among the interests' dominant categories (the most
  frequent category of each interest's own top-``per_interest_topn``);
* ``union_categories@N``: distinct categories covered by the union of the per-interest top-N lists
  (a single-vector model has one list);
* ``categories@M``: distinct categories in the model's final top-M list (any model: the size-matched
  comparison);
* ``history_categories``: distinct categories in the user's history, for reference.

Categories are a token field of the ``.item`` file (``category``, the top-level category, for data
from ``mind-recbole prepare amazon``). Items without one are not counted.
"""

import math

import numpy as np
import torch

from mind_recbole.model.layers import interest_max

CATEGORY_FIELD = "category"


def item_categories(dataset, field=CATEGORY_FIELD):
    """``[n_items]`` category id per item (0: none), or None when the dataset has no such field."""
    if dataset.item_feat is None or field not in dataset.item_feat:
        return None
    return dataset.item_feat[field].numpy().astype(np.int64)


def distinct_counts(item_ids, categories):
    """Distinct non-zero categories per row of ``item_ids`` ``[U, N]`` -> ``[U]``."""
    labels = categories[item_ids]  # [U N]
    labels = np.sort(labels, axis=1)
    new = np.ones_like(labels, dtype=bool)
    new[:, 1:] = labels[:, 1:] != labels[:, :-1]
    return (new & (labels > 0)).sum(axis=1)


def mean_pairwise_cosine(interests, interest_mask):
    """Mean cosine between distinct active interests, per user with >= 2 of them.

    Shape: interests ``[B, K, D]``, interest_mask ``[B, K]`` -> ``[B']`` (users with >= 2 active).
    """
    unit = torch.nn.functional.normalize(interests, dim=-1)
    cosine = unit @ unit.transpose(1, 2)  # [B K K]
    pair = interest_mask.unsqueeze(2) & interest_mask.unsqueeze(1)
    pair &= ~torch.eye(interests.shape[1], dtype=torch.bool, device=interests.device)
    pairs = pair.sum(dim=(1, 2))
    keep = pairs > 0
    return (cosine * pair).sum(dim=(1, 2))[keep] / pairs[keep]


def dominant_categories(per_interest_top, interest_mask, categories):
    """Distinct dominant categories over each user's active interests.

    Shape: per_interest_top ``[B, K, N]`` item ids, interest_mask ``[B, K]`` -> ``[B]``.
    """
    labels = categories[per_interest_top]  # [B K N]
    users, interests, _ = labels.shape
    counts = np.zeros((users, interests, int(categories.max()) + 1), dtype=np.int64)  # [B K C]
    np.add.at(counts, (np.arange(users)[:, None, None], np.arange(interests)[None, :, None], labels), 1)
    counts[:, :, 0] = 0
    dominant = np.where(counts.max(axis=2) > 0, counts.argmax(axis=2), 0)  # [B K]
    dominant = np.where(interest_mask, dominant, 0)
    return distinct_counts(dominant, categories=np.arange(counts.shape[2]))


@torch.no_grad()
def interest_diagnostics(model, test_data, categories, per_interest_topn=10, list_size=50, user_batch=256):
    """Averages of the module docstring's measures over the users of ``test_data`` (full ranking)."""
    model.eval()
    has_interests = hasattr(model, "user_interests")
    totals, counts = {}, {}

    def add(name, values):
        values = np.asarray(values, dtype=np.float64)
        totals[name] = totals.get(name, 0.0) + float(values.sum())
        counts[name] = counts.get(name, 0) + values.size

    item_vectors = model.all_item_vectors() if has_interests else None
    for interaction, history_index, _, _ in test_data:
        interaction = interaction.to(model.device)
        for start in range(0, len(interaction), user_batch):
            part = interaction[start : start + user_batch]
            users = len(part)
            rows, columns = _history_positions(history_index, start, users, model.device)
            if has_interests:  # one forward pass gives the per-interest and the final (max over K) lists
                interests, mask = model.user_interests(part)  # [B K D], [B K]
                per_interest = torch.einsum("bkd,nd->bkn", interests, item_vectors)  # [B K N]
                per_interest[:, :, 0] = -math.inf
                per_interest[rows, :, columns] = -math.inf
                scores = interest_max(per_interest, mask)  # [B N]
            else:
                scores = model.full_sort_predict(part).view(users, -1).float()
                scores[:, 0] = -math.inf
                scores[rows, columns] = -math.inf
            top = scores.topk(list_size, dim=1).indices.cpu().numpy()
            if categories is not None:
                add(f"categories@{list_size}", distinct_counts(top, categories))
                if hasattr(model, "ITEM_SEQ"):
                    history = part[model.ITEM_SEQ].cpu().numpy()
                    add("history_categories", distinct_counts(history, categories))
            if not has_interests:
                continue
            add("interests", mask.sum(dim=1).cpu().numpy())
            add("interest_cosine", mean_pairwise_cosine(interests, mask).cpu().numpy())
            if categories is None:
                continue
            per_interest_top = per_interest.topk(per_interest_topn, dim=2).indices.cpu().numpy()
            mask_np = mask.cpu().numpy()
            union = np.where(mask_np[:, :, None], per_interest_top, 0).reshape(users, -1)
            add(f"union_categories@{per_interest_topn}", distinct_counts(union, categories))
            add("interest_categories", dominant_categories(per_interest_top, mask_np, categories))
    return {name: totals[name] / counts[name] for name in totals if counts[name]}


def _history_positions(history_index, start, users, device):
    """(row, item) pairs RecBole excludes from this slice's ranking, as its full-sort evaluation does.

    RecBole gives them for general models (Pop: the user's training items) and none for sequential
    models (their lists may repeat history items), so the lists measured are the lists evaluated.
    """
    if history_index is None:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    rows, columns = (index.to(device) for index in history_index)
    keep = (rows >= start) & (rows < start + users)
    return rows[keep] - start, columns[keep]
