"""Automatic partitioning: accelerator segments and CPU (onnxruntime) segments.

Layers the accelerator supports, within its hardware ranges, run on it; everything else (Softmax,
Resize, a kernel above 7, ...) runs on the CPU through onnxruntime, on a sub-model cut out of the
imported ONNX model. A model is never refused because part of it is unsupported.

:func:`run_reference` runs a whole plan: CPU segments in onnxruntime, accelerator segments with the
golden ops (:func:`jacquard.host.ir.evaluate`), converting layouts at the boundaries. Its outputs
equal onnxruntime's on the imported model bit for bit.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from jacquard.sim import golden
from jacquard.sim.isa import HardwareConfig, Op

from . import ir
from .importer import ImportedModel

__all__ = ["Limits", "Plan", "Segment", "check_layer", "fuse_layers", "partition", "run_reference"]

_F32 = np.float32


@dataclass(frozen=True)
class Limits:
    """The hardware ranges a layer must fit to run on the accelerator.

    Members
    -------
    max_kernel : int
        Largest kernel side (convolution and pooling).
    max_stride : int
        Largest stride.
    fused_pool : tuple of (kernel, stride)
        Max pools the post-processor can fuse behind a convolution.
    ops : frozenset of Op
        The ops the target config builds (:attr:`HardwareConfig.ops`); a layer of another op runs on
        the CPU.
    config : str
        The target config's name, for the reasons.
    """

    max_kernel: int = golden.MAX_KERNEL
    max_stride: int = golden.MAX_STRIDE
    fused_pool: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (((2, 2), (2, 2)),)
    ops: frozenset[Op] = frozenset(Op)
    config: str = "the target config"

    @classmethod
    def for_config(cls, cfg: HardwareConfig) -> Limits:
        """The limits of a hardware config: its kernel height and op set."""
        return cls(max_kernel=min(golden.MAX_KERNEL, cfg.max_kernel_h), ops=cfg.ops, config=cfg.name)


def _window_reason(kind: str, kernel, stride, pads, limits: Limits) -> str | None:
    if max(kernel) > limits.max_kernel:
        return f"{kind} kernel {tuple(kernel)} above {limits.max_kernel}"
    if max(stride) > limits.max_stride:
        return f"{kind} stride {tuple(stride)} above {limits.max_stride}"
    side = (kernel[0], kernel[1], kernel[0], kernel[1])
    if any(p >= k for p, k in zip(pads, side, strict=True)):
        return f"{kind} pads {tuple(pads)} reach a whole kernel {tuple(kernel)}"
    return None


def _device_op(layer: ir.Layer, graph: ir.Graph) -> Op | None:
    """The op a layer compiles to (a table alone is an identity CONV), or None for host layers."""
    if isinstance(layer, ir.QConv | ir.QFullyConnected | ir.QLut):
        return Op.CONV
    if isinstance(layer, ir.QMaxPool):
        return Op.MAXPOOL
    if isinstance(layer, ir.QAvgPool):
        whole = layer.is_global(graph.tensors[layer.inputs[0]].shape[1:3])
        return Op.GLOBAL_AVGPOOL if whole else Op.AVGPOOL  # the compiler's choice
    if isinstance(layer, ir.QGlobalAvgPool):
        return Op.GLOBAL_AVGPOOL
    if isinstance(layer, ir.QAdd):
        return Op.ADD
    return None


def check_layer(layer: ir.Layer, graph: ir.Graph, limits: Limits = Limits()) -> str | None:
    """Why ``layer`` cannot run on the accelerator, or None if it can."""
    if isinstance(layer, ir.CpuOp):
        return layer.reason
    op = _device_op(layer, graph)
    if op is not None and op not in limits.ops:
        return f"{op.name} not in config {limits.config}'s ops"
    if isinstance(layer, ir.QConv):
        return _window_reason("convolution", layer.kernel, layer.stride, layer.pads, limits)
    if isinstance(layer, ir.QMaxPool):
        p = layer.params
        return _window_reason("max pool", p.kernel, p.stride, p.pads, limits)
    if isinstance(layer, ir.QAvgPool):
        if op == Op.GLOBAL_AVGPOOL:
            return None  # runs as a global average
        return _window_reason("average pool", layer.kernel, layer.stride, layer.pads, limits)
    if isinstance(layer, ir.QGlobalAvgPool):
        x = graph.tensors[layer.inputs[0]]
        image = x.shape[1] * x.shape[2]
        m = _F32(layer.x_scale) / (_F32(layer.y_scale) * _F32(image))
        if image >= 1 << 24 or not _F32(2.0**-32) <= m < _F32(256):
            return f"global average pool multiplier {m} outside 2**-32..256"
        return None
    return None


def _where(layer: ir.Layer, graph: ir.Graph, reason: str | None) -> str:
    if reason is not None:
        return "cpu"
    if isinstance(layer, ir.Quantize | ir.Dequantize) or (
        isinstance(layer, ir.Layout) and graph.tensors[layer.inputs[0]].dtype == "float32"
    ):
        return "host"
    return "accelerator"


@dataclass
class Segment:
    """A run of layers placed together.

    Members
    -------
    where : str
        ``"accelerator"`` (includes the host's quantize/dequantize at its edges) or ``"cpu"``.
    layers : list of ir.Layer
    graph : ir.Graph or None
        The accelerator segment as a graph of its own (inputs and outputs are its boundary tensors).
    model : onnx.ModelProto or None
        The CPU segment's sub-model.
    inputs, outputs : list of str
        Boundary tensor names.
    """

    where: str
    layers: list[ir.Layer]
    graph: ir.Graph | None = None
    model: onnx.ModelProto | None = None
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    _session: object = None

    def session(self):
        """The onnxruntime session of a CPU segment (created once)."""
        if self._session is None:
            import onnxruntime as ort

            self._session = ort.InferenceSession(
                self.model.SerializeToString(), providers=["CPUExecutionProvider"]
            )
        return self._session


@dataclass
class Plan:
    """Where every layer of an imported model runs.

    Members
    -------
    imported : ImportedModel
    graph : ir.Graph
        The whole (fused) graph.
    segments : list of Segment
        In execution order.
    reasons : dict of str to str
        For each CPU layer, why.
    """

    imported: ImportedModel
    graph: ir.Graph
    segments: list[Segment]
    reasons: dict[str, str]

    def report(self) -> list[dict]:
        """One row per layer: ``layer``, ``op``, ``where`` (accelerator/host/cpu), ``macs``, ``reason``."""
        rows = []
        for seg in self.segments:
            for layer in seg.layers:
                reason = self.reasons.get(layer.name)
                op = layer.op if isinstance(layer, ir.CpuOp | ir.Layout) else type(layer).__name__
                if isinstance(layer, ir.QConv):
                    op += "".join(
                        s
                        for s, on in ((" +lut", layer.lut is not None), (" +maxpool", layer.pool is not None))
                        if on
                    )
                macs = layer.macs if isinstance(layer, ir.CpuOp) else ir.macs(layer, self.graph)
                rows.append(
                    {
                        "layer": layer.name,
                        "op": op,
                        "where": _where(layer, self.graph, reason),
                        "macs": macs,
                        "reason": reason or "",
                    }
                )
        return rows

    def format_report(self) -> str:
        """The report as a plain-text table, with MAC totals per placement."""
        rows = self.report()
        w = max([len(r["layer"]) for r in rows] + [5])
        o = max([len(r["op"]) for r in rows] + [2])
        lines = [f"{'layer':<{w}}  {'op':<{o}}  {'where':<11}  {'MACs':>12}  reason"]
        lines += [
            f"{r['layer']:<{w}}  {r['op']:<{o}}  {r['where']:<11}  {r['macs']:>12,}  {r['reason']}"
            for r in rows
        ]
        total = sum(r["macs"] for r in rows) or 1
        acc = sum(r["macs"] for r in rows if r["where"] == "accelerator")
        lines.append(f"accelerator MACs: {acc:,} of {total:,} ({100 * acc / total:.1f} %)")
        return "\n".join(lines)


def _union_units(layers: list[ir.Layer]) -> dict[str, int]:
    """Group layers that share an ONNX source node (a folded pattern must be placed as a whole)."""
    parent = list(range(len(layers)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, layer in enumerate(layers):
        for s in layer.source:
            if s in owner:
                parent[find(i)] = find(owner[s])
            else:
                owner[s] = i
    return {layer.name: find(i) for i, layer in enumerate(layers)}


def _is_clamp(lut: np.ndarray) -> tuple[int, int] | None:
    if lut.ndim != 1:
        return None
    lo, hi = int(lut.min()), int(lut.max())
    return (lo, hi) if np.array_equal(lut, np.clip(np.arange(-128, 128), lo, hi)) else None


def fuse_layers(graph: ir.Graph, cpu: set[str], limits: Limits = Limits()) -> None:
    """Fuse, in place, what the post-processor does behind a convolution: a clamp (ReLU/Clip as a
    table) into the bounds, another table into the LUT stage, then a max pool it supports.

    Only single-consumer chains on the accelerator are fused (``cpu`` names the CPU layers), and never
    across a graph output.
    """
    changed = True
    while changed:
        changed = False
        consumers = graph.consumers()
        for conv in graph.layers:
            if not isinstance(conv, ir.QConv) or conv.name in cpu:
                continue
            out = conv.outputs[0]
            users = consumers.get(out, [])
            if out in graph.outputs or len(users) != 1 or users[0].name in cpu:
                continue
            nxt = users[0]
            if isinstance(nxt, ir.QLut) and conv.pool is None and conv.lut is None:
                clamp = _is_clamp(nxt.lut)
                if clamp is not None and max(conv.lo, clamp[0]) <= min(conv.hi, clamp[1]):
                    conv.lo, conv.hi = max(conv.lo, clamp[0]), min(conv.hi, clamp[1])
                elif nxt.lut.ndim == 1 or nxt.lut.shape[0] == conv.weight.shape[0]:
                    conv.lut = nxt.lut
                else:
                    continue
            elif (
                isinstance(nxt, ir.QMaxPool)
                and conv.pool is None
                and nxt.params.pads == (0, 0, 0, 0)
                and not nxt.params.ceil_mode
                and (nxt.params.kernel, nxt.params.stride) in limits.fused_pool
            ):
                conv.pool = nxt.params
            else:
                continue
            conv.outputs = nxt.outputs
            conv.source = tuple(dict.fromkeys((*conv.source, *nxt.source)))
            graph.layers.remove(nxt)
            changed = True
            break


def _cpu_model(
    imported: ImportedModel, nodes: list[onnx.NodeProto], inputs: list[str], outputs: list[str]
) -> onnx.ModelProto:
    model = imported.model
    inits = {i.name: i for i in model.graph.initializer}
    used = sorted({i for n in nodes for i in n.input if i in inits})
    tensors = imported.graph.tensors

    def info(name):
        t = tensors[name]
        return helper.make_tensor_value_info(
            name, helper.np_dtype_to_tensor_dtype(np.dtype(t.onnx_dtype)), list(t.onnx_shape)
        )

    g = helper.make_graph(
        nodes, "cpu_segment", [info(n) for n in inputs], [info(n) for n in outputs], [inits[n] for n in used]
    )
    return helper.make_model(g, opset_imports=list(model.opset_import), ir_version=model.ir_version)


def partition(imported: ImportedModel, limits: Limits = Limits(), *, fuse: bool = True) -> Plan:
    """Split an imported model into accelerator and CPU segments.

    Parameters
    ----------
    imported : ImportedModel
        From :func:`jacquard.host.importer.load_model`.
    limits : Limits
        The hardware's ranges.
    fuse : bool
        Fuse clamps, tables and 2x2 max pools into the convolutions before them.

    Returns
    -------
    Plan
    """
    graph = imported.graph
    layers = list(graph.layers)
    unit = _union_units(layers)
    reasons = {layer.name: r for layer in layers if (r := check_layer(layer, graph, limits)) is not None}
    cpu_units = {unit[name] for name in reasons}
    cpu = {layer.name for layer in layers if unit[layer.name] in cpu_units}
    for layer in layers:
        if layer.name in cpu and layer.name not in reasons:
            reasons[layer.name] = "part of a folded pattern that runs on the CPU"
    # Fusion rewrites layer attributes: work on copies so the imported model can be partitioned again.
    work = ir.Graph(dict(graph.tensors), [copy.copy(layer) for layer in layers], list(graph.inputs),
                    list(graph.outputs))
    if fuse:
        fuse_layers(work, cpu, limits)
    consumers = work.consumers()
    node_order = {n.name: i for i, n in enumerate(imported.model.graph.node)}
    node_by_name = {n.name: n for n in imported.model.graph.node}
    onnx_consumers: dict[str, set[str]] = {}
    for n in imported.model.graph.node:
        for i in n.input:
            onnx_consumers.setdefault(i, set()).add(n.name)

    segments: list[Segment] = []
    for layer in work.layers:
        where = "cpu" if layer.name in cpu else "accelerator"
        if not segments or segments[-1].where != where:
            segments.append(Segment(where, []))
        segments[-1].layers.append(layer)
    outputs = set(work.outputs)
    for seg in segments:
        names = {layer.name for layer in seg.layers}
        if seg.where == "accelerator":
            produced = {t for layer in seg.layers for t in layer.outputs}
            seg.inputs = list(
                dict.fromkeys(t for layer in seg.layers for t in layer.inputs if t not in produced)
            )
            seg.outputs = [
                t
                for layer in seg.layers
                for t in layer.outputs
                if t in outputs or any(c.name not in names for c in consumers.get(t, []))
            ]
            seg.graph = ir.Graph(
                {t: work.tensors[t] for layer in seg.layers for t in (*layer.inputs, *layer.outputs)},
                seg.layers,
                seg.inputs,
                seg.outputs,
            )
        else:
            srcs = sorted({s for layer in seg.layers for s in layer.source}, key=node_order.__getitem__)
            nodes = [node_by_name[s] for s in srcs]
            inits = {i.name for i in imported.model.graph.initializer}
            produced = {o for n in nodes for o in n.output if o}
            seg.inputs = list(
                dict.fromkeys(i for n in nodes for i in n.input if i and i not in produced and i not in inits)
            )
            seg.outputs = [
                o
                for n in nodes
                for o in n.output
                if o and (o in outputs or onnx_consumers.get(o, set()) - set(srcs))
            ]
            seg.model = _cpu_model(imported, nodes, seg.inputs, seg.outputs)
    return Plan(imported, work, segments, reasons)


def run_reference(plan: Plan, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run the whole model: CPU segments in onnxruntime, accelerator segments with the golden ops.

    Parameters
    ----------
    plan : Plan
    inputs : dict of str to ndarray
        The model's inputs in ONNX layout, exactly what onnxruntime would take.

    Returns
    -------
    dict of str to ndarray
        Every model output by name, in ONNX layout, as onnxruntime returns them.

    Raises
    ------
    ShapeError
        If an input is missing or has the wrong shape or dtype.
    """
    feeds = plan.imported.check_inputs(inputs)
    env = ir.TensorEnv(plan.graph.tensors, feeds)
    for seg in plan.segments:
        if seg.where == "cpu":
            values = seg.session().run(seg.outputs, {n: env.onnx(n) for n in seg.inputs})
            for name, value in zip(seg.outputs, values, strict=True):
                env.set_onnx(name, value)
        else:
            out = ir.evaluate(seg.graph, {n: env.device(n) for n in seg.inputs})
            for name, value in out.items():
                env.set_device(name, value)
    return {name: env.onnx(name) for name in plan.graph.outputs}
