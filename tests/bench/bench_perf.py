"""Benchmark: the performance model (host/perf.py) against JacquardCore's own counters, per layer.

Each layer runs alone on the RTL core in Verilator (sim-small) through the helpers of
tests/test_perf_vs_rtl.py, its output checked bit-exactly against the reference executor, and
its BUSY_CYCLES counter compared with the model. Writes the ``perf-vs-rtl`` section of
docs/RESULTS.md.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' shared helpers
from test_perf_vs_rtl import CFG, classifier, group_layers, measure, new_op_layers, pnet, single_layers

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


def main() -> int:
    cases = [("single layers", lambda: single_layers(np.random.default_rng(5)), 5),
             ("AVGPOOL, GLOBAL_AVGPOOL, ADD", lambda: new_op_layers(np.random.default_rng(6)), 6),
             ("output-channel groups (weights prefetched while the previous group computes)",
              lambda: group_layers(np.random.default_rng(7)), 7),
             ("classifier 28x28", lambda: classifier(np.random.default_rng(22), 28), 22),
             ("MTCNN P-Net 64x64 (int8, astronaut crop)", lambda: pnet(64), 64)]
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, (title, build, seed) in enumerate(cases):
            img, descs = build()
            work = Path(tmp) / f"case{k}"
            work.mkdir()
            rows = measure(work, img, descs, seed)
            parts.append(markdown(title, rows))
            print(parts[-1], flush=True)
    intro = (f"Per-layer cycles of the analytical model (`jacquard.host.perf`) against JacquardCore's "
             f"BUSY_CYCLES counter, each layer run alone on the RTL in Verilator (config {CFG.name}, "
             f"{CFG.macs} MACs, AxiRam without back-pressure); every output checked bit-exact against "
             f"the reference executor. Goal: within 10 % per layer.")
    write_section("perf-vs-rtl", intro + "\n\n" + "\n\n".join(parts), command="nox -s bench -- perf")
    return 0


if __name__ == "__main__":
    sys.exit(main())
