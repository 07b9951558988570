"""Serve an exported user tower with ONNX Runtime: item tokens in, interests out (numpy only, no torch).

>>> tower = UserTower("exported/")                         # doctest: +SKIP
>>> interests, mask = tower.encode([["B00EXAMPLE", "B00OTHER"], ["B00THIRD"]])  # doctest: +SKIP

Execution providers (``provider``):

- ``"auto"``: ``CUDAExecutionProvider`` when ``onnxruntime.get_available_providers()`` lists it
  (the ``onnxruntime-gpu`` wheel, ``pip install mind-recbole[gpu]``), else CPU;
- ``"cpu"``: CPU only;
- ``"cuda"``: CUDA, with CPU as ONNX Runtime's fallback for unsupported nodes. When this
  onnxruntime has no CUDA provider (or the session could not enable it) the tower **falls back
  to CPU and warns** (:class:`ProviderFallbackWarning`); pass ``strict=True`` to raise
  ``RuntimeError`` instead. ``UserTower.providers`` says what the session really uses.

Loading checks the directory and raises :class:`~export.artifacts.ArtifactError` (a
``ValueError``) naming the file and field at fault: an ``user_tower.onnx`` that onnxruntime cannot
parse (truncated, empty, not ONNX), that is not an interest-model user tower (other inputs or
outputs), whose metadata is missing a key or has a non-integer value, whose output shape disagrees
with its metadata ``interest_num`` / ``embedding_size``, or whose ``n_items`` disagrees with
``item_tokens.json``; an ``item_tokens.json`` that is not a JSON list of distinct strings; an
``item_embeddings.npy`` that cannot be read (truncated), is not ``[n_items, D]`` floats, or has
NaN / inf in some row (the rows and their tokens are named; ``check_finite=False`` skips this scan);
then any item or user file whose size or SHA-256 differs from what ``user_tower.onnx`` recorded at
export (``file_digests``): files of another export of the same shape, or a few altered bytes, are
an error, not wrong rankings (``verify_digests=False`` skips the hashing; the sizes are always checked).

Input handling (:class:`~export.artifacts.InputError` subclasses, ``ValueError`` too, each with
``rows``, the offending batch rows):

- :meth:`UserTower.encode`: histories are lists of item tokens (ASINs), oldest first; a history
  longer than ``max_seq_length`` keeps its most recent ``max_seq_length`` items (as RecBole's
  training sequences do); histories of different lengths in one batch are fine (each batch is
  padded to its longest; results equal encoding each history alone). Empty histories are an
  :class:`~export.artifacts.EmptyHistoryError` listing every empty row (checked before unknown
  tokens); unknown tokens are an :class:`~export.artifacts.UnknownItemError` listing them, or
  with ``on_unknown="skip"`` are dropped (a history left empty is an ``EmptyHistoryError``).
  The result is the same for any ``batch_size``.
- :meth:`UserTower.encode_ids`: the same on internal item ids (``1 .. n_items - 1``; 0 is
  padding); an id out of that range is an :class:`~export.artifacts.ItemIdError` naming the row,
  position and value (ONNX Runtime's Gather would silently wrap a negative id).
- :meth:`UserTower.run`: one session call on a padded batch, checked the same way (ids in range
  before each row's length, 0 after it, lengths in ``1 .. seq_len``).

Threads: a ``UserTower`` is not modified after construction (``item_vectors`` is read-only), and
ONNX Runtime's ``InferenceSession.run`` is thread-safe, so one tower may serve many threads at
once (``tests/test_serving_bad_input.py`` checks threads get the serial answers). In a thread pool
set ``intra_op_num_threads=1``: the parallelism then comes from the requests.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export import artifacts
from export.artifacts import (
    MAX_LISTED,
    ArtifactError,
    EmptyHistoryError,
    InputError,
    ItemIdError,
    UnknownItemError,
    listed,
)

PROVIDERS = ("auto", "cpu", "cuda")
PRECISIONS = {"fp32": artifacts.ONNX_FILE, "int8": artifacts.INT8_ONNX_FILE}  # precision -> graph file
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
UNKNOWN_POLICIES = ("error", "skip")
FINITE_CHECK_ROWS = 1 << 16  # rows of item_embeddings.npy scanned per step for NaN / inf

__all__ = [
    "ArtifactError", "EmptyHistoryError", "InputError", "ItemIdError", "ProviderFallbackWarning",
    "UnknownItemError", "UserTower", "check_cuda_enabled", "check_session_graph", "load_tokens", "verify_file_digests", "read_item_vectors", "read_metadata",
    "select_providers",
]


class ProviderFallbackWarning(RuntimeWarning):
    """The requested execution provider is unavailable; the session runs on CPU instead."""


def select_providers(provider="auto", strict=False):
    """The ONNX Runtime provider list for ``provider`` in ``auto``, ``cpu``, ``cuda`` (see the module doc)."""
    if provider not in PROVIDERS:
        raise ValueError(f"provider must be one of {PROVIDERS}, got {provider!r}")
    available = ort.get_available_providers()
    if provider == "cpu":
        return [CPU]
    if CUDA in available:
        return [CUDA, CPU]
    if provider == "cuda":
        message = (
            f"provider 'cuda' requested but this onnxruntime ({ort.__version__}) has no {CUDA} "
            f"(available: {', '.join(available)}); install onnxruntime-gpu (pip install mind-recbole[gpu])"
        )
        if strict:
            raise RuntimeError(message)
        warnings.warn(message + "; running on CPU", ProviderFallbackWarning, stacklevel=3)
    return [CPU]


def check_cuda_enabled(requested, providers, strict=False, session="session"):
    """After opening a session on :func:`select_providers`' ``requested`` list: when CUDA was listed
    but the session's ``providers`` lack it (CUDA / cuDNN libraries missing), warn
    (:class:`ProviderFallbackWarning`) that it runs on CPU, or raise ``RuntimeError`` when ``strict``."""
    if CUDA in requested and CUDA not in providers:
        message = f"{CUDA} is listed but the {session} could not enable it (CUDA / cuDNN libraries?)"
        if strict:
            raise RuntimeError(message)
        warnings.warn(message + "; running on CPU", ProviderFallbackWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------- loading
def open_session(onnx_path, options, providers):
    """``ort.InferenceSession`` over ``onnx_path``; :class:`ArtifactError` naming the file if it cannot load."""
    onnx_path = Path(onnx_path)
    if onnx_path.stat().st_size == 0:
        raise ArtifactError(onnx_path, "the file is empty (0 bytes); re-export it with `mind-recbole export`")
    try:
        return ort.InferenceSession(str(onnx_path), options, providers=providers)
    except Exception as error:  # onnxruntime's InvalidProtobuf, InvalidArgument, Fail, ... derive from Exception only
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ArtifactError(
            onnx_path,
            f"onnxruntime {ort.__version__} cannot load it ({type(error).__name__}: {reason}); the file is "
            "truncated or corrupt, or not an ONNX model; re-export it with `mind-recbole export`",
        ) from error


# onnxruntime's names of the contract's element types (export.artifacts.GRAPH_INPUTS / GRAPH_OUTPUTS)
ORT_ELEMENT_TYPES = {"int64": "tensor(int64)", "float32": "tensor(float)", "bool": "tensor(bool)"}


def _describe(args):
    return ", ".join(f"{a.name} {a.type} {a.shape}" for a in args) or "none"


def check_session_graph(session, path=artifacts.ONNX_FILE):
    """:class:`ArtifactError` unless the graph has a user tower's inputs and outputs (names, element
    types, ranks: :data:`export.artifacts.GRAPH_SIGNATURE`)."""
    inputs = {a.name: a for a in session.get_inputs()}
    outputs = {a.name: a for a in session.get_outputs()}
    allowed_inputs = artifacts.graph_inputs(uses_user_profile=True)
    problems = [f"input {name!r} is missing" for name in artifacts.GRAPH_INPUTS if name not in inputs]
    problems += [f"unexpected input {name!r}" for name in inputs if name not in allowed_inputs]
    problems += [f"output {name!r} is missing" for name in artifacts.GRAPH_OUTPUTS if name not in outputs]
    for found, expected in ((inputs, allowed_inputs), (outputs, artifacts.GRAPH_OUTPUTS)):
        for name, arg in found.items():
            if name not in expected:
                continue
            element_type, dims = expected[name]
            if (arg.type, len(arg.shape)) != (ORT_ELEMENT_TYPES[element_type], len(dims)):
                problems.append(
                    f"{name!r} is {arg.type} of rank {len(arg.shape)}, expected {ORT_ELEMENT_TYPES[element_type]} "
                    f"of rank {len(dims)}"
                )
    if problems:
        raise ArtifactError(
            path,
            f"not an interest-model user tower exported by mind-recbole ({'; '.join(problems)}). "
            f"Graph inputs: {_describe(session.get_inputs())}; outputs: {_describe(session.get_outputs())}. "
            f"Expected {artifacts.GRAPH_SIGNATURE}",
        )


def verify_file_digests(model_dir, metadata, onnx_path=artifacts.ONNX_FILE, hash_files=True):
    """:class:`ArtifactError` naming the first item or user file whose size (and, with
    ``hash_files``, SHA-256) differs from the ``file_digests`` that ``user_tower.onnx`` recorded."""
    text = metadata.get(artifacts.META_FILE_DIGESTS)
    if not text:
        raise ArtifactError(
            onnx_path, "records no file digests, so its item files cannot be checked (an export older than "
            "the digests); export the checkpoint again with `mind-recbole export`", field=artifacts.META_FILE_DIGESTS,
        )
    try:
        digests = json.loads(text)
        expected_files = {name: (int(d["bytes"]), str(d["sha256"])) for name, d in digests.items()}
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise ArtifactError(onnx_path, f"metadata {artifacts.META_FILE_DIGESTS!r} is malformed ({error})",
                            field=artifacts.META_FILE_DIGESTS) from error
    for name, (size, sha256) in expected_files.items():
        path = Path(model_dir) / name
        if not path.is_file():
            raise ArtifactError(path, f"not found, but {artifacts.ONNX_FILE} was exported with it", field="bytes")
        actual = path.stat().st_size
        if actual != size:
            raise ArtifactError(
                path, f"is {actual:,} bytes, but {artifacts.ONNX_FILE} was exported with {size:,}: truncated, altered or "
                "from another export; export the checkpoint again", field="bytes",
            )
        if hash_files and artifacts.file_digest(path)["sha256"] != sha256:
            raise ArtifactError(
                path, f"its SHA-256 differs from the one {artifacts.ONNX_FILE} recorded (same size): altered, or from "
                "another export of the same shape; export the checkpoint again", field="sha256",
            )


def read_metadata(session, path=artifacts.ONNX_FILE):
    """``custom_metadata_map`` of the session; ``ArtifactError`` naming a missing required key."""
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    for key in artifacts.REQUIRED_METADATA:
        if key not in metadata or metadata[key] == "":
            raise ArtifactError(
                path,
                f"metadata key {key!r} is missing (has: {sorted(metadata) or 'none'}); "
                "re-export the model with `mind-recbole export`",
                field=key,
            )
    return metadata


def metadata_int(metadata, key, path=artifacts.ONNX_FILE, minimum=1):
    """``int(metadata[key])``; :class:`ArtifactError` naming the key unless it is an integer >= ``minimum``."""
    value = metadata[key]
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = None
    if number is None or number < minimum:
        raise ArtifactError(path, f"metadata {key!r} is {value!r}, expected an integer >= {minimum}", field=key)
    return number


def load_tokens(path):
    """A token map (JSON list, or one token a line): index = internal id. Checked: strings, all distinct."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token map not found: {path}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        try:
            tokens = json.loads(text)
        except json.JSONDecodeError as error:
            raise ArtifactError(
                path, f"not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); truncated or corrupt?"
            ) from error
    else:  # one token a line
        tokens = text.splitlines()
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ArtifactError(path, "expected a JSON list of string tokens (index = internal id)")
    if len(tokens) < 2:
        raise ArtifactError(path, f"has {len(tokens)} token(s); expected [PAD] and at least one item")
    if len(set(tokens)) != len(tokens):  # name the first duplicate only when there is one
        seen = {}
        for index, token in enumerate(tokens):
            if token in seen:
                raise ArtifactError(path, f"token {token!r} appears twice (ids {seen[token]} and {index})", field=index)
            seen[token] = index
    return tokens


