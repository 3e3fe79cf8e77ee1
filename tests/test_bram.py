# amaranth: UnusedElaboratable=no
"""RegisteredRam: the generic form against a Python model; the ECP5 form's DP16KD tiling and modes."""
# (first line: the bad-parameter tests build RegisteredRams whose __init__ raises)

import random

import pytest
from amaranth.hdl import Fragment, Instance
from amaranth.sim import Simulator

from jacquard.rtl.bram import RegisteredRam


@pytest.mark.parametrize(("lane_width", "depth", "lanes", "seed"),
                         [(8, 16, 1, 1), (4, 10, 3, 2), (16, 64, 2, 3)])
def test_registered_ram_random(lane_width, depth, lanes, seed):
    rng = random.Random(seed)
    dut = RegisteredRam(lane_width, depth, lanes)
    mask = (1 << lane_width) - 1

    async def tb(ctx):
        model = [0] * depth
        pending = None      # (address read at the last r_en edge) not yet loaded into r_data
        expect = 0
        for step in range(600):
            wa, ra = rng.randrange(depth), rng.randrange(depth)
            we = rng.getrandbits(lanes) if wa != ra else 0  # same-address collisions are undefined
            wd, re, oe = rng.getrandbits(lanes * lane_width), rng.random() < 0.6, rng.random() < 0.7
            ctx.set(dut.w_addr, wa)
            ctx.set(dut.w_data, wd)
            ctx.set(dut.w_en, we)
            ctx.set(dut.r_addr, ra)
            ctx.set(dut.r_en, re)
            ctx.set(dut.r_oe, oe)
            await ctx.tick()
            got = ctx.get(dut.r_data)
            # The output register loads the word of the latest read before this edge.
            if oe and pending is not None:
                expect = pending
            if re:
                pending = model[ra]
            for k in range(lanes):
                if we >> k & 1:
                    word = model[wa] & ~(mask << (k * lane_width))
                    model[wa] = word | (((wd >> (k * lane_width)) & mask) << (k * lane_width))
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
    rams = [sub for sub, _name, _src in frag.subfragments if isinstance(sub, Instance)]
    assert len(rams) == tiles
    for ram in rams:
        assert ram.type == "DP16KD"
        assert ram.parameters["DATA_WIDTH_A"] == ram.parameters["DATA_WIDTH_B"] == width
        assert ram.parameters["REGMODE_B"] == "OUTREG"


@pytest.mark.parametrize(("args", "exc"), [((0, 16), ValueError), ((8, 0), ValueError),
                                           ((8, 16, 0), ValueError), ((8.0, 16), TypeError),
                                           ((8, 1 << 21), ValueError)])
def test_registered_ram_bad_parameters(args, exc):
    with pytest.raises(exc):
        RegisteredRam(*args)
