"""MTCNN (pnet, rnet, onet), quantized int8 x int8 QOperator by onnxruntime, run layer by layer through
the golden ops on real images: every int8 tensor, conv layers first, equals onnxruntime's.

The quantized graphs are QLinearConv / QLinearMatMul / QLinearAdd with PRelu left in float between
DequantizeLinear and QuantizeLinear (and, before a pooling layer, a float MaxPool in between). The
golden model runs that chain as a per-channel lookup table followed by an int8 max pool: QuantizeLinear
is monotone, so ``Q(MaxPool(PRelu(DQ(y)))) == MaxPool(Q(PRelu(DQ(y))))`` exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from jacquard.host import material
from jacquard.host.cache import cache_dir, cache_lock
from jacquard.sim import golden, quantize

_NETS = {"pnet": None, "rnet": 24, "onet": 48}
_CONV_LAYERS = {"pnet": 5, "rnet": 3, "onet": 4}


def _normalize(rgb: np.ndarray) -> np.ndarray:
    """MTCNN's input scaling: (pixel - 127.5) / 128, NHWC float32."""
    return ((rgb.astype(np.float32) - 127.5) / 128).astype(np.float32)


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import resize

    return resize(img, (size, size), preserve_range=True, anti_aliasing=True).astype(np.float32)


def _images(name: str) -> list[np.ndarray]:
    """NHWC float batches: astronaut crops (the face, the background) and three LFW faces as RGB."""
    astro = material.astronaut()
    faces = [np.repeat(material.lfw_faces()[i][..., None] * 255, 3, axis=2) for i in (0, 57, 123)]
    size = _NETS[name]
    if size is None:  # pnet is fully convolutional: full-resolution crops of different sizes
        crops = [astro[90:170, 170:250], astro[300:348, 20:84], *[_resize(f, 36) for f in faces]]
    else:
        crops = [_resize(astro[80:230, 170:320], size), _resize(astro[300:400, 0:100], size),
                 *[_resize(f, size) for f in faces]]
    return [_normalize(np.asarray(c))[None] for c in crops]


def quantized_mtcnn(name: str) -> Path:
    """``name`` ("pnet", "rnet", "onet") quantized with onnxruntime, calibrated on the test images; cached.

    Raises
    ------
    jacquard.host.material.MaterialError
        If the float models cannot be fetched.
    """
    models = material.mtcnn_models()
    dst = cache_dir("material", "mtcnn-int8") / f"{name}.int8.onnx"
    with cache_lock(dst):  # made once, whole, when several test processes need it at the same time
        if not dst.exists():
            iname = onnx.load(models[name]).graph.input[0].name
            tmp = dst.with_suffix(".part.onnx")
            quantize.quantize_float_model(models[name], [{iname: x} for x in _images(name)], tmp)
            tmp.replace(dst)
    return dst


@pytest.fixture(scope="module")
def quantized():
    """The three nets quantized with onnxruntime (calibrated on the test images), cached."""
    try:
        return {name: onnx.load(quantized_mtcnn(name)) for name in _NETS}
    except material.MaterialError as e:
        pytest.skip(str(e))


