"""Golden pooling ops on NHWC int8 tensors, bit-exact with onnxruntime's MaxPool (int8),
QLinearAveragePool and QLinearGlobalAveragePool. Re-exported by :mod:`jacquard.sim.golden`.
"""

from __future__ import annotations

import numpy as np

from .golden_numerics import (
    F32,
    INT8_MAX,
    INT8_MIN,
    check_int8,
    check_pads,
    check_pair,
    check_scale,
    check_zero_point,
    dequantize,
)

__all__ = ["auto_pads", "avg_pool", "global_avg_pool", "max_pool", "pool_output_size"]

_MAX_KERNEL, _MAX_STRIDE = 7, 4


def pool_output_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int,
                     ceil_mode: bool = False) -> int:
    """Output length of one pooling axis, as ONNX (and onnxruntime) define it.

    ``floor`` or ``ceil`` of ``(size + pads - kernel) / stride + 1``; with ``ceil_mode`` a last window
    that would start inside the end padding is dropped, so every window holds at least one input.
    """
    span = size + pad_begin + pad_end - kernel
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    if (out - 1) * stride >= size + pad_begin:
        out -= 1
    return out


def auto_pads(size: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int],
              auto_pad: str) -> tuple[int, int, int, int]:
    """Explicit (top, left, bottom, right) pads for ONNX's ``auto_pad`` attribute.

    ``SAME_UPPER``/``SAME_LOWER`` give ``ceil(size / stride)`` outputs, the odd pad going to the end
    (upper) or the beginning (lower); ``VALID`` and ``NOTSET`` give no padding.

    Raises
    ------
    ValueError
        On another ``auto_pad`` value.
    """
    if auto_pad in ("VALID", "NOTSET"):
        return (0, 0, 0, 0)
    if auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
        raise ValueError(f"auto_pad must be NOTSET, VALID, SAME_UPPER or SAME_LOWER, not {auto_pad!r}")
    begin, end = [], []
    for n, k, s in zip(size, kernel, stride, strict=True):
        total = max((-(-n // s) - 1) * s + k - n, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else big)
        end.append(big if auto_pad == "SAME_UPPER" else small)
    return (begin[0], begin[1], end[0], end[1])


def _pool_args(x, kernel, stride, pads, ceil_mode):
    check_int8("x", x, ndim=4)
    kernel = check_pair("kernel", kernel, 1, _MAX_KERNEL)
    stride = check_pair("stride", stride, 1, _MAX_STRIDE)
    pads = check_pads(pads, kernel)
    if not isinstance(ceil_mode, bool | np.bool_ | int):
        raise ValueError(f"ceil_mode must be a bool, not {ceil_mode!r}")
    _, h, w, _ = x.shape
    oh = pool_output_size(h, kernel[0], stride[0], pads[0], pads[2], bool(ceil_mode))
    ow = pool_output_size(w, kernel[1], stride[1], pads[1], pads[3], bool(ceil_mode))
    if oh < 1 or ow < 1:
        raise ValueError(f"x of shape {x.shape} is smaller than the kernel {kernel} with pads {pads}")
    return kernel, stride, pads, oh, ow


def _windows(xp: np.ndarray, kernel, stride, oh: int, ow: int):
    """Yield the ``(N, OH, OW, C)`` view of every kernel tap of the padded input, row-major."""
    sh, sw = stride
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            yield xp[:, i:i + (oh - 1) * sh + 1:sh, j:j + (ow - 1) * sw + 1:sw, :]


def _pad(x: np.ndarray, pads, kernel, stride, oh: int, ow: int, value) -> np.ndarray:
    """Pad ``x`` by (top, left) and enough bottom/right to hold every window (ceil mode may need more
    than the declared pads); the extra cells hold ``value``, which the pooling ignores."""
    t, l, _, _ = pads
    n, h, w, c = x.shape
    hp = max(h + t, (oh - 1) * stride[0] + kernel[0])
    wp = max(w + l, (ow - 1) * stride[1] + kernel[1])
    xp = np.full((n, hp, wp, c), value, dtype=x.dtype)
    xp[:, t:t + h, l:l + w, :] = x
    return xp


def max_pool(x: np.ndarray, kernel, stride, pads=(0, 0, 0, 0), ceil_mode: bool = False) -> np.ndarray:
    """Max pooling of an NHWC int8 tensor with ONNX semantics (padding never wins).

    Parameters
    ----------
    x : ndarray
        int8 ``(N, H, W, C)``.
    kernel, stride : int or (int, int)
        Kernel 1..7 and stride 1..4 per axis.
    pads : (int, int, int, int)
        (top, left, bottom, right), each 0..kernel-1.
    ceil_mode : bool
        Round the output size up (see :func:`pool_output_size`).

    Returns
    -------
    ndarray
        int8 ``(N, OH, OW, C)``.

    Raises
    ------
    ValueError
        On a wrong dtype or shape, or a bad kernel, stride or pads.
    """
    kernel, stride, pads, oh, ow = _pool_args(x, kernel, stride, pads, ceil_mode)
    # -128 is the identity of max over int8, and every window holds at least one real input.
    xp = _pad(x, pads, kernel, stride, oh, ow, INT8_MIN)
    out = np.full((x.shape[0], oh, ow, x.shape[3]), INT8_MIN, dtype=np.int8)
    for tap in _windows(xp, kernel, stride, oh, ow):
        np.maximum(out, tap, out=out)
    return out


def _valid_counts(size: int, out: int, kernel: int, stride: int, pad_begin: int) -> np.ndarray:
    start = np.arange(out) * stride - pad_begin
    end = np.minimum(start + kernel, size)
    return end - np.maximum(start, 0)


def avg_pool(x: np.ndarray, x_scale: float, x_zero_point: int, y_scale: float, y_zero_point: int,
             kernel, stride, pads=(0, 0, 0, 0), ceil_mode: bool = False,
             count_include_pad: bool = False) -> np.ndarray:
    """Average pooling, bit-exact with onnxruntime's QLinearAveragePool (com.microsoft) on int8.

    onnxruntime dequantizes every input to float32 (``x_scale * (x - zx)``), sums each window's inputs
    in float32 in row-major order, divides by the count (the whole ``KH * KW`` with
    ``count_include_pad``, otherwise the inputs inside the image), and quantizes with
    ``clamp(rint(sum / count / y_scale + zy))``. When the kernel covers the whole image and there is no
    padding, it takes its global-average path instead, and so does this function
    (:func:`global_avg_pool`).

    Parameters
    ----------
    x : ndarray
        int8 ``(N, H, W, C)``.
    x_scale, x_zero_point, y_scale, y_zero_point : float, int
        Input and output quantization.
    kernel, stride, pads, ceil_mode
        As :func:`max_pool`.
    count_include_pad : bool
        Divide by the full kernel area even where it overlaps padding.

    Returns
    -------
    ndarray
        int8 ``(N, OH, OW, C)``.

    Raises
    ------
    ValueError
        On a wrong dtype or shape, a bad kernel, stride, pads, scale or zero point.
    """
    kernel, stride, pads, oh, ow = _pool_args(x, kernel, stride, pads, ceil_mode)
    sx, sy = check_scale("x_scale", x_scale), check_scale("y_scale", y_scale)
    zx, zy = check_zero_point("x_zero_point", x_zero_point), check_zero_point("y_zero_point", y_zero_point)
    if kernel == x.shape[1:3] and pads == (0, 0, 0, 0):
        return global_avg_pool(x, sx, zx, sy, zy)
    # Padding (and ceil-mode overhang) adds +0.0 to the float sums, which leaves them unchanged.
    xp = _pad(dequantize(x, sx, zx), pads, kernel, stride, oh, ow, F32(0))
    total = np.zeros((x.shape[0], oh, ow, x.shape[3]), dtype=F32)
    for tap in _windows(xp, kernel, stride, oh, ow):
        total += tap
    if count_include_pad:
        count = np.full((oh, ow), kernel[0] * kernel[1], dtype=F32)
    else:
        ch = _valid_counts(x.shape[1], oh, kernel[0], stride[0], pads[0])
        cw = _valid_counts(x.shape[2], ow, kernel[1], stride[1], pads[1])
        count = (ch[:, None] * cw[None, :]).astype(F32)
    mean = total / count[None, :, :, None]
    q = np.rint(mean / sy + F32(zy))
    return np.clip(q, INT8_MIN, INT8_MAX).astype(np.int8)


def global_avg_pool(x: np.ndarray, x_scale: float, x_zero_point: int, y_scale: float,
                    y_zero_point: int) -> np.ndarray:
    """Global average pooling, bit-exact with onnxruntime's QLinearGlobalAveragePool on int8.

    MLAS sums in int32, then requantizes like a convolution:
    ``clamp(rint(f32(sum(x) - zx * HW) * M) + zy)`` with ``M = f32(x_scale / f32(y_scale * f32(HW)))``.

    Returns
    -------
    ndarray
        int8 ``(N, 1, 1, C)``.

    Raises
    ------
    ValueError
        On a wrong dtype or shape, a bad scale or zero point, or parameters MLAS refuses
        (image of 2**24 pixels or more, ``M`` below 2**-32 or at least 256).
    """
    check_int8("x", x, ndim=4)
    sx, sy = check_scale("x_scale", x_scale), check_scale("y_scale", y_scale)
    zx, zy = check_zero_point("x_zero_point", x_zero_point), check_zero_point("y_zero_point", y_zero_point)
    _, h, w, _ = x.shape
    image = h * w
    m = sx / (sy * F32(image))
    if image >= 1 << 24 or not F32(2.0**-32) <= m < F32(256):
        raise ValueError(f"x_scale / (y_scale * H * W) = {m!r} with H * W = {image} is outside what "
                         "onnxruntime accepts (2**-32 <= M < 256, H * W < 2**24)")
    acc = x.astype(np.int32).sum(axis=(1, 2), keepdims=True) - np.int32(zx * image)
    q = np.rint(acc.astype(F32) * m)
    return np.clip(q + F32(zy), INT8_MIN, INT8_MAX).astype(np.int8)
