"""cocotb 2.x bench: ``Device("uart:...")`` runs a compiled model on the simulated board over a lossy line.

The DUT is the board SoC built with ``uart=False`` (:class:`jacquard.boards.soc.BridgeSoc`: host
bridge, arbiter, memory and the real JacquardCore; the bridge's byte streams are the ports). The
host side is the runtime's own ``Device`` with the ``uart`` backend; only the serial port is
replaced, by :class:`ByteLine` (seeded byte loss and single-bit corruption in both directions).
The host code runs in a ``cocotb.bridge`` thread.

The line is event driven: it touches the simulation once per clock only while a byte is in
flight either way, and sleeps on an event (host wrote bytes) or on the bridge's ``tx_byte.valid``
rising otherwise. Signals are driven on the falling clock edge and sampled in that time step's
ReadOnly phase, so a handshake is decided from settled values whatever the simulator's event order.
The pytest side (``tests/test_uart_device.py``) writes the program and inputs and compares the
outputs this bench saves with onnxruntime's and the emulator's.
"""

import random
from collections import deque

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.task import bridge, resume
from cocotb.triggers import ClockCycles, Event, FallingEdge, First, ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time

from jacquard.host.device import Device
from jacquard.sim.cocotb_run import params

CLK_NS = 10


class ByteLine:
    """pyserial-shaped byte stream on the SoC's ``rx_byte``/``tx_byte`` streams, with seeded faults.

    ``write`` and ``read`` are called from the host thread; both hop into the simulation with
    ``cocotb.task.resume``. ``timeout`` (set by the link) is in simulated seconds.
    """

    def __init__(self, dut, seed: int, drop: float, corrupt: float, ready_gaps: float = 0.25):
        self.dut = dut
        self.rng = random.Random(seed)
        self.drop, self.corrupt, self.ready_gaps = drop, corrupt, ready_gaps
        self.timeout = 1e-3
        self.to_dut: deque[int] = deque()
        self.received = bytearray()
        self.faults = 0
        self.sent = self.delivered = 0
        self._wake = Event()
        self._got = Event()

    def _fault(self, byte: int) -> int | None:
        r = self.rng.random()
        if r < self.drop:
            self.faults += 1
            return None
        if r < self.drop + self.corrupt:
            self.faults += 1
            return byte ^ (1 << self.rng.randrange(8))
        return byte

    async def run(self):
        dut = self.dut
        pending = None
        dut.rx_byte__valid.value = 0
        dut.tx_byte__ready.value = 0
        while True:
            await FallingEdge(dut.clk)
            if pending is None and self.to_dut:
                pending = self.to_dut.popleft()
            dut.rx_byte__valid.value = int(pending is not None)
            dut.rx_byte__payload.value = 0 if pending is None else pending
            # Random back-pressure towards the bridge's transmitter.
            ready = int(self.rng.random() >= self.ready_gaps)
            dut.tx_byte__ready.value = ready
            await ReadOnly()
            # What holds now is what the next rising edge samples.
            if pending is not None and int(dut.rx_byte__ready.value):
                pending = None
                self.delivered += 1
            tx_valid = int(dut.tx_byte__valid.value)
            if tx_valid and ready:
                self.sent += 1
                byte = self._fault(int(dut.tx_byte__payload.value))
                if byte is not None:
                    self.received.append(byte)
                    self._got.set()
            if pending is None and not self.to_dut and not tx_valid:
                # Nothing in flight: sleep until the host writes or the bridge starts a response.
                self._wake.clear()
                await First(self._wake.wait(), RisingEdge(dut.tx_byte__valid))

    def write(self, data):
        return resume(self._write)(bytes(data))

    async def _write(self, data: bytes) -> int:
        for b in data:
            b = self._fault(b)
            if b is not None:
                self.to_dut.append(b)
        self._wake.set()
        return len(data)

    def read(self, size):
        return resume(self._read)(size)

    async def _read(self, size: int) -> bytes:
        end = round(get_sim_time("ns")) + round(self.timeout * 1e9 / CLK_NS) * CLK_NS
        while len(self.received) < size and get_sim_time("ns") < end:
            self._got.clear()
            await First(self._got.wait(), Timer(end - round(get_sim_time("ns")), unit="ns"))
        out = bytes(self.received[:size])
        del self.received[:size]
        return out

    def reset_input_buffer(self):
        self.received.clear()


@cocotb.test()
async def run_model(dut):
    p = params()
    Clock(dut.clk, CLK_NS, unit="ns").start()
    dut.rst.value = 1
    dut.rx_byte__valid.value = 0
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    line = ByteLine(dut, p["seed"], p["drop"], p["corrupt"])
    cocotb.start_soon(line.run())
    feeds = dict(np.load(p["feeds"]))

    def host():
        with Device("uart:sim", port=line, config=p["config"], timeout=600.0,
                    link_timeout=p["timeout_cycles"] * CLK_NS * 1e-9, retries=12) as dev:
            dev.load(p["program"])
            out = [dev.run(feeds) for _ in range(p["runs"])]
            link = dev.transport.link
            return out, dev.transport.memory_size, link.requests, link.retried

    out, memory, requests, retried = await bridge(host)()
    await ClockCycles(dut.clk, 2)
    np.savez(p["outputs"], **{f"{i}/{k}": v for i, o in enumerate(out) for k, v in o.items()})
    ok, frames_retried = int(dut.frames_ok.value), int(dut.frames_retried.value)
    dropped = int(dut.frames_dropped.value)
    dut._log.info("seed=%d memory=%d faults=%d bytes to dut=%d from dut=%d requests=%d host retries=%d "
                  "frames ok=%d retried=%d dropped=%d sim %.0f us", p["seed"], memory, line.faults,
                  line.delivered, line.sent, requests, retried, ok, frames_retried, dropped,
                  get_sim_time("us"))
    assert memory == p["memory_bytes"], f"probed memory {memory}, the SoC has {p['memory_bytes']}"
    # Every request the host made was executed exactly once: a retry of an executed request is
    # answered from the bridge's cache (frames_retried) and is not counted in frames_ok.
    assert requests < 1 << 16, f"{requests} requests overflow the bridge's 16-bit frames_ok counter"
    assert ok == requests, f"seed={p['seed']}: {ok} requests executed, the host made {requests}"
    if p["drop"] + p["corrupt"] > 0:
        assert line.faults > 0 and retried > 0, f"seed={p['seed']}: no fault was injected"
    else:
        assert retried == 0 and dropped == 0 and frames_retried == 0, \
            f"a clean line needed retries ({retried}) or dropped frames ({dropped}): a handshake is wrong"
