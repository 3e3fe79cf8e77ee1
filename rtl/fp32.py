"""float32 arithmetic done exactly in integer logic: the requantizer's NumPy model and shared RTL pieces.

Two parts:

* A bit-level NumPy model of the exact requantizer, one function per pipeline stage of the RTL.
* The Amaranth pieces that :mod:`~jacquard.rtl.eltwise_add`, :mod:`~jacquard.rtl.avg_pool` and the
  core's :class:`ScaleUnit` share (one definition each): :class:`_Float`, :func:`_decode`,
  :class:`_Pipe`, :func:`_fma` (a fused multiply-add of an int8 and a float32, rounded once),
  :func:`_div` (a correctly rounded float32 division) and :func:`_leading_zeros`.

The RTL (:mod:`jacquard.rtl.requantizer`) computes
``y = clamp(round_half_even(f32(acc) * M) + zy, lo, hi)`` exactly as IEEE-754 float32 does, with
integer hardware only. This module mirrors it stage for stage with int64 NumPy arrays, so millions
of ``(acc, M)`` pairs can be checked against NumPy's float32 arithmetic in seconds, and any
mismatch found by the RTL simulation can be localized to one stage.

Why the integer pipeline is exact:

1. ``f32(acc)``: ``|acc|`` is normalized so its leading one sits at bit 31, then rounded to 24
   bits with round-to-nearest-even (guard bit 7, sticky bits 6..0). A carry out of the rounding
   renormalizes to ``2^24`` and bumps the exponent. That is IEEE's int32 -> float32 conversion.
2. ``f32(a * M)``: both operands are normal floats, so the product of their 24-bit significands
   is exact in 48 bits. It is normalized (bit 47 or 46 leads) and rounded to 24 bits with RNE, as
   IEEE multiplication does for any normal result. The result is subnormal (or flushes) only when
   ``|a * M| < 2^-126`` and it overflows only when ``|a * M| >= 2^128``. Both are outside the window
   where the final integer matters: anything below 0.5 rounds to 0 (float rounding of a value
   below ``2^-126`` cannot reach 0.5) and anything at or above 256 saturates the int8 clamp,
   because ``|zy|, |lo|, |hi| <= 128``.
3. ``round_half_even(p)`` with ``p = m * 2^(e-23)``: ``m`` is shifted left by ``e + 1`` (0..8)
   into a fixed-point word with 24 fraction bits, then rounded with guard bit 23 and sticky bits
   22..0. ``e >= 8`` saturates the magnitude at 256 and ``e <= -2`` gives 0.
4. Denormal ``M`` (and ``M = +-0``): ``|f32(acc)| <= 2^31`` and ``|M| < 2^-126``, so
   ``|a * M| < 2^-95`` and the result is ``clamp(zy, lo, hi)`` exactly. The RTL treats such an ``M``
   as zero, which is exact, so every finite float32 multiplier is supported.
5. ``M`` = inf or NaN is refused (``mult_invalid``): onnxruntime's result is undefined there.
"""

import numpy as np
from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = [
    "DIV_STAGES",
    "FMA_DEEP_STAGES",
    "FMA_STAGES",
    "SAT_MAGNITUDE",
    "ScaleUnit",
    "decode_multiplier",
    "float_to_int_rne",
    "int_to_float",
    "mantissa_product",
    "requant_vectors",
    "requantize_f32",
    "requantize_model",
    "round_product",
]

# Magnitudes at or above this always saturate the int8 clamp; the pipeline caps them here.
SAT_MAGNITUDE = 256


def decode_multiplier(bits):
    """Split float32 bit patterns into ``(sign, exp, mant, zero, invalid)``.

    ``exp`` is unbiased; ``mant`` has its hidden bit (24 bits). Zero and denormal multipliers
    give ``zero``; inf and NaN give ``invalid``.
    """
    bits = np.asarray(bits, dtype=np.int64) & 0xFFFF_FFFF
    sign = (bits >> 31) & 1
    biased = (bits >> 23) & 0xFF
    mant = (bits & 0x7F_FFFF) | (1 << 23)
    return sign, biased - 127, mant, biased == 0, biased == 0xFF


def int_to_float(acc):
    """int32 -> float32 with RNE: ``(sign, exp, mant, zero)``, ``mant`` 24 bits with hidden bit."""
    acc = np.asarray(acc, dtype=np.int64)
    # s1_: sign and magnitude (INT32_MIN's magnitude 2^31 still fits 32 unsigned bits).
    sign = (acc < 0).astype(np.int64)
    mag = np.abs(acc)
    zero = mag == 0
    # s2_: leading-zero count of the 32-bit magnitude (32 for zero).
    lz = np.full(mag.shape, 32, dtype=np.int64)
    for bit in range(31, -1, -1):
        lz = np.where((lz == 32) & (((mag >> bit) & 1) == 1), 31 - bit, lz)
    # s3_: normalize so the leading one is bit 31.
    norm = (mag << np.minimum(lz, 31)) & 0xFFFF_FFFF
    exp = 31 - lz
    # s4_: round to 24 bits, RNE: guard bit 7, sticky bits 6..0, LSB bit 8.
    mant = norm >> 8
    guard = (norm >> 7) & 1
    sticky = (norm & 0x7F) != 0
    mant = mant + (guard & (sticky | (mant & 1)))
    carry = mant >> 24
    mant = np.where(carry == 1, 1 << 23, mant)
    exp = exp + carry
    return sign, exp, mant, zero


def mantissa_product(mant_a, mant_m):
    """The exact 48-bit product of two 24-bit significands, from the RTL's four partial products.

    Operands split at bit 18 (18 low bits + 6 high bits) so that each partial product fits an
    18x18 hardware multiplier.
    """
    a_lo, a_hi = mant_a & 0x3FFFF, mant_a >> 18
    m_lo, m_hi = mant_m & 0x3FFFF, mant_m >> 18
    # s5_: partial products.
    pp_ll, pp_lh, pp_hl, pp_hh = a_lo * m_lo, a_lo * m_hi, a_hi * m_lo, a_hi * m_hi
    # s6_: the cross terms; s7_: low and high terms don't overlap, so they concatenate.
    mid = pp_lh + pp_hl
    return ((pp_hh << 36) | pp_ll) + (mid << 18)


