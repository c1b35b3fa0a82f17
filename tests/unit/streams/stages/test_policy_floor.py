"""A topic policy may tighten redaction compared with the worker's own, never loosen it."""

import tomllib

import pytest

from streams.stages.label_policy import DEFAULT_BLOCK_KEYS, DEFAULT_QUERY_SECRETS, DETECTORS, LabelPolicy, parse_policy
from streams.stages.policy_floor import relaxations


def policy(text: str) -> LabelPolicy:
    return parse_policy(tomllib.loads(text))


def strings(items) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


BASE = LabelPolicy()
ALLOW = policy('[redaction]\nmode = "allow"\nallow_keys = ["http.*", "service.*"]\n')


@pytest.mark.parametrize("text", [
    "",  # the same as the defaults
    '[[cardinality.rules]]\ntype = "drop"\nkey = "user.id"\n',  # other sections are not redaction
    f'[redaction]\nblock_keys = {strings(DEFAULT_BLOCK_KEYS + ("x-internal-*",))}\n',
    f'[redaction]\nblock_keys = {strings(k.upper() for k in DEFAULT_BLOCK_KEYS)}\n',  # keys match case-blind
    f'[redaction]\nquery_secrets = {strings(DEFAULT_QUERY_SECRETS + ("session",))}\n',
    '[redaction]\nmode = "allow"\nallow_keys = ["http.method"]\n',  # block → allow tightens
    '[redaction]\nvalue_action = "drop"\n',
])
def test_tighter_or_equal_policies_pass(text):
    assert relaxations(BASE, policy(text)) == []


@pytest.mark.parametrize("text, setting", [
    (f'[redaction]\ndetect = {strings(DETECTORS[1:])}\n', "redaction.detect"),
    ('[redaction]\ndetect = []\n', "redaction.detect"),
    (f'[redaction]\nblock_keys = {strings(DEFAULT_BLOCK_KEYS[:-1])}\n', "redaction.block_keys"),
    ('[redaction]\nblock_keys = ["*"]\n', "redaction.block_keys"),  # covers more, yet not as written: refused
    (f'[redaction]\nquery_secrets = {strings(DEFAULT_QUERY_SECRETS[1:])}\n', "redaction.query_secrets"),
    ('[redaction]\nvalue_action = "hash"\n', "redaction.value_action"),
])
def test_looser_policies_name_what_they_loosen(text, setting):
    found = relaxations(BASE, policy(text))
    assert len(found) == 1 and found[0].startswith(setting + ":"), found


def test_allow_mode_stays_allow_with_no_new_allowed_keys():
    assert relaxations(ALLOW, ALLOW) == []
    assert relaxations(ALLOW, policy('[redaction]\nmode = "allow"\nallow_keys = ["http.*"]\n')) == []
    back_to_block = relaxations(ALLOW, BASE)
    assert back_to_block and back_to_block[0].startswith("redaction.mode:")
    wider = relaxations(ALLOW, policy('[redaction]\nmode = "allow"\nallow_keys = ["http.*", "user.*"]\n'))
    assert wider == ["redaction.allow_keys: allows 1 pattern the base policy does not"]


def test_relaxations_name_counts_never_the_patterns():
    found = relaxations(policy('[redaction]\nblock_keys = ["secret-pattern-xyz"]\n'), policy('[redaction]\nblock_keys = []\n'))
    assert found == ["redaction.block_keys: lacks 1 of the base policy's entries"]
