"""The sampled softmax with log-Q correction, against values computed by hand."""

import math
from collections import Counter

import pytest
import torch

from mind_recbole.model.youtubednn import YouTubeDNN
from tests.conftest import tiny_config


@pytest.fixture(scope="module")
def model(beauty_mini_data):
    config, dataset, train_data, _, _ = beauty_mini_data
    config = tiny_config(config["data_path"].rsplit("/", 1)[0], model="YouTubeDNN", num_negatives=2)
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
