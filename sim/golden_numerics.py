"""Shared numerics of the golden model: argument checks, exact requantization, lookup tables, add.

Everything here is bit-exact with onnxruntime's int8 x int8 CPU kernels (see ``docs/CONFORMANCE.md``).
The public names are re-exported by :mod:`jacquard.sim.golden`; import them from there.
"""

from __future__ import annotations

from collections.abc import Callable
from numbers import Integral

import numpy as np

__all__ = [
    "INT8_MAX",
    "INT8_MIN",
    "add",
    "apply_lut",
    "build_lut",
    "dequantize",
    "quantize",
    "requant_multiplier",
    "requantize",
]

INT8_MIN, INT8_MAX = -128, 127
F32 = np.float32


# -- argument checks (shared by all golden modules) -------------------------------------------------

def check_int8(name: str, x, ndim: int | None = None) -> np.ndarray:
    """Return ``x`` if it is an int8 ndarray of ``ndim`` dimensions, else raise ``ValueError``."""
    if not isinstance(x, np.ndarray) or x.dtype != np.int8:
        raise ValueError(f"{name} must be an int8 ndarray, not {_describe(x)}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, not shape {x.shape}")
    return x


def check_int32(name: str, x, shape: tuple[int, ...]) -> np.ndarray:
    """Return ``x`` if it is an int32 ndarray of exactly ``shape``, else raise ``ValueError``."""
    if not isinstance(x, np.ndarray) or x.dtype != np.int32:
        raise ValueError(f"{name} must be an int32 ndarray, not {_describe(x)}")
    if x.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, not {x.shape}")
    return x


def check_zero_point(name: str, zp) -> int:
    """Return ``zp`` as an int if it is an integer in int8 range, else raise ``ValueError``."""
    if isinstance(zp, np.ndarray) and zp.size == 1:
        zp = zp.reshape(()).item()
    if isinstance(zp, bool) or not isinstance(zp, Integral) or not INT8_MIN <= int(zp) <= INT8_MAX:
        raise ValueError(f"{name} must be an integer in -128..127, not {zp!r}")
    return int(zp)


def check_scale(name: str, scale, *, per_channel: bool = False) -> np.ndarray:
    """Return ``scale`` as float32 (scalar, or 1-D if ``per_channel``); raise if <= 0 or not finite."""
    arr = np.asarray(scale)
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise ValueError(f"{name} must be a real number, not {scale!r}")
    if arr.ndim > (1 if per_channel else 0):
        raise ValueError(f"{name} must be a scalar{' or 1-D' if per_channel else ''}, not shape {arr.shape}")
    arr32 = arr.astype(F32)
    if not np.all(np.isfinite(arr32)) or not np.all(arr32 > 0):
        raise ValueError(f"{name} must be finite and > 0 (as float32), not {scale!r}")
    return arr32


def check_clamp(lo, hi) -> tuple[int, int]:
    """Return ``(lo, hi)`` if both are int8 values with ``lo <= hi``, else raise ``ValueError``."""
    lo = check_zero_point("lo", lo)
    hi = check_zero_point("hi", hi)
    if lo > hi:
        raise ValueError(f"lo must be <= hi, not lo={lo!r}, hi={hi!r}")
    return lo, hi


def check_pair(name: str, value, lo: int, hi: int) -> tuple[int, int]:
    """Return ``value`` (an int or a pair of ints) as a pair, each in ``lo..hi``, else raise."""
    pair = (value, value) if isinstance(value, Integral) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, Integral) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an integer or a pair of integers, not {value!r}")
    if not all(lo <= int(v) <= hi for v in pair):
        raise ValueError(f"{name} must be in {lo}..{hi}, not {value!r}")
    return int(pair[0]), int(pair[1])


def check_pads(pads, kernel: tuple[int, int]) -> tuple[int, int, int, int]:
    """Return ``pads`` (top, left, bottom, right) if each is in ``0..k-1`` of its axis, else raise."""
    pads_t = tuple(pads) if not isinstance(pads, Integral) else (pads,) * 4
    if len(pads_t) != 4 or not all(isinstance(p, Integral) and not isinstance(p, bool) for p in pads_t):
        raise ValueError(f"pads must be 4 integers (top, left, bottom, right), not {pads!r}")
    # The line buffer inserts padding inside one window, so a pad never exceeds kernel - 1
    # (onnxruntime's pooling enforces the same rule).
    limits = (kernel[0], kernel[1], kernel[0], kernel[1])
    if not all(0 <= int(p) < k for p, k in zip(pads_t, limits, strict=True)):
        raise ValueError(f"pads must each be in 0..kernel-1 (kernel {kernel}), not {pads!r}")
    return tuple(int(p) for p in pads_t)


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"ndarray of dtype {x.dtype} and shape {x.shape}"
    return repr(type(x).__name__)


# -- requantization ---------------------------------------------------------------------------------

