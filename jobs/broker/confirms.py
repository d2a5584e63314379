"""One AMQP channel in confirm mode, with many messages in flight at once.

Messages are sent without waiting for each confirm: one message with py-amqp's
`basic_publish`, several (a chunk of a bulk publish) as py-amqp's frame writer frames
them, gathered into one buffer and written in a few large writes. RabbitMQ's acks and
nacks (often `multiple`, covering many at once) and returns of unroutable messages
come in whenever the connection is read, and are matched to the messages here.
`jobs/tests/test_bulk_frames.py` proves a chunk's bytes are those `basic_publish`
would write for the same messages.

Delivery tags are counted here, not told by RabbitMQ: in confirm mode the broker
numbers the messages published on a channel 1, 2, 3... in order, and this class
numbers them the same way. That holds only if nothing but `ConfirmChannel.send`
ever publishes on the channel: the channel is never handed out, and a send cut off
mid-way retires the whole connection (`broken`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import amqp
from amqp import spec
from amqp.serialization import dumps

from jobs.app import celery_app

# A chunk's bytes go out in writes of at most this size, each within the send's
# timeout: a broker that takes a chunk slowly but steadily is not cut off, as it was
# not when each message had a write of its own.
WRITE_SIZE = 256 * 1024


class ConfirmTimeout(Exception):
    """RabbitMQ did not confirm a batch in time (a memory or disk alarm, a dead link)."""


class Unroutable(Exception):
    """RabbitMQ returned a message: no queue is bound for it."""


class ConfirmChannel:
    """A connection and a channel in confirm mode, kept between publishes.

    Every delivery tag is tracked until RabbitMQ acks it (singly or with `multiple`),
    nacks it, or returns it as unroutable: a batch succeeds only when each of its own
    messages is acked and none came back.
    """

    def __init__(self, timeout: float):
        app = celery_app()
        # No heartbeats: nothing would send them while the process is idle, and the
        # broker would close the connection; a dead one is detected on next use.
        self.connection = app.connection_for_write(heartbeat=0)
        # Each node of a failover URL ("a;b;c") once, at once, each within
        # CELERY_BROKER_CONNECTION_TIMEOUT: a dead first node must not keep every
        # publish of this process on it.
        self.connection.ensure_connection(
            max_retries=len(self.connection.alt) - 1 if self.connection.alt else 0,
            interval_start=0,
            interval_step=0,
            interval_max=0,
        )
        # py-amqp's transport, which holds the socket (kombu's has none).
        self.transport = self.connection.connection.transport
        # Opening the channel waits for the broker's answers, with no timeout of its
        # own: a broker that hangs right after the handshake would hold this thread,
        # and the publisher, forever.
        try:
            with self.transport.having_timeout(timeout):
                self.channel = self.connection.channel()
                self.channel.confirm_select()
        except BaseException:
            self.close()
            raise
        self._track()

    def _track(self) -> None:
        """Starts the bookkeeping of a channel just put in confirm mode, whose first
        message RabbitMQ numbers 1."""
        self.broken = False
        self._gathered: _Gathered | None = None
        self.next_tag = 1
        self.settled_below = 1
        self.unconfirmed: set[int] = set()
        self.failed: set[int] = set()
        self.returned: set[str | None] = set()
        self.channel.events["basic_ack"].add(self._on_ack)
        self.channel.events["basic_nack"].add(self._on_nack)
        self.channel.events["basic_return"].add(self._on_return)

    def _settle(self, delivery_tag: int, multiple: bool) -> set[int]:
        if not multiple:
            tags = {delivery_tag} & self.unconfirmed
        else:
            # Tags only grow: every tag below `settled_below` is settled already, so
            # a long publish costs one pass over its tags, not one per ack.
            tags = {t for t in range(self.settled_below, delivery_tag + 1) if t in self.unconfirmed}
            self.settled_below = max(self.settled_below, delivery_tag + 1)
        self.unconfirmed -= tags
        return tags

    def _on_ack(self, delivery_tag, multiple):
        self._settle(delivery_tag, multiple)

    def _on_nack(self, delivery_tag, multiple):
        self.failed |= self._settle(delivery_tag, multiple)

    def _on_return(self, exc, exchange, routing_key, message):
        # An unroutable message (no such queue) is returned, then acked: not delivered.
        # Known by its correlation id, since a return carries no delivery tag.
        self.returned.add(message.properties.get("correlation_id"))

    def send(self, messages: Sequence[tuple[amqp.Message, str, str]], timeout: float) -> set[int]:
        """Publishes each `(message, exchange, routing_key)` without waiting for
        confirms; returns their delivery tags.

        Mandatory: a message no queue takes comes back instead of being confirmed
        and dropped. The broker must take each write within `timeout` (a stalled
        broker fails the send, a slow but steady one does not).
        """
        channel = self.channel
        if channel.connection is None:
            raise amqp.exceptions.RecoverableConnectionError("publish: the channel is closed")
        # A chunk is framed whole before anything is written: one write per chunk's
        # slice of bytes, not one per message, and no read between messages.
        data = self.frames(messages) if len(messages) > 1 else None
        # A connection the broker closed while this one sat idle (a restart) still
        # takes a small write: read what it said first, so that the caller's
        # reconnect sees the failure here and not after the write.
        self.poll()
        # Unconfirmed before they are sent: basic_publish reads what has arrived
        # before it writes, and a `multiple` ack read mid-send covers messages of this
        # send.
        tags = set(range(self.next_tag, self.next_tag + len(messages)))
        self.unconfirmed |= tags
        self.next_tag += len(messages)
        try:
            with self.transport.having_timeout(timeout):
                if data is None:
                    message, exchange, routing_key = messages[0]
                    # The class's basic_publish, which does not wait: on a connection
                    # made with confirm_publish (the project's broker transport option,
                    # for Celery's own publishes), py-amqp makes each channel's
                    # basic_publish its basic_publish_confirm, which would wait for
                    # the confirm.
                    amqp.Channel.basic_publish(channel, message, exchange, routing_key, mandatory=True)
                else:
                    view = memoryview(data)  # slices without copying
                    for start in range(0, len(view), WRITE_SIZE):
                        self.transport.write(view[start : start + WRITE_SIZE])
        except BaseException as exc:
            # Cut off mid-way, the broker may hold some of these messages and a
            # partial frame: tags would no longer match. This connection is done.
            self.broken = True
            if isinstance(exc, OSError):  # a timeout included (celery/py-amqp#452)
                raise amqp.exceptions.RecoverableConnectionError(f"publish: {exc}") from exc
            raise
        return tags

    def frames(self, messages: Sequence[tuple[amqp.Message, str, str]]) -> bytearray:
        """The bytes of a mandatory Basic.Publish of each message on this channel, in
        order: what `basic_publish` would write for each, framed by the connection's
        own frame writer, gathered instead of written message by message."""
        connection = self.channel.connection
        if self._gathered is None or self._gathered.connection is not connection:
            self._gathered = _Gathered(connection)
        return self._gathered.frames(self.channel.channel_id, messages)

    def poll(self) -> None:
        """Takes in the confirms that have arrived, without waiting."""
        try:
            while True:
                self.connection.drain_events(timeout=0)
        except TimeoutError:
            pass

    def settle(self, tags: set[int], correlation_ids: Iterable[str | None], deadline: float | None) -> bool:
        """Whether every one of `tags` is confirmed, waiting until `deadline` (None: not at
        all); raises if one was refused, or returned (its correlation id among
        `correlation_ids`), or the deadline passed."""
        while tags & self.unconfirmed:
            if deadline is None:
                return False
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    raise TimeoutError
                self.connection.drain_events(timeout=remaining)
            except TimeoutError:
                waiting = len(tags & self.unconfirmed)
                raise ConfirmTimeout(f"RabbitMQ had not confirmed {waiting} of {len(tags)} in time") from None
        nacked, self.failed = tags & self.failed, self.failed - tags
        ids = set(correlation_ids)
        returned, self.returned = ids & self.returned, self.returned - ids
        if nacked:
            raise amqp.exceptions.MessageNacked(
                f"RabbitMQ refused (nacked) {len(nacked)} message(s) of the batch"
            )
        if returned:
            raise Unroutable(f"{len(returned)} message(s) reached no queue (is the topology declared?)")
        return True

    def close(self):
        """Drops the connection without AMQP's closing handshake: it is closed after a
        failure, with the publisher held, and a broker that blocks publishers (a
        memory or disk alarm) would never answer Connection.Close. Over TLS, the
        socket's unwrap still waits for the broker: at most half a second."""
        try:
            if self.transport.sock is not None:
                self.transport.sock.settimeout(0.5)
            self.connection.collect()
        except Exception:  # noqa: BLE001 - closing a broken connection
            pass


