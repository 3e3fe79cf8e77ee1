"""Which accelerator a Spark task runs on: the ``fpga`` resource Spark assigned to it.

On a cluster, ``spark.executor.resource.fpga.amount``, ``spark.task.resource.fpga.amount`` and a
discovery script (``discover_fpga.sh``, see :mod:`jacquard.spark_ext.discovery`) make Spark hand
each task device URIs through ``TaskContext.get().resources()["fpga"].addresses``. Local mode
(``local[N]``) has no resource scheduling, so tasks there fall back to a configured default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["DEFAULT_DEVICE", "DEVICE_CONF", "RESOURCE_NAME", "executor_id", "task_device_uri",
           "task_device_uris"]

RESOURCE_NAME = "fpga"
# Spark conf and environment variable naming the device used when the task has no fpga resource.
DEVICE_CONF = "spark.jacquard.device"
DEVICE_ENV = "JACQUARD_DEVICE"
DEFAULT_DEVICE = "emu"


def task_device_uris() -> list[str]:
    """All ``fpga`` addresses Spark assigned to the running task; empty outside a task or in local mode."""
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is None:
        return []
    resource = context.resources().get(RESOURCE_NAME)
    return list(resource.addresses) if resource is not None else []


def task_device_uri(default: str | None = None) -> str:
    """The device URI this task should open.

    Parameters
    ----------
    default : str, optional
        Used when Spark assigned no ``fpga`` resource (local mode, or outside a task). When None,
        the Spark conf ``spark.jacquard.device`` (read through the task's local properties or the
        driver's active session), then the environment variable ``JACQUARD_DEVICE``, then ``"emu"``.

    Returns
    -------
    str
        The first assigned address, or the default.

    Raises
    ------
    ValueError
        If ``default`` is given but empty.
    """
    if default is not None and not default.strip():
        raise ValueError(f"default device URI must be non-empty, not {default!r}")
    uris = task_device_uris()
    if uris:
        return uris[0]
    if default is not None:
        return default
    return _configured_default()


def _configured_default() -> str:
    from pyspark import TaskContext

    context = TaskContext.get()
    if context is not None:
        # Spark confs are not visible in Python workers; local properties set on the driver are.
        value = context.getLocalProperty(DEVICE_CONF)
        if value:
            return value
    else:
        from pyspark.sql import SparkSession

        session = SparkSession.getActiveSession()
        if session is not None:
            value = session.conf.get(DEVICE_CONF, None)
            if value:
                return value
    return os.environ.get(DEVICE_ENV) or DEFAULT_DEVICE


def executor_id() -> str:
    """The Spark executor this Python worker belongs to (``"driver"`` in local mode), for reports.

    PySpark's TaskContext does not expose it, so it is found in the worker's environment: the
    standalone log URL (``...executorId=1...``), else the ``--executor-id`` argument of the
    executor JVM among this process's ancestors (Linux ``/proc``).
    """
    if os.environ.get("SPARK_EXECUTOR_ID"):
        return os.environ["SPARK_EXECUTOR_ID"]
    match = re.search(r"executorId=([^&]+)", os.environ.get("SPARK_LOG_URL_STDERR", ""))
    if match:
        return match.group(1)
    pid = os.getppid()
    for _ in range(4):  # worker -> daemon -> executor JVM, with room for a wrapper shell
        try:
            args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:  # no procfs, or the process is gone
            break
        if b"--executor-id" in args:
            return args[args.index(b"--executor-id") + 1].decode()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
        if pid <= 1:
            break
    return "driver"
