"""Exact float32 requantizer: ``y = clamp(round_half_even(f32(acc) * M) + zy, lo, hi)`` in integer logic.

It is bit-exact with onnxruntime's int8 QLinearConv requantization (float32 multiply, then
round-half-even to an integer) for every int32 ``acc`` and every finite float32 ``M``, including
zero, denormal (exactly zero output, see :mod:`jacquard.rtl.fp32`), negative, tiny and huge
multipliers. ``M`` = inf or NaN is refused with ``o_invalid``. The stages mirror the NumPy model in
:mod:`jacquard.rtl.fp32` one for one; the reasoning for exactness is written there.

Pipeline, 15 registered stages (``LATENCY``), one result per cycle:

====  ==========================================================================
s1    sign and magnitude of ``acc``; decode ``M``'s fields
s2    leading-zero count of the magnitude (tree)
s3    normalize (barrel shift)
s4    round to a 24-bit significand (RNE): ``f32(acc)``
s5    four partial products (18/6-bit split), two cycles: three 18x18 DSP multipliers with their
      own operand and product registers, the 6x6 one in LUTs
s6    sum of the cross terms
s7    48-bit significand product
s8    normalize the product, guard and sticky bits
s9    round to 24 bits (RNE): ``f32(f32(acc) * M)``
s10   exponent range check: shift amount (0..8), saturate/flush flags
s11   fixed-point shift (24 fraction bits), guard and sticky bits
s12   round half to even to an integer; sign
s13   add the zero point
s14   clamp
====  ==========================================================================
"""

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from jacquard.rtl.dsp import registered_product
from jacquard.rtl.fp32 import SAT_MAGNITUDE, _leading_zeros, _Pipe

__all__ = ["RequantInLayout", "RequantPipe", "Requantizer"]


class RequantInLayout(data.StructLayout):
    """One value to requantize: the int32 accumulator (bias included) and the float32 bits of ``M``."""

    def __init__(self) -> None:
        super().__init__({"acc": signed(32), "multiplier": unsigned(32)})


