"""cocotb 2.x bench for PEArray: weight load, tap stream with random gaps, int32 accumulators checked.

The case (taps, weight rows, config, expected accumulators) is made on the pytest side from
``sim/taps.py`` and ``golden.conv2d_acc`` and handed over as an ``.npz`` file named in the
parameters, so the bench itself has no model to get wrong.
"""

import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from jacquard.sim.cocotb_run import params


def pack(values, bits: int) -> int:
    """Pack lane values (lane 0 in the low bits) into one integer, two's complement per lane."""
    word = 0
    for k, v in enumerate(values):
        word |= (int(v) & ((1 << bits) - 1)) << (k * bits)
    return word


def unpack(word: int, bits: int, lanes: int) -> list[int]:
    out = []
    for k in range(lanes):
        v = (word >> (k * bits)) & ((1 << bits) - 1)
        out.append(v - (1 << bits) if v >> (bits - 1) else v)
    return out


class TB:
    """Owns the clock and the drivers of the tap, weight and accumulator streams."""

    def __init__(self, dut, seed: int, c_par: int, oc_par: int):
        self.dut = dut
        self.rng = random.Random(seed)
        self.c_par, self.oc_par = c_par, oc_par
        self.accepted: list[int] = []
        self.cycle = 0
        Clock(dut.clk, 10, unit="ns").start()

    async def reset(self, cfg: dict):
        dut = self.dut
        dut.rst.value = 1
        for name in ("i__valid", "wl__valid", "o__ready", "clear"):
            getattr(dut, name).value = 0
        for name, value in cfg.items():
            getattr(dut, name).value = value
        for _ in range(2):
            await RisingEdge(dut.clk)
        dut.rst.value = 0

    async def count(self):
        dut = self.dut
        while True:
            await RisingEdge(dut.clk)
            self.cycle += 1
            if dut.i__valid.value == 1 and dut.i__ready.value == 1:
                self.accepted.append(self.cycle)

    async def send(self, valid, ready, payload, words, gap):
        dut = self.dut
        for word in words:
            while self.rng.random() < gap:
                valid.value = 0
                await RisingEdge(dut.clk)
            valid.value = 1
            payload.value = word
            await RisingEdge(dut.clk)
            while ready.value != 1:
                await RisingEdge(dut.clk)
            valid.value = 0

    async def recv(self, count, gap):
        dut = self.dut
        out = []
        held = None
        while len(out) < count:
            ready = self.rng.random() >= gap
            dut.o__ready.value = int(ready)
            await RisingEdge(dut.clk)
            valid = dut.o__valid.value == 1
            word = int(dut.o__payload.value) if valid else None
            # Protocol: a beat offered and not taken must be offered again, unchanged.
            if held is not None:
                assert valid, "o: valid dropped before ready"
                assert word == held, "o: payload changed while stalled"
            if valid and ready:
                out.append(unpack(word, 32, self.oc_par))
            held = word if (valid and not ready) else None
        dut.o__ready.value = 0
        return out


@cocotb.test()
async def conv_layer(dut):
    p = params()
    seed, c_par, oc_par, gap = p["seed"], p["c_par"], p["oc_par"], p["gap"]
    case = np.load(p["case"])
    cfg = {k: int(case[k]) for k in ("n_oc_tiles", "depthwise", "w_base")}
    cfg["taps"] = int(case["n_taps"])
    cfg["wl_base"] = cfg["w_base"]
    tb = TB(dut, seed, c_par, oc_par)
    await tb.reset(cfg)
    cocotb.start_soon(tb.count())
    rows = case["rows"]
    words = [pack(r, 8) | (int(j == 0) << (8 * c_par)) for j, r in enumerate(rows)]
    await tb.send(dut.wl__valid, dut.wl__ready, dut.wl__payload, words, gap)
    taps, first, last = case["taps"], case["first"], case["last"]
    words = [pack(t, 8) | (int(f) << (8 * c_par)) | (int(la) << (8 * c_par + 1))
             for t, f, la in zip(taps, first, last, strict=True)]
    want = case["want"]
    cocotb.start_soon(tb.send(dut.i__valid, dut.i__ready, dut.i__payload, words, gap))
    got = await tb.recv(len(want), gap)
    await ReadOnly()
    assert dut.error.value == 0, f"seed={seed}: error raised, code {int(dut.error_code.value)}"
    for i, (g, w) in enumerate(zip(got, want.tolist(), strict=True)):
        if g != w:
            lane = next(k for k in range(oc_par) if g[k] != w[k])
            raise AssertionError(f"seed={seed} {p['desc']}: first mismatch at beat {i} lane {lane}: "
                                 f"expected {w[lane]}, got {g[lane]}")
    span = tb.accepted[-1] - tb.accepted[0] + 1
    dut._log.info(f"seed={seed}: {len(taps)} taps accepted over {span} cycles "
                  f"({100 * len(taps) / span:.1f}% of cycles) with gap={gap}")
    if gap == 0:
        assert span == len(taps), f"seed={seed}: taps not accepted back to back ({span} cycles)"
