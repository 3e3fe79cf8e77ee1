"""nox sessions. They all run in the project's own .venv (made by `make setup`), never in a copy."""

import glob
import os
import sys

import nox

nox.options.sessions = ["lint", "tests"]
nox.options.default_venv_backend = "none"

# nox itself runs from the project's .venv; run every tool with that interpreter, never a `python`
# found first on the caller's PATH (pyenv shims, the system Python).
PY = sys.executable


def _env() -> dict[str, str]:
    # nox runs from the project's .venv (`make setup` installed jacquard there, editable).
    from jacquard.host.toolchain import toolchain_env

    # Only the variables that differ from nox's own environment: the toolchain on PATH, YoWASP, Spark.
    full = toolchain_env()
    return {k: v for k, v in full.items() if os.environ.get(k) != v}


def _workers(posargs: list[str]) -> list[str]:
    """pytest-xdist options: one worker per core (at most 4) unless the caller chose (`-n`, `-p no:xdist`).

    Simulations, Spark jobs and place-and-route are single-threaded CPU work: on this 2-core
    machine two workers take the default tier from about 15 to under 10 minutes, and leave room for
    the small board's SoC build. ``worksteal``: a worker that runs out steals queued tests, so the
    long builds started first (tests/conftest.py) do not hold back a queue behind them.
    """
    chosen = any(a.startswith(("-n", "--numprocesses", "--dist")) for a in posargs)
    if chosen or "no:xdist" in posargs:
        return []
    n = int(os.environ.get("JACQUARD_TEST_WORKERS", min(os.cpu_count() or 1, 4)))
    return ["-n", str(n), "--dist", "worksteal"] if n > 1 else []


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (default tier; `-- -m slow` for long Verilator runs and ECP5 P&R).

    Runs on one pytest-xdist worker per core; JACQUARD_TEST_WORKERS=1 (or `-- -n 0`) runs serially.
    """
    session.run(PY, "-m", "pytest", *_workers(session.posargs), *session.posargs, env=_env())


@nox.session
@nox.parametrize("simulator", ["icarus", "verilator"])
def sim(session: nox.Session, simulator: str) -> None:
    """Only the cocotb benches, on one simulator."""
    session.run(PY, "-m", "pytest", "-k", simulator, *session.posargs, env=_env())


@nox.session
def synthesize(session: nox.Session) -> None:
    """Build a bitstream with YoWASP yosys/nextpnr: `nox -s synthesize -- BOARD [--block NAME]`."""
    args = session.posargs or ["icebreaker"]
    session.run(PY, "-m", "jacquard.boards", "synthesize", *args, env=_env())


@nox.session
def flash(session: nox.Session) -> None:
    """Program a board: `nox -s flash -- BOARD`."""
    if not session.posargs:
        session.error("name the board: nox -s flash -- icebreaker | ulx3s-85f")
    session.run(PY, "-m", "jacquard.boards", "flash", *session.posargs, env=_env())


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks; each writes its section of docs/RESULTS.md. `-- NAME` runs tests/bench/bench_NAME.py."""
    scripts = sorted(glob.glob("tests/bench/bench_*.py"))
    if session.posargs:
        scripts = [s for s in scripts if any(f"bench_{name}.py" in s for name in session.posargs)]
    if not scripts:
        session.error(f"no benchmark matches {session.posargs}")
    for script in scripts:
        session.run(PY, script, env=_env())


@nox.session
def demo(session: nox.Session) -> None:
    """The main end-to-end job (what `make demo` runs)."""
    session.run(PY, "-m", "jacquard.host.demo", *session.posargs, env=_env())


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole project."""
    session.run(PY, "-m", "ruff", "check", ".", *session.posargs, env=_env())
