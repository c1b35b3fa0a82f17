"""The ClickHouse schema: one target, and ``migrate`` bringing any database to it in place.

The target is ``schemas/clickhouse/tables/NN_name.sql``: for each table its whole current
``CREATE`` (and the materialized views it feeds). ``migrate`` compares each table that exists with
its target, as ClickHouse itself normalises both, and brings it there with metadata-only changes:

- a missing table or view is created;
- a missing column is added (``ADD COLUMN … AFTER``, with its type, default or materialized
  expression, codec and comment), so are missing skipping indexes; neither rewrites a part;
- deduplication settings that differ from the configuration are set (``MODIFY SETTING``), so a
  changed ``dedup_window`` reaches tables made before;
- a view whose query differs gets the target query (``ALTER TABLE … MODIFY QUERY``: one atomic
  step, no moment in which ingested rows miss it).

What cannot change without rewriting the table (sort key, partition key, engine, a column's type
or codec, an index of the same name and another definition) is kept and reported. So a database the
Collector's ClickHouse exporter made (any release since v0.151, or its older logs layout with
``TimestampTime``) is adopted as it is: its rows stay where they are, otelpipe's columns are added
with defaults, and the exporter's own INSERTs keep working during a migration period.

``plan`` says what ``migrate`` would do and changes no table: the target is created in a scratch
database (``<database>_otelpipe_probe_<random>``, dropped at once) so that both sides are compared
as ClickHouse reads them. ``migrate`` runs under a lock (a table; one worker migrates, the others
wait and find nothing left) and records the schema version only once every step has succeeded:
a failed migration records nothing, and running it again continues where it stopped.

Files are templates, so the same DDL serves chDB, a server and a cluster:
- ``${database}``, ``${on_cluster}`` (``ON CLUSTER <cluster>`` with ``clickhouse.cluster``);
- ``${engine:Kind(params)}`` → the engine, or with a cluster ``ReplicatedKind('/clickhouse/tables/
  {shard}/{database}/{table}', '{replica}'[, params])``;
- ``${ttl:EXPR}`` → ``TTL EXPR + toIntervalDay(N)`` with ``clickhouse.ttl_days``;
- ``${dedup}`` → the deduplication window of the engine: ``non_replicated_deduplication_window``,
  or ``replicated_deduplication_window`` and ``replicated_deduplication_window_seconds``;
- ``${text:TOKENIZER|FALLBACK}`` → ``text(tokenizer = 'TOKENIZER')`` where the server has text
  indexes (ClickHouse >= 26.2, as the exporter decides), else ``FALLBACK``; ``${no_text:…}`` is
  kept only where it has none.
With ``clickhouse.sharded`` each table ``T`` is created as ``T_local`` on every shard and ``T``
becomes ``Distributed(cluster, database, T_local, key)`` with the file's ``-- sharding_key:``.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from sinks.settings import ClickHouseSettings

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas" / "clickhouse" / "tables"
CARRY_OVER_DIR = SCHEMA_DIR.parent / "carry_over"
SCHEMA_VERSION = 20  # recorded in MIGRATIONS_TABLE; 1-19 were the numbered files of earlier releases
MIGRATIONS_TABLE = "otelpipe_schema_migrations"
LOCK_TABLE = "otelpipe_migration_lock"
LOCK_TIMEOUT_S = 600
TABLE_ALREADY_EXISTS = 57
TEXT_INDEX_SINCE = (26, 2)
log = logging.getLogger(__name__)
_FILE = re.compile(r"^(\d{2})_([a-z0-9_]+)\.sql$")
_PLACEHOLDER = re.compile(r"\$\{(\w+)(?::([^}]*))?\}")
_CREATE = re.compile(r"^CREATE\s+(TABLE|MATERIALIZED VIEW)\s+IF NOT EXISTS\s+(\w+)\.(\w+)", re.I)
_SHARDING_KEY = re.compile(r"^--\s*sharding_key:\s*(.+?)\s*$", re.M)
_DEDUP_SETTINGS = ("non_replicated_deduplication_window", "replicated_deduplication_window",
                   "replicated_deduplication_window_seconds")


@dataclass(frozen=True)
class SchemaFile:
    order: int
    name: str
    path: Path

    @property
    def text(self) -> str:
        return self.path.read_text()


def load_schema(directory: Path = SCHEMA_DIR) -> list[SchemaFile]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        m = _FILE.match(path.name)
        if m:
            found.append(SchemaFile(int(m.group(1)), m.group(2), path))
    orders = [f.order for f in found]
    if len(orders) != len(set(orders)):
        raise ValueError(f"two schema files share a number in {directory}")
    return found


def dedup_settings(settings: ClickHouseSettings, replicated: bool) -> dict[str, int]:
    """The deduplication settings a table of this engine kind carries."""
    if replicated:
        return {"replicated_deduplication_window": settings.dedup_window,
                "replicated_deduplication_window_seconds": settings.dedup_window_seconds}
    return {"non_replicated_deduplication_window": settings.dedup_window}


def render(sql: str, settings: ClickHouseSettings, text_index: bool = True, plain: bool = False) -> str:
    """Fill the placeholders; an unknown placeholder is an error, never left in the SQL. ``plain``
    renders for one node (no cluster, no TTL): the scratch copy ``plan`` compares against."""
    cluster = "" if plain else settings.cluster

    def fill(match: re.Match[str]) -> str:
        key, arg = match.group(1), match.group(2)
        if key == "database":
            return settings.database
        if key == "dedup":
            return ", ".join(f"{k} = {v}" for k, v in dedup_settings(settings, bool(cluster)).items())
        if key == "on_cluster":
            return f"ON CLUSTER {cluster}" if cluster else ""
        if key == "engine" and arg:
            if not cluster:
                return arg
            name, _, params = arg.partition("(")
            params = params.rstrip(")").strip()
            path = "'/clickhouse/tables/{shard}/{database}/{table}', '{replica}'"
            return f"Replicated{name}({path}{', ' + params if params else ''})"
        if key == "ttl" and arg:
            return f"TTL {arg} + toIntervalDay({settings.ttl_days})" if settings.ttl_days and not plain else ""
        if key == "text" and arg and "|" in arg:
            tokenizer, fallback = arg.split("|", 1)
            return f"text(tokenizer = '{tokenizer}')" if text_index else fallback
        if key == "no_text" and arg:
            return "" if text_index else arg
        raise ValueError(f"unknown placeholder {match.group(0)}")

    out = _PLACEHOLDER.sub(fill, sql)
    out = re.sub(r"^\s*\n", "", out, flags=re.M)  # a line left empty by ${no_text:…}
    return re.sub(r",(\s*\n\))", r"\1", out)  # and the comma before it


def statements(sql: str) -> list[str]:
    """Split a file into statements at ``;`` ending a line, dropping comment-only pieces."""
    parts = re.split(r";\s*$", sql, flags=re.MULTILINE)
    out = []
    for part in parts:
        body = "\n".join(line for line in part.splitlines() if not line.strip().startswith("--")).strip()
        if body:
            out.append(body)
    return out


@dataclass(frozen=True)
class Target:
    """One table or view of the target schema, rendered."""

    kind: str  # "table" or "view"
    name: str  # as queries name it (the Distributed table, when sharded)
    sql: str  # CREATE … of the real database (of the local table, when sharded)
    probe_sql: str  # CREATE … of the scratch copy
    sharding_key: str = ""

    @property
    def storage(self) -> str:
        return self.name


def _rename(sql: str, database: str, names: Iterable[str], suffix: str) -> str:
    for name in sorted(names, key=len, reverse=True):
        sql = re.sub(rf"\b{re.escape(database)}\.{re.escape(name)}\b(?!_)", f"{database}.{name}{suffix}", sql)
    return sql


def targets(settings: ClickHouseSettings, text_index: bool, probe_database: str = "",
            directory: Path = SCHEMA_DIR) -> list[Target]:
    """Every table and view of the target, in creation order (a view after the tables it joins)."""
    out: list[Target] = []
    probe = settings.model_copy(update={"database": probe_database or settings.database})
    for schema_file in load_schema(directory):
        text = schema_file.text
        key = _SHARDING_KEY.search(text)
        real = statements(render(text, settings, text_index))
        scratch = statements(render(text, probe, text_index, plain=True))
        for sql, probe_sql in zip(real, scratch):
            m = _CREATE.match(sql)
            if not m:
                raise ValueError(f"{schema_file.path.name}: every statement must be CREATE … IF NOT EXISTS db.name")
            kind = "view" if m.group(1).upper().startswith("MATERIALIZED") else "table"
            out.append(Target(kind, m.group(3), sql, probe_sql, key.group(1) if key and kind == "table" else ""))
    if settings.sharded:
        tables = [t.name for t in out if t.kind == "table"]
        out = [Target(t.kind, t.name, _rename(t.sql, settings.database, tables, "_local"), t.probe_sql, t.sharding_key)
               for t in out]
    return out


def storage_name(target: Target, settings: ClickHouseSettings) -> str:
    """The table holding the rows: ``T_local`` on each shard when sharded, else ``T``."""
    return f"{target.name}_local" if settings.sharded and target.kind == "table" else target.name


def distributed_sql(target: Target, settings: ClickHouseSettings) -> str:
    db, cluster = settings.database, settings.cluster
    key = target.sharding_key or "rand()"
    return (f"CREATE TABLE IF NOT EXISTS {db}.{target.name} ON CLUSTER {cluster} AS {db}.{target.name}_local "
            f"ENGINE = Distributed({cluster}, {db}, {target.name}_local, {key})")


def checksum(settings: ClickHouseSettings, text_index: bool) -> str:
    return hashlib.sha256("\n".join(t.sql for t in targets(settings, text_index)).encode()).hexdigest()


# ---- what a database holds, as ClickHouse describes it ----

@dataclass(frozen=True)
class Column:
    name: str
    type: str
    default_kind: str
    default_expression: str
    codec: str
    comment: str

    def definition(self, with_codec: bool = True) -> str:
        out = f"`{self.name}` {self.type}"
        if self.default_kind:
            out += f" {self.default_kind} {self.default_expression}"
        if self.codec and with_codec:
            out += f" {self.codec}"
        if self.comment:
            out += " COMMENT '" + self.comment.replace("\\", "\\\\").replace("'", "\\'") + "'"
        return out


@dataclass(frozen=True)
class Index:
    name: str
    expr: str
    type: str
    granularity: int

    def definition(self) -> str:
        return f"{self.name} {self.expr} TYPE {self.type} GRANULARITY {self.granularity}"


@dataclass
class TableInfo:
    engine: str = ""
    sorting_key: str = ""
    partition_key: str = ""
    primary_key: str = ""
    as_select: str = ""
    settings: dict[str, str] = field(default_factory=dict)
    columns: list[Column] = field(default_factory=list)
    indexes: list[Index] = field(default_factory=list)


def _engine_settings(engine_full: str) -> dict[str, str]:
    m = re.search(r"\bSETTINGS\s+(.*)$", engine_full, flags=re.S)
    if not m:
        return {}
    out = {}
    for part in m.group(1).split(","):
        name, _, value = part.partition("=")
        if name.strip():
            out[name.strip()] = value.strip()
    return out


def describe(client: Any, database: str) -> dict[str, TableInfo]:
    """Table name → what ClickHouse says of it (columns in order, indexes, keys, settings)."""
    params = {"db": database}
    tables: dict[str, TableInfo] = {}
    for name, engine, sorting, partition, primary, as_select, engine_full in client.query(
            "SELECT name, engine, sorting_key, partition_key, primary_key, as_select, engine_full "
            "FROM system.tables WHERE database = {db:String}", parameters=params).result_rows:
        tables[name] = TableInfo(engine, sorting, partition, primary, as_select, _engine_settings(engine_full))
    for table, name, typ, kind, expr, codec, comment in client.query(
            "SELECT table, name, type, default_kind, default_expression, compression_codec, comment "
            "FROM system.columns WHERE database = {db:String} ORDER BY table, position", parameters=params).result_rows:
        if table in tables:
            tables[table].columns.append(Column(name, typ, kind, expr, codec, comment))
    for table, name, typ, expr, granularity in client.query(
            "SELECT table, name, type_full, expr, granularity FROM system.data_skipping_indices "
            "WHERE database = {db:String}", parameters=params).result_rows:
        if table in tables:
            tables[table].indexes.append(Index(name, expr, typ, int(granularity)))
    return tables


def server_version(client: Any) -> tuple[int, int]:
    text = str(client.query("SELECT version()").result_rows[0][0])
    major, minor = (text.split(".") + ["0"])[:2]
    return int(major), int(minor)


def has_text_index(client: Any) -> bool:
    return server_version(client) >= TEXT_INDEX_SINCE


# ---- the plan ----

@dataclass(frozen=True)
class Step:
    table: str
    what: str  # for people: "create table", "add 12 columns", ...
    sql: str


@dataclass(frozen=True)
class Kept:
    """A difference left as it is: changing it would rewrite the table."""

    table: str
    aspect: str
    found: str
    target: str


@dataclass
class Plan:
    steps: list[Step] = field(default_factory=list)
    kept: list[Kept] = field(default_factory=list)
    checksum: str = ""

    def lines(self) -> list[str]:
        """For people: each step with its SQL, then what is kept (codecs summed up per table)."""
        out = [f"{s.table}: {s.what}\n    {s.sql}" for s in self.steps]
        codecs: dict[str, list[Kept]] = {}
        for k in self.kept:
            if k.aspect.startswith("codec of "):
                codecs.setdefault(k.table, []).append(k)
            else:
                out.append(f"{k.table}: keeps its {k.aspect} {k.found} (target: {k.target})")
        for table, kept in codecs.items():
            pairs = sorted({f"{k.found} where the target has {k.target}" for k in kept})
            out.append(f"{table}: keeps the codecs of {len(kept)} columns ({'; '.join(pairs[:3])}"
                       f"{'; …' if len(pairs) > 3 else ''})")
        if self.kept:
            out.append("(kept: changing these would rewrite the table; rows written from now on follow them too)")
        return out


def _carry_over(client: Any, settings: ClickHouseSettings, existing: dict[str, TableInfo], created: str) -> list[Step]:
    path = CARRY_OVER_DIR / f"{created}.sql"
    if not path.exists() or "otelpipe_sink_ranges" not in existing:
        return []
    return [Step(created, "carry rows over from otelpipe_sink_ranges", sql)
            for sql in statements(render(path.read_text(), settings))]


def _table_steps(target: Target, storage: str, found: TableInfo, want: TableInfo, settings: ClickHouseSettings,
                 dist: TableInfo | None) -> tuple[list[Step], list[Kept]]:
    db, on_cluster = settings.database, f" ON CLUSTER {settings.cluster}" if settings.cluster else ""
    steps: list[Step] = []
    kept: list[Kept] = []
    have = {c.name: c for c in found.columns}
    adds, dist_adds, previous = [], [], None
    for column in want.columns:
        if column.name in have:
            now = have[column.name]
            if now.type != column.type:
                kept.append(Kept(target.name, f"type of {column.name}", now.type, column.type))
            elif now.codec != column.codec:
                kept.append(Kept(target.name, f"codec of {column.name}", now.codec, column.codec))
        else:
            where = f" AFTER `{previous}`" if previous else " FIRST"
            adds.append(f"ADD COLUMN IF NOT EXISTS {column.definition()}{where}")
            if dist is not None and column.name not in {c.name for c in dist.columns}:
                dist_adds.append(f"ADD COLUMN IF NOT EXISTS {column.definition(with_codec=False)}{where}")
        previous = column.name
    if adds:
        steps.append(Step(target.name, f"add {len(adds)} column(s)",
                          f"ALTER TABLE {db}.{storage}{on_cluster} " + ", ".join(adds)))
    if dist_adds:
        steps.append(Step(target.name, f"add {len(dist_adds)} column(s) to the Distributed table",
                          f"ALTER TABLE {db}.{target.name}{on_cluster} " + ", ".join(dist_adds)))
    have_index = {i.name: i for i in found.indexes}
    index_adds = []
    for index in want.indexes:
        if index.name not in have_index:
            index_adds.append(f"ADD INDEX IF NOT EXISTS {index.definition()}")
        elif (have_index[index.name].expr, have_index[index.name].type) != (index.expr, index.type):
            now = have_index[index.name]
            kept.append(Kept(target.name, f"index {index.name}", f"{now.expr} TYPE {now.type}",
                             f"{index.expr} TYPE {index.type}"))
    if index_adds:
        steps.append(Step(target.name, f"add {len(index_adds)} index(es) (for parts written from now on)",
                          f"ALTER TABLE {db}.{storage}{on_cluster} " + ", ".join(index_adds)))
    for aspect in ("sorting_key", "partition_key"):
        if getattr(found, aspect) != getattr(want, aspect):
            kept.append(Kept(target.name, aspect.replace("_", " "), getattr(found, aspect), getattr(want, aspect)))
    engine = found.engine
    want_engine = ("Replicated" + want.engine) if settings.cluster else want.engine
    if engine != want_engine:
        kept.append(Kept(target.name, "engine", engine, want_engine))
    desired = dedup_settings(settings, engine.startswith("Replicated"))
    stale = {k: v for k, v in desired.items() if found.settings.get(k) != str(v)}
    if stale:
        assignments = ", ".join(f"{k} = {v}" for k, v in stale.items())
        steps.append(Step(target.name, "set the deduplication window",
                          f"ALTER TABLE {db}.{storage}{on_cluster} MODIFY SETTING {assignments}"))
    return steps, kept


def _retarget(sql: str, probe: str, settings: ClickHouseSettings, tables: Iterable[str]) -> str:
    """A view query of the scratch copy, naming the real database's tables (local ones, sharded)."""
    out = sql.replace(f"{probe}.", f"{settings.database}.")
    return _rename(out, settings.database, tables, "_local") if settings.sharded else out


