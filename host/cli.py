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


# -- compile / run / bench (issue 6) -----------------------------------------------------------------

def _progress():
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(),
                    transient=True, console=_stderr())


def _stderr():
    from rich.console import Console

    return Console(stderr=True, width=140)


def _input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]] | None:
    if not items:
        return None
    out = {}
    for item in items:
        name, sep, dims = item.rpartition("=")
        try:
            out[name] = tuple(int(d) for d in dims.replace("x", ",").split(","))
        except ValueError:
            raise SystemExit(f"error: --input-shape takes NAME=D0,D1,..., not {item!r}") from None
        if not sep or not name:
            raise SystemExit(f"error: --input-shape takes NAME=D0,D1,..., not {item!r}")
    return out


def _load_npy(path: str, what: str):
    import numpy as np

    from jacquard.host.errors import ShapeError

    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ShapeError(f"cannot read {what} {path!r} ({e}); save it with numpy.save") from e
    return dict(data) if hasattr(data, "files") else data


def _executable(args, progress=None):
    """The executable of ``args.model``: a .jqp as it is, or an ONNX model compiled for ``args.config``."""
    from pathlib import Path

    from jacquard.host import jqp
    from jacquard.host.compiler import compile_plan, get_config
    from jacquard.host.importer import load_model
    from jacquard.host.partition import Limits, partition

    if Path(args.model).suffix == ".jqp":
        return jqp.load(args.model)
    cfg = get_config(args.config or "ulx3s-85f")
    calib = _load_npy(args.calibrate, "calibration set") if getattr(args, "calibrate", None) else None
    task = progress.add_task("import", total=3) if progress else None
    imported = load_model(args.model, _input_shapes(args.input_shape), calibrate=calib)
    if progress:
        progress.update(task, advance=1, description="partition")
    plan = partition(imported, Limits(max_kernel=min(7, cfg.max_kernel_h)))
    if progress:
        progress.update(task, advance=1, description="compile")
    exe = compile_plan(plan, cfg, fold_taps=getattr(args, "fold_taps", True))
    if progress:
        progress.update(task, advance=1)
    return exe


def _guarded(fn):
    """Run a subcommand; a JacquardError becomes one line on stderr and exit status 1."""
    def run(args):
        from jacquard.host.errors import JacquardError

        try:
            return fn(args)
        except JacquardError as e:
            _stderr().print(f"[red]error:[/] {type(e).__name__}: {e}", markup=True, highlight=False)
            return 1
    return run


def _compile_summary(exe) -> dict:
    from jacquard.host.device import estimate

    est = estimate(exe)
    return {"config": exe.config.name, "config_hash": f"{exe.config_hash:#010x}",
            "layers": exe.report, "memory": exe.memory, "estimate": est.as_dict()}


@_guarded
def _cmd_compile(args) -> int:
    from rich.console import Console
    from rich.table import Table

    with _progress() as progress:
        exe = _executable(args, progress)
    exe.save(args.output)
    summary = _compile_summary(exe)
    summary["output"] = args.output
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    console = Console(width=160)
    if args.report:
        table = Table(title=f"{args.model} on {exe.config.name}")
        for column in ("layer", "op", "where", "MACs", "descriptors", "reason"):
            table.add_column(column, justify="right" if column in ("MACs", "descriptors") else "left")
        for r in exe.report:
            color = {"accelerator": "green", "host": "yellow", "cpu": "red"}.get(r["where"], "")
            table.add_row(r["layer"], r["op"], f"[{color}]{r['where']}[/]", f"{r['macs']:,}",
                          str(r["descriptors"]), r["reason"])
        console.print(table)
        total = sum(r["macs"] for r in exe.report) or 1
        acc = sum(r["macs"] for r in exe.report if r["where"] == "accelerator")
        console.print(f"accelerator MACs: {acc:,} of {total:,} ({100 * acc / total:.1f} %)")
    m, e = summary["memory"], summary["estimate"]
    console.print(f"wrote {args.output}: config {exe.config.name} ({summary['config_hash']}), device memory "
                  f"{m['total_bytes']:,} bytes (constants and programs {m['image_bytes']:,}, activations "
                  f"{m['arena_bytes']:,}, {m['arena_naive_bytes']:,} without buffer reuse); estimated "
                  f"{e['latency_ms']:.3f} ms, {e['fps']:.1f} fps at {e['clock_mhz']:g} MHz, MAC utilization "
                  f"{100 * e['mac_utilization']:.1f} %")
    return 0


