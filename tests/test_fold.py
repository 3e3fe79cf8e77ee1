"""Tap folding (``jacquard.host.fold``, the compiler's ``fold_taps``): bit-exact on every backend.

A conv whose input the host writes runs as a 1x1 CONV over its output grid, the host writing the
input im2col'd. Checked here:

* the transform itself against the golden convolution (seeded random shapes, strides, pads);
* constrained-random single conv layers (padding, stride 2 and 3, fused ReLU and 2x2 max pool),
  quantized by onnxruntime and compiled with folding on and off: both equal onnxruntime bit for bit
  on the ``emu`` backend, and folding never makes the performance model's estimate worse;
* MTCNN P-Net (int8) on a real astronaut crop, the model zoo's classifier and the Fashion-MNIST CNN;
* the ``.jqp`` record of folded inputs: it survives the archive, and a record whose shapes disagree
  is refused with a clear error; the memory limit and ``fold_taps=False`` / ``--no-fold-taps``;
* the ``sim`` backend (the RTL core in Verilator) on a small folded model;
* the performance model's estimate of the folded P-Net layer 1 against the RTL's BUSY_CYCLES.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import zipfile

import numpy as np
import onnx
import pytest
from test_compiler import (
    _crops,
    assert_same,
    int8_model,
    mtcnn_imported,
    random_feeds,
    run_and_compare,
)

from jacquard.host import ir, jqp
from jacquard.host.compiler import compile_model, compile_plan
from jacquard.host.device import Device, estimate
from jacquard.host.driver import input_bytes
from jacquard.host.errors import ProgramError
from jacquard.host.fold import TapFold, fold_taps, fold_weights
from jacquard.host.importer import load_model
from jacquard.host.partition import partition
from jacquard.sim import golden, model_zoo

logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantizer advice is not a failure

SEED = 4040
FOLD_CONFIGS = ["sim-small", "icebreaker"]  # c_par = 4: folding a 3-channel layer pays there


def folds(exe) -> dict[str, TapFold]:
    return {n: f for s in exe.device_steps() for n, f in s.folds.items()}


# -- the transform -----------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(SEED, SEED + 40))
def test_fold_taps_is_the_convolution(seed):
    rng = np.random.default_rng(seed)
    kh, kw = (int(v) for v in rng.integers(1, 6, 2))
    sh, sw = (int(v) for v in rng.integers(1, 4, 2))
    pads = tuple(int(rng.integers(0, side)) for side in (kh, kw, kh, kw))
    h, w = int(rng.integers(kh, kh + 12)), int(rng.integers(kw, kw + 12))
    n, c, cout = int(rng.integers(1, 3)), int(rng.integers(1, 6)), int(rng.integers(1, 9))
    zp = int(rng.integers(-128, 128))
    x = rng.integers(-128, 128, (n, h, w, c), dtype=np.int8)
    wts = rng.integers(-128, 128, (cout, kh, kw, c), dtype=np.int8)
    bias = rng.integers(-1000, 1000, cout, dtype=np.int32)
    want = golden.conv2d_acc(x, zp, wts, bias, stride=(sh, sw), pads=pads)
    folded = fold_taps(x, (kh, kw), (sh, sw), pads, zp)
    assert folded.shape == TapFold("x", (kh, kw), (sh, sw), pads).shape(x.shape), (seed, folded.shape)
    got = golden.conv2d_acc(folded, zp, fold_weights(wts), bias)
    bad = np.argwhere(got != want)
    assert not bad.size, (f"seed {seed}: kernel {(kh, kw)} stride {(sh, sw)} pads {pads}: first mismatch "
                          f"at {tuple(bad[0])}: expected {want[tuple(bad[0])]}, got {got[tuple(bad[0])]}")


def test_fold_taps_refuses_what_is_not_an_int8_map():
    with pytest.raises(ValueError, match="int8 NHWC"):
        fold_taps(np.zeros((4, 4, 3), np.int8), (3, 3), (1, 1), (0, 0, 0, 0), 0)
    with pytest.raises(ValueError, match="int8 NHWC"):
        fold_taps(np.zeros((1, 4, 4, 3), np.float32), (3, 3), (1, 1), (0, 0, 0, 0), 0)
    with pytest.raises(ValueError, match="does not fit"):
        fold_taps(np.zeros((1, 2, 2, 3), np.int8), (3, 3), (1, 1), (0, 0, 0, 0), 0)


# -- constrained-random single conv layers on emu -----------------------------------------------------

def single_conv(seed: int, k: int, stride: int, pads: tuple[int, int, int, int], cin: int, pool: bool):
    """A float model: one conv (asymmetric ``pads``), ReLU, optionally a 2x2 max pool."""
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(k + 2, 20)), int(rng.integers(k + 2, 20))
    # At least two oc tiles on c_par 4 configs: the folded input, read once per group, is then
    # reused by enough MACs that the core's input rate is not the limit (the perf model decides).
    cout = int(rng.integers(6, 13))
    b = model_zoo.Builder(seed, (1, cin, h, w))
    wts = b.rng.normal(0, 1 / np.sqrt(cin * k * k), (cout, cin, k, k)).astype(np.float32)
    bias = b.rng.normal(0, 0.1, cout).astype(np.float32)
    y = b.node("Conv", ["x", b.const(wts, "w"), b.const(bias, "b")], kernel_shape=[k, k],
               strides=[stride, stride], pads=[pads[0], pads[1], pads[2], pads[3]])
    y = b.node("Relu", [y])
    if pool:
        y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    return b, b.model([y])


def random_case(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    k = int(rng.integers(2, 6))
    stride = int(rng.choice([1, 2, 2, 3]))
    pads = tuple(int(rng.integers(0, k)) for _ in range(4))
    return dict(seed=seed, k=k, stride=stride, pads=pads, cin=int(rng.integers(1, 4)),
                pool=bool(rng.random() < 0.4))


# Named cases (padding > 0 with stride 1 and 2, a fused pool), then seeded random ones.
CASES = [dict(seed=1, k=3, stride=1, pads=(1, 1, 1, 1), cin=3, pool=False),
         dict(seed=2, k=3, stride=2, pads=(1, 1, 1, 1), cin=3, pool=False),
         dict(seed=3, k=3, stride=2, pads=(0, 1, 2, 0), cin=1, pool=True),
         dict(seed=4, k=5, stride=1, pads=(2, 2, 2, 2), cin=2, pool=True)]
CASES += [random_case(s) for s in range(SEED, SEED + 8)]


@pytest.mark.parametrize("config", FOLD_CONFIGS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"seed{c['seed']}-k{c['k']}-s{c['stride']}")
def test_random_conv_folded_is_bit_exact_on_emu(case, config):
    b, m = int8_model(lambda: single_conv(**case))
    on = compile_model(m, config, memory_bytes=1 << 24)
    off = compile_model(m, config, fold_taps=False)
    where = f"{case} on {config}"
    assert not folds(off), where
    (_, fold), = folds(on).items()  # the one conv, its input written by the host (Quantize)
    assert (fold.kernel, fold.stride, fold.pads) == ((case["k"],) * 2, (case["stride"],) * 2, case["pads"])
    assert estimate(on).cycles < estimate(off).cycles, (where, estimate(on).cycles, estimate(off).cycles)
    feeds = random_feeds(b, 2, case["seed"])
    run_and_compare(on, m, feeds, f"{where}, folded")
    with Device("emu", config=config) as a, Device("emu", config=config) as c:
        a.load(on)
        c.load(off)
        for i, f in enumerate(feeds):
            assert_same(a.run(f), c.run(f), f"{where} sample {i}: folded vs unfolded")


@pytest.mark.parametrize("band_rows", [None, 2])
def test_batched_and_banded_fold_is_bit_exact(band_rows):
    def batched():
        b = model_zoo.Builder(SEED, (2, 3, 10, 12))
        return b, b.model([b.conv("x", 3, 8, 3, stride=2, pad=1)])
    b, m = int8_model(batched)
    exe = compile_model(m, "sim-small", band_rows=band_rows)
    assert len(folds(exe)) == 1
    run_and_compare(exe, m, random_feeds(b, 2, SEED + 5), f"batch of 2, band_rows={band_rows}, folded")


@pytest.mark.parametrize("cin, folded", [(3, True), (5, False)])
def test_fold_pays_only_where_the_performance_model_says_so(cin, folded):
    # On ulx3s-85f (c_par 8, 4-byte DMA words at one per cycle) a 3x3 layer with one oc tile reads
    # its folded input at one word per cycle: 3 channels fold into 27 -> 32 bytes, 8 cycles per
    # position against 9 taps (folded); 5 channels into 45 -> 48 bytes, 12 cycles (not folded).
    _, m = int8_model(lambda: single_conv(**{**CASES[0], "cin": cin}))
    exe = compile_model(m, "ulx3s-85f", memory_bytes=1 << 24)
    assert bool(folds(exe)) == folded
    assert estimate(exe).cycles <= estimate(compile_model(m, "ulx3s-85f", fold_taps=False)).cycles


# -- real models -------------------------------------------------------------------------------------

@pytest.mark.parametrize("config", FOLD_CONFIGS)
def test_mtcnn_pnet_folded_bit_exact(config):
    size = (64, 64) if config == "sim-small" else (24, 24)
    imported, name = mtcnn_imported("pnet", size)
    on = compile_plan(partition(imported), config, memory_bytes=1 << 24)
    off = compile_plan(partition(imported), config, fold_taps=False)
    (fname, fold), = folds(on).items()
    assert fold.kernel == (3, 3) and on.tensors[fname].shape[-1] == 27
    row = next(r for r in on.report if r["layer"] == fname.removesuffix("::im2col"))
    assert row["where"] == "accelerator" and "taps folded" in row["reason"], row
    assert estimate(on).cycles < estimate(off).cycles
    crops = _crops(size, 2, SEED)
    feeds = [{name: crops[i:i + 1]} for i in range(2)]
    run_and_compare(on, imported.model, feeds, f"P-Net {size} on {config}, folded (seed {SEED})")
    run_and_compare(off, imported.model, feeds, f"P-Net {size} on {config}, unfolded (seed {SEED})")


def test_classifier_folded_bit_exact():
    b, m = int8_model(model_zoo.classifier)
    exe = compile_model(m, "sim-small")
    assert len(folds(exe)) == 1
    run_and_compare(exe, m, random_feeds(b, 3, SEED), "classifier on sim-small, folded")


def test_fashion_mnist_cnn_folded_bit_exact():
    from test_fashion_mnist import calibration, load_fashion

    from jacquard.host import train_fashion as tf

    data = load_fashion()
    float_path, _ = tf.trained_model()
    imported = load_model(float_path, {tf.INPUT: (1, 1, 28, 28)}, calibrate=calibration(data["train"][0]))
    exe = compile_plan(partition(imported), "sim-small")
    (_, fold), = folds(exe).items()
    assert fold.kernel == (3, 3)
    x = tf.preprocess(data["test"][0][:4])
    run_and_compare(exe, imported.model, [{tf.INPUT: x[i:i + 1]} for i in range(4)],
                    "Fashion-MNIST CNN on sim-small, folded")


# -- the program record ------------------------------------------------------------------------------

def _classifier_exe():
    b, m = int8_model(model_zoo.classifier)
    return b, m, compile_model(m, "sim-small")


def test_jqp_keeps_folded_inputs(tmp_path):
    b, m, exe = _classifier_exe()
    exe.save(tmp_path / "c.jqp")
    with zipfile.ZipFile(tmp_path / "c.jqp") as z:
        manifest = json.loads(z.read("manifest.json"))
    assert manifest["format_version"] == jqp.FORMAT_VERSION == 2
    records = [s["folded_inputs"] for s in manifest["steps"] if "folded_inputs" in s]
    assert len(records) == 1 and all(set(r) == {"source", "kernel", "stride", "pads"}
                                     for r in records[0].values()), records
    again = jqp.load(tmp_path / "c.jqp")
    assert folds(again) == folds(exe)
    run_and_compare(again, m, random_feeds(b, 2, SEED + 1), "classifier from .jqp, folded")


def _rewrite(src, dst, edit) -> None:
    with zipfile.ZipFile(src) as z:
        files = {n: z.read(n) for n in z.namelist()}
    manifest = json.loads(files["manifest.json"])
    edit(manifest)
    files["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(dst, "w") as z:
        for n, data in files.items():
            z.writestr(n, data)


def _folded_step(manifest) -> dict:
    return next(s for s in manifest["steps"] if "folded_inputs" in s)


@pytest.mark.parametrize("edit,words", [
    (lambda f: f.update(kernel=[2, 2]), "has shape"),
    (lambda f: f.update(stride=[2, 1]), "has shape"),
    (lambda f: f.update(source="nowhere"), "names source tensor 'nowhere'"),
    (lambda f: f.update(pads=[1, 1]), "malformed record"),
    (lambda f: f.pop("kernel"), "malformed record"),
])
def test_folded_record_that_disagrees_is_refused(tmp_path, edit, words):
    _, _, exe = _classifier_exe()
    exe.save(tmp_path / "ok.jqp")

    def change(manifest):
        for record in _folded_step(manifest)["folded_inputs"].values():
            edit(record)
    _rewrite(tmp_path / "ok.jqp", tmp_path / "bad.jqp", change)
    with pytest.raises(ProgramError, match=words) as e:
        jqp.load(tmp_path / "bad.jqp")
    assert "recompile" in str(e.value)


def test_folded_tensor_of_the_wrong_shape_is_refused_by_the_driver():
    _, _, exe = _classifier_exe()
    (name, _), = folds(exe).items()
    t = exe.tensors[name]
    exe.tensors[name] = dataclasses.replace(t, onnx_shape=(*t.onnx_shape[:-1], t.onnx_shape[-1] + 1))
    with Device("emu", config="sim-small") as dev:
        with pytest.raises(ProgramError, match=f"folded input '{name}'"):
            dev.load(exe)


def test_fold_that_does_not_fit_the_memory_is_left_out():
    b, m = int8_model(model_zoo.classifier)
    off = compile_model(m, "sim-small", fold_taps=False)
    tight = compile_model(m, "sim-small", memory_bytes=off.memory_size)
    assert not folds(tight) and tight.memory_size == off.memory_size
    assert any("not folded" in r["reason"] for r in tight.report), tight.report
    run_and_compare(tight, m, random_feeds(b, 1, SEED + 2), "classifier, fold left out")
    with pytest.raises(ValueError, match="memory_bytes"):
        compile_model(m, "sim-small", memory_bytes=0)
    with pytest.raises(TypeError, match="fold_taps"):
        compile_model(m, "sim-small", fold_taps="yes")


def test_cli_no_fold_taps(tmp_path, capsys):
    from jacquard.host.cli import main

    _, m = int8_model(model_zoo.classifier)
    onnx.save(m, tmp_path / "c.onnx")
    for flag, want in (([], 1), (["--no-fold-taps"], 0)):
        out = tmp_path / f"c{len(flag)}.jqp"
        args = ["compile", str(tmp_path / "c.onnx"), "-o", str(out), "--config", "sim-small", *flag]
        assert main(args) == 0
        assert len(folds(jqp.load(out))) == want, flag
    capsys.readouterr()


# -- RTL: the sim backend and the performance model ----------------------------------------------------

def test_folded_model_on_sim():
    from test_device_sim import run_on_sim

    case = dict(seed=7, k=3, stride=1, pads=(1, 1, 1, 1), cin=3, pool=True)
    b, m = int8_model(lambda: single_conv(**case))
    exe = compile_model(m, "sim-small")
    assert len(folds(exe)) == 1
    counters = run_on_sim(exe, m, random_feeds(b, 1, SEED + 3), f"folded conv {case} on sim")
    assert counters["BUSY_CYCLES"] > 0


def folded_pnet_image(size: int):
    """P-Net compiled for the perf bench's config, its folded input written as the driver writes it."""
    from test_perf_vs_rtl import CFG

    from jacquard.host import material

    imported, name = mtcnn_imported("pnet", (size, size))
    exe = compile_plan(partition(imported), CFG)
    step, = exe.device_steps()
    assert step.folds, "P-Net layer 1 should be folded on sim-small"
    rgb = material.astronaut()[90:170, 170:250]
    from skimage.transform import resize

    x = resize(rgb, (size, size), preserve_range=True, anti_aliasing=True)
    env = ir.TensorEnv(exe.tensors, {name: ((x - 127.5) / 128).astype(np.float32)[None]})
    # The host steps before the device step (Quantize) as the driver runs them, then its inputs as
    # the driver writes them (folded).
    before = exe.steps[:exe.steps.index(step)]
    assert all(s.kind == "host" for s in before), [s.kind for s in before]
    for s in before:
        graph = ir.Graph({n: exe.tensors[n] for n in (*s.layer.inputs, *s.layer.outputs)}, [s.layer],
                         list(s.layer.inputs), list(s.layer.outputs))
        for n, v in ir.evaluate(graph, {n: env.device(n) for n in s.layer.inputs}).items():
            env.set_device(n, v)
    image = np.zeros(exe.memory_size, dtype=np.uint8)
    image[:len(exe.image)] = np.frombuffer(exe.image, dtype=np.uint8)
    for n, addr in step.inputs:
        raw = input_bytes(step, n, env, exe.tensors, CFG)
        image[addr:addr + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return exe.program(step), image


@pytest.mark.parametrize("size", [24, pytest.param(64, marks=pytest.mark.slow)])
def test_perf_model_of_folded_pnet_layer1_vs_rtl(tmp_path, size):
    from test_perf_vs_rtl import check, measure, relocate

    prog, image = folded_pnet_image(size)
    first = prog.descriptors[0]
    assert (first.kh, first.kw, first.in_c) == (1, 1, 27), first
    img, descs = relocate(image, [first])
    check(measure(tmp_path, img, descs, size), f"P-Net {size}x{size} layer 1, taps folded")


def test_version_1_program_without_folds_is_still_read(tmp_path):
    b, m = int8_model(model_zoo.classifier)
    compile_model(m, "sim-small", fold_taps=False).save(tmp_path / "v2.jqp")
    _rewrite(tmp_path / "v2.jqp", tmp_path / "v1.jqp", lambda man: man.update(format_version=1))
    run_and_compare(jqp.load(tmp_path / "v1.jqp"), m, random_feeds(b, 1, SEED + 6), "version 1 .jqp")


def test_fold_record_of_a_tensor_the_step_does_not_write_is_refused(tmp_path):
    _, _, exe = _classifier_exe()
    exe.save(tmp_path / "ok.jqp")

    def rename(manifest):
        step = _folded_step(manifest)
        (record,) = step["folded_inputs"].values()
        step["folded_inputs"] = {"elsewhere": record}
    _rewrite(tmp_path / "ok.jqp", tmp_path / "bad.jqp", rename)
    with pytest.raises(ProgramError, match="'elsewhere' is not an input of its device step"):
        jqp.load(tmp_path / "bad.jqp")
