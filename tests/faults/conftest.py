"""Hooks of the fault suite: the page of docs/reliability.md it writes."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from tests.faults.report import REPORT

FAULT_SCENARIOS = 13  # the numbered rows 1, 2... of tests/faults
CLUSTER_SCENARIOS = 3  # the rows C1, C2... of tests/faults/test_cluster.py


def pytest_sessionfinish(session, exitstatus):
    # Only a run of the whole fault suite rewrites the report, never a partial one: every
    # numbered scenario of tests/faults recorded a row. One page per broker major version.
    scenarios = {row.number for row in REPORT.rows.values()}
    if {f"C{n}" for n in range(1, CLUSTER_SCENARIOS + 1)} <= scenarios:
        REPORT.write(Path(settings.BASE_DIR) / "docs" / "reliability-cluster.md", "make test")
    elif {str(n) for n in range(1, FAULT_SCENARIOS + 1)} <= scenarios:
        version, kind = REPORT.broker.removeprefix("RabbitMQ ").split(", ")
        major, quorum = version.split(".")[0], kind.startswith("quorum")
        name = (
            "reliability.md"
            if (major, quorum) == ("3", False)
            else (f"reliability-rabbitmq{major}{'-quorum' if quorum else ''}.md")
        )
        REPORT.write(Path(settings.BASE_DIR) / "docs" / name, "make test")
