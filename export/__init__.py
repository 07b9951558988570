"""Export the user tower of a trained interest model (MIND, YouTubeDNN, ComiRec) to ONNX and serve it without torch.

Two halves with different dependencies:

- :mod:`export.onnx_export` (torch, RecBole, onnx, onnxscript): ``export_user_tower(checkpoint,
  out_dir)`` writes ``user_tower.onnx`` (metadata inside), ``item_embeddings.npy`` and
  ``item_tokens.json``, then checks ONNX Runtime against PyTorch (``check_parity``).
- :mod:`export.runtime` and :mod:`export.retrieval` (numpy, onnxruntime and threadpoolctl only; faiss optional):
  ``UserTower(model_dir).encode(histories)`` -> interests and mask, then exact max-over-interests
  top-k in bounded memory (``max_over_interests_topk``) or faiss ANN (``build_index`` /
  ``ann_topk``).

Importing this package imports none of them (names below load lazily), and never torch.
"""

import importlib

_LAZY = {
    "UserTower": "export.runtime",
    "select_providers": "export.runtime",
    "max_over_interests_topk": "export.retrieval",
    "build_index": "export.retrieval",
    "ann_topk": "export.retrieval",
    "ann_recall": "export.retrieval",
    "recall_at_n": "export.retrieval",
    "retrieve": "export.retrieval",
    "export_user_tower": "export.onnx_export",
    "check_parity": "export.onnx_export",
    "ParityError": "export.onnx_export",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
