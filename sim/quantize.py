"""Build int8 x int8 QOperator ONNX models and run them in onnxruntime: the golden model's oracle.

Two uses: the tests build one-op models (QLinearConv, QLinearMatMul, MatMulInteger, MaxPool,
QLinearAveragePool, QLinearAdd, QLinearGlobalAveragePool, DequantizeLinear -> op -> QuantizeLinear) to
prove the golden ops bit-exact, and the host importer quantizes float models with
:func:`quantize_float_model` (onnxruntime's ``quantize_static``, QOperator, int8 activations and
weights, per-channel weights).

Builders take ONNX's conventions (NCHW activations, OIHW weights); :func:`nhwc_to_nchw` and
:func:`nchw_to_nhwc` convert from and to the golden model's NHWC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OPSET",
    "lut_from_onnxruntime",
    "make_model",
    "matmul_integer",
    "max_pool",
    "nchw_to_nhwc",
    "nhwc_to_nchw",
    "qdq_unary",
    "qlinear_add",
    "qlinear_average_pool",
    "qlinear_conv",
    "qlinear_global_average_pool",
    "qlinear_matmul",
    "quantize_float_model",
    "run",
    "session",
]

OPSET = 13
_MS = "com.microsoft"
_I8, _I32, _F = TensorProto.INT8, TensorProto.INT32, TensorProto.FLOAT


def nhwc_to_nchw(x: np.ndarray) -> np.ndarray:
    """Transpose an NHWC array to NCHW (contiguous)."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def nchw_to_nhwc(x: np.ndarray) -> np.ndarray:
    """Transpose an NCHW array to NHWC (contiguous)."""
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def _out(name: str, elem_type: int, rank: int) -> onnx.ValueInfoProto:
    """A graph output of known rank and unknown dimensions (onnxruntime infers them)."""
    return helper.make_tensor_value_info(name, elem_type, [None] * rank)


def _scalar(name: str, value, dtype) -> TensorProto:
    return numpy_helper.from_array(np.asarray(value, dtype=dtype), name)


def make_model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
               outputs: Sequence[onnx.ValueInfoProto], initializers: Sequence[TensorProto] = (),
               name: str = "jacquard") -> onnx.ModelProto:
    """Wrap nodes in a checked model importing ONNX opset :data:`OPSET` and com.microsoft 1."""
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET),
                                                    helper.make_opsetid(_MS, 1)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def session(model: onnx.ModelProto | str | Path):
    """An onnxruntime CPU session with default (full) graph optimizations, as users get it."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` once on ``feeds`` and return all its outputs."""
    return session(model).run(None, dict(feeds))


def _clamp_nodes(y: str, lo: int | None, hi: int | None, out: str, inits: list) -> list:
    """int8 Max/Min after an op: the ONNX spelling of a fused ReLU/ReLU6 clamp."""
    nodes, cur = [], y
    for op, bound in (("Max", lo), ("Min", hi)):
        if bound is None:
            continue
        nxt = f"{cur}_{op.lower()}"
        inits.append(_scalar(f"{op.lower()}_bound", bound, np.int8))
        nodes.append(helper.make_node(op, [cur, f"{op.lower()}_bound"], [nxt]))
        cur = nxt
    nodes.append(helper.make_node("Identity", [cur], [out]))
    return nodes


def qlinear_conv(x_shape: Sequence[int], x_scale: float, x_zero_point: int, w: np.ndarray,
                 w_scale: float | np.ndarray, y_scale: float, y_zero_point: int,
                 bias: np.ndarray | None = None, *, strides=(1, 1), pads=(0, 0, 0, 0), group: int = 1,
                 lo: int | None = None, hi: int | None = None) -> onnx.ModelProto:
    """One int8 x int8 QLinearConv (NCHW input ``x``, OIHW weights), optionally clamped by Max/Min.

    ``w_scale`` is a scalar (per tensor) or ``(Cout,)`` (per channel); weight zero points are 0.
    ``pads`` is ONNX's (top, left, bottom, right). Output ``y`` is int8 NCHW.
    """
    w_scale = np.asarray(w_scale, dtype=np.float32)
    inits = [
        _scalar("x_scale", x_scale, np.float32), _scalar("x_zp", x_zero_point, np.int8),
        numpy_helper.from_array(w.astype(np.int8), "w"), numpy_helper.from_array(w_scale, "w_scale"),
        numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "w_zp"),
        _scalar("y_scale", y_scale, np.float32), _scalar("y_zp", y_zero_point, np.int8),
    ]
    names = ["x", "x_scale", "x_zp", "w", "w_scale", "w_zp", "y_scale", "y_zp"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.int32), "bias"))
        names.append("bias")
    conv = helper.make_node("QLinearConv", names, ["conv"], strides=list(strides), pads=list(pads),
                            group=group, kernel_shape=list(w.shape[2:]))
    nodes = [conv, *_clamp_nodes("conv", lo, hi, "y", inits)]
    return make_model(nodes, [helper.make_tensor_value_info("x", _I8, list(x_shape))],
                      [_out("y", _I8, len(x_shape))], inits)


