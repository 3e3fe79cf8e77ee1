"""The host bridge end to end in amaranth.sim: the host's UartLink drives a BridgeSoc over a simulated
serial line at bit level (divisor 4), with seeded byte loss and corruption in both directions.
"""

import random
import struct
from collections import deque

import pytest
from amaranth.sim import Simulator

from jacquard.boards.soc import BridgeSoc
from jacquard.host import uart_link
from jacquard.host.errors import DeviceError, DeviceTimeout
from jacquard.host.uart_link import UartLink, request_frame, verify_device
from jacquard.sim.isa import CONFIGS
from jacquard.sim.isa_regs import CORE_ID, register

DIVISOR = 4
MEM = 4096
MAX_WORDS = 8
# Simulated seconds at 1 MHz: longer than the longest request plus its response (~3.2k cycles).
LINK_TIMEOUT = 0.005


class SimLine:
    """The byte stream for :class:`jacquard.host.uart_link.UartLink`.

    Parameters
    ----------
    dut : BridgeSoc
    divisor : int
        UART bit period in cycles (the DUT's).
    seed : int
        Seeds the fault injection.
    drop, corrupt : float
        Probability that a byte (either direction) is lost, or has one bit flipped.
    clock_hz : float
        The simulated clock; the link's timeout is in seconds of this time.
    """

    def __init__(self, dut, divisor: int, seed: int, *, drop: float = 0.0, corrupt: float = 0.0,
                 clock_hz: float = 1e6, vcd: str | None = None) -> None:
        self.dut = dut
        self.divisor = divisor
        self.rng = random.Random(seed)
        self.drop, self.corrupt = drop, corrupt
        self.period = 1 / clock_hz
        self.timeout: float | None = 1.0
        self.levels: deque[int] = deque()
        self.received = bytearray()
        self.cycles = 0
        self.faults = 0
        self.sim = Simulator(dut)
        self.sim.add_clock(self.period)
        self.sim.add_testbench(self._line, background=True)
        self._time = 0.0
        self._peek: list = []
        self._peeked: list = []

    def peek(self, *signals) -> list[int]:
        """The values of ``signals`` now (read by the line's testbench on its next cycle)."""
        self._peek = list(signals)
        self.run_cycles(2)
        return self._peeked

    def _fault(self, byte: int) -> int | None:
        r = self.rng.random()
        if r < self.drop:
            self.faults += 1
            return None
        if r < self.drop + self.corrupt:
            self.faults += 1
            return byte ^ (1 << self.rng.randrange(8))
        return byte

    def write(self, data: bytes) -> int:
        for b in data:
            b = self._fault(b)
            if b is None:
                # A lost byte still leaves the line idle for its duration.
                self.levels.extend([1] * (10 * self.divisor))
                continue
            for bit in [0, *((b >> k) & 1 for k in range(8)), 1]:
                self.levels.extend([bit] * self.divisor)
        return len(data)

    def read(self, size: int) -> bytes:
        deadline = self.cycles + round(self.timeout / self.period)
        while len(self.received) < size and self.cycles < deadline:
            self._time += 64 * self.period
            self.sim.run_until(self._time)
        out = bytes(self.received[:size])
        del self.received[:size]
        return out

    def reset_input_buffer(self) -> None:
        self.received.clear()

    def run_cycles(self, n: int) -> None:
        self._time += n * self.period
        self.sim.run_until(self._time)

    async def _line(self, ctx):
        d = self.divisor
        wait, bits, shreg, busy = 0, 0, 0, False
        while True:
            ctx.set(self.dut.rx, self.levels.popleft() if self.levels else 1)
            await ctx.tick()
            self.cycles += 1
            if self._peek:
                self._peeked = [ctx.get(s) for s in self._peek]
                self._peek = []
            tx = ctx.get(self.dut.tx)
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
                if tx:
                    b = self._fault(shreg)
                    if b is not None:
                        self.received.append(b)


def make(seed=1, drop=0.0, corrupt=0.0, retries=8, config="sim-small"):
    dut = BridgeSoc(CONFIGS[config], memory_bytes=MEM, divisor=DIVISOR, timeout=200, max_words=MAX_WORDS,
                    core=False,
                    heartbeat_bit=8)
    line = SimLine(dut, DIVISOR, seed, drop=drop, corrupt=corrupt)
    line.run_cycles(8)
    link = UartLink(line, timeout=LINK_TIMEOUT, retries=retries, name="sim", seed=seed)
    return dut, line, link


def counters(line):
    names = ("frames_ok", "frames_retried", "frames_dropped")
    return dict(zip(names, line.peek(*(getattr(line.dut, n) for n in names)), strict=True))


def test_clean_link_registers_and_memory():
    _, line, link = make()
    assert link.ping() == (1, MAX_WORDS)
    assert link.read_reg(register("ID").offset) == CORE_ID
    verify_device(link, CONFIGS["sim-small"], name="sim")
    rng = random.Random(3)
    data = bytes(rng.randrange(256) for _ in range(70))
    link.write_mem(0x100, data)
    assert link.read_mem(0x100, 70) == data
    # Unaligned ends are merged with what is there.
    link.write_mem(0x103, b"\xAA\xBB")
    want = bytearray(data)
    want[3:5] = b"\xAA\xBB"
    assert link.read_mem(0x100, 70) == bytes(want)
    # An RW register keeps what the host writes (masked to its fields).
    link.write_reg(register("PROG_BASE").offset, 0x1234_5678)
    assert link.read_reg(register("PROG_BASE").offset) == 0x1234_5678
    assert link.retried == 0
    assert counters(line)["frames_ok"] == link.requests


