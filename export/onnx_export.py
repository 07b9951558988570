"""Export the user tower of a trained interest model (MIND, YouTubeDNN, ComiRec) to ONNX, with the item side, and check parity.

``export_user_tower(checkpoint, out_dir)`` (CLI: ``mind-recbole export --checkpoint FILE --out
DIR``) loads a RecBole checkpoint, writes the directory described in :mod:`export.artifacts` and
checks ONNX Runtime against PyTorch on shapes other than the export example
(:func:`check_parity`, in the spirit of Hugging Face optimum's ``validate_model_outputs``),
raising :class:`ParityError` when an output differs by more than ``atol + rtol x`` the output's
largest magnitude (float32 rounding depends on the CPU's vector width, and grows with the values).

Exporter choice
---------------
torch 2.13's ``torch.onnx.export`` defaults to the dynamo exporter (``torch.export`` + onnxscript).
We use it, with ``dynamic_shapes`` (named ``Dim("batch")`` and ``Dim("seq_len")``, the latter bounded
by the routing buffer) and save one self-contained file (weights inside, no ``.onnx.data`` side
file; a model over protobuf's 2 GB limit falls back to external data, with a warning). Two
deliberate departures from the defaults:

- ``optimize=False``, then only onnxscript's constant folding. The default onnxscript optimizer
  (onnxscript 0.7) has a no-op rewrite ``x + 0 -> x`` whose constant match uses
  ``math.isclose(..., abs_tol=1e-8)``; it deletes the ``+ 1e-9`` inside the capsule squash
  (``z / sqrt(|z|^2 + eps)``), so inactive interests (zero capsules) become ``0 / 0 = NaN`` in ONNX
  Runtime. Constant folding alone keeps the epsilon; ONNX Runtime optimises the graph at load.
- ``exporter="auto"`` (default) falls back to the legacy TorchScript exporter (``dynamo=False``,
  ``dynamic_axes``) if the dynamo export raises (the reason is logged at INFO level; torch 2.13's
  dynamo cannot trace the user-profile embedding of the ml-100k quickstart model, for one); ``exporter="dynamo"`` or
  ``"torchscript"`` forces one. The exporter used is recorded in the metadata.

Either way the graph has no random op: in eval mode the routing logits come from the buffer
``routing.eval_routing_logits`` ``[K, max_len]`` (checked: :func:`find_random_ops`). The graph
accepts histories up to that buffer's length (``max_graph_seq_length`` in the metadata); the runtime
keeps the ``max_seq_length`` most recent items, as training did.
"""

import datetime
import importlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export import artifacts

RANDOM_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}
)
EXPORTERS = ("auto", "dynamo", "torchscript")
PROTOBUF_LIMIT = 2**31 - 2**20  # a little under 2 GiB
ONNX_ELEMENT_TYPES = {"int64": onnx.TensorProto.INT64, "float32": onnx.TensorProto.FLOAT, "bool": onnx.TensorProto.BOOL}

logger = logging.getLogger(__name__)


class ParityError(ValueError):
    """ONNX Runtime and PyTorch disagree on an output by more than allowed (the mask: at all).

    Attributes: ``output_name``, ``max_abs_diff``, ``atol``, ``rtol``, ``scale`` (the largest
    |PyTorch value| of the worst case), ``allowed`` (``atol + rtol * scale``), ``case`` (the worst
    input case) and ``report`` (the :class:`ParityReport`, when raised by :func:`check_parity`).
    """

    def __init__(self, output_name, max_abs_diff, atol, case=None, report=None, rtol=0.0, scale=0.0):
        self.output_name = output_name
        self.max_abs_diff = float(max_abs_diff)
        self.atol, self.rtol, self.scale = float(atol), float(rtol), float(scale)
        self.allowed = self.atol + self.rtol * self.scale
        self.case = case
        self.report = report
        where = f" (worst case: {case})" if case else ""
        allowed = f"atol {self.atol:g}" if self.rtol == 0 else (
            f"{self.allowed:.3g} allowed (atol {self.atol:g} + rtol {self.rtol:g} x max |value| {self.scale:.3g})"
        )
        super().__init__(
            f"ONNX Runtime and PyTorch differ on output {output_name!r}: max abs difference "
            f"{self.max_abs_diff:.3g} > {allowed}{where}"
        )


