"""Element-wise add of two int8 tensors (QLinearAdd), bit-exact with ``golden.add`` in integer logic.

onnxruntime (and ``golden.add``) computes, in float32 with two fused multiply-adds::

    t = fma(b, rb, k)              rb = f32(b_scale / y_scale), k = the host's constant term
    s = fma(a, ra, t)              ra = f32(a_scale / y_scale)
    y = sat8(cvtps2dq(s))          round half to even; |s| >= 2^31 gives INT32_MIN, so -128

An FMA rounds once, so each one is computed here exactly and then rounded to 24 bits (RNE). Why
the integer datapath (:class:`_Fma`) is exact:

1. ``n * M`` (``n`` int8, ``M`` a 24-bit significand) is an exact 32-bit integer, normalized so its
   leading one is bit 31. ``C`` is normalized the same way. Call the one with the larger exponent
   ``L`` and the other ``S``, ``d`` the exponent difference.
2. ``W = L * 2^31 +- S * 2^(31-d)`` is exact for ``d <= 31``. For ``d > 31``, ``S * 2^(31-d) < 2^31``
   lies entirely below bit 31 while the 24 kept bits and the guard bit of ``W`` lie at bit 37 or
   above (``W >= 2^62 - 2^31``); replacing it by ``+-1`` leaves every bit from 31 up and the
   "sticky" (nonzero below) the same, hence the same rounding.
3. ``|W| < 2^64`` is normalized (leading-zero count) and rounded to 24 bits with guard and sticky:
   IEEE round-to-nearest-even of the exact sum.
4. Subnormals never occur: ``ra``, ``rb`` and a nonzero ``k`` are required to lie in
   ``[2^-64, 2^64)`` (else ``error``), so every product and nonzero sum is a multiple of at least
   ``2^-110`` and below ``2^73``: always a normal float32. Real models have ratios near 1.
5. The final ``cvtps2dq`` + saturating pack is a fixed-point round (as in the requantizer): ``|s|``
   in ``[2^31, ...)`` gives -128, ``[256, 2^31)`` saturates by sign, below 0.5 gives 0.

The unit then clamps to ``[lo, hi]`` (a fused ReLU). One beat per cycle, ``c_par`` lanes, each
lane two :class:`_Fma` datapaths (LUT logic only: the int8 x 24-bit products are shift-adds, so
no DSP is spent here).
"""

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .layouts import pixel_layout
from .params import check_int
from .requantizer import _leading_zeros

__all__ = ["EltwiseAdd"]

EXP_MIN, EXP_MAX = -64, 63  # accepted unbiased exponents of ra, rb and a nonzero k
_EXP = signed(12)           # exponents inside the datapath (|e| < 256)


class _Float:
    """A float32 value inside the datapath: ``(-1)^sign * mant * 2^elsb``; ``zero`` overrides."""

    def __init__(self, sign, elsb, mant, zero):
        self.sign, self.elsb, self.mant, self.zero = sign, elsb, mant, zero


def _decode(m: Module, bits, name: str):
    """Split float32 ``bits``; return ``(_Float, ok_nonzero, is_zero)`` where ``ok_nonzero`` means
    a normal value with its exponent in ``EXP_MIN..EXP_MAX``."""
    biased = bits[23:31]
    elsb = Signal(_EXP, name=f"{name}_elsb")
    m.d.comb += elsb.eq(biased - (127 + 23))
    ok = (biased >= 127 + EXP_MIN) & (biased <= 127 + EXP_MAX)
    zero = bits[:31] == 0
    return _Float(bits[31], elsb, bits[:23] | (1 << 23), zero), ok, zero


class _Pipe:
    """Registers that all advance on ``en``; ``reg`` declares one and returns it."""

    def __init__(self, m: Module, en):
        self.m, self.en = m, en

    def reg(self, name: str, shape, value):
        sig = Signal(shape, name=name)
        with self.m.If(self.en):
            self.m.d.sync += sig.eq(value)
        return sig


