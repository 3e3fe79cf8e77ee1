"""The compiler end to end: ONNX -> .jqp -> Device("emu"), bit-exact against onnxruntime.

Float models come from jacquard.sim.model_zoo (seeded weights), quantized int8 x int8 per-channel
QOperator by onnxruntime, compiled for each hardware config and run on the emu backend; every output
must equal onnxruntime's on the same int8 model exactly. The helpers here are shared with
test_device.py and test_cli_run.py.
"""

from __future__ import annotations

import copy
import json
import logging
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from jacquard.host import ir, jqp
from jacquard.host.compiler import compile_model, compile_plan
from jacquard.host.device import Device
from jacquard.host.errors import ProgramError
from jacquard.host.importer import load_model, quantize_float_model
from jacquard.host.partition import partition
from jacquard.sim.isa import Op
from jacquard.sim.model_zoo import Builder, classifier, depthwise, partitioned, residual, wide_dense

SEED = 6061
CONFIGS = ["ulx3s-85f", "icebreaker", "sim-small"]

# onnxruntime's quantizer logs advice on every call; it is not a test failure.
logging.getLogger().setLevel(logging.ERROR)


MODELS = {f.__name__: f for f in (classifier, residual, depthwise, partitioned)}


def int8_model(build) -> tuple[Builder, onnx.ModelProto]:
    b, m = build()
    return b, quantize_float_model(m, b.calibration())


def random_feeds(b: Builder, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{b.input: rng.normal(0, 1.2, b.shape).astype(np.float32)} for _ in range(n)]


def assert_same(got: dict, want: dict, where: str) -> None:
    assert set(got) == set(want), (where, sorted(got), sorted(want))
    for name, w in want.items():
        g = got[name]
        assert g.dtype == w.dtype and g.shape == w.shape, (where, name, g.dtype, g.shape, w.dtype, w.shape)
        bad = np.argwhere(g != w)
        assert bad.size == 0, (f"{where} output {name!r}: {len(bad)} mismatches, first at {tuple(bad[0])}: "
                               f"expected {w[tuple(bad[0])]}, got {g[tuple(bad[0])]}")


def ort_outputs(model: onnx.ModelProto, feeds: dict) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))


def run_and_compare(exe, model: onnx.ModelProto, feeds_list, where: str) -> int:
    elements = 0
    with Device("emu", config=exe.config) as dev:
        dev.load(exe)
        for i, feeds in enumerate(feeds_list):
            want = ort_outputs(model, feeds)
            assert_same(dev.run(feeds), want, f"{where} sample {i}")
            elements += sum(w.size for w in want.values())
    return elements


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_bit_exact_on_emu(name, config):
    b, m = int8_model(MODELS[name])
    exe = compile_model(m, config)
    where = f"{name} on {config} (seed {SEED})"
    assert run_and_compare(exe, m, random_feeds(b, 3, SEED), where) > 0
    rows = exe.report
    cfg = exe.config
    # Only layers of ops the config leaves out (icebreaker: CONV and MAXPOOL only) go to the CPU.
    assert all(r["where"] != "cpu" or r["reason"].endswith(f"not in config {cfg.name}'s ops")
               for r in rows if r["macs"] > 0 and name != "partitioned"), rows
    ops = {d.op for s in exe.device_steps() for d in exe.program(s).descriptors}
    assert ops <= cfg.ops, (ops, cfg.ops)
    if name == "classifier":
        assert {Op.CONV, Op.AVGPOOL, Op.GLOBAL_AVGPOOL, Op.ADD} & cfg.ops <= ops, ops
    if name == "residual":
        assert Op.ADD in ops or Op.ADD not in cfg.ops
    if name == "depthwise" and config == "ulx3s-85f":
        assert any(d.depthwise for s in exe.device_steps() for d in exe.program(s).descriptors)
    if name == "partitioned":
        cpu = {r["op"] for r in rows if r["where"] == "cpu"}
        assert any("Resize" in op for op in cpu) and any("Softmax" in op for op in cpu), cpu
        assert len(exe.device_steps()) >= 2


def _crops(size, count, seed):
    from skimage import data, transform

    img = data.astronaut().astype(np.float32)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        side = int(rng.integers(60, 260))
        y, x = rng.integers(0, img.shape[0] - side, 2)
        crop = transform.resize(img[y:y + side, x:x + side], size, preserve_range=True, anti_aliasing=True)
        out.append(((crop.astype(np.float32) - 127.5) * 0.0078125)[None])  # MTCNN's normalization
    return np.concatenate(out)


MTCNN_SIZES = {"pnet": (64, 64), "rnet": (24, 24), "onet": (48, 48)}


def mtcnn_imported(net: str, size=None):
    material = pytest.importorskip("jacquard.host.material")
    path = material.mtcnn_models()[net]
    h, w = size or MTCNN_SIZES[net]
    name = onnx.load(path).graph.input[0].name
    return load_model(path, {name: (1, h, w, 3)}, calibrate=_crops((h, w), 8, SEED)), name


@pytest.mark.parametrize("net", ["pnet", "rnet", "onet"])
def test_mtcnn_bit_exact_on_astronaut(net):
    imported, name = mtcnn_imported(net)
    exe = compile_plan(partition(imported), "ulx3s-85f")
    # Every convolution and dense layer runs on the accelerator; only the softmax stays on the CPU.
    assert all(r["where"] == "accelerator" for r in exe.report if r["macs"] > 0), exe.report
    assert {r["op"] for r in exe.report if r["where"] == "cpu"} == {"QLinearSoftmax"}
    h, w = MTCNN_SIZES[net]
    tests = _crops((h, w), 3, SEED + 100)
    feeds = [{name: tests[i:i + 1]} for i in range(3)]
    run_and_compare(exe, imported.model, feeds, f"{net} (seed {SEED + 100})")


