"""Per-user cache directory for slow-to-build or fetched material (never in git)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["cache_dir", "cache_lock"]


def cache_dir(*parts: str) -> Path:
    """Return ``$JACQUARD_CACHE`` (default ``$XDG_CACHE_HOME/jacquard``) joined with ``parts``, created."""
    root = os.environ.get("JACQUARD_CACHE")
    if root is None:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "jacquard")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def cache_lock(entry: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``entry`` (a cache file or folder) while checking for and making it.

    Several processes share the cache: pytest-xdist workers, Spark's Python workers, a second
    shell. Without the lock two of them build the same Verilator model into one folder, or one
    reads a model the other is still writing. The lock is ``fcntl.flock`` on ``<entry>.lock``
    next to the entry, so it is released when its holder exits, even by a crash. Check for the
    entry again inside the lock: another process may have made it while this one waited.
    """
    lock = entry.with_name(entry.name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
