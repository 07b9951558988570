"""The sampled softmax with log-Q correction, against values computed by hand."""

import math
from collections import Counter

import pytest
import torch

from mind_recbole.model.youtubednn import YouTubeDNN
from tests.conftest import tiny_config
from tests.test_negatives import hand_loss as cross_entropy_by_hand


@pytest.fixture(scope="module")
def model(beauty_mini_data):
    config, dataset, train_data, _, _ = beauty_mini_data
    config = tiny_config(config["data_path"].rsplit("/", 1)[0], model="YouTubeDNN", num_negatives=2,
                         in_batch_negatives=False)  # sampled negatives only: log-Q is log(S q)
    return YouTubeDNN(config, train_data._dataset).eval()


def test_negatives_are_drawn_with_probability_count_plus_one_to_the_alpha(model, beauty_mini_data):
    train = beauty_mini_data[2]._dataset
    counts = Counter(train.inter_feat["item_id"].tolist())
    alpha = 0.75
    total = sum((counts.get(i, 0) + 1) ** alpha for i in range(1, model.n_items))
    popular = max(counts, key=counts.get)
    unseen = next(i for i in range(1, model.n_items) if i not in counts) if len(counts) < model.n_items - 1 else None
    assert model.negative_probs[0].item() == 0.0  # never the padding id
    assert model.negative_probs[popular].item() == pytest.approx((counts[popular] + 1) ** alpha / total, rel=1e-5)
    if unseen is not None:
        assert model.negative_probs[unseen].item() == pytest.approx(1.0 / total, rel=1e-5)
    assert model.negative_probs.sum().item() == pytest.approx(1.0, rel=1e-5)


def hand_loss(positive_score, negative_scores, q_positive, q_negatives, sample_count):
    """-log softmax of the positive over [positive, negatives], each logit minus log(S q)."""
    logits = [positive_score - math.log(sample_count * q_positive)]
    logits += [score - math.log(sample_count * q) for score, q in zip(negative_scores, q_negatives)]
    top = max(logits)
    return -(logits[0] - top - math.log(sum(math.exp(v - top) for v in logits)))


def loss_with_negatives(model, monkeypatch, negatives, target):
    """The model's loss for one user whose vector is fixed, with the drawn negatives fixed too."""
    monkeypatch.setattr(torch, "multinomial", lambda probs, n, replacement: torch.tensor(negatives))
    torch.manual_seed(0)
    user = torch.randn(1, model.embedding_size)
    targets = torch.tensor([target])
    with torch.no_grad():
        target_vectors = model.item_tower(targets)
        loss = model.sampled_softmax_loss(user.unsqueeze(1), torch.ones(1, 1, dtype=torch.bool), user, target_vectors,
                                          targets)
        scores = {i: float(user[0] @ model.item_tower(torch.tensor([i]))[0]) for i in (target, *negatives)}
    return float(loss), scores


def test_log_q_correction_subtracts_log_of_sample_count_times_q(model, monkeypatch):
    target, negatives = 5, [17, 40]
    loss, scores = loss_with_negatives(model, monkeypatch, negatives, target)
    q = model.negative_probs
    expected = hand_loss(scores[target], [scores[n] for n in negatives], q[target].item(),
                         [q[n].item() for n in negatives], 2)
    assert loss == pytest.approx(expected, rel=1e-5)
    # the correction's sign: without it (adding log S q instead) the loss would differ by the q's
    wrong_sign = -math.log(math.exp(scores[target] + math.log(2 * q[target].item())) / sum(
        math.exp(scores[i] + math.log(2 * q[i].item())) for i in (target, *negatives)))
    assert loss != pytest.approx(wrong_sign, rel=1e-3)


def test_a_sampled_negative_equal_to_the_target_is_masked(model, monkeypatch):
    target = 5
    loss, scores = loss_with_negatives(model, monkeypatch, [target, 40], target)
    q = model.negative_probs
    only_the_other = hand_loss(scores[target], [scores[40]], q[target].item(), [q[40].item()], 2)
    assert loss == pytest.approx(only_the_other, rel=1e-5)  # as if the accidental hit had not been drawn


# ---------------------------------------------------------------------------------------------- mixed negatives
@pytest.fixture(scope="module")
def mixed_model(beauty_mini_data):
    config = beauty_mini_data[0]
    config = tiny_config(config["data_path"].rsplit("/", 1)[0], model="YouTubeDNN", num_negatives=2,
                         in_batch_negatives=True)
    return YouTubeDNN(config, beauty_mini_data[2]._dataset).eval()


def test_in_batch_probability_is_the_items_frequency_as_a_training_target(mixed_model, beauty_mini_data):
    counts = Counter(beauty_mini_data[2]._dataset.inter_feat["item_id"].tolist())
    popular = max(counts, key=counts.get)
    assert mixed_model.target_probs[popular].item() == pytest.approx(counts[popular] / sum(counts.values()), rel=1e-5)
    assert mixed_model.target_probs[0].item() == 0.0


def test_mixed_negatives_loss_against_a_hand_computation(mixed_model, monkeypatch):
    sampled = [40, 5]  # the sampled 5 is an accidental hit for rows 0 and 2
    monkeypatch.setattr(torch, "multinomial", lambda probs, n, replacement: torch.tensor(sampled))
    targets = torch.tensor([5, 17, 5])  # rows 0 and 2 share a target
    torch.manual_seed(0)
    users = torch.randn(3, mixed_model.embedding_size)
    with torch.no_grad():
        target_vectors = mixed_model.item_tower(targets)
        loss = mixed_model.sampled_softmax_loss(users.unsqueeze(1), torch.ones(3, 1, dtype=torch.bool), users,
                                                target_vectors, targets)
    p, q = mixed_model.target_probs, mixed_model.negative_probs
    candidates = [5, 17, 5, *sampled]  # the batch's targets, then the samples
    log_q = {i: math.log(3 * p[i].item() + 2 * q[i].item()) for i in candidates}  # B = 3 rows, S = 2 samples
    total = 0.0
    for row, target in enumerate(targets.tolist()):  # rows 0 and 2 against 17 and 40 only; row 1 against 5, 5, 40, 5
        score = {i: float(users[row] @ mixed_model.item_tower(torch.tensor([i]))[0]) for i in candidates}
        negatives = [score[i] - log_q[i] for i in candidates if i != target]
        total += cross_entropy_by_hand(score[target] - log_q[target], negatives)
    assert loss.item() == pytest.approx(total / 3, rel=1e-5)
