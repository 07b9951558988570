"""MIND's building blocks on small hand-made tensors."""

import gc
import math
import weakref

import numpy as np
import pytest
import torch

from mind_recbole.model.layers import (
    B2IDynamicRouting,
    HardLabelScores,
    ReLUTower,
    best_interest,
    interest_count_mask,
    interest_winners,
    label_aware_attention,
    label_aware_scores,
    max_over_interests,
    squash,
)


def reference_routing(behaviours, length, bilinear, logits, active, iterations):
    """Algorithm 1 of the MIND paper, written with plain loops over interests and behaviours."""
    mapped = [bilinear @ behaviours[j] for j in range(length)]
    logits = logits.copy()
    for iteration in range(iterations):
        capsules = []
        for k in range(active):
            z = np.zeros(bilinear.shape[0])
            for j in range(length):
                w = math.exp(logits[k, j]) / sum(math.exp(logits[kk, j]) for kk in range(active))
                z += w * mapped[j]
            norm2 = float(z @ z)
            capsules.append(norm2 / (1 + norm2) * z / math.sqrt(norm2))
        if iteration < iterations - 1:
            for k in range(active):
                for j in range(length):
                    logits[k, j] += capsules[k] @ mapped[j]
    return np.array(capsules)


def make_routing(dim, interests, max_len, iterations, bilinear, eval_logits):
    routing = B2IDynamicRouting(dim, interests, max_len, iterations=iterations)
    with torch.no_grad():
        routing.bilinear.copy_(torch.as_tensor(bilinear, dtype=torch.float))
        routing.eval_routing_logits.copy_(torch.as_tensor(eval_logits, dtype=torch.float))
    return routing.eval()


def test_squash_shrinks_length_and_keeps_direction():
    vectors = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    out = squash(vectors)
    assert torch.allclose(out[0], torch.tensor([3.0, 4.0]) / 5 * 25 / 26)
    assert torch.equal(out[1], torch.zeros(2))


def test_routing_one_iteration_hand_computed():
    # b = 0, two interests: every behaviour splits 1/2 - 1/2, z_k = (0.5, 0.5) for both,
    # |z|^2 = 0.5, squash = 0.5 / 1.5 * z / sqrt(0.5) = (sqrt(2)/6, sqrt(2)/6).
    routing = make_routing(2, 2, 3, 1, np.eye(2), np.zeros((2, 3)))
    behaviours = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [7.0, 7.0]]])  # third position is padding
    seq_mask = torch.tensor([[True, True, False]])
    capsules = routing(behaviours, seq_mask, torch.tensor([[True, True]]))
    expected = torch.full((1, 2, 2), math.sqrt(2) / 6)
    assert torch.allclose(capsules, expected, atol=1e-6)


def test_routing_matches_paper_algorithm_with_three_iterations():
    rng = np.random.default_rng(0)
    dim, interests, length = 4, 3, 5
    bilinear = rng.normal(size=(dim, dim))
    logits = rng.normal(size=(interests, length))
    behaviours = rng.normal(size=(length, dim))
    routing = make_routing(dim, interests, length, 3, bilinear, logits)
    capsules = routing(
        torch.tensor(behaviours[None], dtype=torch.float),
        torch.ones(1, length, dtype=torch.bool),
        torch.ones(1, interests, dtype=torch.bool),
    )
    expected = reference_routing(behaviours, length, bilinear, logits, interests, 3)
    np.testing.assert_allclose(capsules[0].detach().numpy(), expected, atol=1e-5)


def test_routing_inactive_interests_get_nothing_and_others_match_reference():
    rng = np.random.default_rng(1)
    bilinear, logits, behaviours = rng.normal(size=(3, 3)), rng.normal(size=(4, 6)), rng.normal(size=(6, 3))
    routing = make_routing(3, 4, 6, 3, bilinear, logits)
    capsules = routing(
        torch.tensor(behaviours[None], dtype=torch.float),
        torch.ones(1, 6, dtype=torch.bool),
        torch.tensor([[True, True, False, False]]),
    )
    assert torch.equal(capsules[0, 2:], torch.zeros(2, 3))
    expected = reference_routing(behaviours, 6, bilinear, logits, 2, 3)
    np.testing.assert_allclose(capsules[0, :2].detach().numpy(), expected, atol=1e-5)


def test_padding_does_not_change_capsules():
    torch.manual_seed(0)
    routing = B2IDynamicRouting(8, 4, 10).eval()
    behaviours = torch.randn(1, 6, 8)
    interest_mask = torch.ones(1, 4, dtype=torch.bool)
    short = routing(behaviours, torch.ones(1, 6, dtype=torch.bool), interest_mask)
    padded_behaviours = torch.cat([behaviours, torch.randn(1, 4, 8) * 100], dim=1)
    seq_mask = torch.tensor([[True] * 6 + [False] * 4])
    padded = routing(padded_behaviours, seq_mask, interest_mask)
    assert torch.allclose(short, padded, atol=1e-6)