def plan(client: Any, settings: ClickHouseSettings) -> Plan:
    """What ``migrate`` would do to this database now (nothing is changed but a scratch database)."""
    text_index = has_text_index(client)
    probe = f"{settings.database}_otelpipe_probe_{secrets.token_hex(4)}"
    wanted = targets(settings, text_index, probe)
    client.command(f"CREATE DATABASE {probe}")
    try:
        for target in wanted:
            client.command(target.probe_sql)
        want = describe(client, probe)
    finally:
        client.command(f"DROP DATABASE IF EXISTS {probe} SYNC")
    exists = client.query("SELECT count() FROM system.databases WHERE name = {db:String}",
                          parameters={"db": settings.database}).result_rows[0][0]
    found = describe(client, settings.database) if exists else {}
    result = Plan(checksum=checksum(settings, text_index))
    db, on_cluster = settings.database, f" ON CLUSTER {settings.cluster}" if settings.cluster else ""
    if not exists:
        result.steps.append(Step(db, "create the database", f"CREATE DATABASE IF NOT EXISTS {db}{on_cluster}"))
    tables = [t.name for t in wanted if t.kind == "table"]
    for target in wanted:
        storage = storage_name(target, settings)
        have = found.get(storage)
        if target.kind == "view":
            if have is None:
                result.steps.append(Step(target.name, "create the view", target.sql))
                continue
            query = _retarget(want[target.name].as_select, probe, settings, tables)
            if " ".join(have.as_select.split()) != " ".join(query.split()):
                result.steps.append(Step(target.name, "replace the view's query in place",
                                         f"ALTER TABLE {db}.{target.name}{on_cluster} MODIFY QUERY {query}"))
            continue
        if have is None:
            result.steps.append(Step(target.name, "create the table", target.sql))
            result.steps.extend(_carry_over(client, settings, found, target.name))
        else:
            steps, kept = _table_steps(target, storage, have, want[target.name], settings,
                                       found.get(target.name) if settings.sharded else None)
            result.steps.extend(steps)
            result.kept.extend(kept)
        if settings.sharded and target.name not in found:
            result.steps.append(Step(target.name, "create the Distributed table", distributed_sql(target, settings)))
    return result


