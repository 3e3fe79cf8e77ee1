"""JacquardCore export: the CLI writes plain Verilog with the documented ports; docs/CORE.md is current."""

import re
from pathlib import Path

import pytest

from jacquard.host.cli import main
from jacquard.rtl.core import JacquardCore, port_table

DOC = Path(__file__).parent.parent / "docs" / "CORE.md"


def test_core_md_port_table_is_current():
    text = DOC.read_text()
    section = text.split("<!-- BEGIN GENERATED: jacquard.rtl.core.port_table -->\n")[1].split("\n<!-- END")[0]
    assert section == "\n".join(port_table(JacquardCore("ulx3s-85f")))


def test_export_verilog_cli(tmp_path, capsys):
    out = tmp_path / "core.v"
    assert main(["export-verilog", "--config", "sim-small", "-o", str(out)]) == 0
    text = out.read_text()
    head = re.search(r"module jacquard_core\((.*?)\);", text, re.S)
    assert head, "no jacquard_core module"
    ports = {p.strip() for p in head.group(1).split(",")}
    documented = {line.split("`")[1] for line in port_table(JacquardCore("sim-small"))[2:]}
    assert ports == documented
    assert "wrote" in capsys.readouterr().out


def test_export_verilog_unknown_config(tmp_path, capsys):
    assert main(["export-verilog", "--config", "nope", "-o", str(tmp_path / "x.v")]) == 2
    assert "nope" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [3.5, None])
def test_core_refuses_bad_config(bad):
    with pytest.raises(TypeError, match="config"):
        JacquardCore(bad)