@pytest.mark.parametrize(
    "length, interest_num, expected",
    [(1, 4, 1), (2, 4, 1), (4, 4, 2), (9, 4, 3), (100, 4, 4), (100, 8, 6), (8, 4, 3), (7, 4, 2), (1, 1, 1)],
)
def test_interest_count_is_max_1_min_k_log2(length, interest_num, expected):
    mask = interest_count_mask(torch.tensor([length]), interest_num)
    assert mask.shape == (1, interest_num)
    assert int(mask.sum()) == expected == max(1, min(interest_num, int(math.floor(math.log2(length)))))
    assert mask[0, :expected].all() and not mask[0, expected:].any()


def test_eval_routing_is_deterministic_and_training_is_random():
    torch.manual_seed(0)
    routing = B2IDynamicRouting(8, 4, 10)
    behaviours, seq_mask = torch.randn(3, 10, 8), torch.ones(3, 10, dtype=torch.bool)
    interest_mask = torch.ones(3, 4, dtype=torch.bool)
    routing.eval()
    assert torch.equal(routing(behaviours, seq_mask, interest_mask), routing(behaviours, seq_mask, interest_mask))
    routing.train()
    assert not torch.allclose(routing(behaviours, seq_mask, interest_mask), routing(behaviours, seq_mask, interest_mask))


def test_gradients_reach_bilinear_and_behaviours():
    routing = B2IDynamicRouting(4, 2, 5)
    behaviours = torch.randn(2, 5, 4, requires_grad=True)
    capsules = routing(behaviours, torch.ones(2, 5, dtype=torch.bool), torch.ones(2, 2, dtype=torch.bool))
    capsules.pow(2).sum().backward()
    assert routing.bilinear.grad is not None and routing.bilinear.grad.abs().sum() > 0
    assert behaviours.grad.abs().sum() > 0


