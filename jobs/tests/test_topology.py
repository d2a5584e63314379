"""The topology, snapshotted: a rename that would strand queued messages fails here."""

import pytest

from jobs import topology

REGISTERED_JOBS = {
    # name: queue
    "emails.send": "emails",
    "emails.send_overdue_reminders": "default",
    "emails.on_invoice_issued": "emails",
    "invoices.generate_pdf": "invoices",
    "invoices.on_issued.generate_pdf": "invoices",
    "invoices.on_issued.refresh_lists": "cache",
    "jobs.invalidate_cache": "cache",
    "jobs.relay_pending_jobs": "default",
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


def test_workload_queues_are_priority_queues_that_dead_letter():
    assert topology.WORKLOAD_QUEUES == ("default", "invoices", "emails", "cache")
    for queue in topology.workload_queues():
        assert queue.durable
        assert queue.queue_arguments == {
            "x-max-priority": topology.MAX_PRIORITY,
            "x-dead-letter-exchange": topology.DEAD_LETTER_EXCHANGE,
            "x-queue-version": 2,
        }
    assert topology.DEAD_LETTER_QUEUE not in topology.WORKLOAD_QUEUES


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
            reports = {r.name: r for r in topology.verify(connection)}
            assert reports["cache"].status == "drift"
            assert "inequivalent arg" in reports["cache"].detail
            assert reports["default"].status == "ok"

            assert topology.recreate(connection, "cache") == 1
            reports = {r.name: r for r in topology.verify(connection)}
            assert reports["cache"].status == "ok"
            channel = connection.channel()
            message = channel.basic_get("cache", no_ack=True)
            channel.close()
            assert message is not None and message.body == b"kept"

            with pytest.raises(ValueError, match="not a queue of the topology"):
                topology.recreate(connection, "nope")
        finally:
            topology.recreate(connection, "cache")


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
            assert {r.status for r in topology.verify(connection)} == {"ok"}
            channel = connection.channel()
            for name in ("default", "cache"):
                message = channel.basic_get(name, no_ack=True)
                assert message is not None and message.body == f"kept in {name}".encode()
            channel.close()
    finally:
        call_command("jobs_topology", "--fix")
