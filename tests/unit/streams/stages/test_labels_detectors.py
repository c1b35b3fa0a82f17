"""The label stage's value detectors over generated text: every form a secret is written in is
masked, and what only looks like one is left alone."""

import base64
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


QUERY_NAMES = ("token", "access_token", "sig", "token2", "auth.key", "x-sig", "sig_v4", "Key")
FOLDING = ("ſ", "\u212a", "İ", "ß", "é")  # letters that case-fold to ASCII ones, or not


def _fragment(rng: random.Random) -> str:
    """A piece of text one of the detectors may find, or noise."""
    word = "".join(rng.choice("abcXYZ0189._-~+/=:") for _ in range(rng.randrange(1, 12)))
    kind = rng.randrange(9)
    if kind == 0:
        return rng.choice(("bearer", "Bearer", "BEARER", "beaRer")) + rng.choice((" ", "\t", "  ")) + word * 3
    if kind == 1:
        return rng.choice(("basic", "BASIC", "Basic")) + " " + base64.b64encode(word.encode() + b":\xff").decode()
    if kind == 2:
        return rng.choice(("", "-", " ")).join(["4111", "1111", "1111", "1111"])
    if kind == 3:
        return f"{word}@{rng.choice(('example.com', 'a.io', 'x-y.org'))}"
    if kind == 4:
        return f"{rng.choice(('postgres', 'a+b', 'redis'))}://{word}:{word}@host"
    if kind == 5:
        return rng.choice(ASSIGNED_NAMES).upper() + rng.choice(("=", ":", '"=', " : ")) + word
    if kind == 6:
        name = rng.choice(QUERY_NAMES)
        name = rng.choice((name, name.upper(), name.title()))
        return rng.choice("?&;") + name + "=" + word
    if kind == 7:
        return rng.choice(FOLDING) + word
    return word


def test_the_prefilter_passes_every_text_a_detector_changes():
    """The cheap prefilter decides whether a text meets the detectors at all: whatever the
    detectors would change, it must let through (the policy's own query names included)."""
    stage = LabelStage(parse_policy({"redaction": {"query_secrets": list(QUERY_NAMES)}}))
    rng = random.Random(41)
    detected = 0
    for _ in range(20000):
        text = "x " + "".join(_fragment(rng) + rng.choice(("", " ", "/", "&", "?", "\n")) for _ in range(3))
        found: list[str] = []
        stage._detect(text, found)
        if found:
            detected += 1
            assert stage.scrub(text)[1], (text, found)
    assert detected > 5000


@pytest.mark.parametrize("name", ["token2", "auth.key", "x-sig", "sig_v4"])
def test_query_secrets_with_digits_dots_and_dashes_are_masked(name):
    stage = LabelStage(parse_policy({"redaction": {"query_secrets": [name]}}))
    assert stage.scrub(f"/cb?{name}=qz81 sent") == (f"/cb?{name}=**** sent", "url_secret")


def test_basic_credentials_are_masked_whatever_bytes_they_decode_to():
    """``Basic base64(user:password)`` is masked whatever the user and password are: any bytes,
    UTF-8 or not, printable or not."""
    stage = LabelStage(parse_policy({}))
    rng = random.Random(13)
    for _ in range(2000):
        user = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 12))).replace(b":", b"")
        password = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 16)))
        token = base64.b64encode(user + b":" + password).decode()
        if rng.random() < 0.3:
            token = token.rstrip("=")
        text = rng.choice(("Authorization: ", "hdr ", "")) + rng.choice(("Basic", "basic", "BASIC")) + " " + token
        out, reason = stage.scrub(text)
        assert token not in out and reason == "basic_credentials", (text, out)


def test_basic_followed_by_words_is_left_alone():
    stage = LabelStage(parse_policy({}))
    plain = [f"basic {w} of the host" for w in ("configuration", "settings", "authentication", "information",
                                                 "mode", "plan", "tier", "auth", "flow", "example", "version")]
    assert [t for t in plain if stage.scrub(t) != (t, "")] == []
    assert stage.scrub("Basic dXNlcjr//g==")[0] == "Basic ****"  # user:\xff\xfe