class UnsupportedModelError(ValueError):
    """A checkpoint of a model that has no interest user tower to export (e.g. SASRec)."""


class ExportError(RuntimeError):
    """The exported graph is not what the runtime expects (inputs, outputs, random ops)."""


# ---------------------------------------------------------------------------------------------- wrapper
class UserTowerModule(nn.Module):
    """``(item_seq, item_seq_len) -> (interests, interest_mask)`` of a model in eval mode, as served.

    What the tower does to each history item alone (the item tower with its side features and, for
    MIND, the bilinear map ``S``) is computed once here for the whole catalogue
    (``model.serving_item_table()``), so the graph starts from one table lookup per item instead of
    pooling side features and multiplying by ``S`` per request (``results/serving.md`` has the
    speed-up); the rest is ``model.serving_interests``, which equals ``model.forward`` in eval mode
    (checked by :func:`check_parity` against ``model.forward`` itself).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.model.eval()
        with torch.no_grad():
            table = model.serving_item_table().detach().clone()  # [n_items D']
        table[0] = 0.0  # padding: contributes nothing, whatever the model's row 0 holds
        self.register_buffer("item_table", table)

    def forward(self, item_seq, item_seq_len):
        return self.model.serving_interests(self.item_table[item_seq], item_seq, item_seq_len)


class UserTowerWithProfileModule(UserTowerModule):
    """``(item_seq, item_seq_len, user_id) -> (interests, interest_mask)`` (user profile fields)."""

    def forward(self, item_seq, item_seq_len, user_id):
        return self.model.serving_interests(self.item_table[item_seq], item_seq, item_seq_len, user_id)


def wrap_user_tower(model):
    return UserTowerWithProfileModule(model) if model.uses_user_profile else UserTowerModule(model)


def input_names(model):
    return list(artifacts.graph_inputs(model.uses_user_profile))


def _n_users(model, n_users=None):
    return int(n_users) if n_users is not None else max(1, model.profile_user_count)


def example_inputs(model, n_users=None, seed=0):
    """The export example: batch 2, ``seq_len`` = max_seq_length, one full and one padded row."""
    generator = torch.Generator().manual_seed(seed)
    seq_len = max(2, model.max_seq_length)
    graph_max = model.max_history_length
    if graph_max is not None:
        seq_len = min(seq_len, graph_max)
    item_seq = torch.randint(1, max(2, model.n_items), (2, seq_len), generator=generator)
    item_seq_len = torch.tensor([seq_len, max(1, seq_len // 2)])
    item_seq[1, item_seq_len[1] :] = 0
    inputs = (item_seq, item_seq_len)
    if model.uses_user_profile:
        inputs += (torch.randint(0, max(1, _n_users(model, n_users)), (2,), generator=generator),)
    return inputs


# ---------------------------------------------------------------------------------------------- export
def _export_dynamo(wrapper, example, names, opset, graph_max):
    from onnxscript import optimizer

    batch = torch.export.Dim("batch")
    seq_len = torch.export.Dim("seq_len", max=graph_max) if graph_max else torch.export.Dim("seq_len")
    dynamic_shapes = {artifacts.INPUT_ITEM_SEQ: {0: batch, 1: seq_len}, artifacts.INPUT_ITEM_SEQ_LEN: {0: batch}}
    if artifacts.INPUT_USER_ID in names:
        dynamic_shapes[artifacts.INPUT_USER_ID] = {0: batch}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            wrapper,
            example,
            dynamo=True,
            optimize=False,  # see the module docstring: the default optimizer drops the squash epsilon
            dynamic_shapes=dynamic_shapes,
            input_names=names,
            output_names=[artifacts.OUTPUT_INTERESTS, artifacts.OUTPUT_MASK],
            opset_version=opset,
            external_data=False,
            verbose=False,
        )
    optimizer.fold_constants(program.model)
    optimizer.remove_unused_nodes(program.model)
    return program.model_proto


def _export_torchscript(wrapper, example, names, opset):
    dynamic_axes = {artifacts.INPUT_ITEM_SEQ: {0: "batch", 1: "seq_len"}, artifacts.OUTPUT_INTERESTS: {0: "batch"}, artifacts.OUTPUT_MASK: {0: "batch"}}
    for name in names[1:]:
        dynamic_axes[name] = {0: "batch"}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper,
            example,
            buffer,
            dynamo=False,
            input_names=names,
            output_names=[artifacts.OUTPUT_INTERESTS, artifacts.OUTPUT_MASK],
            dynamic_axes=dynamic_axes,
            opset_version=opset or 17,
            do_constant_folding=True,
        )
    return onnx.load_from_string(buffer.getvalue())


def export_graph(model, opset=None, exporter="auto", n_users=None):
    """Trace ``model``'s user tower to an ``onnx.ModelProto``; returns ``(proto, exporter_used)``."""
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    wrapper = wrap_user_tower(model).eval()
    names = input_names(model)
    example = example_inputs(model, n_users)
    graph_max = model.max_history_length
    with torch.no_grad():
        if exporter in ("auto", "dynamo"):
            try:
                proto = _export_dynamo(wrapper, example, names, opset, graph_max)
                return proto, "dynamo"
            except Exception as error:  # noqa: BLE001 - any dynamo failure -> documented fallback
                if exporter == "dynamo":
                    raise
                # documented behaviour, not a problem: the summary and the metadata name the exporter
                logger.info("dynamo ONNX export failed (%s: %s); using the TorchScript exporter", type(error).__name__, error)
        return _export_torchscript(wrapper, example, names, opset), "torchscript"


