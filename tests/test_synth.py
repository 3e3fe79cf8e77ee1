"""The open flow end to end: YoWASP yosys + nextpnr build a bitstream and report nextpnr's own figures.

The default tier builds a one-block smoke top for the iCEBreaker (seconds) and the whole board SoC
(bridge + core + memory + PLL) of the small target: the ULX3S-25F with the CONV+MAXPOOL
``ulx3s-25f`` config (the iCE40UP5K cannot hold the core). That build fills 74 % of the 25F's LUTs
(17.9k of 24.3k TRELLIS_COMB, since the sequencer's checks share their arithmetic; it was 85 %,
and router2 then needed about 100 iterations and once diverged under CI load) and routes in 74
router2 iterations, 13 minutes with four other jobs on the machine's two cores. It is marked
``first`` so that under pytest-xdist it starts at once and the other tests run beside it. The
ULX3S-85F reference SoC (over an hour) is the slow tier. docs/RESULTS.md (synth-* sections) has
the numbers.
"""

import json

import pytest

from jacquard.boards.__main__ import build_dir_of
from jacquard.boards.__main__ import main as boards_main
from jacquard.boards.configs import BOARDS
from jacquard.boards.smoke import block_macs
from jacquard.boards.synth import nextpnr_options, report_paths
from jacquard.rtl.datapath import block_sizes


def _build(board: str, tmp_path, block: str = "mac") -> dict:
    assert boards_main(["--build-dir", str(tmp_path), "synthesize", board, "--block", block,
                        "--no-results"]) == 0
    build_dir = build_dir_of(tmp_path, board, block)
    report = json.loads((build_dir / "report.json").read_text())
    assert report["bitstream"], "no bitstream written"
    assert (build_dir / report["bitstream"][0]).stat().st_size > 1000
    (fmax,) = report["fmax_mhz"].values()
    assert fmax > 10, report
    assert 0 < report["cells"]["used"] < report["cells"]["available"]
    return report


def test_icebreaker_smoke(tmp_path):
    report = _build("icebreaker", tmp_path)
    # -dsp must map the 8x8 multiply onto an SB_MAC16.
    assert report["dsps"]["used"] >= 1, report


@pytest.mark.slow
def test_ulx3s_85f_smoke(tmp_path):
    report = _build("ulx3s-85f", tmp_path)
    assert report["dsps"]["used"] >= 1, report


def _check_soc(report: dict, board: str) -> None:
    cfg = BOARDS[board].hardware_config()
    assert report["macs"] == cfg.macs and report["config_hash"] == cfg.config_hash(), report
    # The core's multipliers are in DSPs and its buffers in block RAM, all within the device.
    assert 0 < report["dsps"]["used"] <= report["dsps"]["available"], report
    assert 0 < report["brams"]["used"] <= report["brams"]["available"], report
    (fmax,) = report["fmax_mhz"].values()
    assert report["peak_gops"] == round(2 * cfg.macs * fmax / 1000, 2), report
    assert report["critical_path"] and report["critical_path"]["delay_ns"] > 0, report


@pytest.mark.first
def test_small_target_soc(tmp_path):
    report = _build("ulx3s-25f", tmp_path, "soc")
    _check_soc(report, "ulx3s-25f")
    (fmax,) = report["fmax_mhz"].values()
    assert fmax >= BOARDS["ulx3s-25f"].clock_mhz, f"the PLL's clock does not close timing: {report}"


@pytest.mark.slow
def test_ulx3s_85f_soc_meets_the_target(tmp_path):
    # The acceptance: >= 128 MACs at >= 100 MHz on the reference board.
    report = _build("ulx3s-85f", tmp_path, "soc")
    _check_soc(report, "ulx3s-85f")
    (fmax,) = report["fmax_mhz"].values()
    assert report["macs"] >= 128 and fmax >= 100, report


def test_unknown_board_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        boards_main(["--build-dir", str(tmp_path), "synthesize", "de10-nano"])
    assert "invalid choice" in capsys.readouterr().err


