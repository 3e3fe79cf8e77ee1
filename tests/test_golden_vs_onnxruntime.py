"""The golden ops are bit-exact with onnxruntime on randomized int8 x int8 QOperator models.

Shapes and parameters come from a seeded generator; the seed is printed and can be replayed with
``JACQUARD_SEED=<seed>``. Each test compares at least its ``MIN_COMPARED`` output elements, and the
minimums add up to more than 10**6 per run. Every mismatch is counted and the first one is reported.
"""

from __future__ import annotations

import os
import random

import numpy as np
import pytest

from jacquard.sim import golden, quantize

SEED = int(os.environ.get("JACQUARD_SEED", random.SystemRandom().randrange(2**32)))

MIN_COMPARED = {
    "conv": 400_000,
    "fc": 100_000,
    "max_pool": 150_000,
    "avg_pool": 150_000,
    "global_avg_pool": 5_000,
    "add": 400_000,
}
assert sum(MIN_COMPARED.values()) >= 10**6


def _rng(name: str) -> np.random.Generator:
    print(f"seed {SEED} (replay with JACQUARD_SEED={SEED})")
    return np.random.default_rng([SEED, sum(map(ord, name))])


def _int8(rng, shape) -> np.ndarray:
    return rng.integers(-128, 128, shape, dtype=np.int8)


def _qparams(rng, lo=0.002, hi=0.2) -> tuple[float, int]:
    return float(np.float32(rng.uniform(lo, hi))), int(rng.integers(-128, 128))


class Tally:
    """Counts compared elements and mismatches; keeps the first mismatch for the report."""

    def __init__(self, name: str):
        self.name, self.compared, self.mismatches, self.first = name, 0, 0, None

    def check(self, expected: np.ndarray, actual: np.ndarray, case: str) -> None:
        assert expected.shape == actual.shape, f"seed {SEED} {case}: shape {actual.shape} != {expected.shape}"
        diff = np.argwhere(expected != actual)
        self.compared += expected.size
        self.mismatches += len(diff)
        if len(diff) and self.first is None:
            idx = tuple(diff[0])
            self.first = f"{case} at {idx}: onnxruntime {expected[idx]}, golden {actual[idx]}"

    def finish(self) -> None:
        print(f"{self.name}: {self.compared} elements compared, {self.mismatches} mismatches")
        assert self.mismatches == 0, f"seed {SEED}: {self.mismatches} mismatches, first {self.first}"
        assert self.compared >= MIN_COMPARED[self.name], f"only {self.compared} elements compared"


def _spatial(rng, i: int):
    """Kernel, stride and asymmetric pads for case ``i``: every kernel 1..7 meets every stride 1..4."""
    kh, sh = 1 + i % 7, 1 + (i // 7) % 4
    kw, sw = int(rng.integers(1, 8)), int(rng.integers(1, 5))
    pads = tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))
    h = int(rng.integers(max(1, kh - pads[0] - pads[2]), 40))
    w = int(rng.integers(max(1, kw - pads[1] - pads[3]), 40))
    return (kh, kw), (sh, sw), pads, h, w


def test_qlinearconv():
    rng, tally, i = _rng("conv"), Tally("conv"), 0
    while tally.compared < MIN_COMPARED["conv"]:
        kernel, stride, pads, h, w = _spatial(rng, i)
        depthwise = i % 3 == 2
        c = int(rng.integers(1, 24))
        cout = c * int(rng.integers(1, 3)) if depthwise else int(rng.integers(1, 40))
        x = _int8(rng, (int(rng.integers(1, 3)), h, w, c))
        wgt = _int8(rng, (cout, *kernel, 1 if depthwise else c))
        bias = rng.integers(-20000, 20000, cout).astype(np.int32)
        sx, zx = _qparams(rng)
        sy, zy = _qparams(rng, 0.05, 2.0)
        per_channel = i % 4 != 3
        sw = np.float32(rng.uniform(0.001, 0.05, cout if per_channel else None))
        # Clamp bounds: none, ReLU (lo = zy) or ReLU6 (hi = the code of 6.0).
        kind = i % 5
        lo = zy if kind in (1, 2) else -128
        hi = int(np.clip(np.rint(6.0 / sy) + zy, lo, 127)) if kind == 2 else 127
        groups = c if depthwise else 1
        got = golden.qconv2d(x, zx, wgt, bias, golden.requant_multiplier(sx, sw, sy), zy, stride=stride,
                             pads=pads, groups=groups, lo=lo, hi=hi)
        model = quantize.qlinear_conv(quantize.nhwc_to_nchw(x).shape, sx, zx, wgt.transpose(0, 3, 1, 2), sw,
                                      sy, zy, bias, strides=stride, pads=pads, group=groups,
                                      lo=lo if kind in (1, 2) else None, hi=hi if kind == 2 else None)
        (want,) = quantize.run(model, {"x": quantize.nhwc_to_nchw(x)})
        case = (f"case {i}: x {x.shape} w {wgt.shape} kernel {kernel} stride {stride} pads {pads} "
                f"groups {groups} per_channel {per_channel} clamp {lo}..{hi}")
        tally.check(quantize.nchw_to_nhwc(want), got, case)
        i += 1
    tally.finish()


