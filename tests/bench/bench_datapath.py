"""Benchmark: MAC utilization of the datapath chain and per-block ECP5 synthesis figures.

Utilization = useful MACs / (OC_PAR x C_PAR x cycles), the cycles counted by the cocotb bench of
the chain line buffer -> PE array -> post-processing (``rtl/datapath.py``) on Verilator at the
ULX3S-85F array (16 x 8 = 128 MACs), from the line buffer's ``start`` to the last output beat,
with input and output never stalled. Every layer's int8 outputs are checked bit-exactly against
the golden model (``tests/test_datapath_cocotb.py``).

The synthesis table (the chain's blocks and the core's other units) reads the per-block builds
under ``build/blocks/NAME/ulx3s-85f`` (nextpnr's report and log); ``--synth`` (re)builds them
first, one at a time (minutes each; the PE array and the datapath take long). Writes the
``datapath`` section of docs/RESULTS.md.

    nox -s bench -- datapath                 # 56x56 maps (about 10 minutes on a busy machine)
    python tests/bench/bench_datapath.py --only folded   # one row; the others from the last run
    python tests/bench/bench_datapath.py --small --synth pe_array line_buffer
    python tests/bench/bench_datapath.py --no-sim   # refresh the synthesis table only
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' shared helpers
from test_datapath_cocotb import make_layer, run_layer

from jacquard.host.results import write_section
from jacquard.rtl.datapath import block_sizes

CONFIG = "ulx3s-85f"
# The chain's blocks, then the core's other units (issue 8: each must reach the SoC's clock alone).
BLOCK_NAMES = ("pe_array", "line_buffer", "maxpool2x2", "requantizer", "postproc", "datapath",
               "sequencer", "scale_unit", "dma_reader", "dma_writer", "gap_sum", "avg_pool", "eltwise_add",
               "host_bridge")
ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build" / "blocks"
# nextpnr's placer per block. `static` (the ULX3S-85F board default) is what routes the blocks with
# DSPs: the chain did not route with HeAP (router2 stuck near 5k overused wires), and static vs HeAP
# on 2026-11-28 gave the PE array 127.5 vs 102.5 MHz, the requantizer 124.0 vs 119.3, the
# post-processor 111.6 vs 106.1. On the two DSP-free blocks it placed worse (line buffer 93.9 vs
# 103.3, 2x2 max pool 74.1 vs 82.2), so they keep HeAP. (Those pairs were measured with the smoke
# top's old stimulus, which held 10 of every 32 input bits at 0; the comparison is to be redone.)
BLOCK_PLACERS = {"pe_array": "static", "datapath": "static", "requantizer": "static", "postproc": "static"}


def layers(size: int) -> list[tuple[str, dict]]:
    return [
        (f"3x3 conv 32->32 at {size}x{size}", dict(h=size, w=size, cin=32, cout=32, k=3)),
        (f"3x3 conv 64->64 at {size}x{size}", dict(h=size, w=size, cin=64, cout=64, k=3)),
        (f"first layer 3x3 conv 3->16 at {size}x{size}", dict(h=size, w=size, cin=3, cout=16, k=3)),
        # The same layer with its taps folded into the channel lanes by the host (jacquard.host.fold):
        # a 1x1 conv over its output grid (pad 1 keeps it size x size) with 3*3*3 = 27 channels.
        (f"first layer 3x3 conv 3->16 at {size}x{size}, taps folded (1x1 conv 27->16)",
         dict(h=size, w=size, cin=27, cout=16, k=1)),
        (f"1x1 conv 64->64 at {size}x{size}", dict(h=size, w=size, cin=64, cout=64, k=1)),
        (f"depthwise 3x3 32 channels at {size}x{size}", dict(h=size, w=size, cin=32, cout=32, k=3,
                                                             depthwise=True)),
    ]


def utilization_rows(size: int, only: str | None = None) -> list[dict]:
    """Measure every layer (or those whose label contains ``only``)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (label, shape) in enumerate(layers(size)):
            if only is not None and only not in label:
                continue
            layer = make_layer(np.random.default_rng(100 + k), CONFIG, **shape)
            work = Path(tmp) / f"layer{k}"
            work.mkdir()
            got = run_layer(work, "verilator", CONFIG, layer, 100 + k, gap=0.0)
            rows.append({"layer": label, **got})
            print(f"{label}: {got['cycles']:,} cycles, {100 * got['utilization']:.1f} %", flush=True)
    return rows


