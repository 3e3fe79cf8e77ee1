"""The chain line buffer -> PE array -> post-processing (rtl/datapath.py) under cocotb, vs the golden model.

A random int8 conv layer (``golden.qconv2d`` semantics: ``conv2d_acc`` then ``requantize``) runs
through the chain: weights through the PE array's load stream, channel parameters through the
post-processor's, pixels into the line buffer, int8 outputs compared bit-exactly. The bench also
counts cycles, which ``tests/bench/bench_datapath.py`` turns into MAC utilization.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from jacquard.rtl.datapath import Datapath, block_sizes
from jacquard.rtl.line_buffer import LineBufferConfig
from jacquard.sim import golden
from jacquard.sim.cocotb_run import run_cocotb
from jacquard.sim.taps import pack_weights

COCOTB_DIR = Path(__file__).parent / "cocotb"


def make_layer(rng: np.random.Generator, config: str, h: int, w: int, cin: int, cout: int, k: int,
               stride: int = 1, pad: int | None = None, depthwise: bool = False) -> dict:
    """A random quantized conv layer, in the form the chain's bench loads it, with its golden output.

    Input channels are zero-padded to a multiple of ``c_par`` (their weights are 0). In depthwise
    mode ``cout == cin`` and lane ``c < c_par`` of output tile ``t`` is channel ``t * c_par + c``.
    """
    s = block_sizes(config)
    c_par, oc_par = s["c_par"], s["oc_par"]
    pad = k // 2 if pad is None else pad
    cp = -(-cin // c_par) * c_par
    zx, zy = int(rng.integers(-128, 128)), int(rng.integers(-128, 128))
    lo, hi = (zy, 127) if rng.random() < 0.5 else (-128, 127)
    x = rng.integers(-128, 128, size=(1, h, w, cin), dtype=np.int8)
    groups = cin if depthwise else 1
    wts = rng.integers(-128, 128, size=(cout, k, k, 1 if depthwise else cin), dtype=np.int8)
    bias = rng.integers(-(1 << 16), 1 << 16, size=cout, dtype=np.int32)
    pads = (pad, pad, pad, pad)
    acc = golden.conv2d_acc(x, zx, wts, bias, stride=(stride, stride), pads=pads, groups=groups)
    # Scales that keep the outputs spread over the int8 range (a layer of all-clamped outputs
    # would check little).
    spread = float(np.abs(acc).max()) or 1.0
    mult = golden.requant_multiplier(1.0, np.full(cout, 100.0 / spread, dtype=np.float32), 1.0)
    want = golden.requantize(acc, mult, zy, lo, hi)[0]
    folded = (bias.astype(np.int64) - zx * wts.astype(np.int64).sum(axis=(1, 2, 3))).astype(np.int32)
    xp = np.zeros((h, w, cp), dtype=np.int8)
    xp[:, :, :cin] = x[0]
    if depthwise:
        if cp != cin:
            raise ValueError(f"depthwise needs cin a multiple of c_par ({c_par}), not {cin!r}")
        n_tiles, taps = cin // c_par, k * k
        blocks = np.zeros((n_tiles, k, k, oc_par, c_par), dtype=np.int8)
        chan = np.full((n_tiles, oc_par), -1)
        for t in range(n_tiles):
            for c in range(c_par):
                blocks[t, :, :, c, c] = wts[t * c_par + c, :, :, 0]
                chan[t, c] = t * c_par + c
        rows = blocks.reshape(-1, c_par)
        lb_tiles = 1
    else:
        n_tiles, taps = -(-cout // oc_par), k * k * cp // c_par
        rows = pack_weights(wts, oc_par, c_par).reshape(-1, c_par)
        chan = np.arange(n_tiles * oc_par).reshape(n_tiles, oc_par)
        chan[chan >= cout] = -1
        lb_tiles = n_tiles
    real = chan >= 0
    p_bias = np.where(real, folded[np.maximum(chan, 0)], 0).astype(np.int32)
    p_mult = np.where(real, mult[np.maximum(chan, 0)], np.float32(0)).astype(np.float32)
    lb = {"width": w, "height": h, "channels": cp, "kh": k, "kw": k, "stride": stride, "pad_top": pad,
          "pad_left": pad, "pad_bottom": pad, "pad_right": pad, "zero_point": zx, "oc_tiles": lb_tiles,
          "depthwise": int(depthwise)}
    oh, ow = want.shape[:2]
    macs = oh * ow * cout * k * k * (1 if depthwise else cin)
    return {"x": xp, "rows": rows, "bias": p_bias.reshape(-1), "mult": p_mult.reshape(-1).view(np.uint32),
            "chan": chan.reshape(-1), "want": want.reshape(oh * ow, cout).astype(np.int8),
            "lb_config": int(LineBufferConfig().const(lb).as_bits()), "taps": taps, "n_tiles": n_tiles,
            "depthwise": int(depthwise), "zy": zy, "lo": lo, "hi": hi, "macs": macs,
            "desc": f"{'dw ' if depthwise else ''}{k}x{k} s{stride} {h}x{w}x{cin}->{cout}"}


def run_layer(tmp_path: Path, simulator: str, config: str, layer: dict, seed: int, gap: float) -> dict:
    """Run one layer through the chain; return the bench's figures (cycles, MAC-active cycles)."""
    case = tmp_path / "case.npz"
    np.savez(case, **{k: v for k, v in layer.items() if isinstance(v, np.ndarray)})
    result = tmp_path / "result.json"
    s = block_sizes(config)
    scalars = {k: v for k, v in layer.items() if not isinstance(v, np.ndarray)}
    run_cocotb(Datapath(config), "cocotb_datapath", simulator=simulator, test_dir=COCOTB_DIR,
               name=f"datapath_{config.replace('-', '_')}",
               parameters={"seed": seed, "gap": gap, "case": str(case), "result": str(result),
                           "c_par": s["c_par"], "oc_par": s["oc_par"], **scalars})
    return json.loads(result.read_text())


@pytest.mark.parametrize(("seed", "shape"), [
    (1, dict(h=5, w=6, cin=8, cout=6, k=3)),
    (2, dict(h=4, w=5, cin=4, cout=4, k=3, depthwise=True)),
])
def test_datapath_icarus(tmp_path, seed, shape):
    layer = make_layer(np.random.default_rng(seed), "sim-small", **shape)
    run_layer(tmp_path, "icarus", "sim-small", layer, seed, gap=0.3)


@pytest.mark.parametrize(("seed", "shape"), [
    (3, dict(h=7, w=9, cin=12, cout=10, k=3, stride=2)),
    (4, dict(h=6, w=6, cin=3, cout=8, k=1)),
])
def test_datapath_verilator(tmp_path, seed, shape):
    layer = make_layer(np.random.default_rng(seed), "sim-small", **shape)
    run_layer(tmp_path, "verilator", "sim-small", layer, seed, gap=0.3)


@pytest.mark.slow
def test_datapath_verilator_reference_array(tmp_path):
    """The ULX3S-85F array (16x8) on a small 3x3 layer, full rate: bit-exact and the MACs busy."""
    layer = make_layer(np.random.default_rng(5), "ulx3s-85f", h=8, w=8, cin=16, cout=32, k=3)
    got = run_layer(tmp_path, "verilator", "ulx3s-85f", layer, 5, gap=0.0)
    assert got["mac_active"] == layer["taps"] * layer["n_tiles"] * 64
