"""Unit checks of the golden ops: bad input is refused by name, and local properties hold exactly."""

from __future__ import annotations

import os
import random
from fractions import Fraction

import numpy as np
import pytest

from jacquard.sim import golden
from jacquard.sim.golden_numerics import _fma_f32

SEED = int(os.environ.get("JACQUARD_SEED", random.SystemRandom().randrange(2**32)))

X = np.zeros((1, 8, 8, 4), np.int8)
W = np.zeros((6, 3, 3, 4), np.int8)
B = np.zeros(6, np.int32)


@pytest.mark.parametrize(("call", "names"), [
    (lambda: golden.conv2d_acc(X.astype(np.uint8), 0, W, B), "x"),
    (lambda: golden.conv2d_acc(X[0], 0, W, B), "x"),
    (lambda: golden.conv2d_acc(X, 0, W.astype(np.int16), B), "w"),
    (lambda: golden.conv2d_acc(X, 0, W, B.astype(np.int64)), "bias"),
    (lambda: golden.conv2d_acc(X, 0, W, B[:5]), "bias"),
    (lambda: golden.conv2d_acc(X, 0, np.zeros((6, 8, 8, 4), np.int8), B), "kernel"),
    (lambda: golden.conv2d_acc(X, 0, W, B, stride=0), "stride"),
    (lambda: golden.conv2d_acc(X, 0, W, B, stride=(1, 5)), "stride"),
    (lambda: golden.conv2d_acc(X, 0, W, B, pads=(3, 0, 0, 0)), "pads"),
    (lambda: golden.conv2d_acc(X, 0, W, B, pads=(-1, 0, 0, 0)), "pads"),
    (lambda: golden.conv2d_acc(X, 128, W, B), "x_zero_point"),
    (lambda: golden.conv2d_acc(X, -129, W, B), "x_zero_point"),
    (lambda: golden.conv2d_acc(X, 0.5, W, B), "x_zero_point"),
    (lambda: golden.conv2d_acc(X, 0, W, B, groups=2), "groups"),
    (lambda: golden.conv2d_acc(X, 0, np.zeros((6, 3, 3, 3), np.int8), B), "w.shape[3]"),
    (lambda: golden.conv2d_acc(X[:, :2, :2], 0, W, B), "smaller than the kernel"),
    (lambda: golden.requant_multiplier(0.0, 1.0, 1.0), "sx"),
    (lambda: golden.requant_multiplier(1.0, np.array([1.0, -1.0]), 1.0), "sw"),
    (lambda: golden.requant_multiplier(1.0, 1.0, float("inf")), "sy"),
    (lambda: golden.requant_multiplier(1.0, 1.0, float("nan")), "sy"),
    (lambda: golden.requant_multiplier(1e-46, 1.0, 1.0), "sx"),  # 0 as float32
    (lambda: golden.requantize(np.zeros((2, 6), np.int64), 1.0, 0), "acc"),
    (lambda: golden.requantize(np.zeros((2, 6), np.int32), np.ones(5, np.float32), 0), "multiplier"),
    (lambda: golden.requantize(np.zeros((2, 6), np.int32), 1.0, 200), "zero_point"),
    (lambda: golden.requantize(np.zeros((2, 6), np.int32), 1.0, 0, lo=10, hi=5), "lo"),
    (lambda: golden.requantize(np.zeros((2, 6), np.int32), 1.0, 0, hi=128), "hi"),
    (lambda: golden.apply_lut(X, np.zeros(255, np.int8)), "lut"),
    (lambda: golden.apply_lut(X, np.zeros((3, 256), np.int8)), "lut"),
    (lambda: golden.apply_lut(X.astype(np.int32), np.zeros(256, np.int8)), "x"),
    (lambda: golden.build_lut(lambda v: v[:10], 1.0, 0, 1.0, 0), "fn"),
    (lambda: golden.build_lut(lambda v: v, -1.0, 0, 1.0, 0), "x_scale"),
    (lambda: golden.max_pool(X, 8, 1), "kernel"),
    (lambda: golden.max_pool(X, 2, 0), "stride"),
    (lambda: golden.max_pool(X, 2, 1, (2, 0, 0, 0)), "pads"),
    (lambda: golden.avg_pool(X, 1.0, 0, 0.0, 0, 2, 1), "y_scale"),
    (lambda: golden.avg_pool(X, 1.0, 300, 1.0, 0, 2, 1), "x_zero_point"),
    (lambda: golden.global_avg_pool(X, 1.0, 0, 1.0, -200), "y_zero_point"),
    (lambda: golden.global_avg_pool(X, 1.0, 0, 1e-9, 0), "outside what onnxruntime accepts"),
    (lambda: golden.add(X, 1.0, 0, X[:, :4], 1.0, 0, 1.0, 0), "b"),
    (lambda: golden.add(X, 1.0, 0, X, float("inf"), 0, 1.0, 0), "b_scale"),
    (lambda: golden.fully_connected(X, 0, W, B, 1.0, 0), "x"),
])
def test_bad_input_is_refused_by_name(call, names):
    with pytest.raises(ValueError, match=names.replace("[", r"\[").replace("]", r"\]")):
        call()


