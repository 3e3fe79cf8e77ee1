"""The compiler: a partitioned model to an :class:`~jacquard.host.jqp.Executable` (a ``.jqp``).

Each accelerator segment of a :class:`~jacquard.host.partition.Plan` becomes descriptors of issue 3's
ISA (:mod:`jacquard.sim.isa`):

* **Layout.** Feature maps are NHWC in device memory, channels padded to ``c_par``. An IR tensor of
  device shape ``(..., C)`` is stored as ``prod(...)`` rows of ``padded_channels(C)`` bytes, so a
  layout layer whose output is the input's bytes (:attr:`ir.Layout.free` with the same padded rows)
  is only a second name for the same buffer.
* **Layers.** QConv is CONV (dense or depthwise; a depthwise conv with a channel multiplier, or any
  depthwise conv on a config whose ``oc_par < c_par``, is expanded to a dense conv with zero
  weights), with its bias folded (``bias' = bias - zx * sum(w)``), its float32 multipliers, clamp,
  lookup table and fused 2x2 max pool. A fully connected layer is a 1x1 CONV over ``(N, 1, K)``.
  QMaxPool, QAvgPool, QGlobalAvgPool and QAdd map to their ops (a constant second operand of an add
  is stored in the image). A lookup table is fused into the CONV or ADD that produces its input, or
  runs as an identity 1x1 CONV with the table. Batched feature maps get one descriptor per image.
* **Tiling.** Row bands are what ISA v1 can express (bands of rows are contiguous in NHWC: each
  band reads its own input rows, with the padding of its edge), and :func:`row_bands` splits CONV
  and MAXPOOL descriptors into them exactly (``band_rows``). No v1 buffer limit depends on the
  height, though: the line buffer needs ``(kh - 1) * W * Cp`` bytes and the weight buffer one
  output-channel tile of ``kh * kw * Cin``, and splitting those needs column bands (a row pitch
  field) or partial sums, which v1 lacks. A layer that exceeds them runs on the host (the golden op)
  and the report says which buffer it exceeded.
* **Tap folding** (``fold_taps``, on by default). A dense convolution whose input the host writes
  (a stage input: a model input, or the output of a host or CPU step) can run as a 1x1 CONV over its
  output grid with ``KH*KW*C`` input channels, the host writing the input im2col'd
  (:mod:`jacquard.host.fold`). A first layer with 3 channels then fills ``ceil(27 / c_par)`` lane
  tiles instead of 9 taps of one mostly padded tile. The compiler folds a conv when the performance
  model (:func:`jacquard.host.perf.estimate_descriptor`) says it takes fewer cycles and the program
  still fits the device memory (``memory_bytes``: by default that of the board built for the config,
  if any); the device step records the folded input (:attr:`DeviceStep.folds`), the report says so.
  It multiplies the bytes the host sends for that input by about ``KH*KW / stride**2``.
* **Memory.** The image holds constants then programs; activations live in an arena after them,
  planned per device step from buffer liveness (greedy by size, first fit), and reused by every
  step, since tensors cross step boundaries through the host.

Everything else (quantize/dequantize at the accelerator's edges, layout changes that move bytes,
MatMulInteger's int32 output) is a host step, and CPU segments stay onnxruntime sub-models.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from jacquard.sim.isa import (
    CONFIGS,
    DescriptorError,
    HardwareConfig,
    LayerDescriptor,
    Op,
    Program,
    check_descriptor,
    conv_out_size,
    fold_bias,
    pack_channel_params,
    pack_lut,
    pack_weights,
    padded_channels,
)

from . import ir
from .fold import TapFold, fold_weights
from .jqp import CpuStep, DeviceStep, Executable, HostStep
from .partition import Limits, Plan, partition
from .perf import estimate_descriptor

__all__ = ["board_memory", "compile_model", "compile_plan", "get_config", "pack_rows", "row_bands",
           "tensor_bytes", "tensor_rows", "unpack_rows"]


def get_config(config: str | HardwareConfig) -> HardwareConfig:
    """A :class:`HardwareConfig` by preset name (see :data:`jacquard.sim.isa.CONFIGS`).

    Raises
    ------
    ValueError
        If ``config`` names no preset.
    """
    if isinstance(config, HardwareConfig):
        return config
    if config not in CONFIGS:
        raise ValueError(f"config must be one of {', '.join(CONFIGS)}, not {config!r}")
    return CONFIGS[config]


def board_memory(cfg: HardwareConfig) -> int | None:
    """Device memory in bytes of the smallest board built for ``cfg`` (``jacquard.boards``), or None."""
    try:
        from jacquard.boards.configs import BOARDS
    except ImportError:  # a host-only install without the board package: no limit is known
        return None
    sizes = [b.memory_bytes for b in BOARDS.values() if b.hw_config == cfg.name]
    return min(sizes) if sizes else None


# -- tensors in device memory -----------------------------------------------------------------------

def tensor_rows(t: ir.Tensor) -> tuple[int, int]:
    """``(rows, channels)`` of a tensor in device memory: its device shape ``(..., C)`` as rows of C."""
    shape = t.shape
    if not shape:
        return 1, 1
    return int(np.prod(shape[:-1], dtype=np.int64)), int(shape[-1])


def tensor_bytes(t: ir.Tensor, cfg: HardwareConfig) -> int:
    """Bytes of ``t`` in device memory (channels padded to ``c_par``)."""
    rows, c = tensor_rows(t)
    return rows * padded_channels(c, cfg)


def pack_rows(value: np.ndarray, t: ir.Tensor, cfg: HardwareConfig) -> bytes:
    """The device-memory bytes of a device array of ``t``: rows of channels padded with its zero point."""
    rows, c = tensor_rows(t)
    out = np.full((rows, padded_channels(c, cfg)), t.zero_point or 0, dtype=np.int8)
    out[:, :c] = np.asarray(value, dtype=np.int8).reshape(rows, c)
    return out.tobytes()


def unpack_rows(raw, t: ir.Tensor, cfg: HardwareConfig) -> np.ndarray:
    """The device array of ``t`` from its device-memory bytes."""
    rows, c = tensor_rows(t)
    arr = np.frombuffer(bytes(raw), dtype=np.int8).reshape(rows, padded_channels(c, cfg))
    return np.ascontiguousarray(arr[:, :c]).reshape(t.shape)


def _same_bytes(a: ir.Tensor, b: ir.Tensor, cfg: HardwareConfig) -> bool:
    ra, ca = tensor_rows(a)
    rb, cb = tensor_rows(b)
    if ra * ca != rb * cb:
        return False
    return ca == cb or (ca % cfg.c_par == 0 and cb % cfg.c_par == 0)


# -- descriptors of one layer ----------------------------------------------------------------------

@dataclass
class _Desc:
    """A descriptor under construction: addresses are symbolic until the memory plan is made."""

    d: LayerDescriptor
    layer: str
    inputs: list[tuple[str, str, int]]   # (address field, buffer tensor, byte offset)
    output: tuple[str, int]              # (buffer tensor, byte offset)
    consts: dict[str, bytes] = field(default_factory=dict)  # address field -> constant bytes


class _Unsupported(Exception):
    """A layer the device cannot run in this config; the message is the reason."""


def _spatial(t: ir.Tensor) -> tuple[int, int, int, int]:
    """``(N, H, W, C)`` of a feature map."""
    if len(t.shape) != 4:
        raise _Unsupported(f"tensor {t.name!r} of device shape {t.shape} is not a feature map")
    return t.shape  # type: ignore[return-value]


def _conv_weights(layer: ir.QConv, cin: int, cfg: HardwareConfig) -> tuple[np.ndarray, bool]:
    """OHWI weights as the PE array takes them, and whether the conv runs depthwise."""
    w = layer.weight
    if layer.groups == 1:
        return w, False
    cout = w.shape[0]
    if cout == cin and cfg.oc_par >= cfg.c_par:
        return w, True
    # A channel multiplier, or a PE array that cannot do depthwise: dense with zero weights.
    mult = cout // cin
    dense = np.zeros((cout, w.shape[1], w.shape[2], cin), dtype=np.int8)
    dense[np.arange(cout), :, :, np.arange(cout) // mult] = w[:, :, :, 0]
    return dense, False


def _conv_descs(layer: ir.QConv, x: ir.Tensor, y: ir.Tensor, cfg: HardwareConfig) -> list[_Desc]:
    n, h, w_, cin = _spatial(x)
    weights, depthwise = _conv_weights(layer, cin, cfg)
    cout, kh, kw, _ = weights.shape
    bias = fold_bias(layer.bias.astype(np.int32), weights, int(layer.x_zero_point))
    params = pack_channel_params(bias, layer.multiplier.astype(np.float32), cfg)
    consts = {"weights_addr": pack_weights(weights, cfg, depthwise=depthwise), "params_addr": params}
    lut = layer.lut
    if lut is not None:
        consts["lut_addr"] = pack_lut(np.ascontiguousarray(lut, dtype=np.int8), cfg)
    oh = conv_out_size(h, kh, layer.stride[0], layer.pads[0], layer.pads[2])
    ow = conv_out_size(w_, kw, layer.stride[1], layer.pads[1], layer.pads[3])
    if layer.pool is not None:
        p = layer.pool
        if (p.kernel, p.stride, p.pads, p.ceil_mode) != ((2, 2), (2, 2), (0, 0, 0, 0), False):
            raise _Unsupported(f"fused max pool {p} is not the post-processor's 2x2/2")
        oh, ow = oh // 2, ow // 2
    base = LayerDescriptor(
        op=Op.CONV, depthwise=depthwise, lut=lut is not None,
        lut_per_channel=lut is not None and lut.ndim == 2,
        fuse_maxpool=layer.pool is not None, kh=kh, kw=kw, stride_h=layer.stride[0], stride_w=layer.stride[1],
        pad_t=layer.pads[0], pad_l=layer.pads[1], pad_b=layer.pads[2], pad_r=layer.pads[3],
        clamp_lo=int(layer.lo), clamp_hi=int(layer.hi), in_zp=int(layer.x_zero_point),
        out_zp=int(layer.y_zero_point), in_h=h, in_w=w_, in_c=cin, in_cp=padded_channels(cin, cfg),
        out_h=oh, out_w=ow, out_c=cout, out_cp=padded_channels(cout, cfg))
    return _per_image(base, layer.name, x, y, n, consts, cfg)


def _fc_descs(layer: ir.QFullyConnected, x: ir.Tensor, y: ir.Tensor, cfg: HardwareConfig) -> list[_Desc]:
    if not layer.requant:
        raise _Unsupported("int32 output (MatMulInteger) has no device op")
    n, k = x.shape
    cout = layer.weight.shape[0]
    weights = layer.weight[:, None, None, :]
    bias = fold_bias(layer.bias.astype(np.int32), weights, int(layer.x_zero_point))
    consts = {"weights_addr": pack_weights(weights, cfg),
              "params_addr": pack_channel_params(bias, layer.multiplier.astype(np.float32), cfg)}
    d = LayerDescriptor(op=Op.CONV, clamp_lo=int(layer.lo), clamp_hi=int(layer.hi),
                        in_zp=int(layer.x_zero_point),
                        out_zp=int(layer.y_zero_point), in_h=n, in_w=1, in_c=k, in_cp=padded_channels(k, cfg),
                        out_h=n, out_w=1, out_c=cout, out_cp=padded_channels(cout, cfg))
    return [_Desc(d, layer.name, [("in_addr", x.name, 0)], (y.name, 0), consts)]


def _pool_descs(layer, x: ir.Tensor, y: ir.Tensor, cfg: HardwareConfig) -> list[_Desc]:
    n, h, w, c = _spatial(x)
    _, oh, ow, _ = _spatial(y)
    cp = padded_channels(c, cfg)
    common = dict(in_h=h, in_w=w, in_c=c, in_cp=cp, out_h=oh, out_w=ow, out_c=c, out_cp=cp)
    if isinstance(layer, ir.QMaxPool):
        p = layer.params
        base = LayerDescriptor(op=Op.MAXPOOL, kh=p.kernel[0], kw=p.kernel[1], stride_h=p.stride[0],
                               stride_w=p.stride[1], pad_t=p.pads[0], pad_l=p.pads[1], pad_b=p.pads[2],
                               pad_r=p.pads[3], ceil_mode=p.ceil_mode, out_zp=int(y.zero_point or 0),
                               **common)
    elif isinstance(layer, ir.QGlobalAvgPool) or layer.is_global((h, w)):
        # A whole-image average pool takes onnxruntime's global-average path (golden.avg_pool too).
        base = LayerDescriptor(op=Op.GLOBAL_AVGPOOL, in_zp=int(layer.x_zero_point),
                               out_zp=int(layer.y_zero_point), in_scale=layer.x_scale,
                               out_scale=layer.y_scale, **common)
    else:
        base = LayerDescriptor(op=Op.AVGPOOL, kh=layer.kernel[0], kw=layer.kernel[1],
                               stride_h=layer.stride[0], stride_w=layer.stride[1], pad_t=layer.pads[0],
                               pad_l=layer.pads[1], pad_b=layer.pads[2], pad_r=layer.pads[3],
                               ceil_mode=layer.ceil_mode, count_include_pad=layer.count_include_pad,
                               in_zp=int(layer.x_zero_point), out_zp=int(layer.y_zero_point),
                               in_scale=layer.x_scale, out_scale=layer.y_scale, **common)
    return _per_image(base, layer.name, x, y, n, {}, cfg)


def _per_image(base: LayerDescriptor, name: str, x: ir.Tensor, y: ir.Tensor, n: int, consts: dict,
               cfg: HardwareConfig) -> list[_Desc]:
    """One descriptor per image of a batch (each image is a contiguous slice of the NHWC tensor)."""
    xs, ys = base.in_h * base.in_w * base.in_cp, base.out_h * base.out_w * base.out_cp
    return [_Desc(LayerDescriptor(**{**base.__dict__}), name, [("in_addr", x.name, i * xs)], (y.name, i * ys),
                  consts) for i in range(n)]


def _rows_desc(op: Op, x: ir.Tensor, cfg: HardwareConfig, **fields) -> LayerDescriptor:
    rows, c = tensor_rows(x)
    # Element-wise ops see the tensor as rows x 1 pixels (in_h is 16 bits: fold long tensors into in_w).
    h, w = rows, 1
    while h > 0xFFFF and h % 2 == 0:
        h, w = h // 2, w * 2
    cp = padded_channels(c, cfg)
    return LayerDescriptor(op=op, in_h=h, in_w=w, in_c=c, in_cp=cp, out_h=h, out_w=w, out_c=c, out_cp=cp,
                           **fields)


def _add_descs(layer: ir.QAdd, tensors: dict, cfg: HardwareConfig) -> list[_Desc]:
    x, y = tensors[layer.inputs[0]], tensors[layer.outputs[0]]
    d = _rows_desc(Op.ADD, x, cfg, in_zp=int(layer.a_zero_point), in2_zp=int(layer.b_zero_point),
                   out_zp=int(layer.y_zero_point), in_scale=layer.a_scale, in2_scale=layer.b_scale,
                   out_scale=layer.y_scale)
    if layer.b_const is not None:
        bt = ir.Tensor(f"{layer.name}::b", x.onnx_shape, "int8", layer.b_scale, layer.b_zero_point, x.perm)
        b = np.broadcast_to(np.asarray(layer.b_const, dtype=np.int8), x.shape)
        consts = {"in2_addr": pack_rows(b, bt, cfg)}
        return [_Desc(d, layer.name, [("in_addr", x.name, 0)], (y.name, 0), consts)]
    return [_Desc(d, layer.name, [("in_addr", x.name, 0), ("in2_addr", layer.inputs[1], 0)], (y.name, 0))]


def _lut_descs(layer: ir.QLut, x: ir.Tensor, y: ir.Tensor, cfg: HardwareConfig) -> list[_Desc]:
    """A table on its own: an identity 1x1 conv (acc = x, multiplier 1, zero point 0) then the table."""
    rows, c = tensor_rows(x)
    depthwise = cfg.oc_par >= cfg.c_par
    w = np.ones((c, 1, 1, 1), np.int8) if depthwise else np.eye(c, dtype=np.int8)[:, None, None, :]
    consts = {"weights_addr": pack_weights(w, cfg, depthwise=depthwise),
              "params_addr": pack_channel_params(np.zeros(c, np.int32), np.ones(c, np.float32), cfg),
              "lut_addr": pack_lut(np.ascontiguousarray(layer.lut, dtype=np.int8), cfg)}
    d = _rows_desc(Op.CONV, x, cfg, depthwise=depthwise, lut=True,
                   lut_per_channel=layer.lut.ndim == 2, in_zp=int(x.zero_point or 0))
    if d.in_w > 1:
        raise _Unsupported(f"{rows} rows is too long for one table pass")
    return [_Desc(d, layer.name, [("in_addr", x.name, 0)], (y.name, 0), consts)]


def row_bands(desc: _Desc, cfg: HardwareConfig, rows: int) -> list[_Desc]:
    """Split a CONV or MAXPOOL descriptor into bands of at most ``rows`` output rows.

    Each band reads the input rows its windows cover (a contiguous slice of the NHWC input), with the
    top padding only on the first band and the bottom padding only on the last, and writes its output
    rows. A fused max pool needs even bands of the conv's rows, so the band is counted in pooled rows.
    Bands are exact: every output row is computed from the same window as without banding.
    """
    d = desc.d
    # AVGPOOL is never banded: a band whose rows equal the kernel would take the global-average path.
    if d.op not in (Op.CONV, Op.MAXPOOL) or d.ceil_mode:
        return [desc]
    pool = 2 if d.fuse_maxpool else 1
    out_rows = d.out_h
    if out_rows <= rows:
        return [desc]
    row_in = d.in_w * d.in_cp
    row_out = d.out_w * d.out_cp
    bands = []
    for r0 in range(0, out_rows, rows):
        r1 = min(out_rows, r0 + rows)
        c0, c1 = r0 * pool, r1 * pool           # conv output rows before the fused pool
        top = c0 * d.stride_h - d.pad_t         # first input row of the band's first window
        bot = (c1 - 1) * d.stride_h - d.pad_t + d.kh  # one past the last input row it reads
        pad_t, pad_b = max(0, -top), max(0, bot - d.in_h)
        i0, i1 = max(0, top), min(d.in_h, bot)
        nd = LayerDescriptor(**{**d.__dict__, "in_h": i1 - i0, "out_h": r1 - r0, "pad_t": pad_t,
                                "pad_b": pad_b})
        ins = [(f, t, off + (i0 * row_in if f == "in_addr" else 0)) for f, t, off in desc.inputs]
        bands.append(_Desc(nd, desc.layer, ins, (desc.output[0], desc.output[1] + r0 * row_out), desc.consts))
    return bands


def _check(desc: _Desc, cfg: HardwareConfig) -> str | None:
    try:
        check_descriptor(desc.d, cfg)
    except DescriptorError as e:
        return str(e).removeprefix("descriptor: ")
    return None


def _fit(descs: list[_Desc], cfg: HardwareConfig, band_rows: int | None) -> list[_Desc]:
    """The descriptors split into bands (if asked) and checked against ``cfg``; raises _Unsupported."""
    fitted = []
    for desc in descs:
        for band in row_bands(desc, cfg, band_rows) if band_rows else [desc]:
            why = _check(band, cfg)
            if why is not None:
                raise _Unsupported(why)
            fitted.append(band)
    return fitted


def _cycles(descs: list[_Desc], cfg: HardwareConfig) -> float:
    """The performance model's cycles of ``descs`` (infinite if the model refuses one)."""
    try:
        return sum(estimate_descriptor(d.d, cfg).cycles for d in descs)
    except ValueError:  # a tile that does not fit the weight bank: the core would refuse it
        return math.inf


