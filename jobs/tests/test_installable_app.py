"""The `jobs` app installed from its wheel into a brand-new project, as docs/install.md
tells a team: a fresh virtual environment, `django-admin startproject`, the page's code
blocks applied as written, migrate, the topology, and a job run by a real worker (and
one published by the real relay) on this machine's PostgreSQL and RabbitMQ. No file of
this repository reaches the project but the wheel."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from urllib.parse import unquote

import psycopg2
import pytest
from django.conf import settings

from jobs.testing import broker, wait_for

ROOT = Path(__file__).resolve().parents[2]
INSTALL = ROOT / "docs" / "install.md"
_BLOCK = re.compile(r"```python\n# (\S+): (add|new file)\n(.*?)```", re.S)


def documented_files() -> list[tuple[str, str, str]]:
    """(path, "add" or "new file", code) of each file block of docs/install.md."""
    return _BLOCK.findall(INSTALL.read_text())


def run(args, cwd, env, timeout=300) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, (
        f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )
    return done.stdout


@pytest.fixture
def team_services(broker_url):
    """A database and a vhost of the new project's own, dropped afterwards."""
    run_vhost = unquote(broker_url.split(";")[0].rsplit("/", 1)[1])  # jobs_test_<this run>
    name = f"test_jobs_{run_vhost.removeprefix('jobs_test_')}_teamsite"  # dropped by a later run if left
    vhost = f"{run_vhost}_teamsite"
    db = settings.DATABASES["default"]
    server = psycopg2.connect(dbname="postgres", user=db["USER"], password=db["PASSWORD"] or None,
                              host=db["HOST"], port=db["PORT"])  # fmt: skip
    server.autocommit = True
    with server.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    broker.ctl("add_vhost", vhost)
    broker.ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    base = re.match(r"^[a-z]+://[^/]+", broker_url.split(";")[0]).group(0)
    try:
        yield {
            "PGDATABASE": name, "PGHOST": db["HOST"] or "127.0.0.1", "PGPORT": str(db["PORT"] or 5432),
            "PGUSER": db["USER"] or "", "PGPASSWORD": db["PASSWORD"] or "", "CELERY_BROKER_URL": f"{base}/{vhost}",
        }  # fmt: skip
    finally:
        broker.ctl("delete_vhost", vhost)
        with server.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        server.close()


def test_a_new_project_installs_the_wheel_follows_the_docs_and_runs_jobs(team_services, tmp_path):
    # The wheel, built from a copy of what it is made of (the build writes beside its sources).
    source = tmp_path / "source"
    shutil.copytree(ROOT / "jobs", source / "jobs", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", source)
    (source / "docs").mkdir()
    shutil.copy(INSTALL, source / "docs")
    run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", source],
        tmp_path,
        os.environ,
    )
    (wheel,) = (tmp_path / "dist").glob("django_jobs_ledger-*.whl")
    shipped = zipfile.ZipFile(wheel).namelist()
    assert (
        "jobs/migrations/0001_initial.py" in shipped
        and "jobs/templates/admin/jobs/job/change_form.html" in shipped
    )
    assert not [
        n
        for n in shipped
        if n.startswith(("jobs/tests/", "jobs/testing/", "invoices/", "emails/", "project/"))
    ]

    # A fresh virtual environment with the wheel and what it declares (held to the lock's pins).
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], tmp_path, os.environ)
    python = venv / "bin" / "python"
    run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", wheel, "-c", ROOT / "requirements.txt"],
        tmp_path, os.environ, timeout=600)  # fmt: skip
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "LANG": "C.UTF-8", "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "teamsite.settings", **team_services,
    }  # fmt: skip

    # The new project, with the page's blocks applied as written.
    site = tmp_path / "site"
    site.mkdir()
    run([venv / "bin" / "django-admin", "startproject", "teamsite", site], tmp_path, env)
    run([python, "manage.py", "startapp", "hello"], site, env)
    (site / "teamsite" / "settings.py").open("a").write('\nINSTALLED_APPS += ["hello"]\n')
    blocks = documented_files()
    assert {path for path, _, _ in blocks} >= {
        "teamsite/settings.py",
        "teamsite/celery.py",
        "teamsite/urls.py",
    }
    for path, how, code in blocks:
        target = site / path
        if how == "new file":
            target.write_text(code)
        else:
            target.write_text(target.read_text() + "\n" + code)
    where = run([python, "-c", "import jobs; print(jobs.__file__)"], site, env)
    assert where.startswith(str(venv)), where  # the wheel's jobs, not this repository's

    run([python, "manage.py", "check"], site, env)
    run([python, "manage.py", "migrate", "-v", "0"], site, env)
    run([python, "manage.py", "jobs_topology"], site, env)

    logs = tmp_path / "logs"
    logs.mkdir()
    processes = []
    try:
        for name, args in {
            "worker": [venv / "bin" / "celery", "-A", "teamsite", "worker", "-c", "1", "-P", "prefork", "-l", "INFO",
                       "-n", "teamsite@%h", "--without-gossip", "--without-mingle", "-Q", "default"],
            "relay": [python, "manage.py", "relay"],
        }.items():  # fmt: skip
            log = open(logs / f"{name}.log", "wb")
            processes.append(
                subprocess.Popen(
                    args, cwd=site, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        enqueued = run(
            [python, "manage.py", "shell", "-c",
             "import datetime, jobs; from django.utils import timezone; from hello.tasks import greet; "
             "print(jobs.enqueue(greet, 'team').id); "
             "print(jobs.enqueue(greet, 'later', run_after=timezone.now() + datetime.timedelta(seconds=1)).id)"],
            site, env,
        ).split()  # fmt: skip
        now, later = enqueued[-2:]

        ledger = psycopg2.connect(dbname=team_services["PGDATABASE"], user=team_services["PGUSER"],
                                  password=team_services["PGPASSWORD"] or None, host=team_services["PGHOST"],
                                  port=team_services["PGPORT"])  # fmt: skip
        ledger.autocommit = True

        def rows():
            with ledger.cursor() as cursor:
                cursor.execute("SELECT id::text, state, result, attempts FROM jobs_job")
                return {row[0]: row[1:] for row in cursor.fetchall()}

        def both_finished():
            found = rows()
            return (
                all(found.get(i, ("",))[0] in ("succeeded", "dead", "cancelled") for i in (now, later))
                and found
            )

        try:
            found = wait_for(both_finished, timeout=60, message="the new project's jobs to finish")
        except BaseException:
            for name in ("worker", "relay"):
                print(f"--- {name} log ---\n" + (logs / f"{name}.log").read_text()[-4000:])
            raise
        finally:
            ledger.close()
        assert found[now] == ("succeeded", "hello team", 1)
        # Deferred at enqueue, so not published on commit: only the relay sends it when due.
        assert found[later] == ("succeeded", "hello later", 1)
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in processes:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
