"""ComiRec-SA and ComiRec-DR: the extractors against loop references and hand computations, the
models on beauty-mini, ONNX export parity, and one end-to-end run of each."""

import math
import sys

import numpy as np
import pytest
import torch

from mind_recbole.model.comirecdr import CapsuleInterests, ComiRecDR
from mind_recbole.model.comirecsa import ComiRecSA, SelfAttentiveInterests
from mind_recbole.model.layers import squash
from tests.conftest import AMAZON_CONFIG
from tests.test_models import build, first_batch

COMIREC_MODELS = [ComiRecSA, ComiRecDR]


# ---------------------------------------------------------------------------------------------- references
def reference_self_attention(history, length, w1, b1, w2, b2, positions=None):
    """``A = softmax(W2 tanh(W1 (h_j + p_j) + b1) + b2)`` over the first ``length`` positions, ``V = A H``, in loops."""
    interest_num, seq_len = w2.shape[0], history.shape[0]
    attention = np.zeros((interest_num, seq_len))
    for k in range(interest_num):
        scores = []
        for j in range(length):
            key = history[j] + (positions[j] if positions is not None else 0.0)
            scores.append(w2[k] @ np.tanh(w1 @ key + b1) + b2[k])
        total = sum(math.exp(s) for s in scores)
        for j in range(length):
            attention[k, j] = math.exp(scores[j]) / total
    return attention @ history, attention


def reference_comirec_routing(history, length, maps, iterations):
    """ComiRec's dynamic routing in loops: ``b = 0``, ``c = softmax_k(b)``, ``v_k = squash(sum_j c_kj W_jk e_j)``."""
    _, interest_num, dim, _ = maps.shape
    mapped = [[maps[j, k] @ history[j] for j in range(length)] for k in range(interest_num)]
    logits = np.zeros((interest_num, length))
    for iteration in range(iterations):
        capsules = []
        for k in range(interest_num):
            z = np.zeros(dim)
            for j in range(length):
                z += math.exp(logits[k, j]) / sum(math.exp(logits[kk, j]) for kk in range(interest_num)) * mapped[k][j]
            norm2 = float(z @ z)
            capsules.append(norm2 / (1 + norm2) * z / math.sqrt(norm2))
        if iteration < iterations - 1:
            for k in range(interest_num):
                for j in range(length):
                    logits[k, j] += mapped[k][j] @ capsules[k]
    return np.array(capsules)


def self_attention_layer(dim, interests, hidden, max_len, rng):
    layer = SelfAttentiveInterests(dim, interests, hidden, max_len)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.copy_(torch.as_tensor(rng.normal(size=tuple(parameter.shape)), dtype=torch.float))
    return layer


def padded(history, seq_len, garbage=7.0):
    """``history [1, L, D]`` padded to ``seq_len`` with non-zero vectors that the mask must hide."""
    batch, length, dim = history.shape
    tail = torch.full((batch, seq_len - length, dim), garbage)
    mask = (torch.arange(seq_len) < length).expand(batch, -1)  # [B L]
    return torch.cat([history, tail], dim=1), mask


# ---------------------------------------------------------------------------------------------- ComiRec-SA's extractor
def test_self_attention_hand_computed():
    # W1 = I, W2 = I, no bias: head k scores position j by tanh(h_j[k]). With a = atanh(ln 2),
    # e_1 = (a, 0), e_2 = (0, a): head 0 scores (ln 2, 0) -> weights (2/3, 1/3), head 1 (1/3, 2/3).
    layer = SelfAttentiveInterests(2, 2, 2, max_seq_length=None)
    with torch.no_grad():
        layer.hidden.weight.copy_(torch.eye(2))
        layer.heads.weight.copy_(torch.eye(2))
        layer.hidden.bias.zero_()
        layer.heads.bias.zero_()
    a = math.atanh(math.log(2))
    history, mask = padded(torch.tensor([[[a, 0.0], [0.0, a]]]), 3)  # third position: padding (7, 7)
    interests, attention = layer(history, mask)
    expected_attention = torch.tensor([[[2 / 3, 1 / 3, 0.0], [1 / 3, 2 / 3, 0.0]]])
    assert torch.allclose(attention, expected_attention, atol=1e-6)
    assert torch.allclose(interests, torch.tensor([[[2 * a / 3, a / 3], [a / 3, 2 * a / 3]]]), atol=1e-6)


