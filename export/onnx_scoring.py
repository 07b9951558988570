"""Exact max-over-interests top-k as an ONNX graph, for ONNX Runtime's CUDA provider (numpy + onnxruntime).

:func:`export.retrieval.max_over_interests_topk` scores on the CPU with numpy. On a machine with a
GPU, :class:`OnnxScorer` runs the same scoring through ONNX Runtime so that it can use the
``CUDAExecutionProvider``: the item vectors are copied to the device once, in chunks of
``chunk_size`` rows, and each call sends only the users' interests and brings back, per chunk,
the chunk's best candidates; the host merges the chunks. One small graph does a chunk::

    scores  = interests [B, K, D] @ items^T [D, n]      # [B, K, n]
    best    = max over active k (inactive k: -inf)     # [B, n], and the winning k
    top     = TopK(best, k')                           # [B, k'] scores, positions, winners

Results equal :func:`~export.retrieval.max_over_interests_topk`'s (same :class:`~export.retrieval.TopK`,
ties by item id ascending, ``-1`` / ``-inf`` where fewer items are eligible), up to float rounding
of the scores on a GPU. Exclusions (each user's history, item 0) are applied on the host: each
chunk returns ``topk`` plus the most items any user excludes in that chunk, so removing them still
leaves the chunk's true top-``topk``.

The graph is built with the ``onnx`` package (already needed by ``mind-recbole export``; it does
not import torch), once per scorer. On the CPU provider the scorer gives the same answers and is
what the tests check where no GPU exists; on the CPU, numpy's scoring is the faster path.
"""

import numpy as np
import onnxruntime as ort

from export.retrieval import TopK, _check_inputs, _exclusion_pairs, _sort_rows
from export.runtime import CUDA, check_cuda_enabled, select_providers

CHUNK_ITEMS = 1 << 18  # item rows per device chunk (64 MiB of float32 at D = 64)
GRAPH_OPSET = 18  # ReduceMax takes its axes as an input from opset 18


def scoring_graph(dim):
    """The ONNX model scoring one chunk of items: inputs ``interests [B, K, D]``, ``mask [B, K]``
    bool, ``items [n, D]``, ``k [1]`` int64; outputs ``scores [B, k]``, ``positions [B, k]``
    (row in the chunk) and ``winners [B, k]`` (the interest that gave each score)."""
    import onnx
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Transpose", ["items"], ["items_t"], perm=[1, 0]),  # [D n]
        helper.make_node("MatMul", ["interests", "items_t"], ["scores_all"]),  # [B K n]
        helper.make_node("Unsqueeze", ["mask", "axis_last"], ["mask3"]),  # [B K 1]
        helper.make_node("Where", ["mask3", "scores_all", "minus_inf"], ["masked"]),  # [B K n]
        helper.make_node("ReduceMax", ["masked", "axis_k"], ["best"], keepdims=0),  # [B n]
        helper.make_node("ArgMax", ["masked"], ["winner_all"], axis=1, keepdims=0, select_last_index=0),  # [B n]
        helper.make_node("TopK", ["best", "k"], ["scores", "positions"], axis=1, largest=1, sorted=1),
        helper.make_node("GatherElements", ["winner_all", "positions"], ["winners"], axis=1),
    ]
    constants = [
        helper.make_tensor("axis_last", TensorProto.INT64, [1], [2]),
        helper.make_tensor("axis_k", TensorProto.INT64, [1], [1]),
        helper.make_tensor("minus_inf", TensorProto.FLOAT, [], [float("-inf")]),
    ]
    graph = helper.make_graph(
        nodes,
        "max_over_interests_topk",
        [
            helper.make_tensor_value_info("interests", TensorProto.FLOAT, ["batch", "interest_num", dim]),
            helper.make_tensor_value_info("mask", TensorProto.BOOL, ["batch", "interest_num"]),
            helper.make_tensor_value_info("items", TensorProto.FLOAT, ["chunk", dim]),
            helper.make_tensor_value_info("k", TensorProto.INT64, [1]),
        ],
        [
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "k"]),
            helper.make_tensor_value_info("positions", TensorProto.INT64, ["batch", "k"]),
            helper.make_tensor_value_info("winners", TensorProto.INT64, ["batch", "k"]),
        ],
        initializer=constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", GRAPH_OPSET)])
    onnx.checker.check_model(model)
    return model


