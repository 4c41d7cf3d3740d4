"""When an actor process came up, phase by phase.

Wall-clock stamps, so that another process on the same machine can line them up with the moment
it killed the actor and the moment its first send after the restart was answered
(benchmarks/recovery.py prints where a restart's time goes).
"""

from __future__ import annotations

import os
import sys
import time


def process_started_at() -> float | None:
    """When this OS process started (Linux; None elsewhere). /proc/uptime is used rather than the
    boot time in /proc/stat, which has whole-second resolution."""
    try:
        with open("/proc/self/stat") as stat:
            # Fields after the command name, which is in parentheses and may contain spaces.
            start_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as uptime:
            up_s = float(uptime.read().split()[0])
        now = time.time()
    except (OSError, ValueError, IndexError):
        return None
    return now - (up_s - start_ticks / os.sysconf("SC_CLK_TCK"))


def package_imported_at() -> float | None:
    """When this process imported the switchboard.actors package. Read through sys.modules on
    purpose: Ray pickles an actor class by value, so a module global named in the constructor
    would carry the value of the process that created the actor, not this one's."""
    return getattr(sys.modules.get("switchboard.actors"), "IMPORTED_AT", None)


class StartupClock:
    """Named wall-clock stamps of one process's start: created, our imports begun, constructor
    entered, and whatever the constructor marks."""

    def __init__(self):
        self.stamps: dict[str, float | None] = {
            "process_started": process_started_at(),
            "imports_started": package_imported_at(),
            "init_started": time.time(),
        }

    def mark(self, phase: str) -> None:
        self.stamps[phase] = time.time()
