import tomllib

import pytest

from streams.stages import label_policy
from streams.stages.label_policy import (BudgetPolicy, CardinalityRule, LabelPolicy, MetricBudget, PolicyError,
                                         RedactionPolicy, load_policy, parse_policy, policy_json_schema)
from streams.stages.naming import NamingRules


def test_defaults_block_secrets():
    p = LabelPolicy()
    assert "authorization" in p.redaction.block_keys and p.redaction.mode == "block"
    assert load_policy(None) == p
    assert parse_policy({}) == p  # an empty file: the defaults


def test_every_problem_with_its_path(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text('''
[redaction]
mode = "allow"
value_action = "shred"
detect = ["email", "ssn"]
[[cardinality.rules]]
type = "hash"
key = "user.id"
buckets = 100
[[cardinality.rules]]
type = "hash"
key = "x"
[[cardinality.rules]]
type = "bucketize"
key = "y"
buckets = 0
[metrics]
allowed_names = "http.*"
surprise = 1
''')
    with pytest.raises(PolicyError) as err:
        load_policy(path)
    text = "\n".join(err.value.problems)
    for expected in [
        "redaction.value_action: must be mask, drop or hash",
        "redaction.detect[1]: must be one of bearer, basic, card, email, url_credentials, assignment",
        "redaction.allow_keys: allow mode needs at least one key",
        "cardinality.rules[2].type: must be one of hash, template, truncate_hash, top_k, drop",
        "cardinality.rules[2].buckets: must be > 0",
        "metrics.allowed_names: must be a list of strings",
        "metrics.surprise: unknown setting",
    ]:
        assert expected in text, f"{expected!r} missing from:\n{text}"


def test_problems_of_every_section_at_once():
    with pytest.raises(PolicyError) as err:
        parse_policy({
            "templating": "yes",
            "cardinality": {"rules": [{"type": "hash", "key": "a", "buckets": "3", "signals": ["traces", "audit"],
                                       "k": True, "colour": "red"},
                                      {"key": ""},
                                      "drop"]},
            "naming": {"enabled": 1, "action": "warn", "separators": [".", "ab"]},
            "budgets": {"seed": "", "window_s": -1, "metrics": [{"limit": 0, "action": "keep"}, {"name": "x"}]},
            "extra": {},
        })
    assert sorted(err.value.problems) == sorted([
        "templating: must be a table",
        "cardinality.rules[0].buckets: must be > 0, got '3'",  # strict: no "3" for 3
        "cardinality.rules[0].signals: unknown signal 'audit'",
        "cardinality.rules[0].k: must be > 0, got True",
        "cardinality.rules[0].colour: unknown setting",
        "cardinality.rules[1].type: required, must be one of hash, template, truncate_hash, top_k, drop",
        "cardinality.rules[1].key: required, a key or glob pattern",
        "cardinality.rules[2]: must be a table",
        "naming.enabled: must be true or false",
        "naming.action: must be report or reject, got 'warn'",
        "naming.separators[1]: must be one punctuation character, got 'ab'",
        "budgets.window_s: must be > 0, got -1",
        "budgets.seed: must be a non-empty string",
        "budgets.metrics[0].name: required, a metric name or glob pattern",
        "budgets.metrics[0].limit: must be > 0, got 0",
        "budgets.metrics[0].action: must be bucketize or drop, got 'keep'",
        "budgets.metrics[1].limit: required",
        "extra: unknown setting",
    ])
    assert str(err.value).startswith("invalid policy:\n  ")


def test_lists_of_tables_must_be_lists():
    with pytest.raises(PolicyError) as err:
        parse_policy({"cardinality": {"rules": {"type": "hash"}}, "budgets": {"metrics": "http.*"}})
    assert sorted(err.value.problems) == [
        "budgets.metrics: must be a list of tables ([[budgets.metrics]])",
        "cardinality.rules: must be a list of tables ([[cardinality.rules]])",
    ]


def test_rules_parse():
    p = parse_policy({"cardinality": {"rules": [{"type": "truncate_hash", "key": "*", "max_length": 50,
                                                 "signals": ["traces"]}]}})
    [rule] = p.rules
    assert (rule.type, rule.key, rule.max_length, rule.signals) == ("truncate_hash", "*", 50, ("traces",))


README_POLICY = '''
[redaction]
mode = "block"
value_action = "hash"
[[cardinality.rules]]
type = "hash"
key = "user.id"
buckets = 100
[[cardinality.rules]]
type = "truncate_hash"
key = "*"
[[cardinality.rules]]
type = "top_k"
key = "customer.plan"
k = 20
window_s = 300
[[cardinality.rules]]
type = "drop"
key = "session.id"
[metrics]
allowed_names = ["http.*", "rpc.*", "process.*"]
[budgets]
default_limit = 10000
window_s = 3600
action = "bucketize"
buckets = 100
[[budgets.metrics]]
name = "http.server.*"
limit = 500
action = "drop"
[naming]
action = "report"
separators = ["."]
unit_suffixes = ["_ms", "_seconds", "_bytes", "_total"]
verbs = ["view", "create", "delete"]
domains = ["user", "order", "payment"]
'''


def test_the_readme_policy_parses_to_the_same_values():
    defaults = LabelPolicy()
    assert parse_policy(tomllib.loads(README_POLICY)) == LabelPolicy(
        redaction=RedactionPolicy(value_action="hash"),
        naming=NamingRules(action="report", separators=(".",), unit_suffixes=("_ms", "_seconds", "_bytes", "_total"),
                           verbs=("view", "create", "delete"), domains=("user", "order", "payment")),
        template_span_names=True,
        template_url_keys=defaults.template_url_keys,
        rules=(CardinalityRule("hash", "user.id", buckets=100),
               CardinalityRule("truncate_hash", "*"),
               CardinalityRule("top_k", "customer.plan", k=20, window_s=300),
               CardinalityRule("drop", "session.id")),
        allowed_metric_names=("http.*", "rpc.*", "process.*"),
        budgets=BudgetPolicy(default_limit=10000, default_action="bucketize", window_s=3600, buckets=100,
                             metrics=(MetricBudget("http.server.*", 500, "drop"),)))


def test_the_documented_example_parses():
    example = label_policy.__doc__.split("Example::\n\n")[1].split("\n\n")[0]
    p = parse_policy(tomllib.loads("\n".join(line[4:] for line in example.splitlines())))
    assert [(r.type, r.key) for r in p.rules] == [("hash", "user.id"), ("top_k", "customer.tier")]
    assert p.budgets.for_metric("http.server.duration") == MetricBudget("http.server.*", 500, "drop")


def test_every_setting_reaches_the_policy():
    p = parse_policy({
        "redaction": {"mode": "allow", "allow_keys": ["http.*"], "block_keys": ["x"], "value_action": "drop",
                      "detect": ["card"], "query_secrets": ["sig"], "hash_seed": "s1"},
        "templating": {"span_names": False, "url_keys": ["url.full"]},
        "cardinality": {"rules": [{"type": "template", "key": "k", "signals": ["logs", "metrics"], "seed": "s2",
                                   "buckets": 7, "max_length": 9, "k": 3, "window_s": 60}]},
        "naming": {"enabled": False, "action": "reject"},
        "budgets": {"enabled": False, "default_limit": 5, "window_s": 60, "action": "drop", "buckets": 4,
                    "seed": "s3", "metrics": [{"name": "a.*", "limit": 2}, {"name": "b", "limit": 3,
                                                                            "action": "bucketize"}]},
    })
    assert p.redaction == RedactionPolicy("allow", ("x",), ("http.*",), "drop", ("card",), ("sig",), "s1")
    assert (p.template_span_names, p.template_url_keys) == (False, ("url.full",))
    assert p.rules == (CardinalityRule("template", "k", 7, 9, ("logs", "metrics"), "s2", 3, 60),)
    assert p.naming == NamingRules(enabled=False, action="reject")
    # a metric budget without an action takes [budgets] action
    assert p.budgets == BudgetPolicy(False, 5, "drop", 60, 4, "s3", (MetricBudget("a.*", 2, "drop"),
                                                                     MetricBudget("b", 3, "bucketize")))


def test_json_schema():
    schema = policy_json_schema()
    assert isinstance(schema, dict) and schema["additionalProperties"] is False
    assert set(schema["properties"]) == {"redaction", "templating", "cardinality", "metrics", "naming", "budgets"}
    rule = schema["$defs"]["CardinalityRuleSection"]
    assert rule["required"] == ["type", "key"] and rule["properties"]["type"]["enum"] == list(label_policy.RULE_TYPES)
    assert rule["properties"]["buckets"]["exclusiveMinimum"] == 0
