"""Per-user cache directory for slow-to-build or fetched material (never in git)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """Return ``$JACQUARD_CACHE`` (default ``$XDG_CACHE_HOME/jacquard``) joined with ``parts``, created."""
    root = os.environ.get("JACQUARD_CACHE")
    if root is None:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        root = os.path.join(xdg, "jacquard")
    path = Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
