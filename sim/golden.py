"""The golden model: what the accelerator computes, bit-exact with onnxruntime's int8 x int8 kernels.

All activations are NHWC int8 with a per-tensor scale and zero point. Weights are OHWI int8
``(Cout, KH, KW, Cin // groups)``, symmetric (zero point 0), with a per-tensor or per-output-channel
scale; biases are int32 ``(Cout,)`` and accumulation is int32. Requantization is
``clamp(rint(f32(acc) * M_c) + zy, lo, hi)`` with ``M_c = f32(f32(sx) * f32(sw_c) / f32(sy))``, exactly
as onnxruntime's QLinearConv and QLinearMatMul do it.

The ops are vectorized NumPy: they loop over kernel taps, never over pixels. The proofs against
onnxruntime and ONNX's conformance vectors are in ``tests/test_golden_*.py`` and
``docs/CONFORMANCE.md``.

This module defines convolution and fully connected layers and re-exports the other ops:
requantization and lookup tables from :mod:`.golden_numerics`, pooling from :mod:`.golden_pool`.
"""

from __future__ import annotations

import numpy as np

from .golden_numerics import (
    INT8_MAX,
    INT8_MIN,
    add,
    apply_lut,
    build_lut,
    check_int8,
    check_int32,
    check_pads,
    check_pair,
    check_zero_point,
    dequantize,
    quantize,
    requant_multiplier,
    requantize,
)
from .golden_pool import auto_pads, avg_pool, global_avg_pool, max_pool, pool_output_size

__all__ = [
    "INT8_MAX",
    "INT8_MIN",
    "MAX_KERNEL",
    "MAX_STRIDE",
    "add",
    "apply_lut",
    "auto_pads",
    "avg_pool",
    "build_lut",
    "conv2d_acc",
    "conv_output_size",
    "dequantize",
    "fully_connected",
    "global_avg_pool",
    "max_pool",
    "pool_output_size",
    "qconv2d",
    "quantize",
    "requant_multiplier",
    "requantize",
]

MAX_KERNEL = 7
MAX_STRIDE = 4

# A float32 GEMM is exact while every partial sum stays below 2**24 in magnitude. One product is at
# most |x - zx| * |w| <= 255 * 128 = 32640, so a dot product of up to 514 terms is exact in any
# summation order; longer ones are split into chunks whose exact results are summed in int64.
_EXACT_F32_TERMS = 512


def conv_output_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int) -> int:
    """Output length of one axis of a convolution: ``(size + pads - kernel) // stride + 1``."""
    return (size + pad_begin + pad_end - kernel) // stride + 1


def _conv_args(x, x_zero_point, w, bias, stride, pads, groups):
    check_int8("x", x, ndim=4)
    check_int8("w", w, ndim=4)
    zx = check_zero_point("x_zero_point", x_zero_point)
    cout, kh, kw, cin_g = w.shape
    kernel = check_pair("kernel (w.shape[1:3])", (kh, kw), 1, MAX_KERNEL)
    stride = check_pair("stride", stride, 1, MAX_STRIDE)
    pads = check_pads(pads, kernel)
    check_int32("bias", bias, (cout,))
    n, h, wd, c = x.shape
    if groups == 1:
        if cin_g != c:
            raise ValueError(f"w.shape[3] must equal the input channels {c} for groups=1, not {cin_g}")
    elif groups == c and cin_g == 1 and cout % c == 0:
        pass  # depthwise, with a channel multiplier of cout // c
    else:
        raise ValueError(f"groups must be 1 or the input channels {c} (depthwise, w of shape "
                         f"(k*{c}, KH, KW, 1)), not groups={groups!r} with w of shape {w.shape}")
    oh = conv_output_size(h, kh, stride[0], pads[0], pads[2])
    ow = conv_output_size(wd, kw, stride[1], pads[1], pads[3])
    if oh < 1 or ow < 1:
        raise ValueError(f"x of shape {x.shape} is smaller than the kernel {kernel} with pads {pads}")
    return zx, kernel, stride, pads, (n, oh, ow, cout)


def _padded_centered(x: np.ndarray, zx: int, pads, dtype) -> np.ndarray:
    """``x - zx`` (exact in int32 or float32) with the padding (filled with ``zx``) as zeros."""
    t, l, b, r = pads
    xc = np.zeros((x.shape[0], x.shape[1] + t + b, x.shape[2] + l + r, x.shape[3]), dtype=dtype)
    np.subtract(x, dtype(zx), out=xc[:, t:t + x.shape[1], l:l + x.shape[2], :], dtype=dtype)
    return xc