def _fold_conv(layer: ir.QConv, tensors: dict[str, ir.Tensor], stage: _Stage, cfg: HardwareConfig,
               band_rows: int | None) -> tuple[list[_Desc], ir.Tensor, TapFold] | None:
    """``layer`` as a 1x1 CONV over a host-folded input, or None if it cannot be folded.

    Only a dense conv whose input the host writes (a stage input, not produced or aliased in the
    stage) and whose kernel has several taps; the caller decides whether it pays.
    """
    name = layer.inputs[0]
    x = tensors[name]
    kh, kw = layer.weight.shape[1:3]
    if (layer.groups != 1 or kh * kw == 1 or len(x.shape) != 4 or x.dtype != "int8"
            or x.zero_point != int(layer.x_zero_point) or name in stage.alias
            or any(d.output[0] == name for d in stage.descs)):
        return None
    cin = x.shape[3]
    if padded_channels(kh * kw * cin, cfg) >= kh * kw * padded_channels(cin, cfg):
        return None  # no lane tile saved
    fold = TapFold(name, (int(kh), int(kw)), tuple(layer.stride), tuple(layer.pads))
    folded = ir.Tensor(f"{layer.name}::im2col", fold.shape(x.shape), "int8", x.scale, x.zero_point)
    flat = dataclasses.replace(layer, inputs=(folded.name, *layer.inputs[1:]),
                               weight=fold_weights(layer.weight), stride=(1, 1), pads=(0, 0, 0, 0))
    try:
        descs = _fit(_conv_descs(flat, folded, tensors[layer.outputs[0]], cfg), cfg, band_rows)
    except _Unsupported:
        return None
    return descs, folded, fold


