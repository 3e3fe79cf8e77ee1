"""AXI4 read DMA: strided tile commands in, a stream of data-width words out.

A :class:`~jacquard.rtl.dma.DmaBurster` checks each command against the protection window and
splits it into bursts. Each burst goes out on AR as soon as fewer than ``max_outstanding`` bursts
are in flight, so AR for the next bursts is issued while R data of earlier ones streams in: with
``max_outstanding * max_burst`` beats in flight, a memory latency of up to that many cycles is
hidden. A small FIFO of burst records (one per outstanding burst) says which R beat ends a
command. R beats go through an output register with a skid register (``rready`` is low while
the skid register is full), so a stalled consumer stalls the memory, never loses a beat, and
no combinational path runs from the consumer's ``ready`` to R.

Abort: no new bursts are issued; bursts already on AR are completed (AXI requires it) and their
data discarded; beats waiting in the output and skid registers are withdrawn. Then the reader is
idle and takes new commands. ``abort`` is a flush of the whole transfer, so the consumer must be
flushed with it.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from jacquard.sim.isa import ErrorCode

from .axi import AxiBurst, AxiSignature
from .dma import DmaBurster, DmaCommand

__all__ = ["DmaReader", "ReadWordLayout"]


class ReadWordLayout(data.StructLayout):
    """One word read: ``data`` (little-endian bytes), ``last`` = final word of its command."""

    def __init__(self, data_width: int = 64) -> None:
        super().__init__({"data": data_width, "last": 1})


class DmaReader(wiring.Component):
    """AXI4 master that reads 1D/2D/3D strided tiles inside a protection window.

    Parameters
    ----------
    addr_width : int
        Address bits (16..64).
    data_width : int
        AXI data bits: 32, 64 or 128 (one word per beat).
    max_burst : int
        Most beats per burst (power of two, 1..256, at most 4 KiB).
    max_outstanding : int
        Most bursts issued on AR whose data has not all arrived (1..64).
    tag_width : int
        Bits of the command tag (reported with errors).

    Members
    -------
    cmd : In(stream.Signature(DmaCommand(addr_width, tag_width)))
        Read commands. Not accepted while ``error`` is high or an abort drains.
    o : Out(stream.Signature(ReadWordLayout(data_width)))
        The words of every command, in order, ``last`` on the final one of each command. A
        refused command yields no words.
    m_axi : Out(AxiSignature(addr_width, data_width, read=True, write=False))
        AXI4 read channels (ID 0, INCR bursts of full-width beats).
    window_base, window_limit : In(addr_width)
        Protection window ``[base, limit)``; a command touching any byte outside it is refused
        before any of its bursts is issued.
    abort : In(1)
        Pulse: stop issuing, drain the bursts in flight, discard their data, go idle.
    clear : In(1)
        Clear a sticky ``error``.
    error : Out(1)
        A command was refused or a read returned SLVERR/DECERR (its data is still delivered).
    error_code : Out(ErrorCode)
        PARAM_RANGE, MISALIGNED, WINDOW or BUS_ERROR; the first cause is kept.
    error_tag : Out(tag_width)
        Tag of the command that caused ``error``.
    busy : Out(1)
        Commands or bursts in flight, or a word waiting in the output or skid register.
    bytes_read : Out(range(data_width // 8 + 1))
        Bytes that arrived on R this cycle (0 or a full beat, also for beats an abort discards),
        for the DMA-read perf counter.

    Raises
    ------
    ValueError
        If a parameter is out of range.
    """

    def __init__(self, addr_width: int = 32, data_width: int = 64, max_burst: int = 16,
                 max_outstanding: int = 4, tag_width: int = 16) -> None:
        if not isinstance(max_outstanding, int) or not 1 <= max_outstanding <= 64:
            raise ValueError(f"Max outstanding must be an integer in 1..64, not {max_outstanding!r}")
        # The burster checks the other parameters; build it now so bad ones raise here.
        self._burster = DmaBurster(addr_width, data_width, max_burst, tag_width)
        self._addr_width = addr_width
        self._data_width = data_width
        self._max_outstanding = max_outstanding
        self._tag_width = tag_width
        super().__init__({
            "cmd": In(stream.Signature(DmaCommand(addr_width, tag_width))),
            "o": Out(stream.Signature(ReadWordLayout(data_width))),
            "m_axi": Out(AxiSignature(addr_width, data_width, read=True, write=False)),
            "window_base": In(addr_width),
            "window_limit": In(addr_width),
            "abort": In(1),
            "clear": In(1),
            "error": Out(1),
            "error_code": Out(ErrorCode),
            "error_tag": Out(tag_width),
            "busy": Out(1),
            "bytes_read": Out(range(data_width // 8 + 1)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        axi = self.m_axi
        m.submodules.burster = burster = self._burster
        # One record per outstanding burst: does it end its command, and the command's tag.
        meta_layout = data.StructLayout({"last": 1, "tag": self._tag_width})
        m.submodules.meta = meta = fifo.SyncFIFOBuffered(width=meta_layout.size,
                                                         depth=self._max_outstanding)
        draining = Signal()

        wiring.connect(m, wiring.flipped(self.cmd), burster.cmd)
        m.d.comb += [
            burster.window_base.eq(self.window_base),
            burster.window_limit.eq(self.window_limit),
            burster.hold.eq(draining),
            burster.abort.eq(self.abort),
            burster.clear.eq(self.clear),
            self.error.eq(burster.error),
            self.error_code.eq(burster.error_code),
            self.error_tag.eq(burster.error_tag),
        ]

        # AR: a burst goes out when a record slot is free; the record is written as AR is taken.
        # arvalid depends on no AXI ready, and stays up once raised (slots only free up).
        burst = burster.burst.payload
        m.d.comb += [
            axi.arvalid.eq(burster.burst.valid & meta.w_rdy),
            axi.araddr.eq(burst.addr),
            axi.arlen.eq(burst.len),
            axi.arsize.eq(exact_log2(self._data_width // 8)),
            axi.arburst.eq(AxiBurst.INCR),
            axi.arid.eq(0),
            burster.burst.ready.eq(axi.arready & meta.w_rdy),
            meta.w_en.eq(axi.arvalid & axi.arready),
        ]
        w_meta = meta_layout(meta.w_data)
        m.d.comb += [w_meta.last.eq(burst.last), w_meta.tag.eq(burst.tag)]
        r_meta = meta_layout(meta.r_data)

        # R: into the output register (or its skid register while the output is stalled), or into
        # the void while draining. rready depends on the skid register only, not on o.ready: the
        # consumers' ready chains (the core's read router) ended on AR/R before, the SoC's longest
        # path (18 levels from the packer through the router to the DMA slice).
        take = Signal()
        skid_valid = Signal()
        skid = Signal(ReadWordLayout(self._data_width))
        word = Signal(ReadWordLayout(self._data_width))
        m.d.comb += [
            axi.rready.eq(meta.r_rdy & (draining | ~skid_valid)),
            take.eq(axi.rvalid & axi.rready),
            meta.r_en.eq(take & axi.rlast),
            self.bytes_read.eq(Mux(take, self._data_width // 8, 0)),
            burster.bus_error.eq(take & axi.rresp[1]),
            burster.bus_error_tag.eq(r_meta.tag),
            word.data.eq(axi.rdata),
            word.last.eq(axi.rlast & r_meta.last),
        ]
        with m.If(~self.o.valid | self.o.ready):
            with m.If(skid_valid):
                m.d.sync += [self.o.valid.eq(1), self.o.payload.eq(skid), skid_valid.eq(0)]
            with m.Else():
                m.d.sync += [self.o.valid.eq(take & ~draining), self.o.payload.eq(word)]
        with m.Elif(take & ~draining):
            m.d.sync += [skid_valid.eq(1), skid.eq(word)]

        with m.If(self.abort):
            m.d.sync += [draining.eq(1), self.o.valid.eq(0), skid_valid.eq(0)]
        with m.Elif(draining & ~burster.busy & (meta.level == 0)):
            m.d.sync += draining.eq(0)

        m.d.comb += self.busy.eq(burster.busy | (meta.level != 0) | self.o.valid | skid_valid | draining)
        return m

