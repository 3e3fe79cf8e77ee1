# amaranth: UnusedElaboratable=no
"""AvgPool in amaranth.sim: windowed QLinearAveragePool bit-exact with golden.avg_pool; errors."""
# (first line: the bad-parameter test builds AvgPools whose __init__ raises; amaranth warns "unused")

import random

import numpy as np
import pytest
from amaranth.hdl import Cat, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from jacquard.rtl.avg_pool import AvgPool
from jacquard.rtl.fp32 import DIV_STAGES, FMA_DEEP_STAGES, _decode, _div, _Pipe
from jacquard.sim import golden
from jacquard.sim.streams import stream_monitor, stream_recv, stream_send
from jacquard.sim.taps import tap_stream

F32 = np.float32


def f32_bits(v) -> int:
    return int(np.array([v], dtype=F32).view(np.uint32)[0])


def avg_case(rng: np.random.Generator, c_par: int) -> dict:
    while True:
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        stride = int(rng.integers(1, 3))
        pads = tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))
        h, w = int(rng.integers(kh, kh + 3)), int(rng.integers(kw, kw + 3))
        if not ((kh, kw) == (h, w) and pads == (0, 0, 0, 0)):  # that case is a global average
            break
    c = c_par * int(rng.integers(1, 3))
    x = rng.integers(-128, 128, size=(1, h, w, c), dtype=np.int8)
    if rng.random() < 0.3:
        sx = sy = F32(rng.uniform(0.01, 0.1))  # equal scales: many exact ties in the rounding
    else:
        sx, sy = F32(rng.uniform(0.005, 0.2)), F32(rng.uniform(0.005, 0.2))
    zx, zy = int(rng.integers(-128, 128)), int(rng.integers(-128, 128))
    cip = bool(rng.integers(0, 2))
    want = golden.avg_pool(x, sx, zx, sy, zy, (kh, kw), (stride, stride), pads, count_include_pad=cip)
    taps, first, last = tap_stream(x, zx, kh, kw, stride, pads, c_par, 1, depthwise=True)
    cfg = {"sx": f32_bits(sx), "sy": f32_bits(sy), "zx": zx, "zy": zy, "in_h": h, "in_w": w,
           "out_h": want.shape[1], "out_w": want.shape[2], "kh": kh, "kw": kw, "stride": stride,
           "pad_t": pads[0], "pad_l": pads[1], "pad_b": pads[2], "pad_r": pads[3],
           "n_tiles": c // c_par, "count_include_pad": int(cip)}
    desc = f"{h}x{w}x{c} k={kh}x{kw} s={stride} pads={pads} cip={cip} sx={sx} sy={sy} zx={zx} zy={zy}"
    return {"taps": taps, "first": first, "last": last, "cfg": cfg, "want": want.reshape(-1, c_par),
            "desc": desc}


def run_layers(dut: AvgPool, cases: list[dict], seed: int, gap: float) -> list[np.ndarray]:
    """Run ``cases`` one after the other, as layers: the next layer's configuration is applied in
    the cycle of its ``clear`` (as the core's sequencer may), once the previous one's beats are out."""
    got = [[] for _ in cases]
    done = [False] * len(cases)

    async def producer(ctx):
        for k, case in enumerate(cases):
            if k:
                while not done[k - 1]:
                    await ctx.tick()
                ctx.set(dut.clear, 1)
            for name, value in case["cfg"].items():
                ctx.set(getattr(dut, name), value)
            if k:
                await ctx.tick()
                ctx.set(dut.clear, 0)
            beats = [{"data": [int(v) for v in t], "first": int(f), "last": int(la)}
                     for t, f, la in zip(case["taps"], case["first"], case["last"], strict=True)]
            await stream_send(ctx, dut.i, beats, rng=random.Random(seed + 1 + 10 * k), gap=gap)

    async def consumer(ctx):
        for k, case in enumerate(cases):
            rng = random.Random(seed + 2 + 10 * k)
            got[k].extend(await stream_recv(ctx, dut.o, len(case["want"]), rng=rng, gap=gap))
            done[k] = True

    async def monitor(ctx):
        await stream_monitor(ctx, dut.o, "avg.o")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(monitor, background=True)
    # A deadline (three times the expected cycles), so that a unit which stops taking taps (a
    # framing error it made up, say) fails the test instead of hanging it.
    period = max(dut.c_par, FMA_DEEP_STAGES) + 1
    cycles = sum(len(c["taps"]) * (period + 1) + len(c["want"]) * 150 for c in cases)
    sim.run_until(3e-8 * (cycles + 100))
    for k, case in enumerate(cases):
        assert len(got[k]) == len(case["want"]), (
            f"seed={seed} layer {k} {case['desc']}: {len(got[k])} of {len(case['want'])} beats by "
            "the deadline")
    return [np.array([[int(v) for v in beat] for beat in g], dtype=np.int64) for g in got]


def run_avg(dut: AvgPool, case: dict, seed: int, gap: float) -> np.ndarray:
    return run_layers(dut, [case], seed, gap)[0]


def check(got: np.ndarray, case: dict, seed: int) -> None:
    want = case["want"].astype(np.int64)
    assert got.shape == want.shape, f"seed={seed} {case['desc']}: {got.shape} != {want.shape}"
    bad = np.argwhere(got != want)
    if bad.size:
        i, k = bad[0]
        raise AssertionError(f"seed={seed} {case['desc']}: first mismatch at window {i} lane {k}: "
                             f"expected {want[i, k]}, got {got[i, k]} ({len(bad)} differ)")


@pytest.mark.parametrize(("seed", "c_par"), [(1, 2), (2, 4), (3, 1), (4, 2), (5, 8)])
def test_avg_pool_random(seed, c_par):
    case = avg_case(np.random.default_rng(seed), c_par)
    check(run_avg(AvgPool(c_par), case, seed, gap=0.3), case, seed)


@pytest.mark.parametrize("seed", [11, 12])
def test_avg_pool_layers_with_clear(seed):
    # Three layers of different shapes, each configured in the cycle of its clear: the divisor,
    # the tap count and the configuration check are registered and must catch up before a tap
    # is taken. No gaps on the input, so the first tap is offered as soon as it could be.
    rng = np.random.default_rng(seed)
    cases = [avg_case(rng, 2) for _ in range(3)]
    for got, case in zip(run_layers(AvgPool(2), cases, seed, gap=0.0), cases, strict=True):
        check(got, case, seed)


@pytest.mark.parametrize(("field", "value"), [
    ("sx", 0x3F800000 | (1 << 31)),  # negative scale
    ("sy", 0x7F800000),              # inf
    ("sx", f32_bits(2.0**-33)),      # below 2^-32
    ("kh", 0),
    ("n_tiles", 0),
    ("in_h", 2),                     # kernel == whole map, no padding: a global average
])
def test_avg_pool_refuses_bad_config(field, value):
    dut = AvgPool(2)
    cfg = {"sx": f32_bits(0.05), "sy": f32_bits(0.05), "in_h": 3, "in_w": 2, "out_h": 2, "out_w": 1,
           "kh": 2, "kw": 2, "stride": 1, "n_tiles": 1, field: value}

    async def tb(ctx):
        for name, v in cfg.items():
            ctx.set(getattr(dut, name), v)
        await ctx.tick()
        assert (ctx.get(dut.error), ctx.get(dut.i.ready)) == (1, 0), field

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()


@pytest.mark.parametrize(("arg", "exc"), [(0, ValueError), (65, ValueError), (1.5, TypeError)])
def test_avg_pool_bad_parameters(arg, exc):
    with pytest.raises(exc):
        AvgPool(arg)


class _DivHarness(wiring.Component):
    """Exposes the divider: ``RNE24(a / b)`` as float32 bits (``zero`` separate)."""

    a: In(32)
    b: In(32)
    result: Out(32)
    zero: Out(1)

    def elaborate(self, platform):
        m = Module()
        a, _, _ = _decode(m, self.a, "a")
        b, _, _ = _decode(m, self.b, "b")
        r, _ = _div(_Pipe(m, 1), a, b, {}, "h")
        m.d.comb += [self.result.eq(Cat(r.mant[:23], (r.elsb + 23 + 127)[:8], r.sign)),
                     self.zero.eq(r.zero)]
        return m


def test_divider_exact():
    # Random operands, plus quotients that are exact ties at 24 bits or a remainder away from one
    # (a = b * (q + half an ulp) rounded): the guard/sticky cases that decide round-half-even.
    rng = np.random.default_rng(77)
    count = 300
    b = (rng.uniform(1, 2, count) * 2.0 ** rng.integers(-20, 20, count)).astype(F32)
    a = (rng.uniform(1, 2, count) * 2.0 ** rng.integers(-20, 20, count) * rng.choice([-1, 1], count))
    q = rng.integers(1 << 23, 1 << 24, count).astype(np.float64) + 0.5
    tie = (b.astype(np.float64) * q * 2.0 ** -rng.integers(0, 24, count))
    a = np.where(rng.random(count) < 0.5, tie, a).astype(F32)
    a[:10] = np.arange(1, 50, 5)[:10].astype(F32)  # small integer counts as numerators too
    want = a / b
    dut = _DivHarness()
    got = []

    async def tb(ctx):
        for i in range(count + DIV_STAGES):
            if i < count:
                ctx.set(dut.a, f32_bits(a[i]))
                ctx.set(dut.b, f32_bits(b[i]))
            await ctx.tick()
            if i >= DIV_STAGES - 1 and len(got) < count:
                bits = np.array([ctx.get(dut.result)], dtype=np.uint32).view(F32)[0]
                got.append(F32(0) if ctx.get(dut.zero) else bits)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    got = np.array(got, dtype=F32)
    bad = np.flatnonzero(got != want)
    assert not bad.size, (f"seed=77: first mismatch at {bad[0]}: {a[bad[0]]!r} / {b[bad[0]]!r}: "
                          f"expected {want[bad[0]]!r}, got {got[bad[0]]!r} ({bad.size} differ)")