class _Gathered:
    """A frame writer of the connection's own kind (what `basic_publish` writes
    through), whose `write` appends to a buffer instead of the socket."""

    def __init__(self, connection: amqp.Connection):
        self.connection = connection
        self.buffer = bytearray()
        self.write_frame = connection.frame_writer_cls(connection, self)
        # A Basic.Publish's arguments, as basic_publish serializes them, by
        # (exchange, routing key): a chunk has few of them.
        self.arguments: dict[tuple[str, str], bytes] = {}

    def write(self, data) -> None:
        # The frame writer hands over a view of its own buffer, reused for the next
        # frame: appending copies it.
        self.buffer += data

    def frames(self, channel_id: int, messages: Sequence[tuple[amqp.Message, str, str]]) -> bytearray:
        self.buffer = bytearray()
        write_frame, arguments = self.write_frame, self.arguments
        for message, exchange, routing_key in messages:
            args = arguments.get((exchange, routing_key))
            if args is None:
                # Basic.Publish: ticket, exchange, routing key, mandatory, immediate.
                args = arguments[exchange, routing_key] = dumps(
                    "Bssbb", (0, exchange, routing_key, True, False)
                )
            write_frame(1, channel_id, spec.Basic.Publish, args, message)
        buffer, self.buffer = self.buffer, bytearray()
        return buffer
