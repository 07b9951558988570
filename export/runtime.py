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

Input handling in :meth:`UserTower.encode`: histories are lists of item tokens (ASINs), oldest
first; a history longer than ``max_seq_length`` keeps its most recent ``max_seq_length`` items
(as RecBole's training sequences do); an empty history is a ``ValueError``; unknown tokens are a
``ValueError`` listing them, or with ``on_unknown="skip"`` are dropped (a history left empty is
still an error). The result is the same for any ``batch_size``.
"""

import json
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

from export import artifacts as A

PROVIDERS = ("auto", "cpu", "cuda")
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
UNKNOWN_POLICIES = ("error", "skip")


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


def read_metadata(session, path="user_tower.onnx"):
    """``custom_metadata_map`` of the session; ``ValueError`` naming a missing required key."""
    metadata = dict(session.get_modelmeta().custom_metadata_map)
    for key in A.REQUIRED_METADATA:
        if key not in metadata or metadata[key] == "":
            raise ValueError(
                f"{path}: metadata key {key!r} is missing (has: {sorted(metadata) or 'none'}); "
                "re-export the model with `mind-recbole export`"
            )
    return metadata


def _load_tokens(path):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"token map not found: {path}")
    if path.suffix == ".json":
        tokens = json.loads(path.read_text())
    else:  # one token a line
        tokens = path.read_text().splitlines()
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise ValueError(f"{path}: expected a JSON list of tokens (index = internal id)")
    return tokens


class UserTower:
    """An ONNX Runtime session over ``model_dir/user_tower.onnx`` plus the item side of the export.

    Args:
        model_dir: a directory written by ``mind-recbole export``.
        provider: ``"auto"``, ``"cpu"`` or ``"cuda"`` (see the module docstring).
        strict: with ``provider="cuda"``, raise instead of falling back to CPU.
        intra_op_num_threads: ONNX Runtime threads (0: its default).
        load_item_vectors: load ``item_embeddings.npy`` (memory-mapped when ``mmap``).

    Attributes: ``metadata`` (dict), ``interest_num`` K, ``embedding_size`` D, ``max_seq_length``,
    ``item_vectors`` ``[n_items, D]`` float32, ``item_tokens`` (id -> token), ``providers``.
    """

    def __init__(self, model_dir, provider="auto", strict=False, intra_op_num_threads=0, load_item_vectors=True, mmap=False):
        self.model_dir = Path(model_dir)
        onnx_path = self.model_dir / A.ONNX_FILE
        if not onnx_path.is_file():
            raise FileNotFoundError(f"{onnx_path} not found; write it with `mind-recbole export --out {self.model_dir}`")
        requested = select_providers(provider, strict=strict)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if intra_op_num_threads:
            options.intra_op_num_threads = int(intra_op_num_threads)
        self.session = ort.InferenceSession(str(onnx_path), options, providers=requested)
        self.providers = self.session.get_providers()
        if CUDA in requested and CUDA not in self.providers:
            message = f"{CUDA} is listed but the session could not enable it (CUDA / cuDNN libraries?)"
            if strict:
                raise RuntimeError(message)
            warnings.warn(message + "; running on CPU", ProviderFallbackWarning, stacklevel=2)

        self.metadata = read_metadata(self.session, onnx_path)
        self.interest_num = int(self.metadata[A.META_INTEREST_NUM])
        self.embedding_size = int(self.metadata[A.META_EMBEDDING_SIZE])
        self.max_seq_length = int(self.metadata[A.META_MAX_SEQ_LENGTH])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.uses_user_id = A.INPUT_USER_ID in self.input_names

        self.item_tokens = _load_tokens(self._find(A.ITEM_TOKENS_FILE, "item_tokens.txt"))
        self.item_index = {token: i for i, token in enumerate(self.item_tokens) if i > 0}
        self.user_index = None
        if self.uses_user_id:
            users = _load_tokens(self._find(A.USER_TOKENS_FILE, "user_tokens.txt"))
            self.user_index = {token: i for i, token in enumerate(users) if i > 0}
        self.item_vectors = None
        if load_item_vectors:
            self.item_vectors = np.load(self.model_dir / A.ITEM_EMBEDDINGS_FILE, mmap_mode="r" if mmap else None)
            if self.item_vectors.shape != (len(self.item_tokens), self.embedding_size):
                raise ValueError(
                    f"{A.ITEM_EMBEDDINGS_FILE} is {self.item_vectors.shape}, expected "
                    f"({len(self.item_tokens)}, {self.embedding_size}) from the token map and metadata"
                )

    def _find(self, *names):
        for name in names:
            if (self.model_dir / name).is_file():
                return self.model_dir / name
        raise FileNotFoundError(f"none of {list(names)} in {self.model_dir}")

    @property
    def n_items(self):
        return len(self.item_tokens)

    # ------------------------------------------------------------------ tokens -> ids
    def item_ids(self, histories, on_unknown="error"):
        """Token lists -> int64 id arrays (most recent ``max_seq_length`` kept), checked (see module doc)."""
        if on_unknown not in UNKNOWN_POLICIES:
            raise ValueError(f"on_unknown must be one of {UNKNOWN_POLICIES}, got {on_unknown!r}")
        if isinstance(histories, (str, bytes)):
            raise TypeError("histories must be a list of token lists, e.g. [['B00A', 'B00B']]")
        sequences, unknown = [], {}
        for user, history in enumerate(histories):
            if isinstance(history, (str, bytes)):
                raise TypeError(f"history {user} is a string; pass a list of item tokens")
            ids = []
            for token in history:
                item = self.item_index.get(str(token))
                if item is None:
                    unknown.setdefault(str(token), user)
                else:
                    ids.append(item)
            if not ids and (on_unknown == "skip" or not history):
                detail = "is empty" if not history else "has no known item"
                raise ValueError(f"history {user} {detail}; a user needs at least one item")
            sequences.append(np.asarray(ids[-self.max_seq_length :], dtype=np.int64))
        if unknown and on_unknown == "error":
            shown = ", ".join(repr(t) for t in list(unknown)[:20])
            more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
            raise ValueError(
                f"{len(unknown)} unknown item token(s): {shown}{more} (first seen in history "
                f"{min(unknown.values())}); pass on_unknown='skip' (CLI: --skip-unknown) to drop them"
            )
        return sequences

    def user_ids(self, users, on_unknown="error"):
        """User tokens -> ids for profile models; unknown users are an error, or id 0 (no profile) with skip."""
        ids, unknown = [], []
        for token in users:
            user = self.user_index.get(str(token))
            if user is None:
                unknown.append(str(token))
                user = 0
            ids.append(user)
        if unknown and on_unknown == "error":
            raise ValueError(
                f"unknown user token(s): {', '.join(map(repr, unknown[:20]))}; pass on_unknown='skip' to embed "
                "them without a profile"
            )
        return np.asarray(ids, dtype=np.int64)

    # ------------------------------------------------------------------ inference
    def run(self, item_seq, item_seq_len, user_id=None):
        """One session call on internal ids: ``item_seq`` ``[B, L]`` (left-aligned, 0-padded)."""
        item_seq = np.ascontiguousarray(item_seq, dtype=np.int64)
        item_seq_len = np.ascontiguousarray(item_seq_len, dtype=np.int64)
        if item_seq.ndim != 2 or item_seq_len.shape != (item_seq.shape[0],):
            raise ValueError(f"item_seq must be [B, L] and item_seq_len [B], got {item_seq.shape}, {item_seq_len.shape}")
        if item_seq.shape[1] > self.max_seq_length:
            raise ValueError(f"seq_len {item_seq.shape[1]} > max_seq_length {self.max_seq_length}; keep the most recent items")
        if np.any(item_seq_len < 1) or np.any(item_seq_len > item_seq.shape[1]):
            raise ValueError("every item_seq_len must be in 1..seq_len")
        feed = {A.INPUT_ITEM_SEQ: item_seq, A.INPUT_ITEM_SEQ_LEN: item_seq_len}
        if self.uses_user_id:
            if user_id is None:
                raise ValueError("this model embeds user profile fields: pass users (or user_id)")
            feed[A.INPUT_USER_ID] = np.ascontiguousarray(user_id, dtype=np.int64)
        interests, mask = self.session.run([A.OUTPUT_INTERESTS, A.OUTPUT_MASK], feed)
        return interests, mask

    @staticmethod
    def pad(sequences):
        """Id arrays -> left-aligned ``[B, max len]`` int64 (0 after each history) and lengths ``[B]``."""
        lengths = np.asarray([len(s) for s in sequences], dtype=np.int64)
        item_seq = np.zeros((len(sequences), int(lengths.max())), dtype=np.int64)
        for row, sequence in enumerate(sequences):
            item_seq[row, : len(sequence)] = sequence
        return item_seq, lengths

    def encode(self, histories, users=None, batch_size=256, on_unknown="error"):
        """Interests ``[B, K, D]`` float32 and mask ``[B, K]`` bool for token histories (oldest first).

        ``users``: user tokens, required when the model embeds user profile fields. Sessions run
        ``batch_size`` users at a time, each batch padded to its own longest history.
        """
        sequences = self.item_ids(histories, on_unknown=on_unknown)
        if not sequences:
            raise ValueError("no histories to encode")
        user_ids = None
        if self.uses_user_id:
            if users is None or len(users) != len(sequences):
                raise ValueError(f"this model embeds user profile fields: pass users, one per history ({len(sequences)})")
            user_ids = self.user_ids(users, on_unknown=on_unknown)
        interests = np.empty((len(sequences), self.interest_num, self.embedding_size), dtype=np.float32)
        mask = np.empty((len(sequences), self.interest_num), dtype=bool)
        batch_size = max(1, int(batch_size))
        for start in range(0, len(sequences), batch_size):
            stop = start + batch_size
            item_seq, lengths = self.pad(sequences[start:stop])
            batch_users = None if user_ids is None else user_ids[start:stop]
            interests[start:stop], mask[start:stop] = self.run(item_seq, lengths, batch_users)
        return interests, mask
