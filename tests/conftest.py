"""Test-suite hooks: long tests marked ``first`` start first.

Under pytest-xdist (``nox -s tests`` runs one worker per core) each worker gets a contiguous share
of the collection and idle workers steal from the end of the others' queues. A long build that is
collected late (the small board's SoC, minutes of place-and-route) would otherwise start last and
leave the other workers idle while it runs; at the front, the rest of the suite runs around it.
"""

from __future__ import annotations


def pytest_collection_modifyitems(config, items) -> None:
    # Stable: every worker sorts its collection the same way, as xdist requires.
    items.sort(key=lambda item: item.get_closest_marker("first") is None)
