"""The open flow end to end: YoWASP yosys + nextpnr build a bitstream and report nextpnr's own figures."""

import json

import pytest

from jacquard.boards.__main__ import main as boards_main


def _build(board: str, tmp_path) -> dict:
    assert boards_main(["--build-dir", str(tmp_path), "synthesize", board, "--block", "mac",
                        "--no-results"]) == 0
    report = json.loads((tmp_path / board / "report.json").read_text())
    assert report["bitstream"], "no bitstream written"
    assert (tmp_path / board / report["bitstream"][0]).stat().st_size > 1000
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


def test_unknown_board_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        boards_main(["--build-dir", str(tmp_path), "synthesize", "de10-nano"])
    assert "invalid choice" in capsys.readouterr().err