def test_place_only_reports_the_estimate_and_no_bitstream(tmp_path):
    assert boards_main(["--build-dir", str(tmp_path), "synthesize", "icebreaker", "--block", "mac",
                        "--place-only", "--no-results", "--nextpnr-arg=--placer-heap-beta",
                        "--nextpnr-arg=0.8"]) == 0
    report = json.loads((build_dir_of(tmp_path, "icebreaker", "mac") / "report.json").read_text())
    assert report["placed"] and report["router"] == "router2" and report["macs"] == 1
    assert report["nextpnr_args"] == ["--placer-heap-beta", "0.8"]
    script = (build_dir_of(tmp_path, "icebreaker", "mac") / "build_top.sh").read_text()
    assert "--placer-heap-beta 0.8" in script
    (fmax,) = report["fmax_mhz"].values()
    assert fmax > 10, report
    # Nothing to flash: no bitstream, no config hash, and timing is not met by an unrouted design.
    assert report["bitstream"] == [] and report["config_hash"] is None and not report["meets_timing"]


def test_block_builds_have_their_own_build_dirs(tmp_path):
    assert build_dir_of(tmp_path, "ulx3s-85f") == tmp_path / "ulx3s-85f"
    assert build_dir_of(tmp_path, "ulx3s-85f", "pe_array") == tmp_path / "blocks" / "pe_array" / "ulx3s-85f"
    assert build_dir_of(tmp_path, "ulx3s-85f", "pe_array") != build_dir_of(tmp_path, "ulx3s-85f", "datapath")


def test_smoke_blocks_report_their_macs():
    s = block_sizes()
    assert block_macs("pe_array") == block_macs("datapath") == s["c_par"] * s["oc_par"] >= 128
    assert block_macs("mac") == 1
    assert block_macs("line_buffer") == 0
    with pytest.raises(ValueError, match="'fft'"):
        block_macs("fft")


def test_nextpnr_options():
    assert "--router router2" in nextpnr_options()
    assert "--no-route" not in nextpnr_options() and "--timing-allow-fail" not in nextpnr_options()
    opts = nextpnr_options("router1", place_only=True, allow_fail=True).split()
    assert opts[opts.index("--router") + 1] == "router1"
    assert "--no-route" in opts and "--timing-allow-fail" in opts and "--report" in opts
    with pytest.raises(ValueError, match="'router3'"):
        nextpnr_options("router3")
    assert "--placer heap" in nextpnr_options()
    opts = nextpnr_options(placer="static").split()
    assert opts[opts.index("--placer") + 1] == "static"
    with pytest.raises(ValueError, match="'annealing'"):
        nextpnr_options(placer="annealing")
    # The 85F's builds use the static placer (HeAP left the datapath chain unroutable).
    assert BOARDS["ulx3s-85f"].placer == "static" and BOARDS["ulx3s-25f"].placer == "heap"
    # Extra arguments go last, one shell word each.
    assert nextpnr_options(extra=("--placer-heap-beta", "0.6")).endswith(" --placer-heap-beta 0.6")


def test_critical_paths_from_the_report_json():
    def step(kind, delay, src, dst):
        return {"type": kind, "delay": delay, "from": {"cell": src, "port": "Q"},
                "to": {"cell": dst, "port": "D"}}
    report = {"critical_paths": [
        {"from": "clk", "to": "clk", "path": [
            step("clk-to-q", 0.5, "a.ff", "a.lut"), step("logic", 0.4, "a.lut", "b"),
            step("routing", 1.1, "b", "c"), step("logic", 0.4, "c", "d.ff"),
            step("setup", 0.1, "d.ff", "d.ff")]},
        {"from": "clk", "to": "<async>", "path": [step("clk-to-q", 0.5, "x", "y")]},
        {"from": "clk", "to": "clk", "path": []},
    ]}
    (worst, other) = report_paths(report)
    assert worst == {"from_clock": "clk", "to_clock": "clk", "delay_ns": 2.5, "logic_levels": 2,
                     "from": "a.ff", "to": "d.ff"}
    assert other["delay_ns"] == 0.5 and other["logic_levels"] == 0