class RequantPipe(wiring.Component):
    """The requantizer datapath without handshake: every stage advances when ``en`` is high.

    Stream wrappers (:class:`Requantizer`, the post-processor) track which stages hold valid
    data; this keeps several lanes in lock step with one enable.

    Members
    -------
    en : In(1)
        Advance every stage by one.
    i_acc : In(signed(32))
        Accumulator, sampled into ``s1`` when ``en`` is high.
    i_multiplier : In(32)
        float32 bit pattern of ``M``, sampled with ``i_acc``.
    zero_point, lo, hi : In(signed(8))
        Output zero point and clamp bounds (``lo <= hi``), used in ``s13`` and ``s14``; hold them steady while
        values are in flight.
    o_y : Out(signed(8))
        Result, ``LATENCY`` enabled cycles after its inputs.
    o_invalid : Out(1)
        The result's ``M`` was inf or NaN: ``o_y`` is meaningless.
    """

    LATENCY = 15

    en: In(1)
    i_acc: In(signed(32))
    i_multiplier: In(32)
    zero_point: In(signed(8))
    lo: In(signed(8))
    hi: In(signed(8))
    o_y: Out(signed(8))
    o_invalid: Out(1)

    def elaborate(self, platform) -> Module:
        m = Module()

        # Data registers without reset (_Pipe.reg): the stages are read only under the owner's
        # valid bits.
        reg = _Pipe(m, self.en).reg

        # s1: sign and magnitude; -INT32_MIN = 2^31 still fits 32 unsigned bits.
        acc, mult = self.i_acc, self.i_multiplier
        s1_sign_a = reg("s1_sign_a", 1, acc[31])
        s1_mag = reg("s1_mag", 32, Mux(acc[31], -acc, acc)[:32])
        biased = mult[23:31]
        s1_sign_m = reg("s1_sign_m", 1, mult[31])
        s1_exp_m = reg("s1_exp_m", signed(10), biased - 127)
        s1_mant_m = reg("s1_mant_m", 24, Cat(mult[:23], 1))
        # Zero and denormal M: the product is below 2^-95, so the integer result is exactly 0.
        s1_zero_m = reg("s1_zero_m", 1, biased == 0)
        s1_invalid = reg("s1_invalid", 1, biased == 0xFF)

        # s2: leading zeros.
        mag_zero, lz = _leading_zeros(m, s1_mag, "s2")
        s2_lz = reg("s2_lz", range(32), lz)
        s2_zero = reg("s2_zero", 1, (s1_zero_m | mag_zero))
        s2_mag = reg("s2_mag", 32, s1_mag)
        s2_sign = reg("s2_sign", 1, s1_sign_a ^ s1_sign_m)
        s2_exp_m = reg("s2_exp_m", signed(10), s1_exp_m)
        s2_mant_m = reg("s2_mant_m", 24, s1_mant_m)
        s2_invalid = reg("s2_invalid", 1, s1_invalid)

        # s3: normalize so the leading one is bit 31; fold the exponents together.
        s3_norm = reg("s3_norm", 32, (s2_mag << s2_lz)[:32])
        s3_exp = reg("s3_exp", signed(10), s2_exp_m + 31 - s2_lz)
        s3_zero = reg("s3_zero", 1, s2_zero)
        s3_sign = reg("s3_sign", 1, s2_sign)
        s3_mant_m = reg("s3_mant_m", 24, s2_mant_m)
        s3_invalid = reg("s3_invalid", 1, s2_invalid)

        # s4: f32(acc): keep 24 bits; RNE on guard bit 7 and sticky bits 6..0.
        lsb, guard, sticky = s3_norm[8], s3_norm[7], s3_norm[:7].any()
        rounded = Signal(25, name="s4_rounded")
        m.d.comb += rounded.eq(s3_norm[8:] + (guard & (sticky | lsb)))
        # A carry out of the rounding leaves 2^24: renormalize to 2^23 and bump the exponent.
        s4_mant_a = reg("s4_mant_a", 24, Mux(rounded[24], 1 << 23, rounded[:24]))
        s4_exp = reg("s4_exp", signed(10), s3_exp + rounded[24])
        s4_zero = reg("s4_zero", 1, s3_zero)
        s4_sign = reg("s4_sign", 1, s3_sign)
        s4_mant_m = reg("s4_mant_m", 24, s3_mant_m)
        s4_invalid = reg("s4_invalid", 1, s3_invalid)

        # s5 (two cycles): partial products; each operand splits into 18 low and 6 high bits. The
        # three DSP multiplies register their operands and their product inside the DSP block
        # (the routing to a DSP row and the multiply each get a cycle); the rest waits in s4b.
        a_lo, a_hi = s4_mant_a[:18], s4_mant_a[18:]
        m_lo, m_hi = s4_mant_m[:18], s4_mant_m[18:]
        s5_ll = registered_product(m, platform, a_lo, m_lo, "s5_ll", en=self.en)
        s5_lh = registered_product(m, platform, a_lo, m_hi, "s5_lh", en=self.en)
        s5_hl = registered_product(m, platform, a_hi, m_lo, "s5_hl", en=self.en)
        # 6x6 bits: shift-and-add in LUTs (about 40) rather than a whole 18x18 DSP block, three
        # terms a cycle (six in one cycle were the routed chain's critical path, 10.7 ns).
        s4b_hh = [reg(f"s4b_hh{h}", 12, sum(Mux(a_hi[k], m_hi << k, 0) for k in range(3 * h, 3 * h + 3)))
                  for h in range(2)]
        s5_hh = reg("s5_hh", 12, s4b_hh[0] + s4b_hh[1])
        s5_exp = reg("s5_exp", signed(10), reg("s4b_exp", signed(10), s4_exp))
        s5_zero = reg("s5_zero", 1, reg("s4b_zero", 1, s4_zero))
        s5_sign = reg("s5_sign", 1, reg("s4b_sign", 1, s4_sign))
        s5_invalid = reg("s5_invalid", 1, reg("s4b_invalid", 1, s4_invalid))

        # s6: cross terms.
        s6_mid = reg("s6_mid", 25, s5_lh + s5_hl)
        s6_low_high = reg("s6_low_high", 48, Cat(s5_ll, s5_hh))
        s6_exp = reg("s6_exp", signed(10), s5_exp)
        s6_zero = reg("s6_zero", 1, s5_zero)
        s6_sign = reg("s6_sign", 1, s5_sign)
        s6_invalid = reg("s6_invalid", 1, s5_invalid)

        # s7: the exact product; ll and hh don't overlap, so only the shifted cross term adds.
        s7_prod = reg("s7_prod", 48, s6_low_high + (s6_mid << 18))
        s7_exp = reg("s7_exp", signed(10), s6_exp)
        s7_zero = reg("s7_zero", 1, s6_zero)
        s7_sign = reg("s7_sign", 1, s6_sign)
        s7_invalid = reg("s7_invalid", 1, s6_invalid)

        # s8: normalize (bit 47 or 46 leads) and find the rounding increment.
        top = s7_prod[47]
        mant = Mux(top, s7_prod[24:48], s7_prod[23:47])
        p_guard = Mux(top, s7_prod[23], s7_prod[22])
        p_sticky = Mux(top, s7_prod[:23].any(), s7_prod[:22].any())
        s8_mant = reg("s8_mant", 24, mant)
        s8_inc = reg("s8_inc", 1, p_guard & (p_sticky | mant[0]))
        s8_exp = reg("s8_exp", signed(10), s7_exp + top)
        s8_zero = reg("s8_zero", 1, s7_zero)
        s8_sign = reg("s8_sign", 1, s7_sign)
        s8_invalid = reg("s8_invalid", 1, s7_invalid)

        # s9: f32(f32(acc) * M): increment and renormalize on a carry out.
        p_rounded = Signal(25, name="s9_rounded")
        m.d.comb += p_rounded.eq(s8_mant + s8_inc)
        s9_mant = reg("s9_mant", 24, Mux(p_rounded[24], 1 << 23, p_rounded[:24]))
        s9_exp = reg("s9_exp", signed(10), s8_exp + p_rounded[24])
        s9_zero = reg("s9_zero", 1, s8_zero)
        s9_sign = reg("s9_sign", 1, s8_sign)
        s9_invalid = reg("s9_invalid", 1, s8_invalid)

        # s10: range check of the exponent: only -1..7 need the shifter. The product's own
        # underflow/overflow (subnormal, inf) lies inside the flush/saturate ranges.
        shift = Signal(range(9), name="s10_shift_next")
        with m.If(s9_exp < -1):
            m.d.comb += shift.eq(0)
        with m.Elif(s9_exp > 7):
            m.d.comb += shift.eq(8)
        with m.Else():
            m.d.comb += shift.eq(s9_exp + 1)
        s10_shift = reg("s10_shift", range(9), shift)
        s10_mant = reg("s10_mant", 24, s9_mant)
        s10_sat = reg("s10_sat", 1, ~s9_zero & (s9_exp >= 8))
        s10_flush = reg("s10_flush", 1, s9_zero | (s9_exp <= -2))
        s10_sign = reg("s10_sign", 1, s9_sign)
        s10_invalid = reg("s10_invalid", 1, s9_invalid)

        # s11: fixed point with 24 fraction bits: mant << (exp + 1).
        fixed = Signal(32, name="s11_fixed")
        m.d.comb += fixed.eq(s10_mant << s10_shift)
        s11_whole = reg("s11_whole", 8, fixed[24:])
        s11_guard = reg("s11_guard", 1, fixed[23])
        s11_sticky = reg("s11_sticky", 1, fixed[:23].any())
        s11_sat = reg("s11_sat", 1, s10_sat)
        s11_flush = reg("s11_flush", 1, s10_flush)
        s11_sign = reg("s11_sign", 1, s10_sign)
        s11_invalid = reg("s11_invalid", 1, s10_invalid)

        # s12: round half to even; saturate at 256 (beyond the int8 clamp whatever zy is).
        rne = s11_whole + (s11_guard & (s11_sticky | s11_whole[0]))
        mag = Signal(range(SAT_MAGNITUDE + 1), name="s12_mag")
        with m.If(s11_sat):
            m.d.comb += mag.eq(SAT_MAGNITUDE)
        with m.Elif(s11_flush):
            m.d.comb += mag.eq(0)
        with m.Else():
            m.d.comb += mag.eq(rne)
        s12_value = reg("s12_value", signed(10), Mux(s11_sign, -mag, mag))
        s12_invalid = reg("s12_invalid", 1, s11_invalid)

        # s13: zero point; s14: clamp.
        s13_shifted = reg("s13_shifted", signed(11), s12_value + self.zero_point)
        s13_invalid = reg("s13_invalid", 1, s12_invalid)
        clamped = Mux(s13_shifted < self.lo, self.lo, Mux(s13_shifted > self.hi, self.hi, s13_shifted))
        s14_y = reg("s14_y", signed(8), clamped)
        s14_invalid = reg("s14_invalid", 1, s13_invalid)
        m.d.comb += [self.o_y.eq(s14_y), self.o_invalid.eq(s14_invalid)]
        return m


