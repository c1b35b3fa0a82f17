"""The service catalog: who owns each service, and its SLO targets, attached to every record.

A TOML file (``worker.catalog_file``) with ``[[services]]`` tables — ``name``, ``team``, ``tier``,
``owner``, and optional ``availability``, ``latency_ms``, ``latency_target`` — and a compacted
topic (``worker.catalog_topic``, key = service name, value = one such table as TOML, empty value
removes it) that running workers follow, so changes arrive live. ``CatalogStage.apply(batch)`` adds
``ServiceTeam``, ``ServiceTier`` and ``ServiceOwner`` columns from the row's ``ServiceName``.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Any

from streams.otlp.batch import ColumnBatch
from streams.config import LATENCY_BUCKETS_MS, Objective, ProblemsError, read_toml

CATALOG_COLUMNS = ("ServiceTeam", "ServiceTier", "ServiceOwner")


class CatalogError(ProblemsError):
    what = "service catalog"


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    team: str = ""
    tier: str = ""
    owner: str = ""
    availability: float | None = None
    latency_ms: int | None = None
    latency_target: float | None = None

    def objective(self, default: Objective) -> Objective | None:
        if self.availability is None and self.latency_ms is None and self.latency_target is None:
            return None
        return Objective(self.name, self.availability or default.availability,
                         self.latency_ms or default.latency_ms, self.latency_target or default.latency_target)


def parse_entry(data: Any, path: str, problems: list[str]) -> CatalogEntry | None:
    if not isinstance(data, dict):
        problems.append(f"{path}: must be a table")
        return None
    known = {"name", "team", "tier", "owner", "availability", "latency_ms", "latency_target"}
    for key in sorted(set(data) - known):
        problems.append(f"{path}.{key}: unknown setting")
    if not isinstance(data.get("name"), str) or not data.get("name"):
        problems.append(f"{path}.name: required")
        return None
    ok = True
    for key in ("team", "tier", "owner"):
        if key in data and not isinstance(data[key], (str, int)):
            problems.append(f"{path}.{key}: must be a string")
            ok = False
    for key in ("availability", "latency_target"):
        if key in data and (not isinstance(data[key], (int, float)) or not 0 < data[key] < 1):
            problems.append(f"{path}.{key}: must be between 0 and 1 (exclusive), got {data[key]!r}")
            ok = False
    if "latency_ms" in data and data["latency_ms"] not in LATENCY_BUCKETS_MS:
        problems.append(f"{path}.latency_ms: must be one of {', '.join(map(str, LATENCY_BUCKETS_MS))}")
        ok = False
    if not ok:
        return None
    return CatalogEntry(data["name"], str(data.get("team", "")), str(data.get("tier", "")),
                        str(data.get("owner", "")), data.get("availability"), data.get("latency_ms"),
                        data.get("latency_target"))


def load_catalog(path: str | None) -> dict[str, CatalogEntry]:
    if not path:
        return {}
    data = read_toml(path, "catalog", CatalogError)
    problems: list[str] = []
    entries: dict[str, CatalogEntry] = {}
    for key in sorted(set(data) - {"services"}):
        problems.append(f"{key}: unknown section (known: services)")
    services = data.get("services", [])
    if not isinstance(services, list):
        problems.append("services: must be a list of tables ([[services]])")
        services = []
    for i, item in enumerate(services):
        entry = parse_entry(item, f"services[{i}]", problems)
        if entry is not None:
            if entry.name in entries:
                problems.append(f"services[{i}].name: {entry.name!r} appears twice")
            entries[entry.name] = entry
    if problems:
        raise CatalogError(problems)
    return entries


def entry_from_record(name: str, value: bytes | None) -> CatalogEntry | None:
    """A catalog topic record → entry (None: the service was removed). Raises CatalogError."""
    if not value:
        return None
    problems: list[str] = []
    try:
        data = tomllib.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError([f"catalog record {name!r}: {exc}"]) from None
    entry = parse_entry({"name": name, **data}, f"catalog record {name!r}", problems)
    if problems or entry is None:
        raise CatalogError(problems)
    return entry


class CatalogStage:
    def __init__(self, entries: dict[str, CatalogEntry]):
        self.entries = entries

    def apply(self, batch: ColumnBatch) -> ColumnBatch:
        if not self.entries or "ServiceName" not in batch.columns:
            return batch
        empty = CatalogEntry("")
        rows = [self.entries.get(name, empty) for name in batch.columns["ServiceName"]]
        columns = dict(batch.columns)
        columns["ServiceTeam"] = [e.team for e in rows]
        columns["ServiceTier"] = [e.tier for e in rows]
        columns["ServiceOwner"] = [e.owner for e in rows]
        return ColumnBatch(batch.table, columns, batch.source)


def objectives_from(entries: dict[str, CatalogEntry], default: Objective) -> tuple[Objective, ...]:
    return tuple(o for o in (e.objective(default) for e in entries.values()) if o is not None)
