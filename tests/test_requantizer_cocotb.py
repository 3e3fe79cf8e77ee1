"""Requantizer under cocotb: Icarus (short), Verilator (default: 20k vectors; slow: 400k)."""

from pathlib import Path

import pytest

from jacquard.rtl.requantizer import Requantizer
from jacquard.sim.cocotb_run import run_cocotb

COCOTB_DIR = Path(__file__).parent / "cocotb"


@pytest.mark.parametrize(("simulator", "count", "clamp"), [
    ("icarus", 400, (0, -128, 127)),
    ("verilator", 20_000, (-5, -128, 127)),
    ("verilator", 5_000, (3, 3, 90)),
])
def test_requantizer_cocotb(simulator, count, clamp):
    run_cocotb(Requantizer(), "cocotb_requantizer", simulator=simulator, test_dir=COCOTB_DIR,
               parameters={"seed": count, "count": count, "clamp": clamp, "gap": 0.2})


@pytest.mark.slow
@pytest.mark.parametrize("seed", [101, 102])
def test_requantizer_cocotb_long(seed):
    run_cocotb(Requantizer(), "cocotb_requantizer", simulator="verilator", test_dir=COCOTB_DIR,
               parameters={"seed": seed, "count": 200_000, "clamp": (seed % 7 - 3, -128, 127), "gap": 0.1})
