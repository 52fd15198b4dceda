"""What the Grafana dashboard of docker-compose's monitoring profile asks Prometheus for."""

from __future__ import annotations

import json
import re
from pathlib import Path

DASHBOARD = (Path(__file__).resolve().parents[2] / "monitoring" / "grafana" / "dashboards"
             / "segment-stream.json")


def dashboard_metrics() -> set[str]:
    """The metric names the dashboard's queries use, as exposed (histogram buckets and counter
    totals by their family name)."""
    dashboard = json.loads(DASHBOARD.read_text())
    names = set()
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name in re.findall(r"\b((?:segments|process)_[a-z_]+)\b", target["expr"]):
                names.add(re.sub(r"_(bucket|sum|count|total)$", "", name))
    return names
