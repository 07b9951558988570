"""An int8 user tower beside the float one: ONNX Runtime's dynamic quantization (no torch).

``mind-recbole export --quantize int8`` writes ``user_tower.int8.onnx`` next to ``user_tower.onnx``:
the weights of the tower's ReLU layer(s) are stored as int8 with one scale per output channel, and
their inputs are quantized on the fly (``onnxruntime.quantization.quantize_dynamic``,
``QuantType.QInt8``, ``per_channel``). The last weight product, the projection that gives the
interest vectors their scale, stays float: on amazon-beauty's test users it lifts the top-50
overlap with the float tower from 0.9902 to 0.9910 (per-tensor scales everywhere: 0.9893). The
routing's history-by-capsule products have no constant weight and stay float; so does the item
table (a quantized Gather was slower here).

The int8 tower is checked against the float one where it matters, the served ranking: both
towers encode the same histories, both rankings (exact ``max_k`` top-``topk`` over the export's
item vectors) are compared, and the mean overlap is recorded in ``export_report.json``
(:func:`ranking_overlap`). ``UserTower(model_dir, precision="int8")`` (CLI ``--precision int8``)
serves it; the float tower stays the reference.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from export import artifacts

QUANTIZATIONS = ("int8",)
QUANTIZED_OPS = ["MatMul", "Gemm"]
META_QUANTIZATION = "quantization"  # "int8" in the quantized graph's metadata
# Export warns below this top-50 overlap with the float tower. Its check uses random histories, which
# overlap a little less than real ones (0.9898 against 0.9910 on amazon-beauty's test users, whose figure
# benchmarks/serving.py --checkpoint reports): the warning is for a quantization gone wrong, not a fine margin.
MIN_OVERLAP = 0.95


@dataclass
class OverlapReport:
    """How often the int8 tower's top-``topk`` holds the float tower's items (mean over histories)."""

    topk: int
    histories: int
    mean_overlap: float
    min_overlap: float

    def to_dict(self):
        return {"topk": self.topk, "histories": self.histories, "mean_overlap": self.mean_overlap, "min_overlap": self.min_overlap}

    def __str__(self):
        return (
            f"int8 tower: top-{self.topk} overlap with the float tower {self.mean_overlap:.4f} on average "
            f"(lowest {self.min_overlap:.2f}) over {self.histories} histories"
        )


def quantize_tower(onnx_path, out_path):
    """Write the dynamically quantized (int8 weights) copy of ``onnx_path`` to ``out_path``, with
    ``onnx_path``'s metadata plus ``quantization: int8``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    source = onnx.load(str(onnx_path))
    quantization_log = logging.getLogger()  # quantize_dynamic warns on the root logger about an optional pre-pass
    level = quantization_log.level
    quantization_log.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(onnx_path), str(out_path), weight_type=QuantType.QInt8, op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True, nodes_to_exclude=weight_products(source)[-1:],
        )
    finally:
        quantization_log.setLevel(level)
    metadata = {prop.key: prop.value for prop in source.metadata_props}
    proto = onnx.load(str(out_path))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {**metadata, META_QUANTIZATION: "int8"})
    onnx.checker.check_model(proto)
    onnx.save_model(proto, str(out_path))
    return Path(out_path)


def weight_products(proto):
    """Names of the graph's matrix products by a constant weight (the tower's layers), in graph order."""
    weights = {initializer.name for initializer in proto.graph.initializer}
    weights |= {node.output[0] for node in proto.graph.node if node.op_type == "Constant"}
    return [node.name for node in proto.graph.node if node.op_type in QUANTIZED_OPS and any(i in weights for i in node.input)]


def ranking_overlap(float_session, int8_session, item_vectors, cases, topk=50):
    """Mean and lowest overlap of the two towers' top-``topk`` (exact ``max_k``, padding excluded):
    per history, the share of the float tower's items that the int8 tower also ranks
    (:func:`export.retrieval.user_recalls`).

    ``cases``: ``(name, item_seq, item_seq_len, user_id or None)`` as
    :func:`export.onnx_export.parity_cases` gives them.
    """
    from export.retrieval import max_over_interests_topk, user_recalls

    names = [i.name for i in float_session.get_inputs()]
    overlaps = []
    for _name, seq, seq_len, users in cases:
        feed = {artifacts.INPUT_ITEM_SEQ: seq, artifacts.INPUT_ITEM_SEQ_LEN: seq_len}
        if artifacts.INPUT_USER_ID in names:
            feed[artifacts.INPUT_USER_ID] = users
        exact, quantized = (
            max_over_interests_topk(*session.run([artifacts.OUTPUT_INTERESTS, artifacts.OUTPUT_MASK], feed), item_vectors, topk).ids
            for session in (float_session, int8_session)
        )
        overlaps.append(user_recalls(quantized, exact))
    overlaps = np.concatenate(overlaps)
    return OverlapReport(int(min(topk, len(item_vectors))), len(overlaps), float(np.mean(overlaps)), float(np.min(overlaps)))