# ---- applying it ----

class MigrationError(RuntimeError):
    pass


def ensure_bookkeeping(client: Any, settings: ClickHouseSettings) -> None:
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


def _up_to_date(client: Any, settings: ClickHouseSettings) -> bool:
    recorded = applied_versions(client, settings).get(SCHEMA_VERSION)
    return recorded is not None and recorded[1] == checksum(settings, has_text_index(client))


def migrate(client: Any, settings: ClickHouseSettings, lock_timeout_s: float = LOCK_TIMEOUT_S,
            sleep: Any = time.sleep) -> list[Step]:
    """Bring the database to the target schema; return the steps taken (empty when it was there).

    A database recorded at this schema (same version and checksum) is not compared again, so a
    worker's start costs one query; ``plan`` always compares.
    """
    ensure_bookkeeping(client, settings)
    if _up_to_date(client, settings):
        return []
    _take_lock(client, settings, lock_timeout_s, sleep)
    try:
        if _up_to_date(client, settings):  # whoever held the lock before did it
            return []
        todo = plan(client, settings)
        for step in todo.steps:
            try:
                client.command(step.sql)
            except Exception as exc:
                raise MigrationError(f"{step.table}: {step.what} failed ({exc}); nothing was recorded, and "
                                     "`otelpipe migrate` continues from here when run again") from exc
        for kept in todo.kept:
            log.info("%s: keeps its %s %s (target %s)", kept.table, kept.aspect, kept.found, kept.target)
        client.insert(f"{settings.database}.{MIGRATIONS_TABLE}", [[SCHEMA_VERSION, "schema", todo.checksum]],
                      column_names=["Version", "Name", "Checksum"])
        return todo.steps
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
