"""Spark resource discovery for the ``fpga`` resource: prints this host's Jacquard devices as URIs.

Spark runs ``discover_fpga.sh`` (which calls ``python -m jacquard.spark_ext.discovery``) and reads
one JSON object from its stdout, ``{"name": "fpga", "addresses": ["emu:0", "emu:1"]}``. Each
address is a device URI that :func:`jacquard.spark_ext.binding.task_device_uri` hands to the task.

Where the devices come from, first match wins:

1. ``JACQUARD_DEVICES``: comma-separated URIs, e.g. ``emu:0,emu:1`` or ``uart:/dev/ttyUSB0``.
2. Serial ports that look like boards (``/dev/ttyUSB*``), as ``uart:/dev/ttyUSB0``, ...
3. ``emu``, the golden executor, which every host has.

Several Spark workers on one host (``local-cluster[N,...]`` runs them all in one JVM) each run the
script, and Spark's standalone worker hands out the lowest addresses first, so every worker would
give its executor the same device. With ``JACQUARD_DEVICES_PER_WORKER=k`` each call from the same
parent process claims a slot (an exclusive file under ``$TMPDIR/jacquard-fpga-<uid>/<parent>``)
and reports only its own ``k`` devices: slot ``s`` gets devices ``s*k .. s*k+k-1`` (mod n, so
devices are shared once there are more workers than devices). This is what a per-worker
resources file would do by hand. Unset (or 0), every call reports all devices: one worker per
host, or executors in their own containers (YARN, Kubernetes).
"""

from __future__ import annotations

import glob
import json
import os
import sys
import tempfile
from pathlib import Path

__all__ = ["claim_slot", "discover", "local_devices"]

RESOURCE_NAME = "fpga"


def local_devices(env: dict[str, str] | None = None) -> list[str]:
    """This host's device URIs: ``JACQUARD_DEVICES``, else ``/dev/ttyUSB*`` boards, else ``["emu"]``.

    Raises
    ------
    ValueError
        If ``JACQUARD_DEVICES`` is set but holds no URI, or repeats one.
    """
    env = os.environ if env is None else env
    spec = env.get("JACQUARD_DEVICES")
    if spec is not None:
        devices = [d.strip() for d in spec.split(",") if d.strip()]
        if not devices:
            raise ValueError(f"JACQUARD_DEVICES must list device URIs like 'emu:0,emu:1', not {spec!r}")
        if len(set(devices)) != len(devices):
            raise ValueError(f"JACQUARD_DEVICES lists a device twice: {spec!r}")
        return devices
    ports = sorted(glob.glob("/dev/ttyUSB*"))
    return [f"uart:{p}" for p in ports] or ["emu"]


def claim_slot(owner: int | None = None, root: str | os.PathLike | None = None, group: str = "") -> int:
    """Claim the next free slot among discovery calls made by process ``owner`` (default: our parent).

    Claims live in ``root/<owner>-<owner start time>[-<group>]``, so a new Spark JVM with a
    recycled pid starts again from slot 0, and so does each new ``group`` (the session helper
    gives every SparkSession its own, since PySpark reuses one JVM for the sessions of a process).
    """
    owner = os.getppid() if owner is None else owner
    try:
        start = Path(f"/proc/{owner}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):  # no procfs (macOS): the pid alone still separates live JVMs
        start = "0"
    base = Path(root) if root is not None else Path(tempfile.gettempdir()) / f"jacquard-fpga-{os.getuid()}"
    claims = base / (f"{owner}-{start}" + (f"-{group}" if group else ""))
    claims.mkdir(parents=True, exist_ok=True)
    slot = 0
    while True:
        try:
            fd = os.open(claims / f"slot-{slot}", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:  # taken by an earlier worker of the same JVM
            slot += 1
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return slot


def discover(env: dict[str, str] | None = None, slot: int | None = None) -> dict[str, object]:
    """The discovery result: ``{"name": "fpga", "addresses": [...]}``.

    Parameters
    ----------
    env : dict, optional
        Environment to read (default ``os.environ``).
    slot : int, optional
        This worker's slot; claimed with :func:`claim_slot` when needed and not given.

    Raises
    ------
    ValueError
        If ``JACQUARD_DEVICES`` is malformed or ``JACQUARD_DEVICES_PER_WORKER`` is not an integer >= 0.
    """
    env = os.environ if env is None else env
    devices = local_devices(env)
    raw = env.get("JACQUARD_DEVICES_PER_WORKER", "0") or "0"
    try:
        per = int(raw)
    except ValueError:
        per = -1
    if per < 0:
        raise ValueError(f"JACQUARD_DEVICES_PER_WORKER must be an integer >= 0, not {raw!r}")
    if per == 0:
        return {"name": RESOURCE_NAME, "addresses": devices}
    slot = claim_slot(group=env.get("JACQUARD_DISCOVERY_GROUP", "")) if slot is None else slot
    first = slot * per
    return {"name": RESOURCE_NAME, "addresses": [devices[(first + i) % len(devices)] for i in range(per)]}


def main() -> int:
    try:
        result = discover()
    except ValueError as exc:
        print(f"jacquard fpga discovery: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
