"""The layout of an exported model directory, shared by the exporter and the runtime (standard library only).

``DIR/user_tower.onnx``
    inputs ``item_seq`` int64 ``[batch, seq_len]`` (internal item ids, oldest first, padding 0
    after), ``item_seq_len`` int64 ``[batch]`` and, when the model embeds user profile fields,
    ``user_id`` int64 ``[batch]``; outputs ``interests`` float32 ``[batch, K, D]`` and
    ``interest_mask`` bool ``[batch, K]``. Metadata (``metadata_props``, read with onnxruntime's
    ``session.get_modelmeta().custom_metadata_map``) under the keys below.
``DIR/user_tower.int8.onnx``
    Only with ``export --quantize int8``: the same graph with int8 weights in its matrix products
    (same inputs, outputs and metadata, plus ``quantization: int8``); see :mod:`export.quantize`.
``DIR/item_embeddings.npy``
    float32 ``[n_items, D]``, the item tower over the catalogue (side features included; row 0 is
    padding).
``DIR/item_tokens.json``
    JSON list, internal item id -> dataset token (the ASIN for Amazon data); index 0 is ``[PAD]``.
``DIR/user_tokens.json``
    Only for models with user profile fields: internal user id -> user token.
``DIR/export_report.json``
    The metadata and the parity check's result (informational).
``DIR/manifest.json``
    Size and SHA-256 of every file of the directory (``user_tower.onnx`` included), the checkpoint's
    name and SHA-256, the package versions. ``user_tower.onnx`` itself records the sizes and SHA-256
    of the item and user files (``file_digests``), which the runtime checks at load.
``DIR/item_index.faiss``, ``DIR/item_index.json``
    Only after ``mind-recbole index``: a faiss index over the item vectors and its sidecar (kind,
    settings, the SHA-256 of the embeddings it indexes and of the index file); see
    :mod:`export.ann_index`. A new export into the directory drops them.

The error types below are shared by the runtime and retrieval (all are ``ValueError`` subclasses,
so the ``mind-recbole`` command reports them as errors with exit status 2):

- :class:`ArtifactError`: a file of the directory is unreadable, malformed, or disagrees with
  another (``path``, ``field``);
- :class:`InputError` and its subclasses: a request that cannot be served (``rows``: the batch
  rows at fault): :class:`EmptyHistoryError`, :class:`UnknownItemError`, :class:`ItemIdError`.
"""

import hashlib
from pathlib import Path

# The parity check's defaults (export_report.json records those used): interests may differ by
# PARITY_ATOL + PARITY_RTOL x the case's largest |value| (float32 rounding grows with the values).
PARITY_ATOL = 1e-5
PARITY_RTOL = 1e-4

ONNX_FILE = "user_tower.onnx"
INT8_ONNX_FILE = "user_tower.int8.onnx"  # written by ``export --quantize int8`` (export/quantize.py)
ITEM_EMBEDDINGS_FILE = "item_embeddings.npy"
ITEM_TOKENS_FILE = "item_tokens.json"
USER_TOKENS_FILE = "user_tokens.json"
REPORT_FILE = "export_report.json"
MANIFEST_FILE = "manifest.json"
ITEM_INDEX_FILE = "item_index.faiss"  # written by ``mind-recbole index`` (export/ann_index.py)
ITEM_INDEX_SIDECAR_FILE = "item_index.json"  # the index's kind, settings and digests
EXPORT_FILES = (ONNX_FILE, f"{ONNX_FILE}.data", INT8_ONNX_FILE, ITEM_EMBEDDINGS_FILE, ITEM_TOKENS_FILE, USER_TOKENS_FILE, REPORT_FILE,
                MANIFEST_FILE, ITEM_INDEX_FILE, ITEM_INDEX_SIDECAR_FILE)  # everything an export folder may hold (.data: weights past protobuf's 2 GB)
# Files whose size and SHA-256 user_tower.onnx records (META_FILE_DIGESTS): the runtime refuses any
# that differ, so embeddings or tokens of another export, or altered bytes, are never served.
DIGESTED_FILES = (ITEM_EMBEDDINGS_FILE, ITEM_TOKENS_FILE, USER_TOKENS_FILE)

INPUT_ITEM_SEQ = "item_seq"
INPUT_ITEM_SEQ_LEN = "item_seq_len"
INPUT_USER_ID = "user_id"
OUTPUT_INTERESTS = "interests"
OUTPUT_MASK = "interest_mask"

PAD_TOKEN = "[PAD]"

