"""Fixtures shared by the runtime's unit tests."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from testbed import wait_until


@pytest.fixture
def eventually() -> Callable[[Callable[[], bool], str], None]:
    """``eventually(predicate, what)``: wait up to 10 s for something another thread (the
    scheduler's timer, a listener, the relay) brings about; fail naming ``what``. The test bed's
    one polling helper, polled every 5 ms: these threads are quick."""

    def wait(predicate: Callable[[], bool], what: str) -> None:
        wait_until(predicate, 10.0, what, interval=0.005)

    return wait
