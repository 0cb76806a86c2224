"""PP-OCRv4's graphs rewritten for onnxruntime's CPU kernels (``features.ocr.graph: folded``).

PP-OCRv4's backbone (PPLCNetV3) follows every convolution with a *learnable affine block*, a
scalar ``y = s * x + b``, then hard-swish exported as ``x * clip(x + 3, 0, 6) / 6``, then a
second affine block. onnxruntime runs convolutions in a blocked channel layout (NCHWc) but not
a scalar ``Mul``/``Add`` nor ``Clip``/``Div``: each layer converted its output back to plain
NCHW, made six passes over it, and converted it back (51 + 37 layout conversions in the
detector). Three rewrites, each exact in real arithmetic, leave it in the blocked layout:

1. ``Conv -> Mul(s) -> Add(b)`` becomes one ``Conv`` with weights ``s * W`` and bias
   ``s * B + b`` (as batch norm is folded into convolutions);
2. ``x * clip(x + 3, 0, 6) / 6`` becomes ``x * HardSigmoid(x)`` (alpha 1/6, beta 1/2);
3. any other ``Mul(s) -> Add(b)`` on a 4-D tensor becomes a 1x1 depthwise ``Conv`` (weight
   ``s``, bias ``b`` per channel), which the blocked layout runs in one pass.

Only float32 tensors are rewritten. The outputs differ from the shipped graph's by float
rounding only (at most 2e-7 for the detector's probabilities and 2e-6 for the recogniser's, on
random inputs; no text changed on 1,600 rendered stickers). The new weights are float32 products
computed by numpy, the same bits on every machine. One onnxruntime thread, 256 px detector and
48x320 recogniser input: 15-19 -> 13-16 ms and 28-31 -> 20-22 ms per call; the whole pipeline:
the README's features block (``persrv-bench perf --stage features``).
"""

from __future__ import annotations

import functools
from collections import Counter, defaultdict
from typing import Any

import numpy as np


def _scalar(consts: dict[str, np.ndarray], name: str) -> float | None:
    value = consts.get(name)
    return None if value is None or value.size != 1 else float(value.reshape(()))


