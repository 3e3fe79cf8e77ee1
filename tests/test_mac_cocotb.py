"""StreamMac under cocotb on both simulators: the harness smoke test of issue 2."""

from pathlib import Path

import pytest

from jacquard.rtl.mac import StreamMac
from jacquard.sim.cocotb_run import run_cocotb

COCOTB_DIR = Path(__file__).parent / "cocotb"


@pytest.mark.parametrize("simulator", ["icarus", "verilator"])
def test_stream_mac_cocotb(simulator):
    run_cocotb(StreamMac(), "cocotb_mac", simulator=simulator, test_dir=COCOTB_DIR,
               parameters={"seed": 7, "packets": 12})