def test_label_aware_attention_large_power_equals_hard_max():
    interests = torch.tensor([[[3.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    target = torch.tensor([[1.0, 0.5]])  # scores 3.0, 1.0, 7.5; the third interest is masked out
    mask = torch.tensor([[True, True, False]])
    hard = label_aware_attention(interests, mask, target, math.inf)
    assert torch.equal(hard, interests[:, 0])
    assert torch.allclose(label_aware_attention(interests, mask, target, 60.0), hard)
    soft = label_aware_attention(interests, mask, target, 1.0)
    weights = torch.softmax(torch.tensor([3.0, 1.0]), 0)
    assert torch.allclose(soft, weights[0] * interests[:, 0] + weights[1] * interests[:, 1])


def test_interest_winners_record_no_graph_and_leave_the_scores_alone():
    scores = torch.tensor([[[1.0, 4.0], [3.0, 4.0], [9.0, 0.0]]], requires_grad=True)  # [B=1 K=3 N=2]
    mask = torch.tensor([[True, True, False]])
    values, winners = interest_winners(scores, mask)
    assert values.tolist() == [[3.0, 4.0]] and winners.tolist() == [[[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]]
    assert values.grad_fn is None and winners.grad_fn is None and not winners.requires_grad
    assert scores.tolist() == [[[1.0, 4.0], [3.0, 4.0], [9.0, 0.0]]]
    assert best_interest(scores, mask).indices.tolist() == [[1, 0]]  # a tie goes to the first interest


def test_hard_attention_frees_its_graph_after_backward():
    """The training step of MIND's default recipe (hard label-aware attention) must not outlive itself.

    Taking the winners under autograd once rewrote, in place, the tensor ``amax`` had saved: the graph
    then held itself in a cycle, and every step's activations (the target vectors among them) leaked.
    """
    interests = torch.randn(4, 3, 5, requires_grad=True)
    mask = torch.tensor([[True, True, False]] * 4)
    target = torch.randn(4, 5, requires_grad=True) * 2.0  # a non-leaf, as item vectors are
    target_alive = weakref.ref(target)
    label_aware_attention(interests, mask, target, math.inf).sum().backward()
    del target
    gc.collect()
    assert target_alive() is None
    assert interests.grad is not None and interests.grad[:, 2].abs().sum() == 0  # nothing to the inactive interest


def test_label_aware_attention_power_keeps_sign():
    interests = torch.tensor([[[1.0], [-1.0]]])
    target = torch.tensor([[2.0]])  # scores +2 and -2: p = 2 must not make them equal
    out = label_aware_attention(interests, torch.ones(1, 2, dtype=torch.bool), target, 2.0)
    weights = torch.softmax(torch.tensor([4.0, -4.0]), 0)
    assert torch.allclose(out, torch.tensor([[weights[0] - weights[1]]]))


@pytest.mark.parametrize("power", [0.5, 1.0, 2.0])
def test_label_aware_attention_gradients_are_finite_at_zero_scores(power):
    # a zero interest (score exactly 0) is active in the first row and inactive in the second
    interests = torch.tensor([[[1.0, 2.0], [0.0, 0.0]], [[1.0, -1.0], [0.0, 0.0]]], requires_grad=True)
    target = torch.tensor([[0.5, 1.0], [2.0, 1.0]])
    mask = torch.tensor([[True, True], [True, False]])
    label_aware_attention(interests, mask, target, power).sum().backward()
    assert torch.isfinite(interests.grad).all()
    assert torch.equal(interests.grad[1, 1], torch.zeros(2))  # the inactive interest gets nothing


@pytest.mark.parametrize("power", [1.0, 2.0, math.inf])
def test_label_aware_scores_let_each_item_be_its_own_label(power):
    torch.manual_seed(0)
    interests, items = torch.randn(3, 4, 8), torch.randn(20, 8)
    mask = torch.tensor([[True, False, False, False], [True, True, False, False], [True] * 4])
    scores = label_aware_scores(interests, mask, items, power)
    assert scores.shape == (3, 20)
    for item in (0, 7, 19):  # column i is the label-aware vector for label i, dotted with e_i
        label = items[item].expand(3, -1)
        expected = (label_aware_attention(interests, mask, label, power) * label).sum(-1)
        assert torch.allclose(scores[:, item], expected, atol=1e-5)
    if math.isinf(power):  # hard attention is the serving score (up to the order of float sums)
        assert torch.allclose(scores, max_over_interests(interests, mask, items), rtol=0, atol=1e-5)


def amax_and_gradients(scores_of, interests, items, mask, weights):
    """Scores from ``scores_of(interests, items, mask)`` and the gradients of ``(scores * weights).sum()``."""
    interests, items = interests.detach().requires_grad_(), items.detach().requires_grad_()
    scores = scores_of(interests, items, mask)
    (scores * weights).sum().backward()
    return scores.detach(), interests.grad, items.grad


def autograd_amax(interests, items, mask):
    return torch.einsum("bkd,nd->bkn", interests, items).masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)


def test_hard_label_scores_match_autograd_amax_in_values_and_gradients():
    torch.manual_seed(1)
    # users with 1, 2, 3 and 2 active interests; the last one's are not the first two, and tie
    mask = torch.tensor([[True, False, False], [True, True, False], [True, True, True], [False, True, True]])
    interests, items, weights = torch.randn(4, 3, 5), torch.randn(7, 5), torch.randn(4, 7)
    interests[3, 2] = interests[3, 1]
    expected = amax_and_gradients(autograd_amax, interests, items, mask, weights)
    served = lambda interests, items, mask: label_aware_scores(interests, mask, items, math.inf)  # noqa: E731
    got = amax_and_gradients(served, interests, items, mask, weights)
    for value, reference in zip(got, expected):
        assert torch.allclose(value, reference, atol=1e-6)
    grad_interests = got[1]
    assert torch.equal(grad_interests[0, 1:], torch.zeros(2, 5))  # inactive interests get nothing
    assert torch.equal(grad_interests[3, 0], torch.zeros(5))
    assert torch.equal(grad_interests[3, 1], grad_interests[3, 2]) and grad_interests[3, 1].abs().sum() > 0  # shared

    # in row blocks (one user per block, or two users with 2 interests in one): the same values and
    # gradients (without the tie: a matmul of another shape may break it by a rounding)
    interests[3, 2] += 0.5
    expected = amax_and_gradients(autograd_amax, interests, items, mask, weights)
    for block_floats in (3 * 7, 4 * 7):
        got = amax_and_gradients(lambda *a: HardLabelScores.apply(*a, block_floats), interests, items, mask, weights)
        for value, reference in zip(got, expected):
            assert torch.allclose(value, reference, atol=1e-6)


def test_max_over_interests_masks_inactive_and_chunks_alike():
    torch.manual_seed(0)
    interests, items = torch.randn(3, 4, 8), torch.randn(50, 8)
    mask = torch.tensor([[True, False, False, False], [True, True, False, False], [True] * 4])
    full = max_over_interests(interests, mask, items)
    assert full.shape == (3, 50)
    assert torch.allclose(full[0], items @ interests[0, 0])
    assert torch.allclose(full[1], torch.maximum(items @ interests[1, 0], items @ interests[1, 1]))
    # chunked matmuls may sum in another order (bit-equal on some CPUs, 4.8e-7 apart on others)
    chunked = max_over_interests(interests, mask, items, chunk_size=7)
    assert torch.allclose(chunked, full, rtol=0, atol=1e-5)
    assert torch.equal(chunked.argmax(1), full.argmax(1))


def test_fixed_init_trains_from_the_eval_draw():
    torch.manual_seed(0)
    routing = B2IDynamicRouting(8, 4, 10, fixed_init=True)
    behaviours, seq_mask = torch.randn(3, 10, 8), torch.ones(3, 10, dtype=torch.bool)
    interest_mask = torch.ones(3, 4, dtype=torch.bool)
    training = routing(behaviours, seq_mask, interest_mask)
    assert torch.equal(training, routing.eval()(behaviours, seq_mask, interest_mask))


def routing_input_gradient(iterations, detach_logits):
    torch.manual_seed(0)
    routing = B2IDynamicRouting(4, 2, 5, iterations=iterations, detach_logits=detach_logits).eval()
    behaviours = torch.randn(1, 5, 4, requires_grad=True)
    capsules = routing(behaviours, torch.ones(1, 5, dtype=torch.bool), torch.ones(1, 2, dtype=torch.bool))
    (gradient,) = torch.autograd.grad((capsules * torch.arange(8.0).view(1, 2, 4)).sum(), behaviours)
    return gradient


def test_gradient_through_routing_logit_updates_is_configurable():
    # one iteration has no logit update: both settings give the same gradient
    assert torch.allclose(routing_input_gradient(1, True), routing_input_gradient(1, False))
    # with updates, back-propagating through them adds a term
    assert not torch.allclose(routing_input_gradient(3, True), routing_input_gradient(3, False))


def test_eval_routing_from_mapped_behaviours_equals_forward():
    """The served form of routing (S applied per item beforehand, masks folded into the logits)."""
    torch.manual_seed(0)
    routing = B2IDynamicRouting(8, 4, 12, iterations=3).eval()
    behaviours = torch.randn(6, 12, 8)
    lengths = torch.tensor([12, 1, 2, 5, 9, 3])
    seq_mask = torch.arange(12).unsqueeze(0) < lengths.unsqueeze(1)  # [B L]
    behaviours = behaviours * seq_mask.unsqueeze(-1)  # padded behaviours are zero vectors, as the item tower gives
    interest_mask = interest_count_mask(lengths, 4)
    assert interest_mask.sum(1).tolist() == [3, 1, 1, 2, 3, 1]
    expected = routing(behaviours, seq_mask, interest_mask)
    served = routing.route_mapped_eval(routing.map_behaviours(behaviours), interest_mask)
    torch.testing.assert_close(served, expected, rtol=1e-5, atol=1e-6)
    assert (served[~interest_mask] == 0).all()  # inactive interests stay zero capsules
    # only the mapped table's padding rows being zero makes padding irrelevant: a nonzero one changes the result
    mapped = routing.map_behaviours(behaviours)
    mapped[1, 5] = 1.0
    assert not torch.allclose(routing.route_mapped_eval(mapped, interest_mask)[1], expected[1])


def test_relu_tower_of_some_rows_draws_dropout_as_over_all_rows():
    tower = ReLUTower(6, [32, 16], 4, dropout_prob=0.3).train()
    inputs = torch.randn(5, 3, 6)  # [B K input]
    mask = torch.tensor([[True, False, False], [True, True, False], [True] * 3, [True, False, True], [False] * 3])
    rows = torch.nonzero(mask.flatten()).squeeze(1)
    torch.manual_seed(7)
    full = tower(inputs)
    after_full = torch.rand(3)
    torch.manual_seed(7)
    some = tower.forward_rows(inputs.flatten(0, 1)[rows], rows, mask.numel())
    after_some = torch.rand(3)
    assert some.shape == (int(mask.sum()), 4)
    assert torch.allclose(some, full[mask], atol=1e-6)
    assert torch.equal(after_some, after_full)  # the random stream goes on as after forward
    torch.manual_seed(8)  # another draw drops other units: the rows' values do depend on the mask taken
    assert not torch.allclose(tower.forward_rows(inputs.flatten(0, 1)[rows], rows, mask.numel()), full[mask])


def test_interest_winners_without_a_mask_treat_every_interest_as_active():
    scores = torch.tensor([[[1.0, 5.0], [3.0, 5.0]]])  # [1 K=2 N=2]: item 1 ties
    values, winners = interest_winners(scores.clone(), None)
    expected = interest_winners(scores.clone(), torch.ones(1, 2, dtype=torch.bool))
    assert torch.equal(values, expected[0]) and torch.equal(winners, expected[1])
    assert values.tolist() == [[3.0, 5.0]] and winners.tolist() == [[[0.0, 1.0], [1.0, 1.0]]]
