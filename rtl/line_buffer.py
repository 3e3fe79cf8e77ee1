"""Line buffer and window generator: turns a pixel stream into the PE array's tap stream.

Design
------
Rows memory
    A simple-dual-port ``lib.memory.Memory`` per row slot (``rows`` of them), each of ``row_depth``
    beats of ``c_par`` int8 channels, where ``row_depth = max_width * max_channels // c_par`` and
    ``rows`` is the power of two at or above ``max_kh + 1``. Input row ``y`` lives in slot
    ``y mod rows`` (a circular row buffer), so a slot index is just the low bits of the row
    number. Pixel ``x``, channel tile ``t`` of a row is at ``x * C/c_par + t`` inside its slot:
    any ``W`` and ``C`` with ``W * C/c_par <= row_depth`` fit, so deep narrow layers can use the
    width that shallow wide ones need.

Read schedule
    The taps are emitted in the contract order (for each output position, for each oc tile, for
    ky, for kx, for c_tile; in depthwise mode for c_tile, for ky, for kx) and each tap is one read
    of one beat, so one read port at one read per cycle sustains one tap per cycle; the write port
    takes input beats in the same cycles. No
    multiplier is used at run time: the tap's column address ``(ox*stride - left + kx) * C/c_par
    + t`` is kept in running registers that step by ``C/c_par`` and ``stride * C/c_par``. Padding
    taps (rows or columns outside the map) read nothing and carry the zero point instead.

Flow control
    The writer may fill row ``y`` once the window generator no longer needs the row that slot
    held: ``y < iy0 + rows``, where ``iy0`` is the top input row of the output row being read
    (registered, so the writer sees it one cycle late, which is only conservative). Because
    ``KH <= rows - 1`` the writer can always fill every row the current window needs, plus at
    least one more: the next row is written while the current output row is read. The reader
    starts an output position once the rows it needs are written up to its rightmost column
    (column granularity on the last row, so the last row of a window is read while it is still
    being filled). Both conditions are monotone, so neither side can deadlock the other; input is
    back-pressured only when every slot is in use. Rows below the last window (stride skips) are
    still accepted and dropped, so the whole frame is always consumed.

Latency and output
    ``s0`` is the address generator (window counters), ``s1`` holds the read address, ``s2`` the
    memory's read data, ``s3`` every slot memory's data registered next to it (the block RAM's
    output is slow), ``s4`` the same again (the RAMs are spread over the chip); ``s5`` selects
    the slot, substitutes the zero point for padding taps and writes into a 10-entry
    ``SyncFIFOBuffered`` that drives ``o``. Reads are issued against credits (at most 10 taps
    between ``s0`` and ``o``), so a stalled consumer never stalls the memory pipeline and
    ``o.ready`` reaches only the FIFO and the credit counter. A tap is valid on ``o`` 8 cycles
    after the input beat it needs was accepted; steady state: 1 tap per cycle.

Configuration
    Sampled at ``start`` while idle. A setup step of ``W.bit_length() + 2`` cycles (12 for
    W = 512) checks it, computing ``W * C/c_par`` with a shift-and-add so that no DSP is spent;
    an out-of-range config sets ``error`` and the unit stays idle. ``start`` while busy is
    ignored. Per frame the overhead is this setup plus the fill: the first tap waits for the
    input rows down to its window's bottom row.
"""

import functools
import operator

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from .bram import RegisteredRam
from .layouts import pixel_layout, tap_layout

__all__ = ["LineBuffer", "LineBufferConfig"]

# Taps in flight between the address generator and the output: covers the s0 -> o -> credit
# return loop (8 cycles) so the generator never waits on it while the consumer keeps up.
_CREDITS = 10
# Kernel width bound (the contract's 1..7); the height bound is the ``max_kh`` parameter.
_MAX_KW = 7
_MAX_STRIDE = 4