def find_random_ops(proto):
    """Names of random-number ops (``RandomNormal*``, ``RandomUniform*``, ...) in the graph or its functions."""
    nodes = list(proto.graph.node) + [node for function in proto.functions for node in function.node]
    return sorted({node.op_type for node in nodes if node.op_type in RANDOM_OPS})


def _dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def check_exported_graph(proto, interest_num, embedding_size):
    """Raise :class:`ExportError` unless the graph's inputs and outputs are those of
    :data:`export.artifacts.GRAPH_SIGNATURE` (names, element types, every dimension)."""
    sizes = {artifacts.META_INTEREST_NUM: interest_num, artifacts.META_EMBEDDING_SIZE: embedding_size}
    graph_inputs = {i.name: i for i in proto.graph.input}
    graph_outputs = {o.name: o for o in proto.graph.output}
    expected_inputs = artifacts.graph_inputs(artifacts.INPUT_USER_ID in graph_inputs)
    for kind, expected, actual in (("input", expected_inputs, graph_inputs), ("output", artifacts.GRAPH_OUTPUTS, graph_outputs)):
        if set(expected) != set(actual):
            raise ExportError(f"graph {kind}s are {sorted(actual)}, expected {sorted(expected)}")
        for name, (element_type, dims) in expected.items():
            dims = [sizes.get(dim, dim) for dim in dims]
            dtype = ONNX_ELEMENT_TYPES[element_type]
            got = (actual[name].type.tensor_type.elem_type, _dims(actual[name]))
            if got != (dtype, dims):
                raise ExportError(
                    f"graph {kind} {name!r} is {onnx.TensorProto.DataType.Name(got[0])} {got[1]}, "
                    f"expected {onnx.TensorProto.DataType.Name(dtype)} {dims}"
                )


# ---------------------------------------------------------------------------------------------- metadata
def _version(package):
    """The installed version of ``package`` (the name it is imported by)."""
    try:
        module = importlib.import_module(package)
    except ImportError:
        return "not installed"
    return str(getattr(module, "__version__", "unknown"))


