"""Static timing over a nextpnr SDF: the worst register-to-register paths by name.

nextpnr 0.11 prints no critical path after ``--no-route``, and a full route of the 85F SoC takes
hours. Its SDF (``--nextpnr-arg=--sdf --nextpnr-arg=placed.sdf``) is written after placement
too, with the placer's predicted interconnect delays, so this longest-path pass over it gives the
paths behind the post-placement Fmax estimate (it reproduces nextpnr's figure: 22.37 ns for
44.70 MHz on the 85F SoC at c9416d6)::

    python -m jacquard.boards.sdf_timing build/ulx3s-85f/placed.sdf --paths 5

Arrival times start at every clock-to-output arc (flip-flops, DSP and RAM registers) and end at
every pin with a setup check; a path's delay is its arrival plus that setup. All delays are the
SDF's maximum corner. Endpoints are grouped by (start module, end module), so a systemic cause (a
broadcast net, a reset) shows up as one large group.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["SdfTiming", "analyse", "parse_sdf", "report", "summary"]

_TOKEN = re.compile(r'\(|\)|"[^"]*"|[^\s()]+')


def parse_sdf(text: str) -> list:
    """The SDF as nested lists of tokens (strings unquoted)."""
    stack: list[list] = [[]]
    for tok in _TOKEN.findall(text):
        if tok == "(":
            stack.append([])
        elif tok == ")":
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok.strip('"'))
    if len(stack) != 1 or not stack[0]:
        raise ValueError("not a complete SDF file (unbalanced parentheses)")
    return stack[0][0]


def _max_ns(triple: list, timescale_ns: float) -> float:
    """The largest value of an SDF ``(min:typ:max)`` triple, in ns."""
    parts = [p for p in (triple[0] if triple else "0").split(":") if p]
    return max(float(p) for p in parts) * timescale_ns if parts else 0.0


@dataclass
class SdfTiming:
    """Arrival times and the worst predecessor of every pin reached from a register output."""

    divider: str = "/"
    edges: dict[str, list[tuple[str, float]]] = field(default_factory=lambda: defaultdict(list))
    clock_to_q: dict[str, float] = field(default_factory=dict)
    setup: dict[str, float] = field(default_factory=dict)
    arrival: dict[str, float] = field(default_factory=dict)
    pred: dict[str, str | None] = field(default_factory=dict)

    def module(self, pin: str, depth: int = 3) -> str:
        return ".".join(pin.rsplit(self.divider, 1)[0].split(".")[:depth])

    def path(self, pin: str) -> list[str]:
        """The pins of the worst path ending at ``pin``, from its start."""
        chain = []
        cur: str | None = pin
        while cur is not None:
            chain.append(cur)
            cur = self.pred.get(cur)
        return chain[::-1]

    def endpoints(self) -> list[tuple[float, str]]:
        """(delay in ns, pin) of every reached endpoint, worst first."""
        return sorted(((self.arrival[p] + s, p) for p, s in self.setup.items() if p in self.arrival),
                      reverse=True)


def analyse(sdf: list, exclude: tuple[str, ...] = ()) -> SdfTiming:
    """Longest arrival times over the SDF's arcs; start pins beginning with ``exclude`` are skipped."""
    t = SdfTiming()
    scale = 1e-3  # nextpnr writes TIMESCALE 1ps
    for entry in sdf[1:]:
        if not isinstance(entry, list):
            continue
        if entry[0] == "DIVIDER":
            t.divider = entry[1]
        elif entry[0] == "TIMESCALE":
            unit = re.fullmatch(r"(\d+)\s*(ps|ns)", "".join(entry[1:]))
            if unit:
                scale = int(unit.group(1)) * (1e-3 if unit.group(2) == "ps" else 1.0)
        if entry[0] != "CELL":
            continue
        inst = ""
        for item in entry[1:]:
            if item[0] == "INSTANCE":
                inst = item[1] if len(item) > 1 else ""
            elif item[0] == "DELAY":
                for block in item[1:]:
                    for arc in block[1:]:
                        if arc[0] == "IOPATH":
                            src = arc[1][1] if isinstance(arc[1], list) else arc[1]
                            dst = f"{inst}{t.divider}{arc[2]}"
                            if src.startswith("CLK"):
                                t.clock_to_q[dst] = max(t.clock_to_q.get(dst, 0.0), _max_ns(arc[3], scale))
                            else:
                                t.edges[f"{inst}{t.divider}{src}"].append((dst, _max_ns(arc[3], scale)))
                        elif arc[0] == "INTERCONNECT":
                            t.edges[arc[1]].append((arc[2], _max_ns(arc[3], scale)))
            elif item[0] == "TIMINGCHECK":
                for check in item[1:]:
                    if check[0] in ("SETUPHOLD", "SETUP"):
                        pin = check[1][1] if isinstance(check[1], list) else check[1]
                        key = f"{inst}{t.divider}{pin}"
                        t.setup[key] = max(t.setup.get(key, 0.0), _max_ns(check[3], scale))
    indeg: Counter = Counter()
    for outs in t.edges.values():
        for dst, _ in outs:
            indeg[dst] += 1
    for q, d in t.clock_to_q.items():
        if not q.startswith(exclude):
            t.arrival[q], t.pred[q] = d, None
    ready = [n for n in set(t.edges) | set(t.clock_to_q) if indeg[n] == 0]
    while ready:  # Kahn's order: every arc is relaxed once its source is final
        node = ready.pop()
        for dst, d in t.edges.get(node, ()):
            if node in t.arrival and t.arrival[node] + d > t.arrival.get(dst, -1.0):
                t.arrival[dst], t.pred[dst] = t.arrival[node] + d, node
            indeg[dst] -= 1
            if indeg[dst] == 0:
                ready.append(dst)
    return t


