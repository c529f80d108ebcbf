"""Bounded polling shared by the tests and the local fakes: wait for a condition, never for a time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 30.0,
    *,
    interval: float = 0.02,
    what: str = "condition",
    detail: Callable[[], str] | None = None,
) -> Any:
    """Poll until ``predicate()`` is truthy and return its value; fail with AssertionError (naming
    ``what`` and, when given, ``detail()``) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            extra = f"; {detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{extra}")
        time.sleep(interval)
