"""cocotb 2.x bench: the host's UartLink drives BridgeSoc's UART pins at bit level over a lossy line.

The link is blocking host code; it runs in a ``cocotb.bridge`` thread and its byte stream
(:class:`CocotbLine`) hands bytes to and from the simulation through ``cocotb.resume``. Time on
the link (its timeout) is simulated time. Seeded byte loss and single-bit corruption hit both
directions. Checks: every write lands exactly once (frames_ok == requests) and memory read back
over a clean line equals the host's shadow copy.
"""

import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import ClockCycles, RisingEdge

from jacquard.host.uart_link import UartLink, verify_device
from jacquard.sim.cocotb_run import params
from jacquard.sim.isa import CONFIGS

CLK_NS = 10


class CocotbLine:
    """pyserial-shaped byte stream over the DUT's rx/tx pins (see the module docstring)."""

    def __init__(self, dut, divisor: int, seed: int, drop: float, corrupt: float):
        self.dut, self.divisor = dut, divisor
        self.rng = random.Random(seed)
        self.drop, self.corrupt = drop, corrupt
        self.timeout = 1e-3
        self.levels: deque[int] = deque()
        self.received = bytearray()
        self.faults = 0

    def _fault(self, byte):
        r = self.rng.random()
        if r < self.drop:
            self.faults += 1
            return None
        if r < self.drop + self.corrupt:
            self.faults += 1
            return byte ^ (1 << self.rng.randrange(8))
        return byte

    async def run(self):
        dut, d = self.dut, self.divisor
        wait, bits, shreg, busy = 0, 0, 0, False
        while True:
            dut.rx.value = self.levels.popleft() if self.levels else 1
            await RisingEdge(dut.clk)
            tx = int(dut.tx.value)
            if not busy:
                if not tx:
                    busy, wait, bits, shreg = True, d + d // 2 - 1, 0, 0
                continue
            if wait:
                wait -= 1
                continue
            if bits < 8:
                shreg |= tx << bits
                bits += 1
                wait = d - 1
            else:
                busy = False
                b = self._fault(shreg) if tx else None
                if b is not None:
                    self.received.append(b)

    def write(self, data):
        for b in data:
            b = self._fault(b)
            if b is None:
                self.levels.extend([1] * (10 * self.divisor))
            else:
                for bit in [0, *((b >> k) & 1 for k in range(8)), 1]:
                    self.levels.extend([bit] * self.divisor)
        return len(data)

    def read(self, size):
        return resume(self._read)(size)

    async def _read(self, size):
        cycles = round(self.timeout * 1e9 / CLK_NS)
        while len(self.received) < size and cycles > 0:
            await ClockCycles(self.dut.clk, 32)
            cycles -= 32
        out = bytes(self.received[:size])
        del self.received[:size]
        return out

    def reset_input_buffer(self):
        self.received.clear()


@cocotb.test()
async def lossy_line(dut):
    p = params()
    seed, ops, divisor = p["seed"], p["ops"], p["divisor"]
    Clock(dut.clk, CLK_NS, unit="ns").start()
    dut.rst.value = 1
    dut.rx.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    line = CocotbLine(dut, divisor, seed, p["drop"], p["corrupt"])
    cocotb.start_soon(line.run())
    rng = random.Random(seed)
    shadow = bytearray(p["region"])
    # Link timeout in simulated seconds: the longest request plus its response, with margin.
    link = UartLink(line, timeout=p["timeout_cycles"] * CLK_NS * 1e-9, retries=12, name="cocotb", seed=seed)

    def host():
        verify_device(link, CONFIGS["sim-small"], name="cocotb")
        link.write_mem(0, bytes(shadow))
        for _ in range(ops):
            n = 4 * rng.randint(1, 8)
            addr = 4 * rng.randrange((len(shadow) - n) // 4)
            chunk = bytes(rng.randrange(256) for _ in range(n))
            link.write_mem(addr, chunk)
            shadow[addr:addr + n] = chunk
        line.drop = line.corrupt = 0.0
        return link.read_mem(0, len(shadow))

    got = await bridge(host)()
    bad = next((i for i in range(len(got)) if got[i] != shadow[i]), None)
    assert bad is None, f"seed={seed}: byte {bad}: expected {shadow[bad]:#04x}, got {got[bad]:#04x}"
    await ClockCycles(dut.clk, 2)
    ok, retried = int(dut.frames_ok.value), int(dut.frames_retried.value)
    dropped = int(dut.frames_dropped.value)
    dut._log.info("seed=%d faults=%d link retries=%d frames ok=%d retried=%d dropped=%d",
                  seed, line.faults, link.retried, ok, retried, dropped)
    assert ok == link.requests, f"seed={seed}: {ok} requests executed, the host sent {link.requests}"
    if p["drop"] + p["corrupt"] > 0:
        assert line.faults > 0 and link.retried > 0, f"seed={seed}: no fault injected; raise ops"
