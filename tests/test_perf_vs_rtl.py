"""The analytical performance model (``jacquard.host.perf``) against JacquardCore's own counters.

Each layer runs alone on the core in Verilator (a one-descriptor program, counters cleared before
it, AxiRam without back-pressure: the model describes the core with memory at full speed) and its
``BUSY_CYCLES`` counter must be within 10 % of the model's estimate (issue 5: "the hardware
counters must match the analytical performance model within 10% per layer"). The outputs are
checked bit-exactly against the reference executor too, so a counted run is a correct run.

Default tier: one Verilator run with the single-layer kinds (3x3, 1x1, depthwise, strided, fused
pool, per-channel LUT, multi-group, max pool, FC), one with the AVGPOOL, GLOBAL_AVGPOOL and ADD
kinds, one with convs of several output-channel groups (their groups overlap: each run must beat
the model's serial schedule, and only a layer's first group may wait on its weights), and the
layers of the small classifier and of
the int8 MTCNN P-Net at 24x24 (sim-small). Slow tier: the classifier at 28x28 and P-Net at 64x64.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_core import (
    CFG,
    Image,
    add_layer,
    avgpool_layer,
    conv_layer,
    expect_ok,
    gap_layer,
    maxpool_layer,
    pack_tensor,
    rand_tensor,
    run_case,
)

from jacquard.host.perf import (
    AVG_TAP_FLOOR,
    DEFAULT,
    estimate_descriptor,
    group_reads,
    group_tiles,
    program_overhead,
)
from jacquard.sim.executor import execute
from jacquard.sim.isa import LayerDescriptor, Op, Program

SIM = "verilator"
TOLERANCE = 0.10
SERIAL = dataclasses.replace(DEFAULT, overlap_groups=False)
PROG_SLOT = 0x1000  # one-descriptor programs (80 bytes each) live below this address


def layer_label(d: LayerDescriptor) -> str:
    kind = d.op.name
    if d.op == Op.CONV:
        kind = "DW" if d.depthwise else ("FC" if d.kh == d.kw == d.in_h == d.in_w == 1 else "CONV")
        if d.fuse_maxpool:
            kind += "+POOL"
        if d.lut:
            kind += "+LUT"
    return (f"{kind} {d.kh}x{d.kw} s{d.stride_h} {d.in_h}x{d.in_w}x{d.in_c}->"
            f"{d.out_h}x{d.out_w}x{d.out_c}")


def measure(tmp_path, img: Image, descs: list[LayerDescriptor], seed: int) -> list[dict]:
    """Run each descriptor alone on the core; check every output; return counters per layer.

    ``img`` must have been built with ``top=PROG_SLOT`` so that the programs fit below it.
    """
    expected = img.data.copy()
    runs = []
    for i, d in enumerate(descs):
        raw = Program.for_config(CFG, [d]).to_bytes()
        addr = 0x60 * i
        if addr + len(raw) > PROG_SLOT:
            raise ValueError(f"descs: {len(descs)} layers do not fit the program slot")
        img.data[addr:addr + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        expected[addr:addr + len(raw)] = np.frombuffer(raw, dtype=np.uint8)
        runs.append({"prog_base": addr, "prog_len": len(raw), "timeout": 20_000_000})
    runs[0].update(window_base=0, window_limit=img.size, irq_enable=0)
    result = run_case(tmp_path, img, runs, seed=seed, simulator=SIM, pause=0.0)
    rows = []
    for i, d in enumerate(descs):
        execute(Program.for_config(CFG, [d]), expected, CFG, prog_addr=runs[i]["prog_base"])
        expect_ok(result, i)
        bad = np.flatnonzero(result["mems"][i] != expected)
        if bad.size:
            j = int(bad[0])
            raise AssertionError(f"seed={seed} layer {i} ({layer_label(d)}): {bad.size} bytes differ; "
                                 f"first at {j:#x}: expected {expected[j].view(np.int8)}, got "
                                 f"{result['mems'][i][j].view(np.int8)}")
        c = result["runs"][i]["counters"]
        est = estimate_descriptor(d, CFG)
        model = est.cycles + program_overhead(CFG)
        rtl = c["BUSY_CYCLES"]
        rows.append({"layer": layer_label(d), "desc": d, "model": model, "rtl": rtl,
                     "error": (model - rtl) / rtl,
                     "macs": est.macs, "rtl_util": est.macs / (CFG.macs * rtl), "counters": c,
                     # issue 5's whole-network figure counts the MAC layers that fill the c_par lanes
                     "wide": d.op == Op.CONV and d.in_c >= CFG.c_par})
    return rows


def table(rows: list[dict]) -> str:
    lines = [f"{'layer':44s} {'model':>8s} {'rtl':>8s} {'err %':>7s} {'util %':>7s}  stalls in/w/out/rq"]
    for r in rows:
        c = r["counters"]
        lines.append(f"{r['layer']:44s} {r['model']:8d} {r['rtl']:8d} {100 * r['error']:7.1f} "
                     f"{100 * r['rtl_util']:7.1f}  {c['STALL_INPUT']}/{c['STALL_WEIGHTS']}/"
                     f"{c['STALL_OUTPUT']}/{c['STALL_REQUANT']}")
    return "\n".join(lines)


def check(rows: list[dict], what: str) -> None:
    print(f"\n{what} on {CFG.name}:\n{table(rows)}")
    worst = max(rows, key=lambda r: abs(r["error"]))
    assert abs(worst["error"]) <= TOLERANCE, (
        f"{what}: model off by {100 * worst['error']:.1f} % on {worst['layer']} "
        f"(tolerance {100 * TOLERANCE:.0f} %)\n{table(rows)}")


def single_layers(rng) -> tuple[Image, list[LayerDescriptor]]:
    """One layer of each kind the core runs, on maps large enough that fixed costs do not dominate."""
    img = Image(CFG, 1 << 18, top=PROG_SLOT)
    zp = -3
    x8 = img.alloc(pack_tensor(rand_tensor(rng, 16, 16, 8), CFG, zp))
    x16 = img.alloc(pack_tensor(rand_tensor(rng, 12, 12, 16), CFG, zp))
    x32 = img.alloc(pack_tensor(rand_tensor(rng, 8, 8, 32), CFG, zp))
    x3 = img.alloc(pack_tensor(rand_tensor(rng, 20, 20, 3), CFG, zp))
    fc = img.alloc(pack_tensor(rand_tensor(rng, 1, 1, 200), CFG, zp))
    q = {"in_zp": zp, "out_zp": -128, "clamp": (-128, 127)}
    descs = [
        conv_layer(img, rng, x8, 16, 16, 8, cout=16, k=(3, 3), pads=(1, 1, 1, 1), **q)[0],
        conv_layer(img, rng, x16, 12, 12, 16, cout=16, k=(1, 1), **q)[0],
        conv_layer(img, rng, x8, 16, 16, 8, cout=8, k=(3, 3), pads=(1, 1, 1, 1), depthwise=True, **q)[0],
        conv_layer(img, rng, x8, 16, 16, 8, cout=8, k=(3, 3), stride=2, pads=(1, 1, 0, 0), **q)[0],
        conv_layer(img, rng, x3, 20, 20, 3, cout=8, k=(3, 3), **q)[0],
        conv_layer(img, rng, x16, 12, 12, 16, cout=8, k=(3, 3), pads=(1, 1, 1, 1), fuse_maxpool=True, **q)[0],
        conv_layer(img, rng, x8, 16, 16, 8, cout=8, k=(3, 3), lut="channel", **q)[0],
        conv_layer(img, rng, x32, 8, 8, 32, cout=24, k=(3, 3), pads=(1, 1, 1, 1), **q)[0],  # several groups
        maxpool_layer(img, x16, 12, 12, 16, k=(2, 2), stride=2)[0],
        maxpool_layer(img, x8, 16, 16, 8, k=(3, 3), stride=2, ceil_mode=True)[0],
        conv_layer(img, rng, fc, 1, 1, 200, cout=10, k=(1, 1), in_zp=zp, out_zp=3)[0],
    ]
    return img, descs


def new_op_layers(rng) -> tuple[Image, list[LayerDescriptor]]:
    """AVGPOOL (padding, ceil mode, count_include_pad, stride 1), GLOBAL_AVGPOOL, ADD (plain, ReLU, LUT)."""
    img = Image(CFG, 1 << 18, top=PROG_SLOT)
    zp = -3
    x8 = img.alloc(pack_tensor(rand_tensor(rng, 16, 16, 8), CFG, zp))
    y8 = img.alloc(pack_tensor(rand_tensor(rng, 16, 16, 8), CFG, 4))
    x16 = img.alloc(pack_tensor(rand_tensor(rng, 12, 12, 16), CFG, zp))
    y16 = img.alloc(pack_tensor(rand_tensor(rng, 12, 12, 16), CFG, 1))
    x6 = img.alloc(pack_tensor(rand_tensor(rng, 7, 9, 6), CFG, zp))
    x7 = img.alloc(pack_tensor(rand_tensor(rng, 7, 7, 6), CFG, zp))
    q = {"in_zp": zp, "out_zp": 2}
    descs = [
        avgpool_layer(img, rng, x8, 16, 16, 8, k=(2, 2), stride=2, **q)[0],
        avgpool_layer(img, rng, x16, 12, 12, 16, k=(3, 3), stride=1, pads=(1, 1, 1, 1), **q)[0],
        avgpool_layer(img, rng, x6, 7, 9, 6, k=(3, 3), stride=2, ceil_mode=True, count_include_pad=True,
                      **q)[0],
        gap_layer(img, rng, x8, 16, 16, 8, **q)[0],
        gap_layer(img, rng, x16, 12, 12, 16, **q)[0],
        avgpool_layer(img, rng, x7, 7, 7, 6, k=(7, 7), stride=1, **q)[0],  # whole map: the global path
        add_layer(img, rng, x8, y8, 16, 16, 8, in_zp=zp, in2_zp=4, out_zp=-1)[0],
        add_layer(img, rng, x16, y16, 12, 12, 16, in_zp=zp, in2_zp=1, out_zp=-128, clamp=(-128, 127))[0],
        add_layer(img, rng, x16, y16, 144, 1, 16, in_zp=zp, in2_zp=1, out_zp=0, clamp=(0, 127),
                  lut="channel")[0],
    ]
    return img, descs


def group_layers(rng) -> tuple[Image, list[LayerDescriptor]]:
    """Convs of several output-channel groups whose weight reads are as long as their compute."""
    img = Image(CFG, 1 << 18, top=PROG_SLOT)
    zp = 5
    x32 = img.alloc(pack_tensor(rand_tensor(rng, 3, 3, 32), CFG, zp))
    x80 = img.alloc(pack_tensor(rand_tensor(rng, 4, 4, 80), CFG, zp))
    x6 = img.alloc(pack_tensor(rand_tensor(rng, 6, 6, 32), CFG, zp))
    q = {"in_zp": zp, "out_zp": -7}
    descs = [
        conv_layer(img, rng, x32, 3, 3, 32, cout=40, k=(3, 3), pads=(1, 1, 1, 1), **q)[0],
        conv_layer(img, rng, x32, 3, 3, 32, cout=40, k=(3, 3), pads=(1, 1, 1, 1), lut="channel", **q)[0],
        conv_layer(img, rng, x80, 4, 4, 80, cout=80, k=(3, 3), pads=(1, 1, 1, 1), depthwise=True, **q)[0],
        conv_layer(img, rng, x6, 6, 6, 32, cout=24, k=(3, 3), pads=(1, 1, 1, 1), fuse_maxpool=True, **q)[0],
    ]
    return img, descs


def relocate(data: np.ndarray, descs: list[LayerDescriptor]) -> tuple[Image, list[LayerDescriptor]]:
    """Move a memory image up by ``PROG_SLOT`` (room for the one-descriptor programs)."""
    img = Image(CFG, data.size + PROG_SLOT, top=PROG_SLOT)
    img.data[PROG_SLOT:] = data
    out = []
    for d in descs:
        moved = {f: getattr(d, f) + PROG_SLOT for f in ("in_addr", "out_addr", "weights_addr", "params_addr")}
        if d.lut:
            moved["lut_addr"] = d.lut_addr + PROG_SLOT
        out.append(dataclasses.replace(d, **moved))
    return img, out


def classifier(rng, size: int) -> tuple[Image, list[LayerDescriptor]]:
    """The small classifier of tests/test_core_networks.py (same layers, same seeds)."""
    from test_core_networks import _classifier

    img, descs = _classifier(rng, size)
    return relocate(img.data, descs)


def pnet(size: int) -> tuple[Image, list[LayerDescriptor]]:
    from test_core_networks import _pnet

    prog, _, image = _pnet(size)
    return relocate(image, prog.descriptors)


def test_avg_tap_floor_is_the_deep_fma_depth():
    """The model's AvgPool tap period floor is the RTL's deep fma depth (the model keeps a copy
    so that it does not import amaranth)."""
    from jacquard.rtl.fp32 import FMA_DEEP_STAGES

    assert AVG_TAP_FLOOR == FMA_DEEP_STAGES


def test_perf_single_layers_vs_rtl(tmp_path):
    seed = 5
    img, descs = single_layers(np.random.default_rng(seed))
    check(measure(tmp_path, img, descs, seed), "single layers")


def test_perf_new_ops_vs_rtl(tmp_path):
    seed = 6
    img, descs = new_op_layers(np.random.default_rng(seed))
    check(measure(tmp_path, img, descs, seed), "AVGPOOL, GLOBAL_AVGPOOL, ADD")


@pytest.mark.parametrize(("seed", "classifier_size", "pnet_size"), [
    pytest.param(21, 12, 24, id="small"),
    pytest.param(22, 28, 64, marks=pytest.mark.slow, id="large"),
])
def test_perf_networks_vs_rtl(tmp_path, seed, classifier_size, pnet_size):
    img, descs = classifier(np.random.default_rng(seed), classifier_size)
    (tmp_path / "classifier").mkdir()
    rows = measure(tmp_path / "classifier", img, descs, seed)
    (tmp_path / "pnet").mkdir()
    img, descs = pnet(pnet_size)
    rows_p = measure(tmp_path / "pnet", img, descs, pnet_size)
    check(rows, f"classifier {classifier_size}x{classifier_size}")
    check(rows_p, f"P-Net {pnet_size}x{pnet_size}")


def serial_schedule(d: LayerDescriptor) -> int:
    """The model's cycles of ``d`` with its groups run one after the other (the core's schedule
    before groups overlapped: each group reads its weights after the previous one has drained)."""
    return estimate_descriptor(d, CFG, SERIAL).cycles + program_overhead(CFG)


def test_perf_group_overlap_vs_rtl(tmp_path):
    """Multi-group convs: bit-exact, faster than the serial schedule, later groups never wait on weights.

    Small maps with many channels make each group's weight read as long as its compute, so the
    prefetch into the other bank (queued behind the group's input) is what the schedule gains.
    ``STALL_WEIGHTS`` counts the busy cycles a started group waited for its weights: only the
    layer's first group may.
    """
    seed = 7
    img, descs = group_layers(np.random.default_rng(seed))
    rows = measure(tmp_path, img, descs, seed)
    check(rows, "multi-group layers")
    for d, r in zip(descs, rows, strict=True):
        groups = group_tiles(d, CFG)
        assert len(groups) > 1, f"{r['layer']}: one group ({groups}) shows no overlap"
        serial = serial_schedule(d)
        stall_w = r["counters"]["STALL_WEIGHTS"]
        first = first_group_load(d, groups[0])
        print(f"{r['layer']}: groups {groups}, RTL {r['rtl']}, serial schedule {serial}, "
              f"STALL_WEIGHTS {stall_w} (the first group's parameter, LUT and weight reads: {first:.0f})")
        assert r["rtl"] < serial, f"{r['layer']}: {r['rtl']} cycles, not below the serial {serial}"
        # Only the first group waits for its reads (its line buffer starts with the group); the
        # later groups' weights are in their bank when they start.
        assert stall_w <= first + 64, (
            f"{r['layer']}: STALL_WEIGHTS {stall_w} exceeds the first group's reads ({first:.0f} cycles)")


def first_group_load(d: LayerDescriptor, g: int) -> float:
    """Cycles of a layer's first group's parameter, LUT and weight reads at the model's rates."""
    return sum(group_reads(d, CFG, g))
