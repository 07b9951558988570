"""MIND and YouTubeDNN inside RecBole, on the real beauty-mini data."""

import pytest
import torch

from mind_recbole.model.layers import interest_count_mask
from mind_recbole.model.mind import MIND
from mind_recbole.model.youtubednn import YouTubeDNN
from tests.conftest import tiny_config


def build(model_class, beauty_mini_path, beauty_mini_data, **overrides):
    _, _, train_data, _, _ = beauty_mini_data
    config = tiny_config(beauty_mini_path, model=model_class.__name__, **overrides)
    torch.manual_seed(0)
    return model_class(config, train_data._dataset)


def first_batch(beauty_mini_data, loader_index=2):
    """A batch of the training (2) or test (4) loader; test batches come as (interaction, ...)."""
    batch = next(iter(beauty_mini_data[loader_index]))
    return batch[0] if isinstance(batch, tuple) else batch


def test_forward_shapes_and_interest_mask(beauty_mini_path, beauty_mini_data):
    model = build(MIND, beauty_mini_path, beauty_mini_data).eval()
    batch = first_batch(beauty_mini_data)
    interests, mask = model.user_interests(batch)
    batch_size = batch[model.ITEM_SEQ].shape[0]
    assert interests.shape == (batch_size, 4, 16)
    assert mask.shape == (batch_size, 4) and mask.dtype == torch.bool
    lengths = batch[model.ITEM_SEQ_LEN]
    expected = torch.clamp(torch.floor(torch.log2(lengths.float())), 1, 4).long()
    assert torch.equal(mask.sum(1), expected)


def test_item_tower_pools_id_and_side_features(beauty_mini_path, beauty_mini_data):
    model = build(MIND, beauty_mini_path, beauty_mini_data)
    dataset = beauty_mini_data[1]
    items = dataset.get_item_feature()
    with_brand = int(torch.nonzero(items["brand"] > 0)[0])
    without_brand = int(torch.nonzero((items["brand"] == 0) & (torch.arange(len(items["brand"])) > 0))[0])
    tower = model.item_tower
    for item in (with_brand, without_brand):
        parts = [tower.id_embedding.weight[item]]
        brand = items["brand"][item]
        if brand > 0:
            parts.append(tower.side_features.embeddings["brand"].weight[brand])
        categories = items["categories"][item]
        categories = categories[categories > 0]
        parts.append(tower.side_features.embeddings["categories"].weight[categories].mean(0))
        expected = torch.stack(parts).mean(0)
        assert torch.allclose(tower(torch.tensor([item]))[0], expected, atol=1e-6)
    assert torch.equal(tower(torch.tensor([0])), torch.zeros(1, 16))


def test_item_tower_pools_each_distinct_item_once_with_the_same_values_and_gradients(beauty_mini_path, beauty_mini_data):
    tower = build(MIND, beauty_mini_path, beauty_mini_data).item_tower
    histories = first_batch(beauty_mini_data)["item_id_list"]  # [B L]: repeated items and padding
    assert torch.unique(histories).numel() < histories.numel()
    weights = torch.randn(*histories.shape, 16)
    grads = []
    for pool in (tower, tower.pooled):  # distinct items once, then gathered / every position pooled
        tower.zero_grad()
        vectors = pool(histories)  # [B L D]
        (vectors * weights).sum().backward()
        grads.append({name: parameter.grad.clone() for name, parameter in tower.named_parameters()})
        if pool is tower:
            gathered = vectors.detach()
    assert gathered.shape == (*histories.shape, 16)
    assert torch.allclose(gathered, tower.pooled(histories).detach(), atol=1e-6)
    assert torch.equal(gathered[histories == 0], torch.zeros(int((histories == 0).sum()), 16))
    for name in grads[0]:  # sums over the same positions, in another order
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-5), name
    assert grads[0]["side_features.embeddings.categories.weight"].abs().sum() > 0


def test_training_user_tower_runs_only_active_interests_with_the_same_values(beauty_mini_path, beauty_mini_data):
    model = build(MIND, beauty_mini_path, beauty_mini_data).train()
    capsules = torch.randn(6, 4, 16)
    mask = interest_count_mask(torch.tensor([1, 2, 3, 4, 9, 50]), 4)  # 1, 1, 1, 2, 3, 4 active
    torch.manual_seed(3)
    full = model.user_tower(capsules)
    torch.manual_seed(3)
    active = model.user_tower(capsules, None, mask)
    assert torch.allclose(active[mask], full[mask], atol=1e-6)
    assert torch.equal(active[~mask], torch.zeros(int((~mask).sum()), 16))
    assert torch.equal(model.eval().user_tower(capsules, None, mask), model.user_tower(capsules))  # eval: every interest


