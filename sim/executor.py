"""The reference executor: runs a program on a byte image of device memory, as the core does.

For each descriptor it reads the tensors, packed weights, channel parameters and lookup tables from
the image in the ISA's memory layout (:mod:`jacquard.sim.isa`), computes the layer with the golden
ops (:mod:`jacquard.sim.golden`) the way the datapath does (padding taps hold the input zero point,
the zero point is folded into the bias, the int32 accumulator wraps), and writes the output back
with its padded channels set to the output zero point. It is the ``emu`` backend of the host.

The whole program is validated before anything is written: a refused program leaves the image
untouched. (The core checks each descriptor when it fetches it, so there the layers before a bad
descriptor have run; see ``docs/ISA.md``.)
"""

from __future__ import annotations

import numpy as np

from jacquard.sim import golden
from jacquard.sim.isa import (
    DescriptorError,
    ErrorCode,
    HardwareConfig,
    LayerDescriptor,
    Op,
    Program,
    pack_tensor,
    param_entries,
    unpack_channel_params,
    unpack_lut,
    unpack_tensor,
    unpack_weights,
    validate_program,
    weights_size,
)

__all__ = ["execute", "execute_layer"]


def _as_image(memory) -> np.ndarray:
    if isinstance(memory, bytearray):
        return np.frombuffer(memory, dtype=np.uint8)
    if isinstance(memory, np.ndarray) and memory.dtype == np.uint8 and memory.ndim == 1:
        if not memory.flags.writeable:
            raise ValueError("memory must be writable")
        return memory
    raise TypeError(f"memory must be a bytearray or a 1-D uint8 ndarray, not {type(memory).__name__}"
                    + (f" of dtype {memory.dtype} and shape {memory.shape}" if isinstance(memory, np.ndarray)
                       else ""))


def execute(program: Program, memory: np.ndarray | bytearray, cfg: HardwareConfig, *, base: int = 0,
            prog_addr: int | None = None) -> None:
    """Run ``program`` on ``memory`` in place.

    Parameters
    ----------
    program : Program
        Compiled for ``cfg`` (its config hash and ISA version are checked).
    memory : ndarray of uint8 or bytearray
        The device memory image; byte ``i`` is at bus address ``base + i``. It plays the DMA window:
        every region a descriptor touches must lie inside it.
    cfg : HardwareConfig
    base : int
        Bus address of ``memory[0]``.
    prog_addr : int, optional
        Bus address where the program itself is stored; outputs may not overwrite it.

    Raises
    ------
    ProgramError
        If the program is for another ISA version or config.
    DescriptorError
        If a descriptor is invalid, touches memory outside the image, or its output overlaps its
        inputs, weights, parameters, LUT or the program (nothing is written then), or if the golden op
        refuses the data it reads (e.g. a multiplier that is not finite and > 0; the layers before it
        have then run). The error names the descriptor index, the field and the address.
    TypeError
        If ``memory`` is not a bytearray or 1-D uint8 ndarray.
    """
    image = _as_image(memory)
    if not isinstance(program, Program):
        raise TypeError(f"program must be a Program, not {type(program).__name__}")
    validate_program(program, cfg, base, base + image.size, prog_addr)
    for i, d in enumerate(program.descriptors):
        execute_layer(d, image, cfg, base=base, index=i)


def execute_layer(d: LayerDescriptor, memory: np.ndarray | bytearray, cfg: HardwareConfig, *,
                  base: int = 0, index: int | None = None) -> None:
    """Run one descriptor that has already passed :func:`jacquard.sim.isa.validate_program`.

    The output is computed completely before it is written, so a refused layer writes nothing.
    """
    image = _as_image(memory)

    def read(addr: int, size: int) -> np.ndarray:
        return image[addr - base:addr - base + size]

    x = unpack_tensor(read(d.in_addr, d.in_h * d.in_w * d.in_cp), d.in_h, d.in_w, d.in_c, cfg)[None]
    try:
        y = _compute(d, x, read, cfg)
    except ValueError as e:
        raise DescriptorError(f"the golden op refused the layer's data: {e}", ErrorCode.PARAM_RANGE,
                              index=index, field="op") from e
    if y.shape != (1, d.out_h, d.out_w, d.out_c):
        raise AssertionError(f"descriptor {index}: golden output shape {y.shape} disagrees with the "
                             f"descriptor's ({d.out_h}, {d.out_w}, {d.out_c}); isa and golden disagree")
    out = np.frombuffer(pack_tensor(y[0], cfg, d.out_zp), dtype=np.uint8)
    image[d.out_addr - base:d.out_addr - base + out.size] = out


