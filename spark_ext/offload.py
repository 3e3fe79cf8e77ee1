"""Zero-code-change offload: ``onnxruntime.InferenceSession`` replaced by an accelerated session.

An unmodified PySpark application that runs an ONNX model with onnxruntime (for example inside
``predict_batch_udf``'s ``make_predict_fn``) gets the model compiled for Jacquard and its supported
part run on the accelerator, in the driver and in every Python worker::

    jacquard submit app.py [args...]

``submit`` runs ``app.py`` with this package's ``hook/`` folder first on ``PYTHONPATH``; Python
imports its ``sitecustomize`` at start-up, which calls :func:`install_import_hook`: the first
``import onnxruntime`` then replaces ``onnxruntime.InferenceSession`` with
:class:`AcceleratedSession`. Spark's Python workers inherit the variables (through the JVMs'
environment, and ``spark.executorEnv.*`` passed in ``PYSPARK_SUBMIT_ARGS`` for executors on
other hosts). Each process writes its :class:`~jacquard.spark_ext.accel.OffloadStats` into one
stats directory, and when the app ends ``submit`` prints one summary over all of them.

The one-conf alternative (no ``jacquard submit``): ``spark.python.daemon.module=
jacquard.spark_ext.offload`` makes Spark start its Python worker daemon through this module, which
installs the hook before forking the workers (executors only; see ``docs/SPARK.md``).

The accelerated session keeps onnxruntime's surface (constructor, ``run``, ``get_inputs``,
``get_outputs``, ...): it *is* an onnxruntime session (a subclass), whose ``run`` goes to a
:class:`~jacquard.spark_ext.accel.AcceleratedModel` on the task's device. int8 models give
onnxruntime's results bit for bit; float models are quantized after calibrating on their first
rows. Sessions jacquard creates itself (CPU segments, calibration) stay plain onnxruntime.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from jacquard.spark_ext.accel import STATS_ENV, aggregate_stats, in_jacquard, model_bytes, shared_model

__all__ = ["HOOK_DIR", "AcceleratedSession", "install", "install_import_hook", "submit", "submit_env"]

log = logging.getLogger(__name__)

HOOK_DIR = Path(__file__).resolve().parent / "hook"
OFFLOAD_ENV = "JACQUARD_OFFLOAD"

AcceleratedSession: type | None = None  # built by install() as a subclass of the real session


def _make_session_class(original: type) -> type:
    class AcceleratedSession(original):
        """onnxruntime's ``InferenceSession`` whose ``run`` offloads to a Jacquard device.

        Parameters are onnxruntime's. The model is compiled per input shape on first use, on the
        device bound to the current Spark task (:func:`jacquard.spark_ext.binding.task_device_uri`).
        If it cannot be accelerated (it is not an ONNX model jacquard can import), the session
        stays onnxruntime's and says why in the log.
        """

        def __init__(self, path_or_bytes, sess_options=None, providers=None, provider_options=None,
                     **kwargs):
            super().__init__(path_or_bytes, sess_options, providers, provider_options, **kwargs)
            self._jacquard = None
            if in_jacquard():
                return
            try:
                from jacquard.spark_ext.binding import task_device_uri

                self._jacquard = shared_model(model_bytes(path_or_bytes), task_device_uri())
            except Exception as exc:  # any failure must leave the user's own session working
                log.warning("jacquard: model not offloaded, running on onnxruntime (%s: %s)",
                            type(exc).__name__, exc)

        def run(self, output_names, input_feed, run_options=None):
            if self._jacquard is None or in_jacquard():
                return super().run(output_names, input_feed, run_options)
            out = self._jacquard.run(input_feed)
            names = output_names or [o.name for o in self.get_outputs()]
            return [out[n] for n in names]

    AcceleratedSession.__qualname__ = AcceleratedSession.__name__
    AcceleratedSession.__module__ = __name__
    return AcceleratedSession


def install() -> type:
    """Replace ``onnxruntime.InferenceSession`` now (importing onnxruntime); idempotent.

    Returns
    -------
    type
        The accelerated session class.
    """
    global AcceleratedSession
    import onnxruntime

    current = onnxruntime.InferenceSession
    if getattr(current, "_jacquard_accelerated", False):
        return current
    AcceleratedSession = _make_session_class(current)
    AcceleratedSession._jacquard_accelerated = True
    onnxruntime.InferenceSession = AcceleratedSession
    return AcceleratedSession


class _OnnxruntimeFinder(importlib.abc.MetaPathFinder):
    """Runs :func:`install` right after ``onnxruntime`` is first imported, so start-up stays fast."""

    def find_spec(self, name, path=None, target=None):
        if name != "onnxruntime":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module):
            exec_module(module)
            try:
                install()
            except Exception as exc:  # never break the user's import of onnxruntime
                log.warning("jacquard: offload hook not installed: %s", exc)

        spec.loader.exec_module = exec_and_patch
        return spec


def install_import_hook() -> None:
    """Patch onnxruntime when it is imported (or now, if it already is)."""
    if "onnxruntime" in sys.modules:
        install()
    elif not any(isinstance(f, _OnnxruntimeFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _OnnxruntimeFinder())


# -- jacquard submit --------------------------------------------------------------------------------

def submit_env(stats_dir: str | os.PathLike, device: str | None = None,
               base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``jacquard submit`` runs an app in (hook on ``PYTHONPATH``, stats dir, confs)."""
    env = dict(os.environ if base is None else base)
    env["PYTHONPATH"] = os.pathsep.join([str(HOOK_DIR), *filter(None, [env.get("PYTHONPATH")])])
    env[OFFLOAD_ENV] = "1"
    env[STATS_ENV] = str(stats_dir)
    env.setdefault("PYSPARK_PYTHON", sys.executable)
    env.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    if device:
        env["JACQUARD_DEVICE"] = device
    names = ("PYTHONPATH", OFFLOAD_ENV, STATS_ENV, "PYSPARK_PYTHON")
    confs = {f"spark.executorEnv.{k}": env[k] for k in names}
    if device:
        confs["spark.executorEnv.JACQUARD_DEVICE"] = device
    args = " ".join(f"--conf {shlex.quote(f'{k}={v}')}" for k, v in confs.items())
    existing = env.get("PYSPARK_SUBMIT_ARGS", "").strip()
    if existing.endswith("pyspark-shell"):
        existing = existing[: -len("pyspark-shell")].strip()
    env["PYSPARK_SUBMIT_ARGS"] = " ".join(filter(None, [existing, args, "pyspark-shell"]))
    return env


