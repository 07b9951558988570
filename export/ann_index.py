"""A faiss index over an export's items, built once and saved in the model directory.

``mind-recbole index --model-dir DIR`` (or :func:`save_index`) writes two files beside
``item_embeddings.npy``:

``DIR/item_index.faiss``
    the index (``faiss.write_index``; padding row 0 left out, so faiss id + 1 = item id).
``DIR/item_index.json``
    the sidecar: ``kind`` (``hnsw`` / ``ivf`` / ``flat``), ``params`` (build and search settings,
    :attr:`export.retrieval.AnnIndex.params`), ``first_id``, ``n_items``, ``dim``,
    ``faiss_version``, ``built_from`` (size and SHA-256 of the ``item_embeddings.npy`` it indexes),
    ``index_file`` (size and SHA-256 of ``item_index.faiss``), ``build_seconds``, ``created``.

:func:`load_index` reads them once (at a service's start, or per ``retrieve --ann``) and refuses,
with an :class:`~export.artifacts.ArtifactError` naming the file, an index whose bytes differ from
its sidecar (altered or truncated) or that was built from other embeddings than the export's (a
re-export, or another model). Without a saved index it returns None: the caller builds one
(``retrieve --ann`` does, and says so) or asks for ``mind-recbole index``.

Each file is written under a temporary name and renamed (:mod:`mind_recbole.atomic_write`,
standard library only), so a stopped build leaves the previous pair. Between the two renames the
pair disagrees, which :func:`load_index` reports like any other mismatch.

Imports numpy, faiss (optional: :data:`export.retrieval.FAISS_HINT`) and ``export`` modules; no
torch, RecBole or onnxruntime.
"""

import datetime
import json
import time
from pathlib import Path

from export import artifacts
from export.artifacts import ArtifactError, file_digest
from export.retrieval import AnnIndex, build_index, require_faiss
from mind_recbole.atomic_write import replaced_on_success, write_json

SIDECAR_KEYS = ("kind", "params", "first_id", "n_items", "dim", "faiss_version", "built_from", "index_file")
SEARCH_PARAMS = ("ef_search", "nprobe")  # AnnIndex.set_search_effort's arguments among the params
DEFAULT_KIND = "ivf"
# The settings of each kind and their defaults for a saved index (nlist None: about 4 sqrt(items)).
# IVF with these met recall@50 >= 0.95 at >= 5x exact on a clustered 1M-item catalogue, and no
# setting did on structureless Gaussian items (results/serving.md, 2026-12-02).
DEFAULT_SETTINGS = {
    "ivf": {"nlist": None, "nprobe": 16},
    "hnsw": {"hnsw_m": 32, "ef_construction": 200, "ef_search": 128},
    "flat": {},
}


def index_paths(model_dir):
    """``(item_index.faiss, item_index.json)`` paths in ``model_dir``."""
    model_dir = Path(model_dir)
    return model_dir / artifacts.ITEM_INDEX_FILE, model_dir / artifacts.ITEM_INDEX_SIDECAR_FILE


def index_settings(kind, **given):
    """``kind``'s settings: :data:`DEFAULT_SETTINGS` updated by the ``given`` ones that are not None.

    A setting of another kind (``nlist`` for ``hnsw``) is a ``ValueError`` naming it.
    """
    if kind not in DEFAULT_SETTINGS:
        raise ValueError(f"kind must be one of {', '.join(DEFAULT_SETTINGS)}, got {kind!r}")
    chosen = {name: value for name, value in given.items() if value is not None}
    foreign = [name for name in chosen if name not in DEFAULT_SETTINGS[kind]]
    if foreign:
        owner = next((other for other, names in DEFAULT_SETTINGS.items() if foreign[0] in names), "no")
        takes = ", ".join(DEFAULT_SETTINGS[kind]) or "no settings"
        raise ValueError(f"{foreign[0]} is a setting of {owner} indexes; a {kind} index takes {takes}")
    return {**DEFAULT_SETTINGS[kind], **chosen}


def build_saved_index(model_dir, item_vectors, kind=DEFAULT_KIND, embeddings_sha256=None, **params):
    """Build a ``kind`` index over ``item_vectors`` (the export's ``item_embeddings.npy``, as loaded)
    and save it in ``model_dir`` (:func:`save_index`). ``params``: :func:`export.retrieval.build_index`'s.

    Returns the :class:`~export.retrieval.AnnIndex`.
    """
    start = time.perf_counter()
    index = build_index(item_vectors, kind=kind, **params)
    save_index(index, model_dir, build_seconds=time.perf_counter() - start, embeddings_sha256=embeddings_sha256)
    return index