def synth_row(name: str) -> dict | None:
    """The figures of ``build/blocks/NAME/ulx3s-85f``: also when nextpnr missed the 100 MHz target."""
    from jacquard.boards.synth import TARGETS, critical_path

    build = BUILD / name / CONFIG
    try:
        report = json.loads((build / "nextpnr-report.json").read_text())
        log = (build / "top.tim").read_text(errors="replace")
    except (OSError, ValueError):  # not built (yet)
        return None
    try:
        placer = json.loads((build / "report.json").read_text()).get("placer") or "heap"
    except (OSError, ValueError):
        placer = "?"
    target = TARGETS[CONFIG]
    util = report.get("utilization", {})

    def used(cells):
        return sum(util.get(c, {}).get("used", 0) for c in cells)

    fmax = report.get("fmax", {})
    return {
        "block": name,
        "fmax": min((v["achieved"] for v in fmax.values()), default=0.0),
        "constraint": min((v["constraint"] for v in fmax.values()), default=0.0),
        "luts": util.get("TRELLIS_COMB", {}).get("used", 0), "ffs": util.get("TRELLIS_FF", {}).get("used", 0),
        "dsps": used(target.dsp_cells), "ebrs": used(target.bram_cells),
        "path": critical_path(log), "placer": placer,
    }


def unrouted_row(name: str) -> dict | None:
    """What nextpnr's log of an unfinished build says: the post-placement estimate and cell counts."""
    from jacquard.boards.synth import device_utilization, placed_fmax

    try:
        log = (BUILD / name / CONFIG / "top.tim").read_text(errors="replace")
    except OSError:
        return None
    est, util = placed_fmax(log), device_utilization(log)
    if not est or not util:
        return None
    overused = [int(n) for n in re.findall(r"iter=\d+ wires=\d+ overused=(\d+)", log)]
    return {"block": name, "estimate": min(est.values()), "iterations": len(overused),
            "overused": overused[-1] if overused else None,
            **{k: util.get(c, {}).get("used", 0) for k, c in (("luts", "TRELLIS_COMB"), ("ffs", "TRELLIS_FF"),
                                                               ("dsps", "MULT18X18D"), ("ebrs", "DP16KD"))}}


def synthesize_block(name: str, nextpnr_args: tuple[str, ...] = ()) -> None:
    from jacquard.boards.smoke import SmokeTop, block_macs
    from jacquard.boards.synth import synthesize

    try:
        # router2 and --timing-allow-fail: a block below the target still routes and reports its Fmax.
        synthesize(CONFIG, SmokeTop(name), BUILD / name / CONFIG, macs=block_macs(name), router="router2",
                   placer=BLOCK_PLACERS.get(name, "heap"), allow_fail=True, nextpnr_args=nextpnr_args)
    except RuntimeError as exc:  # the flow failed; whatever nextpnr wrote remains
        print(f"{name}: {exc}", flush=True)


