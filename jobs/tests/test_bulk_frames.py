"""A bulk publish's chunk is written as py-amqp's `basic_publish` would write it.

`ConfirmChannel.send` frames a chunk of several messages into one buffer with the
connection's frame writer and writes it in a few large writes, instead of one
`basic_publish` (a read and a write) per message. RabbitMQ must see the same bytes
either way: these tests compare them frame by frame, with no broker, on py-amqp
connections that were never opened and whose transport only records what it is given.
"""

import contextlib
import struct
import uuid

import amqp
import pytest
from amqp.method_framing import frame_writer

from jobs import topology
from jobs.broker import confirms
from jobs.broker.confirms import ConfirmChannel
from jobs.broker.message import build_message
from jobs.models import Job
from jobs.tests.test_broker_message import jobs_of_every_shape
from jobs.topology import PriorityClass

FRAME_END = 0xCE


class RecordingTransport:
    """A py-amqp transport that keeps each write and has nothing to read."""

    sock = None

    def __init__(self):
        self.writes: list[bytes] = []
        self.reads = 0

    def write(self, data) -> None:
        self.writes.append(bytes(data))

    @contextlib.contextmanager
    def having_timeout(self, timeout):
        yield self.sock

    def read_frame(self):
        self.reads += 1
        raise TimeoutError

    @property
    def written(self) -> bytes:
        return b"".join(self.writes)


def a_channel(frame_max: int, channel_id: int) -> tuple[amqp.Channel, RecordingTransport]:
    """A py-amqp channel on a connection as the handshake leaves it: `frame_max` as
    tuned, the frame writer on the transport, connection.blocked announced (so that
    basic_publish reads before each message, as it does on a real connection)."""
    connection = amqp.Connection(frame_max=frame_max)
    transport = RecordingTransport()
    connection.transport = transport
    connection.frame_writer = frame_writer(connection, transport)
    connection.client_properties["capabilities"] = {"connection.blocked": True, "publisher_confirms": True}
    return amqp.Channel(connection, channel_id), transport


class KombuConnection:
    """What ConfirmChannel.poll reads through: nothing has arrived."""

    def __init__(self):
        self.polls = 0

    def drain_events(self, timeout=None):
        self.polls += 1
        raise TimeoutError


def a_confirm_channel(frame_max: int, channel_id: int) -> tuple[ConfirmChannel, RecordingTransport]:
    """A ConfirmChannel on `a_channel`, as __init__ leaves it once the channel is in
    confirm mode."""
    channel, transport = a_channel(frame_max, channel_id)
    confirm = ConfirmChannel.__new__(ConfirmChannel)
    confirm.connection, confirm.transport, confirm.channel = KombuConnection(), transport, channel
    confirm._track()
    return confirm, transport


def frames_of(data: bytes) -> list[tuple[int, int, bytes]]:
    """(type, channel, payload) of each AMQP frame in `data`, which must hold only
    whole frames."""
    frames, offset = [], 0
    while offset < len(data):
        frame_type, channel, size = struct.unpack_from(">BHI", data, offset)
        payload = data[offset + 7 : offset + 7 + size]
        assert len(payload) == size and data[offset + 7 + size] == FRAME_END, f"a broken frame at {offset}"
        frames.append((frame_type, channel, payload))
        offset += 8 + size
    return frames


def job(**fields) -> Job:
    values = {"task_name": "tests.record", "queue": "default", "args": [], "kwargs": {}}
    return Job(id=uuid.uuid4(), **{"priority": int(PriorityClass.NORMAL), **values, **fields})


def jobs_of_a_chunk() -> list[Job]:
    """Every shape of test_broker_message, no-ops as a bulk enqueue makes them, and
    bodies larger than either frame_max below (several body frames each)."""
    return [
        *jobs_of_every_shape(),
        *(job(task_name="tests.noop") for _ in range(5)),
        job(args=["y" * 300_000], queue="emails"),
        job(args=["z" * 5000], kwargs={"big": "w" * 140_000}, priority=int(PriorityClass.URGENT)),
        job(args=[], kwargs={}, task_name="tests.noop"),
    ]


def messages_of(jobs: list[Job]) -> list[tuple[amqp.Message, str, str]]:
    return [(build_message(j), topology.JOBS_EXCHANGE, j.queue) for j in jobs]


def what_basic_publish_writes(jobs: list[Job], frame_max: int, channel_id: int) -> bytes:
    channel, transport = a_channel(frame_max, channel_id)
    for message, exchange, routing_key in messages_of(jobs):
        amqp.Channel.basic_publish(channel, message, exchange, routing_key, mandatory=True)
    return transport.written


