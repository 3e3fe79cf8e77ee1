"""Write benchmark figures into docs/RESULTS.md, one named section per benchmark.

Each benchmark owns one section, delimited by HTML comments, and replaces only that section, so
benchmarks can run in any order and the file keeps the latest figures of each.
"""

from __future__ import annotations

import datetime as _dt
import re
from pathlib import Path

__all__ = ["RESULTS_MD", "write_section"]

RESULTS_MD = Path(__file__).resolve().parent.parent / "docs" / "RESULTS.md"

_HEADER = """# Results

Measured figures, each written by the benchmark or build that produced it (`nox -s bench`,
`nox -s synthesize -- BOARD`). Every section says when and with which command it was measured.
Do not edit sections by hand: rerun the command.
"""


def write_section(name: str, markdown: str, *, command: str, path: Path = RESULTS_MD) -> None:
    """Replace (or append) section ``name`` of ``path`` with ``markdown``, stamped with date and command."""
    if not re.fullmatch(r"[a-z0-9][a-z0-9-]*", name):
        raise ValueError(f"Section name must be lowercase letters, digits and dashes, not {name!r}")
    start, end = f"<!-- section:{name} -->", f"<!-- /section:{name} -->"
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    body = f"{start}\n{markdown.strip()}\n\n_Measured {stamp} with `{command}`._\n{end}"
    text = path.read_text() if path.exists() else _HEADER
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
