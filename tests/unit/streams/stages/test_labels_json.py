"""JSON values through the label stage, over generated documents: whatever form the JSON takes
(duplicate keys, numbers, constants and numbers orjson refuses, lone surrogate escapes, escaped
characters, spacing, truncation), no secret it holds is stored, and what is kept keeps its text."""

import json
import random

import pytest

from streams.stages.label_policy import parse_policy
from streams.stages.labels import LabelStage

BLOCKED_KEYS = ("password", "pwd", "authorization", "Cookie", "api_key", "X-Api-Key", "refresh_token",
                "session_id", "client_secret")
PLAIN_KEYS = ("note", "user", "n", "items", "kind", "count")
CONSTANTS = ("NaN", "Infinity", "-Infinity", "1e400", "-1e400")


def luhn_number(rng: random.Random, size: int = 16) -> str:
    """A card number: random digits with the Luhn check digit."""
    digits = [rng.randrange(1, 10)] + [rng.randrange(10) for _ in range(size - 2)]
    total = 0
    for i, d in enumerate(reversed(digits)):
        d = d * 2 if i % 2 == 0 else d
        total += d - 9 if d > 9 else d
    return "".join(map(str, digits)) + str(-total % 10)


class Documents:
    """Random JSON texts. ``secrets``: texts that must not be stored; ``keeps``: texts that must be
    (strings as decoded, numbers as written), found only where every enclosing key is unique."""

    def __init__(self, seed: int, odd: bool = True):
        self.rng = random.Random(seed)
        self.odd = odd  # forms orjson refuses or reads inexactly
        self.n = 0

    def marker(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}z"

    def spacing(self) -> str:
        return self.rng.choice(("", "", "", " ", "\n  "))

    def value(self, depth: int, secrets: list[str], keeps: list[str], hidden: bool) -> str:
        """One JSON value; ``hidden``: under a blocked key, so whatever it holds is a secret."""
        rng = self.rng
        roll = rng.random()
        if depth < 3 and roll < 0.25:
            return self.container(depth + 1, secrets, keeps, hidden)
        kind = rng.choice(("plain", "plain", "email", "card_text", "card_number", "big", "exact_float",
                           "small", "constant", "surrogate", "escaped_email"))
        if kind in ("constant", "surrogate") and not self.odd:
            kind = "small"
        if kind == "plain":
            text = self.marker("plain")
            (secrets if hidden else keeps).append(text)
            return json.dumps(text)
        if kind == "email":
            text = f"{self.marker('owner.')}@example.com"
            secrets.append(text)
            return json.dumps(text)
        if kind == "escaped_email":
            text = f"{self.marker('esc.')}@example.com"
            secrets.append(text)
            return json.dumps(text).replace("@", "\\u0040")
        if kind == "card_text":
            text = luhn_number(rng)
            secrets.append(text)
            return json.dumps(" ".join(text[i:i + 4] for i in range(0, 16, 4)))
        if kind == "card_number":
            text = luhn_number(rng, rng.choice((13, 15, 16, 19)))
            secrets.append(text)
            return text
        if kind == "big":  # past 64 bits: orjson reads a float
            text = str(rng.randrange(10 ** 20, 10 ** 30))
            if not hidden and self.odd:
                keeps.append(text)
            return text if self.odd else "7"
        if kind == "exact_float":  # more digits than a double holds
            text = f"0.{rng.randrange(10 ** 20, 10 ** 21)}"
            if not hidden and self.odd:
                keeps.append(text)
            return text if self.odd else "0.5"
        if kind == "small":
            return str(rng.randrange(1000))
        if kind == "constant":
            return rng.choice(CONSTANTS)
        return '"\\ud800' + self.marker("lone") + '"'  # a lone surrogate escape

    def container(self, depth: int, secrets: list[str], keeps: list[str], hidden: bool) -> str:
        rng, s = self.rng, self.spacing
        if rng.random() < 0.35:
            items = [self.value(depth, secrets, keeps, hidden) for _ in range(rng.randrange(4))]
            return "[" + ("," + s()).join(items) + "]"
        keys = []
        for _ in range(rng.randrange(1, 6)):
            if keys and rng.random() < 0.3:
                keys.append(rng.choice(keys))  # a duplicate key
            else:
                keys.append(rng.choice(BLOCKED_KEYS if rng.random() < 0.3 else PLAIN_KEYS))
        members = []
        for key in keys:
            blocked = key in BLOCKED_KEYS
            unique = keys.count(key) == 1
            inner_keeps: list[str] = []
            text = self.value(depth, secrets, inner_keeps, hidden or blocked)
            if unique:
                keeps.extend(inner_keeps)
            members.append(json.dumps(key) + s() + ":" + s() + text)
        return "{" + s() + ("," + s()).join(members) + s() + "}"

    def document(self) -> tuple[str, list[str], list[str]]:
        secrets: list[str] = []
        keeps: list[str] = []
        return self.container(1, secrets, keeps, False), secrets, keeps


