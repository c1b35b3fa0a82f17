from streams.otlp.batch import ColumnBatch
from streams.stages.naming import NamingRules, NamingStage, check_name


def test_good_names_pass():
    assert check_name("http.server.request.duration", NamingRules()) == ()
    strict = NamingRules(unit_suffixes=("_ms", "_seconds", "_bytes"), verbs=("view", "create"), domains=("user",))
    assert check_name("user.profile.view.duration_ms", strict) == ()


def test_every_broken_rule_is_named():
    strict = NamingRules(unit_suffixes=("_ms",), verbs=("view",), domains=("user",))
    rules = {rule for rule, _ in check_name("Shop..Orders-Total", strict)}
    assert rules == {"lowercase", "characters", "separators", "domain", "verb", "unit"}


def batch(names):
    n = len(names)
    return ColumnBatch("otel_metrics_sum", {"MetricName": list(names), "ServiceName": ["svc"] * n,
                                            "TimeUnix": [1_700_000_000_123_000_000 + i for i in range(n)],
                                            "Value": [float(i) for i in range(n)]})


def test_report_keeps_points_and_lists_each_violation_once():
    out, violations, counts = NamingStage(NamingRules()).apply(batch(["ok.name", "Bad.Name", "Bad.Name"]))
    assert out.columns["MetricName"] == ["ok.name", "Bad.Name", "Bad.Name"]
    assert violations.rows() == [{"FirstSeen": 1_700_000_000_123, "Service": "svc", "MetricName": "Bad.Name",
                                  "Rule": "lowercase", "Detail": "'Bad.Name' has upper-case letters",
                                  "Action": "report"}]
    assert counts[("naming", "lowercase")] == 1


def test_reject_removes_the_points():
    out, violations, counts = NamingStage(NamingRules(action="reject")).apply(batch(["ok.name", "bad name"]))
    assert out.columns["MetricName"] == ["ok.name"] and out.columns["Value"] == [0.0]
    assert {r["Rule"] for r in violations.rows()} == {"characters"}
    assert counts[("naming", "rejected_points")] == 1
