"""Whole models through import, partition and run_reference, bit-exact against onnxruntime.

Float models come from jacquard.sim.model_zoo, quantized int8 x int8 (per-channel, QOperator or QDQ)
by onnxruntime, and imported; run_reference (accelerator layers through the golden ops, the rest in
onnxruntime) must equal onnxruntime on the same int8 model exactly, on seeded random inputs.
"""

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from jacquard.host import ir
from jacquard.host.importer import load_model, quantize_float_model
from jacquard.host.partition import Limits, partition, run_reference
from jacquard.sim.model_zoo import classifier, depthwise, residual, with_cpu_ops

SEED = 20240611


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
