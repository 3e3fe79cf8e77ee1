"""ONNX import: from an ONNX file to the quantized IR (:mod:`jacquard.host.ir`).

Three kinds of model are accepted, and all end up as one int8 QOperator ONNX model (the model that
onnxruntime is the reference for) plus its IR graph:

- **int8 QOperator** models (QLinearConv, QLinearMatMul, MatMulInteger, MaxPool, QLinearAveragePool,
  QLinearGlobalAveragePool, QLinearAdd, QLinearLeakyRelu, QLinearSigmoid, Relu/Clip on int8, and
  Transpose/Reshape/Flatten as layout) are read as they are.
- **QDQ** models are first optimized by onnxruntime itself (``ORT_ENABLE_EXTENDED``, saved), which
  folds ``DequantizeLinear -> op -> QuantizeLinear`` into the same QLinear ops exactly as an
  onnxruntime session does, so the result computes what onnxruntime computes.
- **float** models are quantized with ``onnxruntime.quantization.quantize_static`` (int8 activations,
  int8 per-channel weights, QOperator), given a calibration array.

A float island ``DequantizeLinear -> element-wise ops (PRelu, Sigmoid, ...) -> QuantizeLinear``, with
MaxPool and layout ops allowed before or after the element-wise ops, becomes int8 MaxPool/layout
layers and one lookup table (tabulated by running onnxruntime on all 256 inputs, so it is exact by
construction; MaxPool commutes with the monotonic quantization). Every other node becomes an
:class:`~jacquard.host.ir.CpuOp` that the partitioner runs in onnxruntime: a model is never refused
because part of it is unsupported.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from . import ir
from .errors import ModelError, ShapeError

__all__ = ["ImportedModel", "load_model", "quantize_float_model"]

_F32 = np.float32
_ONNX_DTYPES = {
    TensorProto.FLOAT: "float32",
    TensorProto.INT8: "int8",
    TensorProto.INT32: "int32",
    TensorProto.UINT8: "uint8",
    TensorProto.INT64: "int64",
}
# Element-wise float ops a lookup table replaces (their other inputs must be constants).
_ELEMENTWISE = {
    "PRelu",
    "LeakyRelu",
    "Relu",
    "Clip",
    "Sigmoid",
    "HardSigmoid",
    "HardSwish",
    "Tanh",
    "Elu",
    "Selu",
    "Softplus",
    "Neg",
    "Abs",
    "Mul",
    "Add",
    "Sub",
    "Div",
    "Identity",
}
# Ops that commute with a monotonic per-tensor (de)quantization, so they can run on the int8 values.
_COMMUTING = {"MaxPool", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}
_LAYOUT = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity"}
_SPATIAL = (ir.QConv, ir.QMaxPool, ir.QAvgPool, ir.QGlobalAvgPool)


@dataclass
class ImportedModel:
    """An imported model: the int8 ONNX model onnxruntime is the reference for, and its IR.

    Members
    -------
    model : onnx.ModelProto
        The int8 QOperator model with static shapes (for a float model, its quantization; for a QDQ
        model, onnxruntime's own folding of it).
    graph : ir.Graph
        The IR; its inputs and outputs are the model's, by name.
    kind : str
        ``"qoperator"``, ``"qdq"`` or ``"float"``: what the file was.
    input_shapes, output_shapes : dict of str to tuple of int
        Static ONNX shapes of the model's inputs and outputs.
    input_dtypes, output_dtypes : dict of str to numpy dtype
    """

    model: onnx.ModelProto
    graph: ir.Graph
    kind: str
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    input_dtypes: dict[str, np.dtype] = field(default_factory=dict)
    output_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    output_dtypes: dict[str, np.dtype] = field(default_factory=dict)

    def check_inputs(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Return ``inputs`` as arrays if every model input is there with its shape and dtype.

        Raises
        ------
        ShapeError
            On a missing input, or one of the wrong shape or dtype, naming what the model expects.
        """
        out = {}
        for name, shape in self.input_shapes.items():
            if name not in inputs:
                raise ShapeError(
                    f"input {name!r} is missing; the model's inputs are "
                    f"{list(self.input_shapes)} (pass a dict keyed by those names)"
                )
            value = np.asarray(inputs[name])
            want = self.input_dtypes[name]
            if value.dtype != want:
                raise ShapeError(
                    f"input {name!r} must have dtype {want}, not {value.dtype}; convert it with "
                    f".astype(np.{want.name})"
                )
            if value.shape != shape:
                raise ShapeError(
                    f"input {name!r} must have shape {shape}, not {value.shape}; resize the input "
                    "or import the model again with input_shapes="
                    f"{{{name!r}: {value.shape}}}"
                )
            out[name] = value
        return out


# -- loading and static shapes ----------------------------------------------------------------------


def _read(model) -> onnx.ModelProto:
    if isinstance(model, onnx.ModelProto):
        return model
    if isinstance(model, str | os.PathLike):
        try:
            data = Path(model).read_bytes()
        except OSError as exc:
            raise ModelError(
                f"cannot read the model file {str(model)!r}: {exc.strerror}; check the path"
            ) from exc
        where = f"the file {str(model)!r}"
    elif isinstance(model, bytes | bytearray | memoryview):
        data, where = bytes(model), "the given bytes"
    else:
        raise TypeError(f"model must be a path, bytes or an onnx.ModelProto, not {type(model).__name__}")
    try:
        proto = onnx.load_model_from_string(data)
    except Exception as exc:  # protobuf raises DecodeError (and sometimes others) on garbage
        raise ModelError(
            f"{where} is not an ONNX model (protobuf could not parse it: {exc}); export the "
            "model to ONNX again or check that the file is complete"
        ) from exc
    if not proto.graph.node or not proto.opset_import:
        raise ModelError(
            f"{where} is not an ONNX model (it parsed, but holds no graph nodes or opset); "
            "export the model to ONNX again or check that the file is complete"
        )
    return proto


def _initializer_names(model: onnx.ModelProto) -> set[str]:
    return {i.name for i in model.graph.initializer}


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = _initializer_names(model)
    return [i for i in model.graph.input if i.name not in inits]


def _fix_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, tuple[int, ...]] | None
) -> onnx.ModelProto:
    """Give every graph input a static shape and infer all the others."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    given = dict(input_shapes or {})
    inputs = _graph_inputs(model)
    unknown = set(given) - {i.name for i in inputs}
    if unknown:
        raise ShapeError(
            f"input_shapes names {sorted(unknown)}, which are not inputs of the model; its inputs "
            f"are {[i.name for i in inputs]}"
        )
    for inp in inputs:
        dims = inp.type.tensor_type.shape.dim
        declared = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims)
        if inp.name in given:
            shape = tuple(int(s) for s in given[inp.name])
            if len(shape) != len(dims) or any(s < 1 for s in shape):
                raise ShapeError(
                    f"input_shapes[{inp.name!r}] = {shape} does not fit the declared shape "
                    f"{declared}; give one positive size per axis"
                )
            for d, decl, s in zip(dims, declared, shape, strict=True):
                if isinstance(decl, int) and decl > 0 and decl != s:
                    raise ShapeError(
                        f"input_shapes[{inp.name!r}] = {shape} contradicts the static shape "
                        f"{declared}; leave that input out of input_shapes"
                    )
                d.Clear()
                d.dim_value = s
        elif not all(isinstance(s, int) and s > 0 for s in declared):
            raise ShapeError(
                f"input {inp.name!r} has the dynamic shape {declared}; pass input_shapes="
                f"{{{inp.name!r}: (...)}} with a size for every axis, e.g. batch 1"
            )
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError / ValidationError subclasses
        raise ShapeError(
            f"shape inference failed with the given input shapes ({exc}); check input_shapes"
        ) from exc


def _fold_constants(model: onnx.ModelProto) -> None:
    """Turn Constant nodes into initializers, so every constant operand is an initializer."""
    keep = []
    for node in model.graph.node:
        if (
            node.op_type == "Constant"
            and node.domain in ("", "ai.onnx")
            and len(node.attribute) == 1
            and node.attribute[0].name == "value"
        ):
            t = onnx.TensorProto()
            t.CopyFrom(node.attribute[0].t)
            t.name = node.output[0]
            model.graph.initializer.append(t)
        else:
            keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)


def _name_nodes(model: onnx.ModelProto) -> None:
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def _tensor_types(model: onnx.ModelProto) -> dict[str, tuple[tuple[int, ...], int]]:
    """Shape and element type of every tensor; what ONNX shape inference leaves open (contrib ops)
    is measured by running onnxruntime once on zeros."""
    types: dict[str, tuple[tuple[int, ...], int]] = {}
    for vi in [*model.graph.input, *model.graph.value_info, *model.graph.output]:
        tt = vi.type.tensor_type
        if tt.HasField("shape") and all(d.HasField("dim_value") for d in tt.shape.dim):
            types[vi.name] = (tuple(d.dim_value for d in tt.shape.dim), tt.elem_type)
    for init in model.graph.initializer:
        types[init.name] = (tuple(init.dims), init.data_type)
    missing = [o for n in model.graph.node for o in n.output if o and o not in types]
    if missing:
        import onnxruntime as ort

        probe = onnx.ModelProto.FromString(model.SerializeToString())
        probe.graph.output.extend([onnx.ValueInfoProto(name=n) for n in missing])
        sess = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        feeds = {}
        for inp in sess.get_inputs():
            shape, elem = types[inp.name]
            feeds[inp.name] = np.zeros(shape, dtype=helper.tensor_dtype_to_np_dtype(elem))
        values = sess.run(missing, feeds)
        for n, v in zip(missing, values, strict=True):
            types[n] = (tuple(v.shape), helper.np_dtype_to_tensor_dtype(v.dtype))
    return types


# -- model kinds ------------------------------------------------------------------------------------


def _kind(model: onnx.ModelProto) -> str:
    ops = {n.op_type for n in model.graph.node}
    if any(op.startswith("QLinear") or op in ("MatMulInteger", "ConvInteger") for op in ops):
        return "qoperator"
    if "DequantizeLinear" in ops:
        return "qdq"
    return "float"


class _ArrayReader:
    """An onnxruntime CalibrationDataReader over a calibration array (first axis = samples)."""

    def __init__(self, name: str, data: np.ndarray, batch: int):
        self._batches = [data[i : i + batch] for i in range(0, len(data) - batch + 1, batch)]
        self._name = name

    def get_next(self):
        return {self._name: self._batches.pop(0)} if self._batches else None


def quantize_float_model(
    model: onnx.ModelProto, calibrate: np.ndarray, *, fmt: str = "qoperator", per_channel: bool = True
) -> onnx.ModelProto:
    """Quantize a float model with onnxruntime's static quantization: int8 activations and weights.

    Parameters
    ----------
    model : onnx.ModelProto
        A float model with static input shapes and exactly one input.
    calibrate : ndarray
        Calibration samples, stacked along the batch axis: ``(k * batch, ...)`` where ``batch`` is the
        model input's first dimension.
    fmt : str
        ``"qoperator"`` (QLinear ops, the default) or ``"qdq"``.
    per_channel : bool
        Per-output-channel weight scales.

    Returns
    -------
    onnx.ModelProto

    Raises
    ------
    ModelError
        If the model has several inputs, or the calibration array does not fit its input.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    if fmt not in ("qoperator", "qdq"):
        raise ValueError(f"fmt must be 'qoperator' or 'qdq', not {fmt!r}")
    inputs = _graph_inputs(model)
    if len(inputs) != 1:
        raise ModelError(
            f"calibration works on models with one input, this one has "
            f"{[i.name for i in inputs]}; quantize it yourself and import the int8 model"
        )
    inp = inputs[0]
    shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
    data = np.asarray(calibrate)
    if data.dtype != np.float32 or data.shape[1:] != shape[1:] or len(data) < shape[0]:
        raise ModelError(
            f"calibrate must be float32 of shape (k * {shape[0]}, {', '.join(map(str, shape[1:]))}) "
            f"for input {inp.name!r}, not {data.dtype} of shape {data.shape}"
        )
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "int8.onnx")
        onnx.save(model, src)
        if fmt == "qoperator":
            from jacquard.sim.quantize import quantize_float_model as sim_quantize

            batches = _ArrayReader(inp.name, data, shape[0])._batches
            sim_quantize(src, [{inp.name: b} for b in batches], dst, per_channel=per_channel)
        else:
            quantize_static(
                src,
                dst,
                _ArrayReader(inp.name, data, shape[0]),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                per_channel=per_channel,
            )
        return onnx.load(dst)


