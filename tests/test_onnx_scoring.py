"""The ONNX Runtime scorer (export/onnx_scoring.py) against the brute-force reference (tests/reference_topk.py) and numpy's scorer.

On the CPU provider everywhere; the CUDA provider where onnxruntime has one and a GPU answers
(skipped elsewhere, with the reason).
"""

import numpy as np
import onnxruntime
import pytest

from export.artifacts import InputError, ItemIdError
from export.onnx_scoring import OnnxScorer
from export.retrieval import max_over_interests_topk, recall_at_n
from export.runtime import CUDA, ProviderFallbackWarning
from tests.reference_topk import reference_topk


def integer_case(seed, users=5, k=3, dim=4, n_items=40):
    """Small integer vectors: many exact ties, so the tie order (id ascending) is tested."""
    rng = np.random.default_rng(seed)
    interests = rng.integers(-2, 3, (users, k, dim)).astype(np.float32)
    items = rng.integers(-2, 3, (n_items, dim)).astype(np.float32)
    items[0] = 0
    mask = np.arange(k)[None, :] < rng.integers(1, k + 1, users)[:, None]
    return interests, mask, items


def gaussian_case(seed, users, k, dim, n_items, excluded):
    """Random interests with 1..K active per user, random items, ``excluded`` random ids per user."""
    rng = np.random.default_rng(seed)
    interests = rng.standard_normal((users, k, dim)).astype(np.float32)
    mask = np.arange(k)[None, :] < rng.integers(1, k + 1, users)[:, None]
    items = rng.standard_normal((n_items, dim)).astype(np.float32)
    exclude = [rng.integers(0, n_items, excluded) for _ in range(users)]
    return interests, mask, items, exclude


@pytest.mark.parametrize("chunk_size", [1, 7, 40, 1000])
@pytest.mark.parametrize("seed", [0, 1])
def test_cpu_provider_matches_brute_force_with_ties_masks_and_exclusions(chunk_size, seed):
    interests, mask, items = integer_case(seed)
    exclude = [[1, 2, 2, 3], [], list(range(1, 38)), [39], [5]]  # repeated ids; user 2 keeps only 2 items
    scorer = OnnxScorer(items, provider="cpu", chunk_size=chunk_size)
    got = scorer.topk(interests, mask, topk=6, exclude=exclude)
    ids, scores, _ = reference_topk(interests, mask, items, 6, exclude)
    np.testing.assert_array_equal(got.ids, ids)
    np.testing.assert_allclose(got.scores, scores)
    # a tie between interests may be won by either: the winner must reach the item's score
    for row in range(len(ids)):
        for slot, item in enumerate(ids[row]):
            if item >= 0:
                assert mask[row, got.interests[row, slot]]
                assert interests[row, got.interests[row, slot]] @ items[item] == pytest.approx(scores[row, slot])
            else:
                assert got.interests[row, slot] == -1
    assert list(got.ids[2][:2]) == [i for i in ids[2][:2]] and (got.ids[2][2:] == -1).all()


def test_cpu_provider_equals_numpy_scoring_on_random_vectors():
    interests, mask, items, exclude = gaussian_case(3, users=9, k=4, dim=16, n_items=3000, excluded=30)
    numpy_result = max_over_interests_topk(interests, mask, items, 50, chunk_size=512, exclude=exclude)
    onnx_result = OnnxScorer(items, provider="cpu", chunk_size=700).topk(interests, mask, 50, exclude=exclude)
    np.testing.assert_array_equal(onnx_result.ids, numpy_result.ids)
    np.testing.assert_array_equal(onnx_result.interests, numpy_result.interests)
    np.testing.assert_allclose(onnx_result.scores, numpy_result.scores, rtol=1e-5, atol=1e-5)


def test_padding_is_returned_only_when_asked_and_topk_is_capped_by_the_catalogue():
    interests, mask, items = integer_case(4, n_items=6)
    scorer = OnnxScorer(items, provider="cpu", chunk_size=4)
    with_padding = scorer.topk(interests, mask, topk=10, exclude_padding=False)
    assert with_padding.ids.shape == (5, 6) and (np.sort(with_padding.ids, 1) == np.arange(6)).all()
    without = scorer.topk(interests, mask, topk=10)
    assert without.ids.shape == (5, 6) and (without.ids[:, -1] == -1).all() and (without.ids[:, :5] > 0).all()
    assert np.isneginf(without.scores[:, -1]).all()


def test_bad_input_is_the_same_error_as_numpy_scoring():
    interests, mask, items = integer_case(5)
    scorer = OnnxScorer(items, provider="cpu")
    with pytest.raises(ItemIdError, match="outside 0..39"):
        scorer.topk(interests, mask, 3, exclude=[[40], [], [], [], []])
    broken = interests.copy()
    broken[1, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"row\(s\) 1"):
        scorer.topk(broken, mask, 3)
    with pytest.raises(ValueError, match=r"\[B, K, 4\]"):
        scorer.topk(interests[:, :, :3], mask, 3)
    with pytest.raises(ValueError, match="non-empty"):
        OnnxScorer(np.zeros((0, 4), np.float32))


def test_cuda_request_without_cuda_falls_back_to_cpu_with_a_warning(monkeypatch):
    if CUDA in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has CUDA: the fallback is not reachable")
    _, _, items = integer_case(6)
    with pytest.warns(ProviderFallbackWarning, match="onnxruntime-gpu"):
        scorer = OnnxScorer(items, provider="cuda")
    assert scorer.device == "cpu" and scorer.providers == ["CPUExecutionProvider"]
    with pytest.raises(RuntimeError, match=CUDA):
        OnnxScorer(items, provider="cuda", strict=True)


def cuda_scorer_or_skip(items):
    if CUDA not in onnxruntime.get_available_providers():
        pytest.skip(f"no {CUDA} in this onnxruntime ({onnxruntime.__version__}): pip install mind-recbole[gpu] on a GPU machine")
    try:
        return OnnxScorer(items, provider="cuda", strict=True)
    except RuntimeError as error:  # the wheel has CUDA but no GPU / driver answers
        pytest.skip(f"CUDA provider listed but not usable here: {error}")


def test_cuda_scoring_matches_numpy():
    interests, mask, items, exclude = gaussian_case(7, users=33, k=4, dim=64, n_items=20000, excluded=20)
    scorer = cuda_scorer_or_skip(items)
    assert scorer.device == "cuda"
    got = scorer.topk(interests, mask, 50, exclude=exclude)
    want = max_over_interests_topk(interests, mask, items, 50, exclude=exclude)
    assert recall_at_n(got.ids, want.ids) > 0.99  # TF32 / reduction order on the GPU may swap near-ties at the cut
    np.testing.assert_allclose(got.scores, want.scores, rtol=1e-2, atol=1e-2)
