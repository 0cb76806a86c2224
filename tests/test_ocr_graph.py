"""PP-OCRv4's graphs folded for onnxruntime's CPU kernels (bench/features/ocr_graph.py): the
rewrites on a small graph built here, on the real models inside the rapidocr wheel, and the
readings of rendered stickers with either graph."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from bench.features.config import OcrConfig  # noqa: E402
from bench.features.ocr_graph import folded_model, folded_session  # noqa: E402


def _session(model: bytes | str):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def _ops(model: bytes) -> Counter:
    return Counter(n.op_type for n in onnx.load_from_string(model).graph.node)


def _floats(pairs) -> list:
    """float32 initializers from ``(name, array)`` pairs."""
    return [numpy_helper.from_array(np.asarray(a, np.float32), name) for name, a in pairs]


def _save_model(path, nodes, inits, x_shape, y_shape) -> str:
    """An opset-12 model ``x -> nodes -> y`` (float32), checked and saved at ``path``."""
    graph = helper.make_graph(
        nodes, Path(path).stem, [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def _lcnet_block(path) -> str:
    """conv 3x3 -> affine -> hard-swish -> affine -> conv 3x3 -> affine: PPLCNetV3's pattern
    (scalars as initializers and as Constant nodes, Mul's constant on either side)."""
    rng = np.random.default_rng(0)
    inits = _floats([
        ("w1", rng.normal(size=(6, 4, 3, 3))), ("b1", rng.normal(size=6)),
        ("w2", rng.normal(size=(5, 6, 3, 3))), ("b2", rng.normal(size=5)),
        ("s1", np.array([0.9])), ("t1", np.array([0.3])), ("s2", np.array([1.7])),
        ("t2", np.array([-0.2])), ("three", np.array(3.0)), ("zero", np.array(0.0)),
        ("six", np.array(6.0)), ("s3", np.array([0.5]))])
    t3 = helper.make_node("Constant", [], ["t3"],
                          value=numpy_helper.from_array(np.array([0.25], np.float32)))
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["s1", "c1"], ["m1"]),
        helper.make_node("Add", ["m1", "t1"], ["a1"]),
        helper.make_node("Add", ["a1", "three"], ["h1"]),
        helper.make_node("Clip", ["h1", "zero", "six"], ["h2"]),
        helper.make_node("Mul", ["a1", "h2"], ["h3"]),
        helper.make_node("Div", ["h3", "six"], ["hs"]),
        helper.make_node("Mul", ["hs", "s2"], ["m2"]),
        helper.make_node("Add", ["t2", "m2"], ["a2"]),
        helper.make_node("Conv", ["a2", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        t3,
        helper.make_node("Mul", ["c2", "s3"], ["m3"]),
        helper.make_node("Add", ["m3", "t3"], ["y"]),
    ]
    return _save_model(path, nodes, inits, [1, 4, 8, 8], [1, 5, 8, 8])


def test_the_rewrites_fold_affine_blocks_and_hard_swish_and_keep_the_outputs(tmp_path):
    path = _lcnet_block(tmp_path / "block.onnx")
    folded, counts = folded_model(path)
    assert dict(counts) == {"folded_convs": 2, "hard_swish": 1, "affine_convs": 1}
    ops = _ops(folded)
    assert ops == Counter({"Conv": 3, "HardSigmoid": 1, "Mul": 1})  # no Add, Clip or Div left
    x = np.random.default_rng(1).normal(size=(1, 4, 8, 8)).astype(np.float32)
    want = _session(path).run(None, {"x": x})[0]
    got = _session(folded).run(None, {"x": x})[0]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    # the weights before folding and the spent Constant are gone: 3 convs' weights and biases
    assert len(onnx.load_from_string(folded).graph.initializer) == 6


def test_an_affine_block_whose_conv_output_is_also_used_elsewhere_is_not_folded(tmp_path):
    """Folding ``s`` into a convolution whose output a second node also reads would change what
    that node sees: such a block becomes a depthwise conv instead."""
    rng = np.random.default_rng(0)
    inits = _floats([("w", rng.normal(size=(3, 3, 1, 1))), ("s", [2.0]), ("t", [1.0])])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Mul", ["c", "s"], ["m"]),
             helper.make_node("Add", ["m", "t"], ["a"]),
             helper.make_node("Add", ["a", "c"], ["y"])]
    path = _save_model(tmp_path / "shared.onnx", nodes, inits, [1, 3, 4, 4], [1, 3, 4, 4])
    folded, counts = folded_model(path)
    assert dict(counts) == {"folded_convs": 0, "hard_swish": 0, "affine_convs": 1}
    x = rng.normal(size=(1, 3, 4, 4)).astype(np.float32)
    np.testing.assert_allclose(_session(folded).run(None, {"x": x})[0],
                               _session(path).run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def rapidocr_sessions():
    pytest.importorskip("rapidocr_onnxruntime")
    from bench.features.ocr_paddle import _new_engine
    engine = _new_engine("rapidocr")
    return engine.text_det.infer.session, engine.text_rec.session.session


def test_the_shipped_pp_ocrv4_models_fold_to_the_same_outputs(rapidocr_sessions):
    det, rec = rapidocr_sessions
    rng = np.random.default_rng(0)
    for shipped, shape, tol in ((det, (1, 3, 96, 160), 1e-5), (rec, (1, 3, 48, 320), 1e-4)):
        folded = folded_session(shipped)
        model, counts = folded_model(shipped._model_path)
        ops, before = _ops(model), _ops(Path(shipped._model_path).read_bytes())
        swish = dict(counts)["hard_swish"]
        assert swish >= 24 and ops["HardSigmoid"] == before["HardSigmoid"] + swish
        assert ops["Div"] == before["Div"] - swish and ops["Clip"] == before["Clip"] - swish
        assert dict(counts)["folded_convs"] >= 28 and ops["Add"] < before["Add"] - 50
        name = shipped.get_inputs()[0].name
        x = rng.uniform(-1, 1, shape).astype(np.float32)
        want, got = shipped.run(None, {name: x})[0], folded.run(None, {name: x})[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=tol)
        if shipped is rec:  # the character read at each step
            assert (got.argmax(-1) == want.argmax(-1)).all()


def test_both_graphs_read_rendered_stickers_alike_and_key_the_cache_apart(tmp_path):
    pytest.importorskip("rapidocr_onnxruntime")
    from bench.features.images import load_rgba_checked
    from bench.features.ocr_paddle import PaddleEngine
    from bench.perf.features_bench import render_dataset
    ds = render_dataset(tmp_path / "ds", 24, seed=3)
    images = [load_rgba_checked(str(tmp_path / "ds" / p))[0] for p in ds.stickers["image"]]
    folded = PaddleEngine().read_decoded(images, OcrConfig(graph="folded"))
    shipped = PaddleEngine().read_decoded(images, OcrConfig(graph="rapidocr"))
    assert [t for t, _ in folded] == [t for t, _ in shipped]
    assert sum(bool(t) for t, _ in folded) >= 12  # the captions were read at all
    assert max(abs(a - b) for (_, a), (_, b) in zip(folded, shipped)) < 0.5  # 0-100 scale
    assert OcrConfig(graph="folded").cache_params() != OcrConfig(graph="rapidocr").cache_params()
    assert "graph" not in OcrConfig(engine="tesseract").cache_params()


def test_without_onnx_the_folded_graph_is_a_one_line_error_before_any_work(tmp_path, monkeypatch):
    pytest.importorskip("rapidocr_onnxruntime")
    import importlib.util

    from bench.features.cache import FeatureCache
    from bench.features.ocr import ocr_cache_key
    from bench.features.ocr_tesseract import OcrUnavailable
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnx" else real(name, *a))
    with pytest.raises(OcrUnavailable, match="pip install onnx.*graph: rapidocr"):
        ocr_cache_key(FeatureCache(tmp_path), "fp", OcrConfig(graph="folded"))
    key, meta = ocr_cache_key(FeatureCache(tmp_path), "fp", OcrConfig(graph="rapidocr"))
    assert meta["params"]["graph"] == "rapidocr"


def test_a_graph_with_subgraphs_keeps_the_initializers_they_read(tmp_path):
    """Nodes inside an If branch may read outer initializers that no outer node lists as an
    input: pruning is skipped there, and the folded model still runs."""
    rng = np.random.default_rng(0)
    inits = _floats([("w", rng.normal(size=(2, 2, 1, 1))), ("s", [2.0]), ("t", [1.0]),
                     ("outer", [5.0])]) + [numpy_helper.from_array(np.array(True), "cond")]
    out = helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 2, 3, 3])
    branch = helper.make_graph([helper.make_node("Add", ["a", "outer"], ["r"])], "branch", [],
                               [out])
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Mul", ["c", "s"], ["m"]),
             helper.make_node("Add", ["m", "t"], ["a"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)]
    path = _save_model(tmp_path / "sub.onnx", nodes, inits, [1, 2, 3, 3], [1, 2, 3, 3])
    folded, counts = folded_model(path)
    assert dict(counts)["folded_convs"] == 1
    assert "outer" in {i.name for i in onnx.load_from_string(folded).graph.initializer}
    x = rng.normal(size=(1, 2, 3, 3)).astype(np.float32)
    np.testing.assert_allclose(_session(folded).run(None, {"x": x})[0],
                               _session(path).run(None, {"x": x})[0], rtol=1e-6, atol=1e-6)
