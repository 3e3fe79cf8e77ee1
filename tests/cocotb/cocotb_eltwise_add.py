"""cocotb 2.x bench for EltwiseAdd: two input streams and the output with random gaps, vs golden.add.

The pytest side writes the inputs, the configuration and ``golden.add``'s result to an ``.npz``.
"""

import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from jacquard.sim.cocotb_run import params


def pack8(values) -> int:
    return sum((int(v) & 0xFF) << (8 * k) for k, v in enumerate(values))


class TB:
    """Owns the clock and the drivers of the ``a``, ``b`` and ``o`` streams."""

    def __init__(self, dut, seed: int, c_par: int):
        self.dut = dut
        self.c_par = c_par
        self.rng = random.Random(seed)
        Clock(dut.clk, 10, unit="ns").start()

    async def reset(self, cfg: dict):
        dut = self.dut
        dut.rst.value = 1
        for name in ("a__valid", "b__valid", "o__ready"):
            getattr(dut, name).value = 0
        for name, value in cfg.items():
            getattr(dut, name).value = value
        for _ in range(2):
            await RisingEdge(dut.clk)
        dut.rst.value = 0

    async def send(self, valid, ready, payload, rows, gap, rng):
        for row in rows:
            while rng.random() < gap:
                valid.value = 0
                await RisingEdge(self.dut.clk)
            valid.value = 1
            payload.value = pack8(row)
            await RisingEdge(self.dut.clk)
            while ready.value != 1:
                await RisingEdge(self.dut.clk)
            valid.value = 0

    async def recv(self, count, gap):
        dut = self.dut
        out, held = [], None
        while len(out) < count:
            ready = self.rng.random() >= gap
            dut.o__ready.value = int(ready)
            await RisingEdge(dut.clk)
            valid = dut.o__valid.value == 1
            word = int(dut.o__payload.value) if valid else None
            if held is not None:
                assert valid and word == held, "o: beat withdrawn or changed while stalled"
            if valid and ready:
                out.append([((word >> (8 * k)) & 0xFF) - 256 * ((word >> (8 * k + 7)) & 1)
                            for k in range(self.c_par)])
            held = word if (valid and not ready) else None
        dut.o__ready.value = 0
        return out


@cocotb.test()
async def add_tensors(dut):
    p = params()
    seed, c_par, gap = p["seed"], p["c_par"], p["gap"]
    case = np.load(p["case"])
    cfg = {k: int(case[k]) for k in ("ra", "rb", "k", "lo", "hi")}
    tb = TB(dut, seed, c_par)
    await tb.reset(cfg)
    assert dut.error.value == 0, f"seed={seed}: configuration refused: {cfg}"
    a, b, want = case["a"], case["b"], case["want"]
    cocotb.start_soon(tb.send(dut.a__valid, dut.a__ready, dut.a__payload, a, gap, random.Random(seed + 1)))
    cocotb.start_soon(tb.send(dut.b__valid, dut.b__ready, dut.b__payload, b, gap, random.Random(seed + 2)))
    got = np.array(await tb.recv(len(a), gap), dtype=np.int64)
    bad = np.argwhere(got != want)
    if bad.size:
        i, k = bad[0]
        raise AssertionError(f"seed={seed} {p['desc']}: first mismatch at beat {i} lane {k} "
                             f"(a={a[i, k]}, b={b[i, k]}): expected {want[i, k]}, got {got[i, k]} "
                             f"({len(bad)} differ)")
    dut._log.info(f"seed={seed}: {got.size} values bit-exact with golden.add")
