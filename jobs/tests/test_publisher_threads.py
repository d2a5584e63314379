"""Threads of one process share its publisher: what a failed publish leaves to the
next thread, and to a bulk publish between its chunks."""

import time

import pytest

from jobs.models import Job


class FakeChannel:
    """Stands in for publisher.ConfirmChannel; each one made is kept in `opened`."""

    broken = False
    opened: list

    def __init__(self, timeout):
        type(self).opened.append(self)

    def close(self):
        pass


def a_job():
    import uuid

    return Job(id=uuid.uuid4(), task_name="jobs.tests.record", queue="default", args=[], kwargs={})


def test_a_failed_publish_marks_the_broker_down_and_drops_its_channel_before_letting_go(
    idle_publisher, monkeypatch
):
    """Threads of a process take turns on one publisher. When a publish fails, the
    thread waiting for the publisher must find the broker marked down as it gets it,
    never the failed channel: that thread would wait out a timeout of its own on it,
    and the failed thread could then drop the fresh channel that thread opened."""
    import threading

    publisher = idle_publisher

    class RefusedChannel(FakeChannel):
        opened = []

        def send(self, jobs, timeout):
            raise ConnectionRefusedError("the broker is down")

    class SeenOnRelease:
        """The publisher's lock, noting what the next holder would find."""

        def __init__(self):
            self.lock, self.seen = threading.Lock(), []

        def acquire(self, timeout=-1):
            return self.lock.acquire(timeout=timeout)

        def release(self):
            self.seen.append((publisher.broker_marked_down(), publisher._shared))
            self.lock.release()

    lock, opened = SeenOnRelease(), RefusedChannel.opened
    monkeypatch.setattr(publisher, "ConfirmChannel", RefusedChannel)
    monkeypatch.setattr(publisher, "_lock", lock)

    job = a_job()
    assert publisher.publish_jobs([job]) == []
    assert len(opened) == 2, "a kept channel that fails is replaced once"
    assert lock.seen == [(True, None)]
    assert publisher.publish_jobs([job]) == [] and len(opened) == 2, "marked down: no attempt"


@pytest.mark.django_db  # in a transaction: the chunks are marked inline, by the patched _mark_queued
def test_chunks_left_on_a_channel_another_thread_closed_go_to_the_relay_and_spare_the_new_channel(
    idle_publisher, monkeypatch
):
    """A bulk publish lets the publisher go between chunks. If another thread's publish
    fails meanwhile, it drops the channel this one's unconfirmed chunks were sent on.
    The rest of this publish is left to the relay, without opening a channel for it
    or dropping one another thread has opened since."""
    publisher = idle_publisher

    class UnconfirmedChannel(FakeChannel):
        opened = []

        def send(self, jobs, timeout):
            return {len(self.opened)}

        def settle(self, tags, jobs, deadline):
            return False  # nothing confirmed yet

    opened = UnconfirmedChannel.opened

    def another_thread_fails(jobs, published_since):
        publisher._drop_channel()  # what a failed publish in another thread does, marking the broker down
        publisher._broker_down_until = time.monotonic() + 60
        publisher._shared = UnconfirmedChannel(None)  # and a third thread has opened a new one since

    monkeypatch.setattr(publisher, "ConfirmChannel", UnconfirmedChannel)
    monkeypatch.setattr(publisher, "_mark_queued", another_thread_fails)
    jobs = [a_job() for _ in range(4)]

    # force: as the relay publishes, which a broker marked down does not stop
    assert publisher.publish_jobs(jobs, force=True, chunk_size=2) == []
    assert len(opened) == 2, "no channel was opened for the rest of the publish"
    assert publisher._shared is opened[1], "the channel another thread opened is left alone"
