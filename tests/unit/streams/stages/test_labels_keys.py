"""Key rules of the label stage: which keys are never stored, in maps and inside JSON values."""

import fnmatch
import random

import pytest

from streams.stages import labels
from streams.stages.label_policy import parse_policy
from streams.stages.labels import LabelStage

# Names that hold a credential, as services spell them (the forms below are added to each).
SENSITIVE_NAMES = (
    "password", "passwd", "pwd", "passphrase", "secret", "client_secret", "api_key", "apikey", "api-key",
    "access_token", "refresh_token", "id_token", "private_key", "private-key", "privatekey", "session",
    "sessionid", "session_id", "session-id", "jsessionid", "phpsessid", "cookie", "cookies", "set-cookie",
    "authorization", "proxy-authorization",
)
PREFIXES = ("", "http.request.header.", "http.response.header.", "db.", "app_", "x-", "old_", "user.")
# Keys that merely look alike and must stay (OpenTelemetry conventions among them).
PLAIN_KEYS = ("session.id", "session.previous_id", "http.route", "service.name", "process.pid",
              "process.command", "user.id", "db.system", "cwd", "http.request.header.accept")


def _spellings(rng: random.Random, name: str) -> list[str]:
    """The name as written in another case: upper, title, and letters flipped at random."""
    flipped = "".join(c.upper() if rng.random() < 0.5 else c for c in name)
    return [name, name.upper(), name.title(), flipped]


def test_credential_names_are_blocked_in_every_form():
    stage = LabelStage(parse_policy({}))
    rng = random.Random(7)
    missed = [key for name in SENSITIVE_NAMES for prefix in PREFIXES
              for key in _spellings(rng, prefix + name) if stage.key_drop(key) != "blocked_key"]
    assert missed == []


def test_look_alike_keys_are_kept():
    stage = LabelStage(parse_policy({}))
    assert [key for key in PLAIN_KEYS if stage.key_drop(key)] == []


def test_credential_names_inside_json_values_are_dropped():
    stage = LabelStage(parse_policy({}))
    for name in SENSITIVE_NAMES:
        value = '{"' + name + '":"v-91x","ok":1}'
        assert stage.scrub(value) == ('{"ok":1}', "blocked_key"), name


def _expected(policy, key: str) -> str:
    """The key rules, evaluated from the policy's patterns alone."""
    red, lowered = policy.redaction, key.lower()
    if any(fnmatch.fnmatchcase(lowered, p.lower()) for p in red.block_keys):
        return "blocked_key"
    if red.mode == "allow" and not any(fnmatch.fnmatchcase(lowered, p.lower()) for p in red.allow_keys):
        return "not_allowed"
    return ""


def _keys(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    pool = [p + n for n in SENSITIVE_NAMES + PLAIN_KEYS for p in PREFIXES]
    return [rng.choice(_spellings(rng, rng.choice(pool))) for _ in range(count)]


POLICIES = [parse_policy({}), parse_policy({"redaction": {"mode": "allow", "allow_keys": ["http.*", "user.*"]}}),
            parse_policy({"redaction": {"block_keys": ["db.*", "*[0-9]"]}})]


def test_key_decisions_are_those_of_the_patterns_asked_in_any_order():
    for policy in POLICIES:
        stage = LabelStage(policy)
        for key in _keys(3, 3000):
            assert stage.key_drop(key) in (_expected(policy, key), "sensitive_key"), key


def test_a_key_is_decided_once():
    stage = LabelStage(parse_policy({}))
    decided = []
    verdict = stage._key_verdict
    stage._key_verdict = lambda key: decided.append(key) or verdict(key)
    keys = _keys(5, 2000)
    for key in keys:
        stage.key_drop(key)
    assert sorted(decided) == sorted(set(keys))


def test_remembered_key_decisions_are_bounded(monkeypatch):
    monkeypatch.setattr(labels, "_CACHE_LIMIT", 100)
    stage = LabelStage(parse_policy({}))
    for i in range(1000):
        assert stage.key_drop(f"k{i}") == ""
        assert len(stage._key_drops) <= 100
    assert stage.key_drop("db.password") == "blocked_key"


def test_a_new_policy_is_a_new_stage_whose_decisions_are_its_own():
    """The control topic swaps the stage (followers): a stage keeps the policy it was built with,
    so what it remembers can never belong to another policy."""
    block, allow = LabelStage(POLICIES[0]), LabelStage(POLICIES[1])
    assert block.key_drop("internal.flag") == "" and block.key_drop("http.route") == ""
    assert allow.key_drop("internal.flag") == "not_allowed" and allow.key_drop("http.route") == ""
    with pytest.raises(AttributeError):
        block.policy = POLICIES[1]
    assert block.key_drop("internal.flag") == ""
