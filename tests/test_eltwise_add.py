# amaranth: UnusedElaboratable=no
"""EltwiseAdd in amaranth.sim against golden.add: random and adversarial scales, random gaps, errors."""
# (first line: the bad-parameter test builds EltwiseAdds whose __init__ raises; amaranth warns "unused")

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from jacquard.rtl.eltwise_add import EltwiseAdd
from jacquard.sim import golden
from jacquard.sim.golden_numerics import _fma_f32
from jacquard.sim.streams import stream_monitor, stream_recv, stream_send

F32 = np.float32


def add_params(sa: float, za: int, sb: float, zb: int, sy: float, zy: int) -> dict:
    """The unit's configuration, computed in float32 exactly as golden.add builds its constants."""
    ra, rb = F32(sa) / F32(sy), F32(sb) / F32(sy)
    k = F32(zy) - _fma_f32(ra, F32(za), rb * F32(zb))
    bits = [int(np.array(v, dtype=F32).view(np.uint32)) for v in (ra, rb, k)]
    return dict(zip(("ra", "rb", "k"), bits, strict=True))


def random_quant(rng: np.random.Generator) -> tuple:
    """Scales and zero points: mostly realistic, sometimes with ratios far from 1 or equal scales."""
    kind = rng.integers(0, 4)
    sy = F32(rng.uniform(0.005, 0.2))
    if kind == 0:
        sa, sb = F32(rng.uniform(0.005, 0.2)), F32(rng.uniform(0.005, 0.2))
    elif kind == 1:
        sa = sb = sy  # ratios exactly 1: many exact ties in the final rounding
    elif kind == 2:
        sa, sb = sy * F32(2.0 ** rng.integers(-3, 4)), sy * F32(rng.uniform(0.5, 2))
    else:
        sa, sb = sy * F32(rng.uniform(20, 1000)), sy * F32(rng.uniform(1e-4, 1e-2))  # saturating / tiny
    za, zb, zy = (int(rng.integers(-128, 128)) for _ in range(3))
    return float(sa), za, float(sb), zb, float(sy), zy


def run_add(dut: EltwiseAdd, cfg: dict, a: np.ndarray, b: np.ndarray, seed: int, gap: float) -> np.ndarray:
    c_par = dut.c_par
    beats_a = [[int(v) for v in row] for row in a.reshape(-1, c_par)]
    beats_b = [[int(v) for v in row] for row in b.reshape(-1, c_par)]
    got = []

    async def put_a(ctx):
        for name, value in cfg.items():
            ctx.set(getattr(dut, name), value)
        await stream_send(ctx, dut.a, beats_a, rng=random.Random(seed + 1), gap=gap)

    async def put_b(ctx):
        await stream_send(ctx, dut.b, beats_b, rng=random.Random(seed + 2), gap=gap)

    async def get(ctx):
        got.extend(await stream_recv(ctx, dut.o, len(beats_a), rng=random.Random(seed + 3), gap=gap))

    async def monitor(ctx):
        await stream_monitor(ctx, dut.o, "add.o")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for tb in (put_a, put_b, get):
        sim.add_testbench(tb)
    sim.add_testbench(monitor, background=True)
    sim.run()
    return np.array([[int(v) for v in beat] for beat in got], dtype=np.int8).reshape(a.shape)


def check(got: np.ndarray, want: np.ndarray, a, b, seed: int, q) -> None:
    bad = np.argwhere(got != want)
    if bad.size:
        i = tuple(bad[0])
        raise AssertionError(f"seed={seed} quant={q}: first mismatch at {i} (a={a[i]}, b={b[i]}): "
                             f"expected {want[i]}, got {got[i]} ({len(bad)} differ)")


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5, 6])
def test_eltwise_add_random(seed):
    rng = np.random.default_rng(seed)
    c_par = [1, 2, 4][seed % 3]
    q = random_quant(rng)
    a = rng.integers(-128, 128, size=(24, c_par), dtype=np.int8)
    b = rng.integers(-128, 128, size=(24, c_par), dtype=np.int8)
    want = golden.add(a, q[0], q[1], b, q[2], q[3], q[4], q[5])
    got = run_add(EltwiseAdd(c_par), add_params(*q), a, b, seed, gap=0.3)
    check(got, want, a, b, seed, q)


@pytest.mark.parametrize(("seed", "c_par", "lanes", "gap"),
                         [(11, 4, 1, 0.3), (12, 4, 2, 0.0), (13, 8, 2, 0.5)])
def test_eltwise_add_fewer_lanes(seed, c_par, lanes, gap):
    """A beat through fewer datapath lanes, slice by slice, with and without back-pressure."""
    rng = np.random.default_rng(seed)
    q = random_quant(rng)
    a = rng.integers(-128, 128, size=(20, c_par), dtype=np.int8)
    b = rng.integers(-128, 128, size=(20, c_par), dtype=np.int8)
    want = golden.add(a, q[0], q[1], b, q[2], q[3], q[4], q[5])
    got = run_add(EltwiseAdd(c_par, lanes=lanes), add_params(*q), a, b, seed, gap=gap)
    check(got, want, a, b, seed, q)


