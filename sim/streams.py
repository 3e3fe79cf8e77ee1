"""Helpers for ``amaranth.sim`` async testbenches that drive and check ``lib.stream`` interfaces.

Random gaps on valid and ready come from a seeded ``random.Random`` so that a failure can be
replayed from its printed seed.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any

__all__ = ["ProtocolError", "stream_get", "stream_monitor", "stream_put", "stream_recv", "stream_send"]


class ProtocolError(AssertionError):
    """A stream broke the valid/ready rules: valid dropped before ready, or payload changed while stalled."""


async def stream_put(ctx, stream, payload) -> None:
    """Offer one beat and return once it has been accepted."""
    ctx.set(stream.payload, payload)
    ctx.set(stream.valid, 1)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def stream_get(ctx, stream) -> Any:
    """Accept one beat and return its payload (as ``ctx.get`` gives it)."""
    ctx.set(stream.ready, 1)
    payload, = await ctx.tick().sample(stream.payload).until(stream.valid)
    ctx.set(stream.ready, 0)
    return payload


async def stream_send(ctx, stream, payloads: Iterable, rng: random.Random | None = None,
                      gap: float = 0.0) -> None:
    """Send every payload in order, idling for a random number of cycles with probability ``gap``."""
    for payload in payloads:
        while rng is not None and rng.random() < gap:
            await ctx.tick()
        await stream_put(ctx, stream, payload)


async def stream_recv(ctx, stream, count: int, rng: random.Random | None = None,
                      gap: float = 0.0) -> list:
    """Receive ``count`` beats, deasserting ready at random with probability ``gap``."""
    out = []
    while len(out) < count:
        ready = not (rng is not None and rng.random() < gap)
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if valid and ready:
            out.append(payload)
    ctx.set(stream.ready, 0)
    return out


async def stream_monitor(ctx, stream, name: str = "stream") -> None:
    """Raise :class:`ProtocolError` if ``stream`` breaks the handshake rules; run as a background process.

    Checked on every clock edge: once valid is high without ready, on the next edge valid must
    still be high and the payload unchanged.
    """
    pending = None
    async for _, _, valid, ready, payload in ctx.tick().sample(stream.valid, stream.ready, stream.payload):
        payload = _as_int(payload)
        if pending is not None:
            if not valid:
                raise ProtocolError(f"{name}: valid dropped before ready")
            if payload != pending:
                raise ProtocolError(f"{name}: payload changed while stalled ({pending:#x} -> {payload:#x})")
        pending = payload if (valid and not ready) else None


def _as_int(value) -> int:
    # Struct and array views come back as data.Const; compare them by their raw bits.
    return value.as_bits() if hasattr(value, "as_bits") else int(value)