def test_fully_connected():
    rng, tally, i = _rng("fc"), Tally("fc"), 0
    while tally.compared < MIN_COMPARED["fc"]:
        n, k, m = int(rng.integers(1, 64)), int(rng.integers(1, 1200)), int(rng.integers(1, 96))
        x, wgt = _int8(rng, (n, k)), _int8(rng, (m, k))
        sx, zx = _qparams(rng)
        sy, zy = _qparams(rng, 0.1, 4.0)
        sw = float(np.float32(rng.uniform(0.001, 0.05)))
        mult = golden.requant_multiplier(sx, sw, sy)
        got = golden.fully_connected(x, zx, wgt, np.zeros(m, np.int32), mult, zy)
        model = quantize.qlinear_matmul(x.shape, sx, zx, np.ascontiguousarray(wgt.T), sw, sy, zy)
        (want,) = quantize.run(model, {"a": x})
        tally.check(want, got, f"QLinearMatMul case {i}: x {x.shape} w {wgt.shape}")
        # The accumulator with a bias against MatMulInteger + Add, exactly.
        bias = rng.integers(-(2**20), 2**20, m).astype(np.int32)
        acc = golden.conv2d_acc(x[:, None, None, :], zx, wgt[:, None, None, :], bias)[:, 0, 0, :]
        (want_acc,) = quantize.run(quantize.matmul_integer(x.shape, zx, np.ascontiguousarray(wgt.T), bias),
                                   {"a": x})
        tally.check(want_acc, acc, f"MatMulInteger case {i}: x {x.shape} w {wgt.shape}")
        i += 1
    tally.finish()


def _pool_case(rng, i: int):
    kernel, stride, pads, h, w = _spatial(rng, i)
    x = _int8(rng, (int(rng.integers(1, 3)), h, w, int(rng.integers(1, 24))))
    return x, kernel, stride, pads, bool(i % 2)


def test_max_pool():
    rng, tally, i = _rng("max_pool"), Tally("max_pool"), 0
    while tally.compared < MIN_COMPARED["max_pool"]:
        x, kernel, stride, pads, ceil_mode = _pool_case(rng, i)
        got = golden.max_pool(x, kernel, stride, pads, ceil_mode)
        xn = quantize.nhwc_to_nchw(x)
        (want,) = quantize.run(quantize.max_pool(xn.shape, kernel, stride, pads, ceil_mode), {"x": xn})
        tally.check(quantize.nchw_to_nhwc(want), got,
                    f"case {i}: x {x.shape} kernel {kernel} stride {stride} pads {pads} ceil {ceil_mode}")
        i += 1
    tally.finish()


