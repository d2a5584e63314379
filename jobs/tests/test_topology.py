"""The topology, snapshotted: a rename that would strand queued messages fails here."""

from urllib.parse import unquote

import pytest

from jobs import topology
from jobs.broker import queues

REGISTERED_JOBS = {
    # name: queue
    "emails.send": "emails",
    "emails.send_overdue_reminders": "default",
    "invoices.generate_pdfs": "invoices",
    "emails.on_invoice_issued": "emails",
    "invoices.generate_pdf": "invoices",
    "invoices.on_issued.generate_pdf": "invoices",
    "invoices.on_issued.refresh_lists": "cache",
    "jobs.invalidate_cache": "cache",
}


def test_registered_job_names_and_their_queues_are_stable(platform):
    platform.loader.import_default_modules()
    ours = {
        name: task.queue
        for name, task in platform.tasks.items()
        if not name.startswith(("celery.", "tests.", "jobs.tests."))
    }
    assert ours == REGISTERED_JOBS
    assert set(ours.values()) <= set(topology.WORKLOAD_QUEUES)


def test_classic_workload_queues_are_priority_queues_that_dead_letter(settings):
    settings.JOBS_QUEUE_TYPE = "classic"
    assert topology.WORKLOAD_QUEUES == ("default", "invoices", "emails", "cache")
    for queue in topology.workload_queues():
        assert queue.durable
        assert queue.queue_arguments == {
            "x-queue-type": "classic",
            "x-max-priority": topology.MAX_PRIORITY,
            "x-dead-letter-exchange": topology.DEAD_LETTER_EXCHANGE,
            "x-queue-version": 2,
        }
    assert topology.DEAD_LETTER_QUEUE not in topology.WORKLOAD_QUEUES
    assert topology.dead_letter_queue().queue_arguments == {"x-queue-type": "classic"}


def test_quorum_queues_have_a_delivery_limit_and_dead_letter_at_least_once(settings):
    settings.JOBS_QUEUE_TYPE = "quorum"
    settings.JOBS_QUORUM_DELIVERY_LIMIT = 7
    for queue in topology.workload_queues():
        assert queue.queue_arguments == {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": topology.DEAD_LETTER_EXCHANGE,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
            "x-delivery-limit": 7,
        }
    assert topology.dead_letter_queue().queue_arguments == {
        "x-queue-type": "quorum",
        "x-delivery-limit": topology.DEAD_LETTER_DELIVERY_LIMIT,
    }
    settings.JOBS_QUEUE_TYPE = "stream"
    with pytest.raises(ValueError, match="JOBS_QUEUE_TYPE is 'stream'; use classic or quorum"):
        topology.workload_queues()


