"""``make demo``: the most end-to-end job the project can run today, and it says which one.

Until the video-analytics app (issue 7) lands, the demo takes the harness's real design, the
StreamMac, through the whole open flow: a golden-model check in Verilator under cocotb, then a
bitstream for the iCEBreaker with its measured Fmax and resources.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jacquard.host.demo")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    console = Console()
    console.rule("Jacquard demo")
    console.print("The video-analytics demo (issue 7) is not built yet. This demo runs the most end-to-end "
                  "path available: StreamMac RTL -> Verilator/cocotb vs NumPy -> iCEBreaker bitstream.")

    from jacquard.boards.__main__ import _print_report
    from jacquard.boards.smoke import SmokeTop
    from jacquard.boards.synth import synthesize
    from jacquard.rtl.mac import StreamMac
    from jacquard.sim.cocotb_run import run_cocotb

    tests_dir = Path(__file__).resolve().parent.parent / "tests" / "cocotb"
    with console.status("Simulating StreamMac in Verilator against NumPy..."):
        run_cocotb(StreamMac(), "cocotb_mac", simulator="verilator", test_dir=tests_dir,
                   parameters={"seed": args.seed, "packets": 200})
    console.print(f"[green]RTL matches NumPy[/] on 200 random packets (seed {args.seed}).")
    with console.status("Building the iCEBreaker bitstream with YoWASP yosys + nextpnr..."):
        report = synthesize("icebreaker", SmokeTop("mac"), Path("build") / "icebreaker")
    _print_report(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
