"""The quantized graph IR: integer layers on int8 tensors, and its reference evaluator.

The importer (:mod:`jacquard.host.importer`) turns an ONNX model into a :class:`Graph`; the
partitioner decides where each layer runs; the compiler turns the accelerator's layers into a
program. :func:`evaluate` runs a graph with the golden ops (:mod:`jacquard.sim.golden`), and is the
reference the compiler and every device are checked against.

Tensors and layouts
-------------------
Every tensor has an ONNX shape and a *device permutation* ``perm``: the array the IR holds is
``onnx_array.transpose(perm)``. Feature maps feeding spatial layers are NHWC (``perm = (0, 2, 3, 1)``
of an NCHW ONNX tensor); a Transpose is then bookkeeping (a new ``perm`` over the same bytes), and a
:class:`Layout` layer whose input and output arrays are the same bytes is free (:attr:`Layout.free`).

Weights are OHWI int8 ``(Cout, KH, KW, Cin // groups)``, biases int32, weight scales float32 per
output channel; activations carry one float32 scale and an int8 zero point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from jacquard.sim import golden

__all__ = [
    "NCHW_TO_NHWC",
    "CpuOp",
    "Dequantize",
    "Graph",
    "Layer",
    "Layout",
    "MaxPoolParams",
    "QAdd",
    "QAvgPool",
    "QConv",
    "QFullyConnected",
    "QGlobalAvgPool",
    "QLut",
    "QMaxPool",
    "Quantize",
    "Tensor",
    "evaluate",
    "macs",
]

NCHW_TO_NHWC = (0, 2, 3, 1)
_F32 = np.float32


@dataclass
class Tensor:
    """One tensor of the graph.

    Members
    -------
    name : str
        The ONNX tensor name (the importer invents ``<name>::<suffix>`` names for values that exist
        only inside a folded pattern).
    onnx_shape : tuple of int
        Static shape in ONNX's order.
    dtype : str
        A numpy dtype name: ``"int8"``, ``"int32"`` or ``"float32"`` on the accelerator; CPU-only
        tensors may have others (``"uint8"``, ``"int64"``, ...).
    scale, zero_point : float, int or None
        Quantization of an int8 tensor (``None`` for float and int32 tensors).
    perm : tuple of int
        Device layout: the IR's array is ``onnx_array.transpose(perm)``.
    onnx_dtype : str
        The dtype in the ONNX model, if not ``dtype``: a ``"uint8"`` tensor (zero point ``z``) is held
        as int8 with zero point ``z - 128`` (the same integers ``x - z``, shifted by 128).
    """

    name: str
    onnx_shape: tuple[int, ...]
    dtype: str
    scale: float | None = None
    zero_point: int | None = None
    perm: tuple[int, ...] = ()
    onnx_dtype: str = ""

    def __post_init__(self):
        self.dtype = np.dtype(self.dtype).name
        self.onnx_dtype = np.dtype(self.onnx_dtype or self.dtype).name
        self.onnx_shape = tuple(int(d) for d in self.onnx_shape)
        if not self.perm:
            self.perm = tuple(range(len(self.onnx_shape)))
        if sorted(self.perm) != list(range(len(self.onnx_shape))):
            raise ValueError(f"perm must permute {len(self.onnx_shape)} axes, not {self.perm!r}")

    @property
    def shape(self) -> tuple[int, ...]:
        """The device shape, ``onnx_shape`` permuted by ``perm``."""
        return tuple(self.onnx_shape[p] for p in self.perm)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def to_device(self, onnx_value: np.ndarray) -> np.ndarray:
        """The device array of an ONNX-layout value."""
        v = np.asarray(onnx_value)
        if self.onnx_dtype == "uint8" and self.dtype == "int8":
            v = (v.astype(np.int16) - 128).astype(np.int8)
        return np.ascontiguousarray(v.transpose(self.perm))

    def to_onnx(self, device_value: np.ndarray) -> np.ndarray:
        """The ONNX-layout value of a device array."""
        v = np.asarray(device_value)
        if self.onnx_dtype == "uint8" and self.dtype == "int8":
            v = (v.astype(np.int16) + 128).astype(np.uint8)
        return np.ascontiguousarray(v.transpose(np.argsort(self.perm)))


class TensorEnv:
    """Values of a run by tensor name, each held in ONNX layout, device layout or both.

    A value is converted between the two layouts only when asked for in the other one, once, so a
    chain of CPU ops (ONNX layout) or of device layers (device layout) never converts in between.

    Parameters
    ----------
    tensors : dict of str to Tensor
        The graph's tensors (their layouts).
    feeds : dict of str to ndarray
        Initial values, in ONNX layout.
    """

    def __init__(self, tensors: dict[str, Tensor], feeds: dict[str, np.ndarray]) -> None:
        self.tensors = tensors
        self._onnx: dict[str, np.ndarray] = dict(feeds)
        self._device: dict[str, np.ndarray] = {}

    def onnx(self, name: str) -> np.ndarray:
        """The ONNX-layout value of ``name``."""
        if name not in self._onnx:
            self._onnx[name] = self.tensors[name].to_onnx(self._device[name])
        return self._onnx[name]

    def device(self, name: str) -> np.ndarray:
        """The device-layout value of ``name``."""
        if name not in self._device:
            self._device[name] = self.tensors[name].to_device(self._onnx[name])
        return self._device[name]

    def set_onnx(self, name: str, value: np.ndarray) -> None:
        """Set ``name`` from an ONNX-layout value (drops a stale device copy)."""
        self._onnx[name] = value
        self._device.pop(name, None)

    def set_device(self, name: str, value: np.ndarray) -> None:
        """Set ``name`` from a device-layout value (drops a stale ONNX copy)."""
        self._device[name] = value
        self._onnx.pop(name, None)


@dataclass
class Layer:
    """Base of all layers: a name, input and output tensor names, and the ONNX nodes it came from.

    ``source`` lets the partitioner hand a layer back to onnxruntime: running those nodes computes
    the layer's outputs (layers sharing a source node are placed together).
    """

    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    source: tuple[str, ...] = ()


@dataclass
class MaxPoolParams:
    """Max pooling with ONNX semantics; the padding never wins."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    ceil_mode: bool = False


