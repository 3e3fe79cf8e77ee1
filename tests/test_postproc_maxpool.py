"""MaxPool2x2 in amaranth.sim: random feature maps with random gaps, against ``golden.max_pool(2, 2)``."""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from jacquard.rtl.maxpool2x2 import MaxPool2x2
from jacquard.sim import golden
from jacquard.sim.streams import stream_monitor, stream_recv, stream_send


def to_beats(fmap: np.ndarray, oc_par: int) -> list[list[int]]:
    """(H, W, C) -> beats for y, for x, for oc tile."""
    h, w, c = fmap.shape
    return [[int(v) for v in fmap[y, x, t * oc_par:(t + 1) * oc_par]]
            for y in range(h) for x in range(w) for t in range(c // oc_par)]


def run_maps(dut: MaxPool2x2, fmaps, seed: int, gap: float = 0.3):
    oc_par = dut.oc_par
    shapes = [(f.shape[0] // 2, f.shape[1] // 2, f.shape[2]) for f in fmaps]
    counts = [oh * ow * (c // oc_par) for oh, ow, c in shapes]
    received = []

    async def producer(ctx):
        rng = random.Random(seed)
        for fmap in fmaps:
            while ctx.get(dut.busy):
                await ctx.tick()
            ctx.set(dut.width, fmap.shape[1])
            ctx.set(dut.n_oc_tiles, fmap.shape[2] // oc_par)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            await ctx.tick().repeat(2)  # the configuration check
            assert not ctx.get(dut.error)
            await stream_send(ctx, dut.i, to_beats(fmap, oc_par), rng=rng, gap=gap)

    async def consumer(ctx):
        beats = await stream_recv(ctx, dut.o, sum(counts), rng=random.Random(seed + 1), gap=gap)
        received.extend([int(v) for v in beat] for beat in beats)

    async def monitor(ctx):
        await stream_monitor(ctx, dut.o, "maxpool.o")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(monitor, background=True)
    sim.run()
    outputs, at = [], 0
    for shape, count in zip(shapes, counts, strict=True):
        out = np.array(received[at:at + count], dtype=np.int64).reshape(count, oc_par)
        oh, ow, c = shape
        # Beats (oy, ox, t) x lanes -> (oy, ox, t * oc_par + lane).
        outputs.append(out.reshape(oh, ow, c))
        at += count
    return outputs


@pytest.mark.parametrize(("seed", "oc_par", "gap"), [(1, 4, 0.3), (2, 2, 0.5), (3, 4, 0.0), (4, 1, 0.3)])
def test_maxpool_random_maps(seed, oc_par, gap):
    rng = np.random.default_rng(seed)
    fmaps = []
    for _ in range(3):
        h, w = int(rng.integers(2, 8)), int(rng.integers(2, 10))
        tiles = int(rng.integers(1, 4))
        fmaps.append(rng.integers(-128, 128, (h, w, tiles * oc_par)).astype(np.int8))
    dut = MaxPool2x2(oc_par=oc_par, max_width=16, max_oc_tiles=3, buffer_depth=24)
    outputs = run_maps(dut, fmaps, seed, gap)
    for n, (fmap, got) in enumerate(zip(fmaps, outputs, strict=True)):
        want = golden.max_pool(fmap[None], 2, 2)[0].astype(np.int64)
        bad = np.argwhere(want != got)
        assert len(bad) == 0, (f"seed={seed} map {n} shape {fmap.shape}: {len(bad)} mismatches; first at "
                               f"(oy, ox, c)={tuple(bad[0])}: expected {want[tuple(bad[0])]}, "
                               f"got {got[tuple(bad[0])]}")


@pytest.mark.parametrize(("width", "n_oc_tiles", "busy"), [
    (1, 1, False), (21, 1, False), (4, 0, False), (4, 4, False),
    (16, 3, False),  # 8 pairs x 3 tiles = 24 entries fit; 9 pairs do not (next case)
    (18, 3, False), (4, 1, True),
])
def test_maxpool_refuses_bad_config(width, n_oc_tiles, busy):
    dut = MaxPool2x2(oc_par=2, max_width=20, max_oc_tiles=3, buffer_depth=24)
    want_error = not (width == 16 and n_oc_tiles == 3)
    seen = {}

    async def tb(ctx):
        if busy:
            ctx.set(dut.width, 2)
            ctx.set(dut.n_oc_tiles, 1)
            ctx.set(dut.start, 1)
            await ctx.tick()
            ctx.set(dut.start, 0)
            await stream_send(ctx, dut.i, [[1, 2]] * 4)  # row 0 and row 1: the output is pending
        ctx.set(dut.width, width)
        ctx.set(dut.n_oc_tiles, n_oc_tiles)
        ctx.set(dut.start, 1)
        await ctx.tick()
        ctx.set(dut.start, 0)
        await ctx.tick().repeat(dut.check_cycles - 1)
        seen["error"] = ctx.get(dut.error)
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        seen["ready"] = ctx.get(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert seen == {"error": int(want_error), "ready": int(not want_error)}, seen
