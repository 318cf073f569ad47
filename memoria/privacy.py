"""The privacy filter: which memories may leave this region, and which may enter it.

The Y axis is privacy, from -15 (most private) to 15 (public). A region shares, and accepts,
only memories with ``floor <= y_coord <= ceiling``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PrivacyRange:
    floor: int
    ceiling: int

    def allows(self, y_coord: float) -> bool:
        return self.floor <= y_coord <= self.ceiling

    def __str__(self) -> str:
        return f"[{self.floor}, {self.ceiling}]"