def test_accumulator_overflow_is_refused():
    x = np.full((1, 7, 7, 20000), 127, np.int8)
    w = np.full((1, 7, 7, 20000), -128, np.int8)
    with pytest.raises(ValueError, match="overflows int32"):
        golden.conv2d_acc(x, -128, w, np.zeros(1, np.int32))


def test_requantize_rounds_half_to_even_and_clamps():
    acc = np.array([[1, 3, 5, -1, -3, 1000, -1000]], np.int32)
    y = golden.requantize(acc, np.float32(0.5), 0)
    assert y.tolist() == [[0, 2, 2, 0, -2, 127, -128]]
    relu = golden.requantize(acc, np.float32(0.5), 10, lo=10, hi=12)
    assert relu.tolist() == [[10, 12, 12, 10, 10, 12, 10]]


def test_conv_identity_kernel_reproduces_input():
    rng = np.random.default_rng(SEED)
    x = rng.integers(-128, 128, (2, 5, 7, 3), dtype=np.int8)
    w = np.zeros((3, 3, 3, 3), np.int8)
    w[np.arange(3), 1, 1, np.arange(3)] = 1
    acc = golden.conv2d_acc(x, -7, w, np.zeros(3, np.int32), pads=(1, 1, 1, 1))
    assert np.array_equal(acc, x.astype(np.int32) + 7), f"seed {SEED}"


def test_long_dot_products_stay_exact():
    """More than 512 terms per output (the float32 GEMM chunking) at the extreme values."""
    rng = np.random.default_rng(SEED)
    x = rng.choice(np.array([-128, 127], np.int8), (1, 4, 4, 700))
    w = rng.choice(np.array([-128, 127], np.int8), (5, 3, 3, 700))
    acc = golden.conv2d_acc(x, 127, w, np.arange(5, dtype=np.int32))
    want = np.einsum("nhwc,ohwc->no", (x[:, :3, :3].astype(np.int64) - 127), w.astype(np.int64))
    assert acc[:, 0, 0].tolist() == (want + np.arange(5)).tolist(), f"seed {SEED}"


