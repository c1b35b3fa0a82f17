import pytest

from streams.stages.label_policy import Policy, PolicyError, load_policy, parse_policy


def test_defaults_block_secrets():
    p = Policy()
    assert "authorization" in p.redaction.block_keys and p.redaction.mode == "block"
    assert load_policy(None) == p


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
        "redaction.detect[1]: must be one of bearer, card, email",
        "redaction.allow_keys: allow mode needs at least one key",
        "cardinality.rules[2].type: must be one of hash, template, truncate_hash, top_k, drop",
        "cardinality.rules[2].buckets: must be > 0",
        "metrics.allowed_names: must be a list of strings",
        "metrics.surprise: unknown setting",
    ]:
        assert expected in text, f"{expected!r} missing from:\n{text}"


def test_rules_parse():
    p = parse_policy({"cardinality": {"rules": [{"type": "truncate_hash", "key": "*", "max_length": 50,
                                                 "signals": ["traces"]}]}})
    [rule] = p.rules
    assert (rule.type, rule.key, rule.max_length, rule.signals) == ("truncate_hash", "*", 50, ("traces",))