def requant_multiplier(sx: float, sw: float | np.ndarray, sy: float) -> np.ndarray:
    """Return the float32 requantization multiplier ``f32(f32(sx) * f32(sw) / f32(sy))``.

    This is the order onnxruntime's QLinearConv and QLinearMatMul use (``x_scale * w_scale / y_scale``,
    left to right, in float32), so that :func:`requantize` with it is bit-exact with them.

    Parameters
    ----------
    sx, sy : float
        Input and output scales.
    sw : float or ndarray
        Weight scale, per tensor (scalar) or per output channel (1-D).

    Returns
    -------
    ndarray
        float32, of the shape of ``sw``.

    Raises
    ------
    ValueError
        If a scale is not finite or not > 0.
    """
    sx32 = check_scale("sx", sx)
    sw32 = check_scale("sw", sw, per_channel=True)
    sy32 = check_scale("sy", sy)
    return (sx32 * sw32) / sy32


def requantize(acc: np.ndarray, multiplier: np.ndarray | float, zero_point: int,
               lo: int = INT8_MIN, hi: int = INT8_MAX) -> np.ndarray:
    """Requantize int32 accumulators: ``clamp(rint(f32(acc) * M) + zero_point, lo, hi)``.

    ``rint`` rounds half to even, as x86 ``cvtps2dq`` does in onnxruntime's requantization. Clamping
    after rounding equals onnxruntime's clamping before it, because the bounds are integers.

    Parameters
    ----------
    acc : ndarray
        int32 accumulators, channels last ``(..., C)``.
    multiplier : float or ndarray
        float32 multiplier, scalar or ``(C,)`` (broadcast on the last axis).
    zero_point : int
        Output zero point, int8.
    lo, hi : int
        Clamp bounds in the int8 domain; ``lo = zero_point`` fuses ReLU.

    Returns
    -------
    ndarray
        int8, the shape of ``acc``.

    Raises
    ------
    ValueError
        On a wrong dtype or shape, a zero point or bound outside int8, or a bad multiplier.
    """
    if not isinstance(acc, np.ndarray) or acc.dtype != np.int32:
        raise ValueError(f"acc must be an int32 ndarray, not {_describe(acc)}")
    m = check_scale("multiplier", multiplier, per_channel=True)
    if m.ndim == 1 and (acc.ndim == 0 or m.shape[0] != acc.shape[-1]):
        raise ValueError(f"multiplier has {m.shape[0]} channels but acc has shape {acc.shape}")
    zp = check_zero_point("zero_point", zero_point)
    lo, hi = check_clamp(lo, hi)
    scaled = np.rint(acc.astype(F32) * m)
    # Clip in float first: a huge product must saturate, not wrap when cast to an integer.
    return np.clip(scaled + F32(zp), lo, hi).astype(np.int8)


# -- element-wise lookup tables ---------------------------------------------------------------------

_ALL_INT8 = np.arange(INT8_MIN, INT8_MAX + 1, dtype=np.int32)


