"""An AXI4 slave over on-chip RAM, pipelined so that a large block-RAM array meets timing.

::

    AR -> raddr --> bank 0..B-1 (sync read) -> s2 per-bank registers -> bank mux -> s3 register -> FIFO -> R
    AW/W -> s1 write register (address, data, byte mask) -> bank write ports

The memory is split into banks of ``bank_words`` words (one ECP5 DP16KD in 512 x 36 mode each by
default). A flat 128 KiB memory makes yosys read all its block RAMs through one 64:1 multiplexer
straight from the unregistered RAM outputs, which was the SoC's critical path (86.5 MHz on the
ULX3S-85F). Here each bank's output is registered first, the multiplexer reads those registers,
and its output is registered again. Writes are registered once before they reach the banks, so
the write data and address fan out to the banks from flip-flops.

Reads are issued one word per cycle while the response FIFO has room for every word in flight, so a
burst streams at one beat per cycle after the pipeline's latency, and ``rready`` never reaches the
RAMs (it only pops the FIFO).
"""

from amaranth.hdl import Cat, ClockSignal, Instance, Module, Mux, Signal
from amaranth.lib import data, fifo, memory, wiring
from amaranth.lib.wiring import In
from amaranth.utils import ceil_log2

from .axi import AxiResp, AxiSignature

__all__ = ["AxiSram"]

_FIFO_DEPTH = 8
_SPRAM_BANK = 64 * 1024


