"""Key rules of the label stage: which keys are never stored, in maps and inside JSON values."""

import random

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
