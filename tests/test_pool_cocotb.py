"""Pool under cocotb: max pooling vs golden.max_pool and global sums, on Icarus and Verilator."""

from pathlib import Path

import numpy as np
import pytest

from jacquard.rtl.pool import Pool
from jacquard.sim import golden
from jacquard.sim.cocotb_run import run_cocotb
from jacquard.sim.taps import tap_stream

COCOTB_DIR = Path(__file__).parent / "cocotb"


def run(tmp_path, simulator, seed, c_par, mode, gap, big=False):
    rng = np.random.default_rng(seed)
    extra = 20 if big else 4
    if mode == "max":
        kh, kw = int(rng.integers(1, 8 if big else 4)), int(rng.integers(1, 8 if big else 4))
        stride = int(rng.integers(1, 5 if big else 3))
        pads = tuple(int(rng.integers(0, k)) for k in (kh, kw, kh, kw))
        h, w = int(rng.integers(kh, kh + extra)), int(rng.integers(kw, kw + extra))
    else:
        h, w = int(rng.integers(1, 2 * extra)), int(rng.integers(1, 2 * extra))
        kh, kw, stride, pads = h, w, 1, (0, 0, 0, 0)
    c = c_par * int(rng.integers(1, 4))
    x = rng.integers(-128, 128, size=(1, h, w, c), dtype=np.int8)
    if mode == "max":
        want = golden.max_pool(x, (kh, kw), (stride, stride), pads).reshape(-1, c_par)
        taps, first, last = tap_stream(x, -128, kh, kw, stride, pads, c_par, 1, depthwise=True)
    else:
        want = x.astype(np.int64).sum(axis=(0, 1, 2)).reshape(-1, c_par)
        taps, first, last = tap_stream(x, 0, h, w, 1, pads, c_par, 1, depthwise=True)
    path = tmp_path / "case.npz"
    np.savez(path, taps=taps, first=first, last=last, want=want, mode=0 if mode == "max" else 1,
             per_window=kh * kw)
    desc = f"{mode} {h}x{w}x{c} k={kh}x{kw} s={stride} pads={pads}"
    run_cocotb(Pool(c_par), "cocotb_pool", simulator=simulator, test_dir=COCOTB_DIR, name=f"pool_{c_par}",
               parameters={"seed": seed, "c_par": c_par, "gap": gap, "case": str(path), "desc": desc})


@pytest.mark.parametrize(("seed", "mode"), [(71, "max"), (72, "sum")])
def test_pool_icarus(tmp_path, seed, mode):
    run(tmp_path, "icarus", seed, 4, mode, 0.3)


@pytest.mark.parametrize(("seed", "mode"), [(81, "max"), (82, "sum")])
def test_pool_verilator(tmp_path, seed, mode):
    run(tmp_path, "verilator", seed, 8, mode, 0.3)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(300, 316))
def test_pool_verilator_many(tmp_path, seed):
    run(tmp_path, "verilator", seed, 8, "max" if seed % 4 else "sum", [0.0, 0.3, 0.6][seed % 3], big=True)
