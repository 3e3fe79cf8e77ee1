"""BridgeSoc's UART bridge in cocotb, driven by the host's UartLink over a lossy bit-level line."""

from pathlib import Path

import pytest

from jacquard.boards.soc import BridgeSoc
from jacquard.sim.cocotb_run import run_cocotb
from jacquard.sim.isa import CONFIGS

COCOTB_DIR = Path(__file__).parent / "cocotb"
DIVISOR = 4


def _dut():
    # The protocol under test needs the core's registers only (the register-only stand-in is quick).
    return BridgeSoc(CONFIGS["sim-small"], memory_bytes=4096, divisor=DIVISOR, timeout=200, max_words=8,
                     heartbeat_bit=8, core=False)


@pytest.mark.parametrize("simulator,seed,ops,faults", [
    pytest.param("icarus", 5, 4, 0.01),
    pytest.param("verilator", 6, 60, 0.01, marks=pytest.mark.slow),
    pytest.param("verilator", 7, 60, 0.03, marks=pytest.mark.slow),
])
def test_host_bridge_cocotb(simulator, seed, ops, faults):
    run_cocotb(_dut(), "cocotb_host_bridge", simulator=simulator, test_dir=COCOTB_DIR,
               parameters={"seed": seed, "ops": ops, "divisor": DIVISOR, "drop": faults / 2,
                           "corrupt": faults / 2, "region": 256, "timeout_cycles": 5000})
