"""faiss ANN that keeps its promise: exactly ``topk`` items whenever the catalogue has them, a saved
index (``export.ann_index``, ``mind-recbole index``) that round-trips and refuses other embeddings
or altered bytes, and high recall on a clustered catalogue."""

import json
import shutil

import numpy as np
import pytest

from export import artifacts
from export.ann_index import build_saved_index, index_paths, load_index, save_index
from export.artifacts import ArtifactError
from export.retrieval import ann_topk, build_index, max_over_interests_topk, recall_at_n

faiss = pytest.importorskip("faiss")


def clustered(seed, n_items, batch=32, k=4, dim=16, clusters=40, spread=0.3):
    """Items around ``clusters`` centres; each user's interests near centres too (1..K active)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    items = (centres[rng.integers(0, clusters, n_items)] + spread * rng.standard_normal((n_items, dim))).astype(np.float32)
    interests = (centres[rng.integers(0, clusters, (batch, k))] + spread * rng.standard_normal((batch, k, dim))).astype(np.float32)
    mask = np.arange(k)[None, :] < rng.integers(1, k + 1, batch)[:, None]
    return rng, interests, mask, items


def model_dir_with(tmp_path, items, name="model"):
    """A directory holding only ``item_embeddings.npy`` (all that the index files depend on)."""
    folder = tmp_path / name
    folder.mkdir()
    np.save(folder / artifacts.ITEM_EMBEDDINGS_FILE, items)
    return folder


def assert_same(a, b):
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


# ---------------------------------------------------------------------------------------------- topk items
@pytest.mark.parametrize("kind,effort", [("hnsw", {"ef_search": 4}), ("ivf", {"nprobe": 1})])
def test_exactly_topk_items_whenever_the_catalogue_has_them(kind, effort):
    """Tiny efSearch / nprobe return fewer items than asked: those users are scored exactly."""
    rng, interests, mask, items = clustered(1, 500, batch=8)
    exclude = [rng.choice(np.arange(1, 500), n, replace=False) for n in (0, 3, 40, 490, 499, 10, 0, 1)]
    index = build_index(items, kind=kind, nlist=32, **effort)
    for topk in (1, 30, 200, 600):
        result = ann_topk(index, interests, mask, topk, exclude=exclude)
        eligible = np.array([499 - len(e) for e in exclude])  # 499 indexed items (0 is padding)
        served = (result.ids >= 0).sum(axis=1)
        assert result.ids.shape == (8, topk)
        np.testing.assert_array_equal(served, np.minimum(topk, eligible))
        for row, ids in enumerate(result.ids):
            found = ids[ids >= 0]
            assert len(set(found.tolist())) == len(found)  # no item twice
            assert not np.isin(found, exclude[row]).any() and (found != 0).all()
            assert (result.ids[row, served[row]:] == -1).all() and np.isneginf(result.scores[row, served[row]:]).all()
            assert np.all(np.diff(result.scores[row, : served[row]]) <= 0)


def test_flat_index_equals_exact_scoring_including_winning_interests():
    rng, interests, mask, items = clustered(2, 800)
    exclude = [rng.choice(800, 5, replace=False) for _ in range(32)]
    exact = max_over_interests_topk(interests, mask, items, 50, exclude=exclude)
    flat = ann_topk(build_index(items, kind="flat"), interests, mask, 50, exclude=exclude)
    np.testing.assert_array_equal(flat.ids, exact.ids)
    np.testing.assert_array_equal(flat.interests, exact.interests)
    np.testing.assert_allclose(flat.scores, exact.scores, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind,settings", [("ivf", {"nlist": 64, "nprobe": 8}), ("hnsw", {"ef_search": 512})])
def test_recall_is_high_on_a_clustered_catalogue(kind, settings):
    """(On tight clusters an inner-product HNSW needs a large efSearch: 0.94 at 64 or 128 here.)"""
    _, interests, mask, items = clustered(3, 20_000, batch=64)
    exact = max_over_interests_topk(interests, mask, items, 50)
    approx = ann_topk(build_index(items, kind=kind, **settings), interests, mask, 50)
    assert recall_at_n(approx.ids, exact.ids) >= 0.95


# ---------------------------------------------------------------------------------------------- saved index
@pytest.mark.parametrize("kind,settings", [("ivf", {"nlist": 16, "nprobe": 3}), ("hnsw", {"ef_search": 20}), ("flat", {})])
def test_saved_index_round_trips_with_the_same_results(tmp_path, kind, settings):
    _, interests, mask, items = clustered(4, 3000)
    model_dir = model_dir_with(tmp_path, items)
    fresh = build_saved_index(model_dir, items, kind, **settings)
    loaded = load_index(model_dir, items)
    assert (loaded.kind, loaded.first_id, loaded.n_items, loaded.params) == (kind, 1, 3000, fresh.params)
    assert_same(ann_topk(loaded, interests, mask, 50), ann_topk(fresh, interests, mask, 50))
    sidecar = json.loads((model_dir / artifacts.ITEM_INDEX_SIDECAR_FILE).read_text())
    assert sidecar["kind"] == kind and sidecar["faiss_version"] == faiss.__version__
    assert sidecar["built_from"] == {"file": artifacts.ITEM_EMBEDDINGS_FILE,
                                     **artifacts.file_digest(model_dir / artifacts.ITEM_EMBEDDINGS_FILE)}
    assert sidecar["index_file"]["sha256"] == artifacts.file_digest(model_dir / artifacts.ITEM_INDEX_FILE)["sha256"]
    if kind == "ivf":
        assert loaded.index.nprobe == 3 and sidecar["params"] == {"nlist": 16, "nprobe": 3, "seed": 0}
    if kind == "hnsw":
        assert loaded.index.hnsw.efSearch == 20


def test_no_saved_index_is_none_and_a_search_effort_change_is_saved(tmp_path):
    _, _, _, items = clustered(5, 1000)
    model_dir = model_dir_with(tmp_path, items)
    assert load_index(model_dir) is None
    index = build_index(items, kind="ivf", nlist=8, nprobe=2)
    index.set_search_effort(nprobe=5)
    save_index(index, model_dir)
    assert load_index(model_dir).index.nprobe == 5


@pytest.fixture
def saved(tmp_path):
    _, _, _, items = clustered(6, 2000)
    model_dir = model_dir_with(tmp_path, items)
    build_saved_index(model_dir, items, "ivf", nlist=16)
    return model_dir, items


def test_an_index_of_other_embeddings_is_refused(saved):
    model_dir, items = saved
    other = items.copy()
    other[7, 3] += 1.0  # same shape and size, other bytes: e.g. a re-export
    np.save(model_dir / artifacts.ITEM_EMBEDDINGS_FILE, other)
    with pytest.raises(ArtifactError, match=r"item_index\.faiss: was built from an item_embeddings\.npy of .* but this "
                       r"export's is .*; rebuild it with `mind-recbole index") as error:
        load_index(model_dir, other)
    assert error.value.path == str(model_dir / artifacts.ITEM_INDEX_FILE) and error.value.field == "built_from"
    # the digest a UserTower verified is used instead of hashing the file again
    recorded = artifacts.file_digest(model_dir / artifacts.ITEM_EMBEDDINGS_FILE)["sha256"]
    with pytest.raises(ArtifactError, match="was built from"):
        load_index(model_dir, other, embeddings_sha256=recorded)
    np.save(model_dir / artifacts.ITEM_EMBEDDINGS_FILE, items[:-1])  # another size: found without hashing
    with pytest.raises(ArtifactError, match="was built from"):
        load_index(model_dir, verify_digests=False)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_altered_index_bytes_are_refused(saved, damage):
    model_dir, items = saved
    path = model_dir / artifacts.ITEM_INDEX_FILE
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        del data[-100:]
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError) as error:
        load_index(model_dir, items)
    assert error.value.path == str(path)
    assert error.value.field == ("sha256" if damage == "flip" else "bytes")
    assert ("SHA-256 differs" if damage == "flip" else "truncated or altered") in str(error.value)


def test_missing_or_malformed_files_are_named(saved, tmp_path):
    model_dir, items = saved
    index_file, sidecar = index_paths(model_dir)
    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    (copy / sidecar.name).unlink()
    with pytest.raises(ArtifactError, match=r"item_index\.faiss: has no item_index\.json beside it"):
        load_index(copy)
    shutil.copy(sidecar, copy / sidecar.name)
    (copy / index_file.name).unlink()
    with pytest.raises(ArtifactError, match=r"item_index\.json: describes item_index\.faiss, which is missing"):
        load_index(copy)
    sidecar.write_text("{not json")
    with pytest.raises(ArtifactError, match=r"item_index\.json: cannot be read as JSON"):
        load_index(model_dir)
    sidecar.write_text(json.dumps({"kind": "ivf"}))
    with pytest.raises(ArtifactError, match=r"item_index\.json: lacks params, first_id") as error:
        load_index(model_dir)
    assert error.value.field == "params"


def test_item_vectors_of_another_shape_are_refused(saved):
    model_dir, items = saved
    with pytest.raises(ArtifactError, match=r"indexes 2,000 items of 16 dimensions, but the item vectors given are \(1999, 16\)"):
        load_index(model_dir, items[:-1], verify_digests=False)


def test_a_failed_save_keeps_the_previous_index(saved, monkeypatch):
    model_dir, items = saved
    before = [p.read_bytes() for p in index_paths(model_dir)]

    def broken_write(index, path):
        open(path, "wb").write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(faiss, "write_index", broken_write)
    with pytest.raises(RuntimeError, match="disk full"):
        build_saved_index(model_dir, items, "ivf", nlist=4)
    assert [p.read_bytes() for p in index_paths(model_dir)] == before
    assert sorted(p.name for p in model_dir.iterdir()) == sorted(
        [artifacts.ITEM_EMBEDDINGS_FILE, artifacts.ITEM_INDEX_FILE, artifacts.ITEM_INDEX_SIDECAR_FILE]
    )  # no temporary file left
    monkeypatch.undo()
    assert load_index(model_dir, items).params["nlist"] == 16


# ---------------------------------------------------------------------------------------------- the command
def test_index_command_then_retrieve_uses_the_saved_index(mind_export, tmp_path, capsys):
    from export.runtime import UserTower
    from mind_recbole.cli import main

    model_dir = tmp_path / "model"
    shutil.copytree(mind_export[0], model_dir)
    history = UserTower(model_dir, provider="cpu").item_tokens[20:24]
    retrieve = ["retrieve", "--model-dir", str(model_dir), "--history", *history, "--topk", "5", "--ann", "--json"]

    assert main(retrieve) == 0  # no saved index: one is built for the call, and stderr says so
    captured = capsys.readouterr()
    assert json.loads(captured.out)["search"] == "hnsw" and "no saved index" in captured.err

    assert main(["index", "--model-dir", str(model_dir), "--kind", "ivf", "--nlist", "8", "--nprobe", "2"]) == 0
    assert "wrote " in capsys.readouterr().out
    assert main(retrieve) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert payload["search"] == "ivf" and len(payload["items"]) == 5 and captured.err == ""
    from export.service.batch_retrieval import open_retriever

    assert open_retriever(model_dir, provider="cpu", ann=True).describe()["ann_index"] == "ivf"  # the service loads it too

    assert main(["index", "--model-dir", str(model_dir), "--kind", "hnsw", "--nlist", "8"]) == 2
    assert "nlist is a setting of ivf indexes" in capsys.readouterr().err

    path = model_dir / artifacts.ITEM_INDEX_FILE
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    assert main(retrieve) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mind-recbole retrieve: error: {path}: its SHA-256 differs") and "mind-recbole index" in err


def test_index_command_with_bad_input_prints_one_line(tmp_path, capsys):
    from mind_recbole.cli import main

    assert main(["index", "--model-dir", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mind-recbole index: error: {tmp_path / 'nowhere' / artifacts.ONNX_FILE} not found")
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as exit_status:
        main(["index", "--model-dir", str(tmp_path), "--nprobe", "0"])
    assert exit_status.value.code == 2 and "expected an integer >= 1, got '0'" in capsys.readouterr().err