# metadata keys (all values are strings, as ONNX metadata_props require)
META_MODEL = "model"  # MIND, YouTubeDNN, ComiRecSA or ComiRecDR
META_INTEREST_NUM = "interest_num"  # K
META_EMBEDDING_SIZE = "embedding_size"  # D
META_MAX_SEQ_LENGTH = "max_seq_length"  # MAX_ITEM_LIST_LENGTH of training: the runtime keeps this many recent items
META_MAX_GRAPH_SEQ_LENGTH = "max_graph_seq_length"  # longest seq_len the graph accepts ("" = unbounded)
META_ROUTING_ITERATIONS = "routing_iterations"  # "n/a" for models without routing
META_ATTENTION_POW = "attention_pow"  # training-only setting, recorded for provenance
META_DATASET = "dataset"
META_N_ITEMS = "n_items"  # rows of item_embeddings.npy, padding included
META_USES_USER_ID = "uses_user_id"  # "true" when user_tower.onnx has the user_id input
META_ITEM_ID_FIELD = "item_id_field"
META_EXPORTER = "exporter"  # dynamo or torchscript
META_OPSET = "opset"  # the default-domain ONNX opset of the graph
META_EXPORT_TIME = "export_time"  # ISO 8601, UTC
META_CHECKPOINT = "checkpoint"
META_CHECKPOINT_SHA256 = "checkpoint_sha256"  # of the checkpoint file exported
META_FILE_DIGESTS = "file_digests"  # JSON {file name: {"bytes": n, "sha256": hex}} of the DIGESTED_FILES written
META_VERSIONS = {  # metadata key -> the package whose version it records
    "mind_recbole_version": "mind_recbole", "torch_version": "torch", "recbole_version": "recbole",
    "onnx_version": "onnx", "onnxscript_version": "onnxscript",
}

REQUIRED_METADATA = (META_INTEREST_NUM, META_EMBEDDING_SIZE, META_MAX_SEQ_LENGTH)
NOT_APPLICABLE = "n/a"

# The user tower's signature, checked by the exporter against the graph it wrote
# (export.onnx_export.check_exported_graph: every dimension) and by the runtime against the graph it
# loads (export.runtime.check_session_graph: names, element types, ranks). Dimensions are named
# ("batch", "seq_len": dynamic) or metadata keys whose values they equal.
GRAPH_INPUTS = {INPUT_ITEM_SEQ: ("int64", ("batch", "seq_len")), INPUT_ITEM_SEQ_LEN: ("int64", ("batch",))}
PROFILE_INPUTS = {INPUT_USER_ID: ("int64", ("batch",))}  # models with user profile fields only
GRAPH_OUTPUTS = {
    OUTPUT_INTERESTS: ("float32", ("batch", META_INTEREST_NUM, META_EMBEDDING_SIZE)),
    OUTPUT_MASK: ("bool", ("batch", META_INTEREST_NUM)),
}
GRAPH_SIGNATURE = (
    "inputs item_seq int64 [batch, seq_len], item_seq_len int64 [batch] (and user_id int64 [batch] "
    "for profile models); outputs interests float32 [batch, K, D], interest_mask bool [batch, K]"
)


def graph_inputs(uses_user_profile):
    """The graph's inputs, in order, for a model with or without user profile fields."""
    return {**GRAPH_INPUTS, **(PROFILE_INPUTS if uses_user_profile else {})}


# ---------------------------------------------------------------------------------------------- errors
class ArtifactError(ValueError):
    """A file of an exported directory is corrupt, malformed, or from another model than its siblings.

    Attributes: ``path`` (the file at fault, as given), ``field`` (the metadata key, array row or
    JSON entry concerned, or None). The message starts with the path.
    """

    def __init__(self, path, message, field=None):
        self.path = str(path)
        self.field = field
        super().__init__(f"{path}: {message}")


class InputError(ValueError):
    """A request the user tower cannot serve; ``rows`` are the offending batch rows (0-based, sorted)."""

    def __init__(self, message, rows=()):
        self.rows = sorted({int(row) for row in rows})
        super().__init__(message)


class EmptyHistoryError(InputError):
    """One or more histories are empty (or have no known item left after ``on_unknown="skip"``)."""


class UnknownItemError(InputError):
    """Item tokens not in ``item_tokens.json``; ``tokens`` lists them (first-seen order)."""

    def __init__(self, message, tokens=(), rows=()):
        self.tokens = list(tokens)
        super().__init__(message, rows)


class ItemIdError(InputError):
    """Internal item (or user) ids out of range; ``first`` is ``(row, position, value)`` of the first one."""

    def __init__(self, message, rows=(), first=None):
        self.first = first
        super().__init__(message, rows)


def file_digest(path, block_size=1 << 20):
    """``{"bytes": size, "sha256": hex digest}`` of the file at ``path`` (read in blocks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(block_size), b""):
            digest.update(block)
    return {"bytes": Path(path).stat().st_size, "sha256": digest.hexdigest()}


MAX_LISTED = 20  # rows / tokens named in one error message


def listed(items, limit=MAX_LISTED):
    """``'a, b, c'`` with at most ``limit`` items, then ``' and N more'`` (for error messages)."""
    items = [str(item) for item in items]
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
