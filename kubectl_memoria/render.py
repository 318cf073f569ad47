"""How the plugin prints: tables for people (colour only on a terminal), JSON or YAML for
scripts."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any, Literal, TextIO

from .status import GroupStatus

Output = Literal["table", "json", "yaml"]

_COLOURS = {"green": "32", "yellow": "33", "red": "31", "bold": "1", "dim": "2"}
_STATE_COLOUR = {
    "ok": "green",
    "True": "green",
    "leader": "bold",
    "degraded": "yellow",
    "unknown": "yellow",
    "Unknown": "yellow",
    "down": "red",
    "unreachable": "red",
    "False": "red",
    "fenced": "red",
}


def use_colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when ``NO_COLOR`` is set (no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


class Painter:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, colour: str | None) -> str:
        if not self.enabled or colour is None:
            return text
        return f"\033[{_COLOURS[colour]}m{text}\033[0m"

    def state(self, text: str) -> str:
        return self(text, _STATE_COLOUR.get(text))


def table(rows: Sequence[Sequence[str]], paint: Painter, indent: str = "") -> list[str]:
    """Columns padded to their widest cell; colour is added after padding, so ANSI codes never
    shift the columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = []
        for i, cell in enumerate(row):
            padded = cell.ljust(widths[i]) if i < len(row) - 1 else cell
            cells.append(
                paint(padded, "bold") if n == 0 else paint.state(cell) + padded[len(cell) :]
            )
        lines.append((indent + "  ".join(cells)).rstrip())
    return lines


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.0f}h"


def _or_dash(value: Any) -> str:
    return "-" if value is None or value == "" else str(value)


def status_lines(groups: list[GroupStatus], paint: Painter) -> list[str]:
    lines: list[str] = []
    for g in groups:
        if lines:
            lines.append("")
        leader = paint(g.leader, "green") if g.leader else paint("none", "red")
        since = g.last_transition_time or "-"
        why = f" ({g.last_transition_reason})" if g.last_transition_reason else ""
        lines.append(
            f"{paint('Group', 'bold')} {g.group} in {g.namespace}: leader {leader}, "
            f"fencing token {_or_dash(g.fencing_token)}, "
            f"Lease renewed {_age(g.lease_renew_age_seconds)} ago"
        )
        lines.append(f"  last transition {since}{why}")
        rows = [
            [
                "REGION",
                "ROLE",
                "READY",
                "FENCED",
                "HEALTH",
                "VIA",
                "SYNC",
                "OUTBOX",
                "LAST DECREMENT",
                "BY",
            ]
        ]
        for r in g.regions:
            rows.append(
                [
                    r.name,
                    r.role,
                    r.ready,
                    "fenced" if r.fenced else "no",
                    r.health,
                    r.health_via,
                    _or_dash(r.sync_state),
                    _or_dash(r.outbox_depth),
                    _or_dash(r.last_decrement_date),
                    _or_dash(r.last_decrement_by),
                ]
            )
        lines += table(rows, paint, indent="  ")
        unreachable = [r for r in g.regions if r.health_error and r.health != "ok"]
        for r in unreachable:
            lines.append(paint(f"  {r.name}: /healthz not read: {r.health_error}", "yellow"))
        for problem in g.problems:
            lines.append(paint(f"  ! {problem}", "red"))
    return lines


def dump(data: Any, output: Output, stream: TextIO = sys.stdout) -> None:
    if output == "json":
        stream.write(json.dumps(data, indent=2, sort_keys=True) + "\n")
    else:
        import yaml

        stream.write(yaml.safe_dump(data, sort_keys=True))


def event_lines(events: list[dict[str, Any]], paint: Painter) -> list[str]:
    """Events as ``kubectl get events`` shows them, oldest first."""
    if not events:
        return ["  (no Event yet)"]
    rows = [["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]]
    for e in events:
        rows.append(
            [
                str(e.get("lastTimestamp") or e.get("eventTime") or "-"),
                str(e.get("type") or ""),
                str(e.get("reason") or ""),
                str((e.get("involvedObject") or {}).get("name") or ""),
                str(e.get("message") or "")[:100],
            ]
        )
    return table(rows, paint, indent="  ")