def _fma(p: _Pipe, n, mul: _Float, add: _Float, name: str):
    """``RNE24(n * mul + add)``, 7 register stages; ``n`` is an int8 signal sampled at stage 0.

    Returns the result as a :class:`_Float` with a 24-bit ``mant`` (hidden bit set unless zero) and
    the list of signals delayed alongside (for the caller to keep its own data in step).
    """
    m = p.m
    reg = p.reg
    # f0: exact product |n| * M (shift-adds, no DSP) and the sign; the addend waits.
    nabs = Signal(8, name=f"{name}_f0_nabs")
    m.d.comb += nabs.eq(Mux(n < 0, -n, n))
    prod = 0
    for i in range(8):
        prod = prod + Mux(nabs[i], mul.mant << i, 0)
    f0_pm = reg(f"{name}_f0_pm", 32, prod)
    f0_psign = reg(f"{name}_f0_psign", 1, (n < 0) ^ mul.sign)
    f0_pzero = reg(f"{name}_f0_pzero", 1, (n == 0) | mul.zero)
    f0_pelsb = reg(f"{name}_f0_pelsb", _EXP, mul.elsb)
    f0_c = _Float(reg(f"{name}_f0_csign", 1, add.sign), reg(f"{name}_f0_celsb", _EXP, add.elsb),
                  reg(f"{name}_f0_cmant", 24, add.mant), reg(f"{name}_f0_czero", 1, add.zero))

    # f1: normalize both to a leading one at bit 31.
    _, lz = _leading_zeros(m, f0_pm, f"{name}_f1_p")
    f1_pm = reg(f"{name}_f1_pm", 32, f0_pm << lz)
    f1_pe = reg(f"{name}_f1_pe", _EXP, f0_pelsb - lz)
    f1_psign = reg(f"{name}_f1_psign", 1, f0_psign)
    f1_pzero = reg(f"{name}_f1_pzero", 1, f0_pzero)
    f1_cm = reg(f"{name}_f1_cm", 32, f0_c.mant << 8)
    f1_ce = reg(f"{name}_f1_ce", _EXP, f0_c.elsb - 8)
    f1_csign = reg(f"{name}_f1_csign", 1, f0_c.sign)
    f1_czero = reg(f"{name}_f1_czero", 1, f0_c.zero)

    # f2: L = the operand with the larger exponent; S shifted into L's frame (or a sticky 1).
    p_is_l = Signal(name=f"{name}_f2_p_is_l")
    m.d.comb += p_is_l.eq(~f1_pzero & (f1_czero | (f1_pe >= f1_ce)))
    l_m, l_e, l_s, l_z = (Mux(p_is_l, a, b) for a, b in ((f1_pm, f1_cm), (f1_pe, f1_ce),
                                                          (f1_psign, f1_csign), (f1_pzero, f1_czero)))
    s_m, s_e, s_s, s_z = (Mux(p_is_l, b, a) for a, b in ((f1_pm, f1_cm), (f1_pe, f1_ce),
                                                          (f1_psign, f1_csign), (f1_pzero, f1_czero)))
    d = Signal(_EXP, name=f"{name}_f2_d")
    m.d.comb += d.eq(l_e - s_e)
    near = Signal(unsigned(63), name=f"{name}_f2_near")
    m.d.comb += near.eq(s_m << ~d[:5])  # 31 - d for d in 0..31
    s_term = Mux(s_z, 0, Mux(d <= 31, near, 1))
    f2_l = reg(f"{name}_f2_l", 32, Mux(l_z, 0, l_m))
    f2_lsign = reg(f"{name}_f2_lsign", 1, l_s)
    f2_s = reg(f"{name}_f2_s", 63, s_term)
    f2_ssign = reg(f"{name}_f2_ssign", 1, s_s)
    f2_e = reg(f"{name}_f2_e", _EXP, l_e - 31)

    # f3: the exact (or sticky-equivalent) signed sum W.
    lw = Signal(signed(66), name=f"{name}_f3_lw")
    sw = Signal(signed(66), name=f"{name}_f3_sw")
    m.d.comb += [lw.eq(Mux(f2_lsign, -(f2_l << 31), f2_l << 31)), sw.eq(Mux(f2_ssign, -f2_s, f2_s))]
    f3_w = reg(f"{name}_f3_w", signed(66), lw + sw)
    f3_e = reg(f"{name}_f3_e", _EXP, f2_e)

    # f4: sign and magnitude, leading zeros.
    mag = Signal(64, name=f"{name}_f4_mag_next")
    m.d.comb += mag.eq(Mux(f3_w < 0, -f3_w, f3_w))
    f4_mag = reg(f"{name}_f4_mag", 64, mag)
    f4_sign = reg(f"{name}_f4_sign", 1, f3_w < 0)
    f4_e = reg(f"{name}_f4_e", _EXP, f3_e)
    zero, lz = _leading_zeros(m, f4_mag, f"{name}_f5_w")

    # f5: normalize, keep 24 bits plus guard and sticky.
    norm = Signal(64, name=f"{name}_f5_norm")
    m.d.comb += norm.eq(f4_mag << lz)
    f5_mant = reg(f"{name}_f5_mant", 24, norm[40:])
    f5_guard = reg(f"{name}_f5_guard", 1, norm[39])
    f5_sticky = reg(f"{name}_f5_sticky", 1, norm[:39].any())
    f5_elead = reg(f"{name}_f5_elead", _EXP, f4_e + 63 - lz)
    f5_sign = reg(f"{name}_f5_sign", 1, f4_sign)
    f5_zero = reg(f"{name}_f5_zero", 1, zero)

    # f6: round to nearest even; a carry out renormalizes.
    rounded = Signal(25, name=f"{name}_f6_rounded")
    m.d.comb += rounded.eq(f5_mant + (f5_guard & (f5_sticky | f5_mant[0])))
    f6_mant = reg(f"{name}_f6_mant", 24, Mux(rounded[24], 1 << 23, rounded))
    f6_elsb = reg(f"{name}_f6_elsb", _EXP, f5_elead + rounded[24] - 23)
    f6_sign = reg(f"{name}_f6_sign", 1, f5_sign)
    f6_zero = reg(f"{name}_f6_zero", 1, f5_zero)
    return _Float(f6_sign, f6_elsb, f6_mant, f6_zero)


