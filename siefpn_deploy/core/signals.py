"""Signal handlers set for a block of code and put back after it: library code and the CLI's commands, which
also run inside a caller's process (a test, a notebook), leave the process's dispositions as they found them."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def disposition_kept(signum: int, handler: Any = None) -> Iterator[None]:
    """Within the block, `handler` for `signum` (when given); after it, the disposition `signum` had before,
    whatever the block set meanwhile. Off the main thread it does nothing (Python cannot set handlers there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signum)
    if handler is not None:
        signal.signal(signum, handler)
    try:
        yield
    finally:
        if signal.getsignal(signum) is not previous:
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
