"""Load benchmarks: W1-W3 against the running platform and against an in-memory "Python ceiling".

    relay      the ceiling: a single-process in-memory FastAPI relay speaking the protocol subset
    client     an asyncio load client (WebSocket + HTTP) and the ledger of what it sent and saw
    workloads  W1 (pairs, paced), W2 (pairs, closed loop), W3 (one group, paced) and their results
    runner     the command behind scripts/bench: runs both targets, prints the table or JSON
"""
