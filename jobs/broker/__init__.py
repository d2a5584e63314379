"""Putting messages on RabbitMQ, one level per module, each using only the one below.

- `message`: what a job's message is. `build_message(job)` is the only place the
  platform writes Celery's protocol-2 headers and body.
- `confirms`: one AMQP channel in confirm mode (`ConfirmChannel`): messages sent
  without waiting, each delivery tag tracked until RabbitMQ acks, nacks or returns it.
- `publisher`: the process's publishing (`publish_jobs`, `publish_message`): one kept
  channel under a lock, chunks with their confirms in flight, the broker-down
  backoff, and the ledger's `queued` marks.
- `queues`: broker administration (declare, verify, drift, migrate a queue) of the
  topology that `jobs.topology` declares.

py-amqp frames every message: nothing here writes AMQP bytes itself.
"""
