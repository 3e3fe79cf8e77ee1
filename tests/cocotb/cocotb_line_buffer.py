"""cocotb 2.x bench for LineBuffer: one feature map in with random gaps, taps out checked beat by beat.

The case (input beats, packed config, expected taps from ``sim/taps.py``) is made on the pytest
side and handed over as an ``.npz`` file named in the parameters, so the bench has no model of
its own. Optionally a refused config is started first: it must raise ``error`` and leave the unit
idle and usable.
"""

import random

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ReadOnly, RisingEdge

from jacquard.sim.cocotb_run import params


def pack(values, bits: int = 8) -> int:
    """Pack lane values (lane 0 in the low bits) into one integer, two's complement per lane."""
    word = 0
    for k, v in enumerate(values):
        word |= (int(v) & ((1 << bits) - 1)) << (k * bits)
    return word


class TB:
    """Owns the clock, the control pins and the drivers of the pixel and tap streams."""

    def __init__(self, dut, seed: int):
        self.dut = dut
        self.rng = random.Random(seed)
        self.cycle = 0
        self.out_cycles: list[int] = []
        Clock(dut.clk, 10, unit="ns").start()

    async def reset(self):
        dut = self.dut
        dut.rst.value = 1
        for name in ("i__valid", "o__ready", "start"):
            getattr(dut, name).value = 0
        for _ in range(2):
            await RisingEdge(dut.clk)
        dut.rst.value = 0

    async def count(self):
        while True:
            await RisingEdge(self.dut.clk)
            self.cycle += 1

    async def start(self, config: int):
        dut = self.dut
        dut.config.value = config
        dut.start.value = 1
        await RisingEdge(dut.clk)
        dut.start.value = 0

    async def send(self, words, gap):
        dut = self.dut
        for word in words:
            while self.rng.random() < gap:
                dut.i__valid.value = 0
                await RisingEdge(dut.clk)
            dut.i__valid.value = 1
            dut.i__payload.value = word
            await RisingEdge(dut.clk)
            while dut.i__ready.value != 1:
                await RisingEdge(dut.clk)
            dut.i__valid.value = 0

    async def recv(self, count, gap, max_cycles):
        dut = self.dut
        out = []
        held = None
        cycles = 0
        while len(out) < count:
            # The previous start's error is read until this start's edge has passed; setup of a
            # 16-bit width takes at most 18 cycles.
            assert cycles < 20 or dut.error.value == 0, "config refused"
            assert cycles < max_cycles, f"stuck: {len(out)} of {count} taps after {max_cycles} cycles"
            cycles += 1
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
                out.append(word)
                self.out_cycles.append(self.cycle)
            held = word if (valid and not ready) else None
        dut.o__ready.value = 0
        return out


@cocotb.test()
async def feature_map(dut):
    p = params()
    seed, c_par, gap = p["seed"], p["c_par"], p["gap"]
    case = np.load(p["case"])
    tb = TB(dut, seed)
    await tb.reset()
    cocotb.start_soon(tb.count())
    if "bad_config" in p:
        await tb.start(int(p["bad_config"]))
        for _ in range(20):
            await RisingEdge(dut.clk)
        assert dut.error.value == 1, f"seed={seed}: bad config {p['bad_desc']} not refused"
        assert dut.busy.value == 0 and dut.o__valid.value == 0 and dut.i__ready.value == 0
    await tb.start(int(p["config"]))
    words = [pack(b) for b in case["x"].reshape(-1, c_par)]
    taps, first, last = case["taps"], case["first"], case["last"]
    want = [pack(t) | (int(f) << (8 * c_par)) | (int(la) << (8 * c_par + 1))
            for t, f, la in zip(taps, first, last, strict=True)]
    sender = cocotb.start_soon(tb.send(words, gap))
    # Generous: every beat in and out at the given gap, plus setup and fill.
    got = await tb.recv(len(want), gap, int((len(want) + len(words)) / (1 - gap) ** 2) + 1000)
    await sender        # rows below the last window (stride skips) are still consumed
    for _ in range(4):
        await RisingEdge(dut.clk)
    await ReadOnly()
    assert dut.error.value == 0, f"seed={seed}: error raised for {p['desc']}"
    assert dut.busy.value == 0, f"seed={seed}: still busy after the last tap ({p['desc']})"
    assert dut.o__valid.value == 0, f"seed={seed}: extra taps after the last one ({p['desc']})"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g != w:
            raise AssertionError(f"seed={seed} {p['desc']}: first mismatch at tap {i}: "
                                 f"expected {w:#x}, got {g:#x}")
    span = tb.out_cycles[-1] - tb.out_cycles[0]
    rate = (len(want) - 1) / span if span else 1.0
    dut._log.info(f"seed={seed} {p['desc']}: {len(want)} taps in {span + 1} cycles from first to last: "
                  f"{rate:.4f} taps/cycle with gap={gap}")
    if "rate_file" in p:
        with open(p["rate_file"], "w") as f:
            f.write(f"{rate}\n")