def test_float_model_quantized_on_import():
    b, m = residual()
    imported = load_model(m, calibrate=b.calibration())
    assert imported.kind == "float"
    exe = compile_plan(partition(copy.deepcopy(imported)), "ulx3s-85f")
    run_and_compare(exe, imported.model, random_feeds(b, 2, SEED + 1), "float residual")


def test_layer_too_large_for_the_weight_buffer_runs_on_the_host_and_stays_exact():
    b, m = int8_model(wide_dense)
    exe = compile_model(m, "sim-small")
    host = [r for r in exe.report if r["where"] == "host" and r["macs"] > 0]
    assert len(host) == 1 and "weight buffer" in host[0]["reason"], exe.report
    assert any(r["where"] == "accelerator" and r["macs"] > 0 for r in exe.report)
    run_and_compare(exe, m, random_feeds(b, 2, SEED + 2), "wide_dense on sim-small")
    # On ulx3s-85f the same layer fits.
    assert all(r["where"] == "accelerator" for r in compile_model(m, "ulx3s-85f").report if r["macs"] > 0)


@pytest.mark.parametrize("name", ["classifier", "depthwise"])
def test_row_bands_are_exact(name):
    b, m = int8_model(MODELS[name])
    whole = compile_model(m, "sim-small")
    banded = compile_model(m, "sim-small", band_rows=2)
    count = lambda exe: sum(len(s.layers) for s in exe.device_steps())  # noqa: E731
    assert count(banded) > count(whole)
    run_and_compare(banded, m, random_feeds(b, 2, SEED + 3), f"{name} in 2-row bands")


def test_memory_plan_reuses_buffers_without_overlapping_live_ones():
    _, m = int8_model(residual)
    exe = compile_model(m, "ulx3s-85f")
    mem = exe.memory
    assert mem["arena_bytes"] < mem["arena_naive_bytes"], mem
    assert exe.memory_size == mem["arena_base"] + mem["arena_bytes"]
    # Buffer lifetimes: a buffer written by descriptor i and last read by descriptor j must not share
    # bytes with any buffer live in [i, j]. The executor refuses only a descriptor's own overlaps, so
    # check the whole schedule here.
    for step in exe.device_steps():
        descs = exe.program(step).descriptors
        spans = {}
        for i, d in enumerate(descs):
            out = (d.out_addr, d.out_addr + d.out_h * d.out_w * d.out_cp)
            spans.setdefault(out, [i, i])
            for addr in (d.in_addr, *([d.in2_addr] if d.op == Op.ADD else [])):
                for (s, _), life in spans.items():
                    if s == addr:
                        life[1] = max(life[1], i)
        items = list(spans.items())
        for k, ((s1, e1), (f1, l1)) in enumerate(items):
            for (s2, e2), (f2, l2) in items[k + 1:]:
                if not (l1 < f2 or l2 < f1):
                    assert e1 <= s2 or e2 <= s1, f"live buffers overlap: [{s1}, {e1}) and [{s2}, {e2})"


def test_jqp_round_trip(tmp_path):
    b, m = int8_model(partitioned)
    exe = compile_model(m, "icebreaker")
    path = tmp_path / "m.jqp"
    exe.save(path)
    again = jqp.load(path)
    assert again.image == exe.image and again.config == exe.config and again.memory_size == exe.memory_size
    assert [s.kind for s in again.steps] == [s.kind for s in exe.steps]
    assert again.report == json.loads(json.dumps(exe.report))
    run_and_compare(again, m, random_feeds(b, 2, SEED + 4), "partitioned from .jqp")


def _rewrite_manifest(src, dst, **changes):
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(files["manifest.json"])
    manifest.update(changes)
    files["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)


@pytest.mark.parametrize("change,words", [({"format_version": 99}, "format version 99"),
                                          ({"isa_version": 7}, "ISA version 7"),
                                          ({"format": "zip"}, "not a Jacquard program")])
def test_jqp_of_another_version_is_refused(tmp_path, change, words):
    _, m = int8_model(classifier)
    compile_model(m).save(tmp_path / "ok.jqp")
    _rewrite_manifest(tmp_path / "ok.jqp", tmp_path / "bad.jqp", **change)
    with pytest.raises(ProgramError, match=words) as e:
        jqp.load(tmp_path / "bad.jqp")
    assert "jacquard compile" in str(e.value)


def test_jqp_that_is_not_an_archive_is_refused(tmp_path):
    (tmp_path / "junk.jqp").write_bytes(b"not a zip")
    with pytest.raises(ProgramError, match=r"not a valid \.jqp"):
        jqp.load(tmp_path / "junk.jqp")


def test_ir_layers_survive_the_archive(tmp_path):
    """Host steps carry IR layers through arrays.npz: every field comes back equal."""
    _, m = int8_model(wide_dense)
    exe = compile_model(m, "sim-small")
    exe.save(tmp_path / "w.jqp")
    again = jqp.load(tmp_path / "w.jqp")
    host = [(s, t) for s, t in zip(exe.steps, again.steps, strict=True) if s.kind == "host"]
    assert any(isinstance(s.layer, ir.QFullyConnected) for s, _ in host)
    for s, t in host:
        assert type(s.layer) is type(t.layer)
        for f in s.layer.__dataclass_fields__:
            a, c = getattr(s.layer, f), getattr(t.layer, f)
            if isinstance(a, np.ndarray):
                assert a.dtype == c.dtype and np.array_equal(a, c), f
            else:
                assert a == c or (isinstance(a, float) and np.float32(a) == np.float32(c)), (f, a, c)