def build_metadata(model, dataset_name, exporter, checkpoint=None):
    """The ``metadata_props`` of ``user_tower.onnx`` (every value a string)."""
    routing_iterations = getattr(model, "routing_iterations", None)
    attention_pow = getattr(model, "attention_pow", None)
    graph_max = model.max_history_length
    return {
        artifacts.META_MODEL: type(model).__name__,
        artifacts.META_INTEREST_NUM: str(int(model.interest_num)),
        artifacts.META_EMBEDDING_SIZE: str(int(model.embedding_size)),
        artifacts.META_MAX_SEQ_LENGTH: str(int(model.max_seq_length)),
        artifacts.META_MAX_GRAPH_SEQ_LENGTH: "" if graph_max is None else str(graph_max),
        artifacts.META_ROUTING_ITERATIONS: artifacts.NOT_APPLICABLE if routing_iterations is None else str(int(routing_iterations)),
        artifacts.META_ATTENTION_POW: artifacts.NOT_APPLICABLE if attention_pow is None else str(float(attention_pow)),
        artifacts.META_DATASET: str(dataset_name),
        artifacts.META_N_ITEMS: str(int(model.n_items)),
        artifacts.META_USES_USER_ID: "true" if model.uses_user_profile else "false",
        artifacts.META_ITEM_ID_FIELD: str(model.ITEM_ID),
        artifacts.META_EXPORTER: exporter,
        artifacts.META_EXPORT_TIME: datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        artifacts.META_CHECKPOINT: "" if checkpoint is None else Path(checkpoint).name,
        artifacts.META_CHECKPOINT_SHA256: checkpoint_sha256(checkpoint),
        **{key: _version(package) for key, package in artifacts.META_VERSIONS.items()},
    }


def checkpoint_sha256(checkpoint):
    """SHA-256 of the checkpoint file ("" when exporting an in-memory model or the file is gone)."""
    if checkpoint is None or not Path(checkpoint).is_file():
        return ""
    return artifacts.file_digest(checkpoint)["sha256"]


def set_metadata(proto, metadata):
    """Merge ``metadata`` into the model's ``metadata_props`` (ours win)."""
    merged = {prop.key: prop.value for prop in proto.metadata_props}
    merged.update(metadata)
    onnx.helper.set_model_props(proto, merged)
    proto.doc_string = f"{metadata.get(artifacts.META_MODEL, 'user')} user tower exported by mind-recbole"


# ---------------------------------------------------------------------------------------------- parity
@dataclass
class ParityCase:
    name: str
    batch: int
    seq_len: int
    max_abs_diff: dict  # output name -> max abs difference (mask: 1.0 where any entry differs)
    scale: float = 0.0  # largest |value| of PyTorch's interests in this case


@dataclass
class ParityReport:
    """ONNX Runtime vs PyTorch over several input cases; ``max_abs_diff`` per output.

    A case passes when its ``interests`` differ by at most ``atol + rtol * scale`` (``scale``: the
    case's largest |PyTorch value|; float32 rounding errors grow with the magnitudes summed, and
    their pattern depends on the CPU's vector width) and its ``interest_mask`` is identical.
    """

    atol: float
    rtol: float = 0.0
    cases: list = field(default_factory=list)

    def allowed(self, case):
        return self.atol + self.rtol * case.scale

    @property
    def max_abs_diff(self):
        outputs = (artifacts.OUTPUT_INTERESTS, artifacts.OUTPUT_MASK)
        return {o: max((c.max_abs_diff[o] for c in self.cases), default=0.0) for o in outputs}

    @property
    def max_scale(self):
        return max((c.scale for c in self.cases), default=0.0)

    def worst_case(self, output):
        """The case furthest over its allowance (``interests``) or with the largest difference (the mask)."""
        if output == artifacts.OUTPUT_INTERESTS:
            return max(self.cases, key=lambda c: c.max_abs_diff[output] - self.allowed(c))
        return max(self.cases, key=lambda c: c.max_abs_diff[output])

    @property
    def interests_passed(self):
        return all(c.max_abs_diff[artifacts.OUTPUT_INTERESTS] <= self.allowed(c) for c in self.cases)

    @property
    def passed(self):
        return self.interests_passed and self.max_abs_diff[artifacts.OUTPUT_MASK] == 0.0

    def to_dict(self):
        return {
            "atol": self.atol,
            "rtol": self.rtol,
            "passed": self.passed,
            "max_abs_diff": self.max_abs_diff,
            "cases": [
                {"name": c.name, "batch": c.batch, "seq_len": c.seq_len, **c.max_abs_diff, "scale": c.scale, "allowed": self.allowed(c)}
                for c in self.cases
            ],
        }

    def __str__(self):
        diffs = self.max_abs_diff
        shapes = sorted({(c.batch, c.seq_len) for c in self.cases})
        return (
            f"parity ONNX Runtime vs PyTorch over {len(self.cases)} cases "
            f"(batch x seq_len: {', '.join(f'{b}x{s}' for b, s in shapes)}): "
            f"{artifacts.OUTPUT_INTERESTS} max abs diff {diffs[artifacts.OUTPUT_INTERESTS]:.3g} "
            f"(allowed atol {self.atol:g} + rtol {self.rtol:g} x max |value|, at most {self.max_scale:.3g}), "
            f"{artifacts.OUTPUT_MASK} {'identical' if diffs[artifacts.OUTPUT_MASK] == 0 else 'DIFFERS'}"
            f" -> {'ok' if self.passed else 'FAILED'}"
        )


