from datetime import datetime, timezone

import pytest

from streams.config import LATENCY_BUCKETS_MS, Objective, SloSettings
from streams.stages.slo import Counts, burn_rate, evaluate, evaluate_rows, query_parameters


def within(total, fast_from_ms=1000):
    """Counts per latency bucket: every span is at or under buckets from fast_from_ms up."""
    return tuple(total if b >= fast_from_ms else 0 for b in LATENCY_BUCKETS_MS)


def test_burn_rate_definition():
    assert burn_rate(0, 0, 0.999) == 0.0
    assert burn_rate(1, 1000, 0.999) == pytest.approx(1.0)  # spending exactly the budget
    assert burn_rate(144, 10_000, 0.999) == pytest.approx(14.4)


def test_healthy_service_is_not_burning():
    obj = Objective("a", 0.999, 1000, 0.99)
    ok = Counts(10_000, 5, within(10_000, 500))
    v = evaluate("a", obj, {w: ok for w in ("5m", "30m", "1h", "6h")}, ok, SloSettings())
    assert not v.burning
    assert v.availability == pytest.approx(0.9995)
    assert v.availability_budget_left == pytest.approx(0.5)
    assert v.latency == 1.0 and v.latency_budget_left == 1.0


def test_fast_burn_needs_both_long_and_short_window():
    obj = Objective("a", 0.999, 1000, 0.99)
    bad = Counts(1000, 20, within(1000))  # 2% errors: burn 20
    good = Counts(1000, 0, within(1000))
    settings = SloSettings()
    both = evaluate("a", obj, {"5m": bad, "30m": good, "1h": bad, "6h": good}, bad, settings)
    assert [a.name for a in both.alerts] == ["availability:fast_burn"]
    assert both.alerts[0].severity == "page" and both.alerts[0].burn_long == pytest.approx(20)
    recovered = evaluate("a", obj, {"5m": good, "30m": good, "1h": bad, "6h": good}, bad, settings)
    assert not recovered.burning  # the short window says it stopped


def test_slow_burn_and_latency_sli():
    obj = Objective("a", 0.999, 250, 0.99)
    slowish = Counts(1000, 0, tuple(920 if b >= 250 else 0 for b in LATENCY_BUCKETS_MS))  # 8% too slow: burn 8
    v = evaluate("a", obj, {w: slowish for w in ("5m", "30m", "1h", "6h")}, slowish, SloSettings())
    assert [a.name for a in v.alerts] == ["latency:slow_burn"]
    assert v.latency == pytest.approx(0.92)
    assert v.burn[("latency", "6h")] == pytest.approx(8.0)


def test_evaluate_rows_uses_per_service_objectives():
    settings = SloSettings(objectives=(Objective("strict", 0.9999, 100, 0.999),))
    columns = ["ServiceName"] + [f"{k}_{w}" for w in ("5m", "30m", "1h", "6h", "slo")
                                 for k in ("total", "errors", "within")]
    row = ["strict"] + [v for _ in range(5) for v in (100, 1, list(within(100, 5)))]
    [v] = evaluate_rows(columns, [row], settings)
    assert v.objective.availability == 0.9999
    assert v.burn[("availability", "1h")] == pytest.approx(100.0)


def test_time_is_injected_as_unix_seconds():
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert query_parameters(now, SloSettings())["now"] == 1767323045
    with pytest.raises(ValueError):
        query_parameters(datetime(2026, 1, 2), SloSettings())