def test_a_job_sent_by_name_alone_goes_to_its_workload_queue(platform, own_worker, worker_env, rabbitmqctl):
    """`celery call NAME` (send_task by name) routes by the topology, not to `default`."""
    import subprocess
    import sys

    from django.conf import settings as django_settings

    vhost = unquote(worker_env["CELERY_BROKER_URL"].rsplit("/", 1)[1])
    try:
        subprocess.run(
            [sys.executable, "-m", "celery", "-A", "project", "call", "invoices.generate_pdf", "--args", "[0]"],
            cwd=django_settings.BASE_DIR, env=worker_env, check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        # Counted by a passive declare: rabbitmqctl's counts of a quorum queue lag.
        with platform.connection_for_write() as connection:
            channel = connection.channel()
            depths = {name: channel.queue_declare(name, passive=True)[1] for name in ("invoices", "default")}
            channel.close()
        assert depths == {"invoices": 1, "default": 0}, depths
    finally:
        rabbitmqctl("purge_queue", "-p", vhost, "invoices")


def test_a_worker_that_meets_a_drifted_queue_stops_with_the_command_that_fixes_it(platform, own_worker):
    from django.core.management import call_command
    from kombu import Queue

    with platform.connection_for_write() as connection:
        channel = connection.channel()
        channel.queue_delete("emails")
        Queue("emails", durable=True)(channel).declare()  # as an old release declared it
        channel.close()
    try:
        with pytest.raises(RuntimeError, match="did not start"):
            own_worker.start(timeout=30)
        log = own_worker.log()
        assert "RabbitMQ's queue 'emails' was declared with other arguments" in log
        assert "python manage.py jobs_topology --fix" in log
        assert "Traceback" not in log
    finally:
        call_command("jobs_topology", "--recreate", "emails")


def test_fix_migrates_the_queues_to_the_other_type_with_their_messages(
    platform, own_worker, settings, rabbitmqctl
):
    """Classic to quorum (the upgrade step for a cluster), or back, as `--fix` after a
    change of JOBS_QUEUE_TYPE."""
    from amqp import Message
    from django.core.management import call_command

    vhost = unquote(platform.conf.broker_url.rsplit("/", 1)[1])
    before = settings.JOBS_QUEUE_TYPE
    after = "quorum" if before == "classic" else "classic"
    with platform.connection_for_write() as connection:
        channel = connection.channel()
        channel.basic_publish(Message(b"kept", priority=9), exchange="", routing_key="invoices")
        channel.close()
    settings.JOBS_QUEUE_TYPE = after
    try:
        call_command("jobs_topology", "--fix")
        types = dict(
            line.split("\t")[:2]
            for line in rabbitmqctl("list_queues", "-p", vhost, "name", "type").splitlines()[1:]
        )
        assert {types[name] for name in (*topology.WORKLOAD_QUEUES, topology.DEAD_LETTER_QUEUE)} == {after}
        with platform.connection_for_write() as connection:
            channel = connection.channel()
            message = channel.basic_get("invoices", no_ack=True)
            channel.close()
        assert message is not None and message.body == b"kept"
    finally:
        settings.JOBS_QUEUE_TYPE = before
        call_command("jobs_topology", "--fix")


def test_verify_reports_drift_clearly_and_recreate_migrates_keeping_messages(platform, own_worker):
    # own_worker: the shared worker is stopped while its queues are deleted.
    from amqp import Message
    from kombu import Queue

    with platform.connection_for_write() as connection:
        channel = connection.channel()
        channel.queue_delete("cache")
        # An old deployment declared `cache` without priorities or dead-lettering.
        Queue("cache", durable=True)(channel).declare()
        channel.basic_publish(Message(b"kept"), exchange="", routing_key="cache")
        channel.close()
        try:
            reports = {r.name: r for r in queues.verify(connection)}
            assert reports["cache"].status == "drift"
            assert "inequivalent arg" in reports["cache"].detail
            assert reports["default"].status == "ok"

            assert queues.recreate(connection, "cache") == 1
            reports = {r.name: r for r in queues.verify(connection)}
            assert reports["cache"].status == "ok"
            channel = connection.channel()
            message = channel.basic_get("cache", no_ack=True)
            channel.close()
            assert message is not None and message.body == b"kept"

            with pytest.raises(ValueError, match="not a queue of the topology"):
                queues.recreate(connection, "nope")
        finally:
            queues.recreate(connection, "cache")


def test_topology_command_reports_drift_as_a_sentence(platform, own_worker):
    from django.core.management import call_command
    from django.core.management.base import CommandError
    from kombu import Queue

    with platform.connection_for_write() as connection:
        channel = connection.channel()
        channel.queue_delete("emails")
        Queue("emails", durable=True)(channel).declare()
        channel.close()
    try:
        with pytest.raises(CommandError, match="--recreate emails"):
            call_command("jobs_topology")
    finally:
        call_command("jobs_topology", "--recreate", "emails")


def test_a_drifted_exchange_is_reported_as_an_exchange_not_migrated_as_a_queue(platform, own_worker):
    from django.core.management import call_command
    from django.core.management.base import CommandError

    with platform.connection_for_write() as connection:
        channel = connection.channel()
        channel.exchange_delete(topology.JOBS_EXCHANGE)
        channel.exchange_declare(topology.JOBS_EXCHANGE, "fanout", durable=True, auto_delete=False)
        channel.close()
    try:
        for args in ([], ["--fix"], ["--recreate", "emails"]):
            with pytest.raises(CommandError, match="The exchange 'jobs' exists with other settings") as error:
                call_command("jobs_topology", *args)
            assert "not a queue" not in str(error.value)
    finally:
        with platform.connection_for_write() as connection:
            channel = connection.channel()
            channel.exchange_delete(topology.JOBS_EXCHANGE)
            channel.close()
        call_command("jobs_topology")  # the exchange and every binding, declared anew


def test_topology_fix_migrates_every_drifted_queue_keeping_messages(platform, own_worker, capsys):
    # What `make run` does on a machine whose queues an older release declared
    # (classic queue version 1, no x-queue-version argument).
    from amqp import Message
    from django.core.management import call_command
    from kombu import Queue

    old_arguments = {
        "x-max-priority": topology.MAX_PRIORITY,
        "x-dead-letter-exchange": topology.DEAD_LETTER_EXCHANGE,
    }
    with platform.connection_for_write() as connection:
        channel = connection.channel()
        for name in ("default", "cache"):
            channel.queue_delete(name)
            Queue(
                name, topology.jobs_exchange(), routing_key=name, durable=True, queue_arguments=old_arguments
            )(channel).declare()
            channel.basic_publish(Message(f"kept in {name}".encode()), exchange="", routing_key=name)
        channel.close()
    try:
        call_command("jobs_topology", "--fix")
        out = capsys.readouterr().out
        assert "recreated default: 1 message(s) carried over" in out
        assert "recreated cache: 1 message(s) carried over" in out
        assert "topology ok" in out
        with platform.connection_for_write() as connection:
            assert {r.status for r in queues.verify(connection)} == {"ok"}
            channel = connection.channel()
            for name in ("default", "cache"):
                message = channel.basic_get(name, no_ack=True)
                assert message is not None and message.body == f"kept in {name}".encode()
            channel.close()
    finally:
        call_command("jobs_topology", "--fix")


def test_a_keeper_that_meets_a_drifted_dead_letter_queue_says_how_to_fix_it(platform, worker_env, tmp_path):
    from django.core.management import call_command
    from kombu import Queue

    from jobs.testing import wait_for
    from jobs.testing.processes import background, manage_py

    with platform.connection_for_write() as connection:
        channel = connection.channel()
        channel.queue_delete(topology.DEAD_LETTER_QUEUE)
        Queue(topology.DEAD_LETTER_QUEUE, topology.dead_letter_exchange(), durable=True,
              queue_arguments={"x-queue-mode": "lazy"})(channel).declare()  # fmt: skip
        channel.close()
    log = tmp_path / "keeper.log"
    try:
        with background(manage_py("dead_letter_keeper"), worker_env, log):
            wait_for(
                lambda: "jobs_topology --fix" in log.read_text(), timeout=30, message="the keeper's advice"
            )
        assert "RabbitMQ's queue 'jobs.dead_letters' was declared with other arguments" in log.read_text()
    finally:
        call_command("jobs_topology", "--fix")
