"""cocotb 2.x system bench for JacquardCore: AxiRam as device memory, AxiLiteMaster as the host.

The pytest side (``tests/test_core*.py``) writes a case file (JSON, path in the ``case``
parameter): the memory image (``.npy``), and a list of runs. For each run the bench optionally
loads an image, sets the window, the program pointer and IRQ_ENABLE, clears the counters, writes
``CTRL.start``, optionally writes ``CTRL.abort``/``CTRL.soft_reset`` after some cycles, polls
``STATUS`` until ``busy`` drops, then records the registers, the ``irq`` pin and the counters in
``<case>.result.json`` and the whole memory in ``<case>.mem<k>.npy``. All comparisons with the
golden executor are made by the pytest side, which prints the seed and the first mismatch.

The RAM gets random back-pressure on all five AXI channels (pause generators seeded from the case).
"""

import json
import logging
import random
import time

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from jacquard.sim.cocotb_run import params
from jacquard.sim.isa_regs import PERF_COUNTERS, register


def _reg(name: str) -> int:
    return register(name).offset


class TB:
    """Clock, reset, the RAM with seeded pauses and the AXI4-Lite host."""

    def __init__(self, dut, case: dict):
        self.dut = dut
        self.rng = random.Random(case["seed"])
        Clock(dut.clk, 10, unit="ns").start()
        self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst, size=case["ram_size"])
        for half in (self.ram.read_if, self.ram.write_if):
            half.log.setLevel(logging.WARNING)
        pause = case.get("pause", 0.0)
        if pause:
            for ch in (self.ram.read_if.ar_channel, self.ram.read_if.r_channel, self.ram.write_if.aw_channel,
                       self.ram.write_if.w_channel, self.ram.write_if.b_channel):
                ch.set_pause_generator(self._pauses(pause, self.rng.randrange(1 << 30)))
        self.host = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil_"), dut.clk, dut.rst)
        self.host.write_if.log.setLevel(logging.WARNING)
        self.host.read_if.log.setLevel(logging.WARNING)

    @staticmethod
    def _pauses(p, seed):
        rng = random.Random(seed)
        while True:
            yield rng.random() < p

    async def reset(self):
        self.dut.rst.value = 1
        await ClockCycles(self.dut.clk, 3)
        self.dut.rst.value = 0
        await RisingEdge(self.dut.clk)

    async def write(self, name: str, value: int):
        await self.host.write_dword(_reg(name), value)

    async def read(self, name: str) -> int:
        return await self.host.read_dword(_reg(name))

    async def counters(self) -> dict:
        out = {}
        for name, _ in PERF_COUNTERS:
            lo = await self.read(f"{name}_LO")
            hi = await self.read(f"{name}_HI")
            out[name] = lo | hi << 32
        return out


def _dump_state(dut):
    """Log the sequencer's state and the stream handshakes, to tell where a hung run waits."""
    for name in ("datapath_idle", "can_grow"):
        for scope in (dut, dut.sequencer):
            handle = getattr(scope, name, None)
            if handle is not None:
                dut._log.warning("%s = %s", name, handle.value)
    for path in ("sequencer", "reader", "writer", "line_buffer", "pe_array", "postproc", "packer", "route"):
        sub = getattr(dut, path, None)
        if sub is None:
            continue
        for handle in sub:
            name = handle._name
            if any(key in name for key in ("state", "valid", "ready", "busy", "words_left", "level")):
                try:
                    dut._log.warning("%s.%s = %s", path, name, handle.value)
                except (AttributeError, TypeError, ValueError):  # arrays and scopes have no value
                    pass


@cocotb.test()
async def run_case(dut):
    p = params()
    with open(p["case"]) as f:
        case = json.load(f)
    tb = TB(dut, case)
    await tb.reset()
    ctrl = register("CTRL")
    results = {"ids": {}, "runs": []}
    for name in ("ID", "VERSION", "CONFIG0", "CONFIG1", "CONFIG_LINE_BUFFER", "CONFIG_WEIGHT_BUFFER",
                 "CONFIG_HASH", "CLOCK_KHZ", "ERROR_FIELD", "STATUS"):
        results["ids"][name] = await tb.read(name)
    for k, run in enumerate(case["runs"]):
        if "image" in run:
            tb.ram.write(0, np.load(run["image"]).tobytes())
        for name in ("WINDOW_BASE", "WINDOW_LIMIT", "PROG_BASE", "PROG_LEN", "IRQ_ENABLE"):
            if name.lower() in run:
                await tb.write(name, run[name.lower()])
        await tb.write("CTRL", ctrl.pack(clear_counters=1))
        t0 = time.monotonic()
        await tb.write("CTRL", ctrl.pack(start=1))
        cycles = 0
        if "interrupt_after" in run:
            await ClockCycles(dut.clk, run["interrupt_after"])
            cycles += run["interrupt_after"]
            await tb.write("CTRL", ctrl.pack(**{run["interrupt"]: 1}))
        status = await tb.read("STATUS")
        while status & 1:
            if cycles > run.get("timeout", 2_000_000):
                _dump_state(dut)
                raise AssertionError(f"run {k}: core still busy after {cycles} cycles, STATUS={status:#x}")
            await ClockCycles(dut.clk, 200)
            cycles += 200
            status = await tb.read("STATUS")
        wall = time.monotonic() - t0
        rec = {"status": status}
        for name in ("ERROR_FIELD", "ERROR_ADDR", "IRQ_STATUS", "CURRENT_DESC", "IRQ_ENABLE", "WINDOW_BASE",
                     "WINDOW_LIMIT", "PROG_BASE", "PROG_LEN"):
            rec[name.lower()] = await tb.read(name)
        rec["irq"] = int(dut.irq.value)
        rec["counters"] = await tb.counters()
        rec["wall_s"] = wall
        mem = np.frombuffer(tb.ram.read(0, case["ram_size"]), dtype=np.uint8)
        np.save(f"{p['case']}.mem{k}.npy", mem)
        if rec["irq_status"]:
            await tb.write("IRQ_STATUS", rec["irq_status"])
            await ClockCycles(dut.clk, 2)
            rec["irq_after_clear"] = int(dut.irq.value)
        results["runs"].append(rec)
    with open(f"{p['case']}.result.json", "w") as f:
        json.dump(results, f)
