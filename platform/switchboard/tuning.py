"""Interpreter settings for the platform's long-running processes (shards, gateway replicas)."""

import gc
import sys

# Each of these processes runs an event loop beside other threads (Ray's, a database writer) that
# wait on I/O several times per request and then need the GIL back. At Python's default 5 ms
# switch interval that hand-over convoy alone added tens of milliseconds to a commit under load.
GIL_SWITCH_INTERVAL_S = 0.0005

# Every frame allocates a few dicts; at Python's default (a young collection every 700
# allocations) the collector ran hundreds of times a second, and each older-generation pass walked
# every object Ray, FastAPI and SQLAlchemy made at import. Those never die: freeze them out of the
# collector's sight, and collect the young generation less often.
GC_THRESHOLDS = (10_000, 20, 10)


def tune_interpreter() -> None:
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