class GoldenRunner:
    """Runs a quantized QOperator graph node by node with the golden ops, NHWC throughout.

    Tensors ONNX holds as NCHW are kept as NHWC arrays (``self.nhwc``); the graph's own Transposes
    only switch that flag. Float islands DQ -> PRelu [-> MaxPool] -> Q become a LUT and an int8 max pool.
    """

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in model.graph.node:
            for i in node.input:
                self.consumers.setdefault(i, []).append(node)
        self.values: dict[str, np.ndarray] = {}
        self.nhwc: set[str] = set()
        self.done: set[str] = set()

    def _get(self, name: str) -> np.ndarray:
        return self.values[name] if name in self.values else self.init[name]

    def _scalar(self, name: str):
        v = self.init[name]
        return v.item() if v.dtype != np.float32 else float(v)

    def run(self, feed: np.ndarray) -> dict[str, np.ndarray]:
        self.values[self.model.graph.input[0].name] = feed
        for node in self.model.graph.node:
            if node.name in self.done or (node.output[0] in self.values):
                continue
            getattr(self, f"_{node.op_type}", self._skip)(node)
        return self.values

    def _skip(self, node):
        pass  # Softmax heads stay in float; they are not accelerator work

    def _Transpose(self, node):
        perm = list(helper.get_attribute_value(node.attribute[0]))
        src = node.input[0]
        assert perm in ([0, 3, 1, 2], [0, 2, 3, 1]), perm
        self.values[node.output[0]] = self.values[src]
        if perm == [0, 3, 1, 2]:
            assert src not in self.nhwc
            self.nhwc.add(node.output[0])
        else:
            assert src in self.nhwc

    def _Flatten(self, node):
        x = self.values[node.input[0]]
        self.values[node.output[0]] = x.reshape(x.shape[0], -1)

    def _QuantizeLinear(self, node):
        x, s, z = node.input
        self.values[node.output[0]] = golden.quantize(self.values[x], self._scalar(s), self._scalar(z))
        if x in self.nhwc:
            self.nhwc.add(node.output[0])

    def _QLinearConv(self, node):
        x, sx, zx, w, sw, _, sy, zy, *bias = node.input
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert node.input[0] in self.nhwc and attrs.get("group", 1) == 1
        assert attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")
        wt = self.init[w].transpose(0, 2, 3, 1)
        b = self.init[bias[0]] if bias else np.zeros(wt.shape[0], np.int32)
        mult = golden.requant_multiplier(self._scalar(sx), self.init[sw], self._scalar(sy))
        self.values[node.output[0]] = golden.qconv2d(
            self.values[x], self._scalar(zx), wt, b, mult, self._scalar(zy),
            stride=tuple(attrs.get("strides", (1, 1))), pads=tuple(attrs.get("pads", (0, 0, 0, 0))))
        self.nhwc.add(node.output[0])

    def _QLinearMatMul(self, node):
        a, sa, za, b, sb, _, sy, zy = node.input
        wt = np.ascontiguousarray(self.init[b].T)
        mult = golden.requant_multiplier(self._scalar(sa), self.init[sb], self._scalar(sy))
        self.values[node.output[0]] = golden.fully_connected(
            self.values[a], self._scalar(za), wt, np.zeros(wt.shape[0], np.int32), mult, self._scalar(zy))

    def _QLinearAdd(self, node):
        a, sa, za, b, sb, zb, sy, zy = node.input
        av = self._get(a)
        # The bias operand is a per-feature vector; onnxruntime adds it row by row on the full-vector path.
        bv = np.ascontiguousarray(np.broadcast_to(self._get(b), av.shape))
        self.values[node.output[0]] = golden.add(av, self._scalar(sa), self._scalar(za), bv, self._scalar(sb),
                                                 self._scalar(zb), self._scalar(sy), self._scalar(zy))

    def _DequantizeLinear(self, node):
        """DQ -> PRelu [-> MaxPool | Transpose -> Flatten] -> Q as a per-channel LUT and int8 ops.

        Max pooling and layout changes commute with the monotone, element-wise QuantizeLinear, so
        they run on the int8 LUT output with the same result.
        """
        chain = [node]
        while len(chain) < 5:
            nxt = self.consumers.get(chain[-1].output[0], [])
            if len(nxt) != 1:
                return  # DQ of a head output (float Softmax): not accelerator work
            chain.append(nxt[0])
            if nxt[0].op_type == "QuantizeLinear":
                break
        ops = [n.op_type for n in chain]
        if ops[:2] != ["DequantizeLinear", "PRelu"] or ops[-1] != "QuantizeLinear" or \
                ops[2:-1] not in ([], ["MaxPool"], ["Transpose", "Flatten"]):
            return
        x, sx, zx = node.input
        _, sy, zy = chain[-1].input
        slope = self.init[chain[1].input[1]].reshape(-1).astype(np.float32)
        lut = golden.build_lut(lambda v: np.where(v < 0, v * slope[:, None], v), self._scalar(sx),
                               self._scalar(zx), self._scalar(sy), self._scalar(zy))
        y = golden.apply_lut(self.values[x], lut if len(slope) > 1 else lut[0])
        nhwc = x in self.nhwc
        if ops[2:-1] == ["MaxPool"]:
            attrs = {a.name: helper.get_attribute_value(a) for a in chain[2].attribute}
            kernel, stride = tuple(attrs["kernel_shape"]), tuple(attrs.get("strides", (1, 1)))
            auto_pad = attrs.get("auto_pad", b"NOTSET").decode()
            pads = tuple(attrs["pads"]) if "pads" in attrs else golden.auto_pads(y.shape[1:3], kernel, stride,
                                                                                 auto_pad)
            y = golden.max_pool(y, kernel, stride, pads, bool(attrs.get("ceil_mode", 0)))
        elif ops[2:-1] == ["Transpose", "Flatten"]:
            assert nhwc and list(helper.get_attribute_value(chain[2].attribute[0])) == [0, 2, 3, 1]
            y, nhwc = y.reshape(y.shape[0], -1), False
        self.values[chain[-1].output[0]] = y
        if nhwc:
            self.nhwc.add(chain[-1].output[0])
        self.done.update(n.name for n in chain)


def _with_int8_outputs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """The model with every int8-producing node's output also exposed as a graph output."""
    names = [n.output[0] for n in model.graph.node
             if n.op_type in ("QLinearConv", "QLinearMatMul", "QLinearAdd", "QuantizeLinear")]
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    m.graph.output.extend(helper.make_tensor_value_info(n, onnx.TensorProto.INT8, None)
                          for n in names if n not in have)
    return m, names


@pytest.mark.parametrize("name", list(_NETS))
def test_mtcnn_layers_bit_exact(quantized, name):
    model = quantized[name]
    probed, names = _with_int8_outputs(model)
    sess = quantize.session(probed)
    kinds = {n.output[0]: n.op_type for n in model.graph.node}
    compared = {"QLinearConv": 0, "QLinearMatMul": 0, "QLinearAdd": 0, "QuantizeLinear": 0}
    elements = 0
    for i, x in enumerate(_images(name)):
        want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {model.graph.input[0].name: x}),
                        strict=True))
        got = GoldenRunner(model).run(x)
        for n in names:
            assert n in got, f"{name}: the golden runner did not produce {n} ({kinds[n]})"
            g = got[n]
            w = quantize.nchw_to_nhwc(want[n]) if want[n].ndim == 4 else want[n]
            assert g.shape == w.shape, f"{name} image {i} {n}: shape {g.shape} != {w.shape}"
            bad = np.argwhere(g != w)
            first = tuple(bad[0]) if len(bad) else None
            assert not len(bad), (f"{name} image {i} {kinds[n]} {n}: {len(bad)} mismatches, first at "
                                  f"{first}: onnxruntime {w[first]}, golden {g[first]}")
            compared[kinds[n]] += 1
            elements += g.size
    print(f"{name}: {compared} tensors, {elements} int8 elements compared, 0 mismatches")
    assert compared["QLinearConv"] == _CONV_LAYERS[name] * len(_images(name))