class AxiSram(wiring.Component):
    """An AXI4 slave over on-chip RAM (32-bit data, INCR bursts, one read and one write at a time).

    Addresses past the memory answer DECERR (writes are not done), so a stray host or DMA address is
    reported, not wrapped. Reads and writes proceed independently (a write burst waiting for its
    data never holds up reads); AXI orders neither against the other, so a master that reads what
    it wrote waits for the write's B response first.

    Parameters
    ----------
    size : int
        Bytes, a multiple of 4 (of ``4 * bank_words`` when there is more than one bank).
    spram : bool
        Build it from iCE40 SB_SPRAM256KA blocks (16 Ki words per pair) instead of inferred RAM.
        Only with a platform; simulation always uses inferred RAM.
    bank_words : int
        Words per inferred RAM bank (a power of two).

    Members
    -------
    s_axi : In(AxiSignature(32, 32, 1))
        The slave port.

    Raises
    ------
    ValueError
        If ``size`` is not a positive multiple of 4 (of 64 KiB with ``spram``), or ``bank_words``
        is not a power of two.
    """

    def __init__(self, size: int, spram: bool = False, bank_words: int = 512) -> None:
        if not isinstance(size, int) or size <= 0 or size % 4:
            raise ValueError(f"size must be a positive multiple of 4 bytes, not {size!r}")
        if spram and size % _SPRAM_BANK:
            raise ValueError(f"An SPRAM memory must be a multiple of 64 KiB, not {size!r}")
        if not isinstance(bank_words, int) or bank_words < 16 or bank_words & (bank_words - 1):
            raise ValueError(f"bank_words must be a power of two of at least 16, not {bank_words!r}")
        if size // 4 > bank_words and (size // 4) % bank_words:
            raise ValueError(f"size ({size}) must be a multiple of 4 * bank_words ({4 * bank_words})")
        self._size = size
        self._spram = spram
        self._bank_words = min(bank_words, size // 4)
        super().__init__({"s_axi": In(AxiSignature(32, 32, 1))})

    @property
    def size(self) -> int:
        return self._size

    @property
    def latency(self) -> int:
        """Cycles from a read's issue to its word entering the response FIFO."""
        return 3

    def elaborate(self, platform) -> Module:
        m = Module()
        bus = self.s_axi
        words = self._size // 4

        # -- the banks: a read port on raddr, a write port on the s1 write register ----------
        raddr = Signal(30)
        w_addr = Signal(30)
        w_data = Signal(32)
        w_mask = Signal(4)
        outs = []
        if self._spram and platform is not None:
            bank_bits = ceil_log2(_SPRAM_BANK // 4)
            outs = self._spram_banks(m, raddr, w_addr, w_data, w_mask)
        else:
            bank_bits = ceil_log2(self._bank_words)
            for b in range(words // self._bank_words):
                m.submodules[f"bank{b}"] = ram = memory.Memory(shape=32, depth=self._bank_words, init=[])
                wp = ram.write_port(granularity=8)
                rp = ram.read_port()
                m.d.comb += [rp.addr.eq(raddr[:bank_bits]), wp.addr.eq(w_addr[:bank_bits]),
                             wp.data.eq(w_data),
                             wp.en.eq(Mux(w_addr[bank_bits:] == b, w_mask, 0))]
                outs.append(rp.data)
        banks = len(outs)

        # -- read pipeline: issue -> s1 (RAM out) -> s2 (per-bank registers) -> s3 -> FIFO ----
        meta = data.StructLayout({"valid": 1, "last": 1, "err": 1, "bank": range(banks)})
        s1, s2, s3 = Signal(meta), Signal(meta), Signal(meta)
        # No reset on the 2048 data flops: they are read under s2's valid only.
        s2_data = [Signal(32, name=f"s2_data{b}", reset_less=True) for b in range(banks)]
        s3_data = Signal(32)
        m.submodules.rfifo = rfifo = fifo.SyncFIFOBuffered(width=34, depth=_FIFO_DEPTH)
        inflight = s1.valid + s2.valid + s3.valid
        room = Signal()
        m.d.comb += room.eq(rfifo.level + inflight < _FIFO_DEPTH)
        issue = Signal()
        rem = Signal(9)                 # beats of the current read still to issue
        rlast_issue = rem == 1
        m.d.sync += [
            s1.valid.eq(issue), s1.last.eq(rlast_issue), s1.err.eq(raddr >= words),
            s1.bank.eq(raddr[bank_bits:] if banks > 1 else 0),
            s2.eq(s1), s3.eq(s2),
            s3_data.eq(Cat(*s2_data).word_select(s2.bank, 32) if banks > 1 else s2_data[0]),
        ]
        for b in range(banks):
            m.d.sync += s2_data[b].eq(outs[b])
        m.d.comb += [
            rfifo.w_data.eq(Cat(s3_data, s3.last, s3.err)), rfifo.w_en.eq(s3.valid),
            bus.rvalid.eq(rfifo.r_rdy), bus.rdata.eq(rfifo.r_data[:32]), bus.rlast.eq(rfifo.r_data[32]),
            bus.rresp.eq(rfifo.r_data[33].replicate(2) & AxiResp.DECERR), rfifo.r_en.eq(bus.rready),
            bus.rid.eq(0), bus.bid.eq(0),
        ]

        # -- writes and reads are independent state machines ---------------------------------
        # AXI lets a master hold W data until its AW is accepted, and a DMA whose write data is
        # computed from what it reads does exactly that. A slave that stopped serving reads while
        # a write burst waits for its data would deadlock it, so reads never wait for writes.
        waddr = Signal(30)
        bad = Signal()
        writing = Signal()
        m.d.comb += writing.eq(w_mask != 0)
        m.d.sync += w_mask.eq(0)
        with m.FSM(name="wr"):
            with m.State("IDLE"):
                m.d.comb += bus.awready.eq(1)
                with m.If(bus.awvalid):
                    m.d.sync += [waddr.eq(bus.awaddr[2:]), bad.eq(0)]
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += bus.wready.eq(1)
                with m.If(bus.wvalid):
                    with m.If(waddr < words):
                        m.d.sync += [w_addr.eq(waddr), w_data.eq(bus.wdata), w_mask.eq(bus.wstrb)]
                    with m.Else():
                        m.d.sync += bad.eq(1)
                    m.d.sync += waddr.eq(waddr + 1)
                    with m.If(bus.wlast):
                        m.next = "WRITE_RESP"
            with m.State("WRITE_RESP"):
                m.d.comb += [bus.bvalid.eq(1), bus.bresp.eq(bad.replicate(2) & AxiResp.DECERR)]
                with m.If(bus.bready):
                    m.next = "IDLE"
        # An SPRAM has one address, taken by a registered write in its cycle: no read issues then.
        port_free = ~writing if self._spram and platform is not None else 1
        with m.FSM(name="rd"):
            with m.State("IDLE"):
                m.d.comb += bus.arready.eq(1)
                with m.If(bus.arvalid):
                    m.d.sync += [raddr.eq(bus.araddr[2:]), rem.eq(bus.arlen + 1)]
                    m.next = "READ"
            with m.State("READ"):
                m.d.comb += issue.eq(room & port_free)
                with m.If(issue):
                    m.d.sync += [raddr.eq(raddr + 1), rem.eq(rem - 1)]
                    with m.If(rlast_issue):
                        m.next = "IDLE"
        return m

    def _spram_banks(self, m, raddr, w_addr, w_data, w_mask) -> list[Signal]:
        # Each bank is two 16 Ki x 16 SPRAMs side by side; MASKWREN has one bit per nibble. An SPRAM
        # has one address: the registered write uses it in the cycle after its W beat, and the read
        # state machine issues nothing in that cycle.
        writing = w_mask != 0
        addr = Mux(writing, w_addr, raddr)
        outs = []
        for b in range(self._size // _SPRAM_BANK):
            out = Signal(32, name=f"spram_q{b}")
            outs.append(out)
            sel = addr[14:] == b
            for half in range(2):
                mask = Signal(4, name=f"spram_mask{b}_{half}")
                lo, hi = w_mask[2 * half], w_mask[2 * half + 1]
                m.d.comb += mask.eq(Cat(lo, lo, hi, hi))
                m.submodules[f"spram{b}_{half}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=addr[:14], i_DATAIN=w_data[16 * half:16 * half + 16],
                    i_MASKWREN=mask, i_WREN=writing & sel, i_CHIPSELECT=1,
                    i_CLOCK=ClockSignal(), i_STANDBY=0, i_SLEEP=0, i_POWEROFF=1,
                    o_DATAOUT=out[16 * half:16 * half + 16])
        return outs