def test_eltwise_add_all_pairs_one_quant():
    # Every (a, b) pair on a slice of the grid, with ratios exactly 1 and 0.5 (dense exact ties).
    q = (0.05, 3, 0.025, -7, 0.05, 1)
    grid = np.arange(-128, 128, 3, dtype=np.int8)
    a, b = (g.reshape(-1, 4) for g in np.meshgrid(grid, grid[::5]))
    a, b = a.astype(np.int8), b.astype(np.int8)
    want = golden.add(a, q[0], q[1], b, q[2], q[3], q[4], q[5])
    check(run_add(EltwiseAdd(4), add_params(*q), a, b, 9, gap=0.0), want, a, b, 9, q)


@pytest.mark.parametrize(("c_par", "lanes"), [(4, 4), (8, 1), (8, 2)])
def test_eltwise_add_full_rate(c_par, lanes):
    """Inputs always valid, output always ready: a beat in and out every c_par // lanes cycles,
    after the unit's latency (the free-running pipeline's output queue never runs out of room)."""
    rng = np.random.default_rng(c_par + lanes)
    q = random_quant(rng)
    n = 40
    a = rng.integers(-128, 128, size=(n, c_par), dtype=np.int8)
    b = rng.integers(-128, 128, size=(n, c_par), dtype=np.int8)
    want = golden.add(a, q[0], q[1], b, q[2], q[3], q[4], q[5])
    dut = EltwiseAdd(c_par, lanes=lanes)
    takes, outs, got = [], [], []

    async def tb(ctx):
        for name, value in add_params(*q).items():
            ctx.set(getattr(dut, name), value)
        await ctx.tick()  # the registered configuration check
        ctx.set(dut.o.ready, 1)
        cycle = 0
        while len(got) < n:
            if len(takes) < n:
                ctx.set(dut.a.payload, [int(v) for v in a[len(takes)]])
                ctx.set(dut.b.payload, [int(v) for v in b[len(takes)]])
            ctx.set(dut.a.valid, len(takes) < n)
            ctx.set(dut.b.valid, len(takes) < n)
            _, _, a_taken, o_valid, o_payload = await ctx.tick().sample(
                dut.a.valid & dut.a.ready, dut.o.valid, dut.o.payload)
            if a_taken:
                takes.append(cycle)
            if o_valid:
                outs.append(cycle)
                got.append([int(v) for v in o_payload])
            cycle += 1
            assert cycle < 40 * n, "the unit stopped"

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    check(np.array(got, dtype=np.int8), want, a, b, 0, q)
    period = c_par // lanes
    assert np.diff(takes).tolist() == [period] * (n - 1), f"pairs taken at cycles {takes}"
    assert np.diff(outs).tolist() == [period] * (n - 1), f"beats out at cycles {outs}"
    latency = EltwiseAdd.latency + (period if period > 1 else 0)
    assert outs[0] - takes[0] == latency, f"latency {outs[0] - takes[0]}, expected {latency}"


def test_eltwise_add_clamp_fuses_relu():
    rng = np.random.default_rng(7)
    q = (0.03, 0, 0.04, 0, 0.05, -10)
    a = rng.integers(-128, 128, size=(16, 2), dtype=np.int8)
    b = rng.integers(-128, 128, size=(16, 2), dtype=np.int8)
    want = np.maximum(golden.add(a, *q[:2], b, *q[2:]), -10)
    got = run_add(EltwiseAdd(2), {**add_params(*q), "lo": -10, "hi": 127}, a, b, 7, gap=0.2)
    check(got, want, a, b, 7, q)


@pytest.mark.parametrize(("field", "value"), [
    ("ra", 0x7F800000),   # inf
    ("rb", 0x7FC00000),   # NaN
    ("ra", 0),            # zero ratio
    ("rb", 0x00000001),   # denormal
    ("ra", 0x5F800000),   # 2^64: too large
    ("k", 0x1F000000),    # 2^-65: nonzero and too small
    ("lo", 5),            # lo > hi
])
def test_eltwise_add_refuses_bad_config(field, value):
    dut = EltwiseAdd(1)
    cfg = {**add_params(0.1, 0, 0.1, 0, 0.1, 0), "hi": 4, field: value}
    if field != "lo":
        cfg["hi"] = 127

    async def tb(ctx):
        for name, v in cfg.items():
            ctx.set(getattr(dut, name), v)
        ctx.set(dut.a.valid, 1)
        ctx.set(dut.b.valid, 1)
        for _ in range(3):
            await ctx.tick()
            assert ctx.get(dut.error) == 1
            assert ctx.get(dut.a.ready) == 0 and ctx.get(dut.b.ready) == 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize(("arg", "exc"), [(0, ValueError), (65, ValueError), (2.0, TypeError)])
def test_eltwise_add_bad_parameters(arg, exc):
    with pytest.raises(exc):
        EltwiseAdd(arg)


@pytest.mark.parametrize(("lanes", "exc"),
                         [(0, ValueError), (5, ValueError), (3, ValueError), (1.0, TypeError)])
def test_eltwise_add_bad_lanes(lanes, exc):
    with pytest.raises(exc, match="lanes"):
        EltwiseAdd(4, lanes=lanes)
