"""docker-compose.yml and the Procfile, checked by reading (no Docker engine here)."""

import re
import shlex
from pathlib import Path

import yaml
from django.conf import settings

from jobs import topology

ROOT = Path(settings.BASE_DIR)


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def queues_of(command) -> list[str]:
    words = command if isinstance(command, list) else shlex.split(command)
    if "-Q" not in words:
        return list(topology.WORKLOAD_QUEUES)  # a worker without -Q consumes every task queue
    return words[words.index("-Q") + 1].split(",")


def test_compose_workers_consume_every_workload_queue_and_never_the_dead_letters():
    services = compose()["services"]
    workers = {name: s for name, s in services.items() if "worker" in (s.get("command") or [])}
    consumed = [q for s in workers.values() for q in queues_of(s["command"])]

    assert set(consumed) == set(topology.WORKLOAD_QUEUES)
    assert len(consumed) == len(set(consumed)), "each queue has one pool"
    assert topology.DEAD_LETTER_QUEUE not in consumed


def test_compose_has_every_process_and_starts_it_when_its_services_are_healthy():
    services = compose()["services"]
    for name in [
        "postgres",
        "rabbitmq",
        "redis",
        "mailpit",
        "web",
        "beat",
        "relay",
        "dead-letter-keeper",
        "flower",
    ]:
        assert name in services
    assert services["rabbitmq"]["healthcheck"]["test"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    assert "management" in services["rabbitmq"]["image"]
    for name, service in services.items():
        if service.get("image") == "jobs-platform:latest" and name != "migrate":
            depends = service["depends_on"]
            assert depends["rabbitmq"]["condition"] == "service_healthy"
            assert depends["postgres"]["condition"] == "service_healthy"
            assert depends["migrate"]["condition"] == "service_completed_successfully"
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]


def test_procfile_runs_every_process_of_make_run():
    procfile = dict(
        line.split(":", 1) for line in (ROOT / "Procfile").read_text().splitlines() if line.strip()
    )
    assert set(procfile) >= {"web", "worker", "beat", "relay", "keeper", "flower", "mail"}
    assert queues_of(procfile["worker"]) == list(topology.WORKLOAD_QUEUES)


def test_docs_name_only_queues_of_the_topology():
    readme = (ROOT / "README.md").read_text()
    named = {q for match in re.findall(r"-Q ([\w.,]+)", readme) for q in match.split(",")}
    assert named, "the README shows the worker layout"
    assert named <= set(topology.WORKLOAD_QUEUES)
