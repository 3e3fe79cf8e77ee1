"""DMA commands, the protection-window check and AXI burst splitting, shared by the reader and writer.

A command moves a tile of up to three dimensions::

    for i2 in range(count2):
        for i1 in range(count1):
            row = addr + i2 * stride2 + i1 * stride1
            move bytes [row, row + inner_bytes)

``addr``, ``inner_bytes`` and both strides are multiples of the data width in bytes (one beat),
and strides are unsigned, so the command's footprint runs from ``addr`` up to the end of its
last row, ``addr + (count2-1)*stride2 + (count1-1)*stride1 + inner_bytes``. That end is computed
exactly (no wrap-around) and the whole footprint must lie in the window
``[window_base, window_limit)`` before any burst of the command is issued; otherwise the command
is refused with :attr:`ErrorCode.WINDOW`. The window is the one of ``sim/isa.py``'s
``check_regions``: base inclusive, limit exclusive.

Each row is split into INCR bursts of at most ``max_burst`` beats that never cross a 4 KiB
boundary (AXI's rule). :func:`plan_bursts` and :func:`check_command` are the reference models.

:class:`DmaBurster` does both in hardware, in two stages that overlap with the previous
command's bursts: a checker (two cycles for a 1D command, else three plus one per significant bit
of the larger of ``count1-1`` and ``count2-1``: the two multiplies are shift-and-add, so they cost
no DSPs; the window compare has a cycle of its own) and the burst generator (one burst per cycle).
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import exact_log2

from jacquard.sim.isa import ErrorCode

__all__ = ["COUNT_BITS", "INNER_BITS", "BurstLayout", "DmaBurster", "DmaCommand", "check_command",
           "plan_bursts"]

#: Width of ``count1``/``count2``: up to 65535 rows and planes per command.
COUNT_BITS = 16
#: Width of ``inner_bytes``: rows of up to 16 MiB - 1.
INNER_BITS = 24


class DmaCommand(data.StructLayout):
    """One DMA command: a 1D/2D/3D strided tile (see the module docstring).

    Parameters
    ----------
    addr_width : int
        Address (and stride) bits.
    tag_width : int
        Bits of the caller's tag (e.g. the descriptor index), reported with errors and completions.
    """

    def __init__(self, addr_width: int = 32, tag_width: int = 16) -> None:
        super().__init__({
            "addr": addr_width,
            "inner_bytes": INNER_BITS,
            "count1": COUNT_BITS,
            "stride1": addr_width,
            "count2": COUNT_BITS,
            "stride2": addr_width,
            "tag": tag_width,
        })


class BurstLayout(data.StructLayout):
    """One AXI burst: start address, ``len`` = beats - 1, ``last`` = last burst of its command."""

    def __init__(self, addr_width: int = 32, tag_width: int = 16) -> None:
        super().__init__({"addr": addr_width, "len": 8, "last": 1, "tag": tag_width})


def check_command(addr: int, inner_bytes: int, count1: int, stride1: int, count2: int, stride2: int,
                  *, window_base: int, window_limit: int, data_bytes: int) -> ErrorCode:
    """The hardware's verdict on a command: ``ErrorCode.NONE`` or why it is refused.

    PARAM_RANGE if ``inner_bytes`` or a count is 0; MISALIGNED if the address, row length or a
    stride is not a multiple of ``data_bytes``; WINDOW if any byte falls outside
    ``[window_base, window_limit)``. The first that applies, in that order, is the answer.
    """
    if inner_bytes == 0 or count1 == 0 or count2 == 0:
        return ErrorCode.PARAM_RANGE
    if (addr | inner_bytes | stride1 | stride2) % data_bytes:
        return ErrorCode.MISALIGNED
    end = addr + (count2 - 1) * stride2 + (count1 - 1) * stride1 + inner_bytes
    if addr < window_base or end > window_limit:
        return ErrorCode.WINDOW
    return ErrorCode.NONE


def plan_bursts(addr: int, inner_bytes: int, count1: int, stride1: int, count2: int, stride2: int,
                *, data_bytes: int, max_burst: int) -> list[tuple[int, int]]:
    """The ``(address, beats)`` bursts of a valid command, in issue order."""
    bursts = []
    for i2 in range(count2):
        for i1 in range(count1):
            cur = addr + i2 * stride2 + i1 * stride1
            beats = inner_bytes // data_bytes
            while beats:
                n = min(beats, max_burst, (4096 - cur % 4096) // data_bytes)
                bursts.append((cur, n))
                cur += n * data_bytes
                beats -= n
    return bursts


class DmaBurster(wiring.Component):
    """Check DMA commands against the protection window and split them into AXI bursts.

    Parameters
    ----------
    addr_width : int
        Address bits (16..64).
    data_width : int
        AXI data bits: 32, 64 or 128.
    max_burst : int
        Most beats in one burst: a power of two in 1..256, at most 4096 bytes.
    tag_width : int
        Tag bits (1..32).

    Members
    -------
    cmd : In(stream.Signature(DmaCommand(addr_width, tag_width)))
        Commands. Not accepted while ``error``, ``abort`` or ``hold`` is high.
    burst : Out(stream.Signature(BurstLayout(addr_width, tag_width)))
        Bursts of accepted, valid commands, in order. A burst once offered stays offered until
        taken, even across ``abort``: the owner may already show it on AR or AW.
    window_base, window_limit : In(addr_width)
        The protection window ``[base, limit)``, set by the host; sampled when a command is checked.
    hold : In(1)
        Accept no new command (the owner is draining after an abort).
    abort : In(1)
        Drop the command being checked and the rest of the one being split.
    bus_error, bus_error_tag : In(1), In(tag_width)
        The owner saw SLVERR/DECERR on a beat of the command tagged ``bus_error_tag``.
    clear : In(1)
        Clear ``error`` (an error arriving in the same cycle wins).
    error : Out(1)
        Sticky: a command was refused, or a bus error was seen. The first cause is kept.
    error_code : Out(ErrorCode)
        PARAM_RANGE, MISALIGNED, WINDOW or BUS_ERROR.
    error_tag : Out(tag_width)
        Tag of the command that caused ``error``.
    busy : Out(1)
        A command is being checked or split, or a burst is waiting to be taken.

    Raises
    ------
    ValueError
        If a parameter is out of range.
    """

    def __init__(self, addr_width: int = 32, data_width: int = 64, max_burst: int = 16,
                 tag_width: int = 16) -> None:
        if not isinstance(addr_width, int) or not 16 <= addr_width <= 64:
            raise ValueError(f"Address width must be an integer in 16..64, not {addr_width!r}")
        if data_width not in (32, 64, 128):
            raise ValueError(f"Data width must be 32, 64 or 128, not {data_width!r}")
        bpb = data_width // 8
        if (not isinstance(max_burst, int) or max_burst < 1 or max_burst > 256
                or max_burst & (max_burst - 1) or max_burst * bpb > 4096):
            raise ValueError(f"Max burst must be a power of two in 1..256 beats of at most 4096 bytes, "
                             f"not {max_burst!r}")
        if not isinstance(tag_width, int) or not 1 <= tag_width <= 32:
            raise ValueError(f"Tag width must be an integer in 1..32, not {tag_width!r}")
        self._addr_width = addr_width
        self._data_width = data_width
        self._max_burst = max_burst
        self._tag_width = tag_width
        super().__init__({
            "cmd": In(stream.Signature(DmaCommand(addr_width, tag_width))),
            "burst": Out(stream.Signature(BurstLayout(addr_width, tag_width))),
            "window_base": In(addr_width),
            "window_limit": In(addr_width),
            "hold": In(1),
            "abort": In(1),
            "bus_error": In(1),
            "bus_error_tag": In(tag_width),
            "clear": In(1),
            "error": Out(1),
            "error_code": Out(ErrorCode),
            "error_tag": Out(tag_width),
            "busy": Out(1),
        })

    @property
    def data_width(self) -> int:
        return self._data_width

    @property
    def max_burst(self) -> int:
        return self._max_burst

    def elaborate(self, platform) -> Module:
        m = Module()
        aw = self._addr_width
        shift = exact_log2(self._data_width // 8)
        beat_bits = INNER_BITS - shift
        wide = aw + COUNT_BITS + 2  # exact footprint end: addr + 2 * 65535 * stride + inner

        # -- c_: the checker. One command: latch, multiply by shift-and-add, decide. ----------------
        c_cmd = Signal(DmaCommand(aw, self._tag_width))
        c_busy = Signal()     # multiplying
        c_fin = Signal()      # c_end is final; the window compare is registered this cycle
        c_done = Signal()     # verdict ready, waiting to hand over (or to refuse)
        c_outside = Signal()  # registered: the footprint leaves the window
        c_m1 = Signal(COUNT_BITS)
        c_m2 = Signal(COUNT_BITS)
        c_s1 = Signal(wide)
        c_s2 = Signal(wide)
        c_end = Signal(wide)
        c_param = Signal()
        c_align = Signal()

        cmd = self.cmd.payload
        m.d.comb += self.cmd.ready.eq(~c_busy & ~c_fin & ~c_done & ~self.error & ~self.abort & ~self.hold)
        with m.If(self.cmd.valid & self.cmd.ready):
            low = (1 << shift) - 1
            m.d.sync += [
                c_cmd.eq(cmd),
                # A 1D command needs no multiply: its end is final next cycle.
                c_busy.eq((cmd.count1 > 1) | (cmd.count2 > 1)),
                c_fin.eq((cmd.count1 <= 1) & (cmd.count2 <= 1)),
                c_m1.eq(Mux(cmd.count1 == 0, 0, cmd.count1 - 1)),
                c_m2.eq(Mux(cmd.count2 == 0, 0, cmd.count2 - 1)),
                c_s1.eq(cmd.stride1),
                c_s2.eq(cmd.stride2),
                c_end.eq(cmd.addr + cmd.inner_bytes),
                c_param.eq((cmd.inner_bytes == 0) | (cmd.count1 == 0) | (cmd.count2 == 0)),
                c_align.eq(((cmd.addr | cmd.inner_bytes | cmd.stride1 | cmd.stride2) & low) != 0),
            ]
        with m.If(c_busy):
            with m.If((c_m1 == 0) & (c_m2 == 0)):
                m.d.sync += [c_busy.eq(0), c_fin.eq(1)]
            with m.Else():
                m.d.sync += [
                    c_end.eq(c_end + Mux(c_m1[0], c_s1, 0) + Mux(c_m2[0], c_s2, 0)),
                    c_m1.eq(c_m1 >> 1), c_m2.eq(c_m2 >> 1),
                    c_s1.eq(c_s1 << 1), c_s2.eq(c_s2 << 1),
                ]

        # The window compare (a 50-bit compare after the multiply's adds) gets its own cycle: in
        # the verdict's cycle it was in series with the hand-over and the first burst's 4 KiB
        # distance (13 levels).
        m.d.sync += c_outside.eq((c_cmd.addr < self.window_base) | (c_end > self.window_limit))
        with m.If(c_fin):
            m.d.sync += [c_fin.eq(0), c_done.eq(1)]
        verdict = Signal(ErrorCode)
        with m.If(c_param):
            m.d.comb += verdict.eq(ErrorCode.PARAM_RANGE)
        with m.Elif(c_align):
            m.d.comb += verdict.eq(ErrorCode.MISALIGNED)
        with m.Elif(c_outside):
            m.d.comb += verdict.eq(ErrorCode.WINDOW)

        # -- a_: the burst generator, walking the rows of the command handed over by the checker. ---
        a_valid = Signal()
        a_cur = Signal(aw)          # address of the next burst
        a_row = Signal(aw)          # start of the current row
        a_plane = Signal(aw)        # start of the current plane (i2)
        a_rem = Signal(beat_bits)   # beats left in the current row
        a_i1 = Signal(COUNT_BITS)   # rows left in this plane after the current one
        a_i2 = Signal(COUNT_BITS)   # planes left after the current one
        a_inner = Signal(beat_bits)
        a_count1 = Signal(COUNT_BITS)
        a_stride1 = Signal(aw)
        a_stride2 = Signal(aw)
        a_tag = Signal(self._tag_width)
        # Beats to the next 4 KiB boundary from a_cur, and that capped at max_burst, kept in
        # registers next to a_cur: computing them from a_cur in the cycle that also adds the burst
        # to a_cur put four carry chains in series (the DMA's longest path).
        full_4k = 4096 >> shift
        a_to4k = Signal(range(full_4k + 1))
        a_cap = Signal(range(self._max_burst + 1))

        def to_4k(addr_lo):
            value = Signal(range(full_4k + 1))
            m.d.comb += value.eq((4096 - addr_lo[:12]) >> shift)
            return value

        def cap(to4k):
            return Mux(to4k < self._max_burst, to4k, self._max_burst)

        refuse = Signal()
        m.d.comb += refuse.eq(c_done & (verdict != ErrorCode.NONE))
        with m.If(c_done & ~refuse & ~a_valid):
            beats = c_cmd.inner_bytes >> shift
            m.d.sync += [
                c_done.eq(0),
                a_valid.eq(1),
                a_cur.eq(c_cmd.addr), a_row.eq(c_cmd.addr), a_plane.eq(c_cmd.addr),
                a_rem.eq(beats), a_inner.eq(beats),
                a_i1.eq(c_cmd.count1 - 1), a_i2.eq(c_cmd.count2 - 1), a_count1.eq(c_cmd.count1),
                a_stride1.eq(c_cmd.stride1), a_stride2.eq(c_cmd.stride2),
                a_tag.eq(c_cmd.tag),
            ]
            start_4k = to_4k(c_cmd.addr)
            m.d.sync += [a_to4k.eq(start_4k), a_cap.eq(cap(start_4k))]
        with m.If(refuse):
            m.d.sync += c_done.eq(0)

        # Beats of the next burst: the row's rest, the burst limit, or up to the 4 KiB boundary.
        beats = Signal(range(self._max_burst + 1))
        m.d.comb += beats.eq(Mux(a_rem < a_cap, a_rem, a_cap))
        row_end = Signal()
        m.d.comb += row_end.eq(a_rem <= a_cap)
        # The next a_cur's distance to 4 KiB for each way a_cur moves on (only low bits matter).
        in_row_4k = Signal(range(full_4k + 1))
        m.d.comb += in_row_4k.eq(Mux(a_to4k == a_cap, full_4k, a_to4k - a_cap))
        row_4k = to_4k((a_row[:12] + a_stride1[:12])[:12])
        plane_4k = to_4k((a_plane[:12] + a_stride2[:12])[:12])

        with m.If(a_valid & (~self.burst.valid | self.burst.ready)):
            m.d.sync += [
                self.burst.valid.eq(1),
                self.burst.payload.addr.eq(a_cur),
                self.burst.payload.len.eq(beats - 1),
                self.burst.payload.last.eq(row_end & (a_i1 == 0) & (a_i2 == 0)),
                self.burst.payload.tag.eq(a_tag),
            ]
            with m.If(~row_end):  # beats == a_cap here
                m.d.sync += [a_cur.eq(a_cur + (a_cap << shift)), a_rem.eq(a_rem - a_cap),
                             a_to4k.eq(in_row_4k), a_cap.eq(cap(in_row_4k))]
            with m.Elif(a_i1 != 0):
                m.d.sync += [a_i1.eq(a_i1 - 1), a_row.eq(a_row + a_stride1),
                             a_cur.eq(a_row + a_stride1), a_rem.eq(a_inner),
                             a_to4k.eq(row_4k), a_cap.eq(cap(row_4k))]
            with m.Elif(a_i2 != 0):
                m.d.sync += [a_i2.eq(a_i2 - 1), a_i1.eq(a_count1 - 1), a_plane.eq(a_plane + a_stride2),
                             a_row.eq(a_plane + a_stride2), a_cur.eq(a_plane + a_stride2),
                             a_rem.eq(a_inner), a_to4k.eq(plane_4k), a_cap.eq(cap(plane_4k))]
            with m.Else():
                m.d.sync += a_valid.eq(0)
        with m.Elif(self.burst.valid & self.burst.ready):
            m.d.sync += self.burst.valid.eq(0)

        with m.If(self.abort):
            m.d.sync += [c_busy.eq(0), c_fin.eq(0), c_done.eq(0), a_valid.eq(0)]

        # -- error register: the first cause is kept until clear. ------------------------------------
        with m.If(self.clear):
            m.d.sync += [self.error.eq(0), self.error_code.eq(ErrorCode.NONE), self.error_tag.eq(0)]
        new_code = Signal(ErrorCode)
        new_tag = Signal(self._tag_width)
        with m.If(refuse):
            m.d.comb += [new_code.eq(verdict), new_tag.eq(c_cmd.tag)]
        with m.Elif(self.bus_error):
            m.d.comb += [new_code.eq(ErrorCode.BUS_ERROR), new_tag.eq(self.bus_error_tag)]
        with m.If((new_code != ErrorCode.NONE) & (~self.error | self.clear)):
            m.d.sync += [self.error.eq(1), self.error_code.eq(new_code), self.error_tag.eq(new_tag)]

        m.d.comb += self.busy.eq(c_busy | c_fin | c_done | a_valid | self.burst.valid)
        return m
