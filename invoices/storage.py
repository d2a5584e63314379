"""Writes generated files so that a crash never leaves half of one behind."""

from __future__ import annotations

import os
import tempfile

from django.core.files.base import ContentFile
from django.core.files.storage import Storage

_PARTIAL_PREFIX, _PARTIAL_SUFFIX = ".tmp-", ".part"


def remove_partial_files(storage: Storage, name: str) -> int:
    """Removes the temporary files that writers killed mid-write (SIGKILL, a lost
    machine) left in the folder of `name`; returns how many.

    Only for a caller that holds whatever serializes the writers of that folder (the
    invoice's row lock): a temporary file there then belongs to no live writer.
    """
    try:
        directory = os.path.dirname(storage.path(name))
        entries = os.listdir(directory)
    except (NotImplementedError, FileNotFoundError):
        return 0
    removed = 0
    for entry in entries:
        if entry.startswith(_PARTIAL_PREFIX) and entry.endswith(_PARTIAL_SUFFIX):
            try:
                os.unlink(os.path.join(directory, entry))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def write_atomically(storage: Storage, name: str, data: bytes) -> str:
    """Stores `data` under `name`, replacing any file there, all or nothing.

    On a local file system the bytes go to a temporary file in the target folder,
    are flushed to disk, then renamed over the target (an atomic rename). Storage
    backends without local paths (object stores) already write a whole object or
    nothing. `storage.path` refuses names that would leave the storage root.
    """
    try:
        path = storage.path(name)
    except NotImplementedError:
        if storage.exists(name):
            storage.delete(name)
        return storage.save(name, ContentFile(data))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=_PARTIAL_PREFIX, suffix=_PARTIAL_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return name
