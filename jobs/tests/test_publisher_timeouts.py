"""A broker that stops answering cannot hold the publisher for ever."""

import time

import pytest

from jobs.models import Job


@pytest.mark.django_db(transaction=True)
def test_a_broker_that_answers_nothing_after_the_handshake_fails_the_publish_in_time(
    idle_publisher, settings, monkeypatch
):
    """Opening the publisher's channel waits for RabbitMQ's answers: a broker that
    hangs right after the connection handshake must fail the publish within its
    timeout (the job stays pending for the relay), not hold the publisher forever."""
    import threading
    import uuid

    import amqp

    publisher = idle_publisher
    settings.JOBS_PUBLISH_TIMEOUT_SECONDS = 0.5
    # The real connection to the real broker, whose Channel.Open then gets no answer.
    monkeypatch.setattr(amqp.Channel, "open", lambda channel: channel.connection.drain_events())
    job = Job(id=uuid.uuid4(), task_name="jobs.tests.record", queue="default", args=[], kwargs={})
    published = []
    thread = threading.Thread(target=lambda: published.append(publisher.publish_jobs([job])), daemon=True)
    started = time.monotonic()
    thread.start()
    thread.join(10)

    assert not thread.is_alive(), "the publish still waits for the broker"
    assert published == [[]] and time.monotonic() - started < 3
    assert publisher.broker_marked_down() and publisher._shared is None


@pytest.mark.broker  # a real connection to the broker under test
def test_closing_a_publisher_connection_waits_at_most_half_a_second_for_the_broker():
    """The publisher closes a failed connection with the publisher held; over TLS the
    socket's unwrap waits for the broker, so the socket gets a short timeout first
    (a socket left blocking by a failed publish would wait forever)."""
    from jobs.broker.confirms import ConfirmChannel

    channel = ConfirmChannel(timeout=1.0)
    transport = channel.connection.connection.transport  # py-amqp's, which holds the socket
    socket_ = transport.sock
    socket_.settimeout(None)  # as a publish that failed leaves it
    seen = []
    collect = channel.connection.collect
    channel.connection.collect = lambda: (seen.append(socket_.gettimeout()), collect())
    channel.close()
    assert seen == [0.5]
    assert transport.sock is None, "the connection is gone"
