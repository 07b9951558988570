"""REMI's routing regularisation (mind_recbole/model/routing_regularisation.py) against a hand
computation, and the routing weights MIND hands to it."""

import pytest
import torch

from mind_recbole.model.mind import MIND
from mind_recbole.model.routing_regularisation import routing_regularisation
from mind_recbole.model.youtubednn import YouTubeDNN
from tests.conftest import tiny_config
from tests.test_models import build


def test_value_on_a_small_routing_matrix_by_hand():
    routing = torch.tensor(
        [
            [[0.9, 0.3, 0.0], [0.1, 0.7, 0.0]],  # user 0: two interests, the third position is padding
            [[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]],  # user 1: the second interest is inactive
        ]
    )
    # user 0, interest 0: composition 0.9/1.2, 0.3/1.2, 0 = 0.75, 0.25, 0; its mean over L = 3 is 1/3
    c00 = ((0.75 - 1 / 3) ** 2 + (0.25 - 1 / 3) ** 2 + (1 / 3) ** 2) / 2  # / D = 2: 0.145833
    # user 0, interest 1: 0.1/0.8, 0.7/0.8, 0 = 0.125, 0.875, 0
    c01 = ((0.125 - 1 / 3) ** 2 + (0.875 - 1 / 3) ** 2 + (1 / 3) ** 2) / 2  # 0.223958
    # user 1, interest 0: 0.5, 0.5, 0; the inactive interest adds nothing
    c10 = ((0.5 - 1 / 3) ** 2 * 2 + (1 / 3) ** 2) / 2  # 1/12
    expected = ((c00**2 + c01**2) + c10**2) / 2  # the mean over users of sum_k C_kk^2
    assert c00 == pytest.approx(0.145833, abs=1e-6) and c01 == pytest.approx(0.223958, abs=1e-6)
    assert routing_regularisation(routing, embedding_size=2).item() == pytest.approx(expected, rel=1e-6)


def test_a_collapsed_interest_costs_more_than_a_spread_one():
    spread = torch.tensor([[[0.25, 0.25, 0.25, 0.25]]])  # one interest over four items
    collapsed = torch.tensor([[[1.0, 0.0, 0.0, 0.0]]])  # one interest, one item
    assert routing_regularisation(spread, 4).item() == 0.0
    assert routing_regularisation(collapsed, 4).item() == pytest.approx(((0.75**2 + 3 * 0.25**2) / 4) ** 2)


# ---------------------------------------------------------------------------------------------- MIND's routing
def routing_of(model, batch):
    return model._interests_and_routing(*model._user_inputs(batch))


def test_mind_routing_is_each_positions_weight_in_each_active_interest(beauty_mini_path, beauty_mini_data):
    model = build(MIND, beauty_mini_path, beauty_mini_data).eval()
    batch = next(iter(beauty_mini_data[2]))
    interests, interest_mask, routing = routing_of(model, batch)
    seq = batch[model.ITEM_SEQ]
    assert routing.shape == (seq.shape[0], model.interest_num, seq.shape[1])
    assert torch.equal(routing.sum(1) > 0, seq > 0)  # padding positions route nowhere
    assert torch.allclose(routing.sum(1)[seq > 0], torch.ones(int((seq > 0).sum())), atol=1e-6)  # softmax over interests
    assert torch.equal(routing.sum(2) > 0, interest_mask)  # inactive interests get no weight
    forward = model(seq, batch[model.ITEM_SEQ_LEN])
    assert len(forward) == 2 and torch.equal(forward[0], interests)  # the exported forward is unchanged


def test_youtubednn_has_no_routing(beauty_mini_path, beauty_mini_data):
    model = build(YouTubeDNN, beauty_mini_path, beauty_mini_data)
    assert routing_of(model, next(iter(beauty_mini_data[2])))[2] is None


@pytest.mark.parametrize("detach", [True, False])
def test_routing_carries_gradients_only_without_detached_logits(detach, beauty_mini_path, beauty_mini_data):
    model = build(MIND, beauty_mini_path, beauty_mini_data, routing_detach_logits=detach).train()
    routing = routing_of(model, next(iter(beauty_mini_data[2])))[2]
    assert routing.requires_grad is not detach
    if not detach:
        routing_regularisation(routing, model.embedding_size).backward()
        assert model.routing.bilinear.grad.abs().sum() > 0


def test_the_loss_adds_the_weighted_penalty(beauty_mini_path, beauty_mini_data):
    batch = next(iter(beauty_mini_data[2]))
    losses = {}
    for weight in (0.0, 5000.0):
        model = build(MIND, beauty_mini_path, beauty_mini_data, routing_regularisation=weight,
                      routing_detach_logits=False).eval()  # eval: no dropout, the fixed routing start
        torch.manual_seed(3)  # the same sampled negatives
        losses[weight] = model.calculate_loss(batch).item()
    penalty = routing_regularisation(routing_of(model, batch)[2], model.embedding_size).item()
    assert penalty > 0
    assert losses[5000.0] - losses[0.0] == pytest.approx(5000.0 * penalty, rel=1e-4)


@pytest.mark.parametrize(
    "model_class, overrides, message",
    [
        (YouTubeDNN, {"routing_regularisation": 1.0},
         "routing_regularisation needs a routing model; YouTubeDNN has no routing weights (got 1.0)"),
        (MIND, {"routing_regularisation": 1.0, "routing_detach_logits": True},
         "routing_regularisation needs gradients through the routing weights, which routing_detach_logits: True cuts"),
        (MIND, {"routing_regularisation": -1.0}, "routing_regularisation must be a number >= 0, got -1.0"),
    ],
)
def test_regularisation_that_cannot_apply_is_a_config_error(model_class, overrides, message, beauty_mini_path):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        tiny_config(beauty_mini_path, model=model_class.__name__, **overrides)
