"""The SDF static timing pass (boards/sdf_timing.py) on a small SDF whose longest path is known."""

import pytest

from jacquard.boards.sdf_timing import analyse, main, parse_sdf, report

# a.Q -> (0.5 ns) lut.A -> lut.Z (0.2 ns) -> (1.0 ns) b.DI, setup 0.1; and a.Q -> (4.0 ns) c.DI,
# from a second start r.Q (clock-to-out 0.4) that --exclude can drop.
_SDF = """(DELAYFILE (SDFVERSION "3.0") (DIVIDER /) (TIMESCALE 1ps)
  (CELL (CELLTYPE "top") (INSTANCE )
    (DELAY (ABSOLUTE
      (INTERCONNECT a/Q lut/A (500:500:500) (500:500:500))
      (INTERCONNECT lut/Z b/DI (900:950:1000) (900:950:1000))
      (INTERCONNECT r/Q c/DI (4000:4000:4000) (4000:4000:4000)))))
  (CELL (CELLTYPE "TRELLIS_FF") (INSTANCE a) (DELAY (ABSOLUTE (IOPATH CLK Q (300:300:300) (300:300:300)))))
  (CELL (CELLTYPE "TRELLIS_FF") (INSTANCE r) (DELAY (ABSOLUTE (IOPATH CLK Q (400:400:400) (400:400:400)))))
  (CELL (CELLTYPE "TRELLIS_COMB") (INSTANCE lut) (DELAY (ABSOLUTE (IOPATH A Z (200:200:200) (200:200:200)))))
  (CELL (CELLTYPE "TRELLIS_FF") (INSTANCE b)
    (TIMINGCHECK (SETUPHOLD (posedge DI) (posedge CLK) (100:100:100) (0:0:0))))
  (CELL (CELLTYPE "TRELLIS_FF") (INSTANCE c)
    (TIMINGCHECK (SETUPHOLD (posedge DI) (posedge CLK) (100:100:100) (0:0:0))))
)
"""


def test_longest_paths_and_their_pins():
    t = analyse(parse_sdf(_SDF))
    ends = t.endpoints()
    # r.Q -> c.DI: 0.4 + 4.0 + 0.1; a.Q -> lut -> b.DI: 0.3 + 0.5 + 0.2 + 1.0 (max corner) + 0.1
    assert [(round(d, 3), p) for d, p in ends] == [(4.5, "c/DI"), (2.1, "b/DI")]
    assert t.path("b/DI") == ["a/Q", "lut/A", "lut/Z", "b/DI"]
    assert "worst 4.50 ns (222.2 MHz)" in report(t, over_ns=1.0)


def test_excluded_starts_are_not_timed():
    t = analyse(parse_sdf(_SDF), exclude=("r",))
    assert [p for _, p in t.endpoints()] == ["b/DI"]


def test_a_truncated_sdf_is_refused_and_a_missing_one_named(tmp_path, capsys):
    with pytest.raises(ValueError, match="unbalanced"):
        parse_sdf(_SDF[:-3])
    with pytest.raises(SystemExit):
        main([str(tmp_path / "placed.sdf")])
    assert "--place-only --nextpnr-arg=--sdf" in capsys.readouterr().err


def test_a_placed_build_reports_its_worst_paths(tmp_path):
    # What a --place-only SoC build keeps (report["placed_timing"]) and writes to docs/RESULTS.md.
    from jacquard.boards.__main__ import _placed_markdown
    from jacquard.boards.sdf_timing import summary

    timing = summary(analyse(parse_sdf(_SDF)), over_ns=2.0)
    assert timing["worst_ns"] == 4.5 and timing["endpoints_over"] == 2
    assert timing["worst_path"] == ["r/Q", "c/DI"]
    assert [(g["from"], g["to"], g["endpoints"]) for g in timing["groups"]] == [("r", "c", 1), ("a", "b", 1)]
    used = {"used": 1, "available": 2}
    report_ = {"board": "ulx3s-85f", "config": "ulx3s-85f", "fmax_mhz": {"clk": 222.2}, "cells": used,
               "dsps": used, "brams": used, "macs": 128, "build_seconds": 1.0, "placed_timing": timing}
    text = _placed_markdown(report_, "soc")
    assert "placed, not routed" in text and "worst 4.5 ns from `r/Q` to `c/DI`" in text
    assert "| `r` | `c` | 1 | 4.5 |" in text
