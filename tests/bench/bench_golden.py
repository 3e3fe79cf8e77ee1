"""Benchmark: golden conv2d (vectorized NumPy) against onnxruntime's int8 x int8 QLinearConv.

Run ``python tests/bench/bench_golden.py`` (or ``nox -s bench -- golden``). It times both on the same
layers (3x3 64->64 at 56x56, and a first layer 3->16 at 224x224), checks they agree bit for bit,
prints the ratios and writes the ``golden-conv`` section of docs/RESULTS.md. The goal is a golden
model within 3x of onnxruntime.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np
import onnxruntime

from jacquard.host.results import write_section
from jacquard.sim import golden, quantize

LAYERS = [
    # name, (H, W, Cin), Cout, kernel, stride, pads
    ("3x3 64->64 @ 56x56", (56, 56, 64), 64, 3, 1, (1, 1, 1, 1)),
    ("3x3 3->16 @ 224x224 (first layer)", (224, 224, 3), 16, 3, 1, (1, 1, 1, 1)),
]
GOAL = 3.0


def _best(fn, repeat: int) -> float:
    fn()  # warm up (allocations, onnxruntime's prepacking)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def bench_layer(shape, cout, k, stride, pads, rng, repeat: int = 15) -> tuple[float, float]:
    h, w, cin = shape
    x = rng.integers(-128, 128, (1, h, w, cin), dtype=np.int8)
    wgt = rng.integers(-128, 128, (cout, k, k, cin), dtype=np.int8)
    bias = rng.integers(-5000, 5000, cout).astype(np.int32)
    sx, sy, zx, zy = 0.02, 0.5, 3, -7
    sw = rng.uniform(0.001, 0.01, cout).astype(np.float32)
    mult = golden.requant_multiplier(sx, sw, sy)
    model = quantize.qlinear_conv(quantize.nhwc_to_nchw(x).shape, sx, zx, wgt.transpose(0, 3, 1, 2), sw, sy,
                                  zy, bias, strides=(stride, stride), pads=pads)
    sess = quantize.session(model)
    xn = quantize.nhwc_to_nchw(x)
    (want,) = sess.run(None, {"x": xn})
    got = golden.qconv2d(x, zx, wgt, bias, mult, zy, stride=stride, pads=pads)
    assert np.array_equal(quantize.nchw_to_nhwc(want), got), "golden and onnxruntime disagree"
    t_ort = _best(lambda: sess.run(None, {"x": xn}), repeat)
    t_gold = _best(lambda: golden.qconv2d(x, zx, wgt, bias, mult, zy, stride=stride, pads=pads), repeat)
    return t_gold, t_ort


def main() -> None:
    rng = np.random.default_rng(0)
    rows = []
    for name, shape, cout, k, stride, pads in LAYERS:
        t_gold, t_ort = bench_layer(shape, cout, k, stride, pads, rng)
        ratio = t_gold / t_ort
        rows.append((name, t_gold, t_ort, ratio))
        print(f"{name}: golden {t_gold * 1e3:.2f} ms, onnxruntime {t_ort * 1e3:.2f} ms, ratio {ratio:.2f}x "
              f"({'within' if ratio <= GOAL else 'ABOVE'} the {GOAL:.0f}x goal)")
    table = ["| layer | golden conv2d (ms) | onnxruntime QLinearConv (ms) | ratio (goal <= 3x) |",
             "|---|---:|---:|---:|"]
    table += [f"| {n} | {g * 1e3:.2f} | {o * 1e3:.2f} | {r:.2f}x |" for n, g, o, r in rows]
    host = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}, "
            f"onnxruntime {onnxruntime.__version__}; best of 15 runs, batch 1, outputs checked bit-exact.")
    text = "## Golden model speed: conv2d vs onnxruntime\n\n" + "\n".join(table) + "\n\n" + host
    write_section("golden-conv", text, command="nox -s bench")


if __name__ == "__main__":
    main()
