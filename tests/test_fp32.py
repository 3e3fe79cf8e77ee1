"""rtl/fp32.py's shared float datapath: ``_fma`` in both depths against the exactly rounded float32 fma."""

import numpy as np
import pytest
from amaranth.hdl import Cat, Module, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from jacquard.rtl.fp32 import FMA_DEEP_STAGES, FMA_STAGES, _decode, _fma, _Pipe
from jacquard.sim.golden_numerics import _fma_f32

F32 = np.float32


class _FmaHarness(wiring.Component):
    """One ``_fma``: ``RNE24(n * mul + add)`` as float32 bits (``zero`` separate)."""

    n: In(signed(8))
    mul: In(32)
    add: In(32)
    result: Out(32)
    zero: Out(1)

    def __init__(self, deep: bool):
        self._deep = deep
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        mul, _, _ = _decode(m, self.mul, "mul")
        add, _, _ = _decode(m, self.add, "add")
        r = _fma(_Pipe(m, 1), self.n, mul, add, "h", deep=self._deep)
        m.d.comb += [self.result.eq(Cat(r.mant[:23], (r.elsb + 23 + 127)[:8], r.sign)),
                     self.zero.eq(r.zero)]
        return m


def operands(rng: np.random.Generator, count: int):
    """int8 ``n`` (all of -128..127 included), multipliers and addends in [2^-64, 2^64): exponent
    gaps from 0 to beyond 31 bits, cancellation, and exact ties of ``n * mul`` decided by a far addend."""
    n = rng.integers(-128, 128, size=count).astype(np.int8)
    n[:256] = np.arange(-128, 128)
    mul = (rng.uniform(1, 2, count) * 2.0 ** rng.integers(-20, 21, count)).astype(F32)
    # Mantissas with every bit set or only the hidden bit: the product's carries and its lowest terms.
    edge = np.where(np.arange(64) % 2 == 0, F32(2.0 - 2.0**-23), F32(1.0))
    mul[:64] = edge * F32(2.0) ** rng.integers(-8, 8, 64)
    gap = rng.integers(-45, 46, count)
    add = (np.abs(n.astype(np.float64)) * mul * 2.0 ** gap * rng.choice([-1, 1], count)).astype(F32)
    cancel = rng.random(count) < 0.25
    add = np.where(cancel, -(n.astype(F32) * mul), add).astype(F32)
    # The rounding's carry out: n * mul has an all-ones significand, and an addend of its sign
    # between a quarter and one and a half units in the last place rounds it up to a power of two.
    c = slice(256, 320)
    n[c] = rng.choice([-4, -2, -1, 1, 2, 4], 64)
    mul[c] = F32(2.0 - 2.0**-23) * F32(2.0) ** rng.integers(-8, 8, 64) * rng.choice([F32(-1), F32(1)], 64)
    ulp = np.abs(n[c].astype(np.float64) * mul[c]) * 2.0**-23
    add[c] = (np.sign(n[c] * mul[c]) * ulp * rng.uniform(0.25, 1.5, 64)).astype(F32)
    tn = rng.integers(-128, 128, size=20 * count)
    tm = rng.integers(1 << 23, 1 << 24, size=20 * count)
    prod = np.abs(tn) * tm
    drop = np.maximum(np.floor(np.log2(np.maximum(prod, 1))).astype(np.int64) + 1 - 24, 0)
    tie = (drop >= 1) & ((prod & ((1 << drop) - 1)) == (1 << np.maximum(drop - 1, 0)))
    tn, tm = tn[tie][:count // 4], tm[tie][:count // 4]
    k = len(tn)
    lo = count - k  # the ties go last, after the full range of n
    n[lo:] = tn
    mul[lo:] = (tm * 2.0 ** (rng.integers(-20, 0, k) - 23)).astype(F32)
    far = np.abs(tn * mul[lo:].astype(np.float64)) * 2.0 ** -rng.integers(32, 46, k) * rng.choice([-1, 1], k)
    add[lo:] = far.astype(F32)
    add = np.where((add == 0) | (np.abs(add) < 2.0**-64), F32(0), add).astype(F32)
    return n, mul, add


def fma_results(deep: bool, n: np.ndarray, mul: np.ndarray, add: np.ndarray) -> np.ndarray:
    """``_fma`` (``deep`` or not) of each operand triple, one a cycle through the pipeline."""
    stages = FMA_DEEP_STAGES if deep else FMA_STAGES
    dut = _FmaHarness(deep)
    got = []

    async def tb(ctx):
        for i in range(len(n) + stages):
            if i < len(n):
                ctx.set(dut.n, int(n[i]))
                ctx.set(dut.mul, int(mul[i:i + 1].view(np.uint32)[0]))
                ctx.set(dut.add, int(add[i:i + 1].view(np.uint32)[0]))
            await ctx.tick()
            # The result of the operands set before tick i is there after tick i + stages - 1.
            if i >= stages - 1 and len(got) < len(n):
                bits = np.array([ctx.get(dut.result)], dtype=np.uint32).view(F32)[0]
                got.append(F32(0) if ctx.get(dut.zero) else bits)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    return np.array(got, dtype=F32)


@pytest.mark.parametrize(("deep", "seed"), [(False, 5), (True, 6), (True, 7)])
def test_fma_exact(deep, seed):
    rng = np.random.default_rng(seed)
    n, mul, add = operands(rng, 600)
    want = _fma_f32(n.astype(F32), mul, add)
    got = fma_results(deep, n, mul, add)
    bad = np.flatnonzero(got.view(np.uint32) != want.astype(F32).view(np.uint32))
    assert not bad.size, (f"seed={seed} deep={deep}: first mismatch at {bad[0]}: fma({n[bad[0]]}, "
                          f"{mul[bad[0]]!r}, {add[bad[0]]!r}) expected {want[bad[0]]!r}, got {got[bad[0]]!r} "
                          f"({bad.size} bad)")
