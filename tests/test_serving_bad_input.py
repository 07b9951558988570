"""Serving under bad input: broken or mismatched export files, bad requests, threads, and properties.

Every failure must be a typed error (``export.artifacts``: ``ArtifactError`` for files,
``InputError`` subclasses for requests, all ``ValueError``) naming the file, field or batch rows.
"""

import json
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from export import artifacts
from export.artifacts import ArtifactError, EmptyHistoryError, InputError, ItemIdError, UnknownItemError
from export.retrieval import ann_topk, build_index, max_over_interests_topk, retrieve
from export.runtime import UserTower
from tests.reference_topk import reference_topk

PROPERTY = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def tower(mind_export):
    return UserTower(mind_export[0], provider="cpu")


def copy_export(model_dir, tmp_path):
    """A private copy of an exported directory, to break one file of it."""
    target = tmp_path / "model"
    shutil.copytree(model_dir, target)
    return target


def rewrite_metadata(model_dir, drop=(), **values):
    """Rewrite ``user_tower.onnx``'s metadata: ``values`` set, keys in ``drop`` removed."""
    path = model_dir / artifacts.ONNX_FILE
    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props if p.key not in drop}
    props.update({key: str(value) for key, value in values.items()})
    onnx.helper.set_model_props(proto, props)
    onnx.save_model(proto, str(path))


def foreign_graph(path, inputs, outputs, metadata):
    """Save an ONNX graph that is not a user tower: every output is Identity of the first input."""
    make = onnx.helper.make_tensor_value_info
    nodes = [onnx.helper.make_node("Identity", [inputs[0][0]], [name]) for name, _, _ in outputs]
    graph = onnx.helper.make_graph(nodes, "foreign", [make(*i) for i in inputs], [make(*o) for o in outputs])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)], ir_version=10)
    onnx.helper.set_model_props(model, metadata)
    onnx.save_model(model, str(path))


def per_row_reference(tower, sequences):
    """Interests and mask of each id history encoded alone, one session call per row (no batching)."""
    rows = [tower.run(np.asarray([s[-tower.max_seq_length :]]), [len(s[-tower.max_seq_length :])]) for s in sequences]
    return np.concatenate([r[0] for r in rows]), np.concatenate([r[1] for r in rows])


# ---------------------------------------------------------------------------------------------- broken files
@pytest.mark.parametrize("damage", ["truncated", "empty", "text"])
def test_corrupt_onnx_file_is_named(mind_export, tmp_path, damage):
    model_dir = copy_export(mind_export[0], tmp_path)
    path = model_dir / artifacts.ONNX_FILE
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "empty": b"", "text": b"not a model\n" * 50}[damage])
    with pytest.raises(ArtifactError) as error:
        UserTower(model_dir, provider="cpu")
    assert error.value.path == str(path) and str(error.value).startswith(str(path))
    assert ("empty (0 bytes)" if damage == "empty" else "cannot load it") in str(error.value)


def test_onnx_that_is_not_a_user_tower_is_named(mind_export, tmp_path):
    model_dir = copy_export(mind_export[0], tmp_path)
    metadata = {"interest_num": "4", "embedding_size": "16", "max_seq_length": "20"}
    float32, int64 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT64
    foreign_graph(model_dir / artifacts.ONNX_FILE, [("x", float32, ["n", 3])], [("y", float32, ["n", 3])], metadata)
    with pytest.raises(ArtifactError, match="not an interest-model user tower") as error:
        UserTower(model_dir, provider="cpu")
    message = str(error.value)
    assert "input 'item_seq' is missing" in message and "output 'interests' is missing" in message
    assert "unexpected input 'x'" in message and "x tensor(float) ['n', 3]" in message

    # the right names, the wrong types: item_seq as float, interests as int64
    foreign_graph(
        model_dir / artifacts.ONNX_FILE,
        [("item_seq", float32, ["batch", "seq_len"]), ("item_seq_len", int64, ["batch"])],
        [("interests", float32, ["batch", 4, 16]), ("interest_mask", float32, ["batch", 4])],
        metadata,
    )
    with pytest.raises(ArtifactError, match=r"'item_seq' is tensor\(float\) of rank 2, expected tensor\(int64\)"):
        UserTower(model_dir, provider="cpu")


