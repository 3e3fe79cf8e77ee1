# amaranth: UnusedElaboratable=no
"""Pool in amaranth.sim: max pooling vs golden.max_pool, global average pooling vs golden.global_avg_pool."""
# (first line: the bad-parameter test builds Pools whose __init__ raises; amaranth warns "unused")

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from jacquard.rtl.pool import Pool, PoolError, PoolMode
from jacquard.sim import golden
from jacquard.sim.streams import stream_monitor, stream_recv, stream_send
from jacquard.sim.taps import tap_stream

F32 = np.float32


def run_pool(dut: Pool, mode: PoolMode, taps, first, last, per_window: int, seed: int, gap: float):
    beats = [{"data": [int(v) for v in t], "first": int(f), "last": int(la)}
             for t, f, la in zip(taps, first, last, strict=True)]
    port = dut.o if mode == PoolMode.MAX else dut.o_sum
    n_out = len(beats) // per_window
    got = []

    async def producer(ctx):
        ctx.set(dut.mode, mode)
        ctx.set(dut.taps, per_window)
        await stream_send(ctx, dut.i, beats, rng=random.Random(seed + 1), gap=gap)

    async def consumer(ctx):
        got.extend(await stream_recv(ctx, port, n_out, rng=random.Random(seed + 2), gap=gap))

    async def monitor(ctx):
        await stream_monitor(ctx, port, "pool.out")

    async def silent(ctx):
        # The other output must stay quiet in this mode.
        other = dut.o_sum if mode == PoolMode.MAX else dut.o
        async for _, _, valid in ctx.tick().sample(other.valid):
            assert not valid, f"{mode}: the unused output produced a beat"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(monitor, background=True)
    sim.add_testbench(silent, background=True)
    sim.run()
    return np.array([[int(v) for v in beat] for beat in got], dtype=np.int64)


def first_mismatch(got, want, seed, desc):
    assert got.shape == want.shape, f"seed={seed} {desc}: shape {got.shape} != {want.shape}"
    bad = np.argwhere(got != want)
    if bad.size:
        i = tuple(bad[0])
        raise AssertionError(f"seed={seed} {desc}: first mismatch at {i}: expected {want[i]}, got {got[i]}")


@pytest.mark.parametrize(("seed", "c_par"), [(1, 4), (2, 2), (3, 1), (4, 8)])
def test_pool_max_random(seed, c_par):
    rng = np.random.default_rng(seed)
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    stride = int(rng.integers(1, 3))
    pads = tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))
    h, w = int(rng.integers(kh, kh + 4)), int(rng.integers(kw, kw + 4))
    c = c_par * int(rng.integers(1, 3))
    x = rng.integers(-128, 128, size=(1, h, w, c), dtype=np.int8)
    want = golden.max_pool(x, (kh, kw), (stride, stride), pads)
    # Padding taps hold -128, which never wins (ONNX semantics).
    taps, first, last = tap_stream(x, -128, kh, kw, stride, pads, c_par, 1, depthwise=True)
    got = run_pool(Pool(c_par), PoolMode.MAX, taps, first, last, kh * kw, seed, gap=0.3)
    desc = f"{h}x{w}x{c} k={kh}x{kw} s={stride} pads={pads}"
    first_mismatch(got.reshape(want.shape), want.astype(np.int64), seed, desc)


@pytest.mark.parametrize(("seed", "c_par", "h", "w"), [(11, 4, 3, 5), (12, 2, 9, 9), (13, 8, 1, 1)])
def test_pool_global_average(seed, c_par, h, w):
    # GlobalAveragePool = SUM over the whole map, then the post-processor's exact requantization
    # with bias' = -zx*H*W and M = f32(sx / f32(sy * H*W)), as MLAS does it.
    rng = np.random.default_rng(seed)
    c = 2 * c_par
    x = rng.integers(-128, 128, size=(1, h, w, c), dtype=np.int8)
    sx, sy = F32(rng.uniform(0.01, 0.1)), F32(rng.uniform(0.01, 0.1))
    zx, zy = int(rng.integers(-128, 128)), int(rng.integers(-128, 128))
    want = golden.global_avg_pool(x, sx, zx, sy, zy)
    taps, first, last = tap_stream(x, zx, h, w, 1, (0, 0, 0, 0), c_par, 1, depthwise=True)
    sums = run_pool(Pool(c_par), PoolMode.SUM, taps, first, last, h * w, seed, gap=0.3)
    first_mismatch(sums.reshape(-1), x.astype(np.int64).sum(axis=(0, 1, 2)), seed, f"sums {h}x{w}")
    acc = (sums.reshape(1, 1, 1, c) - zx * h * w).astype(np.int32)
    got = golden.requantize(acc, sx / (sy * F32(h * w)), zy)
    first_mismatch(got.astype(np.int64), want.astype(np.int64), seed, f"gap {h}x{w}")