def test_depthwise_with_multiplier_matches_ungrouped_equivalent():
    rng = np.random.default_rng(SEED)
    x = rng.integers(-128, 128, (1, 9, 9, 3), dtype=np.int8)
    wd = rng.integers(-128, 128, (6, 3, 3, 1), dtype=np.int8)
    dense = np.zeros((6, 3, 3, 3), np.int8)
    for o in range(6):
        dense[o, :, :, o // 2] = wd[o, :, :, 0]
    bias = rng.integers(-100, 100, 6).astype(np.int32)
    got = golden.conv2d_acc(x, 5, wd, bias, stride=2, pads=(1, 0, 1, 2), groups=3)
    want = golden.conv2d_acc(x, 5, dense, bias, stride=2, pads=(1, 0, 1, 2))
    assert np.array_equal(got, want), f"seed {SEED}"


def test_lut_per_tensor_and_per_channel():
    rng = np.random.default_rng(SEED)
    x = rng.integers(-128, 128, (2, 3, 4, 5), dtype=np.int8)
    lut = rng.integers(-128, 128, 256, dtype=np.int8)
    assert np.array_equal(golden.apply_lut(x, lut), lut[x.astype(int) + 128])
    luts = rng.integers(-128, 128, (5, 256), dtype=np.int8)
    got = golden.apply_lut(x, luts)
    for c in range(5):
        assert np.array_equal(got[..., c], luts[c][x[..., c].astype(int) + 128]), f"seed {SEED}"


def test_build_lut_identity_is_identity():
    lut = golden.build_lut(lambda v: v, 0.1, 3, 0.1, 3)
    assert lut.tolist() == list(range(-128, 128))


def test_fma_emulation_is_correctly_rounded():
    """``_fma_f32`` equals the exactly rounded ``a * b + c``, including crafted float32 ties."""
    rng = np.random.default_rng(SEED)
    a = rng.integers(-128, 128, 4000).astype(np.float32)
    b = np.float32(rng.uniform(0.001, 4, 4000))
    c = np.float32(rng.uniform(-300, 300, 4000))
    # Float32 ties that float64 cannot see: with c = m in [2**20, 2**21) (float32 ulp 2**-3) and
    # a * b = +-(2**-4 - 2**-50), the float64 sum rounds to the midpoint m +- 2**-4, and only the lost
    # 2**-50 says which way the float32 result must go.
    a[:1000] = np.float32(1 + 2.0**-23) * rng.choice(np.array([-1, 1], np.float32), 1000)
    b[:1000] = np.float32(2.0**-4 * (1 - 2.0**-23))
    c[:1000] = np.float32(rng.integers(2**23, 2**24, 1000) * 2.0**-3)
    got = _fma_f32(a, b, c)
    for ai, bi, ci, gi in zip(a, b, c, got, strict=True):
        exact = Fraction(float(ai)) * Fraction(float(bi)) + Fraction(float(ci))
        assert Fraction(float(gi)) == _round_f32(exact), f"seed {SEED}: fma({ai}, {bi}, {ci})"


def _round_f32(q: Fraction) -> Fraction:
    """Round a rational to the nearest float32, ties to even (reference for the FMA check)."""
    lo = np.float32(float(q))
    lo = lo if Fraction(float(lo)) <= q else np.nextafter(lo, np.float32(-np.inf))
    hi = np.nextafter(lo, np.float32(np.inf))
    dlo, dhi = q - Fraction(float(lo)), Fraction(float(hi)) - q
    if dlo != dhi:
        return Fraction(float(lo if dlo < dhi else hi))
    even = lo if (np.float32(lo).view(np.int32) & 1) == 0 else hi
    return Fraction(float(even))


def test_avg_pool_whole_image_takes_global_path():
    rng = np.random.default_rng(SEED)
    x = rng.integers(-128, 128, (2, 5, 6, 7), dtype=np.int8)
    assert np.array_equal(golden.avg_pool(x, 0.05, 3, 0.02, -4, (5, 6), 1),
                          golden.global_avg_pool(x, 0.05, 3, 0.02, -4)), f"seed {SEED}"


@pytest.mark.parametrize(("size", "k", "s", "pads", "ceil", "out"), [
    (5, 2, 2, (0, 0), False, 2), (5, 2, 2, (0, 0), True, 3), (4, 3, 2, (1, 1), True, 3),
    (4, 3, 2, (1, 0), True, 2), (32, 3, 2, (0, 0), True, 16), (7, 3, 3, (1, 0), True, 3),
])
def test_pool_output_size(size, k, s, pads, ceil, out):
    assert golden.pool_output_size(size, k, s, *pads, ceil_mode=ceil) == out
