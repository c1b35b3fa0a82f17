"""Alert records: when an alert starts firing and when it resolves, never again while unchanged.

``AlertTracker.transitions(firing, now_ms)`` compares what fires now with what fired at the last
evaluation and returns the records to publish: ``firing`` for new alerts, ``resolved`` for ones
that stopped. Records go to the alerts topic (Avro, ``schemas/avro/alert.avsc``) and to the
``otelpipe_alerts`` table with the same fields. The tracker is seeded from the table on start, so
a restarted worker does not announce again what was already firing.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, Iterable

import fastavro
import orjson

from streams.config import PROJECT_ROOT
from streams.stages.slo import BurnAlert

ALERT_SCHEMA_PATH = PROJECT_ROOT / "schemas" / "avro" / "alert.avsc"
ALERT_SCHEMA = fastavro.parse_schema(orjson.loads(ALERT_SCHEMA_PATH.read_bytes()))
ALERT_FIELDS = [f["name"] for f in orjson.loads(ALERT_SCHEMA_PATH.read_bytes())["fields"]]
ALERTS_TABLE = "otelpipe_alerts"


@dataclass(frozen=True)
class Firing:
    """What identifies an alert and what it measured at its latest evaluation."""

    kind: str
    service: str
    name: str
    severity: str
    value: float
    threshold: float
    details: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.kind, self.service, self.name)


def from_burn(alert: BurnAlert) -> Firing:
    return Firing(
        kind="slo_burn",
        service=alert.service,
        name=alert.name,
        severity=alert.severity,
        value=round(alert.burn_long, 6),
        threshold=alert.threshold,
        details=(("burn_short", f"{alert.burn_short:.6g}"), ("sli", alert.sli)),
    )


def record(firing: Firing, state: str, now_ms: int) -> dict[str, Any]:
    return {
        "Timestamp": now_ms,
        "Kind": firing.kind,
        "Service": firing.service,
        "Name": firing.name,
        "State": state,
        "Severity": firing.severity,
        "Value": float(firing.value),
        "Threshold": float(firing.threshold),
        "Details": dict(firing.details),
    }


@dataclass
class AlertTracker:
    firing: dict[tuple[str, str, str], Firing] = field(default_factory=dict)

    def seed(self, rows: Iterable[dict[str, Any]]) -> None:
        """Latest record per alert from the table: those in state firing are firing now."""
        for row in rows:
            if row["State"] == "firing":
                f = Firing(row["Kind"], row["Service"], row["Name"], row["Severity"], row["Value"],
                           row["Threshold"], tuple(sorted((row.get("Details") or {}).items())))
                self.firing[f.key] = f

    def transitions(self, now_firing: Iterable[Firing], now_ms: int, kinds: set[str]) -> list[dict[str, Any]]:
        """Records for alerts of these kinds that started or stopped since the last call."""
        current = {f.key: f for f in now_firing}
        out = []
        for key, f in current.items():
            if key not in self.firing:
                out.append(record(f, "firing", now_ms))
        for key, f in list(self.firing.items()):
            if key[0] in kinds and key not in current:
                out.append(record(f, "resolved", now_ms))
                del self.firing[key]
        self.firing.update(current)
        return out


def encode_avro(rec: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, ALERT_SCHEMA, rec)
    return buf.getvalue()


def decode_avro(payload: bytes) -> dict[str, Any]:
    return fastavro.schemaless_reader(io.BytesIO(payload), ALERT_SCHEMA)


def table_columns(records: list[dict[str, Any]]) -> tuple[list[str], list[list[Any]]]:
    """Column-oriented rows for otelpipe_alerts (Timestamp as DateTime64(3) milliseconds)."""
    from datetime import datetime, timezone

    columns = []
    for name in ALERT_FIELDS:
        values = [r[name] for r in records]
        if name == "Timestamp":
            values = [datetime.fromtimestamp(v / 1000, tz=timezone.utc) for v in values]
        columns.append(values)
    return ALERT_FIELDS, columns


def latest_states_query(database: str) -> str:
    return (
        "SELECT Kind, Service, Name, argMax(State, Timestamp) AS State, argMax(Severity, Timestamp) AS Severity, "
        "argMax(Value, Timestamp) AS Value, argMax(Threshold, Timestamp) AS Threshold, "
        "argMax(Details, Timestamp) AS Details "
        f"FROM {database}.{ALERTS_TABLE} GROUP BY Kind, Service, Name"
    )