# -- the compiler -----------------------------------------------------------------------------------

@dataclass
class _Stage:
    descs: list[_Desc] = field(default_factory=list)
    layers: list[ir.Layer] = field(default_factory=list)
    alias: dict[str, str] = field(default_factory=dict)  # tensor -> the tensor whose buffer it shares


def _root(alias: dict[str, str], name: str) -> str:
    while name in alias:
        name = alias[name]
    return name


def _layer_descs(layer: ir.Layer, tensors: dict[str, ir.Tensor], cfg: HardwareConfig) -> list[_Desc]:
    if any(tensors[n].dtype != "int8" for n in (*layer.inputs, *layer.outputs)):
        raise _Unsupported("not an int8 layer")
    x = tensors[layer.inputs[0]]
    y = tensors[layer.outputs[0]]
    if isinstance(layer, ir.QConv):
        return _conv_descs(layer, x, y, cfg)
    if isinstance(layer, ir.QFullyConnected):
        return _fc_descs(layer, x, y, cfg)
    if isinstance(layer, (ir.QMaxPool, ir.QAvgPool, ir.QGlobalAvgPool)):
        return _pool_descs(layer, x, y, cfg)
    if isinstance(layer, ir.QAdd):
        return _add_descs(layer, tensors, cfg)
    if isinstance(layer, ir.QLut):
        return _lut_descs(layer, x, y, cfg)
    raise _Unsupported(f"{type(layer).__name__} has no device op")


