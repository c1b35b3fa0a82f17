"""Series budgets over hand-built metric batches: exact counts, actions, alerts, state round trips."""

from collections import Counter

from streams.otlp.batch import ColumnBatch
from streams.stages.label_policy import parse_policy
from streams.stages.series_budget import SeriesBudgetStage, SeriesState, state_key

T0 = 1_700_000_000 * 1_000_000_000
HOUR = 3600 * 1_000_000_000


def points(metric, attrs_list, ts=T0, service="api"):
    n = len(attrs_list)
    return ColumnBatch("otel_metrics_sum", {
        "MetricName": [metric] * n, "ServiceName": [service] * n, "Attributes": list(attrs_list),
        "TimeUnix": [ts] * n if isinstance(ts, int) else list(ts), "Value": [1.0] * n,
    })


def budgets(**kw):
    return parse_policy({"budgets": kw}).budgets


def test_under_budget_everything_passes_and_counts_are_exact():
    stage = SeriesBudgetStage.in_memory(budgets(default_limit=5))
    out, counts, alerts = stage.apply(points("m", [{"user": str(i % 4)} for i in range(20)]))
    assert len(out) == 20 and not alerts and not counts
    state = SeriesState.from_bytes(stage.store[state_key("m", T0 // HOUR)])
    assert len(state.series) == 4 and len(state.label_values["user"]) == 4


def test_drop_action_keeps_known_series_and_drops_new_ones_past_the_budget():
    stage = SeriesBudgetStage.in_memory(budgets(default_limit=3, action="drop"))
    batch = points("m", [{"user": u} for u in ["a", "b", "c", "d", "a", "e", "b"]])
    out, counts, alerts = stage.apply(batch)
    assert [a["user"] for a in out.columns["Attributes"]] == ["a", "b", "c", "a", "b"]
    assert counts[("budget", "dropped_new_series")] == 2 and counts[("budget", "crossed")] == 1
    [alert] = alerts
    assert alert["Kind"] == "cardinality" and alert["Name"] == "m" and alert["State"] == "firing"
    assert alert["Value"] == 3.0 and alert["Threshold"] == 3.0
    assert alert["Details"]["label"] == "user" and alert["Details"]["action"] == "drop"
    assert alert["Timestamp"] == T0 // 1_000_000  # the point's time: a replay makes the same record
    # the next batch: still over, no second alert, known series still pass
    out, counts, alerts = stage.apply(points("m", [{"user": "c"}, {"user": "z"}]))
    assert [a["user"] for a in out.columns["Attributes"]] == ["c"] and not alerts


def test_bucketize_picks_the_highest_cardinality_label():
    stage = SeriesBudgetStage.in_memory(budgets(default_limit=4, buckets=10))
    first = [{"route": r, "user": u} for r, u in [("/a", "1"), ("/a", "2"), ("/b", "3"), ("/a", "4")]]
    stage.apply(points("m", first))
    out, counts, alerts = stage.apply(points("m", [{"route": "/a", "user": str(i)} for i in range(100, 150)]))
    assert len(out) == 50 and counts[("budget", "bucketized")] == 50
    assert alerts[0]["Details"]["label"] == "user" and alerts[0]["Details"]["label_values"] == "4"
    users = {a["user"] for a in out.columns["Attributes"]}
    assert users <= {f"bucket_{i}" for i in range(10)} and len(users) > 1
    assert all(a["route"] == "/a" for a in out.columns["Attributes"])
    # points without the bucketized label cannot be bucketized: they are dropped
    out, counts, _ = stage.apply(points("m", [{"route": "/new"}]))
    assert len(out) == 0 and counts[("budget", "dropped_new_series")] == 1


def test_per_metric_budgets_and_windows():
    stage = SeriesBudgetStage.in_memory(parse_policy({"budgets": {
        "default_limit": 100, "window_s": 3600, "metrics": [{"name": "http.*", "limit": 2, "action": "drop"}]}}).budgets)
    out, _, alerts = stage.apply(points("http.requests", [{"u": "1"}, {"u": "2"}, {"u": "3"}]))
    assert len(out) == 2 and len(alerts) == 1
    out, _, alerts = stage.apply(points("db.calls", [{"u": str(i)} for i in range(50)]))
    assert len(out) == 50 and not alerts
    # a new window starts from nothing; the window four back shares its key, and is overwritten
    out, _, alerts = stage.apply(points("http.requests", [{"u": "3"}, {"u": "4"}], ts=T0 + 4 * HOUR))
    assert len(out) == 2 and not alerts
    assert SeriesState.from_bytes(stage.store[state_key("http.requests", T0 // HOUR)]).window == T0 // HOUR + 4


def test_uncommitted_changes_are_forgotten_on_begin_and_commit_hands_them_over():
    store: dict[str, bytes] = {}
    stage = SeriesBudgetStage(budgets(default_limit=2, action="drop"), store.get)
    out, _, alerts = stage.apply(points("m", [{"u": "1"}, {"u": "2"}, {"u": "3"}]))
    assert len(out) == 2 and len(alerts) == 1 and not store  # nothing written during apply
    stage.begin()  # the write failed: retry from the stored state
    out, _, alerts = stage.apply(points("m", [{"u": "1"}, {"u": "2"}, {"u": "3"}]))
    assert len(out) == 2 and len(alerts) == 1
    done = stage.commit()
    assert len(done.alerts) == 1 and list(done.set) == [state_key("m", T0 // HOUR)]
    store.update(done.set)
    # a restarted stage over the same store decides the same: counts survive
    again = SeriesBudgetStage(budgets(default_limit=2, action="drop"), store.get)
    out, counts, alerts = again.apply(points("m", [{"u": "2"}, {"u": "4"}]))
    assert [a["u"] for a in out.columns["Attributes"]] == ["2"] and not alerts
    assert counts[("budget", "dropped_new_series")] == 1


def test_state_round_trip_and_disabled_budgets():
    state = SeriesState({1, 2, 2**64 - 1}, {"a": {5}, "b": set()}, True, "a", 7)
    assert SeriesState.from_bytes(state.to_bytes()) == state
    stage = SeriesBudgetStage.in_memory(budgets(enabled=False, default_limit=1))
    out, counts, alerts = stage.apply(points("m", [{"u": str(i)} for i in range(10)]))
    assert len(out) == 10 and counts == Counter() and not alerts


def test_series_are_service_and_attribute_sets():
    stage = SeriesBudgetStage.in_memory(budgets(default_limit=2, action="drop"))
    batch = points("m", [{"a": "1", "b": "2"}, {"b": "2", "a": "1"}])  # same set, other order
    out, _, _ = stage.apply(batch)
    out2, _, alerts = stage.apply(points("m", [{"a": "1", "b": "2"}], service="other"))
    assert len(out) == 2 and len(out2) == 1 and not alerts
    out3, _, alerts = stage.apply(points("m", [{"a": "9"}]))
    assert len(out3) == 0 and alerts


def test_point_times_far_from_their_messages_neither_open_windows_nor_grow_the_state():
    stage = SeriesBudgetStage.in_memory(budgets(default_limit=5, action="drop"), clock_skew_s=600)
    now = T0 + 30 * 60 * 10**9
    for i in range(200):  # random past and future point times, one series each
        ts = T0 + (i * 7919 % 400 - 200) * HOUR
        out, counts, _ = stage.apply(points("m", [{"u": str(i % 3)}], ts=ts), now_ns=now)
        assert len(out) == 1
    assert len(stage.store) == 1  # one window: now ± 10 minutes is all inside T0's hour
    assert SeriesState.from_bytes(next(iter(stage.store.values()))).series.__len__() == 3
    _, counts, _ = stage.apply(points("m", [{"u": "x"}], ts=T0 + 1000 * HOUR), now_ns=now)
    assert counts[("budget", "future_point")] == 1
    _, counts, _ = stage.apply(points("m", [{"u": "x"}], ts=-(2**62)), now_ns=now)
    assert counts[("budget", "late_point")] == 1


def test_a_metric_has_a_bounded_number_of_state_keys_over_any_run_of_windows():
    stage = SeriesBudgetStage.in_memory(budgets(default_limit=5, action="drop"))
    for hour in range(100):
        ts = T0 + hour * HOUR
        stage.apply(points("m", [{"u": str(hour)}], ts=ts), now_ns=ts)
    assert len(stage.store) <= 4


def test_a_policy_set_while_a_write_is_in_progress_applies_from_the_next_write():
    store: dict[str, bytes] = {}
    stage = SeriesBudgetStage(budgets(default_limit=3, action="drop"), store.get)
    stage.begin()
    out, _, _ = stage.apply(points("m", [{"u": "1"}]))
    stage.set_policy(budgets(default_limit=1, action="drop"))  # from the event loop, mid-batch
    out, _, _ = stage.apply(points("m", [{"u": "2"}]))
    assert len(out) == 1, "the batch in progress keeps the policy it started with"
    store.update(stage.commit().set)  # two series of m are stored
    stage.begin()
    out, _, _ = stage.apply(points("m", [{"u": "3"}]))
    assert len(out) == 0