def test_metadata_disagreeing_with_the_graph_is_named(mind_export, tmp_path):
    model_dir = copy_export(mind_export[0], tmp_path)
    rewrite_metadata(model_dir, embedding_size=32)  # the graph outputs D=16
    with pytest.raises(ArtifactError, match=r"'interests' has shape \['batch', 4, 16\] but metadata 'embedding_size' is 32") as error:
        UserTower(model_dir, provider="cpu")
    assert error.value.field == "embedding_size"
    rewrite_metadata(model_dir, embedding_size=16, interest_num="four")
    with pytest.raises(ArtifactError, match="metadata 'interest_num' is 'four', expected an integer"):
        UserTower(model_dir, provider="cpu")
    rewrite_metadata(model_dir, interest_num=4, max_graph_seq_length=10)  # < max_seq_length 20
    with pytest.raises(ArtifactError, match="max_graph_seq_length 10 < max_seq_length 20"):
        UserTower(model_dir, provider="cpu")
    rewrite_metadata(model_dir, max_graph_seq_length=20, uses_user_id="true")
    with pytest.raises(ArtifactError, match="uses_user_id is 'true' but the graph inputs are"):
        UserTower(model_dir, provider="cpu")


def test_item_files_from_another_export_are_named(mind_export, tmp_path):
    model_dir = copy_export(mind_export[0], tmp_path)
    tokens = json.loads((model_dir / artifacts.ITEM_TOKENS_FILE).read_text())
    vectors = np.load(model_dir / artifacts.ITEM_EMBEDDINGS_FILE)
    n_items = len(tokens)

    (model_dir / artifacts.ITEM_TOKENS_FILE).write_text(json.dumps(tokens + ["B0EXTRA"]))
    with pytest.raises(ArtifactError, match=f"has {n_items + 1} tokens but user_tower.onnx metadata n_items is {n_items}") as error:
        UserTower(model_dir, provider="cpu")
    assert error.value.path.endswith(artifacts.ITEM_TOKENS_FILE) and error.value.field == "n_items"

    (model_dir / artifacts.ITEM_TOKENS_FILE).write_text(json.dumps(tokens))
    np.save(model_dir / artifacts.ITEM_EMBEDDINGS_FILE, np.concatenate([vectors, vectors[:3]]))
    with pytest.raises(ArtifactError, match=f"has {n_items + 3} rows but item_tokens.json has {n_items} tokens"):
        UserTower(model_dir, provider="cpu")

    np.save(model_dir / artifacts.ITEM_EMBEDDINGS_FILE, vectors[:, :8])  # D=8 vectors, a D=16 tower
    with pytest.raises(ArtifactError, match="has 8 columns but user_tower.onnx has embedding_size 16"):
        UserTower(model_dir, provider="cpu")

    rewrite_metadata(model_dir, drop=("n_items",))  # an older export: the .npy still has to match the tokens
    np.save(model_dir / artifacts.ITEM_EMBEDDINGS_FILE, vectors[:-1])
    with pytest.raises(ArtifactError, match=f"has {n_items - 1} rows but item_tokens.json has {n_items} tokens"):
        UserTower(model_dir, provider="cpu")