def _fuse_lut(stage: _Stage, layer: ir.QLut, uses: dict[str, int], keep: set[str],
              cfg: HardwareConfig) -> str | None:
    """Fold a table into the CONV or ADD just before it that produced its input, if nothing else reads it.

    Returns None if it was folded, else why not (empty when there is nothing to say).
    """
    if not stage.descs:
        return ""
    last = stage.descs[-1]
    src = layer.inputs[0]
    same = [d for d in stage.descs if d.layer == last.layer]
    if last.output[0] != src or uses.get(src, 0) != 1 or src in keep or any(
            d.d.op not in (Op.CONV, Op.ADD) or d.d.lut or d.d.fuse_maxpool for d in same):
        return ""
    if last.d.op == Op.ADD and cfg.oc_par < cfg.c_par:
        # ADD's c_par-wide sums would pass the LUT/pad unit's oc_par lanes: the core refuses it.
        return (f"not fused into ADD {last.layer}: config {cfg.name}'s LUT unit has oc_par={cfg.oc_par} "
                f"lanes < c_par={cfg.c_par}")
    lut = np.ascontiguousarray(layer.lut, dtype=np.int8)
    if lut.ndim == 2 and lut.shape[0] != last.d.out_c:
        return ""
    for d in same:
        d.d.lut, d.d.lut_per_channel = True, lut.ndim == 2
        d.consts = dict(d.consts)
        d.output = (layer.outputs[0], d.output[1])
        d.consts["lut_addr"] = lut  # packed once by _link
    return None