def round_product(prod, exp):
    """Normalize a 48-bit significand product and round it to 24 bits RNE: ``(exp, mant)``."""
    # s8_: pick the leading bit (47 or 46); keep 24 bits, a guard bit and a sticky bit.
    top = (prod >> 47) & 1
    mant = np.where(top == 1, prod >> 24, prod >> 23) & 0xFF_FFFF
    guard = np.where(top == 1, prod >> 23, prod >> 22) & 1
    sticky = np.where(top == 1, prod & 0x7F_FFFF, prod & 0x3F_FFFF) != 0
    inc = guard & (sticky | (mant & 1))
    exp = exp + top
    # s9_: increment; a carry out renormalizes to 2^23 with the exponent bumped.
    mant = mant + inc
    carry = mant >> 24
    return exp + carry, np.where(carry == 1, 1 << 23, mant)


def float_to_int_rne(exp, mant):
    """``round_half_even(mant * 2^(exp-23))`` capped at :data:`SAT_MAGNITUDE`."""
    # s10_: exponent range check; s11_: fixed point with 24 fraction bits: mant << (exp + 1).
    sat = exp >= 8
    tiny = exp <= -2
    shift = np.clip(exp + 1, 0, 8)
    fixed = mant << shift
    whole = fixed >> 24
    guard = (fixed >> 23) & 1
    sticky = (fixed & 0x7F_FFFF) != 0
    # s12_: round, then saturate or flush (s13_: zero point, s14_: clamp).
    mag = whole + (guard & (sticky | (whole & 1)))
    mag = np.where(sat, SAT_MAGNITUDE, np.where(tiny, 0, mag))
    return np.minimum(mag, SAT_MAGNITUDE)


def requantize_model(acc, multiplier_bits, zero_point, lo, hi):
    """Bit-level model of the RTL requantizer.

    Parameters
    ----------
    acc : array of int32 accumulators (bias already added).
    multiplier_bits : array of float32 bit patterns (uint32), broadcast against ``acc``.
    zero_point, lo, hi : int8 output zero point and clamp bounds.

    Returns
    -------
    y : int64 array of int8 values, and ``invalid``: a boolean array that is True where the
        multiplier is inf or NaN (those outputs are meaningless and the RTL flags them).
    """
    acc = np.asarray(acc, dtype=np.int64)
    sign_a, exp_a, mant_a, zero_a = int_to_float(acc)
    sign_m, exp_m, mant_m, zero_m, invalid = decode_multiplier(multiplier_bits)
    prod = mantissa_product(mant_a, mant_m)
    exp, mant = round_product(prod, exp_a + exp_m)
    mag = float_to_int_rne(exp, mant)
    mag = np.where(zero_a | zero_m, 0, mag)
    signed = np.where((sign_a ^ sign_m) == 1, -mag, mag)
    y = np.clip(signed + int(zero_point), int(lo), int(hi))
    return y, np.broadcast_to(invalid, y.shape)


def requantize_f32(acc, multiplier_bits, zero_point, lo, hi):
    """The same function computed with NumPy float32 arithmetic (the oracle for the model).

    The clamp happens on the float value, as onnxruntime's MLAS does, so float overflow to inf
    saturates. Inf and NaN multipliers give meaningless values (the RTL refuses them).
    """
    m = (np.asarray(multiplier_bits, dtype=np.int64) & 0xFFFF_FFFF).astype(np.uint32).view(np.float32)
    a = np.asarray(acc, dtype=np.int64).astype(np.int32).astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        p = np.rint(a * m).astype(np.float64)
        y = np.clip(np.nan_to_num(p, nan=0.0) + int(zero_point), int(lo), int(hi))
    return y.astype(np.int64)


def requant_vectors(rng: np.random.Generator, n: int):
    """``n`` random ``(acc, multiplier_bits)`` pairs that stress every rounding boundary.

    A mix of: uniform int32 at random scales with log-uniform multipliers; products aimed at
    ``k + 0.5`` (ties and near-ties, where the float32 product rounding decides the integer);
    ``|acc|`` around ``2^24`` (the first inexact int -> float conversions) and INT32 extremes;
    multipliers next to powers of two; zero, denormal, negative, tiny and huge multipliers.
    All multipliers are finite.
    """
    kind = rng.integers(0, 6, n)
    # Log-uniform multipliers over the useful range, then flips of the low mantissa bits.
    m = np.float32(2.0) ** rng.uniform(-34.0, 3.0, n).astype(np.float32)
    mbits = m.astype(np.float32).view(np.uint32).astype(np.int64)
    acc = rng.integers(-(2**31), 2**31, n, dtype=np.int64) >> rng.integers(0, 32, n)

    # 1: aim at k + 0.5: acc = round((k + 0.5) / M) + d.
    target = rng.integers(-300, 300, n) + 0.5
    with np.errstate(over="ignore"):
        aimed = np.rint(target / m.astype(np.float64)) + rng.integers(-2, 3, n)
    aimed = np.clip(aimed, -(2**31), 2**31 - 1).astype(np.int64)
    acc = np.where(kind == 1, aimed, acc)

    # 2: multipliers next to powers of two, acc near 2^24 and the int32 extremes.
    pow2 = np.float32(2.0) ** rng.integers(-32, 4, n).astype(np.float32)
    near = pow2.view(np.uint32).astype(np.int64) + rng.integers(-3, 4, n)
    mbits = np.where(kind == 2, near, mbits)
    special = np.array([2**24 + 1, 2**24 - 1, 2**24, 2**24 + 3, 2**25 + 1, 2**31 - 1, 2**31 - 64,
                        -(2**31), -(2**31) + 1, -(2**24) - 1, -(2**24) + 1, 0, 1, -1])
    edge_acc = special[rng.integers(0, len(special), n)] + np.where(rng.random(n) < 0.5, 0,
                                                                    rng.integers(-2, 3, n))
    edge_acc = np.clip(edge_acc, -(2**31), 2**31 - 1)
    acc = np.where(kind == 2, edge_acc, acc)

    # 3: exact ties: M = 2^-k and acc an odd multiple of 2^(k-1).
    k = rng.integers(1, 20, n)
    tie_acc = (2 * rng.integers(-200, 200, n) + 1) << (k - 1)
    acc = np.where(kind == 3, tie_acc, acc)
    mbits = np.where(kind == 3, (127 - k) << 23, mbits)

    # 4: zero, denormal, tiny, huge and largest-finite multipliers.
    odd = np.array([0, 1, 0x7F_FFFF, 0x80_0000, 0x0080_0001, 0x7F7F_FFFF, 0x7F00_0000, 0x5F00_0000,
                    0x4F00_0000, 0x3F00_0000, 0x3EFF_FFFF, 0x3F80_0000, 0x2000_0000])
    mbits = np.where(kind == 4, odd[rng.integers(0, len(odd), n)], mbits)

    # Any kind: a random sign on the multiplier.
    mbits = np.where(rng.random(n) < 0.15, mbits | (1 << 31), mbits)
    return acc.astype(np.int64), mbits & 0xFFFF_FFFF


