"""SparkSessions for the tests and the demo: ``local[N]``, or ``local-cluster`` with ``fpga`` resources.

``local-cluster[W,C,M]`` starts a master and ``W`` workers inside the driver JVM and one executor
JVM per worker, each with its own Python workers: a real distributed run on one machine. Standalone
workers must own the resources their executors ask for, so the ``fpga`` resource is declared at
both levels (``spark.worker.resource.fpga.*`` with the discovery script, and
``spark.executor.resource.fpga.amount`` / ``spark.task.resource.fpga.amount``); with
``JACQUARD_DEVICES_PER_WORKER=1`` the script gives each worker of the same JVM its own device (see
:mod:`jacquard.spark_ext.discovery`). ``local[N]`` has no resource scheduling at all.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jacquard.host.cache import cache_dir

__all__ = ["build_session", "discovery_script"]


def discovery_script() -> Path:
    """Path of an executable ``discover_fpga.sh``: the installed one, or an executable copy of it.

    Wheels do not always keep the executable bit on package data, so when the installed file is
    not executable it is copied into ``cache_dir("spark")`` with mode 0755.
    """
    script = Path(__file__).with_name("discover_fpga.sh")
    if os.access(script, os.X_OK):
        return script
    copy = cache_dir("spark") / script.name
    if not copy.exists() or copy.read_bytes() != script.read_bytes():
        shutil.copyfile(script, copy)
    copy.chmod(copy.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return copy


def build_session(master: str = "local[2]", *, app_name: str = "jacquard", devices: str | None = None,
                  fpga: bool | None = None, conf: Mapping[str, Any] | None = None) -> Any:
    """Create (or return the active) SparkSession configured for Jacquard.

    Parameters
    ----------
    master : str
        ``local[N]`` or ``local-cluster[workers,cores,memoryMB]`` (or any Spark master URL).
    app_name : str
    devices : str, optional
        Sets ``JACQUARD_DEVICES`` (comma-separated device URIs) for the discovery script, e.g.
        ``"emu:0,emu:1"``. The driver's environment is inherited by the worker and executor JVMs.
    fpga : bool, optional
        Configure the ``fpga`` resource with one device per executor and per task. Default: on for
        any master that is not ``local[...]`` (local mode ignores resources).
    conf : mapping, optional
        Extra Spark confs, applied last.

    Returns
    -------
    pyspark.sql.SparkSession

    Raises
    ------
    ValueError
        If ``master`` is empty or ``devices`` lists no URI.
    """
    from pyspark.sql import SparkSession

    if not master:
        raise ValueError(f"master must be a Spark master URL, not {master!r}")
    # Python workers and the discovery script must run the project's interpreter, the one that
    # has jacquard installed; the JVMs inherit this environment when they start.
    os.environ["PYSPARK_PYTHON"] = sys.executable
    os.environ["PYSPARK_DRIVER_PYTHON"] = sys.executable
    os.environ["JACQUARD_PYTHON"] = sys.executable
    if devices is not None:
        if not [d for d in devices.split(",") if d.strip()]:
            raise ValueError(f"devices must be comma-separated URIs like 'emu:0,emu:1', not {devices!r}")
        os.environ["JACQUARD_DEVICES"] = devices
    if fpga is None:
        fpga = not master.startswith("local[") and master != "local"
    if fpga and master.startswith("local-cluster"):
        # All workers of local-cluster share one JVM; each must report its own device.
        os.environ["JACQUARD_DEVICES_PER_WORKER"] = "1"

    builder = (SparkSession.builder.master(master).appName(app_name)
               .config("spark.ui.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "2")
               .config("spark.default.parallelism", "2")
               .config("spark.sql.streaming.stopGracefullyOnShutdown", "true")
               # The machine may be loaded: give Python workers time to start and connect back.
               .config("spark.python.authenticate.socketTimeout", "120s")
               .config("spark.executorEnv.PYSPARK_PYTHON", sys.executable)
               .config("spark.executorEnv.JACQUARD_PYTHON", sys.executable)
               # Python workers are reused between tasks, so a model compiles once per worker.
               .config("spark.python.worker.reuse", "true"))
    if devices is not None:
        builder = builder.config("spark.executorEnv.JACQUARD_DEVICES", devices)
    if fpga:
        script = str(discovery_script())
        builder = (builder
                   .config("spark.worker.resource.fpga.amount", "1")
                   .config("spark.worker.resource.fpga.discoveryScript", script)
                   .config("spark.executor.resource.fpga.amount", "1")
                   .config("spark.executor.resource.fpga.discoveryScript", script)
                   .config("spark.task.resource.fpga.amount", "1"))
    for key, value in (conf or {}).items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("ERROR")
    return spark
