# amaranth: UnusedElaboratable=no
"""RegisteredRam: the generic form against a Python model; the ECP5 form's DP16KD tiling and modes."""
# (first line: the bad-parameter tests build RegisteredRams whose __init__ raises)

import random

import pytest
from amaranth.hdl import Fragment, Instance
from amaranth.sim import Simulator

from jacquard.rtl.bram import RegisteredRam


@pytest.mark.parametrize(("lane_width", "depth", "lanes", "seed", "lane_addr"),
                         [(8, 16, 1, 1, False), (4, 10, 3, 2, False), (16, 64, 2, 3, False),
                          (4, 10, 3, 4, True), (8, 16, 4, 5, True)])
def test_registered_ram_random(lane_width, depth, lanes, seed, lane_addr):
    rng = random.Random(seed)
    dut = RegisteredRam(lane_width, depth, lanes, lane_addr=lane_addr)
    mask = (1 << lane_width) - 1

    async def tb(ctx):
        model = [[0] * depth for _ in range(lanes)]  # per lane
        pending = None      # (words read at the last r_en edge) not yet loaded into r_data
        expect = 0
        for step in range(600):
            n_addr = lanes if lane_addr else 1
            wa = [rng.randrange(depth) for _ in range(n_addr)] * (lanes // n_addr)
            ra = [rng.randrange(depth) for _ in range(n_addr)] * (lanes // n_addr)
            we = rng.getrandbits(lanes)
            we &= ~sum(1 << k for k in range(lanes) if wa[k] == ra[k])  # collisions are undefined
            wd, re, oe = rng.getrandbits(lanes * lane_width), rng.random() < 0.6, rng.random() < 0.7
            ctx.set(dut.w_addr, wa if lane_addr else wa[0])
            ctx.set(dut.w_data, wd)
            ctx.set(dut.w_en, we)
            ctx.set(dut.r_addr, ra if lane_addr else ra[0])
            ctx.set(dut.r_en, re)
            ctx.set(dut.r_oe, oe)
            await ctx.tick()
            got = ctx.get(dut.r_data)
            # The output register loads the word of the latest read before this edge.
            if oe and pending is not None:
                expect = pending
            if re:
                pending = sum(model[k][ra[k]] << (k * lane_width) for k in range(lanes))
            for k in range(lanes):
                if we >> k & 1:
                    model[k][wa[k]] = (wd >> (k * lane_width)) & mask
            assert got == expect, f"seed={seed} step {step}: expected {expect:#x}, got {got:#x}"

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()


class _Ecp5:
    family = "ecp5"


@pytest.mark.parametrize(("lane_width", "depth", "lanes", "tiles", "width"), [
    (64, 4096, 1, 16, 4), (64, 1024, 16, 64, 18), (128, 2048, 1, 15, 9), (8, 16384, 1, 8, 1)])
def test_registered_ram_ecp5_tiles(lane_width, depth, lanes, tiles, width):
    frag = Fragment.get(RegisteredRam(lane_width, depth, lanes), _Ecp5())
    _check_tiles(frag, tiles, width)


def test_registered_ram_ecp5_lane_addr():
    # Each lane's DP16KDs read and write that lane's address (here a constant per lane).
    dut = RegisteredRam(64, 1024, 3, lane_addr=True)
    frag = Fragment.get(dut, _Ecp5())
    _check_tiles(frag, 12, 18)
    assert len(dut.r_addr.as_value()) == len(dut.w_addr.as_value()) == 3 * 10


def _check_tiles(frag, tiles, width):
    rams = [sub for sub, _name, _src in frag.subfragments if isinstance(sub, Instance)]
    assert len(rams) == tiles
    for ram in rams:
        assert ram.type == "DP16KD"
        assert ram.parameters["DATA_WIDTH_A"] == ram.parameters["DATA_WIDTH_B"] == width
        assert ram.parameters["REGMODE_B"] == "OUTREG"


@pytest.mark.parametrize(("args", "exc"), [((0, 16), ValueError), ((8, 0), ValueError),
                                           ((8, 16, 0), ValueError), ((8.0, 16), TypeError),
                                           ((8, 1 << 21), ValueError), ((8, 16, 1, 1), TypeError)])
def test_registered_ram_bad_parameters(args, exc):
    with pytest.raises(exc):
        RegisteredRam(*args)
