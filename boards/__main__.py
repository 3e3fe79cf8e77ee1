"""``python -m jacquard.boards synthesize BOARD`` / ``flash BOARD``: what the nox sessions run."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from jacquard.boards.smoke import BLOCKS, SmokeTop
from jacquard.boards.synth import TARGETS, synthesize

# The programmer each board family uses, and the Debian package that has it.
PROGRAMMERS = {
    "icebreaker": (["iceprog"], "fpga-icestorm", ".bin"),
    "ulx3s-85f": (["openFPGALoader", "-b", "ulx3s"], "openfpgaloader", ".bit"),
}


def _print_report(report: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{report['board']}: built in {report['build_seconds']} s")
    table.add_column("figure")
    table.add_column("value", justify="right")
    for clk, mhz in report["fmax_mhz"].items():
        table.add_row(f"Fmax {clk}", f"{mhz} MHz")
    for key in ("cells", "dsps", "brams"):
        used, avail = report[key]["used"], report[key]["available"]
        table.add_row(key, f"{used} / {avail} ({100 * used / max(avail, 1):.1f}%)")
    Console().print(table)


def cmd_synthesize(args: argparse.Namespace) -> int:
    from rich.console import Console

    build_dir = Path(args.build_dir) / args.board
    if args.block == "soc":
        from jacquard.boards.soc import BoardTop
        top = BoardTop(args.board)
    else:
        top = SmokeTop(args.block)
    with Console().status(f"Synthesizing {args.block} for {args.board} (YoWASP yosys + nextpnr)..."):
        report = synthesize(args.board, top, build_dir)
    _print_report(report)
    print(f"report: {build_dir / 'report.json'}")
    return 0


def cmd_flash(args: argparse.Namespace) -> int:
    command, package, suffix = PROGRAMMERS[args.board]
    bitstream = Path(args.build_dir) / args.board / f"top{suffix}"
    if not bitstream.exists():
        print(f"error: no bitstream at {bitstream}; run `nox -s synthesize -- {args.board}` first",
              file=sys.stderr)
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
    synth.add_argument("--block", choices=[*sorted(BLOCKS), "soc"], default="mac",
                       help="a block under the smoke top, or `soc`: the board SoC (boards/soc.py)")
    flash = sub.add_parser("flash", help="program the board with the last bitstream built for it")
    flash.add_argument("board", choices=sorted(PROGRAMMERS))
    args = parser.parse_args(argv)
    return cmd_synthesize(args) if args.command == "synthesize" else cmd_flash(args)


if __name__ == "__main__":
    sys.exit(main())
