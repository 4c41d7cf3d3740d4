"""Storage: the PostgreSQL schema, its migrations, and every query the platform runs.

Nothing here imports actors or the gateway; they import this.
"""
