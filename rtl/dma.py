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
command's bursts: a checker (two cycles for a 1D command, else two plus one per significant bit
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
        c_idle = ~c_busy & ~c_fin & ~c_done
        m.d.comb += self.cmd.ready.eq(c_idle & ~self.error & ~self.abort & ~self.hold)
        with m.If(self.cmd.valid & self.cmd.ready):
            # A 1D command needs no multiply: its end is final next cycle.
            m.d.sync += [c_busy.eq((cmd.count1 > 1) | (cmd.count2 > 1)),
                         c_fin.eq((cmd.count1 <= 1) & (cmd.count2 <= 1))]
        # The checker's ~200 flops load whenever it is idle, offered a command or not: they are
        # read only once it has one (c_busy, c_fin, c_done), so their enable is made of those three
        # registers. On the handshake it took the owner's valid and the abort and hold inputs (4.1
        # ns of fan-out at the end of a sequencer -> reader path, 14.4 ns, the 25F SoC's critical).
        with m.If(c_idle):
            low = (1 << shift) - 1
            m.d.sync += [
                c_cmd.eq(cmd),
                c_m1.eq(Mux(cmd.count1 == 0, 0, cmd.count1 - 1)),
                c_m2.eq(Mux(cmd.count2 == 0, 0, cmd.count2 - 1)),
                c_s1.eq(cmd.stride1),
                c_s2.eq(cmd.stride2),
                c_end.eq(cmd.addr + cmd.inner_bytes),
                c_param.eq((cmd.inner_bytes == 0) | (cmd.count1 == 0) | (cmd.count2 == 0)),
                c_align.eq(((cmd.addr | cmd.inner_bytes | cmd.stride1 | cmd.stride2) & low) != 0),
            ]
        with m.If(c_busy):
            # The last step is known from the multipliers' bits above bit 0, so the enable of the
            # ~200 multiply flops is the c_busy register itself: their zero test there was the
            # DMA writer's critical path (11.9 ns, mostly the enable's fan-out).
            last_step = (c_m1[1:] == 0) & (c_m2[1:] == 0)
            m.d.sync += [
                c_end.eq(c_end + Mux(c_m1[0], c_s1, 0) + Mux(c_m2[0], c_s2, 0)),
                c_m1.eq(c_m1 >> 1), c_m2.eq(c_m2 >> 1),
                c_s1.eq(c_s1 << 1), c_s2.eq(c_s2 << 1),
                c_busy.eq(~last_step), c_fin.eq(last_step),
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
        # Every choice of the next state is made on flags kept in registers (the current burst
        # ends its row, no rows or planes left), and the next row's and plane's start addresses
        # and burst limits are computed a row ahead, so the cycle that issues a burst selects
        # among registered values: a compare of the beats left with the burst limit (a carry
        # chain) driving the ~250 next-state selects was the DMA writer's critical path (12.8 ns).
        lmb = exact_log2(self._max_burst)
        hi_bits = 12 - shift - lmb  # beat-address bits above the burst size, below 4 KiB
        small = lmb + 2             # bits that hold any sum of two burst limits
        a_valid = Signal()
        a_valid_n = Signal()        # a_valid's next value
        m.d.comb += a_valid_n.eq(a_valid)
        a_cur = Signal(aw)          # address of the next burst
        a_rem = Signal(beat_bits)   # beats left in the current row
        a_remhz = Signal()          # a_rem < 2**small
        a_cap = Signal(range(self._max_burst + 1))  # max_burst, or fewer to 4 KiB from a_cur
        a_end = Signal()            # a_rem <= a_cap: the next burst ends its row
        a_ncap = Signal.like(a_cap)  # the limit after a full burst from a_cur (see ncap)
        a_capsum = Signal(range(2 * self._max_burst + 1))  # a_cap + a_ncap
        a_row_nx = Signal(aw)       # start of the next row of this plane
        a_rcap = Signal.like(a_cap)  # and its burst limit
        a_rncap = Signal.like(a_cap)
        a_plane_nx = Signal(aw)     # start of the next plane
        a_pcap = Signal.like(a_cap)
        a_pncap = Signal.like(a_cap)
        a_i1 = Signal(COUNT_BITS)   # rows left in this plane after the current one
        a_i1z = Signal()            # a_i1 == 0
        a_i2 = Signal(COUNT_BITS)   # planes left after the current one
        a_i2z = Signal()
        a_inner = Signal(beat_bits)
        a_innerhz = Signal()        # a_inner < 2**small
        a_count1m1 = Signal(COUNT_BITS)
        a_c1z = Signal()            # count1 == 1
        a_stride1 = Signal(aw)
        a_stride2 = Signal(aw)
        a_tag = Signal(self._tag_width)

        def cap(addr_lo):
            # min(beats to 4 KiB, max_burst) from an address's low 12 bits without subtracting the
            # offset from 4096: the boundary is nearer than max_burst only when the beat offset's
            # bits above the burst size are all ones, and then it is max_burst minus its low bits.
            # (4096 - addr and its compare with max_burst, after the row's address add, were the
            # DMA writer's critical path: 3 carry chains, 11.1 ns, 89.9 MHz alone on the 85F.)
            low = addr_lo[shift:shift + lmb]
            near = addr_lo[shift + lmb:12].all() if hi_bits else 1
            value = Signal.like(a_cap)
            m.d.comb += value.eq(Mux(near, self._max_burst - low, self._max_burst))
            return value

        def ncap(addr_lo):
            # cap(addr + cap(addr) beats): the 4 KiB boundary is nearer than max_burst after one
            # full burst only when the bits above the burst size are all ones but one.
            low = addr_lo[shift:shift + lmb]
            value = Signal.like(a_cap)
            if hi_bits:
                near = addr_lo[shift + lmb:12] == (1 << hi_bits) - 2
                m.d.comb += value.eq(Mux(near, self._max_burst - low, self._max_burst))
            else:  # a boundary at every max_burst beats: after a full burst a_cur sits on one
                m.d.comb += value.eq(self._max_burst)
            return value

        def fits(rem, remhz, limit):
            # rem <= limit for a limit below 2**small, with rem's high bits' zero test registered.
            return remhz & (rem[:small] <= limit)

        refuse = Signal()
        m.d.comb += refuse.eq(c_done & (verdict != ErrorCode.NONE))
        # The hand-over's values, registered from c_cmd while the checker decides (c_cmd is stable
        # from its first cycle, the checker takes two or more): the first burst limit and its
        # compare with the row were in series with the hand-over's selects (10.3 ns).
        h_beats = c_cmd.inner_bytes >> shift
        h_beats_hz = Signal()
        h_cap = Signal.like(a_cap)
        h_end = Signal()
        h_row_nx = Signal(aw)
        h_rcap = Signal.like(a_cap)
        h_plane_nx = Signal(aw)
        h_pcap = Signal.like(a_cap)
        h_ncap = Signal.like(a_cap)
        h_capsum = Signal.like(a_capsum)
        h_rncap = Signal.like(a_cap)
        h_pncap = Signal.like(a_cap)
        first_cap = cap(c_cmd.addr[:12])
        row_nx = c_cmd.addr + c_cmd.stride1
        plane_nx = c_cmd.addr + c_cmd.stride2
        m.d.sync += [
            h_beats_hz.eq((h_beats >> small) == 0),
            h_cap.eq(first_cap), h_end.eq(h_beats <= first_cap),
            h_ncap.eq(ncap(c_cmd.addr[:12])), h_capsum.eq(first_cap + ncap(c_cmd.addr[:12])),
            h_row_nx.eq(row_nx), h_rcap.eq(cap(row_nx[:12])), h_rncap.eq(ncap(row_nx[:12])),
            h_plane_nx.eq(plane_nx), h_pcap.eq(cap(plane_nx[:12])), h_pncap.eq(ncap(plane_nx[:12])),
        ]
        with m.If(c_done & ~refuse & ~a_valid):
            m.d.comb += a_valid_n.eq(1)
            m.d.sync += [
                c_done.eq(0),
                a_cur.eq(c_cmd.addr), a_rem.eq(h_beats), a_remhz.eq(h_beats_hz), a_cap.eq(h_cap),
                a_end.eq(h_end), a_ncap.eq(h_ncap), a_capsum.eq(h_capsum),
                a_row_nx.eq(h_row_nx), a_rcap.eq(h_rcap), a_rncap.eq(h_rncap),
                a_plane_nx.eq(h_plane_nx), a_pcap.eq(h_pcap), a_pncap.eq(h_pncap),
                a_i1.eq(c_cmd.count1 - 1), a_i1z.eq(c_cmd.count1 == 1),
                a_i2.eq(c_cmd.count2 - 1), a_i2z.eq(c_cmd.count2 == 1),
                a_inner.eq(h_beats), a_innerhz.eq(h_beats_hz),
                a_count1m1.eq(c_cmd.count1 - 1), a_c1z.eq(c_cmd.count1 == 1),
                a_stride1.eq(c_cmd.stride1), a_stride2.eq(c_cmd.stride2),
                a_tag.eq(c_cmd.tag),
            ]
        with m.If(refuse):
            m.d.sync += c_done.eq(0)

        # The generator issues into the output register, or into a skid register while the output
        # is held, so that its flops advance on `issue` (registers only) rather than on the
        # owner's `ready`: AWREADY and the writer's queue room fanned out to them were the DMA
        # writer's critical path (12.2 ns). A full skid stops the generator; the output takes the
        # skid's burst next, so a stall costs no cycle once `ready` returns.
        s_valid = Signal()
        s_valid_n = Signal()
        m.d.comb += s_valid_n.eq(s_valid)
        s_burst = Signal.like(self.burst.payload)
        new = Signal.like(self.burst.payload)
        m.d.comb += [
            new.addr.eq(a_cur),
            new.len.eq(Mux(a_end, a_rem[:lmb + 1], a_cap) - 1),  # beats: the row's rest or the limit
            new.last.eq(a_end & a_i1z & a_i2z),
            new.tag.eq(a_tag),
        ]
        # issue == a_valid & ~s_valid, kept in a register of its own: it enables ~300 flops, and a
        # LUT in front of that fan-out was the DMA reader's critical path (9.8 ns).
        issue = Signal()
        m.d.sync += [a_valid.eq(a_valid_n), s_valid.eq(s_valid_n), issue.eq(a_valid_n & ~s_valid_n)]
        with m.If(~self.burst.valid | self.burst.ready):
            with m.If(s_valid):
                m.d.sync += [self.burst.valid.eq(1), self.burst.payload.eq(s_burst)]
                m.d.comb += s_valid_n.eq(0)
            with m.Elif(issue):
                m.d.sync += [self.burst.valid.eq(1), self.burst.payload.eq(new)]
            with m.Else():
                m.d.sync += self.burst.valid.eq(0)
        with m.Elif(issue):
            m.d.sync += s_burst.eq(new)
            m.d.comb += s_valid_n.eq(1)

        # The next burst within the row: a full burst was issued (a_end is 0), so a_cap becomes
        # a_ncap, and the limit after that is found the same way: either a_cur reached 4 KiB
        # (a_cap < max_burst) and it is max_burst, or a_cur moves by max_burst beats, which keeps
        # its low bits and adds one to the bits above them.
        in_row_ncap = Signal.like(a_cap)
        if hi_bits:
            near_2nd = a_cur[shift + lmb:12] == ((1 << hi_bits) - 3) % (1 << hi_bits)
            m.d.comb += in_row_ncap.eq(Mux((a_cap == self._max_burst) & near_2nd,
                                           self._max_burst - a_cur[shift:shift + lmb], self._max_burst))
        else:
            m.d.comb += in_row_ncap.eq(self._max_burst)
        in_row_rem = a_rem - a_cap

        def start_row(start, cap_, ncap_):
            """The registers of a new row at ``start`` whose limits ``cap_``/``ncap_`` are ready."""
            return [a_cur.eq(start), a_rem.eq(a_inner), a_remhz.eq(a_innerhz), a_cap.eq(cap_),
                    a_ncap.eq(ncap_), a_capsum.eq(cap_ + ncap_), a_end.eq(fits(a_inner, a_innerhz, cap_))]

        with m.If(issue):
            with m.If(~a_end):
                m.d.sync += [
                    a_cur.eq(a_cur + (a_cap << shift)), a_rem.eq(in_row_rem),
                    a_remhz.eq((in_row_rem >> small) == 0),
                    a_cap.eq(a_ncap), a_ncap.eq(in_row_ncap), a_capsum.eq(a_ncap + in_row_ncap),
                    # a_rem - a_cap <= a_ncap, with no carry chain in series but the compare's
                    a_end.eq(fits(a_rem, a_remhz, a_capsum)),
                ]
            with m.Elif(~a_i1z):
                row_nx = a_row_nx + a_stride1
                m.d.sync += [
                    *start_row(a_row_nx, a_rcap, a_rncap),
                    a_row_nx.eq(row_nx), a_rcap.eq(cap(row_nx[:12])), a_rncap.eq(ncap(row_nx[:12])),
                    a_i1.eq(a_i1 - 1), a_i1z.eq(a_i1 == 1),
                ]
            with m.Elif(~a_i2z):
                row_nx = a_plane_nx + a_stride1
                plane_nx = a_plane_nx + a_stride2
                m.d.sync += [
                    *start_row(a_plane_nx, a_pcap, a_pncap),
                    a_row_nx.eq(row_nx), a_rcap.eq(cap(row_nx[:12])), a_rncap.eq(ncap(row_nx[:12])),
                    a_plane_nx.eq(plane_nx), a_pcap.eq(cap(plane_nx[:12])),
                    a_pncap.eq(ncap(plane_nx[:12])),
                    a_i1.eq(a_count1m1), a_i1z.eq(a_c1z),
                    a_i2.eq(a_i2 - 1), a_i2z.eq(a_i2 == 1),
                ]
            with m.Else():
                m.d.comb += a_valid_n.eq(0)

        with m.If(self.abort):
            # The skid's burst was never offered: it goes with the rest of the command.
            m.d.sync += [c_busy.eq(0), c_fin.eq(0), c_done.eq(0)]
            m.d.comb += [a_valid_n.eq(0), s_valid_n.eq(0)]

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

        m.d.comb += self.busy.eq(c_busy | c_fin | c_done | a_valid | s_valid | self.burst.valid)
        return m
