"""cocotb 2.x bench for Pool: window taps with random gaps; max (int8) or sum (int32) beats checked.

The pytest side writes the taps, the mode and the expected beats (from golden) to an ``.npz``.
"""

import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from jacquard.sim.cocotb_run import params


def lanes(word: int, bits: int, count: int) -> list[int]:
    out = []
    for k in range(count):
        v = (word >> (bits * k)) & ((1 << bits) - 1)
        out.append(v - (1 << bits) if v >> (bits - 1) else v)
    return out


@cocotb.test()
async def pool_windows(dut):
    p = params()
    seed, c_par, gap = p["seed"], p["c_par"], p["gap"]
    case = np.load(p["case"])
    rng = random.Random(seed)
    Clock(dut.clk, 10, unit="ns").start()
    mode = int(case["mode"])
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    dut.o_sum__ready.value = 0
    dut.mode.value = mode
    dut.taps.value = int(case["per_window"])
    dut.clear.value = 0
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    assert dut.error.value == 0

    taps, first, last = case["taps"], case["first"], case["last"]

    async def send():
        for t, f, la in zip(taps, first, last, strict=True):
            while rng.random() < gap:
                dut.i__valid.value = 0
                await RisingEdge(dut.clk)
            word = sum((int(v) & 0xFF) << (8 * k) for k, v in enumerate(t))
            dut.i__payload.value = word | (int(f) << (8 * c_par)) | (int(la) << (8 * c_par + 1))
            dut.i__valid.value = 1
            await RisingEdge(dut.clk)
            while dut.i__ready.value != 1:
                await RisingEdge(dut.clk)
            dut.i__valid.value = 0

    valid, ready, payload, bits = ((dut.o__valid, dut.o__ready, dut.o__payload, 8) if mode == 0 else
                                   (dut.o_sum__valid, dut.o_sum__ready, dut.o_sum__payload, 32))
    want = case["want"]
    cocotb.start_soon(send())
    got, held = [], None
    out_rng = random.Random(seed + 1)
    while len(got) < len(want):
        r = out_rng.random() >= gap
        ready.value = int(r)
        await RisingEdge(dut.clk)
        v = valid.value == 1
        word = int(payload.value) if v else None
        if held is not None:
            assert v and word == held, "output beat withdrawn or changed while stalled"
        if v and r:
            got.append(lanes(word, bits, c_par))
        held = word if (v and not r) else None
    got = np.array(got, dtype=np.int64)
    bad = np.argwhere(got != want)
    if bad.size:
        i, k = bad[0]
        raise AssertionError(f"seed={seed} {p['desc']}: first mismatch at window {i} lane {k}: "
                             f"expected {want[i, k]}, got {got[i, k]}")
