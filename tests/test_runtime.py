"""The serving side: UserTower (onnxruntime), exact and ANN retrieval, `mind-recbole retrieve`, no torch."""

import json
import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from export import artifacts
from export.artifacts import ArtifactError
from export.retrieval import ann_recall, ann_topk, build_index, max_over_interests_topk, recall_at_n
from export.runtime import CPU, CUDA, ProviderFallbackWarning, UserTower, select_providers
from tests.conftest import PROJECT_ROOT
from tests.reference_topk import reference_topk


def random_problem(seed, batch, k, dim, n_items):
    rng = np.random.default_rng(seed)
    interests = rng.standard_normal((batch, k, dim)).astype(np.float32)
    mask = rng.random((batch, k)) < 0.5
    mask[:, 0] = True
    items = rng.standard_normal((n_items, dim)).astype(np.float32)
    return rng, interests, mask, items


# ---------------------------------------------------------------------------------------------- exact top-k
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    batch=st.integers(1, 6),
    k=st.integers(1, 4),
    n_items=st.integers(2, 400),
    topk=st.integers(1, 60),
    chunk_size=st.integers(1, 500),
)
def test_exact_topk_equals_brute_force(seed, batch, k, n_items, topk, chunk_size):
    rng, interests, mask, items = random_problem(seed, batch, k, 8, n_items)
    exclude = [rng.choice(n_items, rng.integers(0, min(4, n_items)), replace=False) for _ in range(batch)]
    result = max_over_interests_topk(interests, mask, items, topk, chunk_size=chunk_size, exclude=exclude)
    expected_ids, expected_scores, expected_interest = reference_topk(interests, mask, items, topk, exclude)
    finite = np.isfinite(expected_scores)
    assert result.ids.shape == expected_ids.shape
    assert np.array_equal(result.ids[finite], expected_ids[finite])
    assert np.allclose(result.scores[finite], expected_scores[finite], atol=1e-5)
    assert np.array_equal(result.interests[finite], expected_interest[finite])
    assert (result.ids[~finite] == -1).all() and np.isneginf(result.scores[~finite]).all()
    assert mask[np.arange(batch)[:, None].repeat(result.ids.shape[1], 1)[finite], result.interests[finite]].all()


@pytest.mark.parametrize("chunk_size", [1000, 999, 333, 7, None])
def test_exact_topk_chunks_not_dividing_n_and_masked_interests(chunk_size):
    _, interests, mask, items = random_problem(0, 5, 4, 16, 3001)
    mask[:, 1:] = [[True, False, True], [False, False, False], [True, True, True], [False, True, False], [False, False, True]]
    result = max_over_interests_topk(interests, mask, items, 50, chunk_size=chunk_size)
    ids, scores, winner = reference_topk(interests, mask, items, 50)
    assert np.array_equal(result.ids, ids) and np.array_equal(result.interests, winner)
    assert np.allclose(result.scores, scores, atol=1e-5)
    assert (result.ids != 0).all()  # padding never returned
    assert np.all(np.diff(result.scores, axis=1) <= 0)


def test_exact_topk_reads_memory_mapped_items_and_single_vectors(tmp_path):
    _, interests, _, items = random_problem(1, 3, 1, 8, 500)
    np.save(tmp_path / "items.npy", items)
    mapped = np.load(tmp_path / "items.npy", mmap_mode="r")
    a = max_over_interests_topk(interests[:, 0], None, mapped, 10, chunk_size=64)  # [B, D], no mask
    b = max_over_interests_topk(interests, np.ones((3, 1), bool), items, 10)
    assert np.array_equal(a.ids, b.ids) and (a.interests == 0).all()


def test_exact_topk_rejects_bad_shapes_and_empty_masks():
    _, interests, mask, items = random_problem(2, 2, 4, 8, 50)
    with pytest.raises(ValueError, match="item_vectors"):
        max_over_interests_topk(interests, mask, items[:, :4], 5)
    mask[1] = False
    with pytest.raises(ValueError, match="at least one active interest"):
        max_over_interests_topk(interests, mask, items, 5)