@dataclass
class Requantized(Layer):
    """A layer whose int8 output is requantized from its input's scale to its own."""

    x_scale: float = 1.0
    x_zero_point: int = 0
    y_scale: float = 1.0
    y_zero_point: int = 0


@dataclass
class Weighted(Requantized):
    """A layer with int8 weights and int32 bias (conv, FC): ``clamp(requant(x * weight + bias), lo, hi)``.

    Members
    -------
    weight : ndarray
        int8; the layout is the subclass's.
    bias : ndarray
        int32 ``(Cout,)``.
    w_scale : ndarray
        float32 ``(Cout,)``, per output channel.
    lo, hi : int
        Clamp bounds (fused ReLU / ReLU6 / Clip).
    """

    weight: np.ndarray = None
    bias: np.ndarray = None
    w_scale: np.ndarray = None
    lo: int = golden.INT8_MIN
    hi: int = golden.INT8_MAX

    @property
    def multiplier(self) -> np.ndarray:
        """Per-channel float32 requantization multiplier (:func:`golden.requant_multiplier`)."""
        return golden.requant_multiplier(self.x_scale, self.w_scale, self.y_scale)


@dataclass
class QConv(Weighted):
    """Quantized convolution (QLinearConv), with optional fused LUT and max pool.

    Computes ``pool(lut(clamp(requant(conv(x) + bias), lo, hi)))``. ``y_scale``/``y_zero_point`` are
    the requantization's output; with a LUT the output tensor has the LUT's quantization.

    Members
    -------
    weight : ndarray
        int8 OHWI ``(Cout, KH, KW, Cin // groups)``.
    stride, pads, groups
        As :func:`jacquard.sim.golden.conv2d_acc`; pads are (top, left, bottom, right).
    lut : ndarray or None
        int8 ``(256,)`` or ``(Cout, 256)`` applied after the clamp.
    pool : MaxPoolParams or None
        Max pool applied last.
    """

    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    groups: int = 1
    lut: np.ndarray | None = None
    pool: MaxPoolParams | None = None

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[1]), int(self.weight.shape[2])


@dataclass
class QFullyConnected(Weighted):
    """Fully connected layer ``y = x @ weight.T + bias`` on ``(N, Cin)`` int8 inputs.

    From QLinearMatMul (requantized int8 output) or MatMulInteger (``requant=False``: the int32
    accumulators are the output).

    Members
    -------
    weight : ndarray
        int8 ``(Cout, Cin)``.
    requant : bool
        Whether the output is requantized to int8.
    """

    requant: bool = True


@dataclass
class QMaxPool(Layer):
    """Int8 max pooling (input and output share their quantization)."""

    params: MaxPoolParams = None


@dataclass
class QAvgPool(Requantized):
    """QLinearAveragePool."""

    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = False

    def is_global(self, hw: tuple[int, int]) -> bool:
        """Whether the window is the whole unpadded ``hw`` map: onnxruntime (and golden.avg_pool)
        then take the global-average path, and so does the device (GLOBAL_AVGPOOL)."""
        return tuple(self.kernel) == tuple(hw) and self.pads == (0, 0, 0, 0)


