"""What bench/drain.py's workers report back: a completion counter and a ready mark.

Every worker process that runs a counted no-op keeps its count in a file of its own
under `$BENCH_DRAIN_DIR` (in /dev/shm), mapped into memory: an increment is a store
into that mapping, no system call and no round trip, so counting costs the drain
nothing measurable. `total()` sums the files. A process that is ready to take jobs
(Celery's `worker_ready`, Dramatiq's `after_worker_boot`) writes `ready-<pid>` with
its `time.monotonic()`, a clock all processes of the machine share.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time

DIR_ENV = "BENCH_DRAIN_DIR"

_slot: ctypes.c_uint64 | None = None
_slot_pid: int | None = None


def bump() -> None:
    """One more job done by this process."""
    global _slot, _slot_pid
    if _slot_pid != os.getpid():  # first job of this process (or a fork of one)
        _slot, _slot_pid = _open_slot(), os.getpid()
    _slot.value += 1


def _open_slot() -> ctypes.c_uint64:
    path = os.path.join(os.environ[DIR_ENV], f"count-{os.getpid()}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 8)
        mapping = mmap.mmap(fd, 8)
    finally:
        os.close(fd)
    return ctypes.c_uint64.from_buffer(mapping)  # keeps the mapping alive


def ready() -> None:
    """Marks this process ready, with the time it was."""
    directory = os.environ[DIR_ENV]
    path = os.path.join(directory, f"ready-{os.getpid()}")
    with open(path + ".tmp", "w") as fh:
        fh.write(repr(time.monotonic()))
    os.replace(path + ".tmp", path)


def barrier(processes: int, timeout: float = 60.0) -> None:
    """Waits until `processes` processes of this worker have called it: a worker of
    several processes that boot one by one (Dramatiq) then starts consuming in all of
    them at once, as a Celery worker does once its pool is up."""
    directory = os.environ[DIR_ENV]
    open(os.path.join(directory, f"boot-{os.getpid()}"), "w").close()
    deadline = time.monotonic() + timeout
    while sum(name.startswith("boot-") for name in os.listdir(directory)) < processes:
        if time.monotonic() > deadline:
            return
        time.sleep(0.001)


# -- the reading side (bench/drain.py) ---------------------------------------------


def total(directory: str) -> int:
    count = 0
    for name in os.listdir(directory):
        if name.startswith("count-"):
            with open(os.path.join(directory, name), "rb") as fh:
                count += int.from_bytes(fh.read(8) or b"\0", "little")
    return count


def ready_times(directory: str) -> list[float]:
    times = []
    for name in os.listdir(directory):
        if name.startswith("ready-") and not name.endswith(".tmp"):
            with open(os.path.join(directory, name)) as fh:
                times.append(float(fh.read()))
    return times


def reset(directory: str) -> None:
    """Forgets every count and mark (only while no worker runs)."""
    for name in os.listdir(directory):
        if name.startswith(("count-", "ready-", "boot-")):
            os.unlink(os.path.join(directory, name))
