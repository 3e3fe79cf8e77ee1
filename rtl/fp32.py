"""Bit-level NumPy model of the exact requantizer, one function per pipeline stage of the RTL.

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

from __future__ import annotations

import numpy as np

__all__ = [
    "SAT_MAGNITUDE",
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
