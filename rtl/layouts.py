"""Stream payloads shared by the datapath units: the line buffer, PE array and post-processing contract.

Data order (see docs/ARCHITECTURE.md):

* Pixels enter the line buffer row-major with channel tiles inside: for y, for x, for c_tile.
* The line buffer emits, for each output position and each output-channel tile, the window's
  taps in the order for ky, for kx, for c_tile. ``first`` marks the first tap of one
  accumulation and ``last`` its final tap. Padding taps carry the input zero point.
* Convolution accumulates int8 x int8 products directly. The input zero point is folded into the
  bias on the host: ``bias' = bias - zx * sum(w)``. That is exact for padding too, because padded
  taps hold ``zx``.
* The PE array emits one ``acc_layout(oc_par)`` beat per (output position, oc tile).
* Post-processing turns it into one ``out_layout(oc_par)`` int8 beat.
"""

from amaranth.hdl import signed, unsigned
from amaranth.lib import data

__all__ = ["ChannelParamsLayout", "acc_layout", "out_layout", "pixel_layout", "tap_layout"]


def pixel_layout(c_par: int) -> data.ArrayLayout:
    """One beat of a feature map: ``c_par`` int8 channels of one pixel."""
    return data.ArrayLayout(signed(8), c_par)


def tap_layout(c_par: int) -> data.StructLayout:
    """One window tap for the PE array, with the accumulation boundaries."""
    return data.StructLayout({"data": pixel_layout(c_par), "first": 1, "last": 1})


def acc_layout(oc_par: int) -> data.ArrayLayout:
    """int32 accumulators for ``oc_par`` output channels of one output position."""
    return data.ArrayLayout(signed(32), oc_par)


def out_layout(oc_par: int) -> data.ArrayLayout:
    """Requantized int8 outputs for ``oc_par`` output channels of one output position."""
    return data.ArrayLayout(signed(8), oc_par)


class ChannelParamsLayout(data.StructLayout):
    """Per-output-channel post-processing parameters, as stored in device memory.

    ``bias`` already has the input zero point folded in. ``multiplier`` is the IEEE-754 float32
    bit pattern of ``M_c = f32(f32(sx) * f32(sw_c) / f32(sy))``.
    """

    def __init__(self) -> None:
        super().__init__({"bias": signed(32), "multiplier": unsigned(32)})
