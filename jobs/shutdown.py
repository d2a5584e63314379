"""Graceful stop for the platform's long-running commands (relay, keeper)."""

import signal
from collections.abc import Callable


def stop_requested_on_signal() -> Callable[[], bool]:
    """Installs SIGTERM/SIGINT handlers; returns a callable that says whether one came.

    The loops check it between passes, so a stop never cuts a batch in half.
    """
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    return lambda: stopping