# -- Amaranth pieces ---------------------------------------------------------------------------------

EXP_MIN, EXP_MAX = -64, 63  # accepted unbiased exponents of ra, rb and a nonzero k
_EXP = signed(12)           # exponents inside the datapath (|e| < 256)


def _leading_zeros(m: Module, value, prefix: str):
    """Return ``(all_zero, count)`` for a power-of-two-wide ``value``; a balanced tree, log2 deep."""
    width = len(value)
    if width == 1:
        return ~value[0], Const(0, 1)
    half = width // 2
    hi_zero, hi_count = _leading_zeros(m, value[half:], prefix + "h")
    lo_zero, lo_count = _leading_zeros(m, value[:half], prefix + "l")
    count = Signal(range(width), name=f"{prefix}_lz{width}")
    # The high half decides unless it is all zero; then the count is half plus the low half's.
    m.d.comb += count.eq(Mux(hi_zero, half + lo_count, hi_count))
    return hi_zero & lo_zero, count


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
    """Registers that all advance on ``en``; ``reg`` declares a data register, ``tag`` a control one.

    Data registers have no reset (``reset_less``): what they hold is read only under a valid bit
    carried by a ``tag`` register, which keeps its reset. A reset into every pipeline flop made
    the core's flush (the sequencer's STOP) a chip-wide net into thousands of flops' resets: it
    started most of the 85F SoC's worst paths, and the reset pins it used kept unrelated flops
    from sharing slices.
    """

    def __init__(self, m: Module, en):
        self.m, self.en = m, en

    def _reg(self, name: str, shape, value, reset_less: bool):
        sig = Signal(shape, name=name, reset_less=reset_less)
        with self.m.If(self.en):
            self.m.d.sync += sig.eq(value)
        return sig

    def reg(self, name: str, shape, value):
        return self._reg(name, shape, value, reset_less=True)

    def tag(self, name: str, shape, value):
        return self._reg(name, shape, value, reset_less=False)


