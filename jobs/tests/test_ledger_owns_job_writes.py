"""Only jobs.ledger writes the Job table.

A static reading of every module of the platform and the apps (tests, test support
and migrations aside): an ORM write reached from `Job` or from a relation to it, a
`.save()` of a job, or SQL text that inserts, updates, deletes or copies into the
job table, anywhere but in jobs/ledger/, fails the test with file:line.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ["jobs", "invoices", "emails", "project"]
LEDGER = ROOT / "jobs" / "ledger"
SKIPPED_PARTS = {"migrations", "tests", "testing"}

ORM_WRITES = {
    "update", "delete", "create", "get_or_create", "update_or_create", "bulk_create", "bulk_update",
    "_raw_delete", "_update",
}  # fmt: skip
# Relations that lead to Job rows from another model (Event.jobs, DeadLetter.job, ...).
JOB_RELATIONS = {"jobs", "job", "pdf_job", "launches_job"}
SQL_WRITE = re.compile(
    r"\b(UPDATE|INSERT\s+INTO|DELETE\s+FROM|COPY|TRUNCATE(\s+TABLE)?)\s+\"?jobs_job\b", re.I
)
TABLE = "Job._meta.db_table"


def _chain_names(node: ast.AST) -> list[str]:
    """The names along a receiver chain: Job.objects.filter(...).select_for_update() gives
    ['Job', 'objects', 'filter', 'select_for_update']."""
    names: list[str] = []
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        elif isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Name):
            names.append(node.id)
            return names[::-1]
        else:
            return names[::-1]


def _text_of(node: ast.AST, table_names: set[str]) -> str | None:
    """A string's text; in an f-string, the job table's name where an expression gives it."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        parts = []
        for value in node.values:
            if isinstance(value, ast.Constant):
                parts.append(str(value.value))
            else:
                expression = ast.unparse(value.value)
                parts.append("jobs_job" if expression in table_names else "{" + expression + "}")
        return "".join(parts)
    return None


def _names_of_the_table(tree: ast.AST) -> set[str]:
    """`Job._meta.db_table` and every name assigned it (`_TABLE = Job._meta.db_table`)."""
    names = {TABLE}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and ast.unparse(node.value) == TABLE:
            names |= {ast.unparse(target) for target in node.targets}
    return names


def job_writes_in(source: str, filename: str = "<source>") -> list[str]:
    """Every write of the Job table in `source`, as 'file:line: what'."""
    tree = ast.parse(source, filename)
    table_names = _names_of_the_table(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            method = node.func.attr
            receiver = _chain_names(node.func.value)
            if (
                method in ORM_WRITES
                and receiver
                and (receiver[0] == "Job" or any(name in JOB_RELATIONS for name in receiver[1:]))
            ):
                found.append(f"{filename}:{node.lineno}: {'.'.join(receiver)}.{method}(...)")
            elif method == "save" and receiver and re.fullmatch(r"_?jobs?|.*_job", receiver[-1]):
                found.append(f"{filename}:{node.lineno}: {'.'.join(receiver)}.save(...)")
        text = _text_of(node, table_names)
        if text and SQL_WRITE.search(text):
            found.append(f"{filename}:{node.lineno}: SQL {SQL_WRITE.search(text).group(0)!r}")
    return found


def _modules():
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if LEDGER in path.parents or SKIPPED_PARTS & set(path.relative_to(ROOT).parts):
                continue
            yield path


def test_no_module_but_the_ledger_writes_the_job_table():
    writes = []
    for path in _modules():
        writes += job_writes_in(path.read_text(), str(path.relative_to(ROOT)))
    assert not writes, "Only jobs.ledger may write the Job table; found:\n" + "\n".join(writes)


def test_the_ledger_itself_is_seen_writing_so_the_check_can_see_writes():
    writes = []
    for path in sorted(LEDGER.rglob("*.py")):
        writes += job_writes_in(path.read_text(), path.name)
    assert any("UPDATE" in w for w in writes) and any("INSERT" in w for w in writes)
    assert any("COPY" in w for w in writes) and any("get_or_create" in w for w in writes)


@pytest.mark.parametrize(
    "source",
    [
        "Job.objects.filter(pk=1).update(state='dead')",
        "Job.objects.select_for_update().filter(pk=1).delete()",
        "Job.objects.create(task_name='x')",
        "Job._base_manager.bulk_create([])",
        "event.jobs.update(state='dead')",
        "invoice.pdf_job.save()",
        "job.save(update_fields=['state'])",
        "cursor.execute(f'UPDATE {Job._meta.db_table} SET state = 1')",
        "cursor.execute('insert into jobs_job (id) values (1)')",
        'cursor.copy_expert(f"COPY {Job._meta.db_table} (id) FROM STDIN", f)',
        "cursor.execute(f'DELETE FROM {Job._meta.db_table} WHERE id = 1')",
        "table = Job._meta.db_table\ncursor.execute(f'DELETE FROM {table} WHERE id = 1')",
    ],
)
def test_each_kind_of_job_write_is_caught(source):
    assert job_writes_in(source), source


@pytest.mark.parametrize(
    "source",
    [
        "Job.objects.filter(pk=1).first()",
        "DeadLetter.objects.filter(pk=1).update(state='open')",
        "letter.save()",
        "cursor.execute(f'SELECT id FROM {Job._meta.db_table}')",
    ],
)
def test_reads_and_other_tables_are_not_job_writes(source):
    assert not job_writes_in(source), source
