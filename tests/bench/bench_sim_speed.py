"""Benchmark: Verilator simulation speed of the whole JacquardCore (issue 5: goal >= 100k cycles/s).

Runs one real program, the small classifier of tests/test_core_networks.py at 28x28 (conv3x3+ReLU+
fused pool, conv3x3+ReLU, max pool, FC; about 39k cycles on sim-small), on the whole core in
Verilator, every output checked bit-exactly against the reference executor, two ways:

(a) through cocotb as the tests run it (tests/cocotb/cocotb_core.py: cocotbext-axi's AxiRam without
    back-pressure, AxiLiteMaster polling STATUS every 200 cycles), built by ``run_cocotb``;
(b) the model alone: ``jacquard.sim.verilator_harness`` (a C++ AXI4 memory and AXI4-Lite host, no
    Python in the simulation loop).

Each way is measured with the build flags cocotb's runner uses by itself (``--public-flat-rw``, C++
``-Os``) and with ``run_cocotb``'s, and with the core's reset taken through a register first
(:class:`~jacquard.sim.cocotb_run.RegisteredReset`): Amaranth's Verilog computes every register's
next value from ``rst``, a top-level input, so Verilator re-evaluates all next-state logic on every
``eval()`` (its 'ico' region) unless the reset comes from a flip-flop. The machine is shared: the
1-minute load average is recorded with each figure. Writes the ``sim-speed`` section of
docs/RESULTS.md (``nox -s bench -- sim_speed``).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from amaranth.lib import wiring

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' shared helpers
from test_core import COCOTB_DIR
from test_perf_vs_rtl import CFG, classifier

from jacquard.host.results import write_section
from jacquard.rtl.core import JacquardCore
from jacquard.sim import cocotb_run
from jacquard.sim.cocotb_run import RegisteredReset, run_cocotb, to_verilog
from jacquard.sim.executor import execute
from jacquard.sim.verilator_harness import build_harness, run_harness

SEED = 22
SIZE = 28
REPEATS = 3  # harness runs per build; the best one counts (the others lost the CPU to other jobs)


def _design(registered_reset: bool) -> wiring.Component:
    core = JacquardCore(CFG)
    return RegisteredReset(core) if registered_reset else core


def program():
    img, descs = classifier(np.random.default_rng(SEED), SIZE)
    prog = img.place_program(descs)
    expected = img.data.copy()
    execute(prog, expected, CFG, prog_addr=0)
    return img, prog, expected


def check(memory: np.ndarray, expected: np.ndarray, label: str) -> None:
    bad = np.flatnonzero(memory != expected)
    if bad.size:
        i = int(bad[0])
        raise AssertionError(f"seed={SEED} {label}: {bad.size} bytes differ; first at {i:#x}: expected "
                             f"{expected[i].view(np.int8)}, got {memory[i].view(np.int8)}")


def harness_speed(label: str, registered_reset: bool, verilator_args: list[str] | None,
                  opt_fast: str) -> dict:
    img, prog, expected = program()
    t0 = time.monotonic()
    exe = build_harness(_design(registered_reset), verilator_args=verilator_args, opt_fast=opt_fast)
    build_s = time.monotonic() - t0
    best = None
    for _ in range(REPEATS):
        run = run_harness(exe, img.data, prog_base=0, prog_len=prog.size())
        check(run.memory, expected, label)
        if run.status & 0x2 == 0:
            raise AssertionError(f"{label}: STATUS {run.status:#x} is not done")
        load = os.getloadavg()[0]
        if best is None or run.cycles_per_s > best["cycles_per_s"]:
            best = {"cycles_per_s": run.cycles_per_s, "cycles": run.cycles, "load": load}
    return {"way": "model alone (C++ harness)", "label": label, "build_s": build_s, **best}


def cocotb_speed(label: str, registered_reset: bool, public: bool) -> dict:
    img, prog, expected = program()
    t0 = time.monotonic()
    to_verilog(_design(registered_reset), "jacquard_core")  # timed alone: run_cocotb may take it from cache
    verilog_s = time.monotonic() - t0
    best, fastest_s = None, float("inf")
    for _ in range(REPEATS):
        with tempfile.TemporaryDirectory() as tmp:
            case = Path(tmp, "case.json")
            np.save(Path(tmp, "image0.npy"), img.data)
            run = {"image": str(Path(tmp, "image0.npy")), "window_base": 0, "window_limit": img.size,
                   "prog_base": 0, "prog_len": prog.size(), "irq_enable": 0, "timeout": 20_000_000}
            case.write_text(json.dumps({"seed": SEED, "ram_size": img.size, "pause": 0.0, "runs": [run]}))
            t1 = time.monotonic()
            run_cocotb(_design(registered_reset), "cocotb_core", simulator="verilator", test_dir=COCOTB_DIR,
                       name="jacquard_core", parameters={"case": str(case)}, public=public)
            fastest_s = min(fastest_s, time.monotonic() - t1)  # the first run may include the build
            load = os.getloadavg()[0]
            result = json.loads(Path(tmp, "case.json.result.json").read_text())
            check(np.load(Path(tmp, "case.json.mem0.npy")), expected, label)
        rec = result["runs"][0]
        cycles = rec["counters"]["CYCLES"]
        if best is None or cycles / rec["wall_s"] > best["cycles_per_s"]:
            best = {"cycles_per_s": cycles / rec["wall_s"], "cycles": cycles, "load": load}
    return {"way": "cocotb (as the tests run it)", "label": label, "verilog_s": verilog_s,
            "run_cocotb_s": fastest_s, **best}


def markdown(rows: list[dict], goal_met: bool) -> str:
    lines = [f"Whole JacquardCore ({CFG.name}, {CFG.macs} MACs) in Verilator running the small classifier "
             f"at {SIZE}x{SIZE} (4 layers), outputs bit-exact with the reference executor; cycles are the "
             f"core's CYCLES counter (the two memories differ in latency). Best of {REPEATS} runs per "
             f"row. Machine: {os.cpu_count()} cores shared with other jobs; load is the 1-minute load "
             f"average right after the run. Goal (issue 5): >= 100k cycles/s.", "",
             "| way | build | cycles | cycles/s | load |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['way']} | {r['label']} | {r['cycles']:,} | {r['cycles_per_s']:,.0f} | {r['load']:.1f} |"
              for r in rows]
    cocotb = [r for r in rows if "verilog_s" in r]
    if cocotb:
        r = cocotb[0]
        lines += ["", f"Besides simulating, a cocotb run converts the core to Verilog "
                  f"({r['verilog_s']:.0f} s "
                  f"here: Amaranth elaboration and RTLIL; `run_cocotb` caches it while the sources are "
                  f"unchanged) and starts the simulator: `run_cocotb` took {r['run_cocotb_s']:.0f} s for "
                  f"{r['cycles']:,} cycles (fastest of {REPEATS} runs, model already built)."]
    lines += ["", f"Goal {'met' if goal_met else 'not met'} by the model alone with the registered reset."]
    return "\n".join(lines)


def main() -> int:
    old = ["--public-flat-rw"]
    new = cocotb_run.VERILATOR_OPT_ARGS
    rows = [
        harness_speed("cocotb runner's flags (--public-flat-rw, -Os)", False, old, "-Os"),
        harness_speed("run_cocotb's flags (-O3, x fast, -O2)", False, new, cocotb_run.VERILATOR_OPT_FAST),
        harness_speed("run_cocotb's flags + registered reset", True, new, cocotb_run.VERILATOR_OPT_FAST),
        cocotb_speed("run_cocotb's flags", False, False),
        cocotb_speed("run_cocotb's flags + registered reset", True, False),
    ]
    for r in rows:
        print(f"{r['way']:30s} {r['label']:50s} {r['cycles_per_s']:10,.0f} cycles/s  load {r['load']:.1f}",
              flush=True)
    goal = rows[2]["cycles_per_s"] >= 100_000
    write_section("sim-speed", markdown(rows, goal), command="nox -s bench -- sim_speed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
