"""AXI4 write DMA: strided tile commands and a stream of data-width words in, completions out.

A :class:`~jacquard.rtl.dma.DmaBurster` checks each command against the protection window and
splits it into bursts. AW runs ahead of W: a burst goes out on AW as soon as fewer than
``max_outstanding`` bursts await their B response, and its record is queued twice, once for the
W side (beats in the burst, to place ``wlast``) and once for the B side (does it end its command,
and the tag). W beats go through one output register fed from the input stream. Each B response
is counted off its record; the one that completes a command's last burst emits the command's tag
on ``done``, which therefore means "every byte of the command is written" (AXI answers B after
the write is done).

Abort: no new bursts are issued. Bursts already on AW are completed, as AXI requires, with beats
whose ``wstrb`` is 0, so no more bytes of the aborted transfer reach memory; every outstanding B
is awaited; then the writer is idle and takes new commands. Input words not yet taken stay in the
input stream (the producer is flushed with the writer); a ``done`` not yet taken is withdrawn.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from jacquard.sim.isa import ErrorCode

from .axi import AxiBurst, AxiSignature
from .dma import DmaBurster, DmaCommand

__all__ = ["DmaDoneLayout", "DmaWriter"]


class DmaDoneLayout(data.StructLayout):
    """A completed write command: its tag."""

    def __init__(self, tag_width: int = 16) -> None:
        super().__init__({"tag": tag_width})


class DmaWriter(wiring.Component):
    """AXI4 master that writes 1D/2D/3D strided tiles inside a protection window.

    Parameters
    ----------
    addr_width : int
        Address bits (16..64).
    data_width : int
        AXI data bits: 32, 64 or 128 (one word per beat).
    max_burst : int
        Most beats per burst (power of two, 1..256, at most 4 KiB).
    max_outstanding : int
        Most bursts issued on AW whose B response has not arrived (1..64).
    tag_width : int
        Bits of the command tag.

    Members
    -------
    cmd : In(stream.Signature(DmaCommand(addr_width, tag_width)))
        Write commands. Not accepted while ``error`` is high or an abort drains.
    i : In(stream.Signature(data_width))
        The words to write, in command order (``inner_bytes / (data_width/8)`` per row). Words of
        a refused command are not taken.
    done : Out(stream.Signature(DmaDoneLayout(tag_width)))
        One beat per completed command (all of its B responses received).
    m_axi : Out(AxiSignature(addr_width, data_width, read=False, write=True))
        AXI4 write channels (ID 0, INCR bursts of full-width beats, all strobes set).
    window_base, window_limit : In(addr_width)
        Protection window ``[base, limit)``; a command touching any byte outside it is refused
        before any of its bursts is issued, so no byte outside the window is ever written.
    abort : In(1)
        Pulse: stop issuing, complete the bursts on AW with empty strobes, await B, go idle.
    clear : In(1)
        Clear a sticky ``error``.
    error : Out(1)
        A command was refused or a write returned SLVERR/DECERR.
    error_code : Out(ErrorCode)
        PARAM_RANGE, MISALIGNED, WINDOW or BUS_ERROR; the first cause is kept.
    error_tag : Out(tag_width)
        Tag of the command that caused ``error``.
    busy : Out(1)
        Commands, bursts or responses in flight.
    bytes_written : Out(range(data_width // 8 + 1))
        Bytes sent on W this cycle (0 or a full beat; 0 for the empty beats of an abort).

    Raises
    ------
    ValueError
        If a parameter is out of range.
    """

    def __init__(self, addr_width: int = 32, data_width: int = 64, max_burst: int = 16,
                 max_outstanding: int = 4, tag_width: int = 16) -> None:
        if not isinstance(max_outstanding, int) or not 1 <= max_outstanding <= 64:
            raise ValueError(f"Max outstanding must be an integer in 1..64, not {max_outstanding!r}")
        self._burster = DmaBurster(addr_width, data_width, max_burst, tag_width)
        self._addr_width = addr_width
        self._data_width = data_width
        self._max_outstanding = max_outstanding
        self._tag_width = tag_width
        super().__init__({
            "cmd": In(stream.Signature(DmaCommand(addr_width, tag_width))),
            "i": In(stream.Signature(data_width)),
            "done": Out(stream.Signature(DmaDoneLayout(tag_width))),
            "m_axi": Out(AxiSignature(addr_width, data_width, read=False, write=True)),
            "window_base": In(addr_width),
            "window_limit": In(addr_width),
            "abort": In(1),
            "clear": In(1),
            "error": Out(1),
            "error_code": Out(ErrorCode),
            "error_tag": Out(tag_width),
            "busy": Out(1),
            "bytes_written": Out(range(data_width // 8 + 1)),
        })

    def elaborate(self, platform) -> Module:
        m = Module()
        axi = self.m_axi
        nbytes = self._data_width // 8
        m.submodules.burster = burster = self._burster
        b_layout = data.StructLayout({"last": 1, "tag": self._tag_width})
        m.submodules.w_meta = w_meta = fifo.SyncFIFOBuffered(width=8, depth=self._max_outstanding)
        m.submodules.b_meta = b_meta = fifo.SyncFIFOBuffered(width=b_layout.size,
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

        # AW: out when both record queues have room; both are written as AW is taken.
        burst = burster.burst.payload
        room = Signal()
        m.d.comb += [
            room.eq(w_meta.w_rdy & b_meta.w_rdy),
            axi.awvalid.eq(burster.burst.valid & room),
            axi.awaddr.eq(burst.addr),
            axi.awlen.eq(burst.len),
            axi.awsize.eq(exact_log2(nbytes)),
            axi.awburst.eq(AxiBurst.INCR),
            axi.awid.eq(0),
            burster.burst.ready.eq(axi.awready & room),
            w_meta.w_en.eq(axi.awvalid & axi.awready),
            w_meta.w_data.eq(burst.len),
            b_meta.w_en.eq(axi.awvalid & axi.awready),
        ]
        b_in = b_layout(b_meta.w_data)
        m.d.comb += [b_in.last.eq(burst.last), b_in.tag.eq(burst.tag)]

        # W: the output register loads the next beat of the oldest burst, from the input stream,
        # or (draining) an empty-strobe beat. A beat once offered is never changed.
        w_count = Signal(8)
        w_last = Signal()
        load = Signal()
        m.d.comb += [
            w_last.eq(w_count == w_meta.r_data),
            load.eq(w_meta.r_rdy & (~axi.wvalid | axi.wready) & (self.i.valid | draining)),
            self.i.ready.eq(w_meta.r_rdy & (~axi.wvalid | axi.wready) & ~draining),
            w_meta.r_en.eq(load & w_last),
        ]
        with m.If(load):
            m.d.sync += [
                axi.wvalid.eq(1),
                axi.wdata.eq(Mux(draining, 0, self.i.payload)),
                axi.wstrb.eq(Mux(draining, 0, (1 << nbytes) - 1)),
                axi.wlast.eq(w_last),
                w_count.eq(Mux(w_last, 0, w_count + 1)),
            ]
        with m.Elif(axi.wready):
            m.d.sync += axi.wvalid.eq(0)
        m.d.comb += self.bytes_written.eq(Mux(axi.wvalid & axi.wready & axi.wstrb[0], nbytes, 0))

        # B: count responses off the records; the last burst of a command completes it.
        b_out = b_layout(b_meta.r_data)
        take = Signal()
        m.d.comb += [
            axi.bready.eq(b_meta.r_rdy & (~self.done.valid | self.done.ready)),
            take.eq(axi.bvalid & axi.bready),
            b_meta.r_en.eq(take),
            burster.bus_error.eq(take & axi.bresp[1]),
            burster.bus_error_tag.eq(b_out.tag),
        ]
        with m.If(take & b_out.last & ~draining):
            m.d.sync += [self.done.valid.eq(1), self.done.payload.tag.eq(b_out.tag)]
        with m.Elif(self.done.ready):
            m.d.sync += self.done.valid.eq(0)

        in_flight = Signal()
        m.d.comb += in_flight.eq(burster.busy | (w_meta.level != 0) | (b_meta.level != 0) | axi.wvalid)
        with m.If(self.abort):
            m.d.sync += [draining.eq(1), self.done.valid.eq(0)]
        with m.Elif(draining & ~in_flight):
            m.d.sync += draining.eq(0)

        m.d.comb += self.busy.eq(in_flight | draining)
        return m