def qlinear_matmul(a_shape: Sequence[int], a_scale: float, a_zero_point: int, b: np.ndarray,
                   b_scale: float, y_scale: float, y_zero_point: int) -> onnx.ModelProto:
    """One int8 x int8 QLinearMatMul ``y = a @ b`` with a constant int8 ``b (K, M)``, zero point 0."""
    inits = [
        _scalar("a_scale", a_scale, np.float32), _scalar("a_zp", a_zero_point, np.int8),
        numpy_helper.from_array(b.astype(np.int8), "b"), _scalar("b_scale", b_scale, np.float32),
        _scalar("b_zp", 0, np.int8), _scalar("y_scale", y_scale, np.float32),
        _scalar("y_zp", y_zero_point, np.int8),
    ]
    node = helper.make_node("QLinearMatMul", ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp", "y_scale",
                                              "y_zp"], ["y"])
    return make_model([node], [helper.make_tensor_value_info("a", _I8, list(a_shape))],
                      [_out("y", _I8, len(a_shape))], inits)


def matmul_integer(a_shape: Sequence[int], a_zero_point: int, b: np.ndarray,
                   bias: np.ndarray | None = None) -> onnx.ModelProto:
    """MatMulInteger ``y = (a - a_zp) @ b`` (int32), plus an int32 ``bias`` when given."""
    inits = [_scalar("a_zp", a_zero_point, np.int8), numpy_helper.from_array(b.astype(np.int8), "b")]
    nodes = [helper.make_node("MatMulInteger", ["a", "b", "a_zp"], ["mm" if bias is not None else "y"])]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.int32), "bias"))
        nodes.append(helper.make_node("Add", ["mm", "bias"], ["y"]))
    return make_model(nodes, [helper.make_tensor_value_info("a", _I8, list(a_shape))],
                      [_out("y", _I32, len(a_shape))], inits)


def max_pool(x_shape: Sequence[int], kernel, strides, pads=(0, 0, 0, 0),
             ceil_mode: bool = False) -> onnx.ModelProto:
    """One int8 MaxPool (NCHW)."""
    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=list(kernel), strides=list(strides),
                            pads=list(pads), ceil_mode=int(ceil_mode))
    return make_model([node], [helper.make_tensor_value_info("x", _I8, list(x_shape))],
                      [_out("y", _I8, len(x_shape))])


def _qparams(prefix_scales: Iterable[tuple[str, float, int]]) -> tuple[list[str], list[TensorProto]]:
    names, inits = [], []
    for prefix, scale, zp in prefix_scales:
        names += [f"{prefix}_scale", f"{prefix}_zp"]
        inits += [_scalar(f"{prefix}_scale", scale, np.float32), _scalar(f"{prefix}_zp", zp, np.int8)]
    return names, inits


def qlinear_average_pool(x_shape: Sequence[int], x_scale: float, x_zero_point: int, y_scale: float,
                         y_zero_point: int, kernel, strides, pads=(0, 0, 0, 0), ceil_mode: bool = False,
                         count_include_pad: bool = False) -> onnx.ModelProto:
    """One int8 QLinearAveragePool (com.microsoft, NCHW)."""
    names, inits = _qparams([("x", x_scale, x_zero_point), ("y", y_scale, y_zero_point)])
    node = helper.make_node("QLinearAveragePool", ["x", *names], ["y"], domain=_MS,
                            kernel_shape=list(kernel), strides=list(strides), pads=list(pads),
                            ceil_mode=int(ceil_mode), count_include_pad=int(count_include_pad))
    return make_model([node], [helper.make_tensor_value_info("x", _I8, list(x_shape))],
                      [_out("y", _I8, len(x_shape))], inits)


def qlinear_global_average_pool(x_shape: Sequence[int], x_scale: float, x_zero_point: int,
                                y_scale: float, y_zero_point: int) -> onnx.ModelProto:
    """One int8 QLinearGlobalAveragePool (com.microsoft, NCHW)."""
    names, inits = _qparams([("x", x_scale, x_zero_point), ("y", y_scale, y_zero_point)])
    node = helper.make_node("QLinearGlobalAveragePool", ["x", *names], ["y"], domain=_MS, channels_last=0)
    return make_model([node], [helper.make_tensor_value_info("x", _I8, list(x_shape))],
                      [_out("y", _I8, len(x_shape))], inits)


