"""ONNX's own node conformance vectors (Debian ``libonnx-testdata``) through the golden ops.

Integer cases (ConvInteger, QLinearConv, QLinearMatMul, uint8 MaxPool) must match exactly; uint8 data
maps onto the int8 golden ops exactly by subtracting 128 from values and zero points. Float cases go
through an exact integer path where one exists:

- Conv: the vectors hold small integers, so the int8 convolution reproduces them exactly.
- MaxPool: for each threshold t among the input values, the int8 image ``x >= t`` is max-pooled; the
  pooled indicators give back every output exactly (``max >= t`` iff some input in the window is).
- AveragePool, GlobalAveragePool: no exact integer path exists for arbitrary floats. The input is
  quantized (scale ``s = max|x| / 127``), the golden output is bit-exact with onnxruntime's
  QLinearAveragePool / QLinearGlobalAveragePool on that int8 data, and it is within the proven
  quantization bound ``s`` (half a step in, half a step out) of ONNX's float result.

The list of cases and their status is in ``docs/CONFORMANCE.md``.
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from jacquard.host import material
from jacquard.sim import golden, quantize

PATTERNS = ["test_basic_conv_*", "test_conv_with_strides_*", "test_conv_with_autopad_same",
            "test_convinteger_*", "test_basic_convinteger", "test_qlinearconv", "test_qlinearmatmul_*",
            "test_maxpool_*", "test_averagepool_*", "test_globalaveragepool*"]

# Out of scope for the accelerator, with the reason (also listed in docs/CONFORMANCE.md).
OUT_OF_SCOPE = {
    "test_maxpool_3d_default": "3-D pooling: the accelerator pools 2-D feature maps",
    "test_averagepool_3d_default": "3-D pooling: the accelerator pools 2-D feature maps",
    "test_maxpool_2d_dilations": "dilated pooling: the line buffer has dilation 1",
}


def _root() -> Path:
    try:
        return material.libonnx_testdata_dir()
    except material.MaterialError as e:
        pytest.skip(f"{e} (apt-get install libonnx-testdata)")


def _cases() -> list[str]:
    base = material.LIBONNX_TESTDATA
    names = sorted({Path(d).name for p in PATTERNS for d in glob.glob(str(base / p))})
    return names or ["libonnx-testdata-missing"]


def _load(name: str):
    case = _root() / name
    model = onnx.load(case / "model.onnx")
    node = model.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    sets = []
    for d in sorted(case.glob("test_data_set_*")):
        ins = [numpy_helper.to_array(onnx.load_tensor(str(f))) for f in sorted(d.glob("input_*.pb"))]
        outs = [numpy_helper.to_array(onnx.load_tensor(str(f))) for f in sorted(d.glob("output_*.pb"))]
        sets.append((ins, outs))
    return node, attrs, sets


def _as_int8(name: str, x: np.ndarray, offset: int = 0) -> np.ndarray:
    """Integer-valued data minus ``offset`` as int8, refusing anything that would not fit exactly."""
    v = x.astype(np.float64) - offset
    assert np.array_equal(v, np.rint(v)) and v.min() >= -128 and v.max() <= 127, f"{name} not exact in int8"
    return v.astype(np.int8)


def _u8(x: np.ndarray) -> np.ndarray:
    return _as_int8("uint8 data", x, 128)


def _nhwc4(x: np.ndarray) -> np.ndarray:
    """NCHW (or NCW, as H = 1) to NHWC."""
    return quantize.nchw_to_nhwc(x if x.ndim == 4 else x[:, :, None, :])


def _geometry(attrs, spatial) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int, int, int]]:
    kernel = tuple(attrs["kernel_shape"]) if "kernel_shape" in attrs else None
    if len(kernel) == 1:  # 1-D as a 2-D map of height 1
        kernel, strides = (1, kernel[0]), (1, attrs.get("strides", [1])[0])
        p = attrs.get("pads", [0, 0])
        return kernel, strides, (0, p[0], 0, p[1])
    strides = tuple(attrs.get("strides", (1, 1)))
    auto_pad = attrs.get("auto_pad", b"NOTSET").decode()
    pads = tuple(attrs["pads"]) if "pads" in attrs else golden.auto_pads(spatial, kernel, strides, auto_pad)
    return kernel, strides, pads


def _exact(name: str, want: np.ndarray, got: np.ndarray) -> None:
    assert want.shape == got.shape, f"{name}: shape {got.shape} != {want.shape}"
    bad = np.argwhere(want != got)
    first = tuple(bad[0]) if len(bad) else None
    assert not len(bad), f"{name}: {len(bad)} mismatches, first at {first}: expected {want[first]}, " \
                         f"golden {got[first]}"


def _conv(name, attrs, ins, outs):
    x, w = ins[0], ins[1]
    kernel = tuple(attrs.get("kernel_shape", w.shape[2:]))
    strides = tuple(attrs.get("strides", (1, 1)))
    auto_pad = attrs.get("auto_pad", b"NOTSET").decode()
    if "pads" in attrs:
        return kernel, strides, tuple(attrs["pads"])
    return kernel, strides, golden.auto_pads(x.shape[2:], kernel, strides, auto_pad)


def run_conv(name, node, attrs, ins, outs):
    _, strides, pads = _conv(name, attrs, ins, outs)
    x, w = _as_int8("x", ins[0]), _as_int8("w", ins[1])
    bias = _as_int8("bias", ins[2]).astype(np.int32) if len(ins) > 2 else np.zeros(w.shape[0], np.int32)
    acc = golden.conv2d_acc(_nhwc4(x), 0, w.transpose(0, 2, 3, 1).copy(), bias, stride=strides, pads=pads)
    _exact(name, outs[0], quantize.nhwc_to_nchw(acc).astype(outs[0].dtype))


def run_convinteger(name, node, attrs, ins, outs):
    _, strides, pads = _conv(name, attrs, ins, outs)
    x, w = _u8(ins[0]), _as_int8("w", ins[1])
    zx = int(ins[2]) - 128 if len(ins) > 2 else -128
    assert len(ins) < 4 or not np.any(ins[3]), "weight zero points must be 0"
    acc = golden.conv2d_acc(_nhwc4(x), zx, w.transpose(0, 2, 3, 1).copy(), np.zeros(w.shape[0], np.int32),
                            stride=strides, pads=pads)
    _exact(name, outs[0], quantize.nhwc_to_nchw(acc))


def _split_int8(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centred uint8 weights ``w - zw`` (-255..255) as the sum of two int8 arrays: the convolution is
    linear, so two int8 accumulations add up to the exact accumulator."""
    hi = np.clip(w, -128, 127)
    return hi.astype(np.int8), _as_int8("w remainder", w - hi)