@pytest.mark.parametrize("mmap", [False, True])
def test_truncated_or_wrongly_typed_item_embeddings_are_named(mind_export, tmp_path, mmap):
    model_dir = copy_export(mind_export[0], tmp_path)
    path = model_dir / artifacts.ITEM_EMBEDDINGS_FILE
    vectors = np.load(path)
    data = path.read_bytes()
    for damaged in (data[: len(data) // 2], data[:40], b""):
        path.write_bytes(damaged)
        with pytest.raises(ArtifactError, match="cannot be read as a .npy array .*truncated or corrupt") as error:
            UserTower(model_dir, provider="cpu", mmap=mmap)
        assert error.value.path == str(path)
    np.save(path, vectors.astype(np.int64))
    with pytest.raises(ArtifactError, match="dtype is int64, expected float32"):
        UserTower(model_dir, provider="cpu", mmap=mmap)
    np.save(path, vectors.ravel())
    with pytest.raises(ArtifactError, match="is 1-D"):
        UserTower(model_dir, provider="cpu", mmap=mmap)


@pytest.mark.parametrize("mmap", [False, True])
def test_nan_or_inf_item_embeddings_name_the_rows_at_load(mind_export, tmp_path, mmap):
    model_dir = copy_export(mind_export[0], tmp_path)
    tokens = json.loads((model_dir / artifacts.ITEM_TOKENS_FILE).read_text())
    vectors = np.load(model_dir / artifacts.ITEM_EMBEDDINGS_FILE)
    vectors[5, 3], vectors[len(tokens) - 1, 0] = np.nan, -np.inf
    np.save(model_dir / artifacts.ITEM_EMBEDDINGS_FILE, vectors)
    with pytest.raises(ArtifactError) as error:
        UserTower(model_dir, provider="cpu", mmap=mmap)
    message = str(error.value)
    assert message.startswith(str(model_dir / artifacts.ITEM_EMBEDDINGS_FILE)) and "2 row(s) hold NaN or inf" in message
    assert f"row 5 ({tokens[5]!r}), {len(tokens) - 1} ({tokens[-1]!r})" in message and error.value.field == 5
    # opt-out, e.g. huge mmaps (the altered file no longer matches its recorded digest either)
    unchecked = UserTower(model_dir, provider="cpu", mmap=mmap, check_finite=False, verify_digests=False)
    assert np.isnan(unchecked.item_vectors[5, 3])


def test_same_shape_files_of_another_export_or_altered_bytes_are_named(mind_export, tmp_path):
    """Nothing ties the item files to the tower but the digests user_tower.onnx records: each
    replacement below has the right shape and would otherwise serve wrong rankings."""
    model_dir = copy_export(mind_export[0], tmp_path)
    embeddings, tokens_path = model_dir / artifacts.ITEM_EMBEDDINGS_FILE, model_dir / artifacts.ITEM_TOKENS_FILE
    original = embeddings.read_bytes()
    np.save(embeddings, np.load(embeddings) * 1.01)  # another export's vectors: same shape and size
    with pytest.raises(ArtifactError, match="its SHA-256 differs from the one user_tower.onnx recorded") as error:
        UserTower(model_dir, provider="cpu")
    assert error.value.path == str(embeddings) and error.value.field == "sha256"

    altered = bytearray(original)
    altered[-4:] = np.float32(1.3e37).tobytes()  # a few bytes overwritten: one row scores 1e37
    embeddings.write_bytes(bytes(altered))
    with pytest.raises(ArtifactError, match="its SHA-256 differs"):
        UserTower(model_dir, provider="cpu")
    assert UserTower(model_dir, provider="cpu", verify_digests=False).item_vectors[-1, -1] == np.float32(1.3e37)

    embeddings.write_bytes(original)
    tokens = json.loads(tokens_path.read_text())
    tokens[1], tokens[2] = tokens[2], tokens[1]  # two items' tokens swapped: same size, wrong items served
    tokens_path.write_text(json.dumps(tokens))
    with pytest.raises(ArtifactError, match="item_tokens.json: its SHA-256 differs"):
        UserTower(model_dir, provider="cpu")
    tokens_path.write_text(json.dumps(tokens) + " ")  # one byte more
    with pytest.raises(ArtifactError, match=r"is [\d,]+ bytes, but user_tower.onnx was exported with [\d,]+") as error:
        UserTower(model_dir, provider="cpu", verify_digests=False)  # sizes are checked even without hashing
    assert error.value.field == "bytes"


def test_an_export_without_digests_is_refused(mind_export, tmp_path):
    model_dir = copy_export(mind_export[0], tmp_path)
    rewrite_metadata(model_dir, drop=(artifacts.META_FILE_DIGESTS,))
    with pytest.raises(ArtifactError, match="records no file digests") as error:
        UserTower(model_dir, provider="cpu")
    assert error.value.field == artifacts.META_FILE_DIGESTS


def test_the_manifest_lists_every_file_and_the_checkpoint(mind_export, mind_checkpoint):
    model_dir, _, _, result = mind_export
    manifest = json.loads((model_dir / artifacts.MANIFEST_FILE).read_text())
    assert set(manifest["files"]) == {p.name for p in model_dir.iterdir()} - {artifacts.MANIFEST_FILE}
    for name, digest in manifest["files"].items():
        assert digest == artifacts.file_digest(model_dir / name)
    assert manifest["checkpoint"] == {"name": mind_checkpoint.name, "sha256": artifacts.file_digest(mind_checkpoint)["sha256"]}
    assert set(manifest["versions"]) == set(artifacts.META_VERSIONS)
    recorded = json.loads(result.metadata[artifacts.META_FILE_DIGESTS])
    assert set(recorded) == {artifacts.ITEM_EMBEDDINGS_FILE, artifacts.ITEM_TOKENS_FILE}  # no user file: no profile


def test_broken_token_maps_are_named(mind_export, tmp_path):
    model_dir = copy_export(mind_export[0], tmp_path)
    path = model_dir / artifacts.ITEM_TOKENS_FILE
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match=r"item_tokens.json: not valid JSON \(.* at line 1 column \d+\)"):
        UserTower(model_dir, provider="cpu")
    tokens = json.loads(text)
    path.write_text(json.dumps([tokens[0], tokens[1], tokens[1], *tokens[3:]]))
    with pytest.raises(ArtifactError, match=rf"token {tokens[1]!r} appears twice \(ids 1 and 2\)"):
        UserTower(model_dir, provider="cpu")
    path.write_text(json.dumps({"0": "[PAD]"}))
    with pytest.raises(ArtifactError, match="expected a JSON list of string tokens"):
        UserTower(model_dir, provider="cpu")


def test_cli_reports_a_broken_export_as_an_error(mind_export, tmp_path, capsys):
    from mind_recbole.cli import main

    model_dir = copy_export(mind_export[0], tmp_path)
    (model_dir / artifacts.ONNX_FILE).write_bytes(b"")
    assert main(["retrieve", "--model-dir", str(model_dir), "--history", "B00X"]) == 2
    assert "user_tower.onnx: the file is empty" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- bad requests
def test_zero_length_histories_name_every_row(tower):
    known = tower.item_tokens[1:4]
    with pytest.raises(EmptyHistoryError, match="history 1 is empty; history 3 is empty; a user needs") as error:
        tower.encode([known, [], known, []])
    assert error.value.rows == [1, 3]
    with pytest.raises(EmptyHistoryError, match="history 0 is empty; history 2 has no known item") as error:
        tower.encode([[], known, ["NOPE"]], on_unknown="skip")
    assert error.value.rows == [0, 2]
    with pytest.raises(EmptyHistoryError) as error:  # empty rows are reported before unknown tokens
        tower.encode([["NOPE"], []])
    assert error.value.rows == [1]
    with pytest.raises(EmptyHistoryError, match="history 0, 2 are empty") as error:
        tower.encode_ids([[], [3], np.array([], np.int64)])
    assert error.value.rows == [0, 2]
    with pytest.raises(EmptyHistoryError, match="row 1 has 0"):
        tower.run(np.array([[3, 0], [0, 0]]), np.array([1, 0]))
    with pytest.raises(EmptyHistoryError):
        retrieve(tower, [known, []], topk=5)
    with pytest.raises(InputError, match="no histories"):
        tower.encode([])


def test_unknown_tokens_name_their_rows(tower):
    known = tower.item_tokens[1:4]
    with pytest.raises(UnknownItemError, match=r"2 unknown item token\(s\): 'X1', 'X2' \(first seen in history 1; histories 1, 3\)") as error:
        tower.encode([known, ["X1", *known], known, [known[0], "X2", "X1"]])
    assert error.value.rows == [1, 3] and error.value.tokens == ["X1", "X2"]
    with pytest.raises(TypeError, match="history 1 is a NoneType"):
        tower.encode([known, None])


def test_item_ids_out_of_range_are_named_in_every_id_api(tower):
    n = tower.n_items
    with pytest.raises(ItemIdError, match=rf"out of range 1..{n - 1} \(0 is padding\): history 1 position 2 has -1, history 2 position 0 has {n}") as error:
        tower.encode_ids([[1, 2, 3], [4, 5, -1], [n, 2], [0 + 7]])
    assert error.value.rows == [1, 2] and error.value.first == (1, 2, -1)
    with pytest.raises(ItemIdError, match="history 0 position 1 has 0"):
        tower.encode_ids([[5, 0, 6]])  # padding is not an item
    with pytest.raises(InputError, match="integer item ids"):
        tower.encode_ids([[1.5, 2.0]])

    # run(): ONNX Runtime's Gather would wrap -1 to the last item silently, and fail opaquely on n
    with pytest.raises(ItemIdError, match="row 0 position 1 has -1") as error:
        tower.run(np.array([[3, -1, 0]]), np.array([2]))
    assert error.value.first == (0, 1, -1)
    with pytest.raises(ItemIdError, match=f"row 1 position 0 has {n}"):
        tower.run(np.array([[3, 4], [n, 0]]), np.array([2, 1]))
    with pytest.raises(InputError, match=r"0 after each row's item_seq_len: row 0 position 2 \(item_seq_len 2\) has 9"):
        tower.run(np.array([[3, 4, 9]]), np.array([2]))
    with pytest.raises(InputError, match="item_seq must hold integer ids"):
        tower.run(np.array([[3.0, 4.0]]), np.array([2]))
    with pytest.raises(InputError, match="seq_len 21 > max_seq_length 20"):
        tower.run(np.ones((1, 21), np.int64), np.array([21]))

    interests, mask = tower.encode_ids([[1, 2, 3]])
    with pytest.raises(ItemIdError, match=f"exclude: item id\\(s\\) outside 0..{n - 1}: user 0 has {n}"):
        max_over_interests_topk(interests, mask, tower.item_vectors, 5, exclude=[[1, n]])
    with pytest.raises(ItemIdError, match="user 0 has -2"):
        max_over_interests_topk(interests, mask, tower.item_vectors, 5, exclude=[[-2]])
    try:
        index = build_index(tower.item_vectors, kind="flat")
    except ImportError:  # faiss is optional
        return
    with pytest.raises(ItemIdError, match="user 0 has -2"):
        ann_topk(index, interests, mask, 5, exclude=[[-2]])


def test_non_finite_interests_are_rejected_only_where_active(tower):
    interests, mask = tower.encode_ids([[1, 2], [3, 4, 5, 6, 7]])  # 1 and 2 active interests
    broken = interests.copy()
    broken[1, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"NaN or inf in row\(s\) 1") as error:
        max_over_interests_topk(broken, mask, tower.item_vectors, 5)
    assert error.value.rows == [1]
    inactive = interests.copy()
    inactive[0, 3] = np.inf  # an inactive slot is never scored
    result = max_over_interests_topk(inactive, mask, tower.item_vectors, 5)
    assert np.array_equal(result.ids, max_over_interests_topk(interests, mask, tower.item_vectors, 5).ids)


def test_user_tokens_on_a_model_without_profiles_are_an_error(tower):
    with pytest.raises(ValueError, match="has no user_id input"):
        tower.user_ids(["A1"])


def test_mixed_length_batch_equals_each_user_alone(tower):
    tokens = tower.item_tokens
    histories = [tokens[1:2], tokens[10:13], tokens[40:85], tokens[200:207], tokens[5:25], tokens[300:302]]
    for batch_size in (1, 4, 256):
        interests, mask = tower.encode(histories, batch_size=batch_size)
        ids = [[tower.item_index[t] for t in h] for h in histories]
        expected, expected_mask = per_row_reference(tower, ids)
        assert np.abs(interests - expected).max() <= 1e-6 and np.array_equal(mask, expected_mask)
    assert mask.sum(axis=1).tolist() == [1, 1, 4, 2, 4, 1]  # K'_u = max(1, min(4, floor(log2 n)))
    together, _ = retrieve(tower, histories, topk=10)
    for history, recommendations in zip(histories, together):
        alone, _ = retrieve(tower, [history], topk=10)
        assert [r.item_id for r in recommendations] == [r.item_id for r in alone[0]]
        assert np.allclose([r.score for r in recommendations], [r.score for r in alone[0]], atol=1e-5)


def test_item_vectors_are_read_only(tower):
    assert not tower.item_vectors.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        tower.item_vectors[1, 0] = 0.0


# ---------------------------------------------------------------------------------------------- threads
def test_threads_get_the_same_answers_as_serial_calls(mind_export):
    """Not timed: 8 threads on one tower (one session, shared item vectors) answer like one thread."""
    tower = UserTower(mind_export[0], provider="cpu", intra_op_num_threads=1)
    rng = np.random.default_rng(7)
    requests = [rng.integers(1, tower.n_items, rng.integers(1, 2 * tower.max_seq_length)).tolist() for _ in range(96)]

    def serve(history):
        interests, mask = tower.encode_ids([history])
        result = max_over_interests_topk(interests, mask, tower.item_vectors, 20, exclude=[history])
        return interests, mask, result

    serial = [serve(history) for history in requests]
    with ThreadPoolExecutor(max_workers=8) as pool:
        threaded = list(pool.map(serve, requests))
        tokens = [[tower.item_tokens[i] for i in history] for history in requests[:32]]
        threaded_retrieve = list(pool.map(lambda h: retrieve(tower, [h], topk=20)[0][0], tokens))
    for (i_s, m_s, r_s), (i_t, m_t, r_t) in zip(serial, threaded):
        assert np.array_equal(m_s, m_t) and np.abs(i_s - i_t).max() <= 1e-6
        assert np.array_equal(r_s.ids, r_t.ids) and np.allclose(r_s.scores, r_t.scores, atol=1e-6)
    for (_, _, r_s), recommendations in zip(serial, threaded_retrieve):
        assert [r.item_id for r in recommendations] == r_s.ids[0].tolist()


# ---------------------------------------------------------------------------------------------- properties
UNKNOWN_TOKENS = ["NOPE-A", "NOPE-B", "[PAD]", ""]


@st.composite
def id_batches(draw, n_items, max_len, bad_values):
    """1-4 rows of item ids 1..n_items-1; lengths 0..2*max_len (0, 1, max_len and past it often);
    about 1 row in 4 has one element replaced by a ``bad_values`` entry, 1 in 10 has only bad ones."""
    lengths = st.one_of(st.integers(1, 2 * max_len), st.sampled_from([1, max_len, max_len + 1, 2 * max_len, 0]))
    rows = []
    for _ in range(draw(st.integers(1, 4))):
        length = draw(lengths)
        row = draw(st.lists(st.integers(1, n_items - 1), min_size=length, max_size=length))
        damage = draw(st.integers(0, 19))  # 0 (hypothesis's simplest) is no damage
        if row and damage >= 15:
            row[draw(st.integers(0, len(row) - 1))] = draw(st.sampled_from(bad_values))
        elif row and damage >= 13:
            row = [draw(st.sampled_from(bad_values)) for _ in row]
        rows.append(row)
    return rows


@PROPERTY
@given(data=st.data(), on_unknown=st.sampled_from(["error", "skip"]), batch_size=st.integers(1, 4))
def test_property_token_histories_error_or_match_each_row_alone(tower, data, on_unknown, batch_size):
    drawn = data.draw(id_batches(tower.n_items, tower.max_seq_length, UNKNOWN_TOKENS))
    histories = [[tower.item_tokens[t] if isinstance(t, int) else t for t in row] for row in drawn]
    known = [[t for t in row if isinstance(t, int)] for row in drawn]
    empty = [r for r, row in enumerate(drawn) if not row or (on_unknown == "skip" and not known[r])]
    unknown_rows = [r for r, row in enumerate(drawn) if any(not isinstance(t, int) for t in row)]
    event("empty history" if empty else "unknown token" if unknown_rows and on_unknown == "error" else "encoded")
    if empty:
        with pytest.raises(EmptyHistoryError) as error:
            tower.encode(histories, batch_size=batch_size, on_unknown=on_unknown)
        assert error.value.rows == empty and all(f"history {r} " in str(error.value) for r in empty)
    elif unknown_rows and on_unknown == "error":
        with pytest.raises(UnknownItemError) as error:
            tower.encode(histories, batch_size=batch_size)
        assert error.value.rows == unknown_rows
        assert set(error.value.tokens) == {t for row in drawn for t in row if not isinstance(t, int)}
    else:
        interests, mask = tower.encode(histories, batch_size=batch_size, on_unknown=on_unknown)
        expected, expected_mask = per_row_reference(tower, known)
        assert np.abs(interests - expected).max() <= 1e-6 and np.array_equal(mask, expected_mask)


@PROPERTY
@given(data=st.data(), batch_size=st.integers(1, 4))
def test_property_id_histories_error_or_match_each_row_alone(tower, data, batch_size):
    n, max_len = tower.n_items, tower.max_seq_length
    rows = data.draw(id_batches(n, max_len, [-(2**40), -2, -1, 0, n, n + 1, 2**40]))
    empty = [r for r, row in enumerate(rows) if not row]
    bad = [r for r, row in enumerate(rows) if any(not 1 <= i < n for i in row)]
    event("empty history" if empty else "id out of range" if bad else "encoded")
    if empty:
        with pytest.raises(EmptyHistoryError) as error:
            tower.encode_ids(rows, batch_size=batch_size)
        assert error.value.rows == empty
    elif bad:
        with pytest.raises(ItemIdError) as error:
            tower.encode_ids(rows, batch_size=batch_size)
        row = bad[0]
        position = next(p for p, i in enumerate(rows[row]) if not 1 <= i < n)
        assert error.value.rows == bad and error.value.first == (row, position, rows[row][position])
    else:
        interests, mask = tower.encode_ids(rows, batch_size=batch_size)
        expected, expected_mask = per_row_reference(tower, rows)
        assert np.abs(interests - expected).max() <= 1e-6 and np.array_equal(mask, expected_mask)
        recent = tower.encode_ids([row[-max_len:] for row in rows], batch_size=batch_size)[0]
        assert np.array_equal(interests, recent)  # longer histories keep their most recent max_len items


@PROPERTY
@given(data=st.data())
def test_property_padded_batches_error_or_match_each_row_alone(tower, data):
    n, max_len = tower.n_items, tower.max_seq_length
    batch, seq_len = data.draw(st.integers(1, 4)), data.draw(st.integers(1, max_len))
    seq = np.zeros((batch, seq_len), np.int64)
    lengths = []
    for row in range(batch):
        length = data.draw(st.integers(1, seq_len))
        seq[row, :length] = data.draw(st.lists(st.integers(1, n - 1), min_size=length, max_size=length))
        damage = data.draw(st.integers(0, 19))  # 0 (hypothesis's simplest) is no damage
        if damage >= 17:  # a length outside 1..seq_len (the row's ids stay as drawn)
            length = data.draw(st.sampled_from([-1, 0, seq_len + 1]))
        elif damage >= 14:
            seq[row, data.draw(st.integers(0, length - 1))] = data.draw(st.sampled_from([-1, 0, n]))
        lengths.append(length)
    bad_length = [r for r, length in enumerate(lengths) if not 1 <= length <= seq_len]
    bad_ids = [r for r, length in enumerate(lengths) if r not in bad_length and ((seq[r, :length] < 1) | (seq[r, :length] >= n)).any()]
    event("bad length" if bad_length else "id out of range" if bad_ids else "encoded")
    if bad_length:
        with pytest.raises(EmptyHistoryError) as error:
            tower.run(seq, lengths)
        assert error.value.rows == bad_length
    elif bad_ids:
        with pytest.raises(ItemIdError) as error:
            tower.run(seq, lengths)
        assert error.value.rows == bad_ids
    else:
        interests, mask = tower.run(seq, lengths)
        expected, expected_mask = per_row_reference(tower, [seq[r, : lengths[r]] for r in range(batch)])
        assert np.abs(interests - expected).max() <= 1e-6 and np.array_equal(mask, expected_mask)


@PROPERTY
@given(data=st.data(), topk=st.integers(1, 60), chunk_size=st.integers(50, 5000))
def test_property_topk_over_encoded_users_equals_numpy_brute_force(tower, data, topk, chunk_size):
    n, max_len = tower.n_items, tower.max_seq_length
    rows = data.draw(st.lists(st.lists(st.integers(1, n - 1), min_size=1, max_size=2 * max_len), min_size=1, max_size=4))
    interests, mask = tower.encode_ids(rows)
    result = max_over_interests_topk(interests, mask, tower.item_vectors, topk, chunk_size=chunk_size, exclude=rows)
    ids, scores, _ = reference_topk(interests, mask, np.asarray(tower.item_vectors), topk, rows)
    assert np.allclose(result.scores, scores, atol=1e-5)
    # ids agree wherever the score is not tied with a neighbour (float32 vs float64 ordering)
    gaps = np.abs(np.diff(scores, axis=1))
    untied = np.ones_like(scores, dtype=bool)
    untied[:, 1:] &= gaps > 1e-5
    untied[:, :-1] &= gaps > 1e-5
    assert np.array_equal(result.ids[untied], ids[untied])
    assert not any(np.isin(result.ids[r], rows[r]).any() for r in range(len(rows)))
