"""The analytical performance model: cycle counts that follow from the datapath, checked by hand."""

from __future__ import annotations

import dataclasses

import pytest

from jacquard.host.perf import DEFAULT, estimate_descriptor, estimate_program, group_tiles
from jacquard.sim.isa import CONFIGS, LayerDescriptor, Op, padded_channels

ULX = CONFIGS["ulx3s-85f"]


def conv(cfg=ULX, h=32, w=32, cin=16, cout=32, k=3, depthwise=False, pool=False):
    oh, ow = h - k + 1, w - k + 1
    if pool:
        oh, ow = oh // 2, ow // 2
    return LayerDescriptor(op=Op.CONV, kh=k, kw=k, depthwise=depthwise, fuse_maxpool=pool, in_h=h, in_w=w,
                           in_c=cin, in_cp=padded_channels(cin, cfg), out_h=oh, out_w=ow, out_c=cout,
                           out_cp=padded_channels(cout, cfg))


def test_dense_conv_compute_is_taps_times_tiles_per_position():
    e = estimate_descriptor(conv(cin=16, cout=32, k=3), ULX)
    positions, taps, c_tiles, oc_tiles = 30 * 30, 9, 16 // ULX.c_par, 32 // ULX.oc_par
    assert e.compute_cycles == positions * taps * c_tiles * oc_tiles
    assert e.macs == positions * taps * 16 * 32
    assert e.cycles >= e.compute_cycles + e.dma_cycles + DEFAULT.descriptor_overhead
    assert 0.5 < e.utilization <= 1.0  # a layer that fills the array runs near its peak


def test_depthwise_uses_the_diagonal():
    e = estimate_descriptor(conv(cin=16, cout=16, depthwise=True), ULX)
    assert e.compute_cycles == 30 * 30 * 9 * 2
    assert e.utilization <= 1 / ULX.oc_par + 1e-9  # only c_par of the c_par x oc_par MACs work


def test_fused_pool_computes_the_unpooled_positions():
    plain, pooled = (estimate_descriptor(conv(pool=p), ULX) for p in (False, True))
    assert pooled.compute_cycles == plain.compute_cycles
    assert pooled.dma_bytes < plain.dma_bytes


def test_requant_bound_one_by_one():
    # A 1x1 conv over c_par channels has one tap per accumulation: oc_par / n_requant cycles per beat.
    d = conv(cin=8, cout=16, k=1)
    e = estimate_descriptor(d, ULX)
    lanes = ULX.oc_par // DEFAULT.requant_lanes(ULX)
    assert e.requant_cycles == 32 * 32 * (lanes - 1)


def test_input_bound_when_the_input_is_slow():
    d = conv(cin=32, cout=16, k=1)
    fast = estimate_descriptor(d, ULX)
    slow = estimate_descriptor(d, ULX, dataclasses.replace(DEFAULT, input_cycles_per_word=20.0))
    assert slow.cycles > fast.cycles


def test_groups_follow_the_weight_bank():
    small = CONFIGS["sim-small"]
    d = conv(small, h=8, w=8, cin=32, cout=24, k=3)
    assert group_tiles(d, small) == [3, 3]  # 72 blocks per oc tile, 256 per bank
    assert estimate_descriptor(d, small).groups == 2


def test_later_groups_read_their_weights_while_the_previous_group_computes():
    small = CONFIGS["sim-small"]
    serial = dataclasses.replace(DEFAULT, overlap_groups=False)
    one = conv(small, h=8, w=8, cin=32, cout=12, k=3)  # one group: nothing to overlap
    assert estimate_descriptor(one, small).cycles == estimate_descriptor(one, small, serial).cycles
    d = conv(small, h=8, w=8, cin=32, cout=24, k=3)  # two groups of 3 oc tiles, compute-bound
    words = 3 * 72 * small.c_par * small.oc_par // small.dma_align  # the second group's weights
    hidden = DEFAULT.weight_start + words * DEFAULT.weight_cycles_per_word
    gain = estimate_descriptor(d, small, serial).cycles - estimate_descriptor(d, small).cycles
    assert gain == round(hidden + DEFAULT.group_overhead - DEFAULT.group_switch)
    # Input-bound (a 1x1 conv of many pixels and few taps): the prefetch waits for the input.
    d = conv(small, h=32, w=32, cin=4, cout=400, k=1)
    assert len(group_tiles(d, small)) == 7  # the parameter buffer's 16 oc tiles per group
    assert estimate_descriptor(d, small).cycles < estimate_descriptor(d, small, serial).cycles


def test_program_sums_layers_and_scales_with_the_clock():
    descs = [conv(), conv(cin=32, cout=32)]
    est = estimate_program(descs, ULX)
    assert est.cycles == sum(estimate_descriptor(d, ULX).cycles for d in descs)
    assert est.fps == pytest.approx(ULX.clock_mhz * 1e6 / est.cycles)
    assert estimate_program(descs, ULX, clock_mhz=50).fps == pytest.approx(est.fps / 2)


def test_smaller_array_is_slower():
    big = estimate_descriptor(conv(), ULX)
    small = estimate_descriptor(conv(CONFIGS["icebreaker"]), CONFIGS["icebreaker"])
    assert small.compute_cycles > 10 * big.compute_cycles


def test_pnet_320x240_estimate():
    """MTCNN P-Net at 320x240 on ULX3S-85F: the figure the benchmark reports."""
    from test_compiler import mtcnn_imported

    from jacquard.host.compiler import compile_plan
    from jacquard.host.device import estimate
    from jacquard.host.partition import partition

    imported, _ = mtcnn_imported("pnet", (240, 320))
    exe = compile_plan(partition(imported), "ulx3s-85f")
    est = estimate(exe)
    macs = sum(r["macs"] for r in exe.report if r["where"] == "accelerator")
    assert est.macs == macs  # the model counts the layers' own MACs
    assert 0 < est.utilization < 1
    assert est.fps < ULX.clock_mhz * 1e6 * ULX.macs / macs  # never faster than the peak MAC rate