def test_avg_pool():
    rng, tally, i = _rng("avg_pool"), Tally("avg_pool"), 0
    while tally.compared < MIN_COMPARED["avg_pool"]:
        x, kernel, stride, pads, ceil_mode = _pool_case(rng, i)
        if i % 11 == 0:  # kernel = image, no pads: onnxruntime's global-average path
            x, pads = _int8(rng, (x.shape[0], *kernel, x.shape[3])), (0, 0, 0, 0)
        count_include_pad = bool((i // 2) % 2)
        sx, zx = _qparams(rng)
        sy, zy = _qparams(rng)
        try:
            got = golden.avg_pool(x, sx, zx, sy, zy, kernel, stride, pads, ceil_mode, count_include_pad)
        except ValueError:
            # Only the global path refuses parameters (as MLAS does); draw again.
            i += 1
            continue
        model = quantize.qlinear_average_pool(quantize.nhwc_to_nchw(x).shape, sx, zx, sy, zy, kernel, stride,
                                              pads, ceil_mode, count_include_pad)
        (want,) = quantize.run(model, {"x": quantize.nhwc_to_nchw(x)})
        tally.check(quantize.nchw_to_nhwc(want), got,
                    f"case {i}: x {x.shape} kernel {kernel} stride {stride} pads {pads} ceil {ceil_mode} "
                    f"count_include_pad {count_include_pad} scales {sx} {zx} {sy} {zy}")
        i += 1
    tally.finish()


def test_global_avg_pool():
    rng, tally, i = _rng("global_avg_pool"), Tally("global_avg_pool"), 0
    while tally.compared < MIN_COMPARED["global_avg_pool"]:
        x = _int8(rng, (int(rng.integers(1, 4)), int(rng.integers(1, 30)), int(rng.integers(1, 30)),
                        int(rng.integers(1, 200))))
        sx, zx = _qparams(rng)
        sy = float(np.float32(sx * rng.uniform(0.05, 3.0)))
        zy = int(rng.integers(-128, 128))
        got = golden.global_avg_pool(x, sx, zx, sy, zy)
        model = quantize.qlinear_global_average_pool(quantize.nhwc_to_nchw(x).shape, sx, zx, sy, zy)
        (want,) = quantize.run(model, {"x": quantize.nhwc_to_nchw(x)})
        tally.check(quantize.nchw_to_nhwc(want), got, f"case {i}: x {x.shape} scales {sx} {zx} {sy} {zy}")
        i += 1
    tally.finish()


def test_add():
    """Random shapes, and every one of the 65536 ``(a, b)`` pairs on every other parameter set: a
    differently rounded constant term (an fma contracted the other way) shows up only on a few pairs
    per million, so the full grid is what pins it down."""
    values = np.arange(-128, 128, dtype=np.int8)
    grid_a = np.ascontiguousarray(np.broadcast_to(values[:, None], (256, 256))).reshape(1, 256, 256, 1)
    grid_b = np.ascontiguousarray(grid_a.transpose(0, 2, 1, 3))
    rng, tally, i = _rng("add"), Tally("add"), 0
    while tally.compared < MIN_COMPARED["add"]:
        if i % 2:
            a, b, shape = grid_a, grid_b, grid_a.shape
        else:
            # Odd sizes exercise MLAS's 32-element main loop and its tail.
            shape = (1, int(rng.integers(1, 40)), int(rng.integers(1, 40)), int(rng.integers(1, 70)))
            a, b = _int8(rng, shape), _int8(rng, shape)
        (sa, za), (sb, zb), (sy, zy) = _qparams(rng), _qparams(rng), _qparams(rng)
        got = golden.add(a, sa, za, b, sb, zb, sy, zy)
        (want,) = quantize.run(quantize.qlinear_add(shape, sa, za, sb, zb, sy, zy), {"a": a, "b": b})
        tally.check(want, got, f"case {i}: shape {shape} scales {sa} {za} {sb} {zb} {sy} {zy}")
        i += 1
    tally.finish()


@pytest.mark.parametrize("slope_kind", ["per_channel", "scalar"])
def test_prelu_lut_matches_onnxruntime(slope_kind):
    """A PRelu table built from NumPy equals onnxruntime's DQ -> PRelu -> Q on all 256 inputs."""
    rng = _rng(f"prelu-{slope_kind}")
    for _ in range(20):
        c = int(rng.integers(1, 40))
        slope = rng.uniform(-0.5, 1.0, c if slope_kind == "per_channel" else 1).astype(np.float32)
        (sx, zx), (sy, zy) = _qparams(rng), _qparams(rng)
        lut = golden.build_lut(lambda v, s=slope: np.where(v < 0, v * s[:, None], v), sx, zx, sy, zy)
        want = quantize.lut_from_onnxruntime("PRelu", sx, zx, sy, zy, channels=c,
                                             extra_inputs={"slope": slope.reshape(-1, 1, 1)})
        got = np.broadcast_to(lut, want.shape)
        bad = np.argwhere(got != want)
        assert not len(bad), f"seed {SEED}: first mismatch {tuple(bad[0])}: {want[tuple(bad[0])]} != " \
                             f"{got[tuple(bad[0])]}"