# ---------------------------------------------------------------------------------------------- ANN
def test_flat_index_is_exact_and_hnsw_ivf_recall_is_high():
    pytest.importorskip("faiss")
    rng, interests, mask, items = random_problem(3, 20, 4, 16, 5000)
    exclude = [rng.choice(5000, 10, replace=False) for _ in range(20)]
    exact = max_over_interests_topk(interests, mask, items, 50, exclude=exclude)
    flat = ann_topk(build_index(items, kind="flat"), interests, mask, 50, exclude=exclude)
    assert np.array_equal(flat.ids, exact.ids) and np.array_equal(flat.interests, exact.interests)
    assert np.allclose(flat.scores, exact.scores, atol=1e-4)
    assert (flat.ids != 0).all() and not any(np.isin(flat.ids[i], exclude[i]).any() for i in range(20))
    hnsw = ann_recall(build_index(items, kind="hnsw"), interests, mask, items, 50, exclude=exclude)
    assert hnsw["recall"] >= 0.9 and hnsw["users"] == 20 and hnsw["index"] == "hnsw", hnsw
    ivf = build_index(items, kind="ivf", nprobe=16)  # random Gaussian vectors: a hard case for IVF
    coarse = ann_recall(ivf, interests, mask, items, 50, exclude=exclude)["recall"]
    ivf.set_search_effort(nprobe=ivf.index.nlist)  # every list: exact
    assert 0.3 < coarse <= ann_recall(ivf, interests, mask, items, 50, exclude=exclude)["recall"] == 1.0


def test_ann_merges_interests_without_duplicates():
    pytest.importorskip("faiss")
    _, interests, mask, items = random_problem(4, 3, 4, 8, 300)
    interests[:, 1] = interests[:, 0]  # two identical interests find the same items
    mask[:, :2] = True
    result = ann_topk(build_index(items, kind="flat"), interests, mask, 40)
    for row in result.ids:
        assert len(set(row.tolist())) == len(row)
    assert recall_at_n(result.ids, max_over_interests_topk(interests, mask, items, 40).ids) == 1.0


def test_missing_faiss_raises_an_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss -> ImportError
    with pytest.raises(ImportError, match=r"pip install mind-recbole\[faiss\]"):
        build_index(np.ones((3, 2), np.float32))


# ---------------------------------------------------------------------------------------------- UserTower
@pytest.fixture(scope="module")
def tower(mind_export):
    return UserTower(mind_export[0], provider="cpu")


def model_outputs(model, tower, histories):
    import torch

    ids = [[tower.item_index[t] for t in h][-tower.max_seq_length :] for h in histories]
    seq, lengths = UserTower.pad([np.asarray(i) for i in ids])
    with torch.no_grad():
        interests, mask = model(torch.from_numpy(seq), torch.from_numpy(lengths))
    return interests.numpy(), mask.numpy()


def test_tower_reads_metadata_and_the_item_side(tower, mind_export):
    _, model, _, _ = mind_export
    assert (tower.interest_num, tower.embedding_size, tower.max_seq_length) == (4, 16, 20)
    assert tower.item_vectors.shape == (model.n_items, 16) and tower.item_tokens[0] == "[PAD]"
    assert tower.providers == [CPU] and not tower.uses_user_id


def test_encode_matches_pytorch_for_a_mixed_length_batch(tower, mind_export):
    _, model, _, _ = mind_export
    tokens = tower.item_tokens
    histories = [tokens[1:2], tokens[10:13], tokens[100:120], tokens[200:207], tokens[5:9]]
    interests, mask = tower.encode(histories, batch_size=2)
    expected, expected_mask = model_outputs(model, tower, histories)
    assert interests.dtype == np.float32 and mask.dtype == bool
    assert np.abs(interests - expected).max() <= 1e-5 and np.array_equal(mask, expected_mask)
    one_by_one = np.concatenate([tower.encode([h])[0] for h in histories])
    assert np.abs(one_by_one - interests).max() <= 1e-6  # padding to the batch's longest changes nothing


def test_too_long_history_keeps_the_most_recent_items(tower, mind_export):
    _, model, _, _ = mind_export
    history = tower.item_tokens[1:61]  # 60 items > max_seq_length 20
    interests, mask = tower.encode([history])
    recent, recent_mask = tower.encode([history[-20:]])
    assert np.array_equal(interests, recent) and np.array_equal(mask, recent_mask)
    assert not np.allclose(interests, tower.encode([history[:20]])[0])
    expected, _ = model_outputs(model, tower, [history])
    assert np.abs(interests - expected).max() <= 1e-5


