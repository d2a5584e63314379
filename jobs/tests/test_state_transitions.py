"""The ledger's table of allowed state transitions."""

import pytest

from jobs import ledger
from jobs.ledger import ALLOWED_TRANSITIONS
from jobs.models import JobState


def test_every_state_is_in_the_transition_table_and_finished_states_are_final():
    assert set(ALLOWED_TRANSITIONS) == set(JobState.values)
    assert ALLOWED_TRANSITIONS[JobState.SUCCEEDED] == frozenset()
    assert ALLOWED_TRANSITIONS[JobState.CANCELLED] == frozenset()
    with pytest.raises(ledger.IllegalTransition):
        ledger.transition(
            "00000000-0000-0000-0000-000000000000", JobState.QUEUED, only_from=[JobState.SUCCEEDED]
        )