def non_finite_rows(array, chunk_rows=FINITE_CHECK_ROWS):
    """Indices of the rows of a 2-D array (a memmap works) holding NaN or inf, scanned in chunks."""
    bad = []
    for start in range(0, array.shape[0], chunk_rows):
        chunk = np.asarray(array[start : start + chunk_rows])
        rows = np.nonzero(~np.isfinite(chunk).all(axis=1))[0]
        bad.extend((rows + start).tolist())
    return bad


def read_item_vectors(path, n_items, dim, mmap=False, check_finite=True, tokens=None, tokens_file=artifacts.ITEM_TOKENS_FILE):
    """``item_embeddings.npy`` as a read-only ``[n_items, dim]`` float array, checked.

    :class:`ArtifactError` naming the file if it cannot be read, is not a 2-D float array of that
    shape (``n_items`` comes from ``tokens_file``, ``dim`` from the ONNX file's metadata), or, with
    ``check_finite``, has NaN / inf in some row (the rows, and their ``tokens`` when given, are named).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; write it with `mind-recbole export`")
    try:
        vectors = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, EOFError, OSError) as error:
        raise ArtifactError(path, f"cannot be read as a .npy array ({type(error).__name__}: {error}); truncated or corrupt?") from error
    if not np.issubdtype(vectors.dtype, np.floating):
        raise ArtifactError(path, f"dtype is {vectors.dtype}, expected float32")
    if vectors.ndim != 2:
        raise ArtifactError(path, f"is {vectors.ndim}-D {vectors.shape}, expected [n_items, D] = ({n_items}, {dim})")
    if vectors.shape[0] != n_items:
        raise ArtifactError(
            path, f"has {vectors.shape[0]} rows but {tokens_file} has {n_items} tokens: the files come from different exports"
        )
    if vectors.shape[1] != dim:
        raise ArtifactError(
            path,
            f"has {vectors.shape[1]} columns but {artifacts.ONNX_FILE} has embedding_size {dim}: the files come from different models",
            field=artifacts.META_EMBEDDING_SIZE,
        )
    if check_finite:
        bad = non_finite_rows(vectors)
        if bad:
            named = [f"{row} ({tokens[row]!r})" if tokens is not None else str(row) for row in bad]
            raise ArtifactError(
                path, f"{len(bad)} row(s) hold NaN or inf: row {listed(named)}; re-export the model", field=bad[0]
            )
    if not mmap:
        vectors.flags.writeable = False  # shared by every request (and thread): nobody may change it
    return vectors


# ---------------------------------------------------------------------------------------------- tower
class UserTower:
    """An ONNX Runtime session over ``model_dir/user_tower.onnx`` plus the item side of the export.

    Args:
        model_dir: a directory written by ``mind-recbole export``.
        provider: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see the module docstring).
        strict: with ``provider="cuda"``, raise instead of falling back to CPU.
        intra_op_num_threads: ONNX Runtime threads (0: its default; 1 in a thread pool).
        load_item_vectors: load ``item_embeddings.npy`` (memory-mapped when ``mmap``).
        check_finite: scan the item vectors for NaN / inf at load (reads the whole file once).
        verify_digests: hash the item and user files and compare with ``file_digests`` (sizes are
            compared either way; ``results/serving.md`` has what the hashing costs).
        precision: ``"fp32"`` (``user_tower.onnx``) or ``"int8"`` (``user_tower.int8.onnx``, written by
            ``export --quantize int8``; see :mod:`export.quantize`).

    Attributes: ``metadata`` (dict), ``interest_num`` K, ``embedding_size`` D, ``max_seq_length``,
    ``item_vectors`` ``[n_items, D]`` float32 (read-only), ``item_tokens`` (id -> token),
    ``item_index`` (token -> id), ``providers``. Treat them as read-only: they are shared by calls.
    """

    def __init__(self, model_dir, provider="auto", strict=False, intra_op_num_threads=0, load_item_vectors=True,
                 mmap=False, check_finite=True, verify_digests=True, precision="fp32"):
        self.model_dir = Path(model_dir)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        onnx_path = self.model_dir / PRECISIONS[precision]
        if not onnx_path.is_file():
            quantize = " --quantize int8" if precision == "int8" else ""
            raise FileNotFoundError(f"{onnx_path} not found; write it with `mind-recbole export{quantize} --out {self.model_dir}`")
        self.onnx_path = onnx_path
        requested = select_providers(provider, strict=strict)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if intra_op_num_threads:
            options.intra_op_num_threads = int(intra_op_num_threads)
        self.session = open_session(onnx_path, options, requested)
        self.providers = self.session.get_providers()
        check_cuda_enabled(requested, self.providers, strict)

        check_session_graph(self.session, onnx_path)
        self.metadata = read_metadata(self.session, onnx_path)
        self.interest_num = metadata_int(self.metadata, artifacts.META_INTEREST_NUM, onnx_path)
        self.embedding_size = metadata_int(self.metadata, artifacts.META_EMBEDDING_SIZE, onnx_path)
        self.max_seq_length = metadata_int(self.metadata, artifacts.META_MAX_SEQ_LENGTH, onnx_path)
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.uses_user_id = artifacts.INPUT_USER_ID in self.input_names
        self._check_metadata_against_graph()

        tokens_path = self._find(artifacts.ITEM_TOKENS_FILE, "item_tokens.txt")
        self.item_tokens = load_tokens(tokens_path)
        self._check_item_count(tokens_path)
        self.item_index = {token: i for i, token in enumerate(self.item_tokens) if i > 0}
        self.user_index = None
        self.n_users = None
        if self.uses_user_id:
            users = load_tokens(self._find(artifacts.USER_TOKENS_FILE, "user_tokens.txt"))
            self.user_index = {token: i for i, token in enumerate(users) if i > 0}
            self.n_users = len(users)
        self.item_vectors = None
        if load_item_vectors:
            self.item_vectors = read_item_vectors(
                self.model_dir / artifacts.ITEM_EMBEDDINGS_FILE, len(self.item_tokens), self.embedding_size, mmap=mmap,
                check_finite=check_finite, tokens=self.item_tokens, tokens_file=tokens_path.name,
            )
        verify_file_digests(self.model_dir, self.metadata, onnx_path, hash_files=verify_digests)

    def _check_metadata_against_graph(self):
        """The graph's static output dims and inputs must agree with the metadata (else: another model's file)."""
        outputs = {o.name: o.shape for o in self.session.get_outputs()}
        expected = {
            artifacts.OUTPUT_INTERESTS: {1: (artifacts.META_INTEREST_NUM, self.interest_num), 2: (artifacts.META_EMBEDDING_SIZE, self.embedding_size)},
            artifacts.OUTPUT_MASK: {1: (artifacts.META_INTEREST_NUM, self.interest_num)},
        }
        for output, dims in expected.items():
            for axis, (key, value) in dims.items():
                actual = outputs[output][axis]
                if isinstance(actual, int) and actual != value:
                    raise ArtifactError(
                        self.onnx_path,
                        f"graph output {output!r} has shape {outputs[output]} but metadata {key!r} is {value}: "
                        "metadata and graph come from different models; re-export",
                        field=key,
                    )
        graph_max = self.metadata.get(artifacts.META_MAX_GRAPH_SEQ_LENGTH, "")
        graph_max_int = None if graph_max == "" else metadata_int(self.metadata, artifacts.META_MAX_GRAPH_SEQ_LENGTH, self.onnx_path)
        if graph_max_int is not None and graph_max_int < self.max_seq_length:
            raise ArtifactError(
                self.onnx_path,
                f"metadata max_graph_seq_length {graph_max} < max_seq_length {self.max_seq_length}: the graph cannot "
                "take the histories the runtime keeps",
                field=artifacts.META_MAX_GRAPH_SEQ_LENGTH,
            )
        declared = self.metadata.get(artifacts.META_USES_USER_ID)
        if declared in ("true", "false") and (declared == "true") != self.uses_user_id:
            raise ArtifactError(
                self.onnx_path,
                f"metadata uses_user_id is {declared!r} but the graph inputs are {self.input_names}",
                field=artifacts.META_USES_USER_ID,
            )

    def _check_item_count(self, tokens_path):
        """``item_tokens.json`` must have the metadata's ``n_items`` tokens (when the metadata has it)."""
        if self.metadata.get(artifacts.META_N_ITEMS, "") == "":
            return
        n_items = metadata_int(self.metadata, artifacts.META_N_ITEMS, self.onnx_path)
        if n_items != len(self.item_tokens):
            raise ArtifactError(
                tokens_path,
                f"has {len(self.item_tokens)} tokens but {self.onnx_path.name} metadata n_items is {n_items}: "
                "the files come from different exports",
                field=artifacts.META_N_ITEMS,
            )

    def _find(self, *names):
        for name in names:
            if (self.model_dir / name).is_file():
                return self.model_dir / name
        raise FileNotFoundError(f"none of {list(names)} in {self.model_dir}")

    @property
    def n_items(self):
        """Rows of the catalogue, padding (id 0) included: valid item ids are ``1 .. n_items - 1``."""
        return len(self.item_tokens)

    # ------------------------------------------------------------------ tokens -> ids
    def item_ids(self, histories, on_unknown="error"):
        """Token lists -> int64 id arrays (most recent ``max_seq_length`` kept), checked (see module doc)."""
        if on_unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"on_unknown must be one of {UNKNOWN_POLICIES}, got {on_unknown!r}")
        if isinstance(histories, (str, bytes)):
            raise TypeError("histories must be a list of token lists, e.g. [['B00A', 'B00B']]")
        sequences, unknown, unknown_rows, empty = [], {}, set(), {}
        for user, history in enumerate(histories):
            if isinstance(history, (str, bytes)) or not hasattr(history, "__iter__"):
                raise TypeError(f"history {user} is a {type(history).__name__}; pass a list of item tokens")
            history = list(history)
            ids = []
            for token in history:
                item = self.item_index.get(str(token))
                if item is None:
                    unknown.setdefault(str(token), user)
                    unknown_rows.add(user)
                else:
                    ids.append(item)
            if not history:
                empty[user] = "is empty"
            elif not ids and on_unknown == "skip":
                empty[user] = "has no known item"
            sequences.append(np.asarray(ids[-self.max_seq_length :], dtype=np.int64))
        if empty:
            raise EmptyHistoryError(
                "; ".join(f"history {row} {detail}" for row, detail in list(empty.items())[:MAX_LISTED])
                + (f" (and {len(empty) - MAX_LISTED} more)" if len(empty) > MAX_LISTED else "")
                + "; a user needs at least one item",
                rows=empty,
            )
        if unknown and on_unknown == "error":
            raise UnknownItemError(
                f"{len(unknown)} unknown item token(s): {listed(repr(t) for t in unknown)} (first seen in history "
                f"{min(unknown.values())}; histories {listed(sorted(unknown_rows))}); pass on_unknown='skip' "
                "(CLI: --skip-unknown) to drop them",
                tokens=unknown,
                rows=unknown_rows,
            )
        return sequences

    def user_ids(self, users, on_unknown="error"):
        """User tokens -> ids for profile models; unknown users are an error, or id 0 (no profile) with skip."""
        if self.user_index is None:
            raise ValueError(f"{self.onnx_path} has no user_id input: this model does not use user tokens")
        ids, unknown = [], []
        for token in users:
            user = self.user_index.get(str(token))
            if user is None:
                unknown.append(str(token))
                user = 0
            ids.append(user)
        if unknown and on_unknown == "error":
            raise ValueError(
                f"unknown user token(s): {listed(map(repr, unknown))}; pass on_unknown='skip' to embed "
                "them without a profile"
            )
        return np.asarray(ids, dtype=np.int64)

    def check_ids(self, sequences):
        """Id histories (oldest first) -> int64 arrays of the most recent ``max_seq_length`` ids, checked.

        :class:`EmptyHistoryError` lists empty rows; :class:`ItemIdError` names each row with an id
        outside ``1 .. n_items - 1`` (position and value); ``InputError`` for a non-integer or
        non-1-D row.
        """
        if isinstance(sequences, np.ndarray) and sequences.ndim == 2:
            raise TypeError("pass a list of 1-D id arrays (a padded [B, L] batch goes to UserTower.run with lengths)")
        checked, empty, bad = [], [], []
        for row, sequence in enumerate(sequences):
            ids = np.asarray(sequence)
            if ids.size == 0:
                empty.append(row)
                checked.append(np.empty(0, np.int64))
                continue
            if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
                raise InputError(f"history {row} must be a 1-D list of integer item ids, got {ids.dtype} {ids.shape}", rows=[row])
            ids = ids.astype(np.int64)
            outside = np.nonzero((ids < 1) | (ids >= self.n_items))[0]
            if outside.size:
                bad.append((row, int(outside[0]), int(ids[outside[0]])))
            checked.append(ids[-self.max_seq_length :])
        if empty:
            raise EmptyHistoryError(
                f"history {listed(empty)} {'is' if len(empty) == 1 else 'are'} empty; a user needs at least one item",
                rows=empty,
            )
        if bad:
            raise ItemIdError(
                f"item id(s) out of range 1..{self.n_items - 1} (0 is padding): "
                + listed(f"history {r} position {p} has {v}" for r, p, v in bad),
                rows=[r for r, _, _ in bad],
                first=bad[0],
            )
        return checked

    # ------------------------------------------------------------------ inference
    def check_batch(self, item_seq, item_seq_len, user_id=None):
        """Validate one padded batch for :meth:`run`; returns contiguous int64 arrays ``(item_seq, item_seq_len, user_id)``."""
        raw_seq, raw_len = np.asarray(item_seq), np.asarray(item_seq_len)
        for name, array in ((artifacts.INPUT_ITEM_SEQ, raw_seq), (artifacts.INPUT_ITEM_SEQ_LEN, raw_len)):
            if array.size and not np.issubdtype(array.dtype, np.integer):
                raise InputError(f"{name} must hold integer ids, got dtype {array.dtype}")
        item_seq = np.ascontiguousarray(raw_seq, dtype=np.int64)
        item_seq_len = np.ascontiguousarray(raw_len, dtype=np.int64)
        if item_seq.ndim != 2 or item_seq_len.shape != (item_seq.shape[0],):
            raise InputError(f"item_seq must be [B, L] and item_seq_len [B], got {item_seq.shape}, {item_seq_len.shape}")
        batch, seq_len = item_seq.shape
        if batch == 0:
            raise InputError("empty batch: no rows to encode")
        if seq_len > self.max_seq_length:
            raise InputError(f"seq_len {seq_len} > max_seq_length {self.max_seq_length}; keep the most recent items")
        bad_len = np.nonzero((item_seq_len < 1) | (item_seq_len > seq_len))[0]
        if bad_len.size:
            raise EmptyHistoryError(
                f"every item_seq_len must be in 1..seq_len={seq_len}: "
                + listed(f"row {r} has {int(item_seq_len[r])}" for r in bad_len),
                rows=bad_len,
            )
        inside = np.arange(seq_len)[None, :] < item_seq_len[:, None]
        outside_range = inside & ((item_seq < 1) | (item_seq >= self.n_items))
        if outside_range.any():
            rows, cols = np.nonzero(outside_range)
            raise ItemIdError(
                f"item id(s) out of range 1..{self.n_items - 1} (0 is padding) in item_seq: "
                + listed(f"row {r} position {c} has {int(item_seq[r, c])}" for r, c in zip(rows, cols)),
                rows=rows,
                first=(int(rows[0]), int(cols[0]), int(item_seq[rows[0], cols[0]])),
            )
        padding = ~inside & (item_seq != 0)
        if padding.any():
            rows, cols = np.nonzero(padding)
            raise InputError(
                "item_seq must be left-aligned with 0 after each row's item_seq_len: "
                + listed(
                    f"row {r} position {c} (item_seq_len {int(item_seq_len[r])}) has {int(item_seq[r, c])}"
                    for r, c in zip(rows, cols)
                ),
                rows=rows,
            )
        if self.uses_user_id:
            if user_id is None:
                raise ValueError("this model embeds user profile fields: pass users (or user_id)")
            user_id = self.check_user_ids(user_id, batch)
        return item_seq, item_seq_len, user_id

    def check_user_ids(self, user_id, batch):
        """``user_id`` as a ``[batch]`` int64 array of ids in ``0 .. n_users - 1`` (0: no profile), checked."""
        user_id = np.ascontiguousarray(user_id, dtype=np.int64)
        if user_id.shape != (batch,):
            raise InputError(f"user_id must be [B] = ({batch},), got {user_id.shape}")
        bad_user = np.nonzero((user_id < 0) | (user_id >= self.n_users))[0]
        if bad_user.size:
            raise ItemIdError(
                f"user id(s) out of range 0..{self.n_users - 1} (0: no profile): "
                + listed(f"row {r} has {int(user_id[r])}" for r in bad_user),
                rows=bad_user,
                first=(int(bad_user[0]), 0, int(user_id[bad_user[0]])),
            )
        return user_id

    def run(self, item_seq, item_seq_len, user_id=None):
        """One session call on internal ids: ``item_seq`` ``[B, L]`` (left-aligned, 0-padded), checked first."""
        return self._infer(*self.check_batch(item_seq, item_seq_len, user_id))

    def _infer(self, item_seq, item_seq_len, user_id):
        """The session call on a batch already in :meth:`check_batch`'s form; NaN outputs are an error."""
        feed = {artifacts.INPUT_ITEM_SEQ: item_seq, artifacts.INPUT_ITEM_SEQ_LEN: item_seq_len}
        if self.uses_user_id:
            feed[artifacts.INPUT_USER_ID] = user_id
        interests, mask = self.session.run([artifacts.OUTPUT_INTERESTS, artifacts.OUTPUT_MASK], feed)
        broken = np.nonzero(~np.isfinite(interests).reshape(len(interests), -1).all(axis=1))[0]
        if broken.size:
            raise ArtifactError(
                self.onnx_path,
                f"the graph returned NaN / inf interests for batch row(s) {listed(broken.tolist())}; the graph is "
                "broken (re-export with `mind-recbole export`, which checks parity)",
                field=artifacts.OUTPUT_INTERESTS,
            )
        return interests, mask

    @staticmethod
    def pad(sequences):
        """Id arrays -> left-aligned ``[B, max len]`` int64 (0 after each history) and lengths ``[B]``."""
        lengths = np.asarray([len(s) for s in sequences], dtype=np.int64)
        item_seq = np.zeros((len(sequences), int(lengths.max())), dtype=np.int64)
        for row, sequence in enumerate(sequences):
            item_seq[row, : len(sequence)] = sequence
        return item_seq, lengths

    def encode_ids(self, sequences, user_ids=None, batch_size=256):
        """Interests ``[B, K, D]`` and mask ``[B, K]`` for id histories (oldest first; see :meth:`check_ids`).

        ``user_ids``: internal user ids, one per history, for profile models. Sessions run
        ``batch_size`` users at a time, each batch padded to its own longest history.
        """
        return self._encode(self.check_ids(sequences), user_ids, batch_size)

    def _encode(self, sequences, user_ids, batch_size):
        """:meth:`encode_ids` on histories already checked and truncated (by :meth:`check_ids` or
        :meth:`item_ids`): padded batches go straight to the session, no second check."""
        if not sequences:
            raise InputError("no histories to encode")
        if self.uses_user_id:
            if user_ids is None or len(user_ids) != len(sequences):
                raise ValueError(f"this model embeds user profile fields: pass users, one per history ({len(sequences)})")
            user_ids = self.check_user_ids(user_ids, len(sequences))
        interests = np.empty((len(sequences), self.interest_num, self.embedding_size), dtype=np.float32)
        mask = np.empty((len(sequences), self.interest_num), dtype=bool)
        batch_size = max(1, int(batch_size))
        for start in range(0, len(sequences), batch_size):
            stop = start + batch_size
            item_seq, lengths = self.pad(sequences[start:stop])
            batch_users = None if user_ids is None else user_ids[start:stop]
            interests[start:stop], mask[start:stop] = self._infer(item_seq, lengths, batch_users)
        return interests, mask

    def encode(self, histories, users=None, batch_size=256, on_unknown="error"):
        """Interests ``[B, K, D]`` float32 and mask ``[B, K]`` bool for token histories (oldest first).

        ``users``: user tokens, required when the model embeds user profile fields. Sessions run
        ``batch_size`` users at a time, each batch padded to its own longest history.
        """
        sequences = self.item_ids(histories, on_unknown=on_unknown)
        if not sequences:
            raise InputError("no histories to encode")
        user_ids = None
        if self.uses_user_id:
            if users is None or len(users) != len(sequences):
                raise ValueError(f"this model embeds user profile fields: pass users, one per history ({len(sequences)})")
            user_ids = self.user_ids(users, on_unknown=on_unknown)
        return self._encode(sequences, user_ids, batch_size)  # item_ids returned known, truncated ids
