"""Waiting on a wake-up event with a deadline: the batcher and the feature log both do it."""

from __future__ import annotations

import asyncio

__all__ = ["wait_woken"]


async def wait_woken(event: asyncio.Event, timeout_s: float) -> bool:
    """Clear ``event`` and wait for the next ``set`` for at most ``timeout_s``; False on timeout."""
    if timeout_s <= 0:
        return False
    event.clear()
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True