def compile_plan(plan: Plan, config: str | HardwareConfig = "ulx3s-85f", *,
                 band_rows: int | None = None, fold_taps: bool = True,
                 memory_bytes: int | None = None) -> Executable:
    """Compile a partition plan for ``config``.

    Parameters
    ----------
    plan : Plan
        From :func:`jacquard.host.partition.partition`.
    config : str or HardwareConfig
        The hardware config (a preset name).
    band_rows : int, optional
        Split every line-buffer descriptor into bands of at most this many output rows (the
        compiler does this by itself only where a layer would not fit otherwise; forcing it is
        useful to keep RTL simulations of single descriptors short).
    fold_taps : bool
        Fold the taps of convolutions whose input the host writes into the channel lanes where the
        performance model says it is faster (see the module docstring). The host then sends about
        ``KH*KW / stride**2`` times the bytes of that input: turn it off for a slow link.
    memory_bytes : int, optional
        Device memory a folded program must fit (a fold that would not is left out); by default
        that of the board built for ``config`` (:func:`board_memory`), else no limit.

    Returns
    -------
    Executable

    Raises
    ------
    ValueError
        If ``config`` names no preset, or ``band_rows`` or ``memory_bytes`` is not a positive integer.
    """
    cfg = get_config(config)
    if band_rows is not None and (not isinstance(band_rows, int) or band_rows < 1):
        raise ValueError(f"band_rows must be a positive integer, not {band_rows!r}")
    if memory_bytes is not None and (not isinstance(memory_bytes, int) or memory_bytes < 1):
        raise ValueError(f"memory_bytes must be a positive integer, not {memory_bytes!r}")
    if not isinstance(fold_taps, bool):
        raise TypeError(f"fold_taps must be a bool, not {fold_taps!r}")
    limit = memory_bytes if memory_bytes is not None else board_memory(cfg)
    no_fold: set[str] = set()
    unfolded_fits = None  # whether the program fits the limit without any fold (compiled once)
    while True:
        exe, folded = _compile(plan, cfg, band_rows, fold_taps, no_fold)
        if limit is None or exe.memory_size <= limit or not folded:
            break
        if unfolded_fits is None:
            unfolded_fits = _compile(plan, cfg, band_rows, False, no_fold)[0].memory_size <= limit
        if not unfolded_fits:
            break  # it does not fit unfolded either: folding does not decide where it can run
        # Folding is what makes the program too large: unfold the largest folded input and retry.
        no_fold.add(max(folded, key=lambda layer: folded[layer]))
    for row in exe.report:
        if row["layer"] in no_fold and not row["reason"]:
            row["reason"] = f"taps not folded: the program would not fit {limit} bytes of device memory"
    return exe


