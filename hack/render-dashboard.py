"""Render the dashboard's key panels to a PNG from the Prometheus data of the dashboard test.

    MEMORIA_DASHBOARD_DATA=/tmp/dashboard.json .venv/bin/pytest tests/e2e/dashboard
    .venv/bin/python hack/render-dashboard.py /tmp/dashboard.json docs/img/dashboard.png

Needs matplotlib (``pip install -e '.[dev]'``). The input holds, per panel title, each query's
range result (``query_range``'s ``result``), plus when the switchover and the failover began;
both moments are drawn as vertical lines on every panel.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

PANELS = (
    "Leader per group",
    "Leadership transitions (failovers, switchovers)",
    "Lease renew age",
    "Sync events published / received / applied",
    "Sync events dropped by reason",
    "API latency p50 / p99",
)


def _label(legend: str, metric: dict[str, str]) -> str:
    text = legend
    for key, value in metric.items():
        text = text.replace("{{" + key + "}}", value)
    while "{{" in text:  # a label this series does not have
        start = text.index("{{")
        text = text[:start] + text[text.index("}}", start) + 2 :]
    return " ".join(text.split())


def render(data: dict[str, Any], legends: dict[str, list[str]], out: Path) -> None:
    start = data["start"]
    fig, axes = plt.subplots(3, 2, figsize=(13, 10), constrained_layout=True)
    for ax, title in zip(axes.flat, PANELS, strict=True):
        for query, legend in zip(data["queries"][title], legends[title], strict=True):
            for series in query["result"]:
                xs = [float(t) - start for t, _ in series["values"]]
                ys = [float(v) for _, v in series["values"]]
                if (
                    not any(not math.isnan(y) and y != 0 for y in ys)
                    and title != "Leader per group"
                ):
                    continue  # an all-zero line only hides the others
                ax.step(xs, ys, where="post", label=_label(legend, series["metric"]))
        for moment, name in ((data["switchover"], "switchover"), (data["failover"], "failover")):
            ax.axvline(moment - start, color="grey", linestyle="--", linewidth=1)
            ax.annotate(
                name,
                (moment - start, 1),
                xycoords=("data", "axes fraction"),
                rotation=90,
                va="top",
                ha="right",
                fontsize=8,
                color="grey",
            )
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("seconds", fontsize=8)
        ax.tick_params(labelsize=8)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle("Memoria dashboard: a switchover then a failover (test bed, real Prometheus)")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    data = json.loads(Path(argv[0]).read_text())
    dashboard = Path(__file__).resolve().parents[1] / "charts/memoria/files/dashboard.json"
    legends = {
        p["title"]: [t["legendFormat"] for t in p["targets"]]
        for p in json.loads(dashboard.read_text())["panels"]
    }
    render(data, legends, Path(argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
