"""Windowed average pooling (QLinearAveragePool), bit-exact with ``golden.avg_pool``, in integer logic.

onnxruntime (and ``golden.avg_pool``) works in float32::

    v     = f32(f32(x - zx) * sx)                 per tap (padding: x = zx, so v = +0)
    total = (((0 + v_0) + v_1) + ...)             row-major over the window, each add rounded
    mean  = f32(total / count)                    count = KH*KW, or the taps inside the image
    y     = clamp(rint(f32(f32(mean / sy) + zy)), -128, 127)

Each step is one correctly rounded float32 operation, done exactly here with integer datapaths:
the multiply and the adds reuse :func:`jacquard.rtl.eltwise_add._fma` (``v = fma(x - zx, sx, 0)``,
``total = fma(1, v, total)``, ``fma(zy, 1, q)``), the divisions use a 27-stage restoring divider
(quotient bits plus a remainder sticky, then round-half-even). With ``sx`` and ``sy`` in
``[2^-32, 2^32)`` (else ``error``) every intermediate value is a normal float32: no subnormal or
overflow case exists to get wrong.

One lane datapath serves all ``c_par`` lanes in turn, so a tap takes
``max(c_par, FMA_DEEP_STAGES) + 1`` cycles (the running sum of a lane must leave the adder, a deep
fma, before the lane's next tap enters it), and a window's results (about 90 cycles of latency)
are collected before the next window starts.
Average pooling is rare in the target networks, so the unit is small rather than fast; the int32
global average (``Pool`` in ``SUM`` mode, then the requantizer) is full rate.
A window that covers the whole map without padding is refused: onnxruntime (and the golden model)
computes that case as a global average, which ``Pool``'s ``SUM`` mode does exactly.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .fp32 import FMA_DEEP_STAGES, _decode, _div, _Float, _fma, _Pipe
from .layouts import pixel_layout, tap_layout
from .params import check_int

__all__ = ["AvgPool"]

SCALE_EXP_MIN, SCALE_EXP_MAX = -32, 31
SETTLE = 5  # cycles from a new position or configuration to its registered divisor


class AvgPool(wiring.Component):
    """QLinearAveragePool over the line buffer's depthwise-ordered windows, ``c_par`` lanes per beat.

    Parameters
    ----------
    c_par : int
        Channels per beat (1..64).

    Members
    -------
    i : In(stream.Signature(tap_layout(c_par)))
        Per output position (row-major) and channel tile: the KH*KW taps of the window, padding
        taps holding ``zx`` (the line buffer's depthwise order).
    o : Out(stream.Signature(pixel_layout(c_par)))
        One int8 beat per window.
    sx, sy : In(32)
        float32 bits of the input and output scales.
    zx, zy : In(signed(8))
        Input and output zero points.
    in_h, in_w, out_h, out_w : In(16)
        Input and output map sizes (the output size already reflects ``ceil_mode``).
    kh, kw, stride : In(3)
        Window and stride (1..7, 1..4).
    pad_t, pad_l, pad_b, pad_r : In(3)
        Padding.
    n_tiles : In(16)
        Channel tiles per position (C / c_par).
    count_include_pad : In(1)
        Divide by KH*KW everywhere instead of by the taps inside the image.
    clear : In(1)
        Restarts the position counters and clears a sticky error (between layers only).
    error : Out(1)
        Bad configuration (a scale outside ``[2^-32, 2^32)``, a zero size or kernel, a window
        covering the whole unpadded map) or a framing error (``first``/``last`` not at KH*KW taps,
        sticky). Nothing is accepted while it is set.

    Raises
    ------
    TypeError
        If ``c_par`` is not an int.
    ValueError
        If ``c_par`` is out of range.
    """

    def __init__(self, c_par: int = 8) -> None:
        self._c_par = check_int("c_par", c_par, 1, 64)
        super().__init__({
            "i": In(stream.Signature(tap_layout(c_par))),
            "o": Out(stream.Signature(pixel_layout(c_par))),
            "sx": In(32), "sy": In(32), "zx": In(signed(8)), "zy": In(signed(8)),
            "in_h": In(16), "in_w": In(16), "out_h": In(16), "out_w": In(16),
            "kh": In(3), "kw": In(3), "stride": In(3),
            "pad_t": In(3), "pad_l": In(3), "pad_b": In(3), "pad_r": In(3),
            "n_tiles": In(16), "count_include_pad": In(1),
            "clear": In(1), "error": Out(1),
        })

    @property
    def c_par(self) -> int:
        return self._c_par

    def elaborate(self, platform) -> Module:
        m = Module()
        c_par = self._c_par
        # A tap takes period + 1 cycles (its lanes, then the cycle that takes the next tap). A
        # lane's running sum leaves the accumulating fma FMA_DEEP_STAGES cycles after its operands
        # enter and is in `totals` the cycle after, just in time for the lane's next tap.
        period = max(c_par, FMA_DEEP_STAGES)
        lane_bits = max(1, (c_par - 1).bit_length())
        p = _Pipe(m, Const(1))  # free running: the FSM below only issues work the pipe can finish

        sx, _, _ = _decode(m, self.sx, "sx")
        sy, _, _ = _decode(m, self.sy, "sy")
        scales_ok = ~self.sx[31] & ~self.sy[31]
        for bits in (self.sx, self.sy):
            scales_ok &= (bits[23:31] >= 127 + SCALE_EXP_MIN) & (bits[23:31] <= 127 + SCALE_EXP_MAX)
        whole = (self.kh == self.in_h) & (self.kw == self.in_w) & (self.pad_t == 0) & (self.pad_l == 0) \
            & (self.pad_b == 0) & (self.pad_r == 0)
        cfg_ok = Signal()
        m.d.comb += cfg_ok.eq(scales_ok & ~whole & (self.kh != 0) & (self.kw != 0) & (self.stride != 0)
                              & (self.in_h != 0) & (self.in_w != 0) & (self.out_h != 0)
                              & (self.out_w != 0) & (self.n_tiles != 0))
        # A registered copy for `ready`, so that the tap register's enable comes from registers
        # only; the configuration changes only with `clear`, and `settle` (below) holds the input
        # until this register and the divisor's have caught up. `error` reports the check at once.
        cfg_ok_r = Signal()
        m.d.sync += cfg_ok_r.eq(cfg_ok)
        framing = Signal()
        m.d.comb += self.error.eq(framing | ~cfg_ok)

        # --- window position, and the divisor of the current window ------------------------
        tile = Signal(16)
        ox = Signal(16)
        oy = Signal(16)
        xoff = Signal(20)  # ox * stride
        yoff = Signal(20)

        # The window's divisor in SETTLE registered steps from the position and the configuration:
        # in one cycle, two adds, a compare, a subtract and a 3x3-bit multiply (on a combinational
        # DSP) were the unit's critical path (16.5 ns, 60.7 MHz alone). The position changes only
        # at a window's last tap (the next window waits far longer than SETTLE cycles for this
        # one's results) and at `clear`; `settle` holds the input for SETTLE cycles after either.
        def mul3(a, b):  # a 3x3-bit product in LUTs
            return sum(Mux(a[i], b << i, 0) for i in range(3))

        def span(off, pad, k, size, name):
            # Taps of the window inside the map along one axis: min(off - pad + k, size) - max(off - pad, 0).
            s1 = Signal(signed(21), name=f"{name}_s1")
            s2_end = Signal(signed(22), name=f"{name}_s2_end")
            s2_lo = Signal(3, name=f"{name}_s2_lo")
            s3_hi = Signal(3, name=f"{name}_s3_hi")
            s3_lo = Signal(3, name=f"{name}_s3_lo")
            s4 = Signal(3, name=f"{name}_s4")
            m.d.sync += [
                s1.eq(off - pad),
                s2_end.eq(s1 + k), s2_lo.eq(Mux(s1 > 0, s1, 0)),
                s3_hi.eq(Mux(s2_end < size, s2_end, size)), s3_lo.eq(s2_lo),
                # The span is 1..7 (a window always overlaps the map), so three bits of each
                # operand give its three bits.
                s4.eq(s3_hi - s3_lo),
            ]
            return s4

        ch = span(yoff, self.pad_t, self.kh, self.in_h, "ch")
        cw = span(xoff, self.pad_l, self.kw, self.in_w, "cw")
        khkw = Signal(6)
        khkw_m1 = Signal(6)  # the last tap's index, for the framing check
        m.d.sync += [khkw.eq(mul3(self.kh, self.kw)), khkw_m1.eq(mul3(self.kh, self.kw) - 1)]
        count = Signal(6)
        m.d.sync += count.eq(Mux(self.count_include_pad, khkw, mul3(ch, cw)))
        settle = Signal(range(SETTLE + 1), init=SETTLE)  # also after reset: the steps hold nothing yet
        with m.If(settle != 0):
            m.d.sync += settle.eq(settle - 1)

        # --- tap issue: lane `slot` of the held tap enters the multiplier -----------------------
        tap = Signal(tap_layout(c_par))
        taps_done = Signal(6)  # taps of the current window accepted so far
        slot = Signal(range(period + 1), init=period)  # == period: no tap held
        busy = Signal()  # a window's results are in flight or waiting on `o`
        win_count = Signal(6)
        # The tap index's and the position's verdicts registered from the registered values: the
        # position advances only at a window's last tap, and the first compare (tile + 1 == n_tiles),
        # then the next one, were the path into the counters' enables (11.4 ns). They lag their
        # operands by a cycle, but after a tap is taken the next waits period cycles (and SETTLE
        # after `clear`).
        at_first = Signal()
        at_last = Signal()
        tile_wrap = Signal()
        ox_wrap = Signal()
        oy_wrap = Signal()
        m.d.sync += [at_first.eq(taps_done == 0), at_last.eq(taps_done == khkw_m1),
                     tile_wrap.eq(tile + 1 == self.n_tiles), ox_wrap.eq(ox + 1 == self.out_w),
                     oy_wrap.eq(oy + 1 == self.out_h)]
        m.d.comb += self.i.ready.eq((slot == period) & ~busy & cfg_ok_r & ~framing & (settle == 0))
        with m.If(self.clear):
            m.d.sync += [framing.eq(0), taps_done.eq(0), tile.eq(0), ox.eq(0), oy.eq(0),
                         xoff.eq(0), yoff.eq(0), settle.eq(SETTLE)]
        with m.Elif(self.i.valid & self.i.ready):
            t = self.i.payload
            with m.If((t.first != at_first) | (t.last != at_last)):
                m.d.sync += framing.eq(1)
            with m.Else():
                m.d.sync += [tap.eq(t), slot.eq(0), taps_done.eq(Mux(at_last, 0, taps_done + 1))]
                with m.If(at_first):
                    m.d.sync += win_count.eq(count)
                with m.If(at_last):
                    m.d.sync += [busy.eq(1), settle.eq(SETTLE)]
                    # Advance to the next (position, tile).
                    with m.If(tile_wrap):
                        m.d.sync += tile.eq(0)
                        with m.If(ox_wrap):
                            m.d.sync += [ox.eq(0), xoff.eq(0)]
                            with m.If(oy_wrap):
                                m.d.sync += [oy.eq(0), yoff.eq(0)]
                            with m.Else():
                                m.d.sync += [oy.eq(oy + 1), yoff.eq(yoff + self.stride)]
                        with m.Else():
                            m.d.sync += [ox.eq(ox + 1), xoff.eq(xoff + self.stride)]
                    with m.Else():
                        m.d.sync += tile.eq(tile + 1)
        with m.Elif(slot != period):
            m.d.sync += slot.eq(slot + 1)

        issue = Signal()
        lane = Signal(lane_bits)
        m.d.comb += [issue.eq(slot < c_par), lane.eq(slot)]
        x = Signal(signed(8))
        m.d.comb += x.eq(tap.data.as_value().word_select(lane, 8))
        n = Signal(signed(9))
        m.d.comb += n.eq(x - self.zx)

        # --- v = fma(x - zx, sx, 0) -------------------------------------------------------------
        # x - zx is registered first (the lane select, the subtraction, |n| and the product in
        # one stage were 13 levels); its tag takes the same stage.
        zero_f = _Float(Const(0), Const(0, signed(12)), Const(0, 24), Const(1))
        n_r = p.reg("dq_n", signed(9), n)
        v = _fma(p, n_r, sx, zero_f, "dq", deep=True)
        tag_w = lane_bits + 3
        a_tag = Signal(tag_w)
        m.d.comb += a_tag.eq(Mux(issue, (lane | (tap.first << lane_bits) | (tap.last << (lane_bits + 1))
                                          | (1 << (lane_bits + 2))), 0))
        a_tags = [p.tag("dq_tag_in", tag_w, a_tag)]
        for s in range(FMA_DEEP_STAGES):
            a_tags.append(p.tag(f"dq_tag{s}", tag_w, a_tags[-1]))
        v_tag = a_tags[-1]
        v_lane, v_first = v_tag[:lane_bits], v_tag[lane_bits]

        # --- total = fma(1, v, total[lane]) ------------------------------------------------------
        float_layout = data.StructLayout({"sign": 1, "elsb": signed(12), "mant": 24, "zero": 1})
        # No reset: a window's first tap ignores its lane's total.
        totals = Signal(data.ArrayLayout(float_layout, c_par), reset_less=True)
        prev = totals[v_lane]
        add = _Float(prev.sign, prev.elsb, prev.mant, prev.zero | v_first)
        s_ = _fma(p, Const(1, signed(2)), v, add, "acc", deep=True)
        b_tags = [v_tag]
        for s in range(FMA_DEEP_STAGES):
            b_tags.append(p.tag(f"acc_tag{s}", tag_w, b_tags[-1]))
        s_tag = b_tags[-1]
        s_lane, s_last, s_valid = s_tag[:lane_bits], s_tag[lane_bits + 1], s_tag[lane_bits + 2]
        with m.If(s_valid):
            # Field order of float_layout (a dynamically indexed view takes raw bits only).
            m.d.sync += totals[s_lane].as_value().eq(Cat(s_.sign, s_.elsb, s_.mant, s_.zero))

        # --- mean = total / count; q = mean / sy --------------------------------------------------
        lead = Signal(range(6))
        for b in range(6):
            with m.If(win_count[b]):
                m.d.comb += lead.eq(b)
        cnt = _Float(Const(0), Signal(signed(12), name="cnt_elsb"), Signal(24, name="cnt_mant"), Const(0))
        m.d.comb += [cnt.elsb.eq(lead - 23), cnt.mant.eq((win_count << 23) >> lead)]
        d1_in = {"lane": s_lane, "valid": s_valid & s_last}
        mean, d1_tags = _div(p, s_, cnt, d1_in, "d1")
        q, d2_tags = _div(p, mean, sy, d1_tags, "d2")

        # --- r = fma(zy, 1, q); y = clamp(rint(r)) ------------------------------------------------
        one_f = _Float(Const(0), Const(-23, signed(12)), Const(1 << 23, 24), Const(0))
        r = _fma(p, self.zy, one_f, q, "zp", deep=True)
        tags = d2_tags
        for s in range(FMA_DEEP_STAGES):
            tags = {k: p.tag(f"zp_{k}{s}", len(v_), v_) for k, v_ in tags.items()}
        # Three stages, as in EltwiseAdd (in one, the exponent compare, the shift, the rounding add
        # and the clamp were the core's longest path, 21 levels): rt0 the exponent's range and
        # the shift, rt1 fixed point with 24 fraction bits, then round, saturate and collect.
        elead = r.elsb + 23
        shift = Signal(range(9), name="rt_shift")
        with m.If((elead >= -1) & (elead <= 7)):
            m.d.comb += shift.eq(elead + 1)
        rt0_flush = p.reg("rt0_flush", 1, r.zero | (elead <= -2))
        rt0_sat = p.reg("rt0_sat", 1, elead >= 8)
        rt0_shift = p.reg("rt0_shift", range(9), shift)
        rt0_mant = p.reg("rt0_mant", 24, r.mant)
        rt0_sign = p.reg("rt0_sign", 1, r.sign)
        fixed = Signal(32, name="rt_fixed")
        m.d.comb += fixed.eq(rt0_mant << rt0_shift)
        rt1_whole = p.reg("rt1_whole", 8, fixed[24:])
        rt1_guard = p.reg("rt1_guard", 1, fixed[23])
        rt1_sticky = p.reg("rt1_sticky", 1, fixed[:23].any())
        rt1_flush = p.reg("rt1_flush", 1, rt0_flush)
        rt1_sat = p.reg("rt1_sat", 1, rt0_sat)
        rt1_sign = p.reg("rt1_sign", 1, rt0_sign)
        for s in range(2):
            tags = {k: p.tag(f"rt{s}_{k}", len(v_), v_) for k, v_ in tags.items()}
        # y = +-(whole + inc), clamped. One carry chain: -(w + i) = ~w + ~i in eight bits, which
        # is -128 for w = 127, i = 1; the clamp is known from `whole` alone (w >= 127 for a
        # positive value, w >= 128 for a negative one). The magnitude's add, its negation and the
        # clamp's compares in series before the lane's byte of `o` were three carry chains.
        inc = rt1_guard & (rt1_sticky | rt1_whole[0])
        signed_mag = Signal(8, name="rt_signed_mag")
        m.d.comb += signed_mag.eq((rt1_whole ^ rt1_sign.replicate(8)) + (inc ^ rt1_sign))
        clamp = rt1_sat | Mux(rt1_sign, rt1_whole[7], rt1_whole >= 127)
        y = Mux(rt1_flush, 0, Mux(clamp, Mux(rt1_sign, -128, 127), signed_mag))

        # --- collect the lanes into one output beat ------------------------------------------------
        with m.If(self.o.valid & self.o.ready):
            m.d.sync += [self.o.valid.eq(0), busy.eq(0)]
        with m.If(tags["valid"]):
            m.d.sync += self.o.payload.as_value().word_select(tags["lane"], 8).eq(y)
            with m.If(tags["lane"] == c_par - 1):
                m.d.sync += self.o.valid.eq(1)
        return m
