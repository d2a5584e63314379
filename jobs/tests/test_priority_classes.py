"""Priority classes: their names, their order."""

import pytest

from jobs.topology import PriorityClass


def test_priority_classes_parse_names_and_refuse_anything_else():
    assert PriorityClass.parse("urgent") is PriorityClass.URGENT
    assert PriorityClass.parse("BULK") is PriorityClass.BULK
    assert PriorityClass.URGENT > PriorityClass.NORMAL > PriorityClass.BULK
    with pytest.raises(ValueError, match="use one of"):
        PriorityClass.parse("asap")