@pytest.mark.parametrize("with_positions", [True, False])
def test_self_attention_matches_the_loop_reference(with_positions):
    rng = np.random.default_rng(0)
    dim, interests, hidden, max_len, length = 4, 3, 5, 6, 4
    layer = self_attention_layer(dim, interests, hidden, max_len if with_positions else None, rng)
    history = rng.normal(size=(max_len, dim))
    history[length:] = 0.0
    mask = torch.arange(max_len).unsqueeze(0) < length
    out, attention = layer(torch.tensor(history[None], dtype=torch.float), mask)
    positions = layer.position_embedding.weight.detach().numpy() if with_positions else None
    expected, expected_attention = reference_self_attention(
        history, length, layer.hidden.weight.detach().numpy(), layer.hidden.bias.detach().numpy(),
        layer.heads.weight.detach().numpy(), layer.heads.bias.detach().numpy(), positions,
    )
    np.testing.assert_allclose(attention[0].detach().numpy(), expected_attention, atol=1e-5)
    np.testing.assert_allclose(out[0].detach().numpy(), expected, atol=1e-5)


def test_self_attention_rows_sum_to_one_over_valid_positions_and_padding_changes_nothing():
    rng = np.random.default_rng(1)
    layer = self_attention_layer(4, 3, 5, 10, rng)
    history = torch.tensor(rng.normal(size=(1, 4, 4)), dtype=torch.float)
    short, short_mask = padded(history, 4)
    long, long_mask = padded(history, 10)  # six more padded positions, holding non-zero vectors
    a, attention_a = layer(short, short_mask)
    b, attention_b = layer(long, long_mask)
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(attention_b[..., :4], attention_a, atol=1e-6)
    assert torch.equal(attention_b[..., 4:], torch.zeros(1, 3, 6))
    assert torch.allclose(attention_b.sum(-1), torch.ones(1, 3), atol=1e-6)


def test_self_attention_of_an_empty_history_is_zero_not_nan():
    layer = self_attention_layer(4, 3, 5, 6, np.random.default_rng(2))
    interests, attention = layer(torch.zeros(1, 6, 4), torch.zeros(1, 6, dtype=torch.bool))
    assert torch.equal(interests, torch.zeros(1, 3, 4)) and torch.equal(attention, torch.zeros(1, 3, 6))


# ---------------------------------------------------------------------------------------------- ComiRec-DR's extractor
def capsule_layer(maps, iterations=3):
    max_len, interests, dim, _ = maps.shape
    layer = CapsuleInterests(dim, interests, max_len, iterations)
    with torch.no_grad():
        layer.maps.copy_(torch.as_tensor(maps, dtype=torch.float))
    return layer


def test_routing_one_iteration_hand_computed():
    # b = 0: every behaviour splits 1/2 - 1/2 over two interests; W_j0 = I, W_j1 = 2 I,
    # e = (1, 0), (0, 1): z_0 = (1/2, 1/2), |z_0|^2 = 1/2 -> (sqrt(2)/6, sqrt(2)/6);
    # z_1 = (1, 1), |z_1|^2 = 2 -> 2/3 (1, 1) / sqrt(2) = (sqrt(2)/3, sqrt(2)/3).
    maps = np.stack([np.stack([np.eye(2), 2 * np.eye(2)])] * 3)  # [L=3 K=2 D D]
    layer = capsule_layer(maps, iterations=1)
    history, mask = padded(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), 3)
    capsules, routing = layer(history, mask)
    expected = torch.tensor([[[math.sqrt(2) / 6] * 2, [math.sqrt(2) / 3] * 2]])
    assert torch.allclose(capsules, expected, atol=1e-6)
    assert torch.allclose(routing, torch.tensor([[[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]]]))


