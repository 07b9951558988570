"""Mixed negatives, their log-Q terms and REMI's hard-negative weights, against hand computations
(mind_recbole/model/sampled_softmax.py), and the option checks of the losses."""

import math

import pytest
import torch

from mind_recbole.model.mind import MIND
from mind_recbole.model.sampled_softmax import (
    hard_negative_log_weights,
    log_expected_copies,
    negative_mask,
    sampled_softmax,
)
from mind_recbole.model.youtubednn import YouTubeDNN
from tests.conftest import tiny_config
from tests.test_models import build


def test_in_batch_negatives_exclude_each_rows_own_target_and_its_duplicates():
    targets = torch.tensor([5, 7, 5])  # rows 0 and 2 share a target
    candidates = torch.cat([targets, torch.tensor([7, 9])])  # in-batch columns, then two samples
    expected = torch.tensor(
        [
            [False, True, False, True, True],  # 5: not its own column, not row 2's 5
            [True, False, True, False, True],  # 7: not its own column, not the sampled 7 (an accidental hit)
            [False, True, False, True, True],
        ]
    )
    assert torch.equal(negative_mask(targets, candidates), expected)


def test_log_q_of_a_candidate_is_its_expected_copies_among_the_candidates():
    target_probs = torch.tensor([0.0, 0.5, 0.3, 0.2, 0.0])  # p(i): frequency as a training target
    sample_probs = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4])  # q(i)
    items = torch.tensor([1, 3, 4])
    mixed = log_expected_copies(items, target_probs, 8, sample_probs, 10)  # B = 8 rows, S = 10 samples
    assert torch.allclose(mixed, torch.log(torch.tensor([8 * 0.5 + 10 * 0.1, 8 * 0.2 + 10 * 0.3, 10 * 0.4])))
    sampled_only = log_expected_copies(items, target_probs, 0, sample_probs, 10)  # in-batch off: log(S q)
    assert torch.allclose(sampled_only, torch.log(torch.tensor([1.0, 3.0, 4.0])))


def test_hard_negative_weights_on_a_2x3_example():
    scores = torch.tensor([[0.0, math.log(2.0), math.log(3.0)], [1.0, 2.0, 3.0]])
    usable = torch.tensor([[True, True, True], [True, False, True]])
    weights = hard_negative_log_weights(scores, usable, beta=1.0).exp()
    # row 0: exp(s) = 1, 2, 3 with mean 2 -> 0.5, 1, 1.5
    assert torch.allclose(weights[0], torch.tensor([0.5, 1.0, 1.5]))
    # row 1, beta 2: exp(2), exp(6) over the two usable negatives, each divided by their mean
    weights = hard_negative_log_weights(scores, usable, beta=2.0).exp()
    mean = (math.exp(2.0) + math.exp(6.0)) / 2
    assert torch.allclose(weights[1], torch.tensor([math.exp(2.0) / mean, 0.0, math.exp(6.0) / mean]))
    assert weights[1].sum().item() == pytest.approx(2.0)  # the weights average to 1 over the usable ones
    assert torch.equal(hard_negative_log_weights(scores, usable, beta=0.0).exp()[0], torch.ones(3))


def hand_loss(positive, negatives, weights=None):
    """-log(e^p / (e^p + sum_j w_j e^n_j)) in plain floats."""
    weights = weights or [1.0] * len(negatives)
    denominator = math.exp(positive) + sum(w * math.exp(n) for w, n in zip(weights, negatives))
    return -(positive - math.log(denominator))


def test_sampled_softmax_matches_a_hand_computation_with_masks_log_q_and_hard_negatives():
    positive = torch.tensor([1.0, 0.5])
    negative = torch.tensor([[0.2, 0.9, -0.4], [0.3, 0.5, 1.2]])
    positive_log_q = torch.tensor([0.1, -0.2])
    negative_log_q = torch.tensor([0.3, -0.1, 0.0])
    usable = torch.tensor([[True, False, True], [True, True, True]])
    beta = 0.5
    loss = sampled_softmax(positive, negative, positive_log_q, negative_log_q, usable, beta)
    expected = []
    for row in range(2):
        scores = [negative[row, j].item() for j in range(3) if usable[row, j]]
        log_q = [negative_log_q[j].item() for j in range(3) if usable[row, j]]
        mean = sum(math.exp(beta * s) for s in scores) / len(scores)
        weights = [math.exp(beta * s) / mean for s in scores]
        expected.append(hand_loss(positive[row].item() - positive_log_q[row].item(),
                                  [s - q for s, q in zip(scores, log_q)], weights))
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-6)


