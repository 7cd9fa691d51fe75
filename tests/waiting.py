"""Waiting in tests for something to happen: polling with a deadline (a bare sleep is a guess at
how long something takes, wrong on a loaded machine either way)."""

from __future__ import annotations

import asyncio
import inspect
import time
from typing import Callable

TIMEOUT_S = 30.0


async def until(condition: Callable[[], object], what: str, timeout: float = TIMEOUT_S, every: float = 0.01):
    """Poll `condition` (a function, or a coroutine function such as a status request) on the event
    loop until it is true (returned), or fail saying `what` never happened."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


def until_sync(condition: Callable[[], object], what: str, timeout: float = TIMEOUT_S, every: float = 0.01):
    """`until` for code outside an event loop (threads, processes)."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)
    return value