def test_device_with_another_config_is_refused():
    _, _, link = make(config="icebreaker")
    with pytest.raises(DeviceError,
                       match=r"built for config 'icebreaker'.*targets 'sim-small'.*--config icebreaker"):
        verify_device(link, CONFIGS["sim-small"], name="sim")


def test_bus_error_is_reported():
    _, _, link = make()
    with pytest.raises(DeviceError, match="bus error at 0x00001000"):
        link.read_mem(MEM, 4)
    # The link and bridge carry on.
    link.write_mem(0, b"\x01\x02\x03\x04")
    assert link.read_mem(0, 4) == b"\x01\x02\x03\x04"


@pytest.mark.parametrize("seed", [12, pytest.param(11, marks=pytest.mark.slow),
                                  pytest.param(13, marks=pytest.mark.slow)])
def test_lossy_line_applies_every_write_once_and_no_wrong_write(seed):
    _, line, link = make(seed=seed, drop=0.005, corrupt=0.005, retries=12)
    rng = random.Random(seed)
    shadow = bytearray(256)  # words written at random places, then read back over a clean line
    link.write_mem(0, bytes(shadow))
    for _ in range(8):
        addr = 4 * rng.randrange(len(shadow) // 4 - MAX_WORDS)
        n = 4 * rng.randint(1, MAX_WORDS)
        chunk = bytes(rng.randrange(256) for _ in range(n))
        link.write_mem(addr, chunk)
        shadow[addr:addr + n] = chunk
    line.drop = line.corrupt = 0.0
    got = link.read_mem(0, len(shadow))
    bad = next((i for i in range(len(got)) if got[i] != shadow[i]), None)
    assert bad is None, f"seed={seed}: byte {bad}: expected {shadow[bad]:#04x}, got {got[bad]:#04x}"
    c = counters(line)
    print(f"seed={seed}: faults={line.faults} retried={link.retried} counters={c}")
    assert line.faults > 0 and link.retried > 0, "the line injected no fault: the test checks nothing"
    # Each request was executed exactly once: retries of applied requests came from the cache.
    assert c["frames_ok"] == link.requests, (c, link.requests)
    assert c["frames_dropped"] > 0


def test_dead_line_times_out_with_a_clear_error():
    _, _, link = make(drop=1.0, retries=3)
    with pytest.raises(DeviceTimeout, match=r"no valid response after 3 tries.*plugged in"):
        link.read_reg(0)


def test_bad_frames_are_dropped_and_a_stalled_frame_times_out():
    _, line, link = make()
    good = request_frame(7, uart_link.CMD_WRITE, 0x40, 1, struct.pack("<I", 0xDEADBEEF))
    bad_crc = good[:-1] + bytes([good[-1] ^ 1])
    too_long = request_frame(8, uart_link.CMD_READ, 0, MAX_WORDS + 1)
    zero = request_frame(9, uart_link.CMD_READ, 0, 0)
    for frame in (bad_crc, too_long, zero, good[:6]):
        line.write(frame)
        line.run_cycles(len(frame) * 10 * DIVISOR + 400)  # past the inter-byte timeout
    assert line.received == b""
    assert counters(line) == {"frames_ok": 0, "frames_retried": 0, "frames_dropped": 4}
    assert link.read_mem(0x40, 4) == b"\0\0\0\0", "a dropped write was applied"
    # An unknown command with a good CRC gets a clear error, not silence.
    with pytest.raises(DeviceError, match="does not know command 9"):
        link._transact(9, 0, 1)


def test_retry_of_an_applied_request_is_answered_from_the_cache():
    _, line, _link = make()
    frame = request_frame(42, uart_link.CMD_WRITE, 0x80, 2, struct.pack("<2I", 1, 2))
    line.write(frame)
    line.run_cycles(len(frame) * 10 * DIVISOR + 600)
    first = bytes(line.received)
    line.reset_input_buffer()        # the host lost this response, so it sends the request again
    line.write(frame)
    line.run_cycles(len(frame) * 10 * DIVISOR + 600)
    assert first[:4] == bytes([uart_link.RESP_SYNC, 42, uart_link.CMD_WRITE, 0]) and len(first) == 6
    assert bytes(line.received) == first
    assert counters(line) == {"frames_ok": 1, "frames_retried": 1, "frames_dropped": 0}
    # Same seq but another request (another CRC) is executed, not answered from the cache.
    line.reset_input_buffer()
    line.write(request_frame(42, uart_link.CMD_READ, 0x80, 2))
    line.run_cycles(40 * 10 * DIVISOR)
    assert line.received[4:12] == struct.pack("<2I", 1, 2)
    assert counters(line)["frames_ok"] == 2
