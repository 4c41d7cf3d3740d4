"""A client-side deadline for database work: cancel what outlives its deadline.

PostgreSQL's statement_timeout bounds a statement on the server; this covers what it cannot: a
server (or a pooler in front of it) that ignores it, and time spent outside a statement. One
daemon thread per process sleeps until the earliest armed deadline and then calls the cancel
function it was given (psycopg's cancel is safe to call from another thread: it opens a new
connection that asks the server to stop the running query, and the waiting thread gets an error).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class Watchdog:
    """Checks its deadlines every `tick_s` (a deadline is met that much late at most). Arming and
    disarming only touch a dict under a lock: on the commit path, waking this thread each time
    would cost the writer a GIL hand-over per commit."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, tick_s: float = 0.1):
        self._clock = clock
        self.tick_s = tick_s
        self._armed: dict[int, tuple[float, Callable[[], None]]] = {}
        self._tokens = itertools.count(1)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.fired = 0  # deadlines that ran out (for tests and stats)

    def arm(self, deadline: float, cancel: Callable[[], None]) -> int:
        """Call `cancel` once the clock passes `deadline`, unless disarmed first."""
        token = next(self._tokens)
        with self._lock:
            self._armed[token] = (deadline, cancel)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="db-watchdog", daemon=True)
                self._thread.start()
        return token

    def disarm(self, token: int) -> None:
        with self._lock:
            self._armed.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.tick_s)
            now = self._clock()
            with self._lock:
                due = sorted((t for t, (deadline, _) in self._armed.items() if deadline <= now),
                             key=lambda t: self._armed[t][0])
                cancels = [self._armed.pop(token)[1] for token in due]
            for cancel in cancels:  # outside the lock: a cancel opens a connection
                self.fired += 1
                try:
                    cancel()
                except Exception as error:  # the server is unreachable: the socket timeout follows
                    log.warning("cancelling a database call past its deadline failed: %s", error)


WATCHDOG = Watchdog()
