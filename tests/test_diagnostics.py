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


def test_diagnostics_of_a_trained_mind_and_youtubednn(beauty_mini_path):
    from recbole.data import create_dataset, data_preparation
    from recbole.utils import init_seed

    from mind_recbole.registry import get_model
    from tests.conftest import tiny_config

    results = {}
    for name in ("MIND", "YouTubeDNN"):
        config = tiny_config(
            beauty_mini_path, model=name,
            load_col={"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "brand", "categories", "category"]},
        )
        init_seed(config["seed"], True)
        dataset = create_dataset(config)
        _, _, test_data = data_preparation(config, dataset)
        model = get_model(name)(config, test_data._dataset)
        categories = item_categories(test_data._dataset)
        assert categories is not None and categories.shape == (dataset.item_num,)
        results[name] = interest_diagnostics(model, test_data, categories, list_size=20)
    mind, youtube = results["MIND"], results["YouTubeDNN"]
    assert 1.0 < mind["interests"] <= 4.0 and youtube["interests"] == 1.0
    assert -1.0 <= mind["interest_cosine"] <= 1.0 and "interest_cosine" not in youtube
    assert youtube["interest_categories"] == 1.0 and 1.0 <= mind["interest_categories"] <= mind["interests"] + 1e-9
    assert 1.0 <= mind["categories@20"] <= 6.0 and mind["history_categories"] == youtube["history_categories"]