class _Graph:
    """An ONNX graph with its constants, producers and consumers (rebuilt after each rewrite)."""

    def __init__(self, model: Any):
        from onnx import numpy_helper
        self.model, self.graph = model, model.graph
        self.consts = {i.name: numpy_helper.to_array(i) for i in self.graph.initializer}
        for node in self.graph.node:
            if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
                self.consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        self.outputs = {o.name for o in self.graph.output}
        self.index()

    def index(self) -> None:
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.users: dict[str, list[Any]] = defaultdict(list)
        for node in self.graph.node:
            for name in node.input:
                self.users[name].append(node)

    def only_user(self, name: str) -> Any:
        users = self.users[name]
        return users[0] if len(users) == 1 and name not in self.outputs else None

    def add_initializer(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper
        value = np.ascontiguousarray(value, dtype=np.float32)
        self.graph.initializer.append(numpy_helper.from_array(value, name))
        self.consts[name] = value
        return name

    def replace(self, drop: set[int], new: dict[int, list[Any]]) -> None:
        """Drop nodes (by ``id``) and put ``new[id]`` in a node's place."""
        nodes = []
        for node in self.graph.node:
            if id(node) not in drop:
                nodes += new.get(id(node), [node])
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self.index()

    def prune(self) -> None:
        """Drop the initializers and Constant nodes nothing reads any more (the weights
        before folding). A graph with subgraphs (If, Loop) is left as it is: their nodes may
        read outer names."""
        if any(a.g.node or a.graphs for node in self.graph.node for a in node.attribute):
            return
        used = {name for node in self.graph.node for name in node.input} | self.outputs
        self.replace({id(n) for n in self.graph.node
                      if n.op_type == "Constant" and n.output[0] not in used}, {})
        keep = [i for i in self.graph.initializer if i.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)

    def affine(self, mul: Any) -> tuple[str, float, float, Any] | None:
        """``(x, s, b, add)`` where ``mul`` is ``Mul(x, s)`` feeding only ``Add(., b)``, with
        scalar constants ``s`` and ``b``."""
        if mul.op_type != "Mul" or len(mul.input) != 2:
            return None
        a, b = mul.input
        x, s = (b, _scalar(self.consts, a)) if a in self.consts else (a, _scalar(self.consts, b))
        add = self.only_user(mul.output[0])
        if s is None or x in self.consts or add is None or add.op_type != "Add":
            return None
        other = add.input[1] if add.input[0] == mul.output[0] else add.input[0]
        bias = _scalar(self.consts, other)
        return None if bias is None else (x, s, bias, add)


def _fold_into_convs(g: _Graph) -> int:
    """Rewrite 1: ``Conv -> Mul(s) -> Add(b)`` as one Conv."""
    drop: set[int] = set()
    for mul in list(g.graph.node):
        found = g.affine(mul)
        conv = g.producer.get(found[0]) if found else None
        if conv is None or conv.op_type != "Conv" or g.only_user(found[0]) is not mul \
                or conv.input[1] not in g.consts or g.consts[conv.input[1]].dtype != np.float32:
            continue
        _, s, b, add = found
        weight = g.consts[conv.input[1]].astype(np.float32)
        bias = (g.consts[conv.input[2]].astype(np.float32) if len(conv.input) > 2
                else np.zeros(weight.shape[0], np.float32))
        conv.input[1] = g.add_initializer(add.output[0] + "/folded_w", weight * np.float32(s))
        folded_b = g.add_initializer(add.output[0] + "/folded_b",
                                     bias * np.float32(s) + np.float32(b))
        if len(conv.input) > 2:
            conv.input[2] = folded_b
        else:
            conv.input.append(folded_b)
        conv.output[0] = add.output[0]
        drop |= {id(mul), id(add)}
    g.replace(drop, {})
    return len(drop) // 2


def _hard_swish(g: _Graph) -> int:
    """Rewrite 2: ``x * clip(x + 3, 0, 6) / 6`` as ``x * HardSigmoid(x)``."""
    from onnx import helper
    drop: set[int] = set()
    new: dict[int, list[Any]] = {}
    for div in g.graph.node:
        if div.op_type != "Div" or _scalar(g.consts, div.input[1]) != 6.0:
            continue
        mul = g.producer.get(div.input[0])
        if mul is None or mul.op_type != "Mul" or g.only_user(mul.output[0]) is not div:
            continue
        for x, clipped in (mul.input, mul.input[::-1]):
            clip = g.producer.get(clipped)
            if clip is not None and clip.op_type == "Clip":
                break
        else:
            continue
        add = g.producer.get(clip.input[0])
        if g.only_user(clip.output[0]) is not mul or add is None or add.op_type != "Add" \
                or g.only_user(add.output[0]) is not clip or x not in add.input \
                or len(clip.input) != 3 or _scalar(g.consts, clip.input[1]) != 0.0 \
                or _scalar(g.consts, clip.input[2]) != 6.0:
            continue
        three = add.input[1] if add.input[0] == x else add.input[0]
        if _scalar(g.consts, three) != 3.0:
            continue
        gate = div.output[0] + "/hard_sigmoid"
        new[id(div)] = [helper.make_node("HardSigmoid", [x], [gate], alpha=1 / 6, beta=0.5),
                        helper.make_node("Mul", [x, gate], [div.output[0]])]
        drop |= {id(add), id(clip), id(mul)}
    g.replace(drop, new)
    return len(new)


def _affine_as_depthwise(g: _Graph) -> int:
    """Rewrite 3: the remaining ``Mul(s) -> Add(b)`` on 4-D tensors as 1x1 depthwise Convs."""
    import onnx
    from onnx import helper, shape_inference
    inferred = shape_inference.infer_shapes(g.model)
    channels = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input):
        dims = info.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].HasField("dim_value") \
                and info.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            channels[info.name] = dims[1].dim_value
    drop: set[int] = set()
    new: dict[int, list[Any]] = {}
    for mul in g.graph.node:
        found = g.affine(mul)
        if found is None or found[0] not in channels:
            continue
        x, s, b, add = found
        c = channels[x]
        w = g.add_initializer(add.output[0] + "/affine_w", np.full((c, 1, 1, 1), s, np.float32))
        bias = g.add_initializer(add.output[0] + "/affine_b", np.full(c, b, np.float32))
        new[id(add)] = [helper.make_node("Conv", [x, w, bias], [add.output[0]], group=c,
                                         kernel_shape=[1, 1])]
        drop.add(id(mul))
    g.replace(drop, new)
    return len(new)


@functools.lru_cache(maxsize=4)
def folded_model(path: str) -> tuple[bytes, tuple[tuple[str, int], ...]]:
    """The model at ``path`` with the three rewrites (module docstring), serialized, and how
    many places each rewrite changed. ~0.2 s per PP-OCRv4 model; kept per process."""
    import onnx
    g = _Graph(onnx.load(path))
    counts = Counter(folded_convs=_fold_into_convs(g), hard_swish=_hard_swish(g))
    counts["affine_convs"] = _affine_as_depthwise(g)
    g.prune()
    onnx.checker.check_model(g.model)
    return g.model.SerializeToString(), tuple(sorted(counts.items()))


def folded_session(session: Any) -> Any:
    """A new onnxruntime session running ``session``'s model file folded, with the options
    rapidocr uses (one intra-op and one inter-op thread, no memory arena, all graph
    optimisations, CPU)."""
    import onnxruntime as ort
    path = getattr(session, "_model_path", None)
    if not isinstance(path, str):
        raise RuntimeError("the paddle OCR session does not name its model file; "
                           "set features.ocr.graph: rapidocr")
    options = ort.SessionOptions()
    options.log_severity_level = 4
    options.enable_cpu_mem_arena = False
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(folded_model(path)[0], sess_options=options,
                                providers=["CPUExecutionProvider"])