def _compute(d: LayerDescriptor, x: np.ndarray, read, cfg: HardwareConfig) -> np.ndarray:
    kernel, stride = (d.kh, d.kw), (d.stride_h, d.stride_w)
    pads = (d.pad_t, d.pad_l, d.pad_b, d.pad_r)
    if d.op == Op.CONV:
        y = _conv(d, x, read, cfg)
    elif d.op == Op.MAXPOOL:
        return golden.max_pool(x, kernel, stride, pads, d.ceil_mode)
    elif d.op == Op.AVGPOOL:
        return golden.avg_pool(x, d.in_scale, d.in_zp, d.out_scale, d.out_zp, kernel, stride, pads,
                               d.ceil_mode, d.count_include_pad)
    elif d.op == Op.GLOBAL_AVGPOOL:
        return golden.global_avg_pool(x, d.in_scale, d.in_zp, d.out_scale, d.out_zp)
    else:  # ADD: validate_program has refused anything else
        x2 = unpack_tensor(read(d.in2_addr, d.in_h * d.in_w * d.in_cp), d.in_h, d.in_w, d.in_c, cfg)[None]
        y = golden.add(x, d.in_scale, d.in_zp, x2, d.in2_scale, d.in2_zp, d.out_scale, d.out_zp)
        y = np.clip(y, d.clamp_lo, d.clamp_hi)
    if d.lut:
        size = 256 * (d.out_cp if d.lut_per_channel else 1)
        y = golden.apply_lut(y, unpack_lut(read(d.lut_addr, size), cfg,
                                           d.out_c if d.lut_per_channel else None))
    if d.fuse_maxpool:
        y = golden.max_pool(y, (2, 2), (2, 2), (0, 0, 0, 0), False)
    return y


def _conv(d: LayerDescriptor, x: np.ndarray, read, cfg: HardwareConfig) -> np.ndarray:
    """Convolution as the datapath computes it: ``bias' + sum(w * x)`` over zx-padded taps, wrapping."""
    w = unpack_weights(read(d.weights_addr, weights_size(cfg, d.out_c, d.kh, d.kw, d.in_c,
                                                         depthwise=d.depthwise)),
                       cfg, d.out_c, d.kh, d.kw, d.in_c, depthwise=d.depthwise)
    bias, multiplier = unpack_channel_params(read(d.params_addr, 8 * param_entries(d.out_c, cfg)), cfg,
                                             d.out_c)
    # The line buffer inserts the input zero point as padding; the PE array multiplies raw int8 taps.
    xp = np.full((1, d.in_h + d.pad_t + d.pad_b, d.in_w + d.pad_l + d.pad_r, d.in_c), d.in_zp, dtype=np.int8)
    xp[:, d.pad_t:d.pad_t + d.in_h, d.pad_l:d.pad_l + d.in_w] = x
    products = golden.conv2d_acc(xp, 0, w, np.zeros(d.out_c, dtype=np.int32),
                                 stride=(d.stride_h, d.stride_w), groups=d.in_c if d.depthwise else 1)
    # The accumulator starts at bias' and wraps like int32 hardware.
    acc = (products.astype(np.int64) + bias).astype(np.uint64).astype(np.uint32).view(np.int32)
    return golden.requantize(acc, multiplier, d.out_zp, d.clamp_lo, d.clamp_hi)