def test_pool_sum_full_range():
    # 1024 taps of -128 and of 127: the sums leave int8 and int16 range and are kept whole in int32.
    n = 1 << 10
    taps = np.array([[-128, 127]] * n, dtype=np.int8)
    k = np.arange(n)
    got = run_pool(Pool(2), PoolMode.SUM, taps, k == 0, k == n - 1, n, 5, gap=0.0)
    assert got.tolist() == [[-128 * n, 127 * n]]


@pytest.mark.parametrize("per", [1, 2, 4])
def test_pool_full_rate(per):
    # One tap per cycle with no gaps, windows back to back, output always ready.
    dut = Pool(2)
    taps = np.arange(-40, 40, dtype=np.int8).reshape(-1, 2)
    k = np.arange(len(taps)) % per
    cycles = []

    async def producer(ctx):
        ctx.set(dut.taps, per)
        ctx.set(dut.o.ready, 1)
        for t, f, la in zip(taps, k == 0, k == per - 1, strict=True):
            ctx.set(dut.i.payload, {"data": [int(v) for v in t], "first": int(f), "last": int(la)})
            ctx.set(dut.i.valid, 1)
            _, _, ready = await ctx.tick().sample(dut.i.ready)
            assert ready, "the pool unit stalled a tap with its output ready"
            cycles.append(1)
        ctx.set(dut.i.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.run()
    assert len(cycles) == len(taps)


@pytest.mark.parametrize(("mode", "taps"),
                         [(PoolMode.AVG, 4), (PoolMode.MAX, 0), (PoolMode.SUM, (1 << 24) + 1)])
def test_pool_refuses_bad_config(mode, taps):
    dut = Pool(2)

    async def tb(ctx):
        ctx.set(dut.mode, mode)
        ctx.set(dut.taps, taps)
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        assert (ctx.get(dut.error), PoolError(ctx.get(dut.error_code)), ctx.get(dut.i.ready)) == \
            (1, PoolError.CONFIG, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


def test_pool_framing_error_is_sticky_until_clear():
    dut = Pool(1)

    async def send(ctx, first, last):
        ctx.set(dut.i.payload, {"data": [3], "first": first, "last": last})
        ctx.set(dut.i.valid, 1)
        await ctx.tick()
        ctx.set(dut.i.valid, 0)

    async def tb(ctx):
        ctx.set(dut.taps, 3)
        ctx.set(dut.o.ready, 1)
        await send(ctx, 1, 0)
        await send(ctx, 0, 1)  # `last` one tap early
        await ctx.tick()
        assert (ctx.get(dut.error), PoolError(ctx.get(dut.error_code)), ctx.get(dut.i.ready)) == \
            (1, PoolError.FRAMING, 0)
        assert ctx.get(dut.o.valid) == 0, "a window with bad framing produced an output"
        ctx.set(dut.clear, 1)
        await ctx.tick()
        ctx.set(dut.clear, 0)
        await ctx.tick()
        assert (ctx.get(dut.error), ctx.get(dut.i.ready)) == (0, 1)
        for f, la in ((1, 0), (0, 0), (0, 1)):
            await send(ctx, f, la)
        await ctx.tick().repeat(2)  # the tap register, then the reduction
        assert ctx.get(dut.o.valid) == 1 and [int(v) for v in ctx.get(dut.o.payload)] == [3]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize(("arg", "exc"), [(0, ValueError), (65, ValueError), (True, TypeError)])
def test_pool_bad_parameters(arg, exc):
    with pytest.raises(exc):
        Pool(arg)