def conv2d_acc(x: np.ndarray, x_zero_point: int, w: np.ndarray, bias: np.ndarray, *,
               stride=(1, 1), pads=(0, 0, 0, 0), groups: int = 1) -> np.ndarray:
    """Integer convolution: ``bias + sum((x - zx) * w)`` over the window, as int32.

    Parameters
    ----------
    x : ndarray
        int8 NHWC input.
    x_zero_point : int
        Input zero point; the padding is filled with it, so padded taps contribute 0.
    w : ndarray
        int8 OHWI weights ``(Cout, KH, KW, Cin // groups)``, kernel 1..7 on each axis.
    bias : ndarray
        int32 ``(Cout,)``.
    stride : int or (int, int)
        1..4 on each axis.
    pads : (int, int, int, int)
        (top, left, bottom, right), each 0..kernel-1.
    groups : int
        1, or the input channel count C for a depthwise convolution (``Cout`` a multiple of C; output
        channel ``o`` reads input channel ``o // (Cout // C)``, as in ONNX).

    Returns
    -------
    ndarray
        int32 ``(N, OH, OW, Cout)``.

    Raises
    ------
    ValueError
        On a wrong dtype or shape, a kernel above 7, a stride of 0 or above 4, bad pads or groups,
        a zero point outside int8, or an accumulator that would overflow int32.
    """
    zx, (kh, kw), (sh, sw), pads, out_shape = _conv_args(x, x_zero_point, w, bias, stride, pads, groups)
    n, oh, ow, cout = out_shape
    terms = kh * kw * w.shape[3]
    # |acc| <= |bias| + terms * 255 * 128: when that fits int32, no overflow check is needed.
    fits = int(np.abs(bias.astype(np.int64)).max(initial=0)) + terms * 255 * 128 <= np.iinfo(np.int32).max
    xc = _padded_centered(x, zx, pads, np.float32 if groups == 1 else np.int32)

    def tap(i: int, j: int) -> np.ndarray:
        return xc[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]

    if groups == 1:
        c = x.shape[3]
        # im2col in float32 (the values are small integers, exact), then exact float32 GEMMs.
        cols = np.empty((n, oh, ow, kh, kw, c), dtype=np.float32)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, :, i, j, :] = tap(i, j)
        cols = cols.reshape(n * oh * ow, kh * kw * c)
        wt = w.reshape(cout, kh * kw * c).T.astype(np.float32)
        acc_type = np.int32 if fits else np.int64
        acc = (cols[:, :_EXACT_F32_TERMS] @ wt[:_EXACT_F32_TERMS]).astype(acc_type)
        for k0 in range(_EXACT_F32_TERMS, terms, _EXACT_F32_TERMS):
            k1 = k0 + _EXACT_F32_TERMS
            acc += (cols[:, k0:k1] @ wt[k0:k1]).astype(acc_type)
        acc = acc.reshape(out_shape)
    else:
        mult = cout // x.shape[3]
        if mult > 1:
            xc = np.repeat(xc, mult, axis=3)
        acc_type = np.int32 if fits else np.int64
        acc = np.zeros(out_shape, dtype=acc_type)
        wd = w[:, :, :, 0].astype(acc_type)
        for i in range(kh):
            for j in range(kw):
                acc += tap(i, j) * wd[:, i, j]
    if fits:
        acc += bias
        return acc
    acc = acc.astype(np.int64) + bias
    if acc.size and (acc.min() < np.iinfo(np.int32).min or acc.max() > np.iinfo(np.int32).max):
        raise ValueError(f"accumulator overflows int32 (range {acc.min()}..{acc.max()}); "
                         "the layer has too many taps for int32 accumulation")
    return acc.astype(np.int32)


def qconv2d(x: np.ndarray, x_zero_point: int, w: np.ndarray, bias: np.ndarray,
            multiplier: np.ndarray | float, y_zero_point: int, *, stride=(1, 1), pads=(0, 0, 0, 0),
            groups: int = 1, lo: int = INT8_MIN, hi: int = INT8_MAX) -> np.ndarray:
    """Quantized convolution, bit-exact with onnxruntime's int8 x int8 QLinearConv.

    :func:`conv2d_acc` followed by :func:`requantize`; ``multiplier`` comes from
    :func:`requant_multiplier`. ``lo``/``hi`` carry a fused ReLU (``lo = y_zero_point``) or ReLU6.

    Returns
    -------
    ndarray
        int8 ``(N, OH, OW, Cout)``.

    Raises
    ------
    ValueError
        As :func:`conv2d_acc` and :func:`requantize`.
    """
    acc = conv2d_acc(x, x_zero_point, w, bias, stride=stride, pads=pads, groups=groups)
    return requantize(acc, multiplier, y_zero_point, lo, hi)


def fully_connected(x: np.ndarray, x_zero_point: int, w: np.ndarray, bias: np.ndarray,
                    multiplier: np.ndarray | float, y_zero_point: int, lo: int = INT8_MIN,
                    hi: int = INT8_MAX) -> np.ndarray:
    """Fully connected layer as a 1x1 convolution: int8 ``x (N, Cin)`` by int8 ``w (Cout, Cin)``.

    Bit-exact with onnxruntime's int8 x int8 QLinearMatMul (``y = x @ w.T``, bias 0) and, for the
    accumulator, with MatMulInteger plus the bias.

    Returns
    -------
    ndarray
        int8 ``(N, Cout)``.

    Raises
    ------
    ValueError
        As :func:`qconv2d`, or if ``x`` or ``w`` is not 2-D.
    """
    check_int8("x", x, ndim=2)
    check_int8("w", w, ndim=2)
    y = qconv2d(x[:, None, None, :], x_zero_point, w[:, None, None, :], bias, multiplier, y_zero_point,
                lo=lo, hi=hi)
    return y[:, 0, 0, :]