def _fma(p: _Pipe, n, mul: _Float, add: _Float, name: str, *, deep: bool = False):
    """``RNE24(n * mul + add)``; ``n`` is an int8 signal, all operands sampled at stage 0.

    :data:`FMA_STAGES` (7) register stages, or :data:`FMA_DEEP_STAGES` (10) with ``deep``: then
    ``|n|`` is registered before the product, the product's adds take two stages (two halves,
    then their sum), and the normalizing shift is registered before its final one-bit step. The
    7-stage product (negation, then a tree of eight shifted terms into one register) routes at
    about 14.4 ns on the ECP5-85F.

    Returns the result as a :class:`_Float` with a 24-bit ``mant`` (hidden bit set unless zero).
    """
    m = p.m
    reg = p.reg
    nabs = Signal(8, name=f"{name}_f0_nabs")
    m.d.comb += nabs.eq(Mux(n < 0, -n, n))
    nneg, nzero = n < 0, n == 0
    if deep:
        # fa: |n| registered, the operands with it (the negation's carry chain in front of the
        # product tree was a third of the 14.4 ns path).
        nabs = reg(f"{name}_fa_nabs", 8, nabs)
        nneg, nzero = reg(f"{name}_fa_nneg", 1, nneg), reg(f"{name}_fa_nzero", 1, nzero)
        mul = _Float(reg(f"{name}_fa_msign", 1, mul.sign), reg(f"{name}_fa_melsb", _EXP, mul.elsb),
                     reg(f"{name}_fa_mmant", 24, mul.mant), reg(f"{name}_fa_mzero", 1, mul.zero))
        add = _Float(reg(f"{name}_fa_csign", 1, add.sign), reg(f"{name}_fa_celsb", _EXP, add.elsb),
                     reg(f"{name}_fa_cmant", 24, add.mant), reg(f"{name}_fa_czero", 1, add.zero))
    # f0: exact product |n| * M (shift-adds, no DSP) and the sign; the addend waits.
    # A balanced tree of adds (three deep, not a chain of eight): the chain was a long path of
    # every float unit.
    terms = [Mux(nabs[i], mul.mant << i, 0) for i in range(8)]
    # M has its leading one at bit 23, so |n| * M has it at bit 23 + k or 24 + k, where k is the
    # position of |n|'s leading one: the product's normalization needs no leading-zero count
    # (which, with the shift by it, was the stage's long path).
    def lead(v, off):
        # k + off as a table of |n|'s leading one (no adder after the priority select).
        k = Const(off, signed(5))
        for i in range(1, 8):
            k = Mux(v[i], i + off, k)
        return k

    if deep:
        # fb: the two halves (|n|'s low and high nibble times M) registered; f0 adds them.
        hi = [Mux(nabs[i], mul.mant << (i - 4), 0) for i in range(4, 8)]
        lo = reg(f"{name}_fb_lo", 28, terms[0] + terms[1] + (terms[2] + terms[3]))
        hi = reg(f"{name}_fb_hi", 28, hi[0] + hi[1] + (hi[2] + hi[3]))
        terms = [lo + (hi << 4)]
        # k, and the exponents' terms of f0's sums (below), registered here from |n| and the
        # operands' exponents, so that each of f0's sums is one add of two registers: computed in
        # f0 from the exponents and k, yosys shared their common parts into three carry chains
        # in series (the unit's 12.4 ns path, 7.7 ns of it routing).
        k = reg(f"{name}_fb_k", 3, lead(nabs, 0))
        kq = [reg(f"{name}_fb_kq{f}", signed(5), lead(nabs, -f)) for f in (0, 1)]    # k - f
        kp = [reg(f"{name}_fb_kp{f}", signed(5), lead(nabs, 1 - f)) for f in (0, 1)]  # k + 1 - f
        e_p = reg(f"{name}_fb_ep", _EXP, mul.elsb - 7)
        e_pc = reg(f"{name}_fb_epc", _EXP, mul.elsb - add.elsb)
        e_cp = reg(f"{name}_fb_ecp", _EXP, add.elsb - mul.elsb)
        exps = {"pe": lambda f: e_p + kq[f], "dpc": lambda f: e_pc + kp[f],
                "dcp": lambda f: e_cp - kp[f]}
        nabs = reg(f"{name}_fb_nabs", 8, nabs)
        nneg, nzero = reg(f"{name}_fb_nneg", 1, nneg), reg(f"{name}_fb_nzero", 1, nzero)
        mul = _Float(reg(f"{name}_fb_msign", 1, mul.sign), None, Const(0, 24),
                     reg(f"{name}_fb_mzero", 1, mul.zero))
        add = _Float(reg(f"{name}_fb_csign", 1, add.sign), reg(f"{name}_fb_celsb", _EXP, add.elsb),
                     reg(f"{name}_fb_cmant", 24, add.mant), reg(f"{name}_fb_czero", 1, add.zero))
    else:
        k = lead(nabs, 0)
        exps = {"pe": lambda f: mul.elsb - 7 - f + k, "dpc": lambda f: mul.elsb - add.elsb + 1 - f + k,
                "dcp": lambda f: add.elsb - mul.elsb - 1 + f - k}
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] for i in range(0, len(terms), 2)]
    f0_pm = reg(f"{name}_f0_pm", 32, terms[0])
    f0_k = reg(f"{name}_f0_k", 3, k)
    if deep:
        # fine (below) registered with the product, from its bit 24 + k: after the fanout of k,
        # the shift, then fine's fanout to f1's selects were a 9.7 ns path.
        pm_next = Signal(32, name=f"{name}_f0_pm_next")
        m.d.comb += pm_next.eq(terms[0])
        f0_fine = reg(f"{name}_f0_fine", 1, ~pm_next.bit_select(k + 24, 1))
    f0_psign = reg(f"{name}_f0_psign", 1, nneg ^ mul.sign)
    f0_pzero = reg(f"{name}_f0_pzero", 1, nzero | mul.zero)
    # f1 shifts the product left by 7 - k + fine (fine: one more if bit 23 + k is zero). The
    # product's exponent and its difference to the addend's (f1_ce) are registered here for both
    # values of fine, so f1 only selects: computed in f1 from k (a register of large fanout) they
    # were the unit's 11.4 ns path.
    f0_pe, f0_dpc, f0_dcp = ([reg(f"{name}_f0_{n}{f}", _EXP, exps[n](f)) for f in (0, 1)]
                             for n in ("pe", "dpc", "dcp"))
    f0_c = _Float(reg(f"{name}_f0_csign", 1, add.sign), reg(f"{name}_f0_celsb", _EXP, add.elsb),
                  reg(f"{name}_f0_cmant", 24, add.mant), reg(f"{name}_f0_czero", 1, add.zero))

    # f1: normalize both to a leading one at bit 31; the exponent difference for f2.
    rough = Signal(32, name=f"{name}_f1_rough")
    m.d.comb += rough.eq(f0_pm << ~f0_k)  # ~k = 7 - k
    fine = f0_fine if deep else ~rough[31]
    f1_pm = reg(f"{name}_f1_pm", 32, Mux(fine, rough << 1, rough))
    # Which operand is the larger (L) and the alignment of the smaller (S) are decided once for
    # each value of fine, which then only selects: fine, then the difference's subtract, its
    # sign, the swap and the range check of the alignment (in f2) were the unit's 12.2 ns path.
    cand = []
    for f in (0, 1):
        p_is_l = ~f0_pzero & (f0_c.zero | ~f0_dpc[f][-1])
        d = Mux(p_is_l, f0_dpc[f], f0_dcp[f])  # >= 0 unless S is zero, then unused
        cand.append((p_is_l, d[:5], ~d[5:].any(), f0_pe[f]))
    f1_p_is_l, f1_d, f1_dnear, f1_pe = (
        reg(f"{name}_f1_{n}", shape, Mux(fine, cand[1][i], cand[0][i]))
        for i, (n, shape) in enumerate((("p_is_l", 1), ("d", 5), ("dnear", 1), ("pe", _EXP))))
    f1_psign = reg(f"{name}_f1_psign", 1, f0_psign)
    f1_pzero = reg(f"{name}_f1_pzero", 1, f0_pzero)
    f1_cm = reg(f"{name}_f1_cm", 32, f0_c.mant << 8)
    f1_ce = reg(f"{name}_f1_ce", _EXP, f0_c.elsb - 8)
    f1_csign = reg(f"{name}_f1_csign", 1, f0_c.sign)
    f1_czero = reg(f"{name}_f1_czero", 1, f0_c.zero)
    # Whether the magnitudes subtract (the signs differ, whichever operand is L), for f2.
    f1_sub = reg(f"{name}_f1_sub", 1, f0_psign ^ f0_c.sign)

    # f2: L = the operand with the larger exponent; S shifted into L's frame (or a sticky 1).
    p_is_l = f1_p_is_l
    l_m, l_e, l_s, l_z = (Mux(p_is_l, a, b) for a, b in ((f1_pm, f1_cm), (f1_pe, f1_ce),
                                                          (f1_psign, f1_csign), (f1_pzero, f1_czero)))
    s_m, s_z = (Mux(p_is_l, b, a) for a, b in ((f1_pm, f1_cm), (f1_pzero, f1_czero)))
    near = Signal(unsigned(63), name=f"{name}_f2_near")
    m.d.comb += near.eq(s_m << ~f1_d)  # 31 - d for d in 0..31
    s_term = Mux(s_z, 0, Mux(f1_dnear, near, 1))
    f2_l = reg(f"{name}_f2_l", 32, Mux(l_z, 0, l_m))
    f2_lsign = reg(f"{name}_f2_lsign", 1, l_s)
    # S is registered already inverted for a subtraction (f3's add then starts from registers:
    # the signs' XOR, its fanout to 66 XORs and the carry chain were a 10.4 ns path, 2.7 ns of
    # it the XOR's fanout).
    f2_sub = reg(f"{name}_f2_sub", 1, f1_sub)
    f2_sx = reg(f"{name}_f2_sx", 66, s_term ^ f1_sub.replicate(66))
    f2_e = reg(f"{name}_f2_e", _EXP, l_e - 31)

    # f3: the exact (or sticky-equivalent) sum, as W = L + S or L - S with L's sign applied in
    # f4: one carry chain, S inverted and the subtraction's +1 entering as the carry of an extra
    # low bit (negating L and S, then adding, was two chains in series: 9.6 ns routed).
    total = Signal(67, name=f"{name}_f3_total")
    m.d.comb += total.eq(Cat(Const(1, 1), f2_l << 31) + Cat(f2_sub, f2_sx))
    f3_w = reg(f"{name}_f3_w", signed(66), total[1:])
    f3_lsign = reg(f"{name}_f3_lsign", 1, f2_lsign)
    f3_e = reg(f"{name}_f3_e", _EXP, f2_e)

    def lead_input(w):
        # lz(t) (t: W, or ~W for W < 0) is where W's bits first differ from the sign: the
        # leading-zero count of v, each bit W's bit XOR the one above (the sign itself for bit
        # 63), which needs no fanout of the sign (t's 64 XORs with it were 2.8 ns of routing on
        # the unit's 10.2 ns path). max(lz(t) - 1, 0), and 63 for t == 0, is the leading-zero
        # count of v | (v << 1) (the tree gives 63 for all zeros): no compare or subtract after.
        v = Cat(w[:63] ^ w[1:64], w[63] ^ w[65])
        return v | (v << 1)[:64]

    if deep:
        # The count's input registered with W (two levels after f3's carry chain), so that f4 is
        # the count's tree alone (the XORs, then the tree, were a 9.7 ns path).
        f3_y = reg(f"{name}_f3_y", 64, lead_input(total[1:]))

    # f4: sign and magnitude; the leading-zero count is taken from W itself, in parallel with the
    # negation (a leading-zero count of |W| after it, then the shift, was the fma's longest stage).
    # t = W, or ~W = |W| - 1 for W < 0, has lz(|W|) or lz(|W|) + 1 leading zeros: the magnitude
    # is shifted by one less (coarse), and a final one-bit shift (fine) finishes the normalization.
    neg = f3_w < 0
    mag = Signal(64, name=f"{name}_f4_mag_next")
    m.d.comb += mag.eq(Mux(neg, -f3_w, f3_w))
    y = Signal(64, name=f"{name}_f4_y")
    m.d.comb += y.eq(f3_y if deep else lead_input(f3_w))
    _, coarse = _leading_zeros(m, y, f"{name}_f4_y")
    # The trailing-zero count of W (and so of |W|), for f5's sticky bit: each byte's, then the
    # lowest nonzero byte's count plus its offset. The deep fma registers the bytes' counts and
    # combines them in f5a (the count's tree after the fanout of W was a 9.9 ns path).
    groups = [_leading_zeros(m, f3_w[8 * g:8 * g + 8][::-1], f"{name}_f4_tz{g}") for g in range(8)]
    if deep:
        groups = [(reg(f"{name}_f4_tzz{g}", 1, z), reg(f"{name}_f4_tzc{g}", 3, c))
                  for g, (z, c) in enumerate(groups)]
    width = 8
    while len(groups) > 1:
        groups = [(lo_z & hi_z, Mux(lo_z, width + hi_c, lo_c))
                  for (lo_z, lo_c), (hi_z, hi_c) in zip(groups[0::2], groups[1::2], strict=True)]
        width *= 2
    f4_tz = groups[0][1] if deep else reg(f"{name}_f4_tz", 6, groups[0][1])
    f4_mag = reg(f"{name}_f4_mag", 64, mag)
    f4_coarse = reg(f"{name}_f4_coarse", 6, coarse)
    f4_zero = reg(f"{name}_f4_zero", 1, f3_w == 0)
    f4_sign = reg(f"{name}_f4_sign", 1, neg ^ f3_lsign)
    f4_e = reg(f"{name}_f4_e", _EXP, f3_e)

    # f5: normalize, keep 24 bits plus guard and sticky. Only the kept bits wait for the shift:
    # the sticky bit and the exponent are taken from the registered counts, once for each value
    # of the final one-bit shift (fine), which then only selects (the sticky OR and the
    # exponent's subtract after the 64-bit shift were the stage's 13.2 ns path). After a shift by
    # coarse + fine, norm[:39] holds a one iff the magnitude's lowest one (at tz) lands below 39
    # (a mask of the magnitude's low bits by coarse, 78 compares on it, was an 11.3 ns path).
    rough = Signal(64, name=f"{name}_f5_rough")
    m.d.comb += rough.eq(f4_mag << f4_coarse)
    low = Signal(7, name=f"{name}_f5_low")
    m.d.comb += low.eq(f4_tz + f4_coarse)
    sticky = [low < 39 - f for f in (0, 1)]
    elead = [Signal(_EXP, name=f"{name}_f5_elead{f}") for f in (0, 1)]
    m.d.comb += [elead[f].eq(f4_e + (63 - f) - f4_coarse) for f in (0, 1)]
    sign, zero = f4_sign, f4_zero
    if deep:
        # f5a: the coarse shift registered before fine is taken from it (the shift's six levels,
        # after the 64-way fanout of coarse, then the fine select: 10 ns or more).
        rough = Cat(Const(0, 38), reg(f"{name}_f5a_rough", 26, rough[38:]))
        # The sum tz + coarse registered, compared in f5 (the combine of the bytes' counts, the
        # add and both compares in one stage were a 10.4 ns path).
        low = reg(f"{name}_f5a_low", 7, low)
        sticky = [low < 39 - f for f in (0, 1)]
        elead = [reg(f"{name}_f5a_elead{f}", _EXP, elead[f]) for f in (0, 1)]
        sign, zero = reg(f"{name}_f5a_sign", 1, sign), reg(f"{name}_f5a_zero", 1, zero)
    fine = ~rough[63]
    norm = Signal(64, name=f"{name}_f5_norm")
    m.d.comb += norm.eq(Mux(fine, rough << 1, rough))
    f5_mant = reg(f"{name}_f5_mant", 24, norm[40:])
    f5_guard = reg(f"{name}_f5_guard", 1, norm[39])
    f5_sticky = reg(f"{name}_f5_sticky", 1, Mux(fine, sticky[1], sticky[0]))
    f5_elead = reg(f"{name}_f5_elead", _EXP, Mux(fine, elead[1], elead[0]))
    f5_sign = reg(f"{name}_f5_sign", 1, sign)
    f5_zero = reg(f"{name}_f5_zero", 1, zero)

    # f6: round to nearest even; a carry out (only from an all-ones significand, so known without
    # the add's carry chain) renormalizes and picks the exponent one up.
    inc = f5_guard & (f5_sticky | f5_mant[0])
    carry = inc & f5_mant.all()
    rounded = Signal(24, name=f"{name}_f6_rounded")
    m.d.comb += rounded.eq(f5_mant + inc)
    f6_mant = reg(f"{name}_f6_mant", 24, Mux(carry, 1 << 23, rounded))
    f6_elsb = reg(f"{name}_f6_elsb", _EXP, Mux(carry, f5_elead - 22, f5_elead - 23))
    f6_sign = reg(f"{name}_f6_sign", 1, f5_sign)
    f6_zero = reg(f"{name}_f6_zero", 1, f5_zero)
    return _Float(f6_sign, f6_elsb, f6_mant, f6_zero)


