"""The C++ Verilator harness (``jacquard.sim.verilator_harness``) runs whole programs on JacquardCore.

The harness is the speed benchmark's "model alone" (tests/bench/bench_sim_speed.py); this checks that
what it measures is a correct run: the small classifier of tests/test_core_networks.py, bit-exact
with the reference executor, STATUS done without error, and the counters consistent with the wait.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest
from test_core_networks import _classifier
from test_perf_vs_rtl import CFG

from jacquard.rtl.core import JacquardCore
from jacquard.rtl.mac import StreamMac
from jacquard.sim.cocotb_run import cached_verilog, to_verilog
from jacquard.sim.executor import execute
from jacquard.sim.isa_regs import register
from jacquard.sim.verilator_harness import build_harness, run_harness


def test_harness_classifier():
    seed = 21
    img, descs = _classifier(np.random.default_rng(seed), 12)
    prog = img.place_program(descs)
    expected = img.data.copy()
    execute(prog, expected, CFG, prog_addr=0)
    run = run_harness(build_harness(JacquardCore(CFG)), img.data, prog_base=0, prog_len=prog.size())
    status = register("STATUS").unpack(run.status)
    assert status["done"] and not status["error"], f"seed={seed}: STATUS {status}"
    bad = np.flatnonzero(run.memory != expected)
    assert not bad.size, (f"seed={seed}: {bad.size} bytes differ; first at {bad[0]:#x}: expected "
                          f"{expected[bad[0]].view(np.int8)}, got {run.memory[bad[0]].view(np.int8)}")
    # The run is polled every 1000 cycles: the wait ends within one poll (and one read) of BUSY's end.
    busy = run.counters["BUSY_CYCLES"]
    assert busy <= run.cycles <= busy + 1000 + 100, (busy, run.cycles)
    print(f"\nclassifier 12x12: {run.cycles} cycles, {run.cycles_per_s:.0f} cycles/s (model alone)")


def test_harness_rejects_bad_image():
    with pytest.raises(ValueError, match="image"):
        run_harness(None, np.zeros(16, dtype=np.int8), prog_base=0, prog_len=0)


def test_cached_verilog_is_the_conversion():
    """The disk cache returns what the conversion returns, and a hit leaves no unused-elaboratable warning."""
    want = to_verilog(StreamMac(), "mac")
    assert cached_verilog(StreamMac(), "mac") == want
    assert cached_verilog(StreamMac(), "mac") == want  # a hit, unless a source file changed meanwhile
    gc.collect()  # an unelaborated component warns when collected; warnings are errors here