def _open_device(args, exe):
    from jacquard.host.device import Device

    # emu and sim are built for the program's config; a board (uart:) is what it is, and the driver
    # refuses a program for another config with the fix.
    scheme = args.backend.partition(":")[0]
    options = {"config": exe.config} if scheme in ("emu", "sim") else {}
    if scheme == "emu" and exe.memory_size > 64 << 20:
        options["memory_bytes"] = exe.memory_size
    return Device(args.backend, timeout=args.timeout, **options)


@_guarded
def _cmd_run(args) -> int:
    from pathlib import Path

    import numpy as np

    with _progress() as progress:
        exe = _executable(args, progress)
    data = _load_npy(args.input, "input")
    with _open_device(args, exe) as dev:
        dev.load(exe)
        outputs = dev.run(data)
        seconds = dev.timings[-1]
        est = dev.estimate()
    out = Path(args.output)
    if len(outputs) == 1 and out.suffix != ".npz":
        np.save(out, next(iter(outputs.values())))
    else:
        if out.suffix != ".npz":
            out = out.with_suffix(".npz")
        np.savez(out, **outputs)
    summary = {"output": str(out), "backend": args.backend, "seconds": seconds,
               "outputs": {k: {"shape": list(v.shape), "dtype": v.dtype.name} for k, v in outputs.items()},
               "estimate": est.as_dict()}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        shapes = ", ".join(f"{k} {v.dtype.name}{list(v.shape)}" for k, v in outputs.items())
        print(f"wrote {out}: {shapes}; {args.backend} took {1e3 * seconds:.2f} ms; estimated FPGA latency "
              f"{est.as_dict()['latency_ms']:.3f} ms at {est.clock_mhz:g} MHz")
    return 0


@_guarded
def _cmd_bench(args) -> int:
    import time

    import numpy as np
    from rich.console import Console
    from rich.table import Table

    with _progress() as progress:
        exe = _executable(args, progress)
    rng = np.random.default_rng(args.seed)
    frames = [{n: rng.normal(0, 1, exe.input_shapes[n]).astype(exe.input_dtypes[n]) if
               np.dtype(exe.input_dtypes[n]).kind == "f" else
               rng.integers(-128, 128, exe.input_shapes[n]).astype(exe.input_dtypes[n]) for n in exe.inputs}
              for _ in range(min(args.frames, 8))]
    stream = [frames[i % len(frames)] for i in range(args.frames)]
    with _open_device(args, exe) as dev, _progress() as progress:
        dev.load(exe)
        dev.run(frames[0])  # warm up (onnxruntime sessions, caches)
        dev.timings.clear()
        task = progress.add_task(f"bench on {args.backend}", total=args.frames)
        t0 = time.perf_counter()
        for chunk in range(0, args.frames, 16):
            dev.run_batch(stream[chunk:chunk + 16], pipeline=not args.no_pipeline)
            progress.update(task, advance=len(stream[chunk:chunk + 16]))
        wall = time.perf_counter() - t0
        lat = np.array(dev.timings)
        est = dev.estimate()
    result = {"model": args.model, "backend": args.backend, "config": exe.config.name, "frames": args.frames,
              "fps": args.frames / wall, "latency_ms_p50": 1e3 * float(np.percentile(lat, 50)),
              "latency_ms_p95": 1e3 * float(np.percentile(lat, 95)), "fpga_estimate": est.as_dict()}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    table = Table(title=f"{args.model} on {args.backend} ({exe.config.name})")
    table.add_column("figure")
    table.add_column("value", justify="right")
    e = result["fpga_estimate"]
    for k, v in (("frames", f"{args.frames}"), (f"{args.backend} fps", f"{result['fps']:.1f}"),
                 ("latency p50", f"{result['latency_ms_p50']:.2f} ms"),
                 ("latency p95", f"{result['latency_ms_p95']:.2f} ms"),
                 (f"estimated FPGA fps at {e['clock_mhz']:g} MHz", f"{e['fps']:.1f}"),
                 ("estimated FPGA latency", f"{e['latency_ms']:.3f} ms"),
                 ("estimated MAC utilization", f"{100 * e['mac_utilization']:.1f} %")):
        table.add_row(k, v)
    Console(width=120).print(table)
    return 0


