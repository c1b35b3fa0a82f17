"""The OpenTelemetry Collector ClickHouse exporter's own CREATE and INSERT statements.

Read from tests/fixtures/clickhouse_exporter/<version>/, rendered by the exporter's Go code
(see that directory's README and render.sh). Everything here is offline: no network, no chDB.

    for table, sql in create_statements("v0.165.1").items():
        client.command(render_for(sql, "otel_test"))
    client.insert(f"otel_test.{table}", rows, column_names=insert_columns("v0.165.1")[table])
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

FIXTURES = Path(__file__).parent / "fixtures" / "clickhouse_exporter"

#: The database the fixtures were rendered for.
RENDERED_DATABASE = "otel"

LOGS_TABLE = "otel_logs"
TRACES_TABLE = "otel_traces"
TRACE_ID_TS_TABLE = "otel_traces_trace_id_ts"
TRACE_ID_TS_VIEW = "otel_traces_trace_id_ts_mv"
METRICS_TABLES = (
    "otel_metrics_gauge",
    "otel_metrics_sum",
    "otel_metrics_histogram",
    "otel_metrics_exponential_histogram",
    "otel_metrics_summary",
)
#: Creation order: the view reads otel_traces and writes otel_traces_trace_id_ts, so it comes last.
CREATION_ORDER = (LOGS_TABLE, TRACES_TABLE, TRACE_ID_TS_TABLE, *METRICS_TABLES, TRACE_ID_TS_VIEW)
#: The tables the exporter inserts into (the view fills otel_traces_trace_id_ts itself).
INSERT_TABLES = (LOGS_TABLE, TRACES_TABLE, *METRICS_TABLES)

_VERSION_DIR = re.compile(r"^v(\d+)\.(\d+)\.(\d+)$")
_CREATE_SUFFIX = ".create.sql"
_FULLTEXT_SUFFIX = ".fulltext.create.sql"
_INSERT_SUFFIX = ".insert.sql"
_INSERT = re.compile(
    r"^\s*INSERT\s+INTO\s+(?P<target>\S+)\s*\((?P<columns>.*?)\)\s*VALUES\s*\(", re.IGNORECASE | re.DOTALL
)
_QUOTED_DATABASE = re.compile(r"""(?P<q>["`])(?P<name>(?:\\.|(?!(?P=q)).)*)(?P=q)\.""")


def _version_key(version: str) -> tuple[int, int, int]:
    match = _VERSION_DIR.match(version)
    if match is None:
        raise ValueError(f"not an exporter version: {version!r}")
    return tuple(int(part) for part in match.groups())  # type: ignore[return-value]


def versions() -> list[str]:
    """The exporter versions with fixtures, oldest first."""
    found = [p.name for p in FIXTURES.iterdir() if p.is_dir() and _VERSION_DIR.match(p.name)]
    return sorted(found, key=_version_key)


def _version_dir(version: str) -> Path:
    path = FIXTURES / version
    if not _VERSION_DIR.match(version) or not path.is_dir():
        raise KeyError(f"no exporter fixtures for {version!r}; have {versions()}")
    return path


def _order(names: list[str]) -> list[str]:
    rank = {name: i for i, name in enumerate(CREATION_ORDER)}
    # Unknown names (a table a later release adds) go after the known tables, views last.
    return sorted(names, key=lambda n: (n.endswith("_mv"), rank.get(n, len(rank)), n))


@cache
def _read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def create_statements(version: str, fulltext: bool = False) -> dict[str, str]:
    """Table (or view) name → the exporter's CREATE statement, in an order safe to run.

    fulltext=True takes the logs table with text() indexes, the one the exporter creates on
    ClickHouse 26.2 and later; releases that have no such variant raise ValueError.
    """
    directory = _version_dir(version)
    statements: dict[str, str] = {}
    for path in directory.glob("*" + _CREATE_SUFFIX):
        if path.name.endswith(_FULLTEXT_SUFFIX):
            continue
        statements[path.name.removesuffix(_CREATE_SUFFIX)] = _read(path)
    if fulltext:
        variant = directory / (LOGS_TABLE + _FULLTEXT_SUFFIX)
        if not variant.is_file():
            raise ValueError(f"the exporter {version} has no text-index variant of {LOGS_TABLE}")
        statements[LOGS_TABLE] = _read(variant)
    return {name: statements[name] for name in _order(list(statements))}


def _split_columns(columns: str) -> list[str]:
    names = []
    for part in columns.split(","):
        name = part.strip()
        if len(name) >= 2 and name[0] == name[-1] and name[0] in "`\"":
            name = name[1:-1]
        if name:
            names.append(name)
    return names


def parse_insert(sql: str) -> tuple[str, list[str]]:
    """(target as written, column names) of an ``INSERT INTO target (columns) VALUES (...)``."""
    match = _INSERT.match(sql)
    if match is None:
        raise ValueError(f"not an INSERT with a column list: {sql[:80]!r}")
    return match["target"], _split_columns(match["columns"])


def insert_statements(version: str) -> dict[str, str]:
    """Table name → the exporter's INSERT statement (with ? placeholders)."""
    directory = _version_dir(version)
    found = {p.name.removesuffix(_INSERT_SUFFIX): _read(p) for p in directory.glob("*" + _INSERT_SUFFIX)}
    return {name: found[name] for name in _order(list(found))}


def insert_columns(version: str) -> dict[str, list[str]]:
    """Table name → the columns the exporter's INSERT names, in its order."""
    return {table: parse_insert(sql)[1] for table, sql in insert_statements(version).items()}


def render_for(sql: str, database: str) -> str:
    """The statement with every quoted ``"otel".`` / ```otel`.`` database qualifier set to database."""

    def retarget(match: re.Match[str]) -> str:
        if match["name"] != RENDERED_DATABASE:
            return match[0]
        quote = match["q"]
        return quote + database.replace("\\", "\\\\").replace(quote, "\\" + quote) + quote + "."

    return _QUOTED_DATABASE.sub(retarget, sql)