def test_routing_matches_the_loop_reference_with_three_iterations():
    rng = np.random.default_rng(3)
    maps = rng.normal(size=(6, 3, 4, 4)) / 2  # [L K D D]
    history = rng.normal(size=(4, 4))
    capsules, _ = capsule_layer(maps)(*padded(torch.tensor(history[None], dtype=torch.float), 6))
    expected = reference_comirec_routing(history, 4, maps, 3)
    np.testing.assert_allclose(capsules[0].detach().numpy(), expected, atol=1e-5)


def test_routing_is_a_softmax_over_interests_and_padding_changes_nothing():
    rng = np.random.default_rng(4)
    layer = capsule_layer(rng.normal(size=(10, 3, 4, 4)) / 2)
    history = torch.tensor(rng.normal(size=(1, 4, 4)), dtype=torch.float)
    a, routing_a = layer(*padded(history, 4))
    b, routing_b = layer(*padded(history, 10))
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(routing_b[..., :4], routing_a, atol=1e-6)
    assert torch.allclose(routing_b.sum(1), torch.tensor([[1.0] * 4 + [0.0] * 6]), atol=1e-6)
    assert not torch.allclose(routing_a, torch.full_like(routing_a, 1 / 3))  # routed, not uniform


def test_routing_is_the_same_in_training_and_eval_mode():
    layer = capsule_layer(np.random.default_rng(5).normal(size=(5, 3, 4, 4)))
    inputs = padded(torch.tensor(np.random.default_rng(6).normal(size=(1, 3, 4)), dtype=torch.float), 5)
    trained = layer.train()(*inputs)
    evaluated = layer.eval()(*inputs)
    assert all(torch.equal(x, y) for x, y in zip(trained, evaluated))


def test_routing_logit_updates_carry_no_gradient():
    """The gradient is that of the last iteration with its routing weights held constant."""
    rng = np.random.default_rng(7)
    layer = capsule_layer(rng.normal(size=(4, 3, 4, 4)) / 2)
    history = torch.tensor(rng.normal(size=(2, 4, 4)), dtype=torch.float, requires_grad=True)
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    capsules, routing = layer(history, mask)
    weight = torch.randn(capsules.shape, generator=torch.Generator().manual_seed(0))
    grad_maps, grad_history = torch.autograd.grad((capsules * weight).sum(), [layer.maps, history])

    mapped = torch.einsum("lkde,ble->bkld", layer.maps, history)  # [B K L D]
    rebuilt = squash(torch.einsum("bkl,bkld->bkd", routing.detach(), mapped))  # [B K D]
    assert torch.allclose(rebuilt, capsules, atol=1e-5)
    expected_maps, expected_history = torch.autograd.grad((rebuilt * weight).sum(), [layer.maps, history])
    assert torch.allclose(grad_maps, expected_maps, atol=1e-5)
    assert torch.allclose(grad_history, expected_history, atol=1e-5)


# ---------------------------------------------------------------------------------------------- shared readout
def test_training_reads_out_the_interest_closest_to_the_target(beauty_mini_path, beauty_mini_data):
    model = build(ComiRecDR, beauty_mini_path, beauty_mini_data)
    interests = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]], [[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]]], requires_grad=True)
    targets = torch.tensor([[0.0, 1.0], [-1.0, 0.5]])  # scores (0, 2, 0) and (-1, 1, 3)
    mask = torch.ones(2, 3, dtype=torch.bool)
    vectors = model.training_user_vector(interests, mask, targets)
    assert torch.equal(vectors, torch.tensor([[0.0, 2.0], [-3.0, 0.0]]))
    vectors.sum().backward()  # only the chosen interest gets a gradient
    assert torch.equal(interests.grad.abs().sum(-1), torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, 2.0]]))