@dataclass
class QGlobalAvgPool(Requantized):
    """QLinearGlobalAveragePool."""


@dataclass
class QAdd(Layer):
    """QLinearAdd of two int8 tensors of one shape.

    ``b_const`` (device layout, the full shape of ``a``) replaces a second input that is a constant
    broadcast over the leading axes; then ``inputs`` holds only ``a``.
    """

    a_scale: float = 1.0
    a_zero_point: int = 0
    b_scale: float = 1.0
    b_zero_point: int = 0
    y_scale: float = 1.0
    y_zero_point: int = 0
    b_const: np.ndarray | None = None


@dataclass
class QLut(Layer):
    """Element-wise int8 -> int8 lookup table, per tensor ``(256,)`` or per channel ``(C, 256)``
    (channel = the device array's last axis), indexed by ``x + 128``."""

    lut: np.ndarray = None


@dataclass
class Layout(Layer):
    """Transpose / Reshape / Flatten / Squeeze / Unsqueeze / Identity of ONNX, or ``Relayout`` (same
    ONNX value, another device ``perm``). Works on any dtype.

    Members
    -------
    op : str
        The ONNX op, or ``"Relayout"``.
    perm : tuple of int
        Transpose's ``perm``.
    free : bool
        Set by the importer when the output array is the input array's bytes unchanged (so the
        compiler only renames a buffer).
    """

    op: str = "Identity"
    perm: tuple[int, ...] = ()
    free: bool = False


@dataclass
class Quantize(Layer):
    """QuantizeLinear of a float tensor to int8 (onnxruntime's rounding), at the accelerator's edge."""

    scale: float = 1.0
    zero_point: int = 0


@dataclass
class Dequantize(Layer):
    """DequantizeLinear of an int8 tensor to float32, at the accelerator's edge."""

    scale: float = 1.0
    zero_point: int = 0


@dataclass
class CpuOp(Layer):
    """ONNX nodes (``source``) the accelerator cannot run; the partitioner runs them in onnxruntime.

    Members
    -------
    reason : str
        Why it stays on the CPU (shown in the partition report).
    macs : int
        Multiply-accumulates of a convolution or matrix product (0 for other ops).
    """

    op: str = ""
    reason: str = ""
    macs: int = 0


@dataclass
class Graph:
    """A quantized graph: tensors by name, layers in topological order, inputs and outputs."""

    tensors: dict[str, Tensor] = field(default_factory=dict)
    layers: list[Layer] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    def producer(self) -> dict[str, Layer]:
        """Map each tensor name to the layer that produces it."""
        return {t: layer for layer in self.layers for t in layer.outputs}

    def consumers(self) -> dict[str, list[Layer]]:
        """Map each tensor name to the layers that read it."""
        out: dict[str, list[Layer]] = {}
        for layer in self.layers:
            for t in layer.inputs:
                out.setdefault(t, []).append(layer)
        return out


def _conv_out(layer: QConv, x_shape: tuple[int, ...]) -> tuple[int, int]:
    kh, kw = layer.kernel
    oh = golden.conv_output_size(x_shape[1], kh, layer.stride[0], layer.pads[0], layer.pads[2])
    ow = golden.conv_output_size(x_shape[2], kw, layer.stride[1], layer.pads[1], layer.pads[3])
    return oh, ow


def macs(layer: Layer, graph: Graph) -> int:
    """Multiply-accumulates of one layer (convolutions and fully connected; 0 for the rest)."""
    if isinstance(layer, QConv):
        n = graph.tensors[layer.inputs[0]].shape[0]
        oh, ow = _conv_out(layer, graph.tensors[layer.inputs[0]].shape)
        cout, kh, kw, cin_g = layer.weight.shape
        return int(n * oh * ow * cout * kh * kw * cin_g)
    if isinstance(layer, QFullyConnected):
        n = graph.tensors[layer.inputs[0]].shape[0]
        return int(n * layer.weight.shape[0] * layer.weight.shape[1])
    return 0