def markdown(size: int, util_rows: list[dict], synth_rows: list[dict]) -> str:
    s = block_sizes(CONFIG)
    lines = [f"### MAC utilization (chain line buffer -> PE array -> post-processing, "
             f"{s['oc_par']}x{s['c_par']} = {s['macs']} MACs, Verilator)", "",
             "| layer | useful MACs | cycles | MAC-active cycles | utilization |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['layer']} | {r['macs']:,} | {r['cycles']:,} | {r['mac_active']:,} | "
              f"{100 * r['utilization']:.1f} % |" for r in util_rows]
    lines += ["", "Cycles from the line buffer's `start` to the last int8 output (setup, row fill and "
              "pipeline drain included), input and output never stalled; outputs bit-exact vs the golden "
              f"model. The first layer pads 3 input channels to C_PAR = {s['c_par']} (at most "
              f"3/{s['c_par']} of the MACs useful). Folded, the host writes each output position's 3x3x3 "
              f"window as 27 channels (im2col, `jacquard.host.fold`; the compiler's `fold_taps`) and the "
              f"layer runs as a 1x1 conv: {-(-27 // s['c_par'])} lane tiles instead of 9 taps, at most "
              f"27/{-(-27 // s['c_par']) * s['c_par']} useful, for about 9x the input bytes on the host "
              "link. This chain is fed at one pixel beat per cycle; in the whole core the compiler folds "
              "only where the performance model says it pays (the DMA input rate can make the 9x larger "
              "folded input the limit). "
              f"Depthwise uses the diagonal of each {s['oc_par']}x{s['c_par']} block (at most "
              f"1/{s['oc_par']}); a 1x1 layer with C_in = 64 gives each 16-channel result "
              f"{64 // s['c_par']} cycles, enough for the {s['n_requant']} requantizers.", ""]
    if synth_rows:
        lines += [f"### Per-block synthesis, ULX3S-85F (smoke top, clocked by the PLL at "
                  f"{synth_rows[0]['constraint']:g} MHz)", "",
                  "| block | Fmax (MHz) | LUT4 | FF | DSP (MULT18X18D) | EBR (DP16KD) | placer "
                  "| critical path |",
                  "|---|---:|---:|---:|---:|---:|---|---|"]
        for r in synth_rows:
            p = r["path"] or {}
            crit = f"{p.get('delay_ns')} ns `{p.get('from')}` -> `{p.get('to')}`" if p else "-"
            lines.append(f"| {r['block']} | {r['fmax']:.1f} | {r['luts']:,} | {r['ffs']:,} | {r['dsps']} | "
                         f"{r['ebrs']} | {r['placer']} | {crit} |")
        lines += ["", "Each block alone under `boards/smoke.py` (an LFSR-fed register drives every input, "
                  "every output is XOR-reduced through registers onto an LED), at the ULX3S-85F sizes; "
                  "`nox -s synthesize -- ulx3s-85f --block NAME` builds one."]
        missing = [n for n in BLOCK_NAMES if n not in {r["block"] for r in synth_rows}]
        for r in filter(None, map(unrouted_row, missing)):
            lines += ["", f"{r['block']}: routing unfinished when stopped (router2 at {r['overused']:,} "
                      f"overused wires after {r['iterations']} iterations); nextpnr's estimate after "
                      f"placement {r['estimate']:.1f} MHz with {r['luts']:,} LUT4, {r['ffs']:,} FF, "
                      f"{r['dsps']} MULT18X18D, {r['ebrs']} DP16KD."]
            missing.remove(r["block"])
        if missing:
            lines += ["", f"Not measured in this run: {', '.join(missing)} (no finished place-and-route "
                      "under `build/blocks`; one block: "
                      "`python tests/bench/bench_datapath.py --no-sim --synth pe_array`)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="28x28 maps instead of 56x56 (quicker)")
    parser.add_argument("--synth", nargs="*", choices=BLOCK_NAMES, default=None,
                        help="(re)build these blocks first (all if none named)")
    parser.add_argument("--nextpnr-arg", action="append", default=[], metavar="ARG",
                        help="pass ARG to nextpnr for --synth builds (repeat per word)")
    parser.add_argument("--no-sim", action="store_true",
                        help="no simulation: the utilization table of the last run (build/blocks)")
    parser.add_argument("--only", metavar="TEXT", default=None,
                        help="simulate only the layers whose label contains TEXT; the others' rows come "
                             "from the last run")
    args = parser.parse_args(argv)
    size = 28 if args.small else 56
    if args.synth is not None:
        for name in args.synth or BLOCK_NAMES:
            synthesize_block(name, tuple(args.nextpnr_arg))
    cached = BUILD / f"utilization-{size}.json"
    last = json.loads(cached.read_text()) if cached.exists() else []
    if args.no_sim:  # the last simulation's figures
        util_rows = last
    else:
        fresh = {r["layer"]: r for r in utilization_rows(size, args.only)}
        if args.only is not None:  # the other rows as the last run measured them, in table order
            old = {r["layer"]: r for r in last}
            fresh = {label: fresh.get(label, old.get(label)) for label, _ in layers(size)}
        util_rows = [r for r in fresh.values() if r is not None]
        cached.parent.mkdir(parents=True, exist_ok=True)
        cached.write_text(json.dumps(util_rows, indent=1))
    synth_rows = [r for r in map(synth_row, BLOCK_NAMES) if r is not None]
    md = markdown(size, util_rows, synth_rows)
    print(md)
    if {r["layer"] for r in util_rows} != {label for label, _ in layers(size)}:
        print("not every layer has been measured: docs/RESULTS.md is left as it is", flush=True)
    elif util_rows:
        command = "nox -s bench -- datapath"
        if args.only is not None and not args.no_sim:
            command = f"python tests/bench/bench_datapath.py --only {args.only}; other rows: {command}"
        write_section("datapath", md, command=command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
