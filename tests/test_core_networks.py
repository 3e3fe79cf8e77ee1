"""Whole networks on JacquardCore (Verilator), bit-exact with the reference executor.

* The int8 MTCNN P-Net (onnxruntime-quantized, compiled by ``jacquard.host.compiler`` for
  sim-small) on a real ``skimage.data`` astronaut crop: 24x24 in the default tier, 64x64 (slow).
* A small classifier built from descriptors: conv3x3+ReLU+fused 2x2 pool, conv3x3+ReLU, MAXPOOL,
  FC (default tier on 12x12; slow on 28x28).

Each run also prints per-layer cycle counters (each layer run as its own one-descriptor program,
counters cleared before it) and the whole-network MAC utilization, for docs/RESULTS.md.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_core import CFG, Image, conv_layer, expect_ok, maxpool_layer, pack_tensor, rand_tensor, run_case

from jacquard.sim.executor import execute
from jacquard.sim.isa import Op, Program

SIM = "verilator"


def _macs(d) -> int:
    if d.op != Op.CONV:
        return 0
    oh, ow = (d.out_h * 2, d.out_w * 2) if d.fuse_maxpool else (d.out_h, d.out_w)
    if d.fuse_maxpool:  # the conv's own output size (the pool may drop an odd row or column)
        oh = (d.in_h + d.pad_t + d.pad_b - d.kh) // d.stride_h + 1
        ow = (d.in_w + d.pad_l + d.pad_r - d.kw) // d.stride_w + 1
    return oh * ow * d.out_c * d.kh * d.kw * (1 if d.depthwise else d.in_c)


def _run_network(tmp_path, img: Image, descs, seed: int, label: str) -> dict:
    """Run the whole program once, then each layer alone (for per-layer counters); compare all."""
    prog = img.place_program(descs)
    expected = img.data.copy()
    execute(prog, expected, CFG, prog_addr=0)
    # Per-layer programs live right after the whole one, in the 1 KiB program slot.
    runs = [{"window_base": 0, "window_limit": img.size, "prog_base": 0, "prog_len": prog.size(),
             "irq_enable": 3, "timeout": 20_000_000}]
    singles = []
    for i, d in enumerate(descs):
        raw = Program.for_config(CFG, [d]).to_bytes()
        addr = 0x400 - 0x50 * (len(descs) - i)
        singles.append((addr, raw))
        runs.append({"prog_base": addr, "prog_len": len(raw), "timeout": 20_000_000})
    for addr, raw in singles:
        if addr < prog.size():
            raise ValueError("program too long for per-layer copies")
        img.data[addr:addr + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        expected[addr:addr + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    result = run_case(tmp_path, img, runs, seed=seed, simulator=SIM, pause=0.1)
    for k in range(len(runs)):
        expect_ok(result, k)
        bad = np.flatnonzero(result["mems"][k] != expected)
        if bad.size:
            i = int(bad[0])
            raise AssertionError(f"seed={seed} {label} run {k}: {bad.size} bytes differ; first at {i:#x}: "
                                 f"expected {expected[i].view(np.int8)}, "
                                 f"got {result['mems'][k][i].view(np.int8)}")
    total = result["runs"][0]["counters"]
    macs = sum(_macs(d) for d in descs)
    util = macs / (CFG.macs * total["BUSY_CYCLES"])
    big = [i for i, d in enumerate(descs) if d.op == Op.CONV and d.in_c >= CFG.c_par]
    wall = result["runs"][0]["wall_s"]
    print(f"\n{label}: {total['BUSY_CYCLES']} busy cycles, {macs} MACs, MAC utilization {100 * util:.1f} % "
          f"(sim wall {wall:.1f} s, {total['CYCLES'] / wall:.0f} cycles/s incl. polling)")
    for i, d in enumerate(descs):
        c = result["runs"][1 + i]["counters"]
        lm = _macs(d)
        print(f"  layer {i} {d.op.name} {d.kh}x{d.kw} s{d.stride_h} {d.in_h}x{d.in_w}x{d.in_c}->"
              f"{d.out_h}x{d.out_w}x{d.out_c}: busy {c['BUSY_CYCLES']}, mac-active {c['MAC_ACTIVE_CYCLES']}, "
              f"util {100 * lm / (CFG.macs * c['BUSY_CYCLES']):.1f} %, stalls in/w/out/rq "
              f"{c['STALL_INPUT']}/{c['STALL_WEIGHTS']}/{c['STALL_OUTPUT']}/{c['STALL_REQUANT']}, "
              f"DMA rd/wr {c['DMA_READ_BYTES']}/{c['DMA_WRITE_BYTES']}")
    if big:
        bm = sum(_macs(descs[i]) for i in big)
        bc = sum(result["runs"][1 + i]["counters"]["BUSY_CYCLES"] for i in big)
        print(f"  layers with C_in >= C_PAR: MAC utilization {100 * bm / (CFG.macs * bc):.1f} %")
    return result


def _pnet(size: int):
    from test_mtcnn_layers import quantized_mtcnn  # the same int8 P-Net the layer tests check

    from jacquard.host import ir, material
    from jacquard.host.compiler import compile_model
    from jacquard.host.driver import input_bytes

    try:
        path = quantized_mtcnn("pnet")
    except material.MaterialError as e:
        pytest.skip(str(e))
    exe = compile_model(str(path), CFG, input_shapes={"input_1": (1, size, size, 3)})
    steps = [s for s in exe.steps if s.kind == "device"]
    assert len(steps) == 1, "P-Net should compile to one device program"
    step = steps[0]
    from skimage.transform import resize

    crop = material.astronaut()[90:170, 170:250]
    rgb = resize(crop, (size, size), preserve_range=True, anti_aliasing=True).astype(np.float32)
    x = ((rgb - 127.5) / 128).astype(np.float32)
    name, addr = step.inputs[0]
    fold = step.folds.get(name)  # the first layer's taps folded into channels: the host im2cols it
    src = fold.source if fold else name
    t = exe.tensors[src]
    q = np.clip(np.rint(x / np.float32(t.scale)) + t.zero_point, -128, 127).astype(np.int8).reshape(t.shape)
    env = ir.TensorEnv(exe.tensors, {})
    env.set_device(src, q)
    image = np.zeros(exe.memory_size, dtype=np.uint8)
    image[:len(exe.image)] = np.frombuffer(exe.image, dtype=np.uint8)
    raw = input_bytes(step, name, env, exe.tensors, CFG)  # as the driver writes it, folded or not
    image[addr:addr + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
    return exe.program(step), step.prog_addr, image


def _run_pnet(tmp_path, size: int):
    prog, prog_addr, image = _pnet(size)
    seed = size
    expected = image.copy()
    execute(prog, expected, CFG, prog_addr=prog_addr)
    runs = [{"window_base": 0, "window_limit": image.size, "prog_base": prog_addr, "prog_len": prog.size(),
             "irq_enable": 1, "timeout": 50_000_000}]
    img = Image(CFG, image.size)
    img.data[:] = image
    result = run_case(tmp_path, img, runs, seed=seed, simulator=SIM, pause=0.1)
    expect_ok(result)
    bad = np.flatnonzero(result["mems"][0] != expected)
    assert not bad.size, f"P-Net {size}x{size}: {bad.size} bytes differ; first at {bad[0]:#x}"
    c = result["runs"][0]["counters"]
    macs = sum(_macs(d) for d in prog.descriptors)
    big = sum(_macs(d) for d in prog.descriptors if d.in_c >= CFG.c_par)
    print(f"\nP-Net {size}x{size} on {CFG.name}: {c['BUSY_CYCLES']} busy cycles, {macs} MACs, whole-network "
          f"MAC utilization {100 * macs / (CFG.macs * c['BUSY_CYCLES']):.1f} % (MACs of C_in >= C_PAR "
          f"layers: {big}); mac-active {c['MAC_ACTIVE_CYCLES']}; stalls in/w/out/rq {c['STALL_INPUT']}/"
          f"{c['STALL_WEIGHTS']}/{c['STALL_OUTPUT']}/{c['STALL_REQUANT']}; Verilator "
          f"{c['CYCLES'] / result['runs'][0]['wall_s']:.0f} cycles/s (incl. AXI4-Lite polling)")


def test_core_pnet_small(tmp_path):
    _run_pnet(tmp_path, 24)


@pytest.mark.slow
def test_core_pnet_64(tmp_path):
    _run_pnet(tmp_path, 64)


def _classifier(rng, size: int):
    img = Image(CFG, 1 << 16)
    zp = -5
    x = img.alloc(pack_tensor(rand_tensor(rng, size, size, 1), CFG, zp))
    d0, (h, w, c) = conv_layer(img, rng, x, size, size, 1, cout=8, k=(3, 3), pads=(1, 1, 1, 1), in_zp=zp,
                               out_zp=-128, clamp=(-128, 127), fuse_maxpool=True)
    d1, (h, w, c) = conv_layer(img, rng, d0.out_addr, h, w, c, cout=16, k=(3, 3), pads=(1, 1, 1, 1),
                               in_zp=-128, out_zp=-128, clamp=(-128, 127))
    d2, (h, w, c) = maxpool_layer(img, d1.out_addr, h, w, c, k=(2, 2), stride=2, ceil_mode=True)
    # Flatten is free: the (h, w, 16) map is the (1, 1, h*w*16) vector at the same address.
    d3, _ = conv_layer(img, rng, d2.out_addr, 1, 1, h * w * c, cout=10, k=(1, 1), in_zp=-128, out_zp=3)
    return img, [d0, d1, d2, d3]


def test_core_classifier_small(tmp_path):
    seed = 21
    img, descs = _classifier(np.random.default_rng(seed), 12)
    _run_network(tmp_path, img, descs, seed, "classifier 12x12")


@pytest.mark.slow
def test_core_classifier_28(tmp_path):
    seed = 22
    img, descs = _classifier(np.random.default_rng(seed), 28)
    _run_network(tmp_path, img, descs, seed, "classifier 28x28")


# -- whole compiled models (the host compiler's programs) on the core ---------------------------------

def _device_images(exe, feeds: dict) -> list[tuple]:
    """Run ``exe`` on ``emu`` and capture, for each device step, the memory before and after it.

    The ``emu`` run also checks the model's outputs against onnxruntime (done by the caller), so a
    core run that reproduces the "after" image byte for byte reproduces onnxruntime's result.
    """
    from jacquard.host.device import Device

    snaps = []
    dev = Device("emu", config=exe.config)
    dev.load(exe)
    t, original = dev.driver.transport, dev.driver.run_program
    size = exe.memory_size

    def run_program(step):
        before = np.frombuffer(t.read_mem(0, size), dtype=np.uint8).copy()
        original(step)
        snaps.append((step, before, np.frombuffer(t.read_mem(0, size), dtype=np.uint8).copy()))

    dev.driver.run_program = run_program
    try:
        outputs = dev.run(feeds)
    finally:
        dev.close()
    return snaps, outputs


def _run_compiled(tmp_path, exe, model, feeds: dict, label: str, seed: int) -> None:
    """Every device step of ``exe`` on the core equals the executor (and so onnxruntime), byte for byte."""
    from test_compiler import assert_same, ort_outputs

    snaps, outputs = _device_images(exe, feeds)
    assert_same(outputs, ort_outputs(model, feeds), f"{label}: emu vs onnxruntime")
    for k, (step, before, after) in enumerate(snaps):
        prog = exe.program(step)
        img = Image(CFG, 1 << max(12, (before.size - 1).bit_length()))
        img.data[:before.size] = before
        expected = img.data.copy()
        expected[:after.size] = after
        runs = [{"window_base": 0, "window_limit": img.size, "prog_base": step.prog_addr,
                 "prog_len": prog.size(), "irq_enable": 1, "timeout": 50_000_000}]
        work = tmp_path / f"step{k}"
        work.mkdir()
        result = run_case(work, img, runs, seed=seed, simulator=SIM, pause=0.1)
        expect_ok(result)
        bad = np.flatnonzero(result["mems"][0] != expected)
        assert not bad.size, (f"seed={seed} {label} step {k} ({step.layers}): {bad.size} bytes differ; first "
                              f"at {bad[0]:#x}: expected {expected[bad[0]].view(np.int8)}, got "
                              f"{result['mems'][0][bad[0]].view(np.int8)}")
        c = result["runs"][0]["counters"]
        print(f"\n{label} step {k}: {[d.op.name for d in prog.descriptors]}: {c['BUSY_CYCLES']} busy cycles, "
              f"Verilator {c['CYCLES'] / result['runs'][0]['wall_s']:.0f} cycles/s")


def _zoo_model(build):
    from test_compiler import int8_model, random_feeds

    from jacquard.host.compiler import compile_model

    b, m = int8_model(build)
    exe = compile_model(m, CFG)
    return exe, m, random_feeds(b, 1, 7)[0]


def test_core_compiled_residual(tmp_path):
    """model_zoo.residual (two ADDs, one with a fused ReLU) compiled by the host, on the core."""
    from jacquard.sim import model_zoo

    exe, m, feeds = _zoo_model(model_zoo.residual)
    ops = {d.op for s in exe.device_steps() for d in exe.program(s).descriptors}
    assert Op.ADD in ops, ops
    _run_compiled(tmp_path, exe, m, feeds, "residual", 7)


def test_core_compiled_classifier(tmp_path):
    """model_zoo.classifier (AVGPOOL 3x3 with padding, GLOBAL_AVGPOOL, dense) compiled, on the core."""
    from jacquard.sim import model_zoo

    exe, m, feeds = _zoo_model(model_zoo.classifier)
    ops = {d.op for s in exe.device_steps() for d in exe.program(s).descriptors}
    assert {Op.AVGPOOL, Op.GLOBAL_AVGPOOL} <= ops, ops
    _run_compiled(tmp_path, exe, m, feeds, "classifier", 7)


@pytest.mark.slow
def test_core_compiled_depthwise(tmp_path):
    from jacquard.sim import model_zoo

    exe, m, feeds = _zoo_model(model_zoo.depthwise)
    assert any(d.depthwise for s in exe.device_steps() for d in exe.program(s).descriptors)
    _run_compiled(tmp_path, exe, m, feeds, "depthwise", 7)


@pytest.mark.slow
@pytest.mark.parametrize("net", ["rnet", "onet"])
def test_core_compiled_mtcnn(tmp_path, net):
    """MTCNN R-Net / O-Net (int8) on a real astronaut crop, compiled for sim-small, on the core."""
    from test_compiler import MTCNN_SIZES, _crops, mtcnn_imported

    from jacquard.host.compiler import compile_plan
    from jacquard.host.partition import partition

    imported, name = mtcnn_imported(net)
    exe = compile_plan(partition(imported), CFG)
    x = _crops(MTCNN_SIZES[net], 1, 300)
    _run_compiled(tmp_path, exe, imported.model, {name: x.astype(np.float32)}, f"MTCNN {net}", 300)
