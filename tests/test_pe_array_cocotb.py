"""PEArray under cocotb: random conv layers on Icarus (short) and Verilator (more and larger: slow)."""

from pathlib import Path

import numpy as np
import pytest
from test_pe_array import conv_case

from jacquard.rtl.pe_array import PEArray
from jacquard.sim.cocotb_run import run_cocotb

COCOTB_DIR = Path(__file__).parent / "cocotb"
# One buffer depth for every case, so each (c_par, oc_par) design is compiled once and cached.
DEPTH = 256


def run(tmp_path, simulator, seed, c_par, oc_par, gap, depthwise=False, big=False):
    rng = np.random.default_rng(seed)
    case = conv_case(rng, c_par, oc_par, depthwise=depthwise, big=big)
    w_base = seed % 3
    assert len(case["rows"]) // oc_par + w_base <= DEPTH, case["desc"]
    path = tmp_path / "case.npz"
    np.savez(path, taps=case["taps"], first=case["first"], last=case["last"], rows=case["rows"],
             want=case["want"], w_base=w_base, n_taps=case["cfg"]["taps"],
             n_oc_tiles=case["cfg"]["n_oc_tiles"], depthwise=case["cfg"]["depthwise"])
    run_cocotb(PEArray(c_par, oc_par, DEPTH), "cocotb_pe_array", simulator=simulator,
               test_dir=COCOTB_DIR, name=f"pe_{c_par}x{oc_par}",
               parameters={"seed": seed, "c_par": c_par, "oc_par": oc_par, "gap": gap,
                           "case": str(path), "desc": case["desc"]})


@pytest.mark.parametrize(("seed", "c_par", "oc_par", "gap", "depthwise"), [
    (31, 4, 4, 0.3, False), (32, 2, 4, 0.0, False), (33, 4, 8, 0.3, True),
])
def test_pe_array_icarus(tmp_path, seed, c_par, oc_par, gap, depthwise):
    run(tmp_path, "icarus", seed, c_par, oc_par, gap, depthwise)


@pytest.mark.parametrize(("seed", "c_par", "oc_par", "gap", "depthwise"), [
    (41, 8, 16, 0.0, False), (42, 8, 16, 0.3, True),
])
def test_pe_array_verilator(tmp_path, seed, c_par, oc_par, gap, depthwise):
    run(tmp_path, "verilator", seed, c_par, oc_par, gap, depthwise)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(100, 112))
def test_pe_array_verilator_many(tmp_path, seed):
    c_par, oc_par = [(8, 16), (4, 8), (2, 2), (8, 8)][seed % 4]
    run(tmp_path, "verilator", seed, c_par, oc_par, [0.0, 0.3, 0.6][seed % 3],
        depthwise=seed % 5 == 0, big=True)