def save_index(index, model_dir, build_seconds=None, embeddings_sha256=None):
    """Write ``index`` (an :class:`~export.retrieval.AnnIndex` built from ``model_dir``'s
    ``item_embeddings.npy``) and its sidecar into ``model_dir``.

    ``embeddings_sha256``: the embeddings file's SHA-256 when already known (e.g. verified by
    :class:`export.runtime.UserTower`); else the file is hashed here. Returns the two paths.
    """
    faiss = require_faiss()
    index_path, sidecar_path = index_paths(model_dir)
    embeddings_path = Path(model_dir) / artifacts.ITEM_EMBEDDINGS_FILE
    if embeddings_sha256 is None:
        built_from = file_digest(embeddings_path)
    else:
        built_from = {"bytes": embeddings_path.stat().st_size, "sha256": str(embeddings_sha256)}
    with replaced_on_success(index_path) as temporary:
        faiss.write_index(index.index, str(temporary))
        index_file = file_digest(temporary)
    sidecar = {
        "kind": index.kind,
        "params": index.params,
        "first_id": int(index.first_id),
        "n_items": int(index.n_items),
        "dim": int(index.index.d),
        "faiss_version": faiss.__version__,
        "built_from": {"file": artifacts.ITEM_EMBEDDINGS_FILE, **built_from},
        "index_file": {"file": artifacts.ITEM_INDEX_FILE, **index_file},
        "build_seconds": None if build_seconds is None else round(float(build_seconds), 3),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(sidecar_path, sidecar)
    return index_path, sidecar_path


def load_index(model_dir, item_vectors=None, embeddings_sha256=None, verify_digests=True):
    """The index saved in ``model_dir``, checked against its sidecar and the export; None if there is none.

    Args:
        model_dir: an export directory.
        item_vectors: the export's item vectors (e.g. ``UserTower.item_vectors``), kept for the
            exact fallback of :func:`export.retrieval.ann_topk`; their shape is checked.
        embeddings_sha256: the SHA-256 of ``item_embeddings.npy`` when already verified (e.g.
            :func:`recorded_embeddings_sha256` of a ``UserTower`` that checked its digests); else
            the file is hashed.
        verify_digests: hash the files (index and embeddings); False compares sizes only.

    Raises :class:`~export.artifacts.ArtifactError` naming ``item_index.faiss`` or
    ``item_index.json`` when one is missing, malformed, altered, or built from other embeddings.
    """
    index_path, sidecar_path = index_paths(model_dir)
    if not index_path.exists() and not sidecar_path.exists():
        return None
    rebuild = f"rebuild it with `mind-recbole index --model-dir {Path(model_dir)}`"
    if not sidecar_path.is_file():
        raise ArtifactError(index_path, f"has no {artifacts.ITEM_INDEX_SIDECAR_FILE} beside it; {rebuild}")
    if not index_path.is_file():
        raise ArtifactError(sidecar_path, f"describes {artifacts.ITEM_INDEX_FILE}, which is missing; {rebuild}")
    sidecar = read_sidecar(sidecar_path)
    _check_digest(index_path, sidecar["index_file"], verify_digests, f"{sidecar_path.name} recorded", rebuild)
    embeddings_path = Path(model_dir) / artifacts.ITEM_EMBEDDINGS_FILE
    built_from = sidecar["built_from"]
    if embeddings_sha256 is not None and verify_digests:
        current = {"bytes": embeddings_path.stat().st_size, "sha256": str(embeddings_sha256)}
    elif verify_digests:
        current = file_digest(embeddings_path)
    else:
        current = {"bytes": embeddings_path.stat().st_size, "sha256": built_from["sha256"]}
    if (current["bytes"], current["sha256"]) != (built_from["bytes"], built_from["sha256"]):
        raise ArtifactError(
            index_path, f"was built from an {artifacts.ITEM_EMBEDDINGS_FILE} of {built_from['bytes']:,} bytes, SHA-256 "
            f"{built_from['sha256'][:12]}..., but this export's is {current['bytes']:,} bytes, SHA-256 "
            f"{current['sha256'][:12]}... (re-exported, or from another model); {rebuild}", field="built_from",
        )
    faiss = require_faiss()
    try:
        index = faiss.read_index(str(index_path))
    except RuntimeError as error:
        raise ArtifactError(index_path, f"faiss {faiss.__version__} cannot read it ({str(error).splitlines()[0]}); {rebuild}") from error
    indexed = sidecar["n_items"] - sidecar["first_id"]
    if index.ntotal != indexed or index.d != sidecar["dim"]:
        raise ArtifactError(
            index_path, f"holds {index.ntotal:,} vectors of {index.d} dimensions, but {sidecar_path.name} says "
            f"{indexed:,} of {sidecar['dim']}; {rebuild}", field="ntotal",
        )
    if item_vectors is not None and tuple(item_vectors.shape) != (sidecar["n_items"], sidecar["dim"]):
        raise ArtifactError(
            index_path, f"indexes {sidecar['n_items']:,} items of {sidecar['dim']} dimensions, but the item vectors "
            f"given are {tuple(item_vectors.shape)}; {rebuild}", field="n_items",
        )
    ann = AnnIndex(index, sidecar["kind"], sidecar["first_id"], sidecar["n_items"], item_vectors, sidecar["params"])
    ann.set_search_effort(**{key: sidecar["params"][key] for key in SEARCH_PARAMS if key in sidecar["params"]})
    return ann


def read_sidecar(path):
    """``item_index.json`` as a dict with every key of :data:`SIDECAR_KEYS`; ArtifactError naming it otherwise."""
    try:
        sidecar = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise ArtifactError(path, f"cannot be read as JSON ({error})") from error
    missing = [key for key in SIDECAR_KEYS if not isinstance(sidecar, dict) or key not in sidecar]
    if missing:
        raise ArtifactError(path, f"lacks {', '.join(missing)}; rebuild the index with `mind-recbole index`", field=missing[0])
    for key in ("built_from", "index_file"):
        entry = sidecar[key]
        if not (isinstance(entry, dict) and isinstance(entry.get("bytes"), int) and isinstance(entry.get("sha256"), str)):
            raise ArtifactError(path, f"{key} must be {{'bytes': int, 'sha256': str}}, got {entry!r}", field=key)
    for key in ("first_id", "n_items", "dim"):
        if not isinstance(sidecar[key], int) or sidecar[key] < 0:
            raise ArtifactError(path, f"{key} must be an integer >= 0, got {sidecar[key]!r}", field=key)
    if sidecar["kind"] not in ("flat", "hnsw", "ivf") or not isinstance(sidecar["params"], dict):
        raise ArtifactError(path, f"kind must be flat, hnsw or ivf with a params object, got {sidecar['kind']!r}", field="kind")
    return sidecar


def _check_digest(path, recorded, verify_digests, recorder, rebuild):
    """ArtifactError naming ``path`` when its size (and, with ``verify_digests``, SHA-256) is not ``recorded``."""
    size = path.stat().st_size
    if size != recorded["bytes"]:
        raise ArtifactError(path, f"is {size:,} bytes, but {recorder} {recorded['bytes']:,}: truncated or altered; {rebuild}",
                            field="bytes")
    if verify_digests and file_digest(path)["sha256"] != recorded["sha256"]:
        raise ArtifactError(path, f"its SHA-256 differs from the one {recorder} (same size): altered; {rebuild}",
                            field="sha256")


def tower_index(tower, on_build=None):
    """The index ``mind-recbole index`` saved in ``tower``'s export (checked against its item
    embeddings), else an HNSW index built now, after calling ``on_build()`` (to say so)."""
    index = load_index(tower.model_dir, tower.item_vectors, recorded_embeddings_sha256(tower.metadata))
    if index is None:
        if on_build is not None:
            on_build()
        index = build_index(tower.item_vectors, kind="hnsw")
    return index


def recorded_embeddings_sha256(metadata):
    """The SHA-256 of ``item_embeddings.npy`` that ``user_tower.onnx`` recorded (``UserTower.metadata``),
    which the tower compared with the file at load; None when not recorded."""
    try:
        return json.loads(metadata[artifacts.META_FILE_DIGESTS])[artifacts.ITEM_EMBEDDINGS_FILE]["sha256"]
    except (KeyError, TypeError, ValueError):
        return None