def qlinear_add(shape: Sequence[int], a_scale: float, a_zero_point: int, b_scale: float,
                b_zero_point: int, y_scale: float, y_zero_point: int) -> onnx.ModelProto:
    """One int8 QLinearAdd (com.microsoft) of two inputs ``a`` and ``b`` of the same shape."""
    inits = [_scalar("a_scale", a_scale, np.float32), _scalar("a_zp", a_zero_point, np.int8),
             _scalar("b_scale", b_scale, np.float32), _scalar("b_zp", b_zero_point, np.int8),
             _scalar("y_scale", y_scale, np.float32), _scalar("y_zp", y_zero_point, np.int8)]
    node = helper.make_node("QLinearAdd", ["a", "a_scale", "a_zp", "b", "b_scale", "b_zp", "y_scale",
                                           "y_zp"], ["y"], domain=_MS)
    return make_model([node], [helper.make_tensor_value_info("a", _I8, list(shape)),
                               helper.make_tensor_value_info("b", _I8, list(shape))],
                      [_out("y", _I8, len(shape))], inits)


def qdq_unary(op_type: str, x_shape: Sequence[int], x_scale: float, x_zero_point: int, y_scale: float,
              y_zero_point: int, extra_inputs: Mapping[str, np.ndarray] | None = None,
              **attrs) -> onnx.ModelProto:
    """DequantizeLinear -> ``op_type`` -> QuantizeLinear on int8: how onnxruntime runs a float op
    (PRelu, Sigmoid, ...) inside a quantized model. ``extra_inputs`` are constant float inputs
    (e.g. PRelu's ``slope``), appended after the dequantized ``x``."""
    _, inits = _qparams([("x", x_scale, x_zero_point), ("y", y_scale, y_zero_point)])
    extra = dict(extra_inputs or {})
    inits += [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in extra.items()]
    nodes = [helper.make_node("DequantizeLinear", ["x", "x_scale", "x_zp"], ["xf"]),
             helper.make_node(op_type, ["xf", *extra], ["yf"], **attrs),
             helper.make_node("QuantizeLinear", ["yf", "y_scale", "y_zp"], ["y"])]
    return make_model(nodes, [helper.make_tensor_value_info("x", _I8, list(x_shape))],
                      [_out("y", _I8, len(x_shape))], inits)


def lut_from_onnxruntime(op_type: str, x_scale: float, x_zero_point: int, y_scale: float,
                         y_zero_point: int, channels: int | None = None,
                         extra_inputs: Mapping[str, np.ndarray] | None = None, **attrs) -> np.ndarray:
    """Tabulate onnxruntime's own DQ -> ``op_type`` -> Q on all 256 int8 inputs.

    The table is exact by construction: it is onnxruntime's output. With ``channels`` the input is NCHW
    ``(1, C, 256, 1)`` (per-channel parameters such as PRelu's slope of shape ``(C, 1, 1)``) and the
    result is ``(C, 256)``; otherwise it is ``(256,)``.
    """
    values = np.arange(-128, 128, dtype=np.int8)
    if channels is None:
        x = values
    else:
        x = np.ascontiguousarray(np.broadcast_to(values[None, None, :, None], (1, channels, 256, 1)))
    model = qdq_unary(op_type, x.shape, x_scale, x_zero_point, y_scale, y_zero_point, extra_inputs, **attrs)
    (y,) = run(model, {"x": x})
    return y if channels is None else y[0, :, :, 0]


def quantize_float_model(model_path: str | Path, calibration: Iterable[Mapping[str, np.ndarray]],
                         out_path: str | Path, *, per_channel: bool = True,
                         reduce_range: bool = False) -> Path:
    """Quantize a float ONNX model to int8 x int8 QOperator with onnxruntime's ``quantize_static``.

    Activations and weights are QInt8 (the portable oracle, see ``docs/CONFORMANCE.md``), weights
    per output channel when ``per_channel``. ``calibration`` yields input feeds; the MinMax ranges
    over them set the activation scales. ``reduce_range`` (7-bit weights) only matters for uint8
    models run on CPUs without VNNI and is off for int8 x int8.

    Returns
    -------
    Path
        ``out_path``.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class _Reader(CalibrationDataReader):
        def __init__(self, feeds):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    out_path = Path(out_path)
    quantize_static(str(model_path), str(out_path), _Reader([dict(f) for f in calibration]),
                    quant_format=QuantFormat.QOperator, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=per_channel, reduce_range=reduce_range)
    return out_path