def _compile(plan: Plan, cfg: HardwareConfig, band_rows: int | None, fold_taps: bool,
             no_fold: set[str]) -> tuple[Executable, dict[str, int]]:
    """One compile; also the folded layers with their folded input's bytes."""
    tensors = dict(plan.graph.tensors)
    outputs = set(plan.graph.outputs)
    uses: dict[str, int] = {}
    for layer in plan.graph.layers:
        for name in layer.inputs:
            uses[name] = uses.get(name, 0) + 1
    report_reason: dict[str, str] = dict(plan.reasons)
    where: dict[str, str] = {}
    ndesc: dict[str, int] = {}
    folds: dict[str, TapFold] = {}
    folded_bytes: dict[str, int] = {}
    steps: list = []
    stage = _Stage()

    def close_stage():
        nonlocal stage
        if stage.descs:
            steps.append(stage)
        else:
            for layer in stage.layers:  # only byte-free layouts: do them on the host
                steps.append(HostStep(layer, "layout"))
                where[layer.name] = "host"
        stage = _Stage()

    for seg in plan.segments:
        if seg.where == "cpu":
            close_stage()
            steps.append(CpuStep(seg.model.SerializeToString(), list(seg.inputs), list(seg.outputs),
                                 [layer.name for layer in seg.layers]))
            for layer in seg.layers:
                where[layer.name] = "cpu"
            continue
        for layer in seg.layers:
            if isinstance(layer, ir.Layout) and layer.free and _same_bytes(
                    tensors[layer.inputs[0]], tensors[layer.outputs[0]], cfg) \
                    and tensors[layer.inputs[0]].dtype == "int8":
                stage.alias[layer.outputs[0]] = layer.inputs[0]
                stage.layers.append(layer)
                where[layer.name] = "accelerator"
                continue
            if isinstance(layer, ir.QLut):
                why = _fuse_lut(stage, layer, uses, outputs, cfg)
                if why is None:
                    stage.layers.append(layer)
                    where[layer.name] = "accelerator"
                    report_reason[layer.name] = f"fused into {stage.descs[-1].layer}"
                    continue
                if why:
                    report_reason[layer.name] = why
            try:
                try:
                    fitted, plain_error = _fit(_layer_descs(layer, tensors, cfg), cfg, band_rows), None
                except _Unsupported as e:
                    fitted, plain_error = [], e
                fold = None
                if fold_taps and isinstance(layer, ir.QConv) and layer.name not in no_fold:
                    fold = _fold_conv(layer, tensors, stage, cfg, band_rows)
                    if (fold is not None and plain_error is None
                            and _cycles(fold[0], cfg) >= _cycles(fitted, cfg)):
                        fold = None  # the perf model says folding does not pay here
                if fold is not None:
                    fitted, ftensor, spec = fold
                    tensors[ftensor.name] = ftensor
                    folds[ftensor.name] = spec
                    folded_bytes[layer.name] = tensor_bytes(ftensor, cfg)
                    cin = tensors[spec.source].shape[3]
                    report_reason[layer.name] = (
                        f"taps folded into channels: the host writes {ftensor.name} "
                        f"(1x1 conv {ftensor.shape[3]}->{layer.weight.shape[0]} instead of "
                        f"{spec.kernel[0]}x{spec.kernel[1]} conv {cin}->{layer.weight.shape[0]})")
                elif plain_error is not None:
                    raise plain_error
            except _Unsupported as e:
                close_stage()
                reason = "host op" if isinstance(layer, (ir.Quantize, ir.Dequantize, ir.Layout)) else str(e)
                steps.append(HostStep(layer, reason))
                where[layer.name] = "host"
                if reason != "host op":
                    report_reason[layer.name] = reason
                continue
            stage.descs += fitted
            stage.layers.append(layer)
            where[layer.name] = "accelerator"
            ndesc[layer.name] = len(fitted)
    close_stage()
    return _link(plan, cfg, steps, tensors, where, ndesc, report_reason, folds), folded_bytes


