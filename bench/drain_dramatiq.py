"""bench/drain.py's peer: the same counted no-op on Dramatiq with its RabbitMQ broker
(publisher confirms on; Dramatiq acks a message after its actor returns), installed
for the benchmark only (bench/drain.py installs `dramatiq[rabbitmq]` when missing).

    dramatiq bench.drain_dramatiq --processes 2 --threads 1 --queues bench_drain_dramatiq
"""

import os

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import Middleware

from bench import counter

QUEUE = "bench_drain_dramatiq"


class _Ready(Middleware):
    def before_worker_boot(self, broker, worker) -> None:
        # Before any consumer starts: every process waits for the others to boot.
        counter.barrier(int(os.environ.get("BENCH_DRAIN_PROCESSES", "1")))

    def after_worker_boot(self, broker, worker) -> None:
        counter.ready()


broker = RabbitmqBroker(
    url=os.environ.get("BENCH_DRAIN_DRAMATIQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F"),
    confirm_delivery=True,
)
broker.add_middleware(_Ready())
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name=QUEUE, max_retries=0)
def noop() -> None:
    counter.bump()