def _cmd_submit(args) -> int:
    from jacquard.spark_ext.offload import submit

    try:
        return submit(args.app, args.app_args, device=args.device, stats_dir=args.stats_dir,
                      as_json=args.json)
    except FileNotFoundError as e:
        _stderr().print(f"[red]error:[/] {e}", markup=True, highlight=False)
        return 2


def _configure_submit(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None,
                   help="device URI where Spark assigns no fpga resource (default: JACQUARD_DEVICE or emu)")
    p.add_argument("--stats-dir", default=None, help="keep the per-process offload stats in this folder")
    p.add_argument("--json", action="store_true", help="print the offload summary as JSON")
    p.add_argument("app", help="the PySpark application (a Python file), unchanged")
    p.add_argument("app_args", nargs=argparse.REMAINDER, help="the application's arguments")


def _model_args(p: argparse.ArgumentParser, *, onnx_only: bool = False) -> None:
    p.add_argument("model", help="ONNX model" + ("" if onnx_only else " or compiled .jqp"))
    p.add_argument("--config", default=None, help="hardware config to compile for (default ulx3s-85f)")
    p.add_argument("--calibrate", metavar="DATA.npy", help="float32 samples to quantize a float model with")
    p.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="static shape of an input with dynamic dimensions (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--no-fold-taps", dest="fold_taps", action="store_false",
                   help="send every input as it is: do not fold a small-channel conv's taps into the "
                        "channel lanes (folding multiplies that input's bytes by about KH*KW)")


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="emu", help="device URI: emu, emu:N, sim or uart:PORT (default emu)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a program may run (default 30)")


def _configure_compile(p: argparse.ArgumentParser) -> None:
    _model_args(p, onnx_only=True)
    p.add_argument("-o", "--output", required=True, metavar="MODEL.jqp", help="where to write the program")
    p.add_argument("--report", action="store_true", help="print each layer, where it runs and its MACs")


def _configure_run(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    p.add_argument("input", metavar="INPUT.npy", help="the model's input (an .npz keyed by name for several)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.npy",
                   help="outputs: .npy for one, .npz keyed by output name for several")
    _device_args(p)


def _configure_bench(p: argparse.ArgumentParser) -> None:
    _model_args(p)
    _device_args(p)
    p.add_argument("--frames", type=int, default=64, help="frames to run (default 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random input frames")
    p.add_argument("--no-pipeline", action="store_true", help="run frames one by one, without overlap")


def _cmd_export_verilog(args) -> int:
    from pathlib import Path

    from jacquard.rtl.core import export_verilog
    from jacquard.sim.isa import CONFIGS

    if args.config not in CONFIGS:
        print(f"error: --config must be one of {', '.join(CONFIGS)}, not {args.config!r}", file=sys.stderr)
        return 2
    text = export_verilog(CONFIGS[args.config], name=args.name)
    Path(args.output).write_text(text)
    lines = len(text.splitlines())
    print(f"wrote {args.output}: module {args.name} for config {args.config} ({lines:,} lines); "
          "ports in docs/CORE.md")
    return 0


def _configure_export_verilog(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="hardware config preset (see docs/ISA.md)")
    p.add_argument("-o", "--output", required=True, metavar="CORE.v", help="where to write the Verilog")
    p.add_argument("--name", default="jacquard_core", help="top module name (default jacquard_core)")


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]] = {
    "doctor": (
        "list each tool with its version, or what is missing and how to get it",
        lambda p: p.add_argument("--json", action="store_true", help="print the checks as JSON"),
        _cmd_doctor,
    ),
    "compile": ("compile an ONNX model into a .jqp program for a hardware config", _configure_compile,
                _cmd_compile),
    "run": ("run a model (ONNX or .jqp) on an input and save its outputs as onnxruntime gives them",
            _configure_run, _cmd_run),
    "bench": ("measure fps and latency on a backend, next to the estimated FPGA fps", _configure_bench,
              _cmd_bench),
    "export-verilog": ("write the JacquardCore of a hardware config as plain Verilog",
                       _configure_export_verilog, _cmd_export_verilog),
    "submit": ("run a PySpark app with onnxruntime offloaded to the accelerator, then summarize the offload",
               _configure_submit, _cmd_submit),
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
