"""Shared databases: one process at a time creates a PostgreSQL database's tables.

Optuna's ``RDBStorage`` and MLflow's SQL tracking store create their tables (and run their
migrations) the first time they open a database. Workers started together on a never-used
database would all do it at once, and all but one fail with "duplicate key value violates unique
constraint" (optuna/optuna#1092). ``schema_lock`` holds a PostgreSQL advisory lock while a store is
opened: the first worker creates the tables, the others wait for it and then find them there.
``advisory_lock`` with another key serialises other first-comer work the same way (the study's
MLflow parent run, made by the first worker and joined by the others).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

# The advisory lock's key: any constant every automl process agrees on. Advisory locks belong to one
# database, so stores in different databases never wait for each other.
SCHEMA_LOCK_KEY = 0x6175746F6D6C  # "automl"
PARENT_RUN_LOCK_KEY = SCHEMA_LOCK_KEY + 1  # the study's MLflow parent run


def is_postgres(url: str) -> bool:
    """``postgresql://...`` or ``postgresql+driver://...``."""
    return url.split("://", 1)[0].split("+", 1)[0].lower() == "postgresql"


def schema_lock(url: str):
    """Hold the database's schema lock while the block opens a store on ``url``; a no-op for
    anything but PostgreSQL (a SQLite file, an MLflow server over HTTP).

    Not to be nested for the same database in one process: the inner one would wait for the outer.
    An unreachable server raises here, as the store itself would."""
    return advisory_lock(url, SCHEMA_LOCK_KEY)


@contextmanager
def advisory_lock(url: str, key: int) -> Iterator[None]:
    """Hold the PostgreSQL advisory lock ``key`` of the database at ``url`` while the block runs: one
    session at a time, across machines. A no-op for anything but PostgreSQL."""
    if not is_postgres(url):
        yield
        return
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    # NullPool: closing the connection ends its session, and with it the lock, even when the block
    # raised or the server dropped the connection; a process that dies releases it the same way.
    engine = sqlalchemy.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            connection.execute(sqlalchemy.text("select pg_advisory_lock(:key)"), {"key": key})
            yield
    finally:
        engine.dispose()
