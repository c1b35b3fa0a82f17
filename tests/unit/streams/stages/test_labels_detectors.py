"""The label stage's value detectors over generated text: every form a secret is written in is
masked, and what only looks like one is left alone."""

import random

import pytest

from streams.stages.label_policy import parse_policy
from streams.stages.labels import LabelStage

ASSIGNED_NAMES = ("password", "passwd", "pwd", "passphrase", "secret", "client_secret", "api_key", "apikey",
                  "api-key", "access_token", "refresh_token", "auth_token", "token", "private_key")
NAME_PREFIXES = ("", "old", "new_", "db_", "X-", "user.", "my", "x")
NOISE = ("", "login failed; ", "cfg ", "at [", "(", "cfg {", "a,", "\t")  # no JSON: its own rules
TRAILERS = ("", " retry=3", "; next", "&x=1", ",", "}", ")", " ok")


def _camel(name: str) -> str:
    parts = name.replace("-", "_").split("_")
    return parts[0] + "".join(p.title() for p in parts[1:])


def _assignments(rng: random.Random, count: int):
    """(text, the secret, what must remain) with a secret assigned to a credential name."""
    for n in range(count):
        name = rng.choice(ASSIGNED_NAMES)
        prefix = rng.choice(NAME_PREFIXES)
        name = rng.choice((name, name.upper(), _camel(name), name.title()))
        written = prefix + (name[:1].upper() + name[1:] if prefix and rng.random() < 0.5 else name)
        words = rng.choice(((f"s3cr-{n}z",), (f"two-{n}z", f"words-{n}z"), (f"a\\\"b{n}z", f"c{n}z")))
        quote = rng.choice(('"', "'", ""))
        if quote == "'":
            words = tuple(w.replace('\\"', "") for w in words)
        if not quote:
            words = words[:1]
        value = quote + " ".join(words) + quote
        key = rng.choice((written, f'"{written}"', f"'{written}'")) if quote else written
        separator = rng.choice(("=", ": ", " = ", ":", " : "))
        yield (rng.choice(NOISE) + key + separator + value + rng.choice(TRAILERS), words, written)


@pytest.mark.parametrize("action", ["mask", "hash"])
def test_assigned_secrets_are_masked_whatever_the_name_and_quoting(action):
    stage = LabelStage(parse_policy({"redaction": {"value_action": action}}))
    for text, words, name in _assignments(random.Random(3), 3000):
        out, reason = stage.scrub(text)
        assert reason, text
        assert [w for w in words if w in out] == [], (text, out)
        assert name in out, (text, out)


def test_quoted_values_are_masked_whole_and_keep_their_quotes():
    stage = LabelStage(parse_policy({}))
    cases = {
        'password="two words" next': 'password="****" next',
        "oldPassword='a b c'": "oldPassword='****'",
        "refreshToken=abc123": "refreshToken=****",
        "db_password: hunter2": "db_password: ****",
        "X-Api-Key: k-123": "X-Api-Key: ****",
        'cfg {"secret": "x \\"y\\" z", "n": 1}': 'cfg {"secret": "****", "n": 1}',
        'password="unclosed words': 'password="**** words',
    }
    assert {text: stage.scrub(text)[0] for text in cases} == cases


def test_words_near_credential_names_are_left_alone():
    stage = LabelStage(parse_policy({}))
    plain = ["token 5 of 9", "max_tokens=100", "tokenizer: bpe", "prompt_tokens: 12", "secrets are kept in vault",
             "the password was changed", "pwd is /srv", "api keys rotated"]
    assert [t for t in plain if stage.scrub(t) != (t, "")] == []


def test_assignments_stay_linear_on_repeated_openings():
    stage = LabelStage(parse_policy({}))
    for hostile in ('password="' * 100_000, "password=" * 100_000, "x-api-key: '" * 50_000):
        out, reason = stage.scrub(hostile)
        assert reason == "secret_assignment" and len(out) < len(hostile) * 2