@pytest.mark.parametrize("frame_max", [4096, 131072], ids=lambda n: f"frame_max={n}")
@pytest.mark.parametrize("channel_id", [1, 7], ids=lambda n: f"channel={n}")
def test_a_chunks_bytes_are_those_basic_publish_writes_frame_by_frame(frame_max, channel_id):
    jobs = jobs_of_a_chunk()
    expected = what_basic_publish_writes(jobs, frame_max, channel_id)
    confirm, transport = a_confirm_channel(frame_max, channel_id)

    confirm.send(messages_of(jobs), timeout=5.0)

    mine, theirs = frames_of(transport.written), frames_of(expected)
    assert len(mine) == len(theirs)
    for n, (frame, expected_frame) in enumerate(zip(mine, theirs, strict=True)):
        assert frame == expected_frame, f"frame {n} of {len(theirs)}"
    assert transport.written == expected
    # What the comparison covered: a Publish, a header and a body frame per message
    # that fits a frame, and messages cut into several body frames.
    assert sum(1 for frame_type, _, _ in theirs if frame_type == 1) == len(jobs)
    assert len(theirs) > 3 * len(jobs), "some bodies were larger than frame_max"
    assert max(len(payload) for _, _, payload in theirs) <= frame_max - 8


def test_a_chunk_goes_out_in_a_few_large_writes_after_one_read():
    """basic_publish reads what has arrived before each message, then writes it; a
    chunk is read for once, before it is written in slices of at most WRITE_SIZE."""
    jobs = jobs_of_a_chunk() + [job(task_name="tests.noop") for _ in range(1000)]
    confirm, transport = a_confirm_channel(131072, 1)

    confirm.send(messages_of(jobs), timeout=5.0)

    total = len(transport.written)
    assert total > 2 * confirms.WRITE_SIZE
    assert len(transport.writes) == -(-total // confirms.WRITE_SIZE)
    assert all(len(data) <= confirms.WRITE_SIZE for data in transport.writes)
    assert confirm.connection.polls == 1 and transport.reads == 0
    assert transport.written == what_basic_publish_writes(jobs, 131072, 1)


def test_delivery_tags_count_every_message_of_every_send_in_order():
    confirm, transport = a_confirm_channel(131072, 1)
    first, second = jobs_of_a_chunk(), [job(task_name="tests.noop")]

    assert confirm.send(messages_of(first), timeout=5.0) == set(range(1, len(first) + 1))
    assert confirm.send(messages_of(second), timeout=5.0) == {len(first) + 1}
    assert confirm.send(messages_of(first), timeout=5.0) == set(range(len(first) + 2, 2 * len(first) + 2))
    assert confirm.unconfirmed == set(range(1, 2 * len(first) + 2))
    assert (
        sum(1 for frame_type, _, _ in frames_of(transport.written) if frame_type == 1) == 2 * len(first) + 1
    )


def test_a_single_message_goes_through_basic_publish(monkeypatch):
    published = []
    real = amqp.Channel.basic_publish

    def basic_publish(channel, message, exchange, routing_key, **options):
        published.append((message, exchange, routing_key, options))
        return real(channel, message, exchange, routing_key, **options)

    monkeypatch.setattr(amqp.Channel, "basic_publish", basic_publish)
    single = job(args=["a"], queue="emails")
    confirm, transport = a_confirm_channel(131072, 1)

    assert confirm.send(messages_of([single]), timeout=5.0) == {1}

    assert [(exchange, key, options) for _, exchange, key, options in published] == [
        (topology.JOBS_EXCHANGE, "emails", {"mandatory": True})
    ]
    monkeypatch.setattr(amqp.Channel, "basic_publish", real)
    assert transport.written == what_basic_publish_writes([single], 131072, 1)


def test_a_chunk_cut_off_mid_write_retires_the_channel():
    confirm, transport = a_confirm_channel(131072, 1)
    writes = []

    def stalls(data):
        writes.append(bytes(data))
        if len(writes) == 2:
            raise TimeoutError("timed out")

    transport.write = stalls
    jobs = jobs_of_a_chunk() + [job(task_name="tests.noop") for _ in range(1000)]

    with pytest.raises(amqp.exceptions.RecoverableConnectionError, match="timed out"):
        confirm.send(messages_of(jobs), timeout=5.0)
    assert confirm.broken and len(writes) == 2
