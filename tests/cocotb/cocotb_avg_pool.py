"""cocotb 2.x bench for AvgPool: window taps with random gaps, int8 averages vs golden.avg_pool.

The pytest side writes the taps, the configuration and the expected beats to an ``.npz``.
"""

import json
import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from jacquard.sim.cocotb_run import params


@cocotb.test()
async def avg_windows(dut):
    p = params()
    seed, c_par, gap = p["seed"], p["c_par"], p["gap"]
    case = np.load(p["case"])
    cfg = json.loads(str(case["cfg"]))
    rng = random.Random(seed)
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    dut.i__valid.value = 0
    dut.o__ready.value = 0
    dut.clear.value = 0
    for name, value in cfg.items():
        getattr(dut, name).value = value & 0xFFFFFFFF if name not in ("zx", "zy") else value & 0xFF
    for _ in range(2):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    assert dut.error.value == 0, f"seed={seed}: configuration refused: {cfg}"

    taps, first, last, want = case["taps"], case["first"], case["last"], case["want"]

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

    cocotb.start_soon(send())
    out_rng = random.Random(seed + 1)
    got, held = [], None
    while len(got) < len(want):
        r = out_rng.random() >= gap
        dut.o__ready.value = int(r)
        await RisingEdge(dut.clk)
        v = dut.o__valid.value == 1
        word = int(dut.o__payload.value) if v else None
        if held is not None:
            assert v and word == held, "o: beat withdrawn or changed while stalled"
        if v and r:
            got.append([((word >> (8 * k)) & 0xFF) - 256 * ((word >> (8 * k + 7)) & 1) for k in range(c_par)])
        held = word if (v and not r) else None
    got = np.array(got, dtype=np.int64)
    bad = np.argwhere(got != want)
    if bad.size:
        i, k = bad[0]
        raise AssertionError(f"seed={seed} {p['desc']}: first mismatch at window {i} lane {k}: "
                             f"expected {want[i, k]}, got {got[i, k]} ({len(bad)} differ)")
