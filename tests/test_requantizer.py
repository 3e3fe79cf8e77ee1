"""Exact requantizer: the bit-level model against float32 on millions of pairs, the RTL against both.

The NumPy model (:mod:`jacquard.rtl.fp32`) mirrors the RTL stage for stage, so the millions of
pairs it is checked on here carry over to the RTL, which is itself checked against the model and
the golden ``requantize`` on thousands of vectors in amaranth.sim (and more under cocotb).
"""

import random

import numpy as np
import pytest
from amaranth.sim import Simulator

from jacquard.rtl.fp32 import requant_vectors, requantize_f32, requantize_model
from jacquard.rtl.requantizer import Requantizer
from jacquard.sim import golden
from jacquard.sim.streams import stream_monitor, stream_recv, stream_send

# (zero point, lo, hi): plain int8, ReLU (lo = zy), ReLU6-like, extreme zero points.
CLAMPS = [(0, -128, 127), (-128, -128, 127), (127, -128, 127), (5, 5, 127), (-3, -100, 20), (-7, -7, -7)]


def golden_requantize(acc, mbits, zy, lo, hi):
    """The golden model's ``requantize``, one channel per element (multipliers as bit patterns)."""
    m = np.asarray(mbits, dtype=np.int64).astype(np.uint32).view(np.float32)
    acc32 = np.asarray(acc, dtype=np.int64).astype(np.int32).reshape(1, -1)
    with np.errstate(over="ignore"):
        y = golden.requantize(acc32, m, zy, lo, hi)
    return np.asarray(y).astype(np.int64).reshape(-1)


def first_mismatch(want, got, acc, mbits, seed, what):
    bad = np.nonzero(np.asarray(want) != np.asarray(got))[0]
    if len(bad) == 0:
        return ""
    i = int(bad[0])
    return (f"{what}, seed={seed}: {len(bad)} mismatches; first at index {i}: acc={int(acc[i])} "
            f"M=0x{int(mbits[i]):08x}: expected {int(want[i])}, got {int(got[i])}")


@pytest.mark.parametrize("seed", [1, 2])
def test_model_matches_float32(seed):
    rng = np.random.default_rng(seed)
    acc, mbits = requant_vectors(rng, 1_000_000)
    # The double rounding (product to float32, then to integer) must actually be exercised.
    a = acc.astype(np.int32).astype(np.float32)
    m = mbits.astype(np.uint32).view(np.float32)
    with np.errstate(over="ignore"):
        exact = np.rint(a.astype(np.float64) * m.astype(np.float64))
        assert np.count_nonzero(exact != np.rint(a * m)) > 10_000
    for zy, lo, hi in CLAMPS:
        y, invalid = requantize_model(acc, mbits, zy, lo, hi)
        assert not invalid.any()
        want = requantize_f32(acc, mbits, zy, lo, hi)
        assert not (msg := first_mismatch(want, y, acc, mbits, seed, f"model vs float32 {zy, lo, hi}")), msg


def test_model_matches_golden():
    rng = np.random.default_rng(11)
    acc, mbits = requant_vectors(rng, 200_000)
    # The golden model takes only M > 0 (what the compiler produces): drop the sign and zeros.
    mbits = mbits & 0x7FFF_FFFF
    keep = mbits != 0
    acc, mbits = acc[keep], mbits[keep]
    for zy, lo, hi in CLAMPS[:3]:
        y, _ = requantize_model(acc, mbits, zy, lo, hi)
        want = golden_requantize(acc, mbits, zy, lo, hi)
        assert not (msg := first_mismatch(want, y, acc, mbits, 11, f"model vs golden {zy, lo, hi}")), msg


