"""Whole models through import, partition and run_reference, bit-exact against onnxruntime.

Float models are built here with onnx.helper, quantized int8 x int8 (per-channel, QOperator or QDQ)
by onnxruntime, and imported; run_reference (accelerator layers through the golden ops, the rest in
onnxruntime) must equal onnxruntime on the same int8 model exactly, on seeded random inputs.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from jacquard.host import ir
from jacquard.host.importer import load_model, quantize_float_model
from jacquard.host.partition import Limits, partition, run_reference

SEED = 20240611


class _Builder:
    """A tiny float CNN builder (NCHW) with seeded random weights."""

    def __init__(self, seed: int, shape):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0
        self.shape = tuple(shape)

    def _name(self, p):
        self.n += 1
        return f"{p}{self.n}"

    def const(self, value, prefix="c"):
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x, cin, cout, k, stride=1, pad=0, group=1, relu=True):
        w = self.rng.normal(0, 1 / np.sqrt(cin // group * k * k), (cout, cin // group, k, k)).astype(
            np.float32
        )
        b = self.rng.normal(0, 0.1, cout).astype(np.float32)
        y = self.node(
            "Conv",
            [x, self.const(w, "w"), self.const(b, "b")],
            kernel_shape=[k, k],
            strides=[stride, stride],
            pads=[pad] * 4,
            group=group,
        )
        return self.node("Relu", [y]) if relu else y

    def dense(self, x, cin, cout):
        w = self.rng.normal(0, 1 / np.sqrt(cin), (cin, cout)).astype(np.float32)
        y = self.node("MatMul", [x, self.const(w, "w")])
        return self.node("Add", [y, self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), "b")])

    def model(self, outputs):
        g = helper.make_graph(
            self.nodes,
            "m",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.shape)],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            self.inits,
        )
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.output}
        for out in model.graph.output:
            out.CopyFrom(inferred[out.name])
        return model

    def calibration(self, n=8):
        return self.rng.normal(0, 1, (n, *self.shape[1:])).astype(np.float32)


def classifier():
    b = _Builder(1, (1, 3, 20, 20))
    y = b.conv("x", 3, 8, 3, pad=1)
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.conv(y, 8, 16, 3, stride=2, pad=1)
    y = b.node("AveragePool", [y], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    y = b.node("GlobalAveragePool", [y])
    y = b.node("Flatten", [y], axis=1)
    return b, b.model([b.dense(y, 16, 10)])


def residual():
    b = _Builder(2, (1, 8, 12, 12))
    a = b.conv("x", 8, 8, 3, pad=1)
    c = b.conv(a, 8, 8, 3, pad=1, relu=False)
    s = b.node("Relu", [b.node("Add", [a, c])])
    d = b.conv(s, 8, 8, 1, relu=False)
    return b, b.model([b.node("Add", [d, s])])


def depthwise():
    b = _Builder(3, (1, 4, 15, 15))
    y = b.conv("x", 4, 12, 1)
    y = b.conv(y, 12, 12, 3, stride=2, pad=1, group=12, relu=False)
    y = b.node("Clip", [y, b.const(np.float32(0)), b.const(np.float32(6))])
    y = b.conv(y, 12, 24, 5, group=12, pad=2, relu=False)  # depthwise with channel multiplier 2
    return b, b.model([b.conv(y, 24, 6, 1, relu=False)])


def with_cpu_ops():
    """Resize and Softmax (no accelerator equivalent) and a 9x9 kernel (beyond the hardware)."""
    b = _Builder(4, (1, 3, 16, 16))
    y = b.conv("x", 3, 8, 3, pad=1)
    y = b.node("Resize", [y, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    y = b.conv(y, 8, 8, 9, pad=4)
    y = b.node("Sigmoid", [b.conv(y, 8, 4, 3, stride=2, pad=1, relu=False)])
    y = b.conv(y, 4, 4, 1, relu=False)
    return b, b.model([b.node("Softmax", [y], axis=1)])


def _compare(model: onnx.ModelProto, plan, inputs_fn, n: int, seed: int):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    elements = 0
    for i in range(n):
        feed = inputs_fn(i)
        want = dict(zip(names, sess.run(None, feed), strict=True))
        got = run_reference(plan, feed)
        assert set(got) == set(want)
        for name, w in want.items():
            g = got[name]
            assert g.dtype == w.dtype and g.shape == w.shape, (name, g.dtype, g.shape, w.dtype, w.shape)
            bad = np.argwhere(g != w)
            assert bad.size == 0, (
                f"seed {seed} sample {i} output {name!r}: {len(bad)} mismatches, first at "
                f"{tuple(bad[0])}: expected {w[tuple(bad[0])]}, got {g[tuple(bad[0])]}"
            )
            elements += w.size
    return elements


def _random_inputs(shape, seed):
    def make(i):
        rng = np.random.default_rng(seed + i)
        return {"x": rng.normal(0, 1.2, shape).astype(np.float32)}

    return make


@pytest.mark.parametrize("build", [classifier, residual, depthwise, with_cpu_ops])
def test_qoperator_model_bit_exact(build):
    b, float_model = build()
    int8 = quantize_float_model(float_model, b.calibration())
    imported = load_model(int8.SerializeToString())
    assert imported.kind == "qoperator"
    plan = partition(imported)
    print(plan.format_report())
    assert _compare(int8, plan, _random_inputs(b.shape, SEED), 4, SEED) > 0
    rows = plan.report()
    assert any(r["where"] == "accelerator" and r["macs"] > 0 for r in rows)
    if build is with_cpu_ops:
        cpu_ops = {r["op"] for r in rows if r["where"] == "cpu"}
        assert {"Resize", "QConv"} <= cpu_ops, cpu_ops  # the 9x9 conv is out of range
        assert any(r["op"] in ("Softmax", "QLinearSoftmax") and r["where"] == "cpu" for r in rows)


def test_depthwise_and_residual_layers_are_on_the_accelerator():
    _, m = depthwise()
    b, _ = depthwise()
    plan = partition(load_model(quantize_float_model(m, b.calibration())))
    convs = [layer for layer in plan.graph.layers if isinstance(layer, ir.QConv)]
    assert sorted(c.groups for c in convs) == [1, 1, 12, 12]
    assert all(r["where"] != "cpu" for r in plan.report())
    b, m = residual()
    plan = partition(load_model(quantize_float_model(m, b.calibration())))
    assert sum(isinstance(layer, ir.QAdd) for layer in plan.graph.layers) == 2
    assert all(r["where"] != "cpu" for r in plan.report())


def test_limits_move_layers_to_the_cpu_and_stay_exact():
    b, m = classifier()
    int8 = quantize_float_model(m, b.calibration())
    plan = partition(load_model(int8), Limits(max_kernel=2))
    assert any("kernel" in r["reason"] for r in plan.report())
    _compare(int8, plan, _random_inputs(b.shape, SEED + 7), 2, SEED + 7)


def test_qdq_model_bit_exact():
    b, m = classifier()
    qdq = quantize_float_model(m, b.calibration(), fmt="qdq")
    imported = load_model(qdq)
    assert imported.kind == "qdq"
    plan = partition(imported)
    assert sum(isinstance(layer, ir.QConv) for layer in plan.graph.layers) == 2
    _compare(qdq, plan, _random_inputs(b.shape, SEED + 1), 4, SEED + 1)


def test_float_model_quantized_on_import():
    b, m = residual()
    imported = load_model(m, calibrate=b.calibration())
    assert imported.kind == "float"
    _compare(imported.model, partition(imported), _random_inputs(b.shape, SEED + 2), 3, SEED + 2)


# -- MTCNN on real images -------------------------------------------------------------------------------

_MTCNN_SIZES = {"pnet": (64, 64), "rnet": (24, 24), "onet": (48, 48)}


def _crops(size, count, seed):
    from skimage import data, transform

    img = data.astronaut().astype(np.float32)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        side = int(rng.integers(60, 260))
        y, x = rng.integers(0, img.shape[0] - side, 2)
        crop = transform.resize(
            img[y : y + side, x : x + side], size, preserve_range=True, anti_aliasing=True
        )
        out.append(((crop.astype(np.float32) - 127.5) * 0.0078125)[None])  # MTCNN's normalization
    return np.concatenate(out)


@pytest.mark.parametrize("net", ["pnet", "rnet", "onet"])
def test_mtcnn_bit_exact_on_astronaut(net):
    material = pytest.importorskip("jacquard.host.material")
    path = material.mtcnn_models()[net]
    h, w = _MTCNN_SIZES[net]
    src = onnx.load(path)
    name = src.graph.input[0].name
    calib = _crops((h, w), 8, SEED)
    imported = load_model(path, {name: (1, h, w, 3)}, calibrate=calib)
    plan = partition(imported)
    print(plan.format_report())
    rows = plan.report()
    # Every convolution and dense layer runs on the accelerator; only the softmax stays on the CPU.
    assert {r["op"] for r in rows if r["where"] == "cpu"} == {"QLinearSoftmax"}
    tests = _crops((h, w), 4, SEED + 100)
    _compare(imported.model, plan, lambda i: {name: tests[i : i + 1]}, 4, SEED + 100)


def test_partitioning_twice_gives_the_same_plan():
    # Fusion must not rewrite the imported model: a second partition sees the original layers.
    b, float_model = classifier()
    int8 = quantize_float_model(float_model, b.calibration())
    imported = load_model(int8.SerializeToString())
    first, second = partition(imported), partition(imported)
    assert first.report() == second.report()
    assert _compare(int8, second, _random_inputs(b.shape, SEED), 2, SEED) > 0