def _max_abs_diff(actual, expected):
    """NaN-aware: a NaN on one side only (or a shape mismatch) is an infinite difference."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    if actual.shape != expected.shape:
        return float("inf")
    if actual.dtype == np.bool_ or expected.dtype == np.bool_:
        return float(np.any(actual != expected))
    actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    nan_a, nan_e = np.isnan(actual), np.isnan(expected)
    if np.any(nan_a != nan_e):
        return float("inf")
    diff = np.abs(np.where(nan_a, 0.0, actual) - np.where(nan_e, 0.0, expected))
    return float(diff.max()) if diff.size else 0.0


def parity_cases(n_items, max_seq_length, batch_sizes=(1, 3, 17), lengths=None, n_users=None, seed=0):
    """Input cases: every batch size x length (full rows), mixed-length padded rows, 1-item histories.

    Returns a list of ``(name, item_seq, item_seq_len, user_id or None)`` int64 arrays.
    """
    rng = np.random.default_rng(seed)
    lengths = sorted({int(min(max(1, l), max_seq_length)) for l in (lengths or (1, 2, 7, max_seq_length))})
    high = max(2, n_items)

    def users(batch):
        if n_users is None:
            return None
        ids = rng.integers(0, max(1, n_users), batch)
        ids[0] = 0 if batch > 1 else ids[0]  # an unknown user (padding id) in multi-row cases
        return ids.astype(np.int64)

    cases = []
    for batch in batch_sizes:
        for length in lengths:
            seq = rng.integers(1, high, (batch, length)).astype(np.int64)
            cases.append((f"full b={batch} L={length}", seq, np.full(batch, length, np.int64), users(batch)))
    batch = max(max(batch_sizes), 2)
    seq_lens = rng.integers(1, max_seq_length + 1, batch).astype(np.int64)
    seq_lens[0], seq_lens[1] = 1, max_seq_length
    seq = rng.integers(1, high, (batch, max_seq_length)).astype(np.int64)
    seq[np.arange(max_seq_length)[None, :] >= seq_lens[:, None]] = 0
    cases.append((f"padded mixed lengths b={batch}", seq, seq_lens, users(batch)))
    seq = np.zeros((3, max_seq_length), np.int64)
    seq[:, 0] = rng.integers(1, high, 3)
    cases.append(("1-item histories padded", seq, np.ones(3, np.int64), users(3)))
    return cases


def check_parity(
    onnx_path,
    model,
    atol=artifacts.PARITY_ATOL,
    rtol=artifacts.PARITY_RTOL,
    batch_sizes=(1, 3, 17),
    lengths=None,
    n_users=None,
    seed=0,
    raise_on_failure=True,
):
    """Run ONNX Runtime (CPU) and PyTorch on the same inputs; report the max abs difference per output.

    Cases: batch sizes ``batch_sizes`` x history lengths ``lengths`` (default 1, 2, 7 and
    ``model.max_seq_length``), a batch of padded rows of mixed lengths, and padded 1-item
    histories; none is the export example (batch 2). ``interests`` must agree within ``atol + rtol x``
    the case's largest |PyTorch value| and ``interest_mask`` exactly, else :class:`ParityError`
    (unless ``raise_on_failure`` is False).

    Returns a :class:`ParityReport`.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed_names = [i.name for i in session.get_inputs()]
    profile = artifacts.INPUT_USER_ID in feed_names
    cases = parity_cases(
        model.n_items, model.max_seq_length, batch_sizes, lengths, _n_users(model, n_users) if profile else None, seed
    )
    model.eval()
    report = ParityReport(atol=float(atol), rtol=float(rtol))
    for name, seq, seq_len, users in cases:
        feed = {artifacts.INPUT_ITEM_SEQ: seq, artifacts.INPUT_ITEM_SEQ_LEN: seq_len}
        if profile:
            feed[artifacts.INPUT_USER_ID] = users
        onnx_interests, onnx_mask = session.run([artifacts.OUTPUT_INTERESTS, artifacts.OUTPUT_MASK], feed)
        with torch.no_grad():
            torch_interests, torch_mask = model.forward(
                torch.from_numpy(seq), torch.from_numpy(seq_len), torch.from_numpy(users) if profile else None
            )
        expected = torch_interests.cpu().numpy()
        report.cases.append(
            ParityCase(
                name,
                seq.shape[0],
                seq.shape[1],
                {
                    artifacts.OUTPUT_INTERESTS: _max_abs_diff(onnx_interests, expected),
                    artifacts.OUTPUT_MASK: _max_abs_diff(onnx_mask, torch_mask.cpu().numpy()),
                },
                float(np.nanmax(np.abs(expected), initial=0.0)),
            )
        )
    if raise_on_failure and not report.passed:
        raise parity_error(report)
    return report