def _ort_fold_qdq(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's own QDQ folding (``ORT_ENABLE_EXTENDED``), saved as a model."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "folded.onnx")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        opts.optimized_model_filepath = path
        # The session's own options, so the folding is what onnxruntime runs. On x86 it rewrites int8
        # activations to uint8 (zero point + 128): the same integers, held as int8 in the IR. Its u8 x s8
        # kernels equal int8 x int8 on CPUs with VNNI; without VNNI they can saturate (the uint8 caveat
        # of docs/CONFORMANCE.md).
        ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        return onnx.load(path)


# -- node conversion --------------------------------------------------------------------------------


def _scales(xq: tuple[float, int], yq: tuple[float, int]) -> dict:
    """The ``x_scale``/``x_zero_point``/``y_scale``/``y_zero_point`` fields of a quantized IR layer."""
    return {"x_scale": xq[0], "x_zero_point": xq[1], "y_scale": yq[0], "y_zero_point": yq[1]}


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _explicit_pads(
    attrs: dict, in_hw: tuple[int, int], kernel: tuple[int, int], stride: tuple[int, int]
) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from ONNX ``pads`` or ``auto_pad``."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("NOTSET", "VALID"):
        p = list(attrs.get("pads", [0, 0, 0, 0])) if auto == "NOTSET" else [0, 0, 0, 0]
        return int(p[0]), int(p[1]), int(p[2]), int(p[3])
    begin, end = [], []
    for size, k, s in zip(in_hw, kernel, stride, strict=True):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin[0], begin[1], end[0], end[1]


class _Converter:
    """Turns the nodes of one static-shape model into IR layers (see :func:`load_model`)."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.types = _tensor_types(model)
        self.nodes = list(model.graph.node)
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)
        self.graph_outputs = {o.name for o in model.graph.output}
        self.graph = ir.Graph(
            inputs=[i.name for i in _graph_inputs(model)], outputs=[o.name for o in model.graph.output]
        )
        self.quant: dict[str, tuple[float, int]] = {}

    # -- helpers

    def shape(self, name: str) -> tuple[int, ...]:
        return self.types[name][0]

    def onnx_dtype(self, name: str) -> str:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.types[name][1])).name

    def dtype(self, name: str) -> str:
        """The IR dtype: uint8 activations are held as int8 (see :class:`ir.Tensor`)."""
        raw = self.onnx_dtype(name)
        return "int8" if raw == "uint8" else raw

    def const(self, name: str) -> np.ndarray | None:
        return self.inits.get(name) if name else None

    def scalar_q(self, scale_name: str, zp_name: str | None) -> tuple[float, int] | None:
        """(scale, zero point) of a per-tensor int8 quantization given by constants, else None."""
        s = self.const(scale_name)
        z = self.const(zp_name) if zp_name else np.int8(0)
        if s is None or z is None or s.size != 1 or z.size != 1 or z.dtype not in (np.int8, np.uint8):
            return None
        s = _F32(s.reshape(()))
        if not np.isfinite(s) or s <= 0:
            return None
        return float(s), int(z.reshape(())) - (128 if z.dtype == np.uint8 else 0)

    def unary_q(self, node: onnx.NodeProto) -> tuple[tuple[float, int] | None, tuple[float, int] | None]:
        """(x, y) quantization of a one-operand QLinear op: inputs x, x_scale, x_zp, y_scale, y_zp."""
        return self.scalar_q(node.input[1], node.input[2]), self.scalar_q(node.input[3], node.input[4])

    def add_tensor(
        self, name: str, dtype: str, q: tuple[float, int] | None = None, shape: tuple[int, ...] | None = None
    ) -> None:
        if name in self.graph.tensors:
            return
        scale, zp = q if q is not None else (None, None)
        raw = self.onnx_dtype(name) if name in self.types else dtype
        self.graph.tensors[name] = ir.Tensor(
            name, shape if shape is not None else self.shape(name), dtype, scale, zp, onnx_dtype=raw
        )

    def cpu(self, node: onnx.NodeProto, reason: str) -> None:
        for name in node.input:
            if name and name not in self.inits:
                self.add_tensor(name, self.dtype(name), self.quant.get(name))
        for name in node.output:
            if name:
                self.add_tensor(name, self.dtype(name))
        ins = tuple(i for i in node.input if i and i not in self.inits)
        self.graph.layers.append(
            ir.CpuOp(
                node.name,
                ins,
                tuple(o for o in node.output if o),
                (node.name,),
                op=node.op_type,
                reason=reason,
                macs=self.node_macs(node),
            )
        )

    def node_macs(self, node: onnx.NodeProto) -> int:
        """MACs of a convolution or matrix product left on the CPU (for the report)."""
        w_at = {
            "Conv": 1,
            "ConvInteger": 1,
            "QLinearConv": 3,
            "MatMul": 1,
            "MatMulInteger": 1,
            "QLinearMatMul": 3,
            "Gemm": 1,
        }.get(node.op_type)
        if (
            w_at is None
            or len(node.input) <= w_at
            or node.input[w_at] not in self.types
            or node.output[0] not in self.types
        ):
            return 0
        out, w = self.shape(node.output[0]), self.shape(node.input[w_at])
        if "Conv" in node.op_type:
            return int(np.prod(out) * np.prod(w[1:]))
        k = w[1] if node.op_type == "Gemm" and _attrs(node).get("transB", 0) else w[0]
        return int(np.prod(out) * k)

    def emit(
        self,
        layer: ir.Layer,
        out_q: tuple[float, int] | None,
        out_dtype: str = "int8",
        shape: tuple[int, ...] | None = None,
    ) -> None:
        for name in layer.inputs:
            if name not in self.graph.tensors:
                self.add_tensor(name, self.dtype(name), self.quant.get(name))
        for name in layer.outputs:
            if out_q is not None:
                self.quant[name] = out_q
            self.add_tensor(name, out_dtype, out_q, shape)
        self.graph.layers.append(layer)

    # -- the walk

    def run(self) -> ir.Graph:
        done: set[str] = set()
        for name in self.graph.inputs:
            self.add_tensor(name, self.dtype(name))
        for node in self.nodes:
            if node.name in done:
                continue
            if node.op_type == "DequantizeLinear":
                island = self.island(node)
                if island is not None:
                    done.update(n.name for n in island)
                    self.convert_island(island)
                    continue
            self.convert(node)
            done.add(node.name)
        return self.graph

    def convert(self, node: onnx.NodeProto) -> None:
        if all(i in self.inits for i in node.input if i):
            # A constant computation (e.g. a dequantized bias): onnxruntime computes it with its users.
            self.cpu(node, "constant")
            return
        domain_ok = node.domain in ("", "ai.onnx", "com.microsoft")
        handler = getattr(self, f"op_{node.op_type}", None)
        if not domain_ok or handler is None:
            self.cpu(node, "not an accelerator op")
            return
        reason = handler(node)
        if reason is not None:
            self.cpu(node, reason)

    # -- QOperator ops (each returns None when converted, else why it stays on the CPU)

    def op_QuantizeLinear(self, node):
        q = self.scalar_q(node.input[1], node.input[2] if len(node.input) > 2 else None)
        if q is None or self.dtype(node.input[0]) != "float32":
            return "not a per-tensor float -> int8 quantization"
        self.emit(
            ir.Quantize(
                node.name, (node.input[0],), (node.output[0],), (node.name,), scale=q[0], zero_point=q[1]
            ),
            q,
        )
        return None

    def op_DequantizeLinear(self, node):
        q = self.scalar_q(node.input[1], node.input[2] if len(node.input) > 2 else None)
        if q is None or self.dtype(node.input[0]) != "int8":
            return "not a per-tensor int8 -> float dequantization"
        self.quant.setdefault(node.input[0], q)
        self.emit(
            ir.Dequantize(
                node.name, (node.input[0],), (node.output[0],), (node.name,), scale=q[0], zero_point=q[1]
            ),
            None,
            "float32",
        )
        return None

    def _weights(self, w_name, ws_name, wz_name, cout_axis):
        w, ws, wz = self.const(w_name), self.const(ws_name), self.const(wz_name)
        if w is None or ws is None or w.dtype != np.int8:
            return None, "weights are not int8 constants"
        if wz is not None and (wz.dtype != np.int8 or np.any(wz != 0)):
            return None, "weight zero point is not 0 (asymmetric weights)"
        cout = w.shape[cout_axis]
        ws = ws.astype(_F32).reshape(-1)
        if ws.size not in (1, cout) or not np.all(np.isfinite(ws)) or not np.all(ws > 0):
            return None, "weight scale is neither per tensor nor per output channel"
        return (w, np.broadcast_to(ws, (cout,)).astype(_F32)), None

    def op_QLinearConv(self, node):
        x, y = node.input[0], node.output[0]
        xq = self.scalar_q(node.input[1], node.input[2])
        yq = self.scalar_q(node.input[6], node.input[7])
        if xq is None or yq is None or self.dtype(x) != "int8":
            return "activations are not per-tensor int8"
        got, why = self._weights(node.input[3], node.input[4], node.input[5], 0)
        if why:
            return why
        w, ws = got
        if w.ndim != 4:
            return f"{w.ndim - 2}-D convolution"
        a = _attrs(node)
        if any(d != 1 for d in a.get("dilations", [1, 1])):
            return f"dilations {a['dilations']}"
        cout, cin_g, kh, kw = w.shape
        c = self.shape(x)[1]
        groups = int(a.get("group", 1))
        if not (groups == 1 or (groups == c and cin_g == 1 and cout % c == 0)):
            return f"grouped convolution (group={groups}) that is neither dense nor depthwise"
        bias = (
            self.const(node.input[8]) if len(node.input) > 8 and node.input[8] else np.zeros(cout, np.int32)
        )
        if bias is None or bias.dtype != np.int32:
            return "bias is not an int32 constant"
        stride = tuple(int(s) for s in a.get("strides", [1, 1]))
        pads = _explicit_pads(a, self.shape(x)[2:], (kh, kw), stride)
        self.quant[x] = xq
        self.emit(
            ir.QConv(
                node.name,
                (x,),
                (y,),
                (node.name,),
                weight=np.ascontiguousarray(w.transpose(0, 2, 3, 1)),
                bias=bias.reshape(cout),
                w_scale=ws,
                **_scales(xq, yq),
                stride=stride,
                pads=pads,
                groups=groups,
            ),
            yq,
        )
        return None

    def _fc_input(self, x):
        if self.dtype(x) != "int8" or len(self.shape(x)) != 2:
            return f"input of shape {self.shape(x)} is not (N, K) int8"
        return None

    def op_QLinearMatMul(self, node):
        x, y = node.input[0], node.output[0]
        why = self._fc_input(x)
        if why:
            return why
        xq = self.scalar_q(node.input[1], node.input[2])
        yq = self.scalar_q(node.input[6], node.input[7])
        if xq is None or yq is None:
            return "activations are not per-tensor int8"
        got, why = self._weights(node.input[3], node.input[4], node.input[5], 1)
        if why:
            return why
        w, ws = got
        if w.ndim != 2:
            return "weights are not 2-D"
        self.quant[x] = xq
        self.emit(
            ir.QFullyConnected(
                node.name,
                (x,),
                (y,),
                (node.name,),
                weight=np.ascontiguousarray(w.T),
                bias=np.zeros(w.shape[1], np.int32),
                w_scale=ws,
                **_scales(xq, yq),
            ),
            yq,
        )
        return None

    def op_MatMulInteger(self, node):
        x, y = node.input[0], node.output[0]
        why = self._fc_input(x)
        if why:
            return why
        w = self.const(node.input[1])
        zx = self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.int8(0)
        zw = self.const(node.input[3]) if len(node.input) > 3 and node.input[3] else np.int8(0)
        if w is None or w.dtype != np.int8 or w.ndim != 2:
            return "weights are not a 2-D int8 constant"
        if zx is None or zx.size != 1 or zx.dtype not in (np.int8, np.uint8):
            return "input zero point is not a per-tensor 8-bit constant"
        zx = np.int16(zx.reshape(())) - (128 if zx.dtype == np.uint8 else 0)
        if zw is None or np.any(zw != 0):
            return "weight zero point is not 0"
        self.emit(
            ir.QFullyConnected(
                node.name,
                (x,),
                (y,),
                (node.name,),
                weight=np.ascontiguousarray(w.T),
                bias=np.zeros(w.shape[1], np.int32),
                x_zero_point=int(zx),
                w_scale=np.ones(w.shape[1], _F32),
                requant=False,
            ),
            None,
            "int32",
        )
        return None

    def _pool_geometry(self, node, x):
        a = _attrs(node)
        kernel = tuple(int(k) for k in a["kernel_shape"])
        if len(kernel) != 2 or len(self.shape(x)) != 4:
            return None, "not a 2-D pool"
        if (
            any(d != 1 for d in a.get("dilations", [1, 1]))
            or a.get("storage_order", 0) != 0
            or a.get("channels_last", 0) != 0
        ):
            return None, "dilated, column-major or channels-last pool"
        stride = tuple(int(s) for s in a.get("strides", [1, 1]))
        pads = _explicit_pads(a, self.shape(x)[2:], kernel, stride)
        return (kernel, stride, pads, bool(a.get("ceil_mode", 0)), a), None

    def op_MaxPool(self, node):
        x = node.input[0]
        if self.dtype(x) != "int8" or len([o for o in node.output if o]) != 1:
            return "MaxPool on float (outside a quantized island) or with indices"
        geo, why = self._pool_geometry(node, x)
        if why:
            return why
        kernel, stride, pads, ceil_mode, _ = geo
        self.emit(
            ir.QMaxPool(
                node.name,
                (x,),
                (node.output[0],),
                (node.name,),
                params=ir.MaxPoolParams(kernel, stride, pads, ceil_mode),
            ),
            self.quant.get(x),
        )
        return None

    def op_QLinearAveragePool(self, node):
        x = node.input[0]
        xq, yq = self.unary_q(node)
        if xq is None or yq is None or self.dtype(x) != "int8":
            return "activations are not per-tensor int8"
        if self.onnx_dtype(x) == "uint8":
            # Measured: onnxruntime's uint8 kernel differs by one step from its int8 kernel (the golden op).
            return "uint8 average pool (onnxruntime's uint8 kernel is not the golden int8 one)"
        geo, why = self._pool_geometry(node, x)
        if why:
            return why
        kernel, stride, pads, ceil_mode, a = geo
        self.quant[x] = xq
        self.emit(
            ir.QAvgPool(
                node.name,
                (x,),
                (node.output[0],),
                (node.name,),
                kernel=kernel,
                stride=stride,
                pads=pads,
                ceil_mode=ceil_mode,
                count_include_pad=bool(a.get("count_include_pad", 0)),
                **_scales(xq, yq),
            ),
            yq,
        )
        return None

    def op_QLinearGlobalAveragePool(self, node):
        x = node.input[0]
        xq, yq = self.unary_q(node)
        if xq is None or yq is None or self.dtype(x) != "int8" or len(self.shape(x)) != 4:
            return "not a per-tensor int8 NCHW input"
        if _attrs(node).get("channels_last", 0):
            return "channels-last layout"
        self.quant[x] = xq
        self.emit(
            ir.QGlobalAvgPool(
                node.name,
                (x,),
                (node.output[0],),
                (node.name,),
                **_scales(xq, yq),
            ),
            yq,
        )
        return None

    def op_QLinearAdd(self, node):
        a, b, y = node.input[0], node.input[3], node.output[0]
        aq, bq = self.scalar_q(node.input[1], node.input[2]), self.scalar_q(node.input[4], node.input[5])
        yq = self.scalar_q(node.input[6], node.input[7])
        if aq is None or bq is None or yq is None or self.dtype(a) != "int8" or self.dtype(b) != "int8":
            return "operands are not per-tensor int8"
        bc = self.const(b)
        if self.shape(a) != self.shape(y):
            return "the first operand is broadcast"
        if bc is None and self.shape(b) != self.shape(a):
            return "broadcast between two computed tensors"
        if bc is not None and bc.size == 1:
            # onnxruntime folds a scalar operand into the constant term: another rounding.
            return "a scalar operand (onnxruntime's scalar path)"
        self.quant[a] = aq
        if bc is None:
            self.quant[b] = bq
        layer = ir.QAdd(
            node.name,
            (a,) if bc is not None else (a, b),
            (y,),
            (node.name,),
            a_scale=aq[0],
            a_zero_point=aq[1],
            b_scale=bq[0],
            b_zero_point=bq[1],
            y_scale=yq[0],
            y_zero_point=yq[1],
            b_const=None if bc is None else np.broadcast_to(bc, self.shape(a)).copy(),
        )
        self.emit(layer, yq)
        return None

    def _lut_node(self, node, x, xq, yq):
        lut = _tabulate(
            self.model,
            [node],
            x,
            node.output[0],
            self.shape(x),
            self.inits,
            (self.onnx_dtype(x) == "uint8", self.onnx_dtype(node.output[0]) == "uint8"),
        )
        if isinstance(lut, str):
            return lut
        self.quant.setdefault(x, xq)
        self.emit(ir.QLut(node.name, (x,), (node.output[0],), (node.name,), lut=lut), yq)
        return None

    def op_QLinearLeakyRelu(self, node):
        xq, yq = self.unary_q(node)
        if xq is None or yq is None or self.dtype(node.input[0]) != "int8":
            return "not per-tensor int8"
        return self._lut_node(node, node.input[0], xq, yq)

    op_QLinearSigmoid = op_QLinearLeakyRelu

    def op_Relu(self, node):
        x = node.input[0]
        if self.dtype(x) != "int8":
            return "float op outside a quantized island"
        return self._lut_node(node, x, self.quant.get(x), self.quant.get(x))

    op_Clip = op_Relu

    def _layout(self, node):
        x, y = node.input[0], node.output[0]
        if node.op_type == "Reshape" and self.const(node.input[1]) is None:
            return "Reshape to a computed shape"
        if (
            node.op_type in ("Squeeze", "Unsqueeze")
            and len(node.input) > 1
            and self.const(node.input[1]) is None
        ):
            return f"{node.op_type} over computed axes"
        perm = (
            tuple(int(p) for p in _attrs(node).get("perm", range(len(self.shape(x)))[::-1]))
            if node.op_type == "Transpose"
            else ()
        )
        q = self.quant.get(x)
        self.emit(
            ir.Layout(node.name, (x,), (y,), (node.name,), op=node.op_type, perm=perm), q, self.dtype(x)
        )
        return None

    op_Transpose = op_Reshape = op_Flatten = op_Squeeze = op_Unsqueeze = op_Identity = _layout

    # -- float islands DQ -> element-wise / commuting ops -> Q

    def island(self, dq: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """The chain ``dq -> ... -> QuantizeLinear`` if it folds into int8 ops and one LUT, else None."""
        if (
            self.scalar_q(dq.input[1], dq.input[2] if len(dq.input) > 2 else None) is None
            or self.dtype(dq.input[0]) != "int8"
        ):
            return None
        chain, cur, phase = [dq], dq.output[0], 0  # phase 0: before, 1: in, 2: after the element-wise run
        while True:
            users = self.consumers.get(cur, [])
            if cur in self.graph_outputs or len(users) != 1:
                return None
            node = users[0]
            if node.domain not in ("", "ai.onnx") or node.input[0] != cur:
                return None
            if node.op_type == "QuantizeLinear":
                if (
                    phase == 0
                    or self.scalar_q(node.input[1], node.input[2] if len(node.input) > 2 else None) is None
                ):
                    return None
                return [*chain, node]
            if node.op_type in _ELEMENTWISE and all(self.const(i) is not None for i in node.input[1:] if i):
                if phase == 2:
                    return None
                phase = 1
            elif node.op_type in _COMMUTING and len([o for o in node.output if o]) == 1:
                if (
                    node.op_type in ("Reshape", "Squeeze", "Unsqueeze")
                    and len(node.input) > 1
                    and self.const(node.input[1]) is None
                ):
                    return None
                if phase == 1:
                    phase = 2
            else:
                return None
            chain.append(node)
            cur = node.output[0]

    def convert_island(self, chain: list[onnx.NodeProto]) -> None:
        dq, q = chain[0], chain[-1]
        body = chain[1:-1]
        xq = self.scalar_q(dq.input[1], dq.input[2] if len(dq.input) > 2 else None)
        yq = self.scalar_q(q.input[1], q.input[2] if len(q.input) > 2 else None)
        source = tuple(n.name for n in chain)
        first = next(i for i, n in enumerate(body) if n.op_type in _ELEMENTWISE)
        last = max(i for i, n in enumerate(body) if n.op_type in _ELEMENTWISE)
        ew = body[first : last + 1]
        lut_in_shape = self.shape(ew[0].input[0])
        # The table is the element-wise run alone: wire it straight from dq to q around the
        # commuting ops (which run on the int8 values instead).
        head, tail = onnx.NodeProto(), onnx.NodeProto()
        head.CopyFrom(ew[0])
        head.input[0] = dq.output[0]
        tail.CopyFrom(q)
        tail.input[0] = ew[-1].output[0]
        run = [dq, head, *ew[1:], tail] if len(ew) > 1 else [dq, head, tail]
        if len(ew) == 1:
            tail.input[0] = head.output[0]
        u8 = (self.onnx_dtype(dq.input[0]) == "uint8", self.onnx_dtype(q.output[0]) == "uint8")
        lut = _tabulate(self.model, run, dq.output[0], q.output[0], lut_in_shape, self.inits, u8, dq=dq)
        if isinstance(lut, str):
            for node in chain:
                self.convert(node)
            return
        self.quant.setdefault(dq.input[0], xq)
        cur = dq.input[0]

        def out_name(node, is_last):
            return q.output[0] if is_last else f"{node.output[0]}::int8"

        steps = [(n, xq) for n in body[:first]] + [(None, yq)] + [(n, yq) for n in body[last + 1 :]]
        for k, (node, oq) in enumerate(steps):
            is_last = k == len(steps) - 1
            if node is None:
                name = out_name(ew[-1], is_last)
                self.emit(
                    ir.QLut(f"{ew[0].name}::lut", (cur,), (name,), source, lut=lut),
                    yq,
                    shape=self.shape(ew[-1].output[0]),
                )
            else:
                name = out_name(node, is_last)
                a = _attrs(node)
                if node.op_type == "MaxPool":
                    geo, why = self._pool_geometry(node, node.input[0])
                    if why:  # not expected: _COMMUTING MaxPools are all 2-D here
                        raise ModelError(f"MaxPool {node.name!r}: {why}")
                    kernel, stride, pads, ceil_mode, _ = geo
                    layer = ir.QMaxPool(
                        node.name,
                        (cur,),
                        (name,),
                        source,
                        params=ir.MaxPoolParams(kernel, stride, pads, ceil_mode),
                    )
                else:
                    perm = (
                        tuple(int(p) for p in a.get("perm", range(len(self.shape(node.input[0])))[::-1]))
                        if node.op_type == "Transpose"
                        else ()
                    )
                    layer = ir.Layout(node.name, (cur,), (name,), source, op=node.op_type, perm=perm)
                self.emit(layer, oq, shape=self.shape(node.output[0]))
            cur = name


def _tabulate(
    model: onnx.ModelProto,
    nodes: list[onnx.NodeProto],
    x: str,
    y: str,
    x_shape: tuple[int, ...],
    inits: dict[str, np.ndarray],
    u8: tuple[bool, bool],
    dq: onnx.NodeProto | None = None,
) -> np.ndarray | str:
    """Run ``nodes`` (8-bit ``x`` -> 8-bit ``y``, element-wise) in onnxruntime on all 256 inputs.

    ``u8`` tells whether the input and the output are uint8 in the model; the table is always on
    the int8 view (uint8 values shifted by -128).

    Returns the table, ``(256,)`` or ``(C, 256)`` along ONNX axis 1, or a reason string if the
    constants broadcast along another axis.
    """
    import onnxruntime as ort

    rank = len(x_shape)
    src = dq.input[0] if dq is not None else x
    channel = False
    for node in nodes:
        for name in node.input[1:]:
            c = inits.get(name) if name else None
            if c is None or (node in (nodes[0], nodes[-1]) and dq is not None):
                continue
            cshape = (1,) * (rank - c.ndim) + c.shape
            for axis, extent in enumerate(cshape):
                if extent != 1 and not (axis == 1 and extent == x_shape[1]):
                    return f"{node.op_type} constant {name!r} of shape {c.shape} varies along axis {axis}"
                channel |= extent != 1
    c = x_shape[1] if channel else 1
    shape = [1] * rank
    value_axis = 2 if rank >= 3 else 0
    if rank >= 2:
        shape[1] = c
    shape[value_axis] = 256
    values = np.arange(-128, 128, dtype=np.int8).reshape([256 if i == value_axis else 1 for i in range(rank)])
    feed = np.ascontiguousarray(np.broadcast_to(values, shape))
    if u8[0]:
        feed = (feed.astype(np.int16) + 128).astype(np.uint8)
    types = tuple(TensorProto.UINT8 if u else TensorProto.INT8 for u in u8)
    used = {i for n in nodes for i in n.input if i in inits}
    g = helper.make_graph(
        list(nodes),
        "lut",
        [helper.make_tensor_value_info(src, types[0], shape)],
        [helper.make_tensor_value_info(y, types[1], None)],
        [numpy_helper.from_array(inits[i], i) for i in sorted(used)],
    )
    m = helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    try:
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        out = sess.run([y], {src: feed})[0]
    except Exception as exc:  # onnxruntime raises its own Fail/NotImplemented types
        return f"onnxruntime cannot tabulate it on int8 ({str(exc).splitlines()[0]})"
    if u8[1]:
        out = (out.astype(np.int16) - 128).astype(np.int8)
    table = (
        np.moveaxis(out.reshape(shape), value_axis, -1).reshape(-1, 256)[:c]
        if rank >= 2
        else out.reshape(1, 256)
    )
    if c == 1 or np.all(table == table[0]):
        return np.ascontiguousarray(table[0])
    return np.ascontiguousarray(table)


# -- device layouts ---------------------------------------------------------------------------------


def _required_perm(layer: ir.Layer, x: ir.Tensor) -> tuple[int, ...] | None:
    """The device layout ``layer`` needs for its first input, or None if any will do."""
    if isinstance(layer, _SPATIAL):
        return ir.NCHW_TO_NHWC
    if isinstance(layer, ir.QFullyConnected):
        return (0, 1)
    if isinstance(layer, ir.QLut) and layer.lut.ndim == 2 and x.perm[-1] != 1:
        # A per-channel table indexes the device's last axis, which must be ONNX's channel axis 1.
        return (*(i for i in range(len(x.perm)) if i != 1), 1)
    return None


def _assign_layouts(graph: ir.Graph) -> None:
    """Choose every tensor's device ``perm`` (NHWC for feature maps) and insert Relayout layers where a
    layer needs its input in another layout; mark layout layers that move no data as free."""
    consumers = graph.consumers()
    want: dict[str, tuple[int, ...]] = {}
    # Backwards: the layout each tensor would like (what its consumers need).
    for layer in reversed(graph.layers):
        for name in layer.inputs:
            t = graph.tensors[name]
            if name in want:
                continue
            if isinstance(layer, _SPATIAL):
                want[name] = ir.NCHW_TO_NHWC
            elif isinstance(layer, ir.Layout) and layer.op == "Transpose" and layer.outputs[0] in want:
                q = want[layer.outputs[0]]
                want[name] = tuple(layer.perm[i] for i in q)
            elif (
                isinstance(layer, ir.Quantize | ir.Dequantize | ir.QLut | ir.QAdd)
                and layer.outputs[0] in want
            ):
                want[name] = want[layer.outputs[0]]
            elif len(t.onnx_shape) == 4 and any(isinstance(c, _SPATIAL) for c in consumers.get(name, [])):
                want[name] = ir.NCHW_TO_NHWC
    new_layers: list[ir.Layer] = []
    for name in graph.inputs:
        graph.tensors[name].perm = want.get(name, graph.tensors[name].perm)
    for layer in graph.layers:
        if layer.inputs and not isinstance(layer, ir.CpuOp):
            x = graph.tensors[layer.inputs[0]]
            need = _required_perm(layer, x)
            if need is not None and x.perm != need:
                name = f"{x.name}::relayout{''.join(map(str, need))}"
                if name not in graph.tensors:
                    graph.tensors[name] = ir.Tensor(name, x.onnx_shape, x.dtype, x.scale, x.zero_point, need)
                    new_layers.append(
                        ir.Layout(f"{layer.name}::relayout", (x.name,), (name,), layer.source, op="Relayout")
                    )
                layer.inputs = (name, *layer.inputs[1:])
        for name in layer.outputs:
            t = graph.tensors[name]
            if isinstance(layer, _SPATIAL):
                t.perm = ir.NCHW_TO_NHWC
            elif isinstance(layer, ir.Layout) and layer.op == "Transpose":
                inv = np.argsort(layer.perm)
                t.perm = tuple(int(inv[p]) for p in graph.tensors[layer.inputs[0]].perm)
            elif isinstance(layer, ir.Quantize | ir.Dequantize | ir.QLut | ir.QAdd):
                t.perm = graph.tensors[layer.inputs[0]].perm
            elif isinstance(layer, ir.QFullyConnected):
                t.perm = (0, 1)
            elif isinstance(layer, ir.Layout | ir.CpuOp):
                t.perm = want.get(name, tuple(range(len(t.onnx_shape))))
        if isinstance(layer, ir.QAdd) and len(layer.inputs) == 2:
            a, b = (graph.tensors[n] for n in layer.inputs)
            if a.perm != b.perm:
                name = f"{b.name}::relayout"
                if name not in graph.tensors:
                    graph.tensors[name] = ir.Tensor(
                        name, b.onnx_shape, b.dtype, b.scale, b.zero_point, a.perm
                    )
                    new_layers.append(
                        ir.Layout(f"{layer.name}::relayout", (b.name,), (name,), layer.source, op="Relayout")
                    )
                layer.inputs = (a.name, name)
        if isinstance(layer, ir.QAdd) and layer.b_const is not None:
            layer.b_const = graph.tensors[layer.inputs[0]].to_device(layer.b_const)
        new_layers.append(layer)
    graph.layers = new_layers
    for layer in graph.layers:
        if isinstance(layer, ir.Layout):
            tin, tout = graph.tensors[layer.inputs[0]], graph.tensors[layer.outputs[0]]
            probe = np.arange(int(np.prod(tin.shape)), dtype=np.int64).reshape(tin.shape)
            moved = ir.evaluate(
                ir.Graph(
                    {tin.name: ir.Tensor(tin.name, tin.onnx_shape, "int32", perm=tin.perm), tout.name: tout},
                    [layer],
                    [tin.name],
                    [tout.name],
                ),
                {tin.name: probe.astype(np.int32)},
            )[tout.name]
            layer.free = bool(np.array_equal(moved.reshape(-1), probe.reshape(-1)))


def load_model(
    model, input_shapes: Mapping[str, tuple[int, ...]] | None = None, *, calibrate: np.ndarray | None = None
) -> ImportedModel:
    """Import an ONNX model into the quantized IR.

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The ONNX model: an int8 QOperator model, a QDQ model, or a float model (with ``calibrate``).
    input_shapes : dict of str to tuple of int, optional
        Static shapes for inputs whose declared shape has dynamic (named or unknown) dimensions.
    calibrate : ndarray, optional
        Calibration samples for a float model, stacked on the batch axis (see
        :func:`quantize_float_model`).

    Returns
    -------
    ImportedModel

    Raises
    ------
    ModelError
        If the file is corrupt or not ONNX, or a float model comes without ``calibrate``.
    ShapeError
        If an input has a dynamic shape and ``input_shapes`` does not give it, or shapes do not fit.
    """
    proto = _read(model)
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ModelError(
            f"the model is not valid ONNX ({str(exc).splitlines()[0]}); export it again"
        ) from exc
    proto = _fix_shapes(proto, input_shapes)
    kind = _kind(proto)
    if kind == "float":
        if calibrate is None:
            raise ModelError(
                "this is a float model; pass calibrate=<float32 array of sample inputs> to "
                "quantize it to int8 on import (or import an int8 model)"
            )
        proto = _fix_shapes(quantize_float_model(proto, calibrate), None)
    elif kind == "qdq":
        proto = _fix_shapes(_ort_fold_qdq(proto), None)
    _fold_constants(proto)
    _name_nodes(proto)
    conv = _Converter(proto)
    graph = conv.run()
    _assign_layouts(graph)
    np_dtype = {k: np.dtype(v) for k, v in _ONNX_DTYPES.items()}
    ins = {i.name: conv.shape(i.name) for i in _graph_inputs(proto)}
    outs = {o.name: conv.shape(o.name) for o in proto.graph.output}
    return ImportedModel(
        proto,
        graph,
        kind,
        ins,
        {n: np_dtype[conv.types[n][1]] for n in ins},
        outs,
        {n: np_dtype.get(conv.types[n][1], np.dtype(object)) for n in outs},
    )
