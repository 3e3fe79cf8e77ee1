"""JacquardCore in Verilator with a C++ memory and host (``verilator_harness.cpp``): no Python per cycle.

The cocotb benches drive the core from Python (cocotbext-axi's AxiRam and AxiLiteMaster), which
costs Python work on every clock edge. This harness compiles the same Verilog with a C++ main that
models the AXI4 memory (one beat per cycle, no back-pressure) and the AXI4-Lite host, so a run
measures the Verilator model alone. Builds are cached like :func:`~jacquard.sim.cocotb_run.run_cocotb`'s,
keyed by the Verilog, the flags and the harness source.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from jacquard.host.cache import cache_dir, cache_lock
from jacquard.host.toolchain import toolchain_env
from jacquard.sim.cocotb_run import VERILATOR_OPT_ARGS, VERILATOR_WARN_ARGS, cached_verilog
from jacquard.sim.isa_regs import PERF_COUNTERS, register

__all__ = ["HarnessRun", "build_harness", "run_harness"]

HARNESS_CPP = Path(__file__).with_name("verilator_harness.cpp")
_JOBS = "2"  # the machine's cores; the compile dominates a build


def build_harness(component, *, name: str = "jacquard_core", verilator_args: list[str] | None = None,
                  opt_fast: str = "-O2") -> Path:
    """Compile ``component`` with the C++ harness as its main; returns the executable (cached).

    Parameters
    ----------
    component : the Amaranth :class:`~jacquard.rtl.core.JacquardCore` (any component with its ports).
    name : the Verilog top module's name.
    verilator_args : Verilator options; default :data:`~jacquard.sim.cocotb_run.VERILATOR_OPT_ARGS`.
    opt_fast : the C++ optimization of the model's per-cycle code (Verilator's ``OPT_FAST``).

    Raises
    ------
    RuntimeError
        If Verilator or the C++ compiler fails (the message holds the tail of its log).
    """
    args = list(VERILATOR_OPT_ARGS if verilator_args is None else verilator_args)
    source = cached_verilog(component, name)
    key = source + repr(args) + opt_fast + HARNESS_CPP.read_text()
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    build_dir = cache_dir("harness", f"{name}-{digest}")
    exe = build_dir / "harness"
    with cache_lock(build_dir):  # concurrent processes build it once (see jacquard.host.cache)
        if exe.exists():
            return exe
        env = {**os.environ, **toolchain_env()}
        vfile = build_dir / f"{name}.v"
        vfile.write_text(source)
        cmds = [["verilator", "--cc", "--exe", "--build-jobs", _JOBS, "-Mdir", str(build_dir),
                 "--top-module", name, "--prefix", "Vtop", "-o", "harness", *VERILATOR_WARN_ARGS, *args,
                 str(HARNESS_CPP), str(vfile)],
                ["make", "-j", _JOBS, "-C", str(build_dir), "-f", "Vtop.mk", f"OPT_FAST={opt_fast}",
                 "OPT_SLOW=-O0", "OPT_GLOBAL=-O2"]]
        for cmd in cmds:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if proc.returncode:
                shutil.rmtree(build_dir, ignore_errors=True)
                raise RuntimeError(f"{cmd[0]} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return exe


@dataclass
class HarnessRun:
    """One program run: the memory afterwards, the registers read, the cycles and the wall time."""

    memory: np.ndarray
    status: int
    counters: dict[str, int]
    cycles: int
    wall_s: float

    @property
    def cycles_per_s(self) -> float:
        return self.cycles / self.wall_s


def run_harness(exe: Path, image: np.ndarray, *, prog_base: int, prog_len: int, timeout: int = 50_000_000,
                poll_every: int = 1000) -> HarnessRun:
    """Run one program on the harness ``exe`` over a memory holding ``image`` (uint8, its whole size).

    The window covers the whole memory. The run polls ``STATUS.busy`` every ``poll_every`` cycles;
    ``cycles`` and ``wall_s`` cover that wait (the run itself, as the cocotb bench measures it).

    Raises
    ------
    ValueError
        If ``image`` is not a one-dimensional uint8 array.
    RuntimeError
        If the harness fails or the core is still busy after ``timeout`` cycles.
    """
    if image.dtype != np.uint8 or image.ndim != 1:
        raise ValueError(f"image must be a 1-D uint8 array, not {image.dtype} {image.shape}")
    ctrl = register("CTRL")
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "in.bin"), Path(tmp, "out.bin")
        src.write_bytes(image.tobytes())
        lines = [f"load {src}", "reset 4"]
        for reg, value in (("WINDOW_BASE", 0), ("WINDOW_LIMIT", image.size), ("PROG_BASE", prog_base),
                           ("PROG_LEN", prog_len), ("IRQ_ENABLE", 0),
                           ("CTRL", ctrl.pack(clear_counters=1)), ("CTRL", ctrl.pack(start=1))):
            lines.append(f"write {register(reg).offset} {value}")
        lines.append(f"wait {register('STATUS').offset} 1 {poll_every} {timeout}")
        lines.append(f"read {register('STATUS').offset}")
        for cname, _ in PERF_COUNTERS:
            lines += [f"read {register(cname + '_LO').offset}", f"read {register(cname + '_HI').offset}"]
        lines.append(f"dump {dst}")
        proc = subprocess.run([str(exe), str(image.size)], input="\n".join(lines) + "\n", capture_output=True,
                              text=True)
        if proc.returncode:
            raise RuntimeError(f"harness failed (exit {proc.returncode}): {proc.stdout[-500:]} "
                               f"{proc.stderr[-2000:]}")
        out = proc.stdout.split("\n")
        wait = next(x for x in out if x.startswith("wait ")).split()
        reads = [int(x.split()[2]) for x in out if x.startswith("read ")]
        memory = np.frombuffer(dst.read_bytes(), dtype=np.uint8).copy()
    counters = {cname: reads[1 + 2 * k] | reads[2 + 2 * k] << 32
                for k, (cname, _) in enumerate(PERF_COUNTERS)}
    return HarnessRun(memory=memory, status=reads[0], counters=counters, cycles=int(wait[1]),
                      wall_s=float(wait[2]))
