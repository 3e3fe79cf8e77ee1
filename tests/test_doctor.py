"""`jacquard --version` and `jacquard doctor`, including a tool hidden from PATH."""

import json
import os
import subprocess
import sys
from pathlib import Path

from jacquard.host.cli import main


def test_version(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:  # argparse's version action exits 0 after printing
        assert exc.code == 0
    assert capsys.readouterr().out.startswith("jacquard ")


def test_doctor_ok_on_set_up_machine(capsys):
    assert main(["doctor", "--json"]) == 0
    checks = json.loads(capsys.readouterr().out)
    assert all(c["ok"] for c in checks if c["required"])


def _path_without(tool: str, tmp_path: Path) -> str:
    """A PATH with every executable of the current PATH except ``tool``, as symlinks in one folder."""
    shadow = tmp_path / "bin"
    shadow.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.listdir(folder):
            target = Path(folder, entry)
            if entry != tool and not (shadow / entry).exists() and os.access(target, os.X_OK):
                (shadow / entry).symlink_to(target)
    return str(shadow)


def test_doctor_names_hidden_tool(tmp_path):
    env = dict(os.environ, PATH=_path_without("iverilog", tmp_path))
    proc = subprocess.run([sys.executable, "-m", "jacquard.host.cli", "doctor"], env=env,
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "iverilog" in proc.stdout and "apt-get install iverilog" in proc.stdout
