"""Small seeded float CNNs built with onnx.helper: the shared test material of the host tests.

Each factory returns ``(builder, model)``; ``builder.calibration()`` gives a seeded calibration set
for onnxruntime's static quantization. The models cover what the accelerator must run (convs,
pools, dense, residual adds, depthwise with a channel multiplier) and what it must leave to the CPU
(Resize, Softmax, a 9x9 kernel).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["Builder", "classifier", "depthwise", "partitioned", "residual", "wide_dense", "with_cpu_ops"]


class Builder:
    """A tiny float CNN builder (NCHW) with seeded random weights."""

    def __init__(self, seed: int, shape, name: str = "x"):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.n = [], [], 0
        self.shape, self.input = tuple(shape), name

    def _name(self, p):
        self.n += 1
        return f"{p}{self.n}"

    def const(self, value, prefix="c"):
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op, inputs, **attrs):
        out = self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x, cin, cout, k, stride=1, pad=0, group=1, relu=True):
        fan_in = cin // group * k * k
        w = self.rng.normal(0, 1 / np.sqrt(fan_in), (cout, cin // group, k, k)).astype(np.float32)
        b = self.rng.normal(0, 0.1, cout).astype(np.float32)
        y = self.node("Conv", [x, self.const(w, "w"), self.const(b, "b")], kernel_shape=[k, k],
                      strides=[stride, stride], pads=[pad] * 4, group=group)
        return self.node("Relu", [y]) if relu else y

    def dense(self, x, cin, cout):
        w = self.rng.normal(0, 1 / np.sqrt(cin), (cin, cout)).astype(np.float32)
        y = self.node("MatMul", [x, self.const(w, "w")])
        return self.node("Add", [y, self.const(self.rng.normal(0, 0.1, cout).astype(np.float32), "b")])

    def model(self, outputs, dims=None):
        shape = dims if dims is not None else self.shape
        g = helper.make_graph(self.nodes, "m",
                              [helper.make_tensor_value_info(self.input, TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
                              self.inits)
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        # Declare the outputs' inferred shapes: onnx.checker wants them on a float model.
        inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.output}
        for out in model.graph.output:
            if out.name in inferred and dims is None:
                out.CopyFrom(inferred[out.name])
        return model

    def calibration(self, n=8):
        return self.rng.normal(0, 1, (n, *self.shape[1:])).astype(np.float32)


def classifier():
    b = Builder(1, (1, 3, 20, 20))
    y = b.conv("x", 3, 8, 3, pad=1)
    y = b.node("MaxPool", [y], kernel_shape=[2, 2], strides=[2, 2])
    y = b.conv(y, 8, 16, 3, stride=2, pad=1)
    y = b.node("AveragePool", [y], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1])
    y = b.node("GlobalAveragePool", [y])
    y = b.node("Flatten", [y], axis=1)
    return b, b.model([b.dense(y, 16, 10)])


def residual():
    b = Builder(2, (1, 8, 12, 12))
    a = b.conv("x", 8, 8, 3, pad=1)
    c = b.conv(a, 8, 8, 3, pad=1, relu=False)
    s = b.node("Relu", [b.node("Add", [a, c])])
    d = b.conv(s, 8, 8, 1, relu=False)
    return b, b.model([b.node("Add", [d, s])])


def depthwise():
    b = Builder(3, (1, 4, 15, 15))
    y = b.conv("x", 4, 12, 1)
    y = b.conv(y, 12, 12, 3, stride=2, pad=1, group=12, relu=False)
    y = b.node("Clip", [y, b.const(np.float32(0)), b.const(np.float32(6))])
    y = b.conv(y, 12, 24, 5, group=12, pad=2, relu=False)  # depthwise with channel multiplier 2
    return b, b.model([b.conv(y, 24, 6, 1, relu=False)])


def partitioned():
    """Resize and Softmax (no accelerator op) between accelerator layers, a sigmoid table, two outputs."""
    b = Builder(4, (1, 3, 16, 16))
    y = b.conv("x", 3, 8, 3, pad=1)
    y = b.node("Resize", [y, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    y = b.node("Sigmoid", [b.conv(y, 8, 4, 3, stride=2, pad=1, relu=False)])
    y = b.conv(y, 4, 4, 1, relu=False)
    return b, b.model([b.node("Softmax", [y], axis=1), y])


def wide_dense():
    """A fully connected layer whose weight tile exceeds sim-small's weight buffer."""
    b = Builder(5, (1, 1100))
    return b, b.model([b.dense(b.dense("x", 1100, 12), 12, 5)])


def with_cpu_ops():
    """Resize and Softmax (no accelerator equivalent) and a 9x9 kernel (beyond the hardware)."""
    b = Builder(4, (1, 3, 16, 16))
    y = b.conv("x", 3, 8, 3, pad=1)
    y = b.node("Resize", [y, "", b.const(np.array([1, 1, 2, 2], np.float32))], mode="nearest")
    y = b.conv(y, 8, 8, 9, pad=4)
    y = b.node("Sigmoid", [b.conv(y, 8, 4, 3, stride=2, pad=1, relu=False)])
    y = b.conv(y, 4, 4, 1, relu=False)
    return b, b.model([b.node("Softmax", [y], axis=1)])
