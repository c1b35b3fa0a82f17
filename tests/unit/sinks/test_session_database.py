"""A server client's session database: the configured one once it exists, the DSN's when it names one."""

from __future__ import annotations

from types import SimpleNamespace

from sinks.clickhouse import use_database


class FakeClient:
    def __init__(self, database: str | None, existing: set[str]):
        self.database = database
        self.existing = existing
        self.queries: list[tuple[str, dict]] = []

    def query(self, sql: str, parameters: dict) -> SimpleNamespace:
        self.queries.append((sql, parameters))
        return SimpleNamespace(result_rows=[[int(parameters["db"] in self.existing)]])


def test_the_configured_database_is_taken_once_it_exists():
    client = FakeClient(None, set())
    assert not use_database(client, "otel") and client.database is None  # not created yet: no session database
    client.existing.add("otel")
    assert use_database(client, "otel") and client.database == "otel"
    assert "system.databases" in client.queries[0][0] and client.queries[0][1] == {"db": "otel"}


def test_a_database_the_dsn_names_stays():
    client = FakeClient("raw", {"otel", "raw"})
    assert use_database(client, "otel") and client.database == "raw" and not client.queries