def dequantize(x: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """onnxruntime's DequantizeLinear: ``f32(f32(x - zero_point) * scale)``, float32."""
    return (np.asarray(x, dtype=np.int32) - zero_point).astype(F32) * F32(scale)


def quantize(v: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """onnxruntime's QuantizeLinear to int8: ``clamp(rint(f32(v / scale)) + zero_point)``.

    MLAS divides by the scale (it does not multiply by a reciprocal), then clamps and rounds half to
    even; the division is done in float32 here too.
    """
    q = np.rint(np.asarray(v, dtype=F32) / F32(scale))
    return np.clip(q + F32(zero_point), INT8_MIN, INT8_MAX).astype(np.int8)


def build_lut(fn: Callable[[np.ndarray], np.ndarray], x_scale: float, x_zero_point: int,
              y_scale: float, y_zero_point: int) -> np.ndarray:
    """Build the int8 -> int8 table of ``quantize(fn(dequantize(i)))`` for all 256 inputs.

    This is exactly what onnxruntime computes for an op that it runs as DequantizeLinear -> float op ->
    QuantizeLinear, and what its QLinearLookupBase ops (QLinearLeakyRelu, QLinearSigmoid) precompute:
    the table is exact by construction as long as ``fn`` computes the float op in float32 the way
    onnxruntime does. Ops whose float kernel is not a single correctly rounded step (Sigmoid, Exp)
    must instead be tabulated by running onnxruntime itself on the 256 inputs
    (:func:`jacquard.sim.quantize.lut_from_onnxruntime`).

    Parameters
    ----------
    fn : callable
        Maps the float32 dequantized inputs ``(256,)`` to float32 outputs, either ``(256,)`` (one
        table) or ``(C, 256)`` (one table per channel, e.g. PRelu's per-channel slopes).
    x_scale, x_zero_point, y_scale, y_zero_point : float, int
        Input and output quantization.

    Returns
    -------
    ndarray
        int8 ``(256,)`` or ``(C, 256)``, indexed by ``int(x) + 128``.

    Raises
    ------
    ValueError
        On a bad scale or zero point, or if ``fn`` returns another shape.
    """
    sx = check_scale("x_scale", x_scale)
    zx = check_zero_point("x_zero_point", x_zero_point)
    sy = check_scale("y_scale", y_scale)
    zy = check_zero_point("y_zero_point", y_zero_point)
    out = np.asarray(fn(dequantize(_ALL_INT8, sx, zx)), dtype=F32)
    if out.ndim not in (1, 2) or out.shape[-1] != 256:
        raise ValueError(f"fn must return shape (256,) or (C, 256), not {out.shape}")
    return quantize(out, sy, zy)


def apply_lut(x: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map every int8 element of ``x`` through ``lut`` (``(256,)`` per tensor, ``(C, 256)`` per channel).

    Raises
    ------
    ValueError
        If ``x`` or ``lut`` is not int8, or a per-channel table does not match ``x``'s last axis.
    """
    check_int8("x", x)
    check_int8("lut", lut)
    index = x.astype(np.intp) + 128
    if lut.shape == (256,):
        return lut[index]
    if lut.ndim == 2 and lut.shape[1] == 256 and x.ndim >= 1 and lut.shape[0] == x.shape[-1]:
        return lut[np.arange(lut.shape[0]), index]
    raise ValueError(f"lut must have shape (256,) or (C, 256) with C = {x.shape[-1:]}, not {lut.shape}")


# -- element-wise add -------------------------------------------------------------------------------

def _fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Fused multiply-add ``a * b + c`` of float32 values, rounded once to float32 (like ``vfmadd``).

    The product of two float32 is exact in float64; the sum is made exact with TwoSum, so the only
    rounding left is float64 -> float32, which is wrong only on an exact float32 tie that TwoSum's error
    term breaks. That case is corrected explicitly.
    """
    p = a.astype(np.float64) * b.astype(np.float64)
    c64 = np.asarray(c, dtype=np.float64)
    s = p + c64
    bb = s - p
    err = (p - (s - bb)) + (c64 - bb)
    r = s.astype(F32)
    r64 = r.astype(np.float64)
    other = np.nextafter(r, np.where(s > r64, F32(np.inf), F32(-np.inf)).astype(F32))
    tie = (s != r64) & (s == (r64 + other.astype(np.float64)) / 2) & (err != 0)
    if np.any(tie):
        up = np.maximum(r, other)
        down = np.minimum(r, other)
        r = np.where(tie, np.where(err > 0, up, down), r)
    return r


def add(a: np.ndarray, a_scale: float, a_zp: int, b: np.ndarray, b_scale: float, b_zp: int,
        y_scale: float, y_zp: int) -> np.ndarray:
    """Add two int8 tensors of one shape with requantization, bit-exact with onnxruntime's QLinearAdd.

    onnxruntime (MLAS ``MlasQLinearAddKernelAvx2Helper``) computes, in float32::

        ra = f32(a_scale / y_scale), rb = f32(b_scale / y_scale)
        k  = f32(y_zp) - fma(ra, a_zp, f32(rb * b_zp))
        y  = sat8(cvtps(fma(a, ra, fma(b, rb, k))))

    with fused multiply-adds, rounding half to even, then saturating packs. The source writes
    ``k = zp_c - (ra * zp_a + rb * zp_b)``; the shipped build contracts it into the ``fma`` above, which
    was singled out among the possible contractions by comparing all 65536 ``(a, b)`` pairs on many
    parameter sets (``tests/test_golden_vs_onnxruntime.py::test_add``). Broadcasting is refused:
    onnxruntime runs a broadcast operand through another arithmetic path (a scalar folded into ``k``).

    Parameters
    ----------
    a, b : ndarray
        int8 tensors of the same shape.
    a_scale, a_zp, b_scale, b_zp, y_scale, y_zp : float, int
        Quantization of the inputs and the output.

    Returns
    -------
    ndarray
        int8, the shape of ``a``.

    Raises
    ------
    ValueError
        On a wrong dtype, different shapes, a bad scale or zero point.
    """
    check_int8("a", a)
    check_int8("b", b)
    if a.shape != b.shape:
        raise ValueError(f"b must have the shape of a {a.shape}, not {b.shape}")
    sa, sb, sy = (check_scale(n, s) for n, s in (("a_scale", a_scale), ("b_scale", b_scale),
                                                 ("y_scale", y_scale)))
    za, zb, zy = (check_zero_point(n, z) for n, z in (("a_zp", a_zp), ("b_zp", b_zp), ("y_zp", y_zp)))
    ra, rb = sa / sy, sb / sy
    k = F32(zy) - _fma_f32(ra, F32(za), rb * F32(zb))
    acc = _fma_f32(b.astype(F32), np.broadcast_to(rb, b.shape), np.broadcast_to(k, b.shape))
    acc = _fma_f32(a.astype(F32), np.broadcast_to(ra, a.shape), acc)
    # cvtps2dq returns INT32_MIN for values it cannot represent, which the packs saturate to -128.
    big = ~(np.abs(acc) < F32(2.0**31))
    out = np.clip(np.rint(np.where(big, F32(0), acc)), INT8_MIN, INT8_MAX).astype(np.int8)
    out[big] = INT8_MIN
    return out