# ---------------------------------------------------------------------------------------------- the models on beauty-mini
@pytest.mark.parametrize("model_class", COMIREC_MODELS)
def test_extract_interests_returns_k_active_interests_and_the_routing(model_class, beauty_mini_path, beauty_mini_data):
    model = build(model_class, beauty_mini_path, beauty_mini_data).eval()
    batch = first_batch(beauty_mini_data)
    item_seq, lengths = batch[model.ITEM_SEQ], batch[model.ITEM_SEQ_LEN]
    seq_mask = item_seq > 0
    capsules, interest_mask, routing = model.extract_interests(model.item_tower(item_seq), seq_mask, lengths)
    batch_size, seq_len = item_seq.shape
    assert capsules.shape == (batch_size, 4, 16) and torch.isfinite(capsules).all()
    assert interest_mask.dtype == torch.bool and interest_mask.shape == (batch_size, 4) and interest_mask.all()
    assert routing.shape == (batch_size, 4, seq_len)
    assert torch.equal(routing * ~seq_mask.unsqueeze(1), torch.zeros_like(routing))
    sum_dim = -1 if model_class is ComiRecSA else 1  # SA: over positions; DR: over interests
    expected = torch.ones(batch_size, 4) if model_class is ComiRecSA else seq_mask.float()
    assert torch.allclose(routing.sum(sum_dim), expected, atol=1e-5)


@pytest.mark.parametrize("model_class", COMIREC_MODELS)
def test_inference_is_deterministic_and_survives_reload(model_class, beauty_mini_path, beauty_mini_data):
    model = build(model_class, beauty_mini_path, beauty_mini_data).eval()
    batch = first_batch(beauty_mini_data, loader_index=4)
    first = model.full_sort_predict(batch)
    assert torch.isfinite(first[:, 1:]).all()
    assert torch.equal(first, model.full_sort_predict(batch))
    clone = build(model_class, beauty_mini_path, beauty_mini_data, seed=7).eval()
    clone.load_state_dict(model.state_dict())
    assert torch.equal(first, clone.full_sort_predict(batch))


@pytest.mark.parametrize("model_class", COMIREC_MODELS)
def test_gradients_reach_the_extractor_and_the_item_tower(model_class, beauty_mini_path, beauty_mini_data):
    model = build(model_class, beauty_mini_path, beauty_mini_data).train()
    model.calculate_loss(first_batch(beauty_mini_data)).backward()
    for name, parameter in model.interest_extractor.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    assert model.item_tower.side_features.embeddings["categories"].weight.grad.abs().sum() > 0


def test_routing_regularisation_acts_on_the_self_attention(beauty_mini_path, beauty_mini_data):
    from mind_recbole.model.routing_regularisation import routing_regularisation

    plain = build(ComiRecSA, beauty_mini_path, beauty_mini_data, loss_type="CE").eval()  # eval: no dropout
    regularised = build(ComiRecSA, beauty_mini_path, beauty_mini_data, loss_type="CE", routing_regularisation=0.5).eval()
    regularised.load_state_dict(plain.state_dict())
    batch = first_batch(beauty_mini_data)
    item_seq = batch[plain.ITEM_SEQ]
    _, _, attention = plain.extract_interests(plain.item_tower(item_seq), item_seq > 0, batch[plain.ITEM_SEQ_LEN])
    penalty = routing_regularisation(attention, plain.embedding_size)
    assert penalty > 0
    difference = regularised.calculate_loss(batch) - plain.calculate_loss(batch)
    assert torch.isclose(difference, 0.5 * penalty, rtol=1e-4, atol=1e-7)


def test_history_length_cap_follows_position_embeddings(beauty_mini_path, beauty_mini_data):
    assert build(ComiRecDR, beauty_mini_path, beauty_mini_data).max_history_length == 20
    assert build(ComiRecSA, beauty_mini_path, beauty_mini_data).max_history_length == 20
    model = build(ComiRecSA, beauty_mini_path, beauty_mini_data, position_embedding=False)
    assert model.max_history_length is None and model.interest_extractor.position_embedding is None


