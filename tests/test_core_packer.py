"""The core's output packer against a byte-level model (lengths, padding, granularity, full rate);
its skid stage."""

import math
import random

import pytest
from amaranth.sim import Simulator

from jacquard.rtl.core import _Packer, _Skid
from jacquard.sim.streams import stream_monitor, stream_recv, stream_send


def _model(beats, *, lanes, ch0, n_tiles, out_c, out_cp, zp, wb):
    """The words the writer must see: each beat's existing channels, padded lanes at ``zp``."""
    out = bytearray()
    for k, beat in enumerate(beats):
        ch = ch0 + (k % n_tiles) * lanes
        n = min(out_cp - ch, lanes)
        out += bytes(((zp if ch + j >= out_c else beat[j]) & 0xFF) for j in range(n))
    return [int.from_bytes(out[i:i + wb], "little") for i in range(0, len(out) - wb + 1, wb)]


def _run(width, wb, gran, *, lanes, ch0, n_tiles, out_c, out_cp, zp, pixels, seed, gap_in, gap_out):
    rng = random.Random(seed)
    dut = _Packer(width, wb, gran)
    beats = [[rng.randrange(-128, 128) for _ in range(width)] for _ in range(pixels * n_tiles)]
    expect = _model(beats, lanes=lanes, ch0=ch0, n_tiles=n_tiles, out_c=out_c, out_cp=out_cp, zp=zp, wb=wb)
    got = []

    async def setup(ctx):
        for name, value in (("lanes", lanes), ("ch0", ch0), ("n_tiles", n_tiles), ("out_c", out_c),
                            ("out_cp", out_cp), ("zero_point", zp)):
            ctx.set(getattr(dut.setup, name), value)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)

    async def producer(ctx):
        await ctx.tick()
        await ctx.tick()
        await stream_send(ctx, dut.i, beats, rng, gap_in)

    async def consumer(ctx):
        await ctx.tick()
        await ctx.tick()
        got.extend(await stream_recv(ctx, dut.o, len(expect), rng, gap_out))

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(setup)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    for port, name in ((dut.o, "packer.o"), (dut.i, "packer.i")):
        async def monitor(ctx, port=port, name=name):
            await stream_monitor(ctx, port, name)
        sim.add_process(monitor)
    return sim, got, expect


@pytest.mark.parametrize(("width", "wb", "lanes", "ch0", "n_tiles", "out_c", "out_cp", "seed"), [
    (16, 4, 16, 0, 2, 29, 32, 1),     # dense 16 lanes, last tile half real, half padding
    (16, 4, 8, 8, 3, 30, 32, 2),      # 8-lane beats (depthwise / pools) in a 16-lane packer
    (16, 4, 16, 16, 1, 40, 24, 3),    # the tile runs past out_cp: only 8 bytes exist
    (4, 4, 2, 0, 3, 5, 6, 4),         # the 25F's 2-lane beats: half-word units
    (4, 4, 4, 4, 2, 10, 12, 5),
])
@pytest.mark.parametrize("gaps", [(0.0, 0.0), (0.3, 0.4)])
def test_packer_matches_model(width, wb, lanes, ch0, n_tiles, out_c, out_cp, seed, gaps):
    gran = math.gcd(width, lanes, wb)
    pixels = 7 if (out_cp - ch0) * 7 % wb == 0 else 8
    sim, got, expect = _run(width, wb, gran, lanes=lanes, ch0=ch0, n_tiles=n_tiles, out_c=out_c,
                            out_cp=out_cp, zp=-3, pixels=pixels, seed=seed, gap_in=gaps[0], gap_out=gaps[1])
    sim.run_until(2e-3)
    for i, (e, a) in enumerate(zip(expect, got, strict=False)):
        assert e == a, f"seed {seed}: word {i}: expected {e:#010x}, got {a:#010x}"
    assert len(got) == len(expect), f"seed {seed}: {len(got)} words, expected {len(expect)}"


def test_packer_full_rate():
    """Without back-pressure a stream of 16-byte beats leaves at one 4-byte word per cycle."""
    width, wb, n = 16, 4, 12
    dut = _Packer(width, wb, 4)
    stamps = []

    async def tb(ctx):
        for name, value in (("lanes", 16), ("ch0", 0), ("n_tiles", 1), ("out_c", 16), ("out_cp", 16)):
            ctx.set(getattr(dut.setup, name), value)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 1)
        sent = 0
        for cycle in range(200):
            _, _, i_ready, o_valid = await ctx.tick().sample(dut.i.ready, dut.o.valid)
            sent += i_ready
            if o_valid:
                stamps.append(cycle)
            if sent == n:
                ctx.set(dut.i.valid, 0)
            if len(stamps) == n * width // wb:
                break

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
    assert len(stamps) == n * width // wb
    assert stamps[-1] - stamps[0] == len(stamps) - 1, f"words left at cycles {stamps}"


def test_packer_rejects_bad_granularity():
    with pytest.raises(ValueError, match="gran"):
        _Packer(16, 4, 3)


@pytest.mark.parametrize(("seed", "gap_in", "gap_out"), [(1, 0.0, 0.0), (2, 0.3, 0.5), (3, 0.6, 0.2)])
def test_skid_passes_every_beat_in_order(seed, gap_in, gap_out):
    rng = random.Random(seed)
    dut = _Skid(16)
    beats = [rng.getrandbits(16) for _ in range(200)]
    got = []

    async def producer(ctx):
        await stream_send(ctx, dut.i, beats, rng, gap_in)

    async def consumer(ctx):
        got.extend(await stream_recv(ctx, dut.o, len(beats), rng, gap_out))

    async def monitor(ctx):
        await stream_monitor(ctx, dut.o, "skid.o")

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_process(monitor)
    sim.run_until(2e-3)
    for i, (e, a) in enumerate(zip(beats, got, strict=False)):
        assert e == a, f"seed {seed}: beat {i}: expected {e:#06x}, got {a:#06x}"
    assert len(got) == len(beats), f"seed {seed}: {len(got)} beats, expected {len(beats)}"


def test_skid_full_rate_and_registered_ready():
    """One beat per cycle without back-pressure; i.ready does not follow o.ready in the same cycle."""
    dut = _Skid(8)

    async def tb(ctx):
        ctx.set(dut.i.valid, 1)
        ctx.set(dut.o.ready, 1)
        taken = 0
        for cycle in range(20):
            ctx.set(dut.i.payload, cycle)
            _, _, ready = await ctx.tick().sample(dut.i.ready)
            taken += ready
        assert taken == 20
        ctx.set(dut.o.ready, 0)
        before = ctx.get(dut.i.ready)
        ctx.set(dut.o.ready, 1)
        assert ctx.get(dut.i.ready) == before

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(tb)
    sim.run()
