"""Progress of a long measurement phase, as the caller wants it shown (rich bars in the CLI, nothing in tests).

A phase asks ``progress(description, total)`` once and calls the returned ``advance(n)`` as work gets done; the
CLI's implementation draws counts done/total, elapsed time and ETA.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol


class Progress(Protocol):
    def __call__(self, description: str, total: int) -> Callable[[int], None]: ...


def silent(description: str, total: int) -> Callable[[int], None]:
    """Shows nothing."""
    return lambda _n: None