def test_padding_beyond_length_does_not_change_interests(beauty_mini_path, beauty_mini_data):
    model = build(MIND, beauty_mini_path, beauty_mini_data).eval()
    seq = torch.tensor([[5, 9, 13, 0, 0, 0]])
    length = torch.tensor([3])
    noisy = torch.tensor([[5, 9, 13, 0, 0, 0, 0, 0, 0, 0]])
    a, mask_a = model(seq, length)
    b, mask_b = model(noisy, length)
    assert torch.allclose(a, b, atol=1e-6) and torch.equal(mask_a, mask_b)


def test_inference_is_deterministic_and_survives_reload(beauty_mini_path, beauty_mini_data):
    model = build(MIND, beauty_mini_path, beauty_mini_data).eval()
    batch = first_batch(beauty_mini_data)
    first = model.full_sort_predict(batch)
    assert torch.equal(first, model.full_sort_predict(batch))
    clone = build(MIND, beauty_mini_path, beauty_mini_data, seed=7).eval()
    clone.load_state_dict(model.state_dict())
    assert torch.equal(first, clone.full_sort_predict(batch))


@pytest.mark.parametrize("model_class", [MIND, YouTubeDNN])
def test_full_sort_predict_agrees_with_predict(model_class, beauty_mini_path, beauty_mini_data):
    model = build(model_class, beauty_mini_path, beauty_mini_data, score_chunk_size=1000).eval()
    batch = first_batch(beauty_mini_data)
    full = model.full_sort_predict(batch)
    assert full.shape == (batch[model.ITEM_SEQ].shape[0], model.n_items)
    batch.update(type(batch)({model.ITEM_ID: batch[model.POS_ITEM_ID]}))
    pointwise = model.predict(batch)
    picked = full.gather(1, batch[model.POS_ITEM_ID].unsqueeze(1)).squeeze(1)
    assert torch.allclose(pointwise, picked, atol=1e-5)


@pytest.mark.parametrize(
    "model_class, overrides",
    [
        (MIND, {}),
        (MIND, {"loss_type": "CE"}),
        (MIND, {"attention_pow": float("inf")}),
        (MIND, {"loss_type": "CE", "label_attention": "every_item"}),
        (MIND, {"label_attention": "every_item", "attention_pow": 0.5}),
        (YouTubeDNN, {}),
    ],
)
def test_loss_falls_on_a_tiny_dataset(model_class, overrides, beauty_mini_path, beauty_mini_data):
    model = build(model_class, beauty_mini_path, beauty_mini_data, **overrides).train()
    batches = [b for _, b in zip(range(4), beauty_mini_data[2])]
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(30):
        epoch_loss = 0.0
        for batch in batches:
            optimizer.zero_grad()
            loss = model.calculate_loss(batch)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item()
        losses.append(epoch_loss)
    assert losses[-1] < 0.8 * losses[0], losses


def test_gradients_reach_routing_matrix_embeddings_and_side_features(beauty_mini_path, beauty_mini_data):
    model = build(MIND, beauty_mini_path, beauty_mini_data).train()
    model.calculate_loss(first_batch(beauty_mini_data)).backward()
    assert model.routing.bilinear.grad.abs().sum() > 0
    assert model.item_tower.id_embedding.weight.grad.abs().sum() > 0
    assert model.item_tower.side_features.embeddings["categories"].weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"interest_num": 0}, "interest_num (K) must be >= 1"),
        ({"attention_pow": 0}, "attention_pow (p) must be > 0"),
        ({"attention_pow": -1.5}, "attention_pow (p) must be > 0"),
        ({"loss_type": "BPR"}, "loss_type must be one of"),
        ({"label_attention": "all"}, "label_attention must be one of ('target', 'every_item'), got 'all'"),
        ({"item_side_fields": ["colour"]}, "item_side_fields names 'colour'"),
        ({"user_profile_fields": ["age"]}, "user_profile_fields names 'age'"),
    ],
)
def test_bad_config_is_a_clear_error(overrides, message, beauty_mini_path, beauty_mini_data):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(MIND, beauty_mini_path, beauty_mini_data, **overrides)


def test_negative_sampling_distribution_excludes_padding(beauty_mini_path, beauty_mini_data):
    model = build(MIND, beauty_mini_path, beauty_mini_data)
    probs = model.negative_probs
    assert probs[0] == 0 and torch.isclose(probs.sum(), torch.tensor(1.0))
    counts = torch.bincount(beauty_mini_data[2]._dataset.inter_feat["item_id"], minlength=model.n_items)
    popular, rare = int(counts[1:].argmax()) + 1, int(counts[1:].argmin()) + 1
    assert probs[popular] > probs[rare]
