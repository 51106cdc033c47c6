"""The jobs table and its database: opening a SQLAlchemy URL (SQLite in WAL mode, created private;
PostgreSQL through whichever driver is installed), checking a URL before a server starts, and
creating or upgrading the table however many servers start at once."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from sqlalchemy import (Boolean, Column, Float, Integer, LargeBinary, MetaData, String, Table, Text,
                        create_engine, event, inspect, text)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.pool import StaticPool

from ..errors import GenforgeError

metadata = MetaData()
jobs = Table(
    "genforge_jobs", metadata,
    Column("id", String(40), primary_key=True),
    Column("type", String(32), nullable=False),
    Column("model", String(200), nullable=False),
    Column("owner", String(64), nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("progress", Float, nullable=False, default=0.0),
    Column("params", LargeBinary, nullable=False),
    Column("result", LargeBinary),
    Column("encrypted", Boolean, nullable=False, default=False),  # params sealed (what older servers read)
    Column("error", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("worker", String(200)),
    Column("created", Float, nullable=False),
    Column("started", Float),
    Column("finished", Float),
    Column("heartbeat", Float),
    # added later: nullable, so create_tables can add them to an older table
    Column("params_key", String(32)),
    Column("result_key", String(32)),
)
def _driver_url(url: str) -> str:
    """A bare postgresql:// URL means SQLAlchemy's default driver, psycopg2; when only psycopg 3 (the
    `pg` extra) is installed, use that instead of failing on the missing module."""
    u = make_url(url)
    if u.drivername == "postgresql":
        import importlib.util

        if importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None:
            return u.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


def check_url(url: str) -> None:
    """A one-line GenforgeError, never naming the password, for a jobs URL that cannot work: not a
    URL, an unknown database or driver, or a driver module this venv lacks."""
    try:
        u = make_url(_driver_url(url))
    except ArgumentError:
        raise GenforgeError("the jobs database URL is not a database URL; give one like "
                            "sqlite:////abs/path/jobs.db or postgresql+psycopg://USER:PASS@HOST/DB") from None
    try:
        dialect = u.get_dialect()
    except NoSuchModuleError:
        raise GenforgeError(f"the jobs database URL names an unknown database or driver {u.drivername!r}; "
                            "use sqlite:///PATH, or postgresql+psycopg://USER:PASS@HOST/DB after "
                            "pip install 'genforge[pg]'") from None
    try:
        dialect.import_dbapi()
    except ImportError as e:
        raise GenforgeError(f"the jobs database {u.render_as_string(hide_password=True)} needs the {e.name!r} "
                            "module; for PostgreSQL use a postgresql+psycopg:// URL and pip install "
                            "'genforge[pg]'") from None


def _add_new_columns(conn: Any) -> None:
    """Columns added since a database's table was made: old rows get NULL (see ``JobStore._open``)."""
    have = {c["name"] for c in inspect(conn).get_columns(jobs.name)}
    for col in jobs.columns:
        if col.name not in have:
            conn.execute(text(f"ALTER TABLE {jobs.name} ADD COLUMN {col.name} {col.type.compile(conn.dialect)}"))


def create_tables(engine: Engine, attempts: int = 5) -> None:
    """Create the jobs table (or add the columns an older one lacks) once, however many servers start
    on a database at the same time. PostgreSQL serialises the check-then-create under an advisory
    lock; elsewhere (SQLite) a server that lost the race sees "already exists" and checks again."""
    for attempt in range(attempts):
        try:
            with engine.begin() as conn:
                if engine.dialect.name == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": 0x67656E66})
                metadata.create_all(conn)
                _add_new_columns(conn)
            return
        except DBAPIError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _create_private(url: str) -> None:
    """SQLite makes a new database file (and its -wal and -shm files, which take the database file's
    mode) readable by everyone; jobs hold prompts, labels and images, so make it 0600 first."""
    u = make_url(url)
    if not u.database or u.database == ":memory:" or u.database.startswith("file:") or u.query.get("uri"):
        return
    with contextlib.suppress(OSError):  # exists already, or a bad folder that SQLite will report
        os.close(os.open(u.database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def make_engine(url: str) -> Engine:
    url = _driver_url(url)
    if url.startswith("sqlite"):
        memory = url in ("sqlite://", "sqlite:///:memory:")
        if not memory:
            _create_private(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               poolclass=StaticPool if memory else None)

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record):  # WAL: readers never block the writer, and crash-safe commits
            cur = conn.cursor()
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()
        return engine
    return create_engine(url, pool_pre_ping=True)