def test_unknown_tokens_are_listed_or_skipped(tower):
    known = tower.item_tokens[1:4]
    with pytest.raises(ValueError, match=r"2 unknown item token\(s\): 'NOPE1', 'NOPE2'"):
        tower.encode([known, ["NOPE1", known[0], "NOPE2"]])
    with pytest.raises(ValueError):
        tower.encode([["[PAD]"]])  # the padding token is not an item
    skipped, _ = tower.encode([["NOPE1", *known, "NOPE2"]], on_unknown="skip")
    assert np.array_equal(skipped, tower.encode([known])[0])
    with pytest.raises(ValueError, match="history 0 has no known item"):
        tower.encode([["NOPE1"]], on_unknown="skip")


def test_empty_history_and_bad_arguments_are_clear_errors(tower):
    with pytest.raises(ValueError, match="history 1 is empty"):
        tower.encode([tower.item_tokens[1:3], []])
    with pytest.raises(TypeError, match="list of item tokens"):
        tower.encode(["B00SINGLE"])
    with pytest.raises(ValueError, match="on_unknown"):
        tower.encode([tower.item_tokens[1:3]], on_unknown="ignore")


def test_missing_metadata_key_is_named(mind_export, tmp_path):
    model_dir = mind_export[0]
    for name in (artifacts.ITEM_EMBEDDINGS_FILE, artifacts.ITEM_TOKENS_FILE):
        shutil.copy(model_dir / name, tmp_path / name)
    proto = onnx.load(str(model_dir / artifacts.ONNX_FILE))
    kept = {p.key: p.value for p in proto.metadata_props if p.key != "max_seq_length"}
    onnx.helper.set_model_props(proto, kept)
    onnx.save_model(proto, str(tmp_path / artifacts.ONNX_FILE))
    with pytest.raises(ArtifactError, match="metadata key 'max_seq_length' is missing") as error:
        UserTower(tmp_path)
    assert error.value.field == "max_seq_length" and error.value.path == str(tmp_path / artifacts.ONNX_FILE)
    with pytest.raises(FileNotFoundError, match="user_tower.onnx"):
        UserTower(tmp_path / "nowhere")


def test_cuda_request_on_a_cpu_only_onnxruntime_falls_back_with_a_warning(mind_export, monkeypatch):
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CPU])
    with pytest.warns(ProviderFallbackWarning, match="onnxruntime-gpu"):
        tower = UserTower(mind_export[0], provider="cuda")
    assert tower.providers == [CPU]
    assert tower.encode([tower.item_tokens[1:4]])[0].shape == (1, 4, 16)
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider"):
        UserTower(mind_export[0], provider="cuda", strict=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert select_providers("auto") == [CPU]  # auto never warns
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: [CUDA, CPU])
    assert select_providers("auto") == [CUDA, CPU] and select_providers("cpu") == [CPU]
    with pytest.raises(ValueError, match="provider"):
        select_providers("tpu")


