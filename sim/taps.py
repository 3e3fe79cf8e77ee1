"""NumPy reference of the line buffer's tap stream: the order contract between line buffer and PE array.

The line buffer emits, for each output position (row-major), for each output-channel tile, the
window's taps in the order for ky, for kx, for c_tile; one beat holds ``c_par`` int8 channels.
Taps that fall in the padding hold the input zero point ``zx``. The padding and stride semantics
are those of ``jacquard.sim.golden.conv2d_acc`` (ONNX Conv): the output has
``OH = (H + top + bottom - KH) // stride + 1`` rows, and output row ``oy`` reads input rows
``oy * stride - top + ky``.

:func:`conv_from_taps` closes the loop: it multiplies a tap stream with weights packed the way
the PE array's weight buffer holds them and sums each accumulation, which equals
``golden.conv2d_acc`` once the zero point is folded into the bias (``bias - zx * sum(w)``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["conv_from_taps", "depthwise_from_taps", "output_shape", "pack_weights", "tap_stream"]


def output_shape(height: int, width: int, kh: int, kw: int, stride: int,
                 pads: tuple[int, int, int, int]) -> tuple[int, int]:
    """Output rows and columns of a ``kh`` x ``kw`` window at ``stride`` with ``pads=(t, l, b, r)``."""
    top, left, bottom, right = pads
    return (height + top + bottom - kh) // stride + 1, (width + left + right - kw) // stride + 1


def _hwc(x: np.ndarray) -> np.ndarray:
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ValueError(f"Batch size must be 1, not {x.shape[0]!r}")
        x = x[0]
    if x.ndim != 3:
        raise ValueError(f"Feature map must be HWC or 1HWC, not shape {x.shape!r}")
    return x


def tap_stream(x: np.ndarray, zx: int, kh: int, kw: int, stride: int, pads: tuple[int, int, int, int],
               c_par: int, n_oc_tiles: int, depthwise: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The line buffer's output for feature map ``x``, beat by beat.

    Parameters
    ----------
    x : int8 array, shape (H, W, C) or (1, H, W, C), NHWC; C must be a multiple of ``c_par``.
    zx : the input zero point, held by padding taps.
    kh, kw : kernel height and width.
    stride : the same in both directions.
    pads : (top, left, bottom, right).
    c_par : channels per beat.
    n_oc_tiles : how many times each output position's window is repeated (once per oc tile).
    depthwise : order each window for c_tile, for ky, for kx instead, one accumulation per
        channel tile (KH*KW taps), as the PE array's depthwise mode takes it.

    Returns
    -------
    taps : int8 array, shape (n_beats, c_par).
    first, last : bool arrays, shape (n_beats,); they mark each accumulation's first and last tap.

    Raises
    ------
    ValueError
        If C is not a multiple of ``c_par`` or the window does not fit the padded map.
    """
    x = _hwc(np.asarray(x))
    height, width, channels = x.shape
    if channels % c_par:
        raise ValueError(f"Channels must be a multiple of c_par={c_par}, not {channels!r}")
    top, left, bottom, right = pads
    oh, ow = output_shape(height, width, kh, kw, stride, pads)
    if oh < 1 or ow < 1:
        raise ValueError(f"Kernel {kh}x{kw} does not fit the padded {height}x{width} map (pads={pads!r})")
    xp = np.full((height + top + bottom, width + left + right, channels), zx, dtype=np.int8)
    xp[top:top + height, left:left + width] = x
    rows = (np.arange(oh) * stride)[:, None] + np.arange(kh)[None, :]    # (OH, KH)
    cols = (np.arange(ow) * stride)[:, None] + np.arange(kw)[None, :]    # (OW, KW)
    win = xp[rows[:, None, :, None], cols[None, :, None, :]]              # (OH, OW, KH, KW, C)
    win = np.broadcast_to(win[:, :, None], (oh, ow, n_oc_tiles, kh, kw, channels))
    if depthwise:
        ct = channels // c_par
        win = win.reshape(oh, ow, n_oc_tiles, kh, kw, ct, c_par).transpose(0, 1, 2, 5, 3, 4, 6)
    taps = win.reshape(-1, c_par).copy()
    per_acc = kh * kw * (1 if depthwise else channels // c_par)
    k = np.arange(taps.shape[0]) % per_acc
    return taps, k == 0, k == per_acc - 1


def pack_weights(w: np.ndarray, oc_par: int, c_par: int) -> np.ndarray:
    """OHWI weights as the PE array's weight buffer holds them: (oc_tile, ky, kx, c_tile, oc_par, c_par).

    Output and input channels are zero-padded up to multiples of ``oc_par`` and ``c_par``.
    """
    cout, kh, kw, cin = w.shape
    cout_p, cin_p = -(-cout // oc_par) * oc_par, -(-cin // c_par) * c_par
    wp = np.zeros((cout_p, kh, kw, cin_p), dtype=w.dtype)
    wp[:cout, :, :, :cin] = w
    wp = wp.reshape(cout_p // oc_par, oc_par, kh, kw, cin_p // c_par, c_par)
    return wp.transpose(0, 2, 3, 4, 1, 5)


def conv_from_taps(taps: np.ndarray, first: np.ndarray, last: np.ndarray, packed: np.ndarray) -> np.ndarray:
    """What the PE array computes from a tap stream: one int32 ``oc_par`` vector per accumulation.

    The stream's accumulations cycle through the oc tiles of ``packed`` (from :func:`pack_weights`),
    whose (ky, kx, c_tile) order must match the taps'. Returns shape (n_accumulations, oc_par).

    Raises
    ------
    ValueError
        If the first/last flags do not delimit accumulations of the packed kernel's length.
    """
    n_oc_tiles, kh, kw, ct, oc_par, c_par = packed.shape
    per_acc = kh * kw * ct
    if taps.shape[0] % per_acc or not (first[::per_acc].all() and last[per_acc - 1::per_acc].all()) \
            or first.sum() != last.sum() or first.sum() * per_acc != taps.shape[0]:
        raise ValueError(f"Tap stream of {taps.shape[0]} beats is not made of {per_acc}-tap accumulations")
    groups = taps.reshape(-1, n_oc_tiles, per_acc, c_par).astype(np.int64)
    wts = packed.reshape(n_oc_tiles, per_acc, oc_par, c_par).astype(np.int64)
    acc = np.einsum("gtkc,tkoc->gto", groups, wts)
    return acc.reshape(-1, oc_par).astype(np.int32)


def depthwise_from_taps(taps: np.ndarray, first: np.ndarray, last: np.ndarray, w: np.ndarray) -> np.ndarray:
    """What the PE array's depthwise mode computes from a depthwise-ordered tap stream.

    ``w`` is depthwise OHWI ``(C, KH, KW, 1)``; lane ``c`` of channel tile ``t``'s taps is multiplied
    by the weight of channel ``t * c_par + c``. Returns int32 (n_positions, C): each position's
    channel tiles side by side.

    Raises
    ------
    ValueError
        If the first/last flags do not delimit KH*KW-tap accumulations.
    """
    channels, kh, kw, _ = w.shape
    c_par = taps.shape[1]
    per_acc = kh * kw
    if taps.shape[0] % per_acc or not (first[::per_acc].all() and last[per_acc - 1::per_acc].all()) \
            or first.sum() * per_acc != taps.shape[0] or last.sum() * per_acc != taps.shape[0]:
        raise ValueError(f"Tap stream of {taps.shape[0]} beats is not made of {per_acc}-tap accumulations")
    groups = taps.reshape(-1, channels // c_par, per_acc, c_par).astype(np.int64)
    wts = w[:, :, :, 0].reshape(channels // c_par, c_par, per_acc).transpose(0, 2, 1).astype(np.int64)
    acc = np.einsum("gtkc,tkc->gtc", groups, wts)
    return acc.reshape(-1, channels).astype(np.int32)