@pytest.mark.parametrize(
    "model_class, overrides, message",
    [
        (ComiRecSA, {"interest_num": 0}, "interest_num must be an integer >= 1 (K, the number of interests), got 0"),
        (ComiRecDR, {"interest_num": 2.5}, "interest_num must be an integer >= 1"),
        (ComiRecSA, {"attention_hidden_size": 0}, "attention_hidden_size must be an integer >= 1 (d_a"),
        (ComiRecSA, {"position_embedding": "yes"}, "position_embedding must be True or False, got 'yes'"),
        (ComiRecDR, {"routing_iterations": 0}, "routing_iterations must be an integer >= 1, got 0"),
        (ComiRecDR, {"routing_regularisation": 0.1}, "ComiRecDR's routing logits carry none"),
    ],
)
def test_bad_config_is_a_clear_error(model_class, overrides, message, beauty_mini_path, beauty_mini_data):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build(model_class, beauty_mini_path, beauty_mini_data, **overrides)


# ---------------------------------------------------------------------------------------------- serving and end to end
@pytest.mark.parametrize("model_class", COMIREC_MODELS)
def test_export_passes_parity(model_class, beauty_mini_path, beauty_mini_data, tmp_path):
    from export import artifacts
    from export.onnx_export import export_model
    from export.runtime import UserTower

    model = build(model_class, beauty_mini_path, beauty_mini_data)
    result = export_model(model, beauty_mini_data[1], tmp_path / "model")
    assert result.metadata[artifacts.META_EXPORTER] == "dynamo"
    assert result.parity.passed and result.parity.max_abs_diff[artifacts.OUTPUT_INTERESTS] <= 1e-5
    assert result.parity.max_abs_diff[artifacts.OUTPUT_MASK] == 0.0
    assert {(c.batch, c.seq_len) for c in result.parity.cases} >= {(1, 1), (17, 20)}
    metadata = result.metadata
    assert metadata[artifacts.META_MODEL] == model_class.__name__ and metadata[artifacts.META_INTEREST_NUM] == "4"
    assert metadata[artifacts.META_MAX_GRAPH_SEQ_LENGTH] == "20" and metadata[artifacts.META_ATTENTION_POW] == "inf"
    expected_iterations = "3" if model_class is ComiRecDR else artifacts.NOT_APPLICABLE
    assert metadata[artifacts.META_ROUTING_ITERATIONS] == expected_iterations

    # served by the runtime: a history longer than the graph takes keeps its 20 most recent items
    tower = UserTower(tmp_path / "model", provider="cpu")
    history = list(range(1, 31))
    interests, mask = tower.encode_ids([history[:5], history])
    with torch.no_grad():
        short, _ = model(torch.tensor([history[:5]]), torch.tensor([5]))
        recent, _ = model(torch.tensor([history[-20:]]), torch.tensor([20]))
    assert mask.all() and np.abs(interests - torch.cat([short, recent]).numpy()).max() <= 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("model_name", ["ComiRecSA", "ComiRecDR"])
def test_run_recbole_trains_and_evaluates(model_name, beauty_mini_path, tmp_path, monkeypatch):
    from mind_recbole import run_recbole

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [sys.argv[0]])
    result = run_recbole(
        model=model_name,
        dataset="amazon-beauty-mini",
        config_file_list=[str(AMAZON_CONFIG)],
        config_dict={
            "data_path": str(beauty_mini_path), "epochs": 2, "MAX_ITEM_LIST_LENGTH": 20, "embedding_size": 16,
            "tower_hidden_sizes": [32], "num_negatives": 64, "train_batch_size": 256, "torch_threads": 1,
            "state": "WARNING", "show_progress": False,
        },
    )
    assert len(result["train_epoch_seconds"]) == 2
    metrics = {**result["best_valid_result"], **result["test_result"]}
    assert {"recall@50", "ndcg@10"} <= set(result["test_result"])
    assert all(math.isfinite(value) and 0.0 <= value <= 1.0 for value in metrics.values()), metrics
