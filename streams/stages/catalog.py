"""The service catalog: who owns each service, and its SLO targets, attached to every record.

A TOML file (``worker.catalog_file``) with ``[[services]]`` tables — ``name``, ``team``, ``tier``,
``owner``, and optional ``availability``, ``latency_ms``, ``latency_target`` — and a compacted
topic (``worker.catalog_topic``, key = service name, value = one such table as TOML, empty value
removes it) that running workers follow, so changes arrive live. ``CatalogStage.apply(batch)`` adds
``ServiceTeam``, ``ServiceTier`` and ``ServiceOwner`` columns from the row's ``ServiceName``.

The file's schema is the pydantic models ``ServiceSection`` / ``CatalogFile`` (``catalog_json_schema()``);
every problem is listed at once with its path (``services[1].availability: must be between 0 and 1``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from streams.otlp.batch import ColumnBatch
from streams.config import LATENCY_BUCKETS_MS, Objective, ProblemsError, problems_of, read_toml

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


# ------------------------------------------------------------------ the file's schema
# Each check raises ValueError("the problem"); problems_of() prefixes it with the setting's path.

def _name(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("required")
    return value


def _text(value: Any) -> str:
    if not isinstance(value, (str, int)):  # tier = 1 is the string "1"
        raise ValueError("must be a string")
    return str(value)


def _fraction(value: Any) -> Any:
    if not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"must be between 0 and 1 (exclusive), got {value!r}")
    return value


def _latency_bucket(value: Any) -> int:
    if value not in LATENCY_BUCKETS_MS:
        raise ValueError(f"must be one of {', '.join(map(str, LATENCY_BUCKETS_MS))}")
    return int(value)


def _tables(value: Any) -> Any:
    if not isinstance(value, (list, tuple)):
        raise ValueError("must be a list of tables ([[services]])")
    return value


Text = Annotated[str, BeforeValidator(_text)]
Fraction = Annotated[float, Field(gt=0, lt=1), BeforeValidator(_fraction)]
LatencyBucket = Annotated[Literal[LATENCY_BUCKETS_MS], BeforeValidator(_latency_bucket)]  # type: ignore[valid-type]


class ServiceSection(BaseModel):
    """A ``[[services]]`` table, or the value of a catalog topic record (its key is the name)."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, BeforeValidator(_name)] = Field(description="the service name (service.name)")
    team: Text = Field("", description="→ ServiceTeam")
    tier: Text = Field("", description="→ ServiceTier")
    owner: Text = Field("", description="→ ServiceOwner")
    availability: Fraction | None = Field(None, description="SLO: the fraction of entry spans without error")
    latency_ms: LatencyBucket | None = Field(None, description="SLO: the latency threshold, a histogram bucket")
    latency_target: Fraction | None = Field(None, description="SLO: the fraction of entry spans under latency_ms")

    def entry(self) -> CatalogEntry:
        return CatalogEntry(**dict(self))


class CatalogFile(BaseModel):
    """A service catalog file (TOML)."""

    model_config = ConfigDict(extra="forbid")

    services: Annotated[tuple[ServiceSection, ...], BeforeValidator(_tables)] = ()




def _repeated_names(services: Any) -> list[str]:
    """A service named twice (checked on the file as written, so it is listed with every other problem)."""
    seen: set[str] = set()
    out = []
    for i, item in enumerate(services if isinstance(services, list) else ()):
        name = item.get("name") if isinstance(item, dict) else None
        if isinstance(name, str) and name:
            if name in seen:
                out.append(f"services[{i}].name: {name!r} appears twice")
            seen.add(name)
    return out


def parse_entry(data: Any, path: str, problems: list[str]) -> CatalogEntry | None:
    """One service table → its entry; None, with its problems added to ``problems``, when invalid."""
    try:
        return ServiceSection.model_validate(data).entry()
    except ValidationError as exc:
        problems.extend(problems_of(exc, path))
        return None


def load_catalog(path: str | None) -> dict[str, CatalogEntry]:
    if not path:
        return {}
    data = read_toml(path, "catalog", CatalogError)
    problems: list[str] = []
    services: tuple[ServiceSection, ...] = ()
    try:
        services = CatalogFile.model_validate(data).services
    except ValidationError as exc:
        problems = problems_of(exc, sections=["services"])
    problems += _repeated_names(data.get("services"))
    if problems:
        raise CatalogError(problems)
    return {service.name: service.entry() for service in services}


def catalog_json_schema() -> dict[str, Any]:
    """The JSON Schema of a service catalog file."""
    return CatalogFile.model_json_schema()


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
    if entry is None:
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
