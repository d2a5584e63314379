"""The ledger's state machine: every allowed move of a job, written down once.

The states themselves are the values of `Job.state` (jobs.models.JobState); this
table says which moves between them exist, and every write in jobs.ledger checks
its move against it.

Publishing and starting race (a worker may start a job before the publisher marks
it queued), hence PENDING -> STARTED. A run whose worker died is started again,
hence STARTED -> STARTED. An operator's retry of a dead job is a new attempt of the
same row: DEAD -> PENDING, through the outbox. A running job asked to stop ends
STARTED -> CANCELLED. A retry waits in the ledger, not in
a worker: the relay publishes it when due, hence RETRYING -> QUEUED.
"""

from __future__ import annotations

from jobs.models import ACTIVE_STATES, FINISHED_STATES, JobState

__all__ = ["ACTIVE_STATES", "ALLOWED_TRANSITIONS", "FINISHED_STATES", "IllegalTransition", "sources_of"]

ALLOWED_TRANSITIONS: dict[str, frozenset[str]] = {
    JobState.PENDING: frozenset({JobState.QUEUED, JobState.STARTED, JobState.CANCELLED, JobState.DEAD}),
    JobState.QUEUED: frozenset({JobState.STARTED, JobState.CANCELLED, JobState.DEAD, JobState.PENDING}),
    JobState.STARTED: frozenset(
        {
            JobState.STARTED,
            JobState.SUCCEEDED,
            JobState.RETRYING,
            JobState.DEAD,
            JobState.PENDING,
            JobState.CANCELLED,
        }
    ),
    JobState.RETRYING: frozenset(
        {JobState.QUEUED, JobState.STARTED, JobState.DEAD, JobState.CANCELLED, JobState.PENDING}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.DEAD: frozenset({JobState.PENDING}),
    JobState.CANCELLED: frozenset(),
}


class IllegalTransition(ValueError):
    pass


def sources_of(target: str) -> list[str]:
    """The states a job may move to `target` from."""
    return [state for state, targets in ALLOWED_TRANSITIONS.items() if target in targets]


def check_sources(target: str, wanted) -> list[str]:
    """`wanted` narrowed to the allowed sources of `target`; refuses a move the table lacks."""
    sources = sources_of(target)
    if wanted is None:
        return sources
    wanted = set(wanted)
    illegal = wanted - set(sources)
    if illegal:
        raise IllegalTransition(f"A job cannot move from {sorted(illegal)} to {target}.")
    return [s for s in sources if s in wanted]