def _needed(plan: Plan, stage_layers: set[str]) -> set[str]:
    """Tensors produced inside a stage that something outside it reads (or that are model outputs)."""
    out = set(plan.graph.outputs)
    for layer in plan.graph.layers:
        if layer.name not in stage_layers:
            out.update(layer.inputs)
    return out


def _plan_arena(stage: _Stage, sizes: dict[str, int], ins: list[str], outs: list[str], align: int
                ) -> tuple[dict[str, int], int, int]:
    """Place the stage's buffers: greedy by size, first fit among buffers whose lifetimes overlap.

    A buffer lives from the descriptor that writes it (stage inputs: before the first) to the last
    that reads it (stage outputs: after the last); a descriptor's output must not share bytes with
    its inputs, which the inclusive lifetimes guarantee.
    """
    n = len(stage.descs)
    life: dict[str, list[int]] = {}
    for name in ins:
        life[name] = [-1, -1]
    for i, desc in enumerate(stage.descs):
        for _, t, _ in desc.inputs:
            life.setdefault(t, [i, i])[1] = i
        o = desc.output[0]
        life.setdefault(o, [i, i])
        life[o][1] = max(life[o][1], i)
    for name in outs:
        life[name][1] = n
    order = sorted(life, key=lambda b: (-sizes[b], life[b][0]))
    placed: list[tuple[int, int, int, int]] = []  # (start, end, first, last)
    addr: dict[str, int] = {}
    for b in order:
        first, last = life[b]
        size = -(-sizes[b] // align) * align
        busy = sorted((s, e) for s, e, f, la in placed if not (la < first or last < f))
        at = 0
        for s, e in busy:
            if at + size <= s:
                break
            at = max(at, e)
        addr[b] = at
        placed.append((at, at + size, first, last))
    peak = max((e for _, e, _, _ in placed), default=0)
    naive = sum(-(-sizes[b] // align) * align for b in life)
    return addr, peak, naive


def _link(plan: Plan, cfg: HardwareConfig, steps: list, tensors: dict[str, ir.Tensor], where: dict,
          ndesc: dict, reasons: dict, folds: dict[str, TapFold]) -> Executable:
    align = max(cfg.dma_align, 16)
    image = bytearray()

    def place(raw: bytes) -> int:
        while len(image) % align:
            image.append(0)
        at = len(image)
        image.extend(raw)
        return at

    const_addr: dict[int, int] = {}

    def const(raw) -> int:
        key = id(raw)
        if key not in const_addr:
            const_addr[key] = place(raw)
        return const_addr[key]

    # Constants first (shared between the descriptors of one layer), then the programs.
    stages = [s for s in steps if isinstance(s, _Stage)]
    for st in stages:
        for desc in st.descs:
            for f, raw in list(desc.consts.items()):
                if isinstance(raw, np.ndarray):  # a table fused after the fact: pack it once
                    packed = pack_lut(raw, cfg)
                    for other in st.descs:
                        if other.consts.get(f) is raw:
                            other.consts[f] = packed
                    raw = packed
                setattr(desc.d, f, const(raw))
    prog_slots = {id(st): place(bytes(Program.for_config(cfg, [d.d for d in st.descs]).size()))
                  for st in stages}
    arena_base = -(-len(image) // align) * align
    arena_peak = arena_naive = 0
    buffers = 0
    out_steps = []
    for s in steps:
        if not isinstance(s, _Stage):
            out_steps.append(s)
            continue
        names = {layer.name for layer in s.layers}
        needed = _needed(plan, names)
        produced = {d.output[0] for d in s.descs}
        # An alias is produced here only if its root is (a stage may open with a free layout of a
        # tensor that a CPU step made).
        produced |= {t for t in s.alias if _root(s.alias, t) in produced}
        read = [t for d in s.descs for _, t, _ in d.inputs]
        ins = list(dict.fromkeys(_root(s.alias, t) for t in read
                                 if t not in produced and _root(s.alias, t) not in produced))
        outs = [t for t in dict.fromkeys([*[d.output[0] for d in s.descs], *s.alias]) if t in needed]
        alias = s.alias

        def roots(ts, alias=alias):
            return list(dict.fromkeys(_root(alias, t) for t in ts))
        for d in s.descs:
            d.inputs = [(f, _root(s.alias, t), o) for f, t, o in d.inputs]
            d.output = (_root(s.alias, d.output[0]), d.output[1])
        sizes = {t: tensor_bytes(tensors[t], cfg)
                 for t in roots([*ins, *outs, *[d.output[0] for d in s.descs]])}
        addr, peak, naive = _plan_arena(s, sizes, roots(ins), roots(outs), align)
        arena_peak, arena_naive = max(arena_peak, peak), max(arena_naive, naive)
        buffers += len(addr)
        for d in s.descs:
            for f, t, o in d.inputs:
                setattr(d.d, f, arena_base + addr[t] + o)
            d.d.out_addr = arena_base + addr[d.output[0]] + d.output[1]
        program = Program.for_config(cfg, [d.d for d in s.descs])
        raw = program.to_bytes()
        at = prog_slots[id(s)]
        image[at:at + len(raw)] = raw
        out_steps.append(DeviceStep(at, len(raw), [(t, arena_base + addr[_root(s.alias, t)]) for t in ins],
                                    [(t, arena_base + addr[_root(s.alias, t)]) for t in outs],
                                    [d.layer for d in s.descs],
                                    folds={t: folds[t] for t in ins if t in folds}))
    imp = plan.imported
    report = []
    for row in plan.report():
        name = row["layer"]
        row = {**row, "where": where.get(name, row["where"]), "reason": reasons.get(name, row["reason"]),
               "descriptors": ndesc.get(name, 0)}
        report.append(row)
    used = {n for s in out_steps for n in (*s.inputs, *s.outputs)} if out_steps else set()
    used = {n if isinstance(n, str) else n[0] for n in used}
    used |= set(plan.graph.inputs) | set(plan.graph.outputs)
    used |= {f.source for f in folds.values()}
    exe = Executable(
        config=cfg, steps=out_steps, image=bytes(image), memory_size=arena_base + arena_peak,
        tensors={n: tensors[n] for n in used if n in tensors},
        inputs=list(plan.graph.inputs), outputs=list(plan.graph.outputs),
        input_shapes=dict(imp.input_shapes), output_shapes=dict(imp.output_shapes),
        input_dtypes={n: np.dtype(d).name for n, d in imp.input_dtypes.items()},
        output_dtypes={n: np.dtype(d).name for n, d in imp.output_dtypes.items()},
        report=report,
        memory={"image_bytes": len(image), "arena_base": arena_base, "arena_bytes": arena_peak,
                "arena_naive_bytes": arena_naive, "buffers": buffers,
                "total_bytes": arena_base + arena_peak})
    exe.check_folds()
    return exe


def compile_model(model, config: str | HardwareConfig = "ulx3s-85f", *,
                  input_shapes: Mapping[str, tuple[int, ...]] | None = None,
                  calibrate: np.ndarray | None = None, band_rows: int | None = None,
                  fold_taps: bool = True, memory_bytes: int | None = None) -> Executable:
    """Import, partition and compile an ONNX model (path, bytes or ModelProto) for ``config``.

    ``band_rows``, ``fold_taps`` and ``memory_bytes`` are :func:`compile_plan`'s.

    Raises
    ------
    ModelError, ShapeError
        From :func:`jacquard.host.importer.load_model`.
    ValueError
        If ``config`` names no preset.
    """
    from .importer import load_model

    cfg = get_config(config)
    imported = load_model(model, input_shapes, calibrate=calibrate)
    return compile_plan(partition(imported, Limits.for_config(cfg)), cfg, band_rows=band_rows,
                        fold_taps=fold_taps, memory_bytes=memory_bytes)