class LineBufferConfig(data.StructLayout):
    """Run-time parameters of one feature map, sampled at ``start``.

    ``channels`` is C (a multiple of ``c_par``); ``oc_tiles`` is how many times each window is
    repeated for the PE array's output-channel tiles. ``depthwise`` changes the order inside a
    window to for c_tile, for ky, for kx, with ``first``/``last`` around each channel tile's
    KH*KW taps (the PE array's depthwise mode accumulates one channel tile at a time). Fields are
    wider than their legal ranges so that out-of-range values can be seen and refused.
    """

    def __init__(self) -> None:
        super().__init__({
            "width": unsigned(16),
            "height": unsigned(16),
            "channels": unsigned(16),
            "kh": unsigned(4),
            "kw": unsigned(4),
            "stride": unsigned(3),
            "pad_top": unsigned(3),
            "pad_left": unsigned(3),
            "pad_bottom": unsigned(3),
            "pad_right": unsigned(3),
            "zero_point": signed(8),
            "oc_tiles": unsigned(16),
            "depthwise": unsigned(1),
        })


def _mul_small(k, value, width: int):
    # k (3 bits, 0..7) times value by shift-and-add: a 3-input adder, never a DSP.
    return ((Mux(k[0], value, 0) + Mux(k[1], value << 1, 0) + Mux(k[2], value << 2, 0))
            .as_unsigned()[:width])


