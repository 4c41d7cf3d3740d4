"""Interpreter settings for the platform's long-running processes (shards, gateway replicas)."""

import sys

# Each of these processes runs an event loop beside other threads (Ray's, a database writer) that
# wait on I/O several times per request and then need the GIL back. At Python's default 5 ms
# switch interval that hand-over convoy alone added tens of milliseconds to a commit under load.
GIL_SWITCH_INTERVAL_S = 0.0005


def tune_interpreter() -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
