"""Interest diagnostics: collapse (cosine) and category coverage, by hand and on a trained MIND."""

import numpy as np
import pytest
import torch

from mind_recbole.evaluation.diagnostics import (
    distinct_counts,
    dominant_categories,
    interest_diagnostics,
    item_categories,
    mean_pairwise_cosine,
)


def test_mean_pairwise_cosine_uses_active_interests_only():
    interests = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]],  # pairs: 0, 1/sqrt2, 1/sqrt2
            [[1.0, 0.0], [3.0, 0.0], [-1.0, 0.0]],  # third inactive: cosine 1
            [[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]],  # one active: no pair
        ]
    )
    mask = torch.tensor([[True, True, True], [True, True, False], [True, False, False]])
    cosine = mean_pairwise_cosine(interests, mask)
    assert cosine.tolist() == pytest.approx([(2 / 2**0.5) / 3, 1.0])


def test_distinct_counts_ignore_items_without_a_category():
    categories = np.array([0, 1, 1, 2, 0, 3])
    assert distinct_counts(np.array([[1, 2, 3], [4, 0, 1], [5, 3, 2]]), categories).tolist() == [2, 1, 3]


def test_dominant_categories_over_active_interests():
    categories = np.array([0, 1, 1, 2, 2, 3])
    per_interest_top = np.array([[[1, 2, 3], [3, 4, 5], [5, 5, 1]]])  # dominants 1, 2, 3
    assert dominant_categories(per_interest_top, np.array([[True, True, True]]), categories).tolist() == [3]
    assert dominant_categories(per_interest_top, np.array([[True, True, False]]), categories).tolist() == [2]
    same = np.array([[[1, 2, 3], [2, 1, 5], [1, 1, 1]]])
    assert dominant_categories(same, np.array([[True, True, True]]), categories).tolist() == [1]


def _trained(name, data_path, epochs=2):
    """``(model, test_data)``: ``name`` trained ``epochs`` epochs on beauty-mini with RecBole's Trainer."""
    import sys

    from recbole.data import create_dataset, data_preparation
    from recbole.trainer import Trainer
    from recbole.utils import init_seed

    from mind_recbole.registry import get_model
    from tests.conftest import tiny_config

    config = tiny_config(
        data_path, model=name, epochs=epochs,
        load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "brand", "categories", "category"]},
    )
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    train_data, valid_data, test_data = data_preparation(config, dataset)
    model = get_model(name)(config, train_data._dataset)
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        Trainer(config, model).fit(train_data, saved=False, show_progress=False)
    finally:
        sys.argv = argv
    return model, test_data


def _by_hand(model, test_data, categories, list_size):
    """The same measures computed one user at a time from the model's public outputs."""
    cosines, covered, interests_count, history_covered = [], [], [], []
    model.eval()
    with torch.no_grad():
        for interaction, _, _, _ in test_data:
            scores = model.full_sort_predict(interaction).view(len(interaction), -1)
            scores[:, 0] = -np.inf
            interests, mask = model.user_interests(interaction)
            for user in range(len(interaction)):
                top = scores[user].topk(list_size).indices.numpy()
                covered.append(len({c for c in categories[top].tolist() if c > 0}))
                history = interaction[model.ITEM_SEQ][user].numpy()
                history_covered.append(len({c for c in categories[history].tolist() if c > 0}))
                active = interests[user][mask[user]]
                interests_count.append(len(active))
                pairs = [torch.nn.functional.cosine_similarity(active[i], active[j], dim=0).item()
                         for i in range(len(active)) for j in range(len(active)) if i != j]
                if pairs:
                    cosines.append(sum(pairs) / len(pairs))
    return {"interest_cosine": np.mean(cosines) if cosines else None, f"categories@{list_size}": np.mean(covered),
            "interests": np.mean(interests_count), "history_categories": np.mean(history_covered)}


@pytest.mark.slow
def test_diagnostics_of_a_trained_mind_and_youtubednn_match_a_per_user_computation(beauty_mini_path):
    results = {}
    for name in ("MIND", "YouTubeDNN"):
        model, test_data = _trained(name, beauty_mini_path)
        categories = item_categories(test_data._dataset)
        assert categories is not None and categories.shape == (test_data._dataset.item_num,)
        results[name] = interest_diagnostics(model, test_data, categories, list_size=20)
        expected = _by_hand(model, test_data, categories, list_size=20)
        measured = results[name]
        assert measured["interests"] == pytest.approx(expected["interests"])
        assert measured["history_categories"] == pytest.approx(expected["history_categories"])
        # scores summed in another order may swap near-ties at the 20th place for a user or two
        assert measured["categories@20"] == pytest.approx(expected["categories@20"], abs=0.02)
        if expected["interest_cosine"] is not None:
            assert measured["interest_cosine"] == pytest.approx(expected["interest_cosine"], abs=1e-5)
    mind, youtube = results["MIND"], results["YouTubeDNN"]
    assert 1.0 < mind["interests"] <= 4.0 and youtube["interests"] == 1.0
    assert "interest_cosine" not in youtube and mind["interest_cosine"] < 0.999  # trained interests differ
    assert youtube["interest_categories"] == 1.0 and 1.0 <= mind["interest_categories"] <= mind["interests"] + 1e-9
    assert mind["union_categories@10"] >= mind["interest_categories"]  # each dominant category is in the union
    assert mind["history_categories"] == youtube["history_categories"]