def strings_and_numbers(text: str) -> list[str]:
    """Every key, string and number text a JSON text holds, as any JSON reader sees it."""
    found: list[str] = []

    def pairs(members):
        for key, _ in members:
            found.append(key)
        return members

    def number(token):
        found.append(token)
        return token

    def walk(node):
        if isinstance(node, str):
            found.append(node)
        elif isinstance(node, list):
            for item in node:
                walk(item[1] if isinstance(item, tuple) else item)

    walk(json.loads(text, object_pairs_hook=pairs, parse_int=number, parse_float=number, parse_constant=number))
    return found


@pytest.mark.parametrize("action", ["mask", "hash", "drop"])
@pytest.mark.parametrize("odd", [False, True])
def test_no_secret_of_a_json_value_is_stored_and_the_rest_keeps_its_text(action, odd):
    stage = LabelStage(parse_policy({"redaction": {"value_action": action}}))
    documents = Documents(seed=11 + odd, odd=odd)
    for _ in range(400):
        text, secrets, keeps = documents.document()
        out, _ = stage.scrub(text)
        assert out is not None, text
        out.encode("utf-8")  # storable
        seen = strings_and_numbers(out)  # still JSON
        leaked = [s for s in secrets if s in out or any(s in x.replace(" ", "") for x in seen)]
        assert leaked == [], (text, out)
        lost = [k for k in keeps if k not in seen]
        assert lost == [], (text, out)


def test_duplicate_keys_are_each_checked():
    stage = LabelStage(parse_policy({}))
    assert stage.scrub('{"note":"a@b.io","note":"x"}')[0] == '{"note":"x"}'
    assert stage.scrub('{"note":"x","note":"a@b.io"}')[0] == '{"note":"****"}'
    assert stage.scrub('{"a":{"k":"4111 1111 1111 1111","k":"x"}}')[0] == '{"a":{"k":"x"}}'
    assert stage.scrub('{"password":"x","password":"y"}')[0] == "{}"


def test_numbers_holding_card_numbers_are_masked():
    stage = LabelStage(parse_policy({}))
    assert stage.scrub('{"card":4111111111111111,"n":1234567890123456}') == ('{"card":"****","n":1234567890123456}',
                                                                           "card_number")
    assert stage.scrub("[4111111111111111]") == ('["****"]', "card_number")


def test_json_orjson_refuses_keeps_the_key_rules_and_its_numbers():
    stage = LabelStage(parse_policy({}))
    big = "123456789012345678901234567890"
    assert stage.scrub('{"authorization":"x","v":NaN,"big":' + big + '}') == ('{"big":' + big + ',"v":NaN}',
                                                                             "blocked_key")
    assert stage.scrub('{"cookie":"x","v":1e400}')[0] == '{"v":1e400}'
    assert stage.scrub('{"cookie":"x","s":"\\ud800"}')[0] == '{"s":"\\ud800"}'
    assert stage.scrub('{"v":NaN,"big":' + big + '}') == ('{"v":NaN,"big":' + big + '}', "")  # unchanged


@pytest.mark.parametrize("action", ["mask", "hash", "drop"])
def test_truncated_json_keeps_no_value_of_a_blocked_key(action):
    """JSON no reader accepts (cut short): the values of blocked keys are masked in the text."""
    stage = LabelStage(parse_policy({"redaction": {"value_action": action}}))
    documents = Documents(seed=5, odd=False)
    checked = 0
    for _ in range(300):
        text, secrets, _ = documents.document()
        if len(text) < 3:
            continue
        cut = text[:documents.rng.randrange(2, len(text))]
        out, _ = stage.scrub(cut)
        if out is None:  # drop: a secret found in the text drops the value
            continue
        leaked = [s for s in secrets if s in out.replace(" ", "")]
        assert leaked == [], (cut, out)
        checked += 1
    assert checked > 100


def test_truncated_json_and_python_reprs_lose_the_values_of_blocked_keys():
    stage = LabelStage(parse_policy({}))
    assert stage.scrub('{"cookie": "a=1", "n": 1, "authorization": "Token x') == (
        '{"cookie": "****", "n": 1, "authorization": "****"', "blocked_key")
    assert stage.scrub("{'Cookie': 'sid=5', 'Accept': '*/*'}")[0] == "{'Cookie': '****', 'Accept': '*/*'}"
    assert stage.scrub('{"ok": 1, "session_id": {"a": [1, 2], "b": "x"}, "more": 2')[0] == \
        '{"ok": 1, "session_id": "****"'
    assert stage.scrub('[INFO] started')[0] == "[INFO] started"


def test_strings_with_lone_surrogate_escapes_meet_the_detectors():
    stage = LabelStage(parse_policy({}))
    value = '{"a":"\\ud800 bob@example.com password=x \\udfff","b":"{\\"cookie\\": \\"c\\ud800\\""}'
    out, reason = stage.scrub(value)
    assert reason == "email" and "bob@example.com" not in out
    assert json.loads(out) == {"a": "\ud800 **** password=**** \udfff", "b": '{"cookie": "****"'}