class OnnxScorer:
    """Exact top-k by ``max over active k of e_i . v_u^k`` with ONNX Runtime (see the module docstring).

    Args:
        item_vectors: ``[N, D]`` float32 (row 0 is RecBole's padding item), copied to the device once.
        provider: ``"auto"``, ``"cpu"`` or ``"cuda"``, as :class:`export.runtime.UserTower` takes it
            (``"cuda"`` without a CUDA-enabled onnxruntime falls back to CPU with a
            :class:`~export.runtime.ProviderFallbackWarning`, or raises with ``strict=True``).
        chunk_size: item rows per device chunk.

    Attributes: ``providers`` (what the session really uses), ``device`` (``"cuda"`` or ``"cpu"``).
    """

    def __init__(self, item_vectors, provider="auto", strict=False, chunk_size=CHUNK_ITEMS):
        item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)
        if item_vectors.ndim != 2 or item_vectors.shape[0] < 1:
            raise ValueError(f"item_vectors must be a non-empty [N, D] array, got shape {item_vectors.shape}")
        self.n_items, self.dim = item_vectors.shape
        options = ort.SessionOptions()
        options.log_severity_level = 3
        requested = select_providers(provider, strict=strict)
        self.session = ort.InferenceSession(scoring_graph(self.dim).SerializeToString(), options, providers=requested)
        self.providers = self.session.get_providers()
        check_cuda_enabled(requested, self.providers, strict, session="scoring session")
        self.device = "cuda" if CUDA in self.providers else "cpu"
        self.chunk_size = max(1, int(chunk_size))
        self.chunks = [  # (first item id, the chunk as an OrtValue on the device)
            (start, ort.OrtValue.ortvalue_from_numpy(item_vectors[start : start + self.chunk_size], self.device, 0))
            for start in range(0, self.n_items, self.chunk_size)
        ]

    def topk(self, interests, mask=None, topk=50, exclude=None, exclude_padding=True):
        """Same arguments and result as :func:`export.retrieval.max_over_interests_topk` (``TopK``, ``[B, topk]``)."""
        interests, mask = _check_inputs(interests, mask)
        if interests.shape[2] != self.dim:
            raise ValueError(f"interests must be [B, K, {self.dim}], got {interests.shape}")
        batch = interests.shape[0]
        topk = int(min(topk, self.n_items))
        if topk < 1:
            raise ValueError("topk must be >= 1")
        rows, cols = _exclusion_pairs(exclude, batch, self.n_items)
        if exclude_padding:
            rows, cols = np.concatenate([np.arange(batch), rows]), np.concatenate([np.zeros(batch, np.int64), cols])
        excluded = np.unique(rows * self.n_items + cols)  # (user row, item id) pairs as one code
        interests_value = ort.OrtValue.ortvalue_from_numpy(interests, self.device, 0)
        mask_value = ort.OrtValue.ortvalue_from_numpy(mask, self.device, 0)
        ids, scores, winners = [], [], []
        for start, chunk in self.chunks:
            n = chunk.shape()[0]
            in_chunk = (cols >= start) & (cols < start + n)
            most_excluded = int(np.bincount(rows[in_chunk], minlength=batch).max()) if in_chunk.any() else 0
            k = min(n, topk + most_excluded)
            binding = self.session.io_binding()
            binding.bind_ortvalue_input("interests", interests_value)
            binding.bind_ortvalue_input("mask", mask_value)
            binding.bind_ortvalue_input("items", chunk)
            binding.bind_cpu_input("k", np.array([k], np.int64))
            for name in ("scores", "positions", "winners"):
                binding.bind_output(name, "cpu")
            self.session.run_with_iobinding(binding)
            chunk_scores, positions, chunk_winners = binding.copy_outputs_to_cpu()
            ids.append(positions + start)
            scores.append(chunk_scores)
            winners.append(chunk_winners)
        ids, scores, winners = np.concatenate(ids, 1), np.concatenate(scores, 1).astype(np.float32), np.concatenate(winners, 1)
        if excluded.size:
            scores[np.isin(np.arange(batch)[:, None] * self.n_items + ids, excluded)] = -np.inf
        ranked = _sort_rows(ids, scores, winners)
        return TopK(ranked.ids[:, :topk].copy(), ranked.scores[:, :topk].copy(), ranked.interests[:, :topk].copy())
