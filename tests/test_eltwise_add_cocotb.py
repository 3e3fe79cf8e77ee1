"""EltwiseAdd under cocotb against golden.add: Icarus (short), Verilator (more values; slow: many seeds)."""

from pathlib import Path

import numpy as np
import pytest
from test_eltwise_add import add_params, random_quant

from jacquard.rtl.eltwise_add import EltwiseAdd
from jacquard.sim import golden
from jacquard.sim.cocotb_run import run_cocotb

COCOTB_DIR = Path(__file__).parent / "cocotb"


def run(tmp_path, simulator, seed, c_par, beats, gap):
    rng = np.random.default_rng(seed)
    q = random_quant(rng)
    a = rng.integers(-128, 128, size=(beats, c_par), dtype=np.int8)
    b = rng.integers(-128, 128, size=(beats, c_par), dtype=np.int8)
    lo = int(rng.choice([-128, q[5]]))  # sometimes a fused ReLU
    want = np.maximum(golden.add(a, q[0], q[1], b, q[2], q[3], q[4], q[5]), lo)
    path = tmp_path / "case.npz"
    np.savez(path, a=a, b=b, want=want, lo=lo, hi=127, **add_params(*q))
    run_cocotb(EltwiseAdd(c_par), "cocotb_eltwise_add", simulator=simulator, test_dir=COCOTB_DIR,
               name=f"add_{c_par}", parameters={"seed": seed, "c_par": c_par, "gap": gap,
                                                "case": str(path), "desc": f"quant={q} lo={lo}"})


@pytest.mark.parametrize("seed", [51, 52])
def test_eltwise_add_icarus(tmp_path, seed):
    run(tmp_path, "icarus", seed, 2, 60, 0.3)


@pytest.mark.parametrize("seed", [61, 62])
def test_eltwise_add_verilator(tmp_path, seed):
    run(tmp_path, "verilator", seed, 8, 1000, 0.2)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(200, 212))
def test_eltwise_add_verilator_many(tmp_path, seed):
    run(tmp_path, "verilator", seed, 8, 20000, 0.1)
