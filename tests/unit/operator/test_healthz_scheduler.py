"""What the operator reads from a region's /healthz body about its scheduler (handovers wait for
``leading: false``)."""

from __future__ import annotations

from typing import Any

import pytest

from memoria_operator.health import scheduler_leading


@pytest.mark.parametrize(
    ("body", "leading"),
    [
        ({"scheduler": {"leading": True}}, True),
        ({"scheduler": {"leading": False}}, False),
        ({"scheduler": {"running": True}}, False),  # no word on leading: not leading
        ({"scheduler": None}, False),
        ({"status": "ok"}, False),
        ({}, False),
        (None, False),  # JSON null
        ([], False),
        ([{"scheduler": {"leading": True}}], None),  # not an object: no answer
        ("ok", None),
        ({"scheduler": "on"}, None),
        ({"scheduler": [True]}, None),
    ],
)
def test_scheduler_leading(body: Any, leading: bool | None) -> None:
    assert scheduler_leading(body) is leading