FMA_STAGES = 7
FMA_DEEP_STAGES = 10  # _fma(..., deep=True)


def _div(p: _Pipe, a: _Float, b: _Float, tags: dict, name: str):
    """``RNE24(a / b)`` for normal ``b``, pipelined over :data:`DIV_STAGES` stages.

    ``tags`` (name -> value) travel along. Returns ``(_Float, tags)`` at the output.
    """
    # q0: operands in; the quotient of the significands is in (1/2, 2).
    rem = p.reg(f"{name}_q0_rem", 26, a.mant)
    den = p.reg(f"{name}_q0_den", 24, b.mant)
    quo = p.reg(f"{name}_q0_quo", 27, 0)
    sign = p.reg(f"{name}_q0_sign", 1, a.sign ^ b.sign)
    zero = p.reg(f"{name}_q0_zero", 1, a.zero)
    elead = p.reg(f"{name}_q0_elead", signed(12), a.elsb - b.elsb)
    tags = {k: p.tag(f"{name}_q0_{k}", len(v), v) for k, v in tags.items()}
    for i in range(1, 28):
        ge = rem >= den
        nrem = Mux(ge, rem - den, rem)
        rem = p.reg(f"{name}_q{i}_rem", 26, nrem << 1)
        quo = p.reg(f"{name}_q{i}_quo", 27, (quo << 1) | ge)
        den = p.reg(f"{name}_q{i}_den", 24, den)
        sign = p.reg(f"{name}_q{i}_sign", 1, sign)
        zero = p.reg(f"{name}_q{i}_zero", 1, zero)
        elead = p.reg(f"{name}_q{i}_elead", signed(12), elead)
        tags = {k: p.tag(f"{name}_q{i}_{k}", len(v), v) for k, v in tags.items()}
    # quo = floor(ma / mb * 2^26); the leading one is bit 26 or 25.
    top = quo[26]
    mant = Mux(top, quo[3:27], quo[2:26])
    guard = Mux(top, quo[2], quo[1])
    sticky = Mux(top, quo[:2].any(), quo[0]) | (rem != 0)
    # The rounding's carry out (only from an all-ones significand) is known without the add's
    # carry chain, and the exponent is picked from two candidates by it: the remainder's sticky,
    # the rounding add and its carry into the exponent's add were AvgPool's critical path.
    inc = guard & (sticky | mant[0])
    carry = inc & mant.all()
    rounded = Signal(24, name=f"{name}_r_rounded")
    p.m.d.comb += rounded.eq(mant + inc)
    elsb = [Signal(signed(12), name=f"{name}_r_elsb{c}") for c in (0, 1)]
    p.m.d.comb += [elsb[c].eq(elead + top - 24 + c) for c in (0, 1)]
    out = _Float(p.reg(f"{name}_r_sign", 1, sign),
                 p.reg(f"{name}_r_elsb", signed(12), Mux(carry, elsb[1], elsb[0])),
                 p.reg(f"{name}_r_mant", 24, Mux(carry, 1 << 23, rounded)),
                 p.reg(f"{name}_r_zero", 1, zero))
    tags = {k: p.tag(f"{name}_r_{k}", len(v), v) for k, v in tags.items()}
    return out, tags