def submit(app: str, argv: list[str], *, device: str | None = None, stats_dir: str | None = None,
           as_json: bool = False) -> int:
    """Run ``app`` with the offload active everywhere, then print one summary of the offloaded work.

    Parameters
    ----------
    app : str
        The application's Python file.
    argv : list of str
        Its arguments.
    device : str, optional
        Device URI for processes without an ``fpga`` resource (sets ``JACQUARD_DEVICE``).
    stats_dir : str, optional
        Where the processes write their stats (default: a fresh temporary directory).
    as_json : bool
        Print the summary as JSON.

    Returns
    -------
    int
        The app's exit status.

    Raises
    ------
    FileNotFoundError
        If ``app`` does not exist.
    """
    import json

    if not Path(app).is_file():
        raise FileNotFoundError(f"no such application file: {app!r}")
    with tempfile.TemporaryDirectory(prefix="jacquard-submit-") as tmp:
        directory = Path(stats_dir) if stats_dir else Path(tmp) / "stats"
        directory.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, app, *argv], env=submit_env(directory, device), check=False)
        summary = aggregate_stats(directory)
    summary["app"] = app
    summary["exit_status"] = proc.returncode
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        _print_summary(summary)
    return proc.returncode


def _print_summary(s: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"jacquard offload summary: {s['app']}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    share = 100 * s["macs_device"] / s["macs_total"] if s["macs_total"] else 0.0
    for k, v in (("processes that ran a model (driver, Python workers)", str(s["processes"])),
                 ("processes that used a device", str(s["processes_on_device"])),
                 ("inferences", f"{s['inferences']:,} ({s['rows']:,} rows)"),
                 ("inferences on a device", f"{s['device_inferences']:,}"),
                 ("MACs on the accelerator", f"{s['macs_device']:,} of {s['macs_total']:,} ({share:.1f} %)"),
                 ("device busy time", f"{s['device_seconds']:.2f} s"),
                 ("devices used", ", ".join(s["devices"]) or "none"),
                 ("ops kept on the CPU", ", ".join(s["cpu_ops"]) or "none"),
                 ("CPU fallback runs", str(s["fallbacks"])),
                 ("app exit status", str(s["exit_status"]))):
        table.add_row(k, v)
    Console(width=140).print(table)


def _daemon_main() -> None:
    # spark.python.daemon.module=jacquard.spark_ext.offload: hook first, then Spark's own daemon,
    # which forks the Python workers (they inherit the hook).
    install_import_hook()
    from pyspark import daemon

    daemon.manager()


if __name__ == "__main__":
    _daemon_main()
