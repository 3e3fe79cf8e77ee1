"""Synthesize, place and route a top for a board with the open flow (YoWASP), and report figures.

``report.json`` holds nextpnr's own figures (parsed from its ``--report`` JSON): achieved Fmax per
clock domain, cell utilization, DSPs and block RAMs, plus the build time.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

from amaranth.hdl import Elaboratable

from jacquard.boards.configs import BOARDS, BoardConfig
from jacquard.host.toolchain import toolchain_env

__all__ = ["TARGETS", "synthesize"]


#: The boards the flow can build for: one file per board (:mod:`jacquard.boards.configs`).
TARGETS: dict[str, BoardConfig] = BOARDS


def _utilization(report: dict, cells: tuple[str, ...]) -> dict[str, int]:
    util = report.get("utilization", {})
    used = sum(util.get(c, {}).get("used", 0) for c in cells)
    available = sum(util.get(c, {}).get("available", 0) for c in cells)
    return {"used": used, "available": available}


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


def synthesize(board: str, top: Elaboratable, build_dir: Path, name: str = "top", *,
               macs: int = 0, config_hash: int | None = None) -> dict:
    """Build a bitstream of ``top`` for ``board`` into ``build_dir`` and return the report dict.

    Raises
    ------
    ValueError
        If ``board`` is not in :data:`TARGETS`.
    RuntimeError
        If the toolchain fails; the message names the log to read.
    """
    if board not in TARGETS:
        raise ValueError(f"Board must be one of {sorted(TARGETS)}, not {board!r}")
    target = TARGETS[board]
    build_dir = Path(build_dir)
    build_dir.mkdir(parents=True, exist_ok=True)
    overrides = dict(target.build_overrides)
    # Relative to the build dir the script runs in: YoWASP maps /tmp to a private folder, so an
    # absolute path under /tmp would be written where we cannot read it.
    overrides["nextpnr_opts"] = "--report nextpnr-report.json"
    # amaranth's build system reads the tool names from os.environ.
    os.environ.update(toolchain_env())
    started = time.monotonic()
    for stale in (build_dir / "nextpnr-report.json", build_dir / f"{name}.tim"):
        stale.unlink(missing_ok=True)
    try:
        target.platform().build(top, name=name, build_dir=str(build_dir), do_program=False, **overrides)
    except subprocess.CalledProcessError as exc:  # name the build dir, where the tools' logs are
        raise RuntimeError(f"{board}: the open flow failed ({exc}); see the logs in {build_dir}") from exc
    seconds = time.monotonic() - started
    nextpnr = json.loads((build_dir / "nextpnr-report.json").read_text())
    fmax = {clk: round(v["achieved"], 2) for clk, v in nextpnr.get("fmax", {}).items()}
    bitstreams = [p.name for p in build_dir.glob(f"{name}.b*") if p.suffix in (".bin", ".bit")]
    log = build_dir / f"{name}.tim"
    core_mhz = min(fmax.values()) if fmax else 0.0
    report = {
        "board": board,
        "config": target.hw_config,
        "config_hash": config_hash,
        "fmax_mhz": fmax,
        "fmax_constraint_mhz": {clk: round(v["constraint"], 2) for clk, v in nextpnr.get("fmax", {}).items()},
        "macs": macs,
        # The slowest domain limits the core (the SoC has one: the PLL's `sync`).
        "peak_gops": round(2 * macs * core_mhz / 1000, 2),
        "critical_path": critical_path(log.read_text(errors="replace")) if log.exists() else None,
        "cells": _utilization(nextpnr, target.logic_cells),
        "dsps": _utilization(nextpnr, target.dsp_cells),
        "brams": _utilization(nextpnr, target.bram_cells),
        "build_seconds": round(seconds, 1),
        "bitstream": sorted(bitstreams),
    }
    (build_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
