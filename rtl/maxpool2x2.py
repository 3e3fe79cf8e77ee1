"""Fused 2x2 / stride 2 max pooling on the post-processor's output stream, with one row buffer.

Input beats arrive position-major and oc-tile-minor (for y, for x, for oc tile), ``oc_par`` int8
channels each. The output is ONNX ``MaxPool(kernel 2, stride 2, no padding, floor mode)`` in the
same order: for each output position ``(oy, ox)``, for each oc tile. An odd last column or an odd
last row is consumed and dropped, as floor mode does.

One memory entry per (column pair, oc tile) holds a partial maximum. For an input beat at
``(y, x, t)`` with ``a = (x // 2) * n_oc_tiles + t``:

==========  ===========  ======================================
row y       column x     action
==========  ===========  ======================================
even        even         ``buf[a] = v``
even        odd          ``buf[a] = max(buf[a], v)``
odd         even         ``buf[a] = max(buf[a], v)``
odd         odd          emit ``max(buf[a], v)``
==========  ===========  ======================================

The read of ``buf[a]`` is issued when the beat is taken (``s1``), registered (``s2``), and the new
maximum is written back from ``s3``. The same entry is touched again ``n_oc_tiles`` beats later
(the very next beat when ``n_oc_tiles == 1``): the writes of the two beats ahead are forwarded,
older ones are seen through the read port's transparency. So the unit takes one beat per cycle.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from jacquard.rtl.bram import RegisteredRam
from jacquard.rtl.layouts import out_layout

__all__ = ["MaxPool2x2"]


class MaxPool2x2(wiring.Component):
    """2x2 / stride 2 max pooling of an ``out_layout(oc_par)`` stream.

    Parameters
    ----------
    oc_par : int
        Channels per beat.
    max_width : int
        Largest input row width (pixels).
    max_oc_tiles : int
        Largest number of oc tiles per pixel.
    buffer_depth : int
        Row buffer entries (``oc_par`` int8 each); a layer needs ``(width // 2) * n_oc_tiles``.

    Members
    -------
    i : In(stream.Signature(out_layout(oc_par)))
        Input feature map, for y, for x, for oc tile.
    o : Out(stream.Signature(out_layout(oc_par)))
        Pooled feature map in the same order.
    start : In(1)
        Pulse: sample ``width`` and ``n_oc_tiles`` and begin a feature map at (0, 0, 0). The
        configuration is checked over the next cycles; ``error`` is valid :attr:`check_cycles`
        cycles after ``start``.
    width : In(range(max_width + 1))
        Input width W, 2..``max_width``.
    n_oc_tiles : In(range(max_oc_tiles + 1))
        oc tiles per pixel, 1..``max_oc_tiles``.
    busy : Out(1)
        A beat is inside the unit or waiting on ``o``.
    error : Out(1)
        The configuration was refused (W or ``n_oc_tiles`` out of range, the row does not fit
        the buffer, or ``start`` while busy); nothing is taken until the next good ``start``.

    Raises
    ------
    ValueError
        If a parameter is not a positive integer (``max_width`` at least 2).
    """

    def __init__(self, oc_par: int = 16, max_width: int = 512, max_oc_tiles: int = 64,
                 buffer_depth: int = 2048):
        for name, value, least in [("oc_par", oc_par, 1), ("max_width", max_width, 2),
                                   ("max_oc_tiles", max_oc_tiles, 1), ("buffer_depth", buffer_depth, 1)]:
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, not {value!r}")
        self._oc_par = oc_par
        self._max_width = max_width
        self._max_oc_tiles = max_oc_tiles
        self._depth = buffer_depth
        super().__init__({
            "i": In(stream.Signature(out_layout(oc_par))),
            "o": Out(stream.Signature(out_layout(oc_par))),
            "start": In(1),
            "width": In(range(max_width + 1)),
            "n_oc_tiles": In(range(max_oc_tiles + 1)),
            "busy": Out(1),
            "error": Out(1),
        })

    @property
    def oc_par(self) -> int:
        return self._oc_par

    @property
    def check_cycles(self) -> int:
        """Cycles from ``start`` until ``error`` (and ``i.ready``) say whether the configuration is
        refused, at most: the row-size product takes a cycle per bit of ``n_oc_tiles``."""
        return 3 + max(1, self._max_oc_tiles.bit_length())

    def elaborate(self, platform) -> Module:
        m = Module()
        layout = out_layout(self._oc_par)
        # Read data registered in the block RAMs (their clock-to-output is about 5.8 ns): the
        # word read when a beat is taken arrives with the beat in s2.
        m.submodules.buf = buf = RegisteredRam(layout.size, self._depth)

        # Configuration and position counters.
        running = Signal()
        last_x = Signal(range(self._max_width))
        last_t = Signal(range(self._max_oc_tiles))
        x = Signal(range(self._max_width))
        t = Signal(range(self._max_oc_tiles))
        odd_row = Signal()
        addr = Signal(range(self._depth))

        en = Signal()
        m.d.comb += [
            en.eq(~self.o.valid | self.o.ready),
            self.i.ready.eq(running & en),
        ]
        take = self.i.valid & self.i.ready
        m.d.comb += [buf.r_addr.eq(addr), buf.r_en.eq(en), buf.r_oe.eq(en)]

        # s1: the beat taken last cycle, next to its entry's partial maximum.
        s1_valid = Signal()
        # The beats' data (s1_v .. s4_data, s2_fwd_data) have no reset: read under the valid
        # and write flags only, so the core's flush does not fan out into them.
        s1_v = Signal(layout, reset_less=True)
        s1_addr = Signal(range(self._depth))
        s1_first = Signal()
        s1_emit = Signal()
        s1_drop = Signal()
        with m.If(en):
            m.d.sync += [
                s1_valid.eq(take),
                s1_v.eq(self.i.payload),
                s1_addr.eq(addr),
                s1_first.eq(~odd_row & ~x[0]),
                s1_emit.eq(odd_row & x[0]),
                # An odd width leaves a last column without a partner.
                s1_drop.eq(~x[0] & (x == last_x)),
            ]

        with m.If(take):
            m.d.sync += t.eq(t + 1)
            with m.If(t == last_t):
                m.d.sync += [t.eq(0), x.eq(x + 1)]
                # Even column: the odd one revisits the same entries; odd column: next pair.
                with m.If(~x[0]):
                    m.d.sync += addr.eq(addr - last_t)
                with m.Else():
                    m.d.sync += addr.eq(addr + 1)
                with m.If(x == last_x):
                    m.d.sync += [x.eq(0), addr.eq(0), odd_row.eq(~odd_row)]
            with m.Else():
                m.d.sync += addr.eq(addr + 1)

        # s2: the partial maximum, from the RAM's registered output or forwarded; s3: the new
        # maximum registered and written (the block RAMs' data inputs are far apart). The beats
        # one and two ahead (in s2 and s3 while this one is in s1) write their entries after this
        # one's read, and the beat three ahead (s4: written in the cycle of this read) collides
        # with it; their data is forwarded (the newer wins), chosen in s1 and registered with the
        # beat so that no logic follows the RAM's output. Older writes are in the RAM.
        s2_valid = Signal()
        s2_v = Signal(layout, reset_less=True)
        s2_held = Signal(layout)
        s2_addr = Signal(range(self._depth))
        s2_first = Signal()
        s2_emit = Signal()
        s2_drop = Signal()
        s2_writes = Signal()
        pooled = Signal(layout)
        for lane in range(self._oc_par):
            held, new = s2_held[lane], s2_v[lane]
            m.d.comb += pooled[lane].eq(Mux(s2_first | (new > held), new, held))
        m.d.comb += s2_writes.eq(s2_valid & ~s2_emit & ~s2_drop)
        s3_writes = Signal()
        s3_addr = Signal(range(self._depth))
        s3_data = Signal(layout, reset_less=True)
        s4_writes = Signal()
        s4_addr = Signal(range(self._depth))
        s4_data = Signal(layout, reset_less=True)
        s2_fwd = Signal()
        s2_fwd_data = Signal(layout, reset_less=True)
        hit2 = s2_writes & (s2_addr == s1_addr)
        hit3 = s3_writes & (s3_addr == s1_addr)
        hit4 = s4_writes & (s4_addr == s1_addr)
        m.d.comb += s2_held.eq(Mux(s2_fwd, s2_fwd_data, buf.r_data))
        with m.If(en):
            m.d.sync += [
                s2_valid.eq(s1_valid), s2_v.eq(s1_v), s2_addr.eq(s1_addr),
                s2_fwd.eq(hit2 | hit3 | hit4),
                s2_fwd_data.eq(Mux(hit2, pooled, Mux(hit3, s3_data, s4_data))),
                s4_writes.eq(s3_writes), s4_addr.eq(s3_addr), s4_data.eq(s3_data),
                s2_first.eq(s1_first), s2_emit.eq(s1_emit), s2_drop.eq(s1_drop),
                s3_writes.eq(s2_writes), s3_addr.eq(s2_addr), s3_data.eq(pooled),
            ]
        m.d.comb += [
            buf.w_addr.eq(s3_addr),
            buf.w_data.eq(s3_data),
            buf.w_en.eq(en & s3_writes),
        ]
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)
        with m.If(en & s2_valid & s2_emit):
            m.d.sync += [self.o.payload.eq(pooled), self.o.valid.eq(1)]

        m.d.comb += self.busy.eq(s1_valid | s2_valid | s3_writes | self.o.valid)
        # The configuration is checked from registers after start (the row-size product takes a
        # cycle per bit of n_oc_tiles); nothing is taken meanwhile.
        width = Signal.like(self.width)
        n_oc_tiles = Signal.like(self.n_oc_tiles)
        checking = Signal(2)
        refused = Signal()
        entries = Signal(range(self._max_width * self._max_oc_tiles + 1))
        with m.If(self.start):
            m.d.sync += [
                width.eq(self.width), n_oc_tiles.eq(self.n_oc_tiles),
                checking.eq(0b01), refused.eq(self.busy), running.eq(0), self.error.eq(0),
                x.eq(0), t.eq(0), odd_row.eq(0), addr.eq(0),
            ]
        # entries = (W // 2) * n_oc_tiles by shift-and-add, one bit of n_oc_tiles a cycle (at most
        # 7 cycles, long before a fused layer's first beat): the product in one cycle was a
        # combinational DSP far from its operands (17.1 ns on the 85F SoC).
        multiplying = Signal()
        m_n = Signal.like(n_oc_tiles)
        m_w = Signal.like(entries)
        with m.If(checking[0]):
            m.d.sync += [entries.eq(0), m_n.eq(n_oc_tiles), m_w.eq(width[1:]), multiplying.eq(1),
                         checking.eq(0)]
        with m.If(multiplying):
            with m.If(m_n[0]):
                m.d.sync += entries.eq(entries + m_w)
            m.d.sync += [m_n.eq(m_n >> 1), m_w.eq(m_w << 1)]
            with m.If(m_n[1:] == 0):
                m.d.sync += [multiplying.eq(0), checking.eq(0b10)]
        with m.If(self.start):
            m.d.sync += multiplying.eq(0)
        with m.If(checking[1]):
            bad = ((width < 2) | (width > self._max_width) | (n_oc_tiles == 0) |
                   (n_oc_tiles > self._max_oc_tiles) | (entries > self._depth) | refused)
            m.d.sync += [
                checking.eq(0), running.eq(~bad), self.error.eq(bad),
                last_x.eq(width - 1), last_t.eq(n_oc_tiles - 1),
            ]
        return m
