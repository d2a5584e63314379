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


def test_compose_runs_rabbitmq_4_with_quorum_queues_and_the_cluster_file_three_nodes():
    base = compose()
    assert base["services"]["rabbitmq"]["image"].startswith("rabbitmq:4.")
    assert base["x-app"]["environment"]["JOBS_QUEUE_TYPE"] == "${JOBS_QUEUE_TYPE:-quorum}"

    cluster = yaml.safe_load((ROOT / "docker-compose.cluster.yml").read_text())
    nodes = [name for name in cluster["services"] if name.startswith("rabbitmq")]
    assert nodes == ["rabbitmq", "rabbitmq-b", "rabbitmq-c"]
    formation = cluster["configs"]["rabbitmq-cluster"]["content"]
    for node in nodes:
        assert cluster["services"][node]["image"].startswith("rabbitmq:4.")
        assert "healthcheck" in cluster["services"][node]
        assert f"rabbit@{node}" in formation
    app_processes = [name for name, s in base["services"].items() if s.get("image") == "jobs-platform:latest"]
    for name in app_processes:
        service = cluster["services"][name]
        urls = service["environment"]["CELERY_BROKER_URL"].split(";")
        assert [url.split("@")[1].split(":")[0] for url in urls] == nodes, name
        assert service["environment"]["JOBS_QUEUE_TYPE"] == "quorum"
        assert set(service["depends_on"]) == set(nodes)
