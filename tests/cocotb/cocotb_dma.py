"""cocotb 2.x bench for DmaReader + DmaWriter on one AXI4 port, with cocotbext-axi's AxiRam as memory.

The design under test is ``tests/test_dma_cocotb.py``'s ``DmaPair``. The RAM gets random
back-pressure on all five channels (pause generators) and an optional read latency: a burst's
first beat leaves no earlier than ``latency`` cycles after its AR handshake, while later ARs are
accepted meanwhile (a pipelined memory), so outstanding bursts can hide it. Every AR and AW
handshake is recorded and checked against the window and the 4 KiB rule.
"""

import logging
import random
from collections import deque

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from cocotbext.axi import AxiBus, AxiRam

from jacquard.rtl.dma import DmaCommand, check_command
from jacquard.sim.cocotb_run import params
from jacquard.sim.isa import ErrorCode

RAM_SIZE = 1 << 18
BASE, LIMIT = 0x8000, 0x38000  # the window; the RAM outside it holds a pattern that must survive
CMD = DmaCommand(32, 16)


class TB:
    """Owns the clock, the AxiRam (with pauses and latency) and the DUT's stream drivers."""

    def __init__(self, dut, seed: int, *, gap: float = 0.3, latency: int = 0, pause: float = 0.3,
                 error_region: tuple[int, int] = (0, 0)):
        self.dut = dut
        self.seed = seed
        self.rng = random.Random(seed)
        self.gap = gap
        self.latency = latency
        self.nbytes = len(dut.m_axi__wdata) // 8
        self.cycle = 0
        self.bursts = []          # (channel, addr, beats) of every AR/AW handshake
        self.max_outstanding = params().get("max_outstanding", 4)
        self.reads_open = self.writes_open = 0  # bursts on AR without their rlast, on AW without B
        self.bytes = {"read": 0, "written": 0}  # the DUT's perf-counter strobes, summed
        self._ars = deque()       # (cycle, beats) of ARs whose data has not started
        self._left = 0
        self.err_lo, self.err_hi = error_region
        Clock(dut.clk, 10, unit="ns").start()
        self.ram = AxiRam(AxiBus.from_prefix(dut, "m_axi_"), dut.clk, dut.rst, size=RAM_SIZE)
        self.ram.read_if.ar_channel.queue_occupancy_limit = 16
        for half in (self.ram.read_if, self.ram.write_if):
            half.log.setLevel(logging.WARNING)  # a line per burst slows the simulation down
        read, write = self.ram.read_if._read, self.ram.write_if._write
        self.ram.read_if._read = lambda a, n: self._slow_read(read, a, n)
        self.ram.write_if._write = lambda a, d: self._checked_write(write, a, d)
        if pause:
            for ch in (self.ram.read_if.ar_channel, self.ram.read_if.r_channel, self.ram.write_if.aw_channel,
                       self.ram.write_if.w_channel, self.ram.write_if.b_channel):
                ch.set_pause_generator(self._pauses(pause, self.rng.randrange(1 << 30)))
        cocotb.start_soon(self._watch())

    @staticmethod
    def _pauses(p, seed):
        rng = random.Random(seed)
        while True:
            yield rng.random() < p

    async def _slow_read(self, read, address, length):
        if self._left == 0:
            while not self._ars:
                await RisingEdge(self.dut.clk)
            start, self._left = self._ars.popleft()
            while self.cycle < start + self.latency:
                await RisingEdge(self.dut.clk)
        self._left -= 1
        if self.err_lo <= address < self.err_hi:
            raise OSError("test error region")  # AxiRam answers SLVERR
        return await read(address, length)

    async def _checked_write(self, write, address, data):
        if self.err_lo <= address < self.err_hi:
            raise OSError("test error region")
        await write(address, data)

    async def _watch(self):
        dut = self.dut
        while True:
            await RisingEdge(dut.clk)
            self.cycle += 1
            if dut.m_axi__arvalid.value == 1 and dut.m_axi__arready.value == 1:
                beats = int(dut.m_axi__arlen.value) + 1
                self._ars.append((self.cycle, beats))
                self.bursts.append(("AR", int(dut.m_axi__araddr.value), beats))
            if dut.m_axi__awvalid.value == 1 and dut.m_axi__awready.value == 1:
                self.bursts.append(("AW", int(dut.m_axi__awaddr.value), int(dut.m_axi__awlen.value) + 1))
                self.writes_open += 1
            if dut.m_axi__arvalid.value == 1 and dut.m_axi__arready.value == 1:
                self.reads_open += 1
            if dut.m_axi__rvalid.value == 1 and dut.m_axi__rready.value == 1 and dut.m_axi__rlast.value == 1:
                self.reads_open -= 1
            if dut.m_axi__bvalid.value == 1 and dut.m_axi__bready.value == 1:
                self.writes_open -= 1
            assert self.reads_open <= self.max_outstanding, f"{self.reads_open} read bursts outstanding"
            assert self.writes_open <= self.max_outstanding, f"{self.writes_open} write bursts outstanding"
            self.bytes["read"] += int(dut.bytes_read.value)
            self.bytes["written"] += int(dut.bytes_written.value)

    async def reset(self):
        dut = self.dut
        dut.rst.value = 1
        for name in ("rd_cmd__valid", "wr_cmd__valid", "wr_i__valid", "rd_o__ready", "wr_done__ready",
                     "rd_abort", "wr_abort", "clear"):
            getattr(dut, name).value = 0
        dut.window_base.value = BASE
        dut.window_limit.value = LIMIT
        for _ in range(3):
            await RisingEdge(dut.clk)
        dut.rst.value = 0
        await RisingEdge(dut.clk)

    async def send(self, port: str, payloads, gap=None, accepted: list | None = None):
        """Offer each payload on ``port`` with random gaps; append to ``accepted`` as each is taken."""
        dut = self.dut
        gap = self.gap if gap is None else gap
        valid, payload, ready = (getattr(dut, f"{port}__{s}") for s in ("valid", "payload", "ready"))
        for p in payloads:
            while self.rng.random() < gap:
                valid.value = 0
                await RisingEdge(dut.clk)
            valid.value = 1
            payload.value = p
            await RisingEdge(dut.clk)  # values read after the edge are those the flops sampled
            while ready.value != 1:
                await RisingEdge(dut.clk)
            valid.value = 0
            if accepted is not None:
                accepted.append(p)

    async def recv(self, port: str, count: int, gap=None) -> list[int]:
        dut = self.dut
        gap = self.gap if gap is None else gap
        valid, payload, ready = (getattr(dut, f"{port}__{s}") for s in ("valid", "payload", "ready"))
        out = []
        while len(out) < count:
            r = self.rng.random() >= gap
            ready.value = int(r)
            await RisingEdge(dut.clk)
            if r and valid.value == 1:
                out.append(int(payload.value))
        ready.value = 0
        return out

    async def pulse(self, name: str):
        getattr(self.dut, name).value = 1
        await RisingEdge(self.dut.clk)
        getattr(self.dut, name).value = 0

    async def wait_idle(self, name: str, limit: int = 20000):
        for _ in range(limit):
            await RisingEdge(self.dut.clk)
            if getattr(self.dut, name).value == 0:
                return
        raise AssertionError(f"seed={self.seed}: {name} still high after {limit} cycles")

    def check_bursts(self):
        for ch, addr, beats in self.bursts:
            end = addr + beats * self.nbytes
            what = f"seed={self.seed}: {ch} burst {addr:#x}+{beats}"
            assert BASE <= addr and end <= LIMIT, f"{what} outside the window"
            assert addr // 4096 == (end - 1) // 4096, f"{what} crosses 4 KiB"

    # -- commands and their models ----------------------------------------------------------------

    def command(self, lo=BASE, hi=LIMIT, max_beats=40, tag=0) -> dict:
        rng, nb = self.rng, self.nbytes
        dims = rng.choice([1, 2, 3])
        inner = nb * rng.randint(1, max_beats)
        count1 = rng.randint(1, 4) if dims >= 2 else 1
        count2 = rng.randint(1, 3) if dims == 3 else 1
        stride1 = inner + nb * rng.randint(0, 30) if dims >= 2 else nb * rng.randint(0, 8)
        stride2 = stride1 * count1 + nb * rng.randint(0, 30) if dims == 3 else nb * rng.randint(0, 8)
        span = (count2 - 1) * stride2 + (count1 - 1) * stride1 + inner
        addr = lo + nb * rng.randint(0, (hi - lo - span) // nb)
        return dict(addr=addr, inner_bytes=inner, count1=count1, stride1=stride1, count2=count2,
                    stride2=stride2, tag=tag)

    def verdict(self, c: dict) -> ErrorCode:
        return check_command(**{k: v for k, v in c.items() if k != "tag"}, window_base=BASE,
                             window_limit=LIMIT, data_bytes=self.nbytes)

    @staticmethod
    def rows(c: dict):
        for i2 in range(c["count2"]):
            for i1 in range(c["count1"]):
                yield c["addr"] + i2 * c["stride2"] + i1 * c["stride1"]

    def words(self, c: dict) -> int:
        return c["count1"] * c["count2"] * c["inner_bytes"] // self.nbytes

    def expected_read(self, c: dict, mem: bytes) -> list[int]:
        nb = self.nbytes
        out = []
        for row in self.rows(c):
            out += [int.from_bytes(mem[a:a + nb], "little") for a in range(row, row + c["inner_bytes"], nb)]
        return out

    def apply_write(self, c: dict, words: list[int], mem: bytearray) -> None:
        nb = self.nbytes
        it = iter(words)
        for row in self.rows(c):
            for a in range(row, row + c["inner_bytes"], nb):
                try:
                    mem[a:a + nb] = next(it).to_bytes(nb, "little")
                except StopIteration:
                    return

    def fill(self) -> bytearray:
        mem = bytearray(self.rng.randbytes(RAM_SIZE))
        self.ram.write(0, bytes(mem))
        return mem

    def compare_words(self, got, want, what):
        for i, (g, w) in enumerate(zip(got, want, strict=False)):
            assert g == w, f"seed={self.seed}: {what} word {i}: expected {w:#x}, got {g:#x}"
        assert len(got) == len(want), f"seed={self.seed}: {what}: {len(got)} words, expected {len(want)}"

    def compare_mem(self, want: bytes, what):
        got = self.ram.read(0, RAM_SIZE)
        if got != want:
            i = next(k for k in range(RAM_SIZE) if got[k] != want[k])
            raise AssertionError(f"seed={self.seed}: {what}: first difference at byte {i:#x}: "
                                 f"expected {want[i]:#04x}, got {got[i]:#04x}")


def pack(c: dict) -> int:
    return CMD.const(c).as_bits()


async def read_commands(tb: TB, cmds: list[dict], mem: bytes):
    """Read ``cmds`` and check every word and every ``last`` flag against ``mem``."""
    want = []
    for c in cmds:
        w = tb.expected_read(c, mem)
        want += [(x, int(k == len(w) - 1)) for k, x in enumerate(w)]
    cocotb.start_soon(tb.send("rd_cmd", [pack(c) for c in cmds]))
    tb.dut._log.info("reading %d commands, %d words", len(cmds), len(want))
    raw = await tb.recv("rd_o", len(want))
    dw = tb.nbytes * 8
    got = [(x & ((1 << dw) - 1), x >> dw) for x in raw]
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert g == w, (f"seed={tb.seed}: read word {i}: expected (data, last) ({w[0]:#x}, {w[1]}), "
                        f"got ({g[0]:#x}, {g[1]})")


async def write_commands(tb: TB, cmds: list[dict], mem: bytearray):
    """Write random words with ``cmds``, wait for every ``done``, and update the model ``mem``."""
    words = [[tb.rng.getrandbits(8 * tb.nbytes) for _ in range(tb.words(c))] for c in cmds]
    cocotb.start_soon(tb.send("wr_cmd", [pack(c) for c in cmds]))
    cocotb.start_soon(tb.send("wr_i", [x for w in words for x in w]))
    done = await tb.recv("wr_done", len(cmds))
    want = [c["tag"] for c in cmds]
    assert done == want, f"seed={tb.seed}: done tags {done}, expected {want}"
    for c, w in zip(cmds, words, strict=True):
        tb.apply_write(c, w, mem)


@cocotb.test()
async def random_reads_and_writes(dut):
    """Random 1D/2D/3D reads, then concurrent reads and writes on disjoint halves of the window."""
    p = params()
    tb = TB(dut, p.get("seed", 1), latency=p.get("latency", 0))
    await tb.reset()
    mem = tb.fill()
    n = p.get("commands", 12)
    first = [tb.command(tag=t) for t in range(n)]
    await read_commands(tb, first, mem)
    tb.bytes_of_first_phase = sum(tb.words(c) for c in first) * tb.nbytes
    mid = (BASE + LIMIT) // 2
    reads = [tb.command(BASE, mid, tag=t) for t in range(n)]
    writes = [tb.command(mid, LIMIT, tag=100 + t) for t in range(n)]
    rd = cocotb.start_soon(read_commands(tb, reads, bytes(mem)))
    await write_commands(tb, writes, mem)
    await rd
    await tb.wait_idle("wr_busy")
    tb.compare_mem(mem, "after writes")
    tb.check_bursts()
    # The perf-counter strobes add up to the bytes moved.
    read_bytes = sum(tb.words(c) for c in reads) * tb.nbytes + tb.bytes_of_first_phase
    assert tb.bytes == {"read": read_bytes, "written": sum(tb.words(c) for c in writes) * tb.nbytes}, tb.bytes


@cocotb.test()
async def window_violations(dut):
    """Refused commands (straddling the limit, below the base): no AR/AW, error + tag, memory intact."""
    p = params()
    tb = TB(dut, p.get("seed", 2))
    await tb.reset()
    mem = tb.fill()
    nb = tb.nbytes
    good = tb.command(tag=1, max_beats=60)
    straddle = dict(addr=LIMIT - 2 * 512 - 64, inner_bytes=128, count1=3, stride1=512, count2=1,
                    stride2=0, tag=2)  # the last row's second half lies past the limit
    below = dict(addr=BASE - 2 * nb, inner_bytes=16 * nb, count1=1, stride1=0, count2=1, stride2=0, tag=3)
    for bad in (straddle, below):
        assert tb.verdict(bad) == ErrorCode.WINDOW
        # Reader: the good command's words all arrive; the bad one gives none and raises the error.
        await read_commands(tb, [good], mem)
        await tb.send("rd_cmd", [pack(bad)])
        await tb.wait_idle("rd_busy")
        assert dut.rd_error.value == 1 and dut.rd_error_code.value == ErrorCode.WINDOW, f"seed={tb.seed}"
        assert dut.rd_error_tag.value == bad["tag"]
        assert dut.rd_o__valid.value == 0
        # While in error, commands are not taken.
        dut.rd_cmd__valid.value = 1
        dut.rd_cmd__payload.value = pack(good)
        for _ in range(5):
            await RisingEdge(dut.clk)
            assert dut.rd_cmd__ready.value == 0
        dut.rd_cmd__valid.value = 0
        await tb.pulse("clear")
        await RisingEdge(dut.clk)
        assert dut.rd_error.value == 0
        # Writer: the good write lands, the bad one writes nothing, its data is not taken.
        words = [tb.rng.getrandbits(8 * nb) for _ in range(tb.words(good))]
        sent = []
        cocotb.start_soon(tb.send("wr_cmd", [pack(good), pack(bad)]))
        feeder = cocotb.start_soon(tb.send("wr_i", words + [0xDEAD] * 8, accepted=sent))
        assert await tb.recv("wr_done", 1) == [good["tag"]]
        await tb.wait_idle("wr_busy")
        for _ in range(20):
            await RisingEdge(dut.clk)
        assert dut.wr_error.value == 1 and dut.wr_error_code.value == ErrorCode.WINDOW
        assert dut.wr_error_tag.value == bad["tag"]
        assert len(sent) == len(words), (f"seed={tb.seed}: writer took {len(sent) - len(words)} words "
                                         "of a refused command")
        feeder.cancel()
        dut.wr_i__valid.value = 0
        tb.apply_write(good, words, mem)
        tb.compare_mem(mem, "after refused write")
        await tb.pulse("clear")
    # Reusable afterwards.
    await read_commands(tb, [tb.command(tag=7)], mem)
    await write_commands(tb, [tb.command(tag=8)], mem)
    await tb.wait_idle("wr_busy")
    tb.compare_mem(mem, "after recovery")
    tb.check_bursts()


@cocotb.test()
async def abort_mid_transfer(dut):
    """Abort a long read and a long write midway: bursts drain, nothing extra is written, reusable."""
    p = params()
    tb = TB(dut, p.get("seed", 3), latency=p.get("latency", 0))
    await tb.reset()
    mem = tb.fill()
    nb = tb.nbytes
    big = dict(addr=BASE + 4096 - 5 * nb, inner_bytes=128 * nb, count1=4, stride1=256 * nb, count2=1,
               stride2=0, tag=4)
    # Read: take some words, then abort.
    cocotb.start_soon(tb.send("rd_cmd", [pack(big)]))
    got = await tb.recv("rd_o", 70)
    mask = (1 << 8 * nb) - 1
    tb.compare_words([g & mask for g in got], tb.expected_read(big, mem)[:70], "pre-abort read")
    await tb.pulse("rd_abort")
    await tb.wait_idle("rd_busy")
    assert dut.rd_o__valid.value == 0 and dut.rd_error.value == 0
    await read_commands(tb, [tb.command(tag=5)], mem)  # a stale R beat would show up here
    # Write: feed some words, stop, abort; exactly the words taken are in memory.
    words = [tb.rng.getrandbits(8 * nb) for _ in range(tb.words(big))]
    sent = []
    cocotb.start_soon(tb.send("wr_cmd", [pack(big)]))
    feeder = cocotb.start_soon(tb.send("wr_i", words[:90], accepted=sent))
    await feeder
    await tb.pulse("wr_abort")
    await tb.wait_idle("wr_busy")
    assert dut.wr_done__valid.value == 0 and dut.wr_error.value == 0
    tb.apply_write(big, sent, mem)
    tb.compare_mem(mem, f"after write abort ({len(sent)} words taken)")
    await write_commands(tb, [tb.command(tag=6)], mem)
    await tb.wait_idle("wr_busy")
    tb.compare_mem(mem, "after write abort and a new write")
    tb.check_bursts()


@cocotb.test()
async def bus_errors(dut):
    """SLVERR on a read or a write sets BUS_ERROR with the command's tag; data is still delivered."""
    p = params()
    lo = BASE + 0x4000
    tb = TB(dut, p.get("seed", 4), error_region=(lo, lo + 0x1000))
    await tb.reset()
    mem = tb.fill()
    nb = tb.nbytes
    c = dict(addr=lo - 4 * nb, inner_bytes=8 * nb, count1=1, stride1=0, count2=1, stride2=0, tag=11)
    cocotb.start_soon(tb.send("rd_cmd", [pack(c)]))
    got = await tb.recv("rd_o", 8)
    assert [g & ((1 << 8 * nb) - 1) for g in got[:4]] == tb.expected_read(c, mem)[:4]
    assert dut.rd_error.value == 1 and dut.rd_error_code.value == ErrorCode.BUS_ERROR
    assert dut.rd_error_tag.value == 11
    c["tag"] = 12
    cocotb.start_soon(tb.send("wr_cmd", [pack(c)]))
    cocotb.start_soon(tb.send("wr_i", list(range(1, 9))))
    assert await tb.recv("wr_done", 1) == [12]
    assert dut.wr_error.value == 1 and dut.wr_error_code.value == ErrorCode.BUS_ERROR
    assert dut.wr_error_tag.value == 12


@cocotb.test()
async def read_throughput(dut):
    """Beats per cycle of one long read with no back-pressure, at the given memory latency."""
    p = params()
    tb = TB(dut, 5, gap=0.0, pause=0.0, latency=p.get("latency", 0))
    await tb.reset()
    mem = tb.fill()
    nb = tb.nbytes
    beats = p.get("beats", 1024)
    c = dict(addr=BASE, inner_bytes=beats * nb, count1=1, stride1=0, count2=1, stride2=0, tag=0)
    start = tb.cycle
    cocotb.start_soon(tb.send("rd_cmd", [pack(c)]))
    got = await tb.recv("rd_o", beats)
    cycles = tb.cycle - start
    tb.compare_words([g & ((1 << 8 * nb) - 1) for g in got], tb.expected_read(c, mem), "throughput read")
    rate = beats / cycles
    dut._log.info("THROUGHPUT latency=%d beats=%d cycles=%d beats/cycle=%.3f", tb.latency, beats, cycles,
                  rate)
    floor = p.get("min_rate")
    if floor is not None:
        assert rate >= floor, f"read throughput {rate:.3f} beats/cycle, expected >= {floor}"