def _groups(t: SdfTiming, ends: list[tuple[float, str]], over_ns: float) -> dict[tuple[str, str], list]:
    grouped: dict[tuple[str, str], list] = {}
    for d, pin in ends:
        if d < over_ns:
            break
        key = (t.module(t.path(pin)[0]), t.module(pin))
        grouped.setdefault(key, [0, d, pin])[0] += 1
    return grouped


def summary(t: SdfTiming, over_ns: float = 10.0, groups: int = 10) -> dict:
    """The figures a build report keeps: worst path (its pins), endpoints over ``over_ns``, groups."""
    ends = t.endpoints()
    if not ends:
        return {}
    grouped = _groups(t, ends, over_ns)
    return {
        "worst_ns": round(ends[0][0], 2),
        "endpoints": len(ends),
        "over_ns": round(over_ns, 3),
        "endpoints_over": sum(1 for d, _ in ends if d >= over_ns),
        "worst_path": t.path(ends[0][1]),
        "groups": [{"from": a, "to": b, "endpoints": n, "worst_ns": round(d, 2)}
                   for (a, b), (n, d, _) in sorted(grouped.items(), key=lambda kv: -kv[1][1])[:groups]],
    }


def report(t: SdfTiming, paths: int = 3, over_ns: float = 10.0, groups: int = 25) -> str:
    """A histogram of endpoint delays, the groups of endpoints over ``over_ns`` and the worst paths."""
    ends = t.endpoints()
    if not ends:
        return "no register-to-register path found"
    lines = [f"{len(t.clock_to_q)} start pins, {len(t.setup)} end pins, {len(ends)} reached; "
             f"worst {ends[0][0]:.2f} ns ({1000 / ends[0][0]:.1f} MHz)"]
    hist = Counter(int(d) for d, _ in ends)
    lines += [f"  {k:3d}-{k + 1:3d} ns: {hist[k]}" for k in sorted(hist, reverse=True)[:12]]
    grouped = _groups(t, ends, over_ns)
    lines.append(f"endpoints over {over_ns} ns by (start module -> end module): count, worst ns")
    for (a, b), (n, d, _) in sorted(grouped.items(), key=lambda kv: -kv[1][1])[:groups]:
        lines.append(f"  {n:6d} {d:6.2f}  {a} -> {b}")
    for _, d, pin in sorted(grouped.values(), key=lambda g: -g[1])[:paths]:
        lines.append(f"\n{d:.2f} ns to {pin}:")
        lines += [f"  {t.arrival[p]:6.2f}  {p}" for p in t.path(pin)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jacquard.boards.sdf_timing",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("sdf", type=Path)
    parser.add_argument("--paths", type=int, default=3, help="worst paths to print, one per group")
    parser.add_argument("--over", type=float, default=10.0, help="group endpoints slower than this (ns)")
    parser.add_argument("--exclude", action="append", default=[], metavar="PREFIX",
                        help="skip start pins whose instance begins with PREFIX")
    args = parser.parse_args(argv)
    if not args.sdf.exists():
        parser.error(f"{args.sdf} does not exist: build with --place-only --nextpnr-arg=--sdf "
                     "--nextpnr-arg=placed.sdf first")
    print(report(analyse(parse_sdf(args.sdf.read_text()), tuple(args.exclude)), args.paths, args.over))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
