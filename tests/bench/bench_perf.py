"""Benchmark: the performance model (host/perf.py) against JacquardCore's own counters, per layer.

Each layer runs alone on the RTL core in Verilator (sim-small) through the helpers of
tests/test_perf_vs_rtl.py, its output checked bit-exactly against the reference executor, and
its BUSY_CYCLES counter compared with the model. Writes the ``perf-vs-rtl`` section of
docs/RESULTS.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' shared helpers
from test_perf_vs_rtl import CFG, classifier, group_layers, measure, new_op_layers, pnet, single_layers

from jacquard.host.perf import DEFAULT, estimate_descriptor, program_overhead
from jacquard.host.results import write_section


def markdown(title: str, rows: list[dict]) -> str:
    lines = [f"### {title}", "", "| layer | model cycles | RTL cycles | error | RTL MAC utilization |",
             "|---|---:|---:|---:|---:|"]
    lines += [f"| {r['layer']} | {r['model']:,} | {r['rtl']:,} | {100 * r['error']:+.1f} % | "
              f"{100 * r['rtl_util']:.1f} % |" for r in rows]
    total_macs = sum(r["macs"] for r in rows)
    total_rtl = sum(r["rtl"] for r in rows)
    lines += ["", f"All layers: {total_rtl:,} RTL cycles, MAC utilization "
              f"{100 * total_macs / (CFG.macs * total_rtl):.1f} %, worst model error "
              f"{100 * max(abs(r['error']) for r in rows):.1f} %."]
    wide = [r for r in rows if r["wide"]]
    if wide and len(wide) < len(rows):
        util = sum(r["macs"] for r in wide) / (CFG.macs * sum(r["rtl"] for r in wide))
        lines[-1] += f" CONV/FC layers with C_in >= C_PAR ({CFG.c_par}): MAC utilization {100 * util:.1f} %."
    return "\n".join(lines)


def fit_overheads(rows: list[dict]) -> dict[str, int]:
    """Least-squares ``group_overhead`` and ``group_switch`` for the measured rows.

    Both enter the model additively: a layer pays ``descriptor_overhead + group_overhead`` once
    and ``group_switch`` per further group. The first two always come together, so only their sum
    is measured here; ``descriptor_overhead`` is kept and ``group_overhead`` takes the rest.
    Residuals are weighted by 1 / RTL cycles, since the tolerance is relative.
    """
    zero = dataclasses.replace(DEFAULT, descriptor_overhead=0, group_overhead=0, group_switch=0)
    a, b = [], []
    for r in rows:
        d = r["desc"]
        base = estimate_descriptor(d, CFG, zero)
        extra = r["rtl"] - base.cycles - program_overhead(CFG)
        a.append([1.0 / r["rtl"], (base.groups - 1) / r["rtl"]])
        b.append(extra / r["rtl"])
    (fixed, switch), *_ = np.linalg.lstsq(np.array(a), np.array(b), rcond=None)
    return {"group_overhead": round(fixed) - DEFAULT.descriptor_overhead, "group_switch": round(switch)}


def refit(rows: list[dict]) -> None:
    fitted = fit_overheads(rows)
    k = dataclasses.replace(DEFAULT, **fitted)
    worst_old = max(abs(r["error"]) for r in rows)
    errors = [(estimate_descriptor(r["desc"], CFG, k).cycles + program_overhead(CFG) - r["rtl"]) / r["rtl"]
              for r in rows]
    print(f"fitted on {len(rows)} layers: {fitted} (now group_overhead={DEFAULT.group_overhead}, "
          f"group_switch={DEFAULT.group_switch}); worst error {100 * worst_old:.1f} % -> "
          f"{100 * max(map(abs, errors)):.1f} %, mean |error| "
          f"{100 * np.mean([abs(r['error']) for r in rows]):.1f} % -> {100 * np.mean(np.abs(errors)):.1f} %")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true",
                        help="also fit group_overhead and group_switch to the measured layers and print them")
    args = parser.parse_args()
    cases = [("single layers", lambda: single_layers(np.random.default_rng(5)), 5),
             ("AVGPOOL, GLOBAL_AVGPOOL, ADD", lambda: new_op_layers(np.random.default_rng(6)), 6),
             ("output-channel groups (weights prefetched while the previous group computes)",
              lambda: group_layers(np.random.default_rng(7)), 7),
             ("classifier 28x28", lambda: classifier(np.random.default_rng(22), 28), 22),
             ("MTCNN P-Net 64x64 (int8, astronaut crop)", lambda: pnet(64), 64)]
    parts = []
    measured = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (title, build, seed) in enumerate(cases):
            img, descs = build()
            work = Path(tmp) / f"case{k}"
            work.mkdir()
            rows = measure(work, img, descs, seed)
            measured += rows
            parts.append(markdown(title, rows))
            print(parts[-1], flush=True)
    if args.fit:
        refit(measured)
    intro = (f"Per-layer cycles of the analytical model (`jacquard.host.perf`) against JacquardCore's "
             f"BUSY_CYCLES counter, each layer run alone on the RTL in Verilator (config {CFG.name}, "
             f"{CFG.macs} MACs, AxiRam without back-pressure); every output checked bit-exact against "
             f"the reference executor. Goal: within 10 % per layer.")
    write_section("perf-vs-rtl", intro + "\n\n" + "\n\n".join(parts), command="nox -s bench -- perf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