def test_model_edge_cases():
    # Hand-picked: exact ties, the first inexact int -> float conversions, INT32_MIN, M = 0,
    # denormal M, M just below 0.5 and 1.0, the largest finite M.
    half, m_max = 0x3F00_0000, 0x7F7F_FFFF
    cases = [
        (1, half, 0), (3, half, 2), (5, half, 2), (-1, half, 0), (-3, half, -2), (-5, half, -2),
        (2**24 + 1, 0x3380_0000, 1),          # f32(2^24 + 1) = 2^24; * 2^-24 = 1
        (2**24 + 3, 0x3300_0000, 1),          # 2^24 + 3 -> 2^24 + 4; * 2^-25 = 0.5 + 2^-23 -> 1
        (-(2**31), 0x3000_0000, -1),          # INT32_MIN * 2^-31
        (12345, 0, 0), (-(2**31), 1, 0), (2**31 - 1, 0x7F_FFFF, 0),
        (1, m_max, 127), (-1, m_max, -128), (0, m_max, 0),
        (3, 0x3EFF_FFFF, 1), (1, 0x3EFF_FFFF, 0), (255, 0x3F80_0000 | (1 << 31), -128),
    ]
    acc = np.array([c[0] for c in cases])
    mbits = np.array([c[1] for c in cases])
    want = np.array([c[2] for c in cases])
    y, _ = requantize_model(acc, mbits, 0, -128, 127)
    assert not (msg := first_mismatch(want, y, acc, mbits, 0, "edge cases vs hand values")), msg
    ref = requantize_f32(acc, mbits, 0, -128, 127)
    assert not (msg := first_mismatch(ref, y, acc, mbits, 0, "edge cases vs float32")), msg


def run_requantizer(acc, mbits, zy, lo, hi, seed, gap=0.3):
    dut = Requantizer()
    beats = [{"acc": int(a), "multiplier": int(mb)} for a, mb in zip(acc, mbits, strict=True)]
    got = []

    async def producer(ctx):
        ctx.set(dut.zero_point, zy)
        ctx.set(dut.lo, lo)
        ctx.set(dut.hi, hi)
        await stream_send(ctx, dut.i, beats, rng=random.Random(seed + 100), gap=gap)

    async def consumer(ctx):
        got.extend(await stream_recv(ctx, dut.o, len(beats), rng=random.Random(seed + 200), gap=gap))

    async def monitor(ctx):
        await stream_monitor(ctx, dut.o, "requantizer.o")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer)
    sim.add_testbench(consumer)
    sim.add_testbench(monitor, background=True)
    sim.run()
    return np.array(got, dtype=np.int64)


@pytest.mark.parametrize(("seed", "clamp"), [(1, CLAMPS[0]), (2, CLAMPS[4]), (3, CLAMPS[3])])
def test_requantizer_rtl_random(seed, clamp):
    rng = np.random.default_rng(seed)
    acc, mbits = requant_vectors(rng, 600)
    zy, lo, hi = clamp
    got = run_requantizer(acc, mbits, zy, lo, hi, seed)
    want = requantize_f32(acc, mbits, zy, lo, hi)
    assert not (msg := first_mismatch(want, got, acc, mbits, seed, "RTL vs float32")), msg
    # Against the golden model where it is defined (M > 0).
    pos = ((mbits >> 31) == 0) & (mbits != 0)
    want = golden_requantize(acc[pos], mbits[pos], zy, lo, hi)
    assert not (msg := first_mismatch(want, got[pos], acc[pos], mbits[pos], seed, "RTL vs golden")), msg


def test_requantizer_rtl_full_rate():
    # No gaps: one result per cycle; covers the back-to-back path.
    rng = np.random.default_rng(9)
    acc, mbits = requant_vectors(rng, 300)
    got = run_requantizer(acc, mbits, 0, -128, 127, 9, gap=0.0)
    want = requantize_f32(acc, mbits, 0, -128, 127)
    assert not (msg := first_mismatch(want, got, acc, mbits, 9, "RTL vs float32, no gaps")), msg


def test_requantizer_refuses_non_finite_multiplier():
    dut = Requantizer()
    # inf, then NaN, surrounded by good beats: outputs 0 for the bad ones and the sticky error.
    mbits = [0x3F00_0000, 0x7F80_0000, 0x3F00_0000, 0x7FC0_0000]
    acc = [7, 7, 7, 7]
    beats = [{"acc": a, "multiplier": mb} for a, mb in zip(acc, mbits, strict=True)]
    seen = {}

    async def tb(ctx):
        ctx.set(dut.lo, -128)
        ctx.set(dut.hi, 127)
        assert ctx.get(dut.error) == 0
        await stream_send(ctx, dut.i, beats[:1])
        seen["good"] = await stream_recv(ctx, dut.o, 1)
        assert ctx.get(dut.error) == 0, "error raised by a finite multiplier"
        await stream_send(ctx, dut.i, beats[1:])
        seen["rest"] = await stream_recv(ctx, dut.o, 3)
        seen["error"] = ctx.get(dut.error)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert seen == {"good": [4], "rest": [0, 4, 0], "error": 1}
