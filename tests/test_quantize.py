"""``export --quantize int8``: the int8 tower file, its ranking overlap, and serving it."""

import json

import numpy as np
import onnx
import pytest

from export import artifacts
from export.quantize import META_QUANTIZATION, OverlapReport
from export.retrieval import max_over_interests_topk, recall_at_n
from export.runtime import UserTower
from mind_recbole.cli import main


@pytest.fixture(scope="module")
def int8_export(mind_export, tmp_path_factory):
    from export.onnx_export import export_model

    _, model, dataset, _ = mind_export
    out = tmp_path_factory.mktemp("int8") / "model"
    return out, export_model(model, dataset, out, quantize="int8")


def test_int8_export_writes_the_quantized_graph_with_the_float_metadata(int8_export):
    model_dir, result = int8_export
    proto = onnx.load(str(model_dir / artifacts.INT8_ONNX_FILE))
    ops = {node.op_type for node in proto.graph.node}
    assert {"MatMulInteger", "DynamicQuantizeLinear"} <= ops  # the weights really are int8
    metadata = {p.key: p.value for p in proto.metadata_props}
    float_metadata = {p.key: p.value for p in onnx.load(str(model_dir / artifacts.ONNX_FILE)).metadata_props}
    assert metadata[META_QUANTIZATION] == "int8" and META_QUANTIZATION not in float_metadata
    assert {k: v for k, v in metadata.items() if k != META_QUANTIZATION} == float_metadata
    manifest = json.loads((model_dir / artifacts.MANIFEST_FILE).read_text())
    assert artifacts.INT8_ONNX_FILE in manifest["files"]
    report = json.loads((model_dir / artifacts.REPORT_FILE).read_text())["int8"]
    assert report["topk"] == 50 and report["histories"] > 60
    assert isinstance(result.quantization, OverlapReport) and report["mean_overlap"] == result.quantization.mean_overlap
    assert "int8 tower: top-50 overlap" in result.summary()


def test_int8_tower_ranks_like_the_float_tower(int8_export):
    model_dir, result = int8_export
    float_tower, int8_tower = UserTower(model_dir, provider="cpu"), UserTower(model_dir, provider="cpu", precision="int8")
    assert int8_tower.onnx_path.name == artifacts.INT8_ONNX_FILE
    histories = [float_tower.item_tokens[i : i + 1 + i % 15] for i in range(1, 200, 2)]
    float_interests, float_mask = float_tower.encode(histories)
    int8_interests, int8_mask = int8_tower.encode(histories)
    np.testing.assert_array_equal(int8_mask, float_mask)
    scale = np.abs(float_interests).max()
    assert np.abs(int8_interests - float_interests).max() < 0.05 * scale  # int8 weights: close, not equal
    assert not np.array_equal(int8_interests, float_interests)
    items = float_tower.item_vectors
    a = max_over_interests_topk(float_interests, float_mask, items, 50).ids
    b = max_over_interests_topk(int8_interests, int8_mask, items, 50).ids
    assert recall_at_n(b, a) > 0.95
    assert result.quantization.mean_overlap > 0.95


def test_cli_retrieve_serves_the_int8_tower_and_names_a_missing_one(int8_export, mind_export, capsys):
    model_dir, _ = int8_export
    history = UserTower(model_dir, provider="cpu").item_tokens[5:9]
    assert main(["retrieve", "--model-dir", str(model_dir), "--history", *history, "--topk", "5", "--precision", "int8", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)["items"]) == 5
    float_only = mind_export[0]
    assert main(["retrieve", "--model-dir", str(float_only), "--history", *history, "--precision", "int8"]) == 2
    assert "export --quantize int8" in capsys.readouterr().err
    with pytest.raises(ValueError, match="precision must be one of"):
        UserTower(model_dir, precision="int4")


def test_unknown_quantization_is_refused_before_anything_is_written(mind_export, tmp_path):
    from export.onnx_export import export_model

    _, model, dataset, _ = mind_export
    with pytest.raises(ValueError, match="quantize must be one of"):
        export_model(model, dataset, tmp_path / "model", quantize="int4")
    assert not (tmp_path / "model").exists()


def test_the_service_serves_the_int8_tower_when_asked(int8_export):
    from export.service.batch_retrieval import open_retriever

    model_dir, _ = int8_export
    assert open_retriever(model_dir, provider="cpu", precision="int8").describe()["graph"] == artifacts.INT8_ONNX_FILE
    assert open_retriever(model_dir, provider="cpu").describe()["graph"] == artifacts.ONNX_FILE