def _eval_layer(layer: Layer, graph: Graph, env: dict[str, np.ndarray]) -> list[np.ndarray]:
    t = graph.tensors
    x = env[layer.inputs[0]] if layer.inputs else None
    if isinstance(layer, QConv):
        y = golden.qconv2d(
            x,
            layer.x_zero_point,
            layer.weight,
            layer.bias,
            layer.multiplier,
            layer.y_zero_point,
            stride=layer.stride,
            pads=layer.pads,
            groups=layer.groups,
            lo=layer.lo,
            hi=layer.hi,
        )
        if layer.lut is not None:
            y = golden.apply_lut(y, layer.lut)
        if layer.pool is not None:
            p = layer.pool
            y = golden.max_pool(y, p.kernel, p.stride, p.pads, p.ceil_mode)
        return [y]
    if isinstance(layer, QFullyConnected):
        if layer.requant:
            return [
                golden.fully_connected(
                    x,
                    layer.x_zero_point,
                    layer.weight,
                    layer.bias,
                    layer.multiplier,
                    layer.y_zero_point,
                    layer.lo,
                    layer.hi,
                )
            ]
        acc = golden.conv2d_acc(
            x[:, None, None, :], layer.x_zero_point, layer.weight[:, None, None, :], layer.bias
        )
        return [acc[:, 0, 0, :]]
    if isinstance(layer, QMaxPool):
        p = layer.params
        return [golden.max_pool(x, p.kernel, p.stride, p.pads, p.ceil_mode)]
    if isinstance(layer, QAvgPool):
        return [
            golden.avg_pool(
                x,
                layer.x_scale,
                layer.x_zero_point,
                layer.y_scale,
                layer.y_zero_point,
                layer.kernel,
                layer.stride,
                layer.pads,
                layer.ceil_mode,
                layer.count_include_pad,
            )
        ]
    if isinstance(layer, QGlobalAvgPool):
        return [
            golden.global_avg_pool(x, layer.x_scale, layer.x_zero_point, layer.y_scale, layer.y_zero_point)
        ]
    if isinstance(layer, QAdd):
        b = layer.b_const if layer.b_const is not None else env[layer.inputs[1]]
        return [
            golden.add(
                x,
                layer.a_scale,
                layer.a_zero_point,
                np.ascontiguousarray(b),
                layer.b_scale,
                layer.b_zero_point,
                layer.y_scale,
                layer.y_zero_point,
            )
        ]
    if isinstance(layer, QLut):
        return [golden.apply_lut(x, layer.lut)]
    if isinstance(layer, Quantize):
        return [golden.quantize(x, layer.scale, layer.zero_point)]
    if isinstance(layer, Dequantize):
        return [golden.dequantize(x, layer.scale, layer.zero_point)]
    if isinstance(layer, Layout):
        tin, tout = t[layer.inputs[0]], t[layer.outputs[0]]
        v = tin.to_onnx(x)
        if layer.op == "Transpose":
            v = v.transpose(layer.perm)
        else:  # Reshape, Flatten, Squeeze, Unsqueeze, Identity, Relayout: same elements, new shape
            v = v.reshape(tout.onnx_shape)
        return [tout.to_device(v)]
    if isinstance(layer, CpuOp):
        raise ValueError(
            f"layer {layer.name!r} ({layer.op}) runs on the CPU; evaluate the graph through "
            "jacquard.host.partition.run_reference instead"
        )
    raise TypeError(f"unknown layer type {type(layer).__name__} ({layer.name!r})")


def evaluate(graph: Graph, inputs: dict[str, np.ndarray], *, keep: bool = False) -> dict[str, np.ndarray]:
    """Run ``graph`` with the golden ops.

    Parameters
    ----------
    graph : Graph
        A graph with no :class:`CpuOp` layers (a partition's accelerator segment, for example).
    inputs : dict of str to ndarray
        Every name in ``graph.inputs``, as device arrays (``Tensor.to_device`` of the ONNX value) of
        the tensor's dtype.
    keep : bool
        Return every tensor computed, not only ``graph.outputs``.

    Returns
    -------
    dict of str to ndarray
        Device arrays.

    Raises
    ------
    ValueError
        If an input is missing or has the wrong shape or dtype, or the graph holds a :class:`CpuOp`.
    """
    env: dict[str, np.ndarray] = {}
    for name in graph.inputs:
        if name not in inputs:
            raise ValueError(f"inputs has no value for graph input {name!r}")
        tensor = graph.tensors[name]
        value = np.asarray(inputs[name])
        if value.shape != tensor.shape or value.dtype != tensor.np_dtype:
            raise ValueError(
                f"input {name!r} must be {tensor.dtype} of device shape {tensor.shape}, "
                f"not {value.dtype} of shape {value.shape}"
            )
        env[name] = value
    for layer in graph.layers:
        for name, value in zip(layer.outputs, _eval_layer(layer, graph, env), strict=True):
            env[name] = value
    if keep:
        return env
    return {name: env[name] for name in graph.outputs}
