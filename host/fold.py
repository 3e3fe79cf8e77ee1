"""Tap folding: a small-channel convolution's window taps moved into the channel lanes on the host.

The PE array multiplies ``c_par`` input channels per cycle, one tap ``(ky, kx, c_tile)`` at a time,
so a first layer with 3 input channels pads them to ``c_par`` and leaves most MACs idle. When the
host writes a convolution's input anyway (a model input, or the output of a host or CPU step), it
can write it *im2col'd* instead: at each output position ``(oy, ox)`` the ``KH * KW * C`` values of
its window in ``(ky, kx, c)`` order, the border filled with the input zero point exactly as the line
buffer pads. The device then runs an ordinary 1x1, stride-1, unpadded CONV over the ``Ho x Wo`` grid
with ``KH * KW * C`` input channels and the weights reordered the same way; bias, requantization,
lookup table and fused max pool are unchanged, so the result is bit-exact with the unfolded layer.

The cost is on the link: the host sends about ``KH * KW / stride**2`` times the bytes of that input,
which is why the compiler makes it an option (``fold_taps``). :class:`TapFold` is the record a
``.jqp`` keeps for each folded input (see :mod:`jacquard.host.jqp`), and :func:`fold_taps` the one
transform every backend's driver applies.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jacquard.sim.isa import conv_out_size

from .errors import ProgramError

__all__ = ["TapFold", "fold_taps", "fold_weights"]


def fold_taps(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
              pads: tuple[int, int, int, int], zero_point: int) -> np.ndarray:
    """The im2col'd NHWC map: ``(N, Ho, Wo, KH * KW * C)``, taps in ``(ky, kx, c)`` order.

    Parameters
    ----------
    x : ndarray
        The int8 input map, NHWC.
    kernel, stride : tuple of int
        ``(KH, KW)`` and ``(SH, SW)`` of the convolution.
    pads : tuple of int
        ``(top, left, bottom, right)`` padding, filled with ``zero_point`` (as the line buffer pads).
    zero_point : int
        The input's zero point.

    Raises
    ------
    ValueError
        If ``x`` is not a 4-D int8 map, or the window does not fit it.
    """
    x = np.asarray(x)
    if x.ndim != 4 or x.dtype != np.int8:
        raise ValueError(f"x must be an int8 NHWC map, not {x.dtype} of shape {x.shape}")
    (kh, kw), (sh, sw), (pt, pl, pb, pr) = kernel, stride, pads
    n, h, w, c = x.shape
    oh, ow = conv_out_size(h, kh, sh, pt, pb), conv_out_size(w, kw, sw, pl, pr)
    if oh < 1 or ow < 1:
        raise ValueError(f"kernel {kernel} with pads {pads} does not fit the {h}x{w} map")
    padded = np.full((n, h + pt + pb, w + pl + pr, c), zero_point, dtype=np.int8)
    padded[:, pt:pt + h, pl:pl + w] = x
    taps = [padded[:, ky:ky + sh * (oh - 1) + 1:sh, kx:kx + sw * (ow - 1) + 1:sw]
            for ky in range(kh) for kx in range(kw)]
    return np.ascontiguousarray(np.concatenate(taps, axis=-1))


def fold_weights(weights: np.ndarray) -> np.ndarray:
    """OHWI weights ``(Cout, KH, KW, C)`` as the folded 1x1 conv's ``(Cout, 1, 1, KH * KW * C)``."""
    cout = weights.shape[0]
    return np.ascontiguousarray(weights.reshape(cout, 1, 1, -1))


@dataclass(frozen=True)
class TapFold:
    """One folded input of a device step: how the host makes it from the tensor it holds.

    Members
    -------
    source : str
        The tensor the host holds (NHWC, its device layout).
    kernel, stride : tuple of int
        ``(KH, KW)`` and ``(SH, SW)`` of the convolution that was folded.
    pads : tuple of int
        ``(top, left, bottom, right)``, filled with the source's zero point.
    """

    source: str
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int]

    def shape(self, source_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """The folded tensor's device shape for a source of device shape ``source_shape``.

        Raises
        ------
        ValueError
            If the source is not a 4-D map the window fits.
        """
        if len(source_shape) != 4:
            raise ValueError(f"a folded source must be an NHWC map, not of shape {tuple(source_shape)}")
        n, h, w, c = source_shape
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = self.kernel, self.stride, self.pads
        oh, ow = conv_out_size(h, kh, sh, pt, pb), conv_out_size(w, kw, sw, pl, pr)
        if oh < 1 or ow < 1:
            raise ValueError(f"kernel {self.kernel} with pads {self.pads} does not fit a {h}x{w} map")
        return n, oh, ow, kh * kw * c

    def check(self, name: str, tensors: dict) -> None:
        """Check that the folded tensor ``name`` is what this fold makes of its source.

        Raises
        ------
        ProgramError
            If the source is missing, or the shapes, dtypes or zero points disagree.
        """
        def refuse(why: str) -> ProgramError:
            return ProgramError(f"folded input {name!r} {why}; the program is inconsistent: recompile "
                                "the model (`jacquard compile`, or --no-fold-taps to send inputs unfolded)")

        if self.source not in tensors:
            raise refuse(f"names source tensor {self.source!r}, which the program does not have")
        if name not in tensors:
            raise refuse("is not a tensor of the program")
        src, dst = tensors[self.source], tensors[name]
        try:
            want = self.shape(src.shape)
        except ValueError as e:
            raise refuse(f"cannot be made from {self.source!r}: {e}") from e
        if tuple(dst.shape) != want:
            raise refuse(f"has shape {tuple(dst.shape)}, but a {self.kernel[0]}x{self.kernel[1]} "
                         f"stride {self.stride} pads {self.pads} fold of {self.source!r} "
                         f"{tuple(src.shape)} has shape {want}")
        if src.dtype != "int8" or dst.dtype != "int8" or src.zero_point != dst.zero_point:
            raise refuse(f"is {dst.dtype} with zero point {dst.zero_point}, its source {src.dtype} with "
                         f"{src.zero_point}: a fold keeps int8 values and their zero point")

    def apply(self, value: np.ndarray, zero_point: int) -> np.ndarray:
        """The folded device array of the source's device array ``value`` (:func:`fold_taps`)."""
        return fold_taps(value, self.kernel, self.stride, self.pads, zero_point)

    def to_json(self) -> dict:
        return {"source": self.source, "kernel": list(self.kernel), "stride": list(self.stride),
                "pads": list(self.pads)}

    @classmethod
    def from_json(cls, obj: dict, name: str = "?") -> TapFold:
        """Read the manifest record of folded input ``name``.

        Raises
        ------
        ProgramError
            If a field is missing or malformed.
        """
        try:
            fold = cls(str(obj["source"]), _ints(obj["kernel"], 2), _ints(obj["stride"], 2),
                       _ints(obj["pads"], 4))
        except (KeyError, TypeError, ValueError) as e:
            raise ProgramError(f"folded input {name!r} has a malformed record {obj!r} ({e}); recompile "
                               "the model with `jacquard compile`") from e
        if min(*fold.kernel, *fold.stride) < 1 or min(fold.pads) < 0:
            raise ProgramError(f"folded input {name!r} has kernel {fold.kernel}, stride {fold.stride}, "
                               f"pads {fold.pads}; recompile the model with `jacquard compile`")
        return fold


def _ints(value, n: int) -> tuple:
    if not isinstance(value, (list, tuple)) or len(value) != n or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"expected {n} integers, not {value!r}")
    return tuple(value)