DIV_STAGES = 29  # operands in, 27 quotient bits, rounding


def _encode(f: _Float):
    """float32 bits of a normal (or zero) :class:`_Float`; the caller has checked the exponent range."""
    return Mux(f.zero, 0, (f.sign << 31) | ((f.elsb + 23 + 127)[:8] << 23) | f.mant[:23])


class ScaleUnit(wiring.Component):
    """The per-layer float32 constants of ADD and GLOBAL_AVGPOOL, computed from the descriptor's scales.

    Sequential (one shift-add multiplier, one restoring divider, one :func:`_fma`), a few dozen
    cycles per layer, each step rounded exactly as onnxruntime does in float32:

    * ADD (``add``): ``ra = f32(sx / sy)``, ``rb = f32(s2 / sy)``,
      ``k = f32(zy) - fma(ra, zx, f32(rb * z2))`` (as :func:`jacquard.sim.golden.add`), in about
      115 cycles (two divisions, four deep fmas). ``add_ok``: ``ra``, ``rb`` and a nonzero ``k``
      have exponents in ``EXP_MIN..EXP_MAX`` (:class:`~jacquard.rtl.eltwise_add.EltwiseAdd`'s range).
    * GLOBAL_AVGPOOL: ``multiplier = f32(sx / f32(sy * hw))`` (as
      :func:`jacquard.sim.golden.global_avg_pool`), in 43 to 61 cycles (the multiply takes a cycle
      per bit of ``hw``). ``m_ok``: ``hw`` is not 0, ``f32(sy * hw)`` is finite and
      ``2^-32 <= multiplier < 256`` (the ISA's check).

    The scales must be normal floats (the caller refuses zero, subnormal, inf and NaN bits).

    Members
    -------
    start : In(1)
        Pulse: compute from the inputs (held until ``busy`` falls).
    add : In(1)
        ADD constants, else the global average's multiplier.
    sx, s2, sy : In(32)
        float32 bits of the (first) input, second input and output scales.
    zx, z2, zy : In(signed(8))
        Zero points of the same.
    hw : In(24)
        Pixels of the image (global average).
    busy : Out(1)
    multiplier, ra, rb, k : Out(32)
        float32 bits of the results, valid once ``busy`` has fallen.
    m_ok, add_ok : Out(1)
    """

    start: In(1)
    add: In(1)
    sx: In(32)
    s2: In(32)
    sy: In(32)
    zx: In(signed(8))
    z2: In(signed(8))
    zy: In(signed(8))
    hw: In(24)
    busy: Out(1)
    multiplier: Out(32)
    ra: Out(32)
    rb: Out(32)
    k: Out(32)
    m_ok: Out(1)
    add_ok: Out(1)

    def elaborate(self, platform) -> Module:
        m = Module()

        def freg(name):
            return _Float(Signal(name=f"{name}_sign"), Signal(_EXP, name=f"{name}_elsb"),
                          Signal(24, name=f"{name}_mant"), Signal(name=f"{name}_zero"))

        def assign(dst: _Float, src: _Float):
            return [dst.sign.eq(src.sign), dst.elsb.eq(src.elsb), dst.mant.eq(src.mant),
                    dst.zero.eq(src.zero)]

        sx, _, _ = _decode(m, self.sx, "su_sx")
        s2, _, _ = _decode(m, self.s2, "su_s2")
        sy, _, _ = _decode(m, self.sy, "su_sy")
        ra, rb, u, t, zyf, k, pp, mm = (freg(f"su_{n}") for n in ("ra", "rb", "u", "t", "zyf", "k", "p", "m"))
        zero_f = _Float(Const(0), Const(0, _EXP), Const(0, 24), Const(1))
        one_f = _Float(Const(0), Const(-23, _EXP), Const(1 << 23, 24), Const(0))

        # -- the fused multiply-add: inputs held for its stages, then the result is read ----------
        # The deep fma: the 7-stage one's product was the unit's critical path (14.4 ns routed);
        # three more cycles per fma cost 12 cycles per ADD layer.
        f_n = Signal(signed(9))
        f_mul, f_add = freg("su_fmul"), freg("su_fadd")
        f_out = _fma(_Pipe(m, Const(1)), f_n, f_mul, f_add, "su_fma", deep=True)
        wait = Signal(range(FMA_DEEP_STAGES + 3))
        # The count runs from registers only: in_fma (the FSM is in one of the fma states) and
        # fma_done (the count is at FMA_DEEP_STAGES + 2, decided a cycle ahead). Counted and
        # compared under the state's decode, it was the unit's critical path (10.3 ns routed).
        in_fma = Signal()
        fma_done = Signal()
        # fma_done for the last fma only, its own flop: fma_done's fan-out (the results' enables,
        # fma_idx) stretched its net, and through the FSM's decode into the state register it
        # was a 14.6 ns path on the 85F.
        fmas_done = Signal()
        fma_will_end = in_fma & ~fma_done & (wait == FMA_DEEP_STAGES + 1)
        m.d.sync += [wait.eq(Mux(in_fma & ~fma_done, wait + 1, 0)), fma_done.eq(fma_will_end)]

        # -- the divider: a / b, one quotient bit per cycle ----------------------------------------
        d_a, d_b = freg("su_da"), freg("su_db")
        rem = Signal(26)
        quo = Signal(27)
        steps = Signal(range(28))
        top = quo[26]
        d_mant = Mux(top, quo[3:27], quo[2:26])
        guard = Mux(top, quo[2], quo[1])
        sticky = Mux(top, quo[:2].any(), quo[0]) | (rem != 0)
        # The rounded quotient is registered (state _ROUND) before its carry reaches the exponent
        # (state _PACK): the rounding add, then the exponent's add, in one cycle were a long path.
        d_rnd = Signal(25)
        d_e = Signal(_EXP)  # the exponent of the quotient's lsb before the rounding carry
        d_out = _Float(d_a.sign ^ d_b.sign, Signal(_EXP, name="su_dq_elsb"),
                       Mux(d_rnd[24], 1 << 23, d_rnd), d_a.zero)
        m.d.comb += d_out.elsb.eq(d_e + d_rnd[24])

        # -- the multiply sy * hw (exact, 48 bits), then normalize and round ----------------------
        mul_a = Signal(48)
        mul_b = Signal(24)
        prod = Signal(64)
        p_zero_c, lz_c = _leading_zeros(m, prod, "su_p")
        # The normalization is registered (states LZ_P, NORM_P) before the rounding reads it: the
        # leading zero count, the 64-bit shift, the rounding add and the exponent compare in one
        # cycle were the longest path of the SoC's sequencer.
        p_zero = Signal()
        lz = Signal.like(lz_c)
        norm = Signal(64)
        # The rounded product is registered (ROUND_P) before its carry reaches the exponent and its
        # range check (PACK_P): the rounding add, the exponent's add and compare in one cycle were
        # the unit's critical path (12.8 ns routed).
        lead0 = Signal(_EXP)  # exponent of the product's leading bit before the rounding carry
        p_rnd = Signal(25)
        p_over = Signal()

        # The four fmas of ADD, one after the other, picked by the registered fma_idx rather than
        # by the FSM's state: k = zyf - (zx * ra + z2 * rb) as zyf = zy * 1, u = z2 * rb,
        # t = zx * ra + u, k = -1 * t + zyf. The operands are registered (the state decode and
        # operand multiplexer in front of the multiply were a long path; their select decoded from
        # the state was a 10.4 ns path with 6.4 ns of routing), so the result is there a cycle later.
        fmas = [(self.zy, one_f, zero_f, zyf), (self.z2, rb, zero_f, u), (self.zx, ra, u, t),
                (Const(-1, signed(2)), t, zyf, k)]
        fma_idx = Signal(2)
        with m.Switch(fma_idx):
            for i, (n, mul, add, dst) in enumerate(fmas):
                with m.Case(i):
                    m.d.sync += [f_n.eq(n), *assign(f_mul, mul), *assign(f_add, add)]
                    with m.If(fma_done):
                        m.d.sync += assign(dst, f_out)
        with m.If(~self.busy):
            m.d.sync += fma_idx.eq(0)
        with m.Elif(fma_done):
            m.d.sync += fma_idx.eq(fma_idx + 1)
        m.d.sync += fmas_done.eq(fma_will_end & (fma_idx == len(fmas) - 1))

        def div_state(name, a, b, dst, nxt, to_fma=False):
            with m.State(name):
                m.d.sync += [*assign(d_a, a), *assign(d_b, b), rem.eq(a.mant), quo.eq(0), steps.eq(0)]
                m.next = name + "_RUN"
            with m.State(name + "_RUN"):
                ge = rem >= d_b.mant
                m.d.sync += [rem.eq(Mux(ge, rem - d_b.mant, rem) << 1), quo.eq((quo << 1) | ge),
                             steps.eq(steps + 1)]
                with m.If(steps == 26):
                    m.next = name + "_ROUND"
            with m.State(name + "_ROUND"):
                m.d.sync += [d_rnd.eq(d_mant + (guard & (sticky | d_mant[0]))),
                             d_e.eq(d_a.elsb - d_b.elsb + top - 1 - 23)]
                m.next = name + "_PACK"
            with m.State(name + "_PACK"):
                m.d.sync += assign(dst, d_out)
                if to_fma:
                    m.d.sync += in_fma.eq(1)
                m.next = nxt

        # The shift-add multiply runs on its own: loaded while idle (busy is low exactly in IDLE),
        # then a step every cycle until mul_b is spent; MUL only waits for that. Its 136 flops'
        # enables decoded from the state were the unit's critical path (10.9 ns routed).
        with m.If(~self.busy):
            m.d.sync += [mul_a.eq(sy.mant), mul_b.eq(self.hw), prod.eq(0)]
        with m.Elif(mul_b != 0):
            m.d.sync += [prod.eq(Mux(mul_b[0], prod + mul_a, prod)), mul_a.eq(mul_a << 1),
                         mul_b.eq(mul_b >> 1)]

        with m.FSM(name="scale"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += self.busy.eq(1)
                    m.next = "START"
            with m.State("START"):
                with m.If(self.add):
                    m.next = "RA"
                with m.Else():
                    m.next = "MUL"
            div_state("RA", sx, sy, ra, "RB")
            div_state("RB", s2, sy, rb, "FMA", to_fma=True)
            with m.State("FMA"):
                with m.If(fmas_done):
                    m.d.sync += in_fma.eq(0)
                    m.next = "DONE"
            with m.State("MUL"):
                with m.If(mul_b == 0):
                    m.next = "LZ_P"
            # The leading-zero count and the 64-bit shift by it take a state each (together
            # 14 levels).
            with m.State("LZ_P"):
                m.d.sync += [p_zero.eq(p_zero_c), lz.eq(lz_c)]
                m.next = "NORM_P"
            with m.State("NORM_P"):
                m.d.sync += [norm.eq(prod << lz), lead0.eq(sy.elsb + 63 - lz)]
                m.next = "ROUND_P"
            with m.State("ROUND_P"):
                m.d.sync += p_rnd.eq(norm[40:] + (norm[39] & (norm[:39].any() | norm[40])))
                m.next = "PACK_P"
            with m.State("PACK_P"):
                lead = lead0 + p_rnd[24]  # exponent of f32(sy * hw)'s leading bit
                m.d.sync += [pp.sign.eq(0), pp.zero.eq(p_zero), pp.elsb.eq(lead - 23),
                             pp.mant.eq(Mux(p_rnd[24], 1 << 23, p_rnd)), p_over.eq(lead > 127)]
                m.next = "M"
            div_state("M", sx, pp, mm, "DONE")
            with m.State("DONE"):
                m.d.sync += self.busy.eq(0)
                m.next = "IDLE"

        def in_range(f, lo, hi):
            return (f.elsb + 23 >= lo) & (f.elsb + 23 <= hi)

        # The outputs are registered (the range checks' adds and compares were a 10.0 ns path
        # into the reader): every result is written at least a cycle before busy falls (in DONE),
        # so the outputs are right when it has.
        m.d.sync += [
            self.ra.eq(_encode(ra)), self.rb.eq(_encode(rb)), self.k.eq(_encode(k)),
            self.multiplier.eq(_encode(mm)),
            self.add_ok.eq(in_range(ra, EXP_MIN, EXP_MAX) & in_range(rb, EXP_MIN, EXP_MAX)
                           & (k.zero | in_range(k, EXP_MIN, EXP_MAX))),
            self.m_ok.eq(~pp.zero & ~p_over & in_range(mm, -32, 7)),
        ]
        return m