def run_qlinearconv(name, node, attrs, ins, outs):
    x, sx, zx, w, sw, zw, sy, zy = ins[:8]
    _, strides, pads = _conv(name, attrs, [x, w], outs)
    w1, w2 = _split_int8(w.astype(np.int32) - zw.astype(np.int32).reshape(-1, 1, 1, 1))
    bias = ins[8] if len(ins) > 8 else np.zeros(w.shape[0], np.int32)
    xq, groups = _nhwc4(_u8(x)), attrs.get("group", 1)
    acc = sum(golden.conv2d_acc(xq, int(zx) - 128, part.transpose(0, 2, 3, 1).copy(), b, stride=strides,
                                pads=pads, groups=groups)
              for part, b in ((w1, bias), (w2, np.zeros_like(bias))))
    mult = golden.requant_multiplier(float(sx), sw.reshape(-1), float(sy))
    y = golden.requantize(acc.astype(np.int32), mult, int(zy) - 128)
    _exact(name, outs[0], (quantize.nhwc_to_nchw(y).astype(np.int16) + 128).astype(np.uint8))


def run_qlinearmatmul(name, node, attrs, ins, outs):
    a, sa, za, b, sb, zb, sy, zy = ins
    a2, b2 = (a, b) if a.ndim == 3 else (a[None], b[None])
    ys = []
    for ai, bi in zip(a2, b2, strict=True):
        w1, w2 = _split_int8(bi.astype(np.int32).T - int(zb.reshape(-1)[0]))
        x4 = _u8(ai)[:, None, None, :]
        zero = np.zeros(w1.shape[0], np.int32)
        acc = sum(golden.conv2d_acc(x4, int(za.reshape(-1)[0]) - 128, part[:, None, None, :].copy(), zero)
                  for part in (w1, w2))[:, 0, 0, :]
        mult = golden.requant_multiplier(float(sa.reshape(-1)[0]), float(sb.reshape(-1)[0]),
                                         float(sy.reshape(-1)[0]))
        ys.append(golden.requantize(acc.astype(np.int32), mult, int(zy.reshape(-1)[0]) - 128))
    y = np.stack(ys) if a.ndim == 3 else ys[0]
    _exact(name, outs[0], (y.astype(np.int16) + 128).astype(np.uint8))