# ---------------------------------------------------------------------------------------------- CLI
def test_cli_retrieve_prints_a_table_and_excludes_the_history(mind_export, capsys):
    from mind_recbole.cli import main

    model_dir = mind_export[0]
    tower = UserTower(model_dir, provider="cpu")
    history = tower.item_tokens[1:9]
    assert main(["retrieve", "--model-dir", str(model_dir), "--history", *history, "--topk", "7", "--provider", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "3 of 4 interests active" in lines[0] and lines[1].split() == ["rank", "item", "score", "interest"]
    rows = [line.split() for line in lines[2:]]
    assert len(rows) == 7 and [r[0] for r in rows] == [str(i) for i in range(1, 8)]
    assert not {r[1] for r in rows} & set(history)
    interests, mask = tower.encode([history])
    exact = max_over_interests_topk(interests, mask, tower.item_vectors, 7, exclude=[range(1, 9)])
    assert [r[1] for r in rows] == [tower.item_tokens[i] for i in exact.ids[0]]

    assert main(["retrieve", "--model-dir", str(model_dir), "--history", "NOPE", history[0]]) == 2
    assert "'NOPE'" in capsys.readouterr().err


def test_cli_retrieve_ann_json(mind_export, capsys):
    pytest.importorskip("faiss")
    from mind_recbole.cli import main

    model_dir = mind_export[0]
    history = UserTower(model_dir, provider="cpu").item_tokens[20:24]
    assert main(["retrieve", "--model-dir", str(model_dir), "--history", *history, "--topk", "5", "--ann", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["search"] == "hnsw" and len(payload["items"]) == 5 and payload["active_interests"] == 2


BLOCKED_RUN = r"""
import sys

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "recbole"):
            raise ImportError(f"{name} is blocked: the serving path must not import it")
        return None

sys.meta_path.insert(0, Blocker())
import export.retrieval
import export.runtime
from mind_recbole.cli import main

status = main(sys.argv[1:])
leaked = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "recbole"))
assert not leaked, leaked
sys.exit(status)
"""


def test_retrieve_runs_where_torch_cannot_be_imported(mind_export, tmp_path):
    model_dir = mind_export[0]
    history = json.loads((model_dir / artifacts.ITEM_TOKENS_FILE).read_text())[30:36]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}

    def run(*extra):
        args = ["retrieve", "--model-dir", str(model_dir), "--history", *history, "--topk", "10", *extra]
        return subprocess.run(
            [sys.executable, "-c", BLOCKED_RUN, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )

    result = run("--json")
    assert result.returncode == 0, result.stderr[-3000:]
    payload = json.loads(result.stdout)
    assert len(payload["items"]) == 10 and payload["active_interests"] == 2 and payload["search"] == "exact"
    assert all(set(item) == {"rank", "item", "score", "interest"} for item in payload["items"])
    assert [item["score"] for item in payload["items"]] == sorted((i["score"] for i in payload["items"]), reverse=True)
    text = run("--provider", "cuda")  # falls back to CPU here, with a warning on stderr
    assert text.returncode == 0, text.stderr[-3000:]
    assert "exact search on CPUExecutionProvider" in text.stdout
    if CUDA not in __import__("onnxruntime").get_available_providers():
        assert "running on CPU" in text.stderr


def test_export_package_imports_no_torch():
    code = (
        "import sys, export, export.runtime, export.retrieval, export.artifacts, mind_recbole.cli; "
        "leaked = [m for m in sys.modules if m.split('.')[0] in ('torch', 'recbole')]; "
        "assert not leaked, leaked"
    )
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_ann_returns_topk_items_whenever_the_catalogue_has_them(kind):
    """HNSW returns about efSearch items per query and IVF only what its probed lists hold: a user
    left short is scored exactly, so ``retrieve --ann --topk 1000`` never answers with fewer."""
    pytest.importorskip("faiss")
    rng, interests, mask, items = random_problem(5, 6, 4, 8, 300)
    exclude = [rng.choice(np.arange(1, 300), 5, replace=False) for _ in range(6)]
    index = build_index(items, kind=kind, ef_search=8, nprobe=1)
    for topk in (150, 294, 299):  # 294 = the 299 indexed items less 5 exclusions
        result = ann_topk(index, interests, mask, topk, exclude=exclude)
        served = (result.ids >= 0).sum(axis=1)
        assert (served == min(topk, 294)).all(), served
        assert not any(np.isin(result.ids[u], exclude[u]).any() for u in range(6))
        assert (result.ids != 0).all()  # never the padding row
    exact = max_over_interests_topk(interests, mask, items, 294, exclude=exclude)
    full = ann_topk(index, interests, mask, 294, exclude=exclude)
    assert [set(row) for row in full.ids] == [set(row) for row in exact.ids]  # the whole catalogue, as exact


def test_tower_on_cuda_gives_the_cpu_interests(mind_export, tower):
    """The CUDA provider path of the tower (skipped where onnxruntime has no CUDA or no GPU answers)."""
    if CUDA not in __import__("onnxruntime").get_available_providers():
        pytest.skip(f"no {CUDA} in this onnxruntime: pip install mind-recbole[gpu] on a GPU machine")
    try:
        gpu_tower = UserTower(mind_export[0], provider="cuda", strict=True)
    except RuntimeError as error:
        pytest.skip(f"CUDA provider listed but not usable here: {error}")
    assert gpu_tower.providers[0] == CUDA
    histories = [tower.item_tokens[1:6], tower.item_tokens[7:9], tower.item_tokens[3:40]]
    gpu_interests, gpu_mask = gpu_tower.encode(histories)
    cpu_interests, cpu_mask = tower.encode(histories)
    np.testing.assert_array_equal(gpu_mask, cpu_mask)
    np.testing.assert_allclose(gpu_interests, cpu_interests, rtol=1e-3, atol=1e-4)
