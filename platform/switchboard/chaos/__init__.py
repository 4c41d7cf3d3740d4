"""The chaos run (issue #4): live traffic over WebSocket while faults are injected, then a history
checker that proves PROTOCOL.md's guarantees 1-4 and 7 from the clients' logs and the database.

history.py  the checker: plain records in, a report of violations by guarantee number out
cluster.py  a local multi-node Ray cluster (ray.cluster_utils.Cluster) with the platform on it
faults.py   the injector: one small class per kind of fault
traffic.py  users sending continuously over the SDK, resuming with `since`, logging every frame
seeding.py  10,000 mailboxes with history per shard, written straight into the storage tables
snapshot.py what the database holds about the traffic, read into the checker's records
timings.py  recovery after each shard loss, and how sends fared while PostgreSQL was down
runner.py   scripts/chaos: seed, run traffic and faults in turn, quiesce, check, report
"""
