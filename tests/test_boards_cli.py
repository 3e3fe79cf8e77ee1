"""``python -m jacquard.boards flash``: bad input gets a clear error before any programmer runs."""

import json

import pytest

from jacquard.boards.__main__ import main as boards_main
from jacquard.boards.configs import BOARDS
from jacquard.boards.synth import critical_path, device_utilization, memory_bits, placed_fmax, synthesize


def _fake_build(tmp_path, board: str, built_for: str, config_hash: int) -> None:
    d = tmp_path / board
    d.mkdir()
    suffix = BOARDS[board].programmer[2]
    (d / f"top{suffix}").write_bytes(b"\0" * 64)
    (d / "report.json").write_text(json.dumps({"board": built_for, "config_hash": config_hash}))


def test_flash_without_a_bitstream_says_to_build(tmp_path, capsys):
    assert boards_main(["--build-dir", str(tmp_path), "flash", "icebreaker"]) == 2
    assert "nox -s synthesize -- icebreaker" in capsys.readouterr().err


@pytest.mark.parametrize("built_for,same_hash", [("ulx3s-85f", True), ("icebreaker", False)])
def test_flash_refuses_a_bitstream_for_another_board_or_config(tmp_path, capsys, built_for, same_hash):
    want = BOARDS["icebreaker"].hardware_config().config_hash()
    _fake_build(tmp_path, "icebreaker", built_for, want if same_hash else want ^ 1)
    assert boards_main(["--build-dir", str(tmp_path), "flash", "icebreaker"]) == 2
    err = capsys.readouterr().err
    assert "was built for board" in err and "nox -s synthesize -- icebreaker" in err, err


def test_flash_with_no_board_attached_is_a_clear_error(tmp_path, capsys, monkeypatch):
    # The programmer is found but no board answers: a stand-in programmer that fails like iceprog does.
    want = BOARDS["icebreaker"].hardware_config().config_hash()
    _fake_build(tmp_path, "icebreaker", "icebreaker", want)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "iceprog").write_text("#!/bin/sh\necho 'cannot find iCE FTDI USB device' >&2\nexit 2\n")
    (fake / "iceprog").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    assert boards_main(["--build-dir", str(tmp_path), "flash", "icebreaker"]) == 1
    err = capsys.readouterr().err
    assert "Is the board plugged in" in err and "FTDI" in err, err


def test_critical_path_is_parsed_from_the_nextpnr_log():
    log = ("Info: Critical path report for clock 'clk' (posedge -> posedge):\n"
           "Info: curr total\n"
           "Info:  0.5  0.5  Source soc.sram.s2_data3_DFF.Q\n"
           "Info:  1.2  1.7    Net soc.sram.s2_data3[4] budget 0 ns (1,1) -> (2,2)\n"
           "Info:  0.4  2.1  Sink soc.sram.s3_data_DFF.D\n"
           "Info: 0.9 ns logic, 1.2 ns routing\n\n")
    path = critical_path(log)
    assert path == {"clock": "clk", "delay_ns": 2.1, "from": "soc.sram.s2_data3_DFF.Q",
                    "to": "soc.sram.s3_data_DFF.D", "nets": ["soc.sram.s2_data3[4]"]}, path
    assert critical_path("no timing here") is None


_NEXTPNR_LOG = """Info: Device utilisation:
Info: \t          TRELLIS_IO:       8/    365     2%
Info: \t              DP16KD:     297/    208   142%
Info: \t          MULT18X18D:     141/    156    90%

Info: Placed 9 cells based on constraints.
Info: Max frequency for clock '$glbnet$clk': 30.59 MHz (FAIL at 100.00 MHz)
"""
_RTLIL = """module \\top.soc.sram
  memory width 32 size 512 \\bank0
  memory width 32 size 512 \\bank1
end
module \\top.soc.core.line_buffer
  memory width 64 size 32768 \\rows_mem
end
module \\top
end
"""


def test_failure_report_parsers():
    assert device_utilization(_NEXTPNR_LOG) == {"TRELLIS_IO": {"used": 8, "available": 365},
                                                "DP16KD": {"used": 297, "available": 208},
                                                "MULT18X18D": {"used": 141, "available": 156}}
    assert device_utilization("Info: no table here\n") == {}
    assert placed_fmax(_NEXTPNR_LOG) == {"$glbnet$clk": 30.59}
    # With two clocks nextpnr pads the shorter name.
    two = "Info: Max frequency for clock     'clk': 54.73 MHz (FAIL at 100.00 MHz)\n"
    assert placed_fmax(two) == {"clk": 54.73}
    assert placed_fmax("Info: no timing yet\n") == {}
    assert list(memory_bits(_RTLIL).items()) == [("soc.core.line_buffer", 64 * 32768),
                                                 ("soc.sram", 2 * 32 * 512)]


def test_lut_mapper_is_checked(tmp_path):
    with pytest.raises(ValueError, match="lut_mapper must be one of"):
        synthesize("ulx3s-85f", None, tmp_path, lut_mapper="abc10")
    with pytest.raises(ValueError, match="only implemented for ecp5"):
        synthesize("icebreaker", None, tmp_path, lut_mapper="abc")