def run_maxpool(name, node, attrs, ins, outs):
    x = ins[0]
    kernel, strides, pads = _geometry(attrs, x.shape[2:])
    ceil = bool(attrs.get("ceil_mode", 0))
    want = outs[0] if outs[0].ndim == 4 else outs[0][:, :, None, :]
    if x.dtype == np.uint8:
        y = golden.max_pool(_nhwc4(_u8(x)), kernel, strides, pads, ceil)
        _exact(name, quantize.nchw_to_nhwc(want), (y.astype(np.int16) + 128).astype(np.uint8))
        return
    # Exact integer path for floats: max-pool the indicator images x >= t for every input value t.
    xh = _nhwc4(x)
    levels = np.unique(xh)
    ind = (xh[..., None] >= levels).astype(np.int8)  # (N, H, W, C, T)
    n, h, w, c, t = ind.shape
    pooled = golden.max_pool(ind.reshape(n, h, w, c * t), kernel, strides, pads, ceil)
    pooled = pooled.reshape(*pooled.shape[:3], c, t)
    # The output is the largest level whose indicator survived (levels are ascending).
    top = t - 1 - np.argmax(pooled[..., ::-1], axis=-1)
    assert np.all(pooled.max(axis=-1) == 1), f"{name}: a window held no input"
    _exact(name, quantize.nchw_to_nhwc(want), levels[top])


def run_averagepool(name, node, attrs, ins, outs):
    x = ins[0]
    if node.op_type == "GlobalAveragePool":
        kernel, strides, pads = tuple(x.shape[2:]), (1, 1), (0, 0, 0, 0)
    else:
        kernel, strides, pads = _geometry(attrs, x.shape[2:])
    ceil = bool(attrs.get("ceil_mode", 0))
    cip = bool(attrs.get("count_include_pad", 0))
    s = float(np.float32(np.abs(x).max() / 127))
    xq = golden.quantize(_nhwc4(x), s, 0)
    y = golden.avg_pool(xq, s, 0, s, 0, kernel, strides, pads, ceil, cip)
    # Bit-exact with onnxruntime on the same int8 data ...
    model = quantize.qlinear_average_pool(quantize.nhwc_to_nchw(xq).shape, s, 0, s, 0, kernel, strides, pads,
                                          ceil, cip)
    (ort,) = quantize.run(model, {"x": quantize.nhwc_to_nchw(xq)})
    _exact(name + " vs onnxruntime", quantize.nchw_to_nhwc(ort), y)
    # ... and within the quantization bound of ONNX's float result: inputs are off by <= s/2 (so their
    # average is too) and the output rounding adds <= s/2; 1e-5 covers float32 arithmetic.
    want = quantize.nchw_to_nhwc(outs[0] if outs[0].ndim == 4 else outs[0][:, :, None, :])
    err = np.abs(golden.dequantize(y, s, 0) - want)
    assert err.max() <= s * (1 + 1e-5), f"{name}: error {err.max()} above the bound {s}"


RUNNERS = {"Conv": run_conv, "ConvInteger": run_convinteger, "QLinearConv": run_qlinearconv,
           "QLinearMatMul": run_qlinearmatmul, "MaxPool": run_maxpool, "AveragePool": run_averagepool,
           "GlobalAveragePool": run_averagepool}


@pytest.mark.parametrize("name", _cases())
def test_conformance(name):
    if name in OUT_OF_SCOPE:
        pytest.skip(OUT_OF_SCOPE[name])
    node, attrs, sets = _load(name)
    assert sets, f"{name} has no test data"
    for ins, outs in sets:
        RUNNERS[node.op_type](name, node, attrs, ins, outs)