def _check_parameters(c_par: int, max_width: int, max_channels: int, max_kh: int) -> None:
    for name, value in (("c_par", c_par), ("max_width", max_width), ("max_channels", max_channels),
                        ("max_kh", max_kh)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise TypeError(f"{name} must be an int, not {value!r}")
    if c_par < 1 or c_par & (c_par - 1):
        raise ValueError(f"c_par must be a power of two, not {c_par!r}")
    if not 1 <= max_width <= 0xFFFF:
        raise ValueError(f"max_width must be 1..65535, not {max_width!r}")
    if max_channels < c_par or max_channels % c_par:
        raise ValueError(f"max_channels must be a positive multiple of c_par={c_par}, "
                         f"not {max_channels!r}")
    if not 1 <= max_kh <= 7:
        raise ValueError(f"max_kh must be 1..7, not {max_kh!r}")


class LineBuffer(wiring.Component):
    """Window generator over a circular on-chip row buffer; see the module docstring for the design.

    Parameters
    ----------
    c_par : int
        Channels per beat (a power of two).
    max_width : int
        Widest feature map, in pixels.
    max_channels : int
        Channels of a ``max_width`` row (a multiple of ``c_par``); narrower rows may have more,
        up to ``max_width * max_channels`` channel-pixels per row.
    max_kh : int
        Tallest kernel, 1..7. Sets the number of row slots: the power of two above it.

    Members
    -------
    i : In(stream.Signature(pixel_layout(c_par)))
        Input pixels, for y, for x, for c_tile.
    o : Out(stream.Signature(tap_layout(c_par)))
        Taps: for each output position, for each oc tile, for ky, for kx, for c_tile.
    config : In(LineBufferConfig())
        Run-time parameters, sampled when ``start`` is high while idle.
    start : In(1)
        Start one feature map.
    busy : Out(1)
        High from ``start`` until the last tap has been accepted and the whole input consumed.
    error : Out(1)
        The last ``start`` was refused: its config was out of range. Cleared by the next ``start``.

    Raises
    ------
    TypeError, ValueError
        If a parameter is not an int or is out of range.
    """

    def __init__(self, *, c_par: int = 8, max_width: int = 512, max_channels: int = 64, max_kh: int = 7):
        try:
            _check_parameters(c_par, max_width, max_channels, max_kh)
        except (TypeError, ValueError):
            # A refused component is never elaborated; do not let amaranth warn about that too.
            self._MustUse__silence = True
            raise
        self._c_par = c_par
        self._max_width = max_width
        self._max_channels = max_channels
        self._max_kh = max_kh
        self._rows = 1 << max_kh.bit_length()
        self._row_depth = max_width * max_channels // c_par
        super().__init__({
            "i": In(stream.Signature(pixel_layout(c_par))),
            "o": Out(stream.Signature(tap_layout(c_par))),
            "config": In(LineBufferConfig()),
            "start": In(1),
            "busy": Out(1),
            "error": Out(1),
        })

    @property
    def c_par(self) -> int:
        return self._c_par

    @property
    def max_width(self) -> int:
        return self._max_width

    @property
    def max_channels(self) -> int:
        return self._max_channels

    @property
    def max_kh(self) -> int:
        return self._max_kh

    @property
    def rows(self) -> int:
        """Row slots in the memory."""
        return self._rows

    @property
    def row_depth(self) -> int:
        """Beats per row slot: the bound on ``width * channels / c_par``."""
        return self._row_depth

    def elaborate(self, platform) -> Module:
        m = Module()
        rows, row_depth = self._rows, self._row_depth
        slot_bits = rows.bit_length() - 1
        aw = max(1, (row_depth - 1).bit_length())       # column address bits inside a slot
        xw = self._max_width.bit_length() + 4            # signed column coordinates, with pads
        yw = 16 + 3                                      # signed row coordinates, with pads
        ct_shift = self._c_par.bit_length() - 1

        # One memory per row slot: each maps onto block RAMs side by side with no output mux of
        # its own, and its read data is registered in the RAMs (s3, see RegisteredRam); the slot
        # is selected two stages later. A single deep memory would put yosys' depth mux between
        # the RAMs' slow clock-to-output and the first register, across a chip-wide spread of RAMs.
        banks = []
        for b in range(rows):
            m.submodules[f"rows_mem_{b}"] = ram = RegisteredRam(8 * self._c_par, row_depth)
            banks.append(ram)
        rd_addr = Signal(aw)
        rd_slot = Signal(slot_bits)

        # ---- configuration (latched at start, checked in SETUP) ---------------------------------
        cfg = Signal(LineBufferConfig())
        ct = Signal(16)                     # channel tiles, C / c_par
        mul_a = Signal(32)
        mul_b = Signal(16)
        mul_acc = Signal(32)                # W * ct, for the capacity check

        ct_max = Signal(aw)
        # Each window counter's end (``s0_x == x - 1``) is a register kept with the counter: from
        # the counters through the compares to the window-end enable of the s0 position registers
        # was the chain's critical path (11.1 ns, 90.3 MHz). ``*_m1`` is the value before the end,
        # ``*_single`` says the count is 1 (the counter is always at its end).
        ct_m1, kx_m1, ky_m1, oc_m1 = Signal(aw), Signal(3), Signal(3), Signal(16)
        ct_single, kx_single, ky_single, oc_single = Signal(), Signal(), Signal(), Signal()
        step_ct_col = Signal(aw)            # stride * ct (mod 2^aw)
        col0 = Signal(aw)                   # -left * ct (mod 2^aw): column address of ix0 = -left
        col_limit = Signal(signed(xw))      # last c_need that has a next position to its right
        col_limit2 = Signal(signed(xw))     # col_limit - stride: the position after this one has one too
        # The first window's needs (its bottom row and rightmost column), registered in SETUP:
        # from the configuration straight into the next-need compare and adder they made a
        # 15.0 ns path (the chain's critical path once the smoke top's stimulus drove every bit).
        r_need0 = Signal(signed(yw))
        c_need0 = Signal(signed(xw))
        row_limit = Signal(signed(yw))
        zero_pixel = Signal(pixel_layout(self._c_par))

        # ---- writer state -----------------------------------------------------------------------
        wr_row = Signal(17)
        wr_x = Signal(range(self._max_width + 1))
        wr_ct = Signal(aw)
        # The beat taken now is the last of its pixel / of its row (read by the row-done check
        # and by the write counters).
        wr_px_end, wr_row_end = Signal(), Signal()
        wr_col = Signal(aw)
        wr_limit = Signal(signed(yw + 1))   # rows below this may be written (registered copy)
        wr_all = Signal()
        # The writer's verdict (a row below wr_limit, and not past the frame), registered: from
        # wr_row through the compare to the writer counters' enables and the producer's ready it
        # was the chain's critical path (12.1 ns). It is made for the next row when the beat taken
        # now ends its row, and from a cycle-old wr_limit, which only grows, so it errs safe.
        wr_ok = Signal()

        # ---- s0: window counters ----------------------------------------------------------------
        s0_iy0 = Signal(signed(yw))         # top input row of the output row
        s0_r_need = Signal(signed(yw))      # its bottom row: iy0 + KH - 1
        s0_ix0 = Signal(signed(xw))         # left input column of the output position
        s0_c_need = Signal(signed(xw))      # its right column: ix0 + KW - 1
        s0_pos_col = Signal(aw)             # ix0 * ct (mod 2^aw)
        s0_iy = Signal(signed(yw))
        s0_ix = Signal(signed(xw))
        s0_tap_col = Signal(aw)             # ix * ct (mod 2^aw)
        s0_ct = Signal(aw)
        s0_kx = Signal(3)
        s0_ky = Signal(3)
        s0_oc = Signal(16)
        ct_end, kx_end, ky_end, oc_end = Signal(), Signal(), Signal(), Signal()
        s0_done = Signal()

        inflight = Signal(range(_CREDITS + 1))
        # ``issue`` enables ~150 s0 flops spread over the chip, so it is made from as few registers
        # as possible: ``s0_live`` (in RUN with windows left) and ``full_q`` (inflight ==
        # _CREDITS, kept with it) instead of the state decode, s0_done and a compare (the state
        # through three LUTs into that fan-out was the chain's critical path, 12.6 ns).
        s0_live = Signal()
        full_q = Signal()

        # ---- s1 / s2 pipeline -------------------------------------------------------------------
        s1_valid = Signal()
        s1_pad = Signal()
        s1_first = Signal()
        s1_last = Signal()
        s2_valid = Signal()
        s2_pad = Signal()
        s2_first = Signal()
        s2_last = Signal()

        m.submodules.out_fifo = out_fifo = fifo.SyncFIFOBuffered(
            width=tap_layout(self._c_par).size, depth=_CREDITS)

        cfg_ok = Signal()
        cfg_ok_q = Signal()
        W, H = cfg.width, cfg.height
        m.d.comb += cfg_ok.eq(
            (cfg.kh >= 1) & (cfg.kh <= self._max_kh) & (cfg.kw >= 1) & (cfg.kw <= _MAX_KW)
            & (cfg.stride >= 1) & (cfg.stride <= _MAX_STRIDE)
            & (W >= 1) & (W <= self._max_width) & (H >= 1)
            & (cfg.channels != 0) & (cfg.channels[:ct_shift] == 0 if ct_shift else 1)
            & (cfg.pad_top < cfg.kh) & (cfg.pad_bottom < cfg.kh)
            & (cfg.pad_left < cfg.kw) & (cfg.pad_right < cfg.kw)
            & (H + cfg.pad_top + cfg.pad_bottom >= cfg.kh) & (W + cfg.pad_left + cfg.pad_right >= cfg.kw)
            & (cfg.oc_tiles != 0) & (mul_acc <= row_depth))

        issue = Signal()
        pop = Signal()
        m.d.comb += pop.eq(self.o.valid & self.o.ready)

        # ---- window availability, a cycle ahead ------------------------------------------------
        # A window may be read once its rows are written up to its rightmost column (column
        # granularity on its bottom row, which may still be filling). The compares are registered:
        # straight into ``issue`` they and the enable fan-out over the s0 counters were the routed
        # chain's critical path (10.7 ns). They are made for the current position and for the next
        # one (``nx_*``), and ``moved_q`` says which applies; the writer only moves forward, so its
        # cycle-old state errs on the safe side. The first cycle of a frame waits (``avail_ok``).
        nx_r_need = Signal(signed(yw))
        nx_c_need = Signal(signed(xw))
        # Whether a position has a next one on its row (``c_need <= col_limit``), registered with
        # its need: compared at the s0 advance, it selected the ~100 s0 position registers' inputs
        # through a carry chain and a 2.6 ns fan-out (11.4 ns, the chain's critical path at 87.5 MHz).
        s0_on_row = Signal()
        nx_on_row = Signal()
        c0_on_row = Signal()                # the first position of a row has a next one
        avail_cur = Signal()
        avail_nxt = Signal()
        moved_q = Signal()
        avail_ok = Signal()

        def avail_of(r_need, c_need):
            return wr_all | (wr_row > r_need) | ((wr_row == r_need) & (wr_x > c_need))

        m.d.sync += [avail_cur.eq(avail_of(s0_r_need, s0_c_need)),
                     avail_nxt.eq(avail_of(nx_r_need, nx_c_need)),
                     avail_ok.eq(1), moved_q.eq(0)]
        avail = avail_ok & Mux(moved_q, avail_nxt, avail_cur)

        def next_need(r_need, c_need, on_row):
            """The need of the position after one whose need is (r_need, c_need), and whether
            that one has a next position on its row."""
            return (Mux(on_row, r_need, r_need + cfg.stride),
                    Mux(on_row, c_need + cfg.stride, c_need0),
                    Mux(on_row, c_need <= col_limit2, c0_on_row))

        m.d.sync += wr_ok.eq(0)  # but in RUN
        m.d.comb += issue.eq(s0_live & avail & ~full_q)  # s0_live only in RUN
        with m.FSM(name="ctrl"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [
                        cfg.eq(self.config),
                        ct.eq(self.config.channels >> ct_shift),
                        mul_a.eq(self.config.channels >> ct_shift),
                        mul_b.eq(self.config.width),
                        mul_acc.eq(0),
                        self.error.eq(0),
                    ]
                    m.next = "SETUP"
            with m.State("SETUP"):
                # Derived values are registered while the product is computed, so that neither
                # the range check nor these adders sit in front of the run registers' inputs.
                m.d.comb += self.busy.eq(1)
                m.d.sync += [
                    cfg_ok_q.eq(cfg_ok),
                    ct_max.eq(ct - 1),
                    ct_m1.eq(ct - 2), kx_m1.eq(cfg.kw - 2), ky_m1.eq(cfg.kh - 2), oc_m1.eq(cfg.oc_tiles - 2),
                    ct_single.eq(ct == 1), kx_single.eq(cfg.kw == 1), ky_single.eq(cfg.kh == 1),
                    oc_single.eq(cfg.oc_tiles == 1),
                    step_ct_col.eq(_mul_small(cfg.stride, ct, aw)),
                    col0.eq(0 - _mul_small(cfg.pad_left, ct, aw)),
                    col_limit.eq(W - 1 + cfg.pad_right - cfg.stride),
                    col_limit2.eq(W - 1 + cfg.pad_right - (cfg.stride << 1)),
                    row_limit.eq(H - 1 + cfg.pad_bottom - cfg.stride),
                    r_need0.eq(cfg.kh - 1 - cfg.pad_top), c_need0.eq(cfg.kw - 1 - cfg.pad_left),
                    zero_pixel.eq(Cat(*[cfg.zero_point] * self._c_par)),
                ]
                with m.If(mul_b != 0):
                    m.d.sync += [
                        mul_a.eq(mul_a << 1),
                        mul_b.eq(mul_b >> 1),
                        mul_acc.eq(Mux(mul_b[0], mul_acc + mul_a, mul_acc)),
                    ]
                with m.Else():
                    m.next = "CHECK"
            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                with m.If(~cfg_ok_q):
                    m.d.sync += self.error.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    ix_start = 0 - cfg.pad_left
                    m.d.sync += [
                        wr_row.eq(0), wr_x.eq(0), wr_ct.eq(0), wr_col.eq(0), wr_all.eq(0),
                        wr_limit.eq(rows - cfg.pad_top),
                        s0_iy0.eq(0 - cfg.pad_top), s0_iy.eq(0 - cfg.pad_top),
                        s0_r_need.eq(r_need0),
                        s0_ix0.eq(ix_start), s0_ix.eq(ix_start),
                        s0_c_need.eq(c_need0),
                        s0_pos_col.eq(col0), s0_tap_col.eq(col0),
                        s0_ct.eq(0), s0_kx.eq(0), s0_ky.eq(0), s0_oc.eq(0), s0_done.eq(0), s0_live.eq(1),
                        ct_end.eq(ct_single), kx_end.eq(kx_single), ky_end.eq(ky_single),
                        oc_end.eq(oc_single),
                        avail_ok.eq(0),
                    ]
                    first_on_row = c_need0 <= col_limit
                    nr, nc, non = next_need(r_need0, c_need0, first_on_row)
                    m.d.sync += [nx_r_need.eq(nr), nx_c_need.eq(nc), nx_on_row.eq(non),
                                 s0_on_row.eq(first_on_row), c0_on_row.eq(first_on_row)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += self.busy.eq(1)
                with m.If(s0_done & wr_all & (inflight == 0)):
                    m.next = "IDLE"
                m.d.comb += self.i.ready.eq(wr_ok)
                row_done = self.i.valid & wr_ok & wr_row_end
                m.d.sync += wr_ok.eq(~wr_all & Mux(row_done, (wr_row != H - 1) & (wr_row + 1 < wr_limit),
                                                   wr_row < wr_limit))
                m.d.sync += wr_limit.eq(Mux(s0_done, 1 << 17, s0_iy0 + rows))

        # ---- writer -----------------------------------------------------------------------------
        # The write is registered before it reaches the RAMs (they are spread over the chip):
        # it lands one cycle after the beat is taken, still an edge before the earliest read
        # of it (the reader sees the beat in ``wr_x`` a cycle later, and its read address is
        # registered once more), and overwrites only slots the reader has finished with.
        wq_addr = Signal(aw)
        wq_data = Signal(pixel_layout(self._c_par))
        wq_en = Signal(rows)
        m.d.sync += [
            wq_addr.eq(wr_col), wq_data.eq(self.i.payload),
            wq_en.eq(Mux(self.i.valid & self.i.ready, 1 << wr_row[:slot_bits], 0)),
        ]
        m.d.comb += [
            *(ram.w_addr.eq(wq_addr) for ram in banks),
            *(ram.w_data.eq(wq_data) for ram in banks),
            *(ram.w_en.eq(wq_en[b]) for b, ram in enumerate(banks)),
        ]
        m.d.comb += [wr_px_end.eq(wr_ct == ct_max), wr_row_end.eq(wr_px_end & (wr_x == W - 1))]
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [wr_ct.eq(wr_ct + 1), wr_col.eq(wr_col + 1)]
            with m.If(wr_px_end):
                m.d.sync += [wr_ct.eq(0), wr_x.eq(wr_x + 1)]
                with m.If(wr_row_end):
                    m.d.sync += [wr_x.eq(0), wr_col.eq(0), wr_row.eq(wr_row + 1)]
                    with m.If(wr_row == H - 1):
                        m.d.sync += wr_all.eq(1)

        # ---- s0: address generator --------------------------------------------------------------
        s0_pad = Signal()
        m.d.comb += s0_pad.eq((s0_iy < 0) | (s0_iy >= H) | (s0_ix < 0) | (s0_ix >= W))
        # Loop nest inside one window, innermost first: (c_tile, kx, ky), or (kx, ky, c_tile) in
        # depthwise mode, where the PE array accumulates each channel tile on its own.
        dw = cfg.depthwise
        step_ct = Mux(dw, kx_end & ky_end, 1)
        step_kx = Mux(dw, 1, ct_end)
        step_ky = Mux(dw, kx_end, ct_end & kx_end)
        with m.If(issue):
            m.d.sync += [
                s1_pad.eq(s0_pad),
                s1_first.eq((s0_kx == 0) & (s0_ky == 0) & (dw | (s0_ct == 0))),
                s1_last.eq(kx_end & ky_end & (dw | ct_end)),
                rd_addr.eq(s0_tap_col + s0_ct), rd_slot.eq(s0_iy[:slot_bits]),
            ]
            with m.If(step_ct):
                m.d.sync += [s0_ct.eq(Mux(ct_end, 0, s0_ct + 1)),
                             ct_end.eq(Mux(ct_end, ct_single, s0_ct == ct_m1))]
            with m.If(step_kx):
                m.d.sync += kx_end.eq(Mux(kx_end, kx_single, s0_kx == kx_m1))
                with m.If(kx_end):
                    m.d.sync += [s0_kx.eq(0), s0_ix.eq(s0_ix0), s0_tap_col.eq(s0_pos_col)]
                with m.Else():
                    m.d.sync += [s0_kx.eq(s0_kx + 1), s0_ix.eq(s0_ix + 1), s0_tap_col.eq(s0_tap_col + ct)]
            with m.If(step_ky):
                m.d.sync += ky_end.eq(Mux(ky_end, ky_single, s0_ky == ky_m1))
                with m.If(ky_end):
                    m.d.sync += [s0_ky.eq(0), s0_iy.eq(s0_iy0)]
                with m.Else():
                    m.d.sync += [s0_ky.eq(s0_ky + 1), s0_iy.eq(s0_iy + 1)]
            with m.If(ct_end & kx_end & ky_end):                     # end of one window
                m.d.sync += [s0_oc.eq(s0_oc + 1), oc_end.eq(Mux(oc_end, oc_single, s0_oc == oc_m1))]
                with m.If(oc_end):
                    # The next position's need is already in nx_*: it becomes s0's, and nx_*
                    # moves one further.
                    nr, nc, non = next_need(nx_r_need, nx_c_need, nx_on_row)
                    m.d.sync += [s0_oc.eq(0), moved_q.eq(1), nx_r_need.eq(nr), nx_c_need.eq(nc),
                                 nx_on_row.eq(non), s0_on_row.eq(nx_on_row),
                                 s0_r_need.eq(nx_r_need), s0_c_need.eq(nx_c_need)]
                    with m.If(s0_on_row):                  # next position on this row
                        m.d.sync += [
                            s0_ix0.eq(s0_ix0 + cfg.stride), s0_ix.eq(s0_ix0 + cfg.stride),
                            s0_pos_col.eq(s0_pos_col + step_ct_col),
                            s0_tap_col.eq(s0_pos_col + step_ct_col),
                        ]
                    with m.Else():                         # first position of the next row
                        m.d.sync += [
                            s0_ix0.eq(0 - cfg.pad_left), s0_ix.eq(0 - cfg.pad_left),
                            s0_pos_col.eq(col0), s0_tap_col.eq(col0),
                            s0_iy0.eq(s0_iy0 + cfg.stride), s0_iy.eq(s0_iy0 + cfg.stride),
                        ]
                        with m.If(s0_r_need > row_limit):
                            m.d.sync += [s0_done.eq(1), s0_live.eq(0)]

        # ---- s1: memory read; s2: read data; s3: each bank's data registered; s4: again; s5: the
        # slot's data selected, padding applied, into the FIFO. s3 registers the block RAMs'
        # outputs before any logic: their clock-to-output is most of a 10 ns cycle on ECP5, so
        # s3 must sit next to its RAM; s4 carries the data across the chip-wide spread of RAMs
        # to the select.
        s2_slot = Signal(slot_bits)
        s3_valid = Signal()
        s3_pad = Signal()
        s3_first = Signal()
        s3_last = Signal()
        s3_data = [ram.r_data for ram in banks]  # registered in the RAMs
        s4_valid = Signal()
        s4_first = Signal()
        s4_last = Signal()
        # The select is an AND-OR: each bank's s4 copy is cleared (a synchronous reset, no LUT)
        # unless that bank is the tap's slot, by a select flag registered next to the bank, and
        # s5 ORs the banks. A slot index decoded at s5 fanned out over every bit of the mux.
        s3_sel = [Signal(name=f"s3_sel_{b}") for b in range(rows)]
        # s4_zp and s4_data have no other reset than their select: the core's flush in theirs
        # put a chip-wide net in front of their clear (the 85F SoC's worst path, 22.4 ns).
        s4_zp = Signal(pixel_layout(self._c_par), reset_less=True)  # zero point for a padding tap, else 0
        s4_data = [Signal(pixel_layout(self._c_par), name=f"s4_data_{b}", reset_less=True)
                   for b in range(rows)]
        s5_valid = Signal()
        s5_tap = Signal(tap_layout(self._c_par))
        m.d.sync += [
            s1_valid.eq(issue),
            s2_valid.eq(s1_valid),
            s2_pad.eq(s1_pad),
            s2_first.eq(s1_first),
            s2_last.eq(s1_last),
            s2_slot.eq(rd_slot),
            s3_valid.eq(s2_valid),
            s3_pad.eq(s2_pad),
            s3_first.eq(s2_first),
            s3_last.eq(s2_last),
            s4_valid.eq(s3_valid),
            s4_first.eq(s3_first),
            s4_last.eq(s3_last),
            *(sel.eq(~s2_pad & (s2_slot == b)) for b, sel in enumerate(s3_sel)),
            *(d4.eq(Mux(sel, d3, 0)) for d4, d3, sel in zip(s4_data, s3_data, s3_sel, strict=True)),
            s4_zp.eq(Mux(s3_pad, zero_pixel, 0)),
            s5_valid.eq(s4_valid),
            s5_tap.data.eq(functools.reduce(operator.or_, (d.as_value() for d in (s4_zp, *s4_data)))),
            s5_tap.first.eq(s4_first),
            s5_tap.last.eq(s4_last),
            inflight.eq(inflight + issue - pop),
            full_q.eq(inflight + issue - pop == _CREDITS),
        ]
        m.d.comb += [
            *(ram.r_addr.eq(rd_addr) for ram in banks),
            *(ram.r_en.eq(s1_valid) for ram in banks),
            out_fifo.w_data.eq(s5_tap),
            out_fifo.w_en.eq(s5_valid),
            self.o.payload.eq(out_fifo.r_data),
            self.o.valid.eq(out_fifo.r_rdy),
            out_fifo.r_en.eq(self.o.ready),
        ]
        return m
