"""Spark resource discovery for the ``fpga`` resource: prints this host's Jacquard devices as URIs.

Spark runs ``discover_fpga.sh`` (which calls ``python -m jacquard.spark_ext.discovery``) and reads
one JSON object from its stdout, ``{"name": "fpga", "addresses": ["emu:0", "emu:1"]}``. Each
address is a device URI that :func:`jacquard.spark_ext.binding.task_device_uri` hands to the task.

Where the devices come from, first match wins:

1. ``JACQUARD_DEVICES``: comma-separated URIs, e.g. ``emu:0,emu:1`` or ``uart:/dev/ttyUSB0``.
2. Serial ports that look like boards (``/dev/ttyUSB*``), as ``uart:/dev/ttyUSB0``, ...
3. ``emu``, the golden executor, which every host has.

Several Spark workers on one host (``local-cluster[N,...]`` runs them all in one JVM) each run the
script and would all be given the same first device. So each call from the same parent process
claims a slot (an exclusive file under ``$TMPDIR/jacquard-fpga-<uid>/<parent pid>``) and the list
is rotated by the slot number: worker k's first address is device ``k mod n``. A worker asking
for one device therefore gets its own one while devices last, the way a per-worker resources
file would assign them.
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


def claim_slot(owner: int | None = None, root: str | os.PathLike | None = None) -> int:
    """Claim the next free slot among discovery calls made by process ``owner`` (default: our parent).

    Claims live in ``root/<owner>-<owner start time>`` so a new Spark JVM with a recycled pid
    starts again from slot 0.
    """
    owner = os.getppid() if owner is None else owner
    try:
        start = Path(f"/proc/{owner}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):  # no procfs (macOS): the pid alone still separates live JVMs
        start = "0"
    base = Path(root) if root is not None else Path(tempfile.gettempdir()) / f"jacquard-fpga-{os.getuid()}"
    claims = base / f"{owner}-{start}"
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
    """The discovery result: ``{"name": "fpga", "addresses": [...]}``, rotated by ``slot``."""
    devices = local_devices(env)
    slot = claim_slot() if slot is None else slot
    k = slot % len(devices)
    return {"name": RESOURCE_NAME, "addresses": devices[k:] + devices[:k]}


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