FMA_STAGES = 7


class EltwiseAdd(wiring.Component):
    """QLinearAdd of two int8 streams, ``c_par`` lanes per beat, bit-exact with ``golden.add``.

    Parameters
    ----------
    c_par : int
        Lanes per beat (1..64).

    Members
    -------
    a, b : In(stream.Signature(pixel_layout(c_par)))
        The two inputs, beat for beat (same shape and order). A beat is taken when both are valid.
    o : Out(stream.Signature(pixel_layout(c_par)))
        ``clamp(golden.add(a, b), lo, hi)``, one beat per input pair, in order.
    ra, rb : In(32)
        float32 bits of ``f32(a_scale / y_scale)`` and ``f32(b_scale / y_scale)``.
    k : In(32)
        float32 bits of ``f32(y_zp) - fma(ra, a_zp, f32(rb * b_zp))`` (as ``golden.add`` builds it).
    lo, hi : In(signed(8))
        Output clamp; -128 and 127 for a plain QLinearAdd. Configuration ports are static while
        beats are in flight.
    error : Out(1)
        ``ra`` or ``rb`` is not a normal float in ``[2^-64, 2^64)``, ``k`` is neither zero nor in
        that range, or ``lo > hi``. No beat is accepted while it is set.

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
            "a": In(stream.Signature(pixel_layout(c_par))),
            "b": In(stream.Signature(pixel_layout(c_par))),
            "o": Out(stream.Signature(pixel_layout(c_par))),
            "ra": In(32),
            "rb": In(32),
            "k": In(32),
            "lo": In(signed(8), init=-128),
            "hi": In(signed(8), init=127),
            "error": Out(1),
        })

    @property
    def c_par(self) -> int:
        return self._c_par

    latency = 2 * FMA_STAGES + 3  # cycles from an accepted pair to its output (never stalled)

    def elaborate(self, platform) -> Module:
        m = Module()
        ra, ra_ok, _ = _decode(m, self.ra, "ra")
        rb, rb_ok, _ = _decode(m, self.rb, "rb")
        k, k_ok, k_zero = _decode(m, self.k, "k")
        m.d.comb += self.error.eq(~ra_ok | ~rb_ok | ~(k_ok | k_zero) | (self.lo > self.hi))

        # Every stage advances together when the output register is free or being emptied.
        adv = Signal()
        m.d.comb += adv.eq(self.o.ready | ~self.o.valid)
        take = Signal()
        m.d.comb += [
            take.eq(self.a.valid & self.b.valid & adv & ~self.error),
            self.a.ready.eq(self.b.valid & adv & ~self.error),
            self.b.ready.eq(self.a.valid & adv & ~self.error),
        ]
        p = _Pipe(m, adv)
        valid = take
        for s in range(self.latency - 1):
            valid = p.reg(f"v{s}", 1, valid)

        for lane in range(self._c_par):
            t = _fma(p, self.b.payload[lane], rb, k, f"l{lane}_t")
            a_late = self.a.payload[lane]
            for s in range(FMA_STAGES):
                a_late = p.reg(f"l{lane}_a{s}", signed(8), a_late)
            s_ = _fma(p, a_late, ra, t, f"l{lane}_s")

            # r0: range of the exponent of s's leading bit; r1: fixed point with 24 fraction bits.
            elead = s_.elsb + 23
            r0_big = p.reg(f"l{lane}_r0_big", 1, ~s_.zero & (elead >= 31))
            r0_sat = p.reg(f"l{lane}_r0_sat", 1, ~s_.zero & (elead >= 8))
            r0_flush = p.reg(f"l{lane}_r0_flush", 1, s_.zero | (elead <= -2))
            shift = Signal(range(9), name=f"l{lane}_r0_shift_next")
            with m.If((elead >= -1) & (elead <= 7)):
                m.d.comb += shift.eq(elead + 1)
            r0_shift = p.reg(f"l{lane}_r0_shift", range(9), shift)
            r0_mant = p.reg(f"l{lane}_r0_mant", 24, s_.mant)
            r0_sign = p.reg(f"l{lane}_r0_sign", 1, s_.sign)
            fixed = Signal(32, name=f"l{lane}_r1_fixed")
            m.d.comb += fixed.eq(r0_mant << r0_shift)
            r1_whole = p.reg(f"l{lane}_r1_whole", 9, fixed[24:])
            r1_guard = p.reg(f"l{lane}_r1_guard", 1, fixed[23])
            r1_sticky = p.reg(f"l{lane}_r1_sticky", 1, fixed[:23].any())
            r1_big = p.reg(f"l{lane}_r1_big", 1, r0_big)
            r1_sat = p.reg(f"l{lane}_r1_sat", 1, r0_sat)
            r1_flush = p.reg(f"l{lane}_r1_flush", 1, r0_flush)
            r1_sign = p.reg(f"l{lane}_r1_sign", 1, r0_sign)

            # r2: round half to even, saturate like cvtps2dq + packs, clamp to [lo, hi].
            mag = Signal(10, name=f"l{lane}_r2_mag")
            m.d.comb += mag.eq(r1_whole + (r1_guard & (r1_sticky | r1_whole[0])))
            val = Signal(signed(11), name=f"l{lane}_r2_val")
            with m.If(r1_big):
                m.d.comb += val.eq(-128)
            with m.Elif(r1_sat):
                m.d.comb += val.eq(Mux(r1_sign, -128, 127))
            with m.Elif(r1_flush):
                m.d.comb += val.eq(0)
            with m.Else():
                m.d.comb += val.eq(Mux(r1_sign, -mag, mag))
            sat8 = Mux(val < -128, -128, Mux(val > 127, 127, val))
            clamped = Mux(sat8 < self.lo, self.lo, Mux(sat8 > self.hi, self.hi, sat8))
            with m.If(adv):
                m.d.sync += self.o.payload[lane].eq(clamped)
        with m.If(adv):
            m.d.sync += self.o.valid.eq(valid)
        return m

