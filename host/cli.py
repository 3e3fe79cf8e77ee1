"""The ``jacquard`` command line: one entry point, one subcommand per job.

Each subcommand lives in its own ``_cmd_*`` function registered in :data:`COMMANDS`; later issues add
``compile``, ``run``, ``bench``, ``export-verilog`` and ``submit`` the same way.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from collections.abc import Callable

__all__ = ["main"]


def _version() -> str:
    return importlib.metadata.version("jacquard")


def _cmd_doctor(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from jacquard.host.doctor import run_checks

    checks = run_checks()
    missing = [c for c in checks if c.required and not c.ok]
    if args.json:
        print(json.dumps([c.__dict__ for c in checks], indent=2))
    else:
        table = Table(title=f"jacquard {_version()} toolchain")
        for column in ("tool", "status", "version / fix"):
            table.add_column(column)
        for c in checks:
            status = "[green]ok[/]" if c.ok else ("[red]MISSING[/]" if c.required else "[yellow]optional[/]")
            table.add_row(c.name, status, c.detail)
        console = Console(width=140)
        console.print(table)
        if missing:
            console.print(f"[red]{len(missing)} required tool(s) missing:[/] "
                          + ", ".join(c.name for c in missing))
    return 1 if missing else 0


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {
    "doctor": (
        "list each tool with its version, or what is missing and how to get it",
        lambda p: p.add_argument("--json", action="store_true", help="print the checks as JSON"),
        _cmd_doctor,
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jacquard", description="Jacquard CNN accelerator toolkit")
    parser.add_argument("--version", action="version", version=f"jacquard {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, configure, _) in COMMANDS.items():
        configure(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    return COMMANDS[args.command][2](args)


if __name__ == "__main__":
    sys.exit(main())
