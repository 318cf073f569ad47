"""Fixtures shared by the runtime's unit tests."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


@pytest.fixture
def eventually() -> Callable[[Callable[[], bool], str], None]:
    """``eventually(predicate, what)``: wait up to 10 s for something another thread (the
    scheduler's timer, a listener, the relay) brings about; fail naming ``what``."""

    def wait(predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + 10.0
        while not predicate():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after 10 s waiting for {what}")
            time.sleep(0.005)

    return wait
