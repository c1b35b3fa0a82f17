"""Versioned, idempotent schema migrations from ``schemas/clickhouse/NNNN_name.sql``.

Each file is one migration (statements separated by ``;`` at a line end), applied once and
recorded in ``<database>.otelpipe_schema_migrations`` with its checksum. A second ``migrate`` is a
no-op; a recorded migration whose file has changed is an error (write a new migration instead).

Files are templates with a few placeholders, so the same DDL serves chDB and servers:
- ``${database}``, ``${dedup_window}``;
- ``${on_cluster}`` → ``ON CLUSTER <cluster>`` on a server with ``clickhouse.cluster``, else nothing;
- ``${engine:Kind}`` or ``${engine:Kind(params)}`` → the engine as written or, with a cluster,
  ``ReplicatedKind('/clickhouse/tables/{shard}/{database}/{table}', '{replica}'[, params])``;
- ``${ttl:EXPR}`` → ``TTL EXPR + toIntervalDay(N)`` when ``clickhouse.ttl_days`` is set, else nothing.
The embedded chDB path renders with no cluster and no TTL.

Workers starting at once take turns: the one that creates ``otelpipe_migration_lock`` applies
what is pending, the others wait for the lock to go and find nothing left to do (a lock older than
``LOCK_TIMEOUT_S`` is taken for a crashed holder's and removed). A materialized view's query is
replaced with ``ALTER TABLE … MODIFY QUERY``, never dropped and created again, which would let
ingested rows miss it.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sinks.settings import ClickHouseSettings

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas" / "clickhouse"
MIGRATIONS_TABLE = "otelpipe_schema_migrations"
LOCK_TABLE = "otelpipe_migration_lock"
LOCK_TIMEOUT_S = 600
TABLE_ALREADY_EXISTS = 57
# Earlier texts of migrations that were rewritten without changing what they make (a database
# that applied an earlier text is up to date): version → checksums.
SUPERSEDED_CHECKSUMS = {
    18: {"b138727feec72804b851aaaeb3164aed5cee08141ebafe0bdaf50e69919aa5b0"},  # DROP + CREATE of the view
}
log = logging.getLogger(__name__)
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_PLACEHOLDER = re.compile(r"\$\{(\w+)(?::([^}]*))?\}")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def load_migrations(directory: Path = SCHEMA_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if m:
            found.append(Migration(int(m.group(1)), m.group(2), path))
    versions = [m.version for m in found]
    if len(versions) != len(set(versions)):
        raise ValueError(f"two migrations share a version in {directory}")
    return found


def render(sql: str, settings: ClickHouseSettings) -> str:
    """Fill the placeholders; an unknown placeholder is an error, never left in the SQL."""

    def fill(match: re.Match[str]) -> str:
        key, arg = match.group(1), match.group(2)
        if key == "database":
            return settings.database
        if key == "dedup_window":
            return str(settings.dedup_window)
        if key == "on_cluster":
            return f"ON CLUSTER {settings.cluster}" if settings.cluster else ""
        if key == "engine" and arg:
            if not settings.cluster:
                return arg
            name, _, params = arg.partition("(")
            params = params.rstrip(")").strip()
            path = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
            return f"Replicated{name}({path}{', ' + params if params else ''})"
        if key == "ttl" and arg:
            return f"TTL {arg} + toIntervalDay({settings.ttl_days})" if settings.ttl_days else ""
        raise ValueError(f"unknown placeholder {match.group(0)}")

    return _PLACEHOLDER.sub(fill, sql)


def statements(sql: str) -> list[str]:
    """Split a file into statements at ``;`` ending a line, dropping comment-only pieces."""
    parts = re.split(r";\s*$", sql, flags=re.MULTILINE)
    out = []
    for part in parts:
        body = "\n".join(line for line in part.splitlines() if not line.strip().startswith("--")).strip()
        if body:
            out.append(body)
    return out


def ensure_database(client: Any, settings: ClickHouseSettings) -> None:
    on_cluster = f" ON CLUSTER {settings.cluster}" if settings.cluster else ""
    client.command(f"CREATE DATABASE IF NOT EXISTS {settings.database}{on_cluster}")
    engine = render("${engine:ReplacingMergeTree}", settings)
    client.command(
        f"CREATE TABLE IF NOT EXISTS {settings.database}.{MIGRATIONS_TABLE}{on_cluster} ("
        "Version UInt32, Name String, Checksum String, AppliedAt DateTime64(3) DEFAULT now64(3)"
        f") ENGINE = {engine} ORDER BY Version"
    )


def applied_versions(client: Any, settings: ClickHouseSettings) -> dict[int, tuple[str, str]]:
    result = client.query(
        f"SELECT Version, argMax(Name, AppliedAt), argMax(Checksum, AppliedAt) "
        f"FROM {settings.database}.{MIGRATIONS_TABLE} GROUP BY Version"
    )
    return {int(v): (n, c) for v, n, c in result.result_rows}


class MigrationError(RuntimeError):
    pass


def _check_applied(migrations: list[Migration], done: dict[int, tuple[str, str]]) -> list[Migration]:
    """The migrations not applied yet; an applied one whose file changed is an error."""
    pending = []
    for migration in migrations:
        if migration.version not in done:
            pending.append(migration)
            continue
        _, checksum = done[migration.version]
        if checksum != migration.checksum and checksum not in SUPERSEDED_CHECKSUMS.get(migration.version, ()):
            raise MigrationError(
                f"migration {migration.version:04d}_{migration.name} was applied with checksum "
                f"{checksum[:12]} but the file now has {migration.checksum[:12]}: "
                "add a new migration instead of editing an applied one"
            )
    return pending


def _take_lock(client: Any, settings: ClickHouseSettings, timeout_s: float, sleep: Any) -> None:
    from sinks.clickhouse import error_code

    lock = f"{settings.database}.{LOCK_TABLE}"
    waited = 0.0
    while True:
        try:
            client.command(f"CREATE TABLE {lock} (Holder String) ENGINE = MergeTree ORDER BY tuple()")
            return
        except Exception as exc:
            if error_code(exc) != TABLE_ALREADY_EXISTS:
                raise
        age = client.query(
            "SELECT dateDiff('second', metadata_modification_time, now()) FROM system.tables "
            "WHERE database = {db:String} AND name = {t:String}",
            parameters={"db": settings.database, "t": LOCK_TABLE}).result_rows
        if age and age[0][0] > timeout_s:
            log.warning("removing a migration lock held for %ss (its holder is gone)", age[0][0])
            client.command(f"DROP TABLE IF EXISTS {lock}")
            continue
        if waited == 0:
            log.info("another worker is migrating %s; waiting for it", settings.database)
        sleep(0.5)
        waited += 0.5


def migrate(client: Any, settings: ClickHouseSettings, directory: Path = SCHEMA_DIR,
            lock_timeout_s: float = LOCK_TIMEOUT_S, sleep: Any = time.sleep) -> list[Migration]:
    """Apply every migration not yet recorded; return those applied (empty on a second run)."""
    ensure_database(client, settings)
    migrations = load_migrations(directory)
    if not _check_applied(migrations, applied_versions(client, settings)):
        return []
    _take_lock(client, settings, lock_timeout_s, sleep)
    try:
        applied = []
        # Read again under the lock: whoever held it before may have applied them.
        for migration in _check_applied(migrations, applied_versions(client, settings)):
            for statement in statements(render(migration.text, settings)):
                client.command(statement)
            client.insert(
                f"{settings.database}.{MIGRATIONS_TABLE}",
                [[migration.version, migration.name, migration.checksum]],
                column_names=["Version", "Name", "Checksum"],
            )
            applied.append(migration)
        return applied
    finally:
        client.command(f"DROP TABLE IF EXISTS {settings.database}.{LOCK_TABLE}")


def table_columns(client: Any, database: str, table: str) -> dict[str, str]:
    """Column name → type of a table as ClickHouse sees it (Nested columns as Name.Sub)."""
    result = client.query(
        "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = {t:String} "
        "AND default_kind NOT IN ('ALIAS', 'MATERIALIZED') ORDER BY position",
        parameters={"db": database, "t": table},
    )
    return {name: typ for name, typ in result.result_rows}