def parity_error(report):
    """The :class:`ParityError` for a failed report (``interests`` first, then the mask)."""
    if not report.interests_passed:
        case = report.worst_case(artifacts.OUTPUT_INTERESTS)
        diff = case.max_abs_diff[artifacts.OUTPUT_INTERESTS]
        return ParityError(artifacts.OUTPUT_INTERESTS, diff, report.atol, case.name, report, report.rtol, case.scale)
    case = report.worst_case(artifacts.OUTPUT_MASK)
    return ParityError(artifacts.OUTPUT_MASK, case.max_abs_diff[artifacts.OUTPUT_MASK], 0.0, case.name, report)


# ---------------------------------------------------------------------------------------------- driver
@dataclass
class ExportResult:
    out_dir: Path
    onnx_path: Path
    metadata: dict
    parity: ParityReport = None
    files: list = field(default_factory=list)
    quantization: object = None  # export.quantize.OverlapReport with --quantize int8

    def summary(self):
        m = self.metadata
        lines = [
            f"exported {m[artifacts.META_MODEL]} user tower ({m[artifacts.META_EXPORTER]} exporter, opset {m.get(artifacts.META_OPSET, '?')}) "
            f"to {self.out_dir}",
            f"  K={m[artifacts.META_INTEREST_NUM]} D={m[artifacts.META_EMBEDDING_SIZE]} max_seq_length={m[artifacts.META_MAX_SEQ_LENGTH]} "
            f"items={m[artifacts.META_N_ITEMS]} dataset={m[artifacts.META_DATASET]} user_id input={m[artifacts.META_USES_USER_ID]}",
            "  files: " + ", ".join(Path(f).name for f in self.files),
        ]
        if self.parity is not None:
            lines.append("  " + str(self.parity))
        if self.quantization is not None:
            lines.append("  " + str(self.quantization))
        return "\n".join(lines)


def item_tokens(dataset):
    """Internal item id -> dataset token (index 0 is ``[PAD]``)."""
    return [str(token) for token in dataset.field2id_token[dataset.iid_field]]


def save_onnx(proto, path):
    """One self-contained file; external data (``<name>.data``) only past protobuf's 2 GB limit."""
    path = Path(path)
    if proto.ByteSize() > PROTOBUF_LIMIT:
        warnings.warn(f"{path.name} is over 2 GB: weights go to {path.name}.data beside it", stacklevel=2)
        onnx.save_model(proto, str(path), save_as_external_data=True, location=f"{path.name}.data")
        onnx.checker.check_model(str(path))
    else:
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(path))


