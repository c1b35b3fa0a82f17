"""Service level objectives: SLIs, error budgets and multi-window burn rates.

Input: per service, counts of entry spans (SpanKind Server or Consumer) over each window — total,
errors, and how many finished at or under the latency threshold — read from the per-minute
rollup table (``counts_query``). Output: one ``ServiceSlo`` per service with both SLIs over the SLO
window, the error budget left, burn rates over 5m/30m/1h/6h, and the alerts that fire:

- fast burn (page): burn rate over 1h AND over 5m above ``fast_burn_rate`` (default 14.4);
- slow burn (ticket): burn rate over 6h AND over 30m above ``slow_burn_rate`` (default 6).

Burn rate = (bad fraction over the window) / (1 − objective): 1 spends the budget exactly over the
SLO window. An empty window burns nothing. Pure: counts in, verdicts out; time is a parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from streams.config import LATENCY_BUCKETS_MS, Objective, SloSettings, with_changes

WINDOWS_S = {"5m": 300, "30m": 1800, "1h": 3600, "6h": 21600}
ALERT_RULES = (
    # name, severity, long window, short window, settings attribute with the threshold
    ("fast_burn", "page", "1h", "5m", "fast_burn_rate"),
    ("slow_burn", "ticket", "6h", "30m", "slow_burn_rate"),
)
ENTRY_KINDS = ("Server", "Consumer")


@dataclass(frozen=True)
class Counts:
    total: int = 0
    errors: int = 0
    within: tuple[int, ...] = ()  # spans at or under each LATENCY_BUCKETS_MS bound

    def fast(self, latency_ms: int) -> int:
        if not self.within:
            return 0
        return self.within[LATENCY_BUCKETS_MS.index(latency_ms)]


@dataclass(frozen=True)
class BurnAlert:
    service: str
    sli: str  # availability | latency
    rule: str  # fast_burn | slow_burn
    severity: str
    burn_long: float
    burn_short: float
    threshold: float

    @property
    def name(self) -> str:
        return f"{self.sli}:{self.rule}"


@dataclass
class ServiceSlo:
    service: str
    objective: Objective
    total: int
    availability: float | None  # SLI over the SLO window; None without traffic
    latency: float | None
    availability_budget_left: float | None  # 1 = untouched, 0 = spent, negative = overspent
    latency_budget_left: float | None
    burn: dict[tuple[str, str], float] = field(default_factory=dict)  # (sli, window) -> burn rate
    alerts: list[BurnAlert] = field(default_factory=list)

    @property
    def burning(self) -> bool:
        return bool(self.alerts)


def burn_rate(bad: int, total: int, objective: float) -> float:
    if total <= 0:
        return 0.0
    return (bad / total) / (1.0 - objective)


def _budget_left(bad: int, total: int, objective: float) -> float | None:
    if total <= 0:
        return None
    return 1.0 - burn_rate(bad, total, objective)


def evaluate(service: str, objective: Objective, windows: dict[str, Counts], slo_window: Counts,
             settings: SloSettings) -> ServiceSlo:
    """Judge one service from its counts over the SLO window and the alerting windows."""
    bad = {
        "availability": lambda c: c.errors,
        "latency": lambda c: c.total - c.fast(objective.latency_ms),
    }
    targets = {"availability": objective.availability, "latency": objective.latency_target}
    result = ServiceSlo(
        service=service,
        objective=objective,
        total=slo_window.total,
        availability=None if not slo_window.total else 1 - slo_window.errors / slo_window.total,
        latency=None if not slo_window.total else slo_window.fast(objective.latency_ms) / slo_window.total,
        availability_budget_left=_budget_left(slo_window.errors, slo_window.total, objective.availability),
        latency_budget_left=_budget_left(bad["latency"](slo_window), slo_window.total, objective.latency_target),
    )
    for sli, bad_of in bad.items():
        for window, counts in windows.items():
            result.burn[(sli, window)] = burn_rate(bad_of(counts), counts.total, targets[sli])
        for rule, severity, long_w, short_w, attr in ALERT_RULES:
            threshold = getattr(settings, attr)
            long_burn, short_burn = result.burn[(sli, long_w)], result.burn[(sli, short_w)]
            if long_burn > threshold and short_burn > threshold:
                result.alerts.append(BurnAlert(service, sli, rule, severity, long_burn, short_burn, threshold))
    return result


def counts_query(database: str) -> str:
    """One pass over the rollup: per service, counts over every window and the SLO window.

    Counts are estimates of the true counts: sums of the spans' adjusted counts (``SampleWeight``),
    so sampling neither lowers the totals nor inflates the error ratio.

    Parameters: ``now`` (Unix seconds, UInt32) and ``slo_window_s`` (UInt32).
    """
    now = "toDateTime({now:UInt32})"
    parts = []
    for name, seconds in [*WINDOWS_S.items(), ("slo", None)]:
        span = "{slo_window_s:UInt32}" if seconds is None else str(seconds)
        cond = f"Minute > {now} - toIntervalSecond({span}) AND Minute <= {now}"
        parts.append(
            f"sumIf(EstimatedSpans, {cond}) AS total_{name}, sumIf(EstimatedErrors, {cond}) AS errors_{name}, "
            f"sumForEachMergeIf(EstimatedLatencyBuckets, {cond}) AS within_{name}"
        )
    kinds = ", ".join(f"'{k}'" for k in ENTRY_KINDS)
    return (
        f"SELECT ServiceName, {', '.join(parts)} FROM {database}.otel_traces_rollup_1m "
        f"WHERE SpanKind IN ({kinds}) AND Minute > {now} - toIntervalSecond({{slo_window_s:UInt32}}) "
        "GROUP BY ServiceName ORDER BY ServiceName"
    )


def evaluate_rows(columns: list[str], rows: list[list[Any]], settings: SloSettings) -> list[ServiceSlo]:
    """Turn the rows of ``counts_query`` into verdicts, one per service."""
    out = []
    for row in rows:
        record = dict(zip(columns, row))
        service = record["ServiceName"]

        def counts(name: str) -> Counts:
            return Counts(round(record[f"total_{name}"] or 0), round(record[f"errors_{name}"] or 0),
                          tuple(round(v) for v in (record[f"within_{name}"] or ())))

        windows = {name: counts(name) for name in WINDOWS_S}
        out.append(evaluate(service, settings.objective_for(service), windows, counts("slo"), settings))
    return out


def query_parameters(now: datetime, settings: SloSettings) -> dict[str, Any]:
    """``now`` must be timezone-aware; it travels as Unix seconds, free of any server time zone."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware (UTC)")
    return {"now": int(now.timestamp()), "slo_window_s": settings.window_days * 86400}


def with_catalog_objectives(settings: SloSettings, entries: dict) -> SloSettings:
    """Objectives from the service catalog for services the configuration does not name."""
    from streams.stages.catalog import objectives_from

    default = Objective("", settings.default_availability, settings.default_latency_ms, settings.default_latency_target)
    configured = {o.service for o in settings.objectives}
    extra = tuple(o for o in objectives_from(entries, default) if o.service not in configured)
    return with_changes(settings, objectives=settings.objectives + extra) if extra else settings
