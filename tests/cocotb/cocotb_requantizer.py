"""cocotb 2.x bench for Requantizer: stress vectors at full rate and with random gaps, vs float32.

Vectors come from :func:`jacquard.rtl.fp32.requant_vectors` (ties, near-ties, 2^24 neighbours,
INT32 extremes, zero/denormal/huge/negative multipliers); expected values from NumPy float32
(:func:`requantize_f32`), which the golden model agrees with for M > 0.
"""

import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from jacquard.rtl.fp32 import requant_vectors, requantize_f32
from jacquard.sim.cocotb_run import params


class TB:
    """Owns the clock and the drivers of the requantizer's input and output streams."""

    def __init__(self, dut, seed: int):
        self.dut = dut
        self.rng = random.Random(seed)
        Clock(dut.clk, 10, unit="ns").start()

    async def reset(self, zy: int, lo: int, hi: int):
        dut = self.dut
        dut.rst.value = 1
        dut.i__valid.value = 0
        dut.o__ready.value = 0
        dut.zero_point.value = zy & 0xFF
        dut.lo.value = lo & 0xFF
        dut.hi.value = hi & 0xFF
        for _ in range(2):
            await RisingEdge(dut.clk)
        dut.rst.value = 0

    async def send(self, acc, mbits, gap: float):
        dut = self.dut
        for a, mb in zip(acc, mbits, strict=True):
            while gap and self.rng.random() < gap:
                dut.i__valid.value = 0
                await RisingEdge(dut.clk)
            dut.i__valid.value = 1
            dut.i__payload.value = (int(a) & 0xFFFF_FFFF) | (int(mb) << 32)
            await RisingEdge(dut.clk)
            while dut.i__ready.value != 1:
                await RisingEdge(dut.clk)
        dut.i__valid.value = 0

    async def recv(self, count: int, gap: float):
        dut = self.dut
        out = []
        while len(out) < count:
            ready = not (gap and self.rng.random() < gap)
            dut.o__ready.value = int(ready)
            await RisingEdge(dut.clk)
            if ready and dut.o__valid.value == 1:
                out.append(dut.o__payload.value.to_signed())
        dut.o__ready.value = 0
        return out


@cocotb.test()
async def stress_vectors(dut):
    p = params()
    seed, count, gap = p.get("seed", 1), p.get("count", 1000), p.get("gap", 0.2)
    zy, lo, hi = p.get("clamp", (0, -128, 127))
    rng = np.random.default_rng(seed)
    acc, mbits = requant_vectors(rng, count)
    want = requantize_f32(acc, mbits, zy, lo, hi)
    tb = TB(dut, seed)
    await tb.reset(zy, lo, hi)
    # First half at full rate (back-to-back beats), second half with random gaps on both sides.
    half = count // 2
    cocotb.start_soon(tb.send(acc[:half], mbits[:half], 0.0))
    got = await tb.recv(half, 0.0)
    cocotb.start_soon(tb.send(acc[half:], mbits[half:], gap))
    got += await tb.recv(count - half, gap)
    got = np.array(got)
    bad = np.nonzero(got != want)[0]
    assert len(bad) == 0, (f"seed={seed}: {len(bad)} mismatches; first at {bad[0]}: acc={acc[bad[0]]} "
                           f"M=0x{int(mbits[bad[0]]):08x}: expected {want[bad[0]]}, got {got[bad[0]]}")
    assert dut.error.value == 0