def export_model(
    model, dataset, out_dir, opset=None, atol=artifacts.PARITY_ATOL, exporter="auto", checkpoint=None, check=True, quantize=None,
    rtol=artifacts.PARITY_RTOL,
):
    """Export an in-memory model (see :func:`export_user_tower`); the model is moved to CPU, eval mode.

    The files are written to a temporary folder beside ``out_dir`` that replaces ``out_dir`` only
    once everything, the parity check included, succeeded: ``out_dir`` is a complete export or
    stays as it was (absent, or the previous export).
    """
    out_dir = Path(out_dir)
    check_exportable(model)
    check_quantization(quantize)
    check_out_dir(out_dir)
    with staged_folder(out_dir) as staging:
        result = _write_export(model, dataset, staging, opset, atol, rtol, exporter, checkpoint, check, quantize)
    result.out_dir, result.onnx_path = out_dir, out_dir / result.onnx_path.name
    result.files = [out_dir / Path(f).name for f in result.files]
    return result


def check_out_dir(out_dir):
    """``out_dir`` is replaced whole: it must be absent, empty, or an earlier export."""
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"--out {out_dir}: exists and is not a folder; give a folder for the export")
    strangers = sorted(p.name for p in out_dir.iterdir() if p.name not in artifacts.EXPORT_FILES) if out_dir.is_dir() else []
    if strangers:
        raise FileExistsError(
            f"--out {out_dir}: the folder holds files that are not part of an export ({', '.join(strangers[:5])}); "
            "give a new folder, or one an earlier export wrote"
        )


def check_quantization(quantize):
    from export.quantize import QUANTIZATIONS

    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS} (or none), got {quantize!r}")


def check_exportable(model):
    """Raise :class:`UnsupportedModelError` for a model without an interest user tower."""
    from mind_recbole.model.base import InterestRecommender

    if not isinstance(model, InterestRecommender):
        raise UnsupportedModelError(
            f"cannot export a {type(model).__name__} model: export takes a checkpoint of an interest model (MIND, YouTubeDNN, ComiRecSA, ComiRecDR) "
            "(a user tower of interest vectors scored by max over interests)"
        )


