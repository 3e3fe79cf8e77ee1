"""The tap-stream reference (jacquard.sim.taps) against the golden model: the order contract.

Multiplying the stream with weights packed as the PE array holds them (oc_tile, ky, kx, c_tile
blocks) and adding ``bias - zx * sum(w)`` must give ``golden.conv2d_acc`` exactly, for every
padding, stride and kernel; the depthwise order must give the depthwise convolution.
"""

import random

import numpy as np
import pytest

from jacquard.sim import golden
from jacquard.sim.taps import conv_from_taps, depthwise_from_taps, output_shape, pack_weights, tap_stream


def random_layer(seed: int, depthwise: bool = False):
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    c_par, oc_par = rng.choice([(4, 4), (8, 16), (2, 8)])
    kh, kw, stride = rng.randint(1, 7), rng.randint(1, 7), rng.randint(1, 4)
    pads = (rng.randint(0, kh - 1), rng.randint(0, kw - 1), rng.randint(0, kh - 1), rng.randint(0, kw - 1))
    h = rng.randint(max(1, kh - pads[0] - pads[2]), 12)
    w = rng.randint(max(1, kw - pads[1] - pads[3]), 12)
    cin = c_par * rng.randint(1, 3)
    cout = cin if depthwise else rng.randint(1, 3 * oc_par)
    x = nrng.integers(-128, 128, size=(1, h, w, cin), dtype=np.int8)
    wt = nrng.integers(-128, 128, size=(cout, kh, kw, 1 if depthwise else cin), dtype=np.int8)
    bias = nrng.integers(-(1 << 20), 1 << 20, size=cout, dtype=np.int32)
    zx = rng.randint(-128, 127)
    return c_par, oc_par, (kh, kw, stride, pads), x, wt, bias, zx


def first_mismatch(got: np.ndarray, want: np.ndarray) -> str:
    idx = tuple(int(i) for i in np.argwhere(got != want)[0])
    return f"first mismatch at {idx}: expected {want[idx]}, got {got[idx]}"


@pytest.mark.parametrize("seed", range(40))
def test_taps_times_packed_weights_is_golden_conv(seed):
    c_par, oc_par, (kh, kw, stride, pads), x, wt, bias, zx = random_layer(seed)
    n_oc_tiles = -(-wt.shape[0] // oc_par)
    taps, first, last = tap_stream(x, zx, kh, kw, stride, pads, c_par, n_oc_tiles)
    acc = conv_from_taps(taps, first, last, pack_weights(wt, oc_par, c_par)).astype(np.int64)
    oh, ow = output_shape(x.shape[1], x.shape[2], kh, kw, stride, pads)
    # (position, oc tile) rows -> NHWC with the padded output channels dropped.
    acc = acc.reshape(1, oh, ow, n_oc_tiles * oc_par)[..., :wt.shape[0]]
    folded = bias.astype(np.int64) - zx * wt.astype(np.int64).sum(axis=(1, 2, 3))
    got = acc + folded
    want = golden.conv2d_acc(x, zx, wt, bias, stride=stride, pads=pads)
    assert got.shape == want.shape
    assert np.array_equal(got, want), f"seed={seed}: {first_mismatch(got, want)}"


@pytest.mark.parametrize("seed", range(20))
def test_depthwise_taps_are_golden_depthwise_conv(seed):
    c_par, _, (kh, kw, stride, pads), x, wt, bias, zx = random_layer(seed, depthwise=True)
    taps, first, last = tap_stream(x, zx, kh, kw, stride, pads, c_par, 1, depthwise=True)
    acc = depthwise_from_taps(taps, first, last, wt).astype(np.int64)
    oh, ow = output_shape(x.shape[1], x.shape[2], kh, kw, stride, pads)
    got = acc.reshape(1, oh, ow, -1) + bias - zx * wt.astype(np.int64).sum(axis=(1, 2, 3))
    want = golden.conv2d_acc(x, zx, wt, bias, stride=stride, pads=pads, groups=x.shape[3])
    assert np.array_equal(got, want), f"seed={seed}: {first_mismatch(got, want)}"


def test_flags_and_repeats():
    x = np.arange(2 * 3 * 4, dtype=np.int8).reshape(2, 3, 4)
    taps, first, last = tap_stream(x, -5, 2, 2, 1, (1, 0, 0, 1), 2, 3)
    # 2x3 outputs, 3 oc tiles, 2*2*2 taps each; every window repeated unchanged for each oc tile.
    assert taps.shape == (2 * 3 * 3 * 8, 2)
    windows = taps.reshape(6, 3, 8, 2)
    assert (windows == windows[:, :1]).all()
    assert first.nonzero()[0].tolist() == list(range(0, 144, 8))
    assert last.nonzero()[0].tolist() == list(range(7, 144, 8))
    # Output (0, 0): ky=0 is the top padding row, ky=1 is input row 0 (columns 0, 1).
    assert windows[0, 0].tolist() == [[-5, -5]] * 4 + [[0, 1], [2, 3], [4, 5], [6, 7]]


def test_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiple of c_par"):
        tap_stream(np.zeros((2, 2, 6), np.int8), 0, 1, 1, 1, (0, 0, 0, 0), 4, 1)
    with pytest.raises(ValueError, match="does not fit"):
        tap_stream(np.zeros((2, 2, 4), np.int8), 0, 3, 3, 1, (0, 0, 0, 0), 4, 1)
