from streams.stages.alerts import ALERT_FIELDS, AlertTracker, Firing, decode_avro, encode_avro, record


def firing(name="availability:fast_burn", service="a", value=20.0):
    return Firing("slo_burn", service, name, "page", value, 14.4, (("sli", "availability"),))


def test_alerts_are_announced_once_then_resolved_once():
    tracker = AlertTracker()
    first = tracker.transitions([firing()], 1000, {"slo_burn"})
    assert [(r["Name"], r["State"]) for r in first] == [("availability:fast_burn", "firing")]
    assert tracker.transitions([firing(value=25.0)], 2000, {"slo_burn"}) == []  # still firing: silent
    resolved = tracker.transitions([], 3000, {"slo_burn"})
    assert [(r["Name"], r["State"], r["Value"]) for r in resolved] == [("availability:fast_burn", "resolved", 25.0)]
    assert tracker.transitions([], 4000, {"slo_burn"}) == []


def test_other_kinds_are_left_alone():
    tracker = AlertTracker()
    tracker.transitions([Firing("cardinality", "a", "http.requests", "ticket", 1, 1)], 1, {"cardinality"})
    assert tracker.transitions([], 2, {"slo_burn"}) == []


def test_seeded_tracker_does_not_announce_again_after_restart():
    tracker = AlertTracker()
    tracker.seed([{**record(firing(), "firing", 1000)}, {**record(firing("latency:slow_burn"), "resolved", 900)}])
    assert tracker.transitions([firing()], 2000, {"slo_burn"}) == []
    out = tracker.transitions([firing(), firing("latency:slow_burn")], 3000, {"slo_burn"})
    assert [(r["Name"], r["State"]) for r in out] == [("latency:slow_burn", "firing")]


def test_avro_round_trip_keeps_every_field():
    rec = record(firing(), "firing", 1_767_323_045_123)
    back = decode_avro(encode_avro(rec))
    assert list(back) == ALERT_FIELDS
    assert back["Timestamp"].timestamp() * 1000 == rec["Timestamp"]
    assert {k: v for k, v in back.items() if k != "Timestamp"} == {k: v for k, v in rec.items() if k != "Timestamp"}