@contextmanager
def staged_folder(out_dir):
    """A fresh folder beside ``out_dir`` that replaces it when the block succeeds; removed if it fails."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        yield staging
        previous = None
        if out_dir.exists():
            previous = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.replace(out_dir, previous)
        try:
            os.replace(staging, out_dir)
        except OSError:
            if previous is not None:
                os.replace(previous, out_dir)
            raise
        if previous is not None:
            shutil.rmtree(previous, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _write_export(model, dataset, out_dir, opset, atol, rtol, exporter, checkpoint, check, quantize=None):
    """Write the export into the (empty) folder ``out_dir``; its :class:`ExportResult`.

    The item and user files are written first, so that ``user_tower.onnx`` can record their sizes
    and SHA-256 (``file_digests``), which the runtime checks; ``manifest.json`` then lists every file.
    """
    model = model.to("cpu").eval()
    n_users = dataset.user_num if model.uses_user_profile else None

    with torch.no_grad():
        item_vectors = model.all_item_vectors().detach().cpu().numpy().astype(np.float32)
    tokens = item_tokens(dataset)
    if len(tokens) != item_vectors.shape[0]:
        raise ExportError(f"{len(tokens)} item tokens for {item_vectors.shape[0]} item vectors")
    np.save(out_dir / artifacts.ITEM_EMBEDDINGS_FILE, item_vectors)
    (out_dir / artifacts.ITEM_TOKENS_FILE).write_text(json.dumps(tokens))
    side_files = [out_dir / artifacts.ITEM_EMBEDDINGS_FILE, out_dir / artifacts.ITEM_TOKENS_FILE]
    if n_users is not None:
        users = [str(token) for token in dataset.field2id_token[dataset.uid_field]]
        (out_dir / artifacts.USER_TOKENS_FILE).write_text(json.dumps(users))
        side_files.append(out_dir / artifacts.USER_TOKENS_FILE)

    proto, exporter_used = export_graph(model, opset=opset, exporter=exporter, n_users=n_users)
    check_exported_graph(proto, int(model.interest_num), int(model.embedding_size))
    random_ops = find_random_ops(proto)
    if random_ops:
        raise ExportError(f"the exported graph has random ops {random_ops}; export a model in eval mode")
    metadata = build_metadata(model, dataset.dataset_name, exporter_used, checkpoint)
    metadata[artifacts.META_OPSET] = str(next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), ""))
    digests = {path.name: artifacts.file_digest(path) for path in side_files}  # reused by the manifest
    metadata[artifacts.META_FILE_DIGESTS] = json.dumps(digests)
    set_metadata(proto, metadata)
    onnx_path = out_dir / artifacts.ONNX_FILE
    save_onnx(proto, onnx_path)
    files = [onnx_path, *side_files]

    result = ExportResult(out_dir, onnx_path, metadata, files=files)
    if check:
        result.parity = check_parity(onnx_path, model, atol=atol, rtol=rtol, n_users=n_users, raise_on_failure=False)
    report = {"metadata": metadata, "parity": result.parity.to_dict() if result.parity else None}
    if result.parity is not None and not result.parity.passed:
        (out_dir / artifacts.REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
        raise parity_error(result.parity)
    if quantize:
        result.quantization = _write_int8_tower(onnx_path, out_dir, item_vectors, model, n_users)
        report["int8"] = result.quantization.to_dict()
        result.files.append(out_dir / artifacts.INT8_ONNX_FILE)
    (out_dir / artifacts.REPORT_FILE).write_text(json.dumps(report, indent=2) + "\n")
    result.files.append(out_dir / artifacts.REPORT_FILE)
    manifest = {
        "files": {path.name: digests.get(path.name) or artifacts.file_digest(path) for path in result.files},
        "checkpoint": {"name": metadata[artifacts.META_CHECKPOINT], "sha256": metadata[artifacts.META_CHECKPOINT_SHA256]},
        "versions": {key: metadata[key] for key in artifacts.META_VERSIONS},
    }
    (out_dir / artifacts.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    result.files.append(out_dir / artifacts.MANIFEST_FILE)
    return result


def _write_int8_tower(onnx_path, out_dir, item_vectors, model, n_users):
    """``user_tower.int8.onnx`` and its top-50 overlap with the float tower (warns below
    :data:`export.quantize.MIN_OVERLAP`)."""
    import onnxruntime as ort

    from export.quantize import MIN_OVERLAP, quantize_tower, ranking_overlap

    int8_path = quantize_tower(onnx_path, out_dir / artifacts.INT8_ONNX_FILE)
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sessions = [ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]) for path in (onnx_path, int8_path)]
    cases = parity_cases(model.n_items, model.max_seq_length, (1, 3, 64), n_users=_n_users(model, n_users) if n_users else None)
    overlap = ranking_overlap(*sessions, item_vectors, cases)
    if overlap.mean_overlap < MIN_OVERLAP:
        warnings.warn(f"{overlap}: below {MIN_OVERLAP}; serve the float tower", stacklevel=3)
    return overlap


def export_user_tower(
    checkpoint, out_dir, opset=None, atol=artifacts.PARITY_ATOL, exporter="auto", check=True, quantize=None,
    rtol=artifacts.PARITY_RTOL,
):
    """Load a RecBole checkpoint of an interest model (MIND, YouTubeDNN, ComiRec) and export its serving artefacts to ``out_dir``.

    Writes ``user_tower.onnx`` (metadata inside), ``item_embeddings.npy``, ``item_tokens.json``
    (``user_tokens.json`` for user-profile models) and ``export_report.json``; then runs
    :func:`check_parity` (``atol``, ``rtol``) and raises :class:`ParityError` if it fails. ``opset`` None
    is torch's default. Returns an :class:`ExportResult` (``.summary()`` prints well).
    """
    from mind_recbole import load_data_and_model

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"checkpoint not found: {checkpoint}")
    check_quantization(quantize)
    check_out_dir(Path(out_dir))  # before the (slow) loading
    _config, model, dataset, *_ = load_data_and_model(str(checkpoint), state="WARNING")
    return export_model(
        model, dataset, out_dir, opset=opset, atol=atol, exporter=exporter, checkpoint=checkpoint, check=check,
        quantize=quantize, rtol=rtol,
    )