def test_a_row_without_negatives_has_zero_loss_and_finite_gradients():
    positive = torch.tensor([0.3, 0.7], requires_grad=True)
    negative = torch.tensor([[0.1, 0.2], [0.4, -0.3]], requires_grad=True)
    usable = torch.tensor([[False, False], [True, False]])  # row 0: every candidate is its own target
    loss = sampled_softmax(positive, negative, torch.zeros(2), torch.zeros(2), usable, hard_negative_beta=1.0)
    loss.backward()
    assert loss.item() == pytest.approx(hand_loss(0.7, [0.4]) / 2, rel=1e-6)  # row 0 adds 0
    assert torch.isfinite(positive.grad).all() and torch.isfinite(negative.grad).all()
    assert negative.grad[0].abs().sum() == 0 and negative.grad[1, 1] == 0  # masked candidates get nothing


# ---------------------------------------------------------------------------------------------- the models
@pytest.mark.parametrize(
    "model_class, overrides",
    [
        (YouTubeDNN, {"in_batch_negatives": True, "hard_negative_beta": 1.0}),
        (MIND, {"in_batch_negatives": True, "label_attention": "every_item", "attention_pow": ".inf"}),
        (MIND, {"in_batch_negatives": True, "num_negatives": 1, "hard_negative_beta": 2.0, "label_attention": "target"}),
        (MIND, {"in_batch_negatives": True, "hard_negative_beta": 1.0, "routing_regularisation": 1000.0,
                "routing_detach_logits": False, "label_attention": "every_item", "attention_pow": ".inf"}),
    ],
)
def test_every_option_gives_a_finite_loss_and_gradients(model_class, overrides, beauty_mini_path, beauty_mini_data):
    model = build(model_class, beauty_mini_path, beauty_mini_data, **overrides).train()
    loss = model.calculate_loss(next(iter(beauty_mini_data[2])))
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_an_inactive_interest_never_wins_a_candidates_max(beauty_mini_path, beauty_mini_data, monkeypatch):
    model = build(MIND, beauty_mini_path, beauty_mini_data, in_batch_negatives=True, num_negatives=2,
                  label_attention="every_item", attention_pow=".inf")
    sampled = [40, 17]
    monkeypatch.setattr(torch, "multinomial", lambda probs, n, replacement: torch.tensor(sampled))
    torch.manual_seed(1)
    targets = torch.tensor([5, 9])
    active = torch.randn(2, 1, model.embedding_size)
    interests = torch.cat([active, torch.randn(2, 1, model.embedding_size)], dim=1)  # [2 2 D]
    interest_mask = torch.tensor([[True, False], [True, True]])
    with torch.no_grad():
        candidate_vectors = model.item_tower(torch.tensor([5, 9, *sampled]))  # [4 D]
        interests[0, 1] = 100.0 * candidate_vectors.sum(0)  # row 0's inactive interest would win every max
        target_vectors = model.item_tower(targets)
        user_vectors = model.training_user_vector(interests, interest_mask, target_vectors)
        loss = model.sampled_softmax_loss(interests, interest_mask, user_vectors, target_vectors, targets)
        scores = torch.stack([interests[0, 0] @ candidate_vectors.T, (interests[1] @ candidate_vectors.T).amax(0)])
    candidates = [5, 9, *sampled]
    expected = []
    for row, target in enumerate(targets.tolist()):
        log_q = [math.log(2 * model.target_probs[c].item() + 2 * model.negative_probs[c].item()) for c in candidates]
        positive = scores[row, row].item() - log_q[row]
        negatives = [scores[row, j].item() - log_q[j] for j, c in enumerate(candidates) if c != target]
        expected.append(hand_loss(positive, negatives))
    assert loss.item() == pytest.approx(sum(expected) / 2, rel=1e-5)


# ---------------------------------------------------------------------------------------------- config checks
@pytest.mark.parametrize(
    "model_class, overrides, key, message",
    [
        (MIND, {"loss_type": "CE", "in_batch_negatives": True}, "in_batch_negatives",
         "in_batch_negatives (True) is an option of loss_type: sampled_softmax"),
        (YouTubeDNN, {"loss_type": "CE", "hard_negative_beta": 1.0}, "hard_negative_beta",
         "hard_negative_beta (1.0) is an option of loss_type: sampled_softmax"),
        (MIND, {"in_batch_negatives": "yes"}, "in_batch_negatives", "in_batch_negatives must be True or False, got 'yes'"),
        (MIND, {"hard_negative_beta": -1.0}, "hard_negative_beta", "hard_negative_beta must be a number >= 0, got -1.0"),
    ],
)
def test_options_that_cannot_apply_are_config_errors_naming_the_key(model_class, overrides, key, message,
                                                                     beauty_mini_path):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")) as error:
        tiny_config(beauty_mini_path, model=model_class.__name__, **overrides)
    assert "set in config_dict" in str(error.value) and key in str(error.value)


def test_full_softmax_leaves_the_sampled_softmax_defaults_unused(beauty_mini_path, beauty_mini_data):
    config = tiny_config(beauty_mini_path, loss_type="CE")  # MIND.yaml's recipe options stay as they are
    model = MIND(config, beauty_mini_data[2]._dataset)
    batch = next(iter(beauty_mini_data[2]))
    assert torch.isfinite(model.calculate_loss(batch))
