"""AvgPool under cocotb against golden.avg_pool: Icarus (short), Verilator (slow: many seeds)."""

import json
from pathlib import Path

import numpy as np
import pytest
from test_pool_avg import avg_case

from jacquard.rtl.avg_pool import AvgPool
from jacquard.sim.cocotb_run import run_cocotb

COCOTB_DIR = Path(__file__).parent / "cocotb"


def run(tmp_path, simulator, seed, c_par, gap):
    case = avg_case(np.random.default_rng(seed), c_par)
    path = tmp_path / "case.npz"
    np.savez(path, taps=case["taps"], first=case["first"], last=case["last"], want=case["want"],
             cfg=json.dumps(case["cfg"]))
    run_cocotb(AvgPool(c_par), "cocotb_avg_pool", simulator=simulator, test_dir=COCOTB_DIR,
               name=f"avg_pool_{c_par}",
               parameters={"seed": seed, "c_par": c_par, "gap": gap, "case": str(path), "desc": case["desc"]})


def test_avg_pool_icarus(tmp_path):
    run(tmp_path, "icarus", 91, 2, 0.3)


def test_avg_pool_verilator(tmp_path):
    run(tmp_path, "verilator", 92, 8, 0.3)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(400, 420))
def test_avg_pool_verilator_many(tmp_path, seed):
    run(tmp_path, "verilator", seed, 8, [0.0, 0.3, 0.6][seed % 3])