class Requantizer(wiring.Component):
    """One exact requantizer lane with stream handshakes: one result per cycle, 15 cycles latency.

    The whole pipeline stalls together while the output waits (a single enable, so the ready path
    is one gate deep); bubbles are not squeezed out while stalled.

    Members
    -------
    i : In(stream.Signature(RequantInLayout()))
        Accumulator and multiplier bits.
    o : Out(stream.Signature(signed(8)))
        ``clamp(round_half_even(f32(acc) * M) + zero_point, lo, hi)``, in input order.
    zero_point, lo, hi : In(signed(8))
        Per-tensor parameters; change them only while the unit is empty.
    error : Out(1)
        Sticky: a beat with ``M`` = inf or NaN was processed (its output is 0). Cleared by reset.
    """

    i: In(stream.Signature(RequantInLayout()))
    o: Out(stream.Signature(signed(8)))
    zero_point: In(signed(8))
    lo: In(signed(8))
    hi: In(signed(8))
    error: Out(1)

    def elaborate(self, platform) -> Module:
        m = Module()
        m.submodules.pipe = pipe = RequantPipe()
        en = Signal()
        valid = Signal(RequantPipe.LATENCY)
        m.d.comb += [
            en.eq(~self.o.valid | self.o.ready),
            self.i.ready.eq(en),
            pipe.en.eq(en),
            pipe.i_acc.eq(self.i.payload.acc),
            pipe.i_multiplier.eq(self.i.payload.multiplier),
            pipe.zero_point.eq(self.zero_point),
            pipe.lo.eq(self.lo),
            pipe.hi.eq(self.hi),
            self.o.valid.eq(valid[-1]),
            self.o.payload.eq(Mux(pipe.o_invalid, 0, pipe.o_y)),
        ]
        with m.If(en):
            m.d.sync += valid.eq(Cat(self.i.valid, valid[:-1]))
        with m.If(self.o.valid & pipe.o_invalid):
            m.d.sync += self.error.eq(1)
        return m
