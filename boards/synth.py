"""Synthesize, place and route a top for a board with the open flow (YoWASP), and report figures.

``report.json`` holds nextpnr's own figures (parsed from its ``--report`` JSON): achieved Fmax per
clock domain, cell utilization, DSPs and block RAMs, plus the build time.
"""

from __future__ import annotations

import json
import os
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


def synthesize(board: str, top: Elaboratable, build_dir: Path, name: str = "top") -> dict:
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
    try:
        target.platform().build(top, name=name, build_dir=str(build_dir), do_program=False, **overrides)
    except subprocess.CalledProcessError as exc:  # name the build dir, where the tools' logs are
        raise RuntimeError(f"{board}: the open flow failed ({exc}); see the logs in {build_dir}") from exc
    seconds = time.monotonic() - started
    nextpnr = json.loads((build_dir / "nextpnr-report.json").read_text())
    fmax = {clk: round(v["achieved"], 2) for clk, v in nextpnr.get("fmax", {}).items()}
    bitstreams = [p.name for p in build_dir.glob(f"{name}.b*") if p.suffix in (".bin", ".bit")]
    report = {
        "board": board,
        "fmax_mhz": fmax,
        "cells": _utilization(nextpnr, target.logic_cells),
        "dsps": _utilization(nextpnr, target.dsp_cells),
        "brams": _utilization(nextpnr, target.bram_cells),
        "build_seconds": round(seconds, 1),
        "bitstream": sorted(bitstreams),
    }
    (build_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report
