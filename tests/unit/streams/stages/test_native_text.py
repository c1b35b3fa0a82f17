"""The native core's two value checks against their Python references, on generated values.

``_native.template_path`` is ``templating.template_path`` on every printable ASCII value (None on
any other); ``_native.maybe_sensitive`` says yes wherever the label stage's ``_MAYBE_SENSITIVE``
pattern (with the policy's query-secret names) matches or a value opens like JSON, so a value it
lets through is one the detectors leave alone. Values are built from the pieces those patterns
read (digits, hex, separators, ids, emails, addresses, keywords in any case, query secrets,
whitespace, line ends, non-ASCII letters that fold onto ASCII ones), many thousands per run.
"""

from __future__ import annotations

import random

import pytest

from streams.otlp import _native
from streams.stages.label_policy import LabelPolicy
from streams.stages.labels import LabelStage
from streams.stages.templating import template_path

PIECES = ["/", "/", "/", "?", "&", "=", "#", ".", ",", ":", "[", "]", "{", "}", "-", "+", "_", " ", "@", "%",
          "1", "42", "007", "4111111111111111", "5500005555555559", "378282246310005", "6011111111111117",
          "0", "9", "7", "3.14", "-5", "+7,5", "123456789", "4111 1111 1111 1111", "4111-1111-1111-1111",
          "deadbeef", "DEADBEEF01", "abcdefab", "0a1b2c3d4e5f6a7b", "123e4567-e89b-12d3-a456-426614174000",
          "123e4567e89b12d3a456426614174000", "a@b.io", "x.y@mail.example.com", "a@b", "@", "10.0.0.1",
          "10.0.0.1:8080", "256.1.1.1", "::1", "[fe80::1]", "fe80::", "abc:", "aZ09_-aZ09_-aZ09_-", "Token",
          "tOkEn", "bearer", "BASIC", "passw", "PWD", "passphrase", "secret", "apikey", "api_key", "API-Key",
          "api\nkey", "privatekey", "private.key", "PRIVATE_KEY", "sig", "SIG", "access_token", "****",
          "hash:0123456789abcdef", "https://", "http://shop.example.com", "orders", "items", "user", "v1",
          "\n", "\t", "\x0b", "\x1c", "é", "ſ", "K", "İ", "١٢٣", "\u00a0"]
SECRETS = sorted({"token", "sig", "access_token", "password", "x-amz-signature"})


def values(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        yield "".join(rng.choice(PIECES) for _ in range(rng.randrange(0, 9)))


@pytest.mark.parametrize("seed", range(4))
def test_template_path_is_the_python_one(seed):
    for value in values(seed, 6000):
        native = _native.template_path(value)
        if all(0x20 <= ord(c) < 0x7F for c in value):
            assert native == template_path(value), repr(value)
        else:
            assert native is None, repr(value)


@pytest.mark.parametrize("seed", range(4))
def test_maybe_sensitive_never_misses_what_the_detectors_change(seed):
    """The contract: a value the detectors would change (or look into as JSON) is always sent on."""
    stage = LabelStage(LabelPolicy())
    pattern = stage._maybe_sensitive
    secrets = stage.ascii_query_secrets()
    assert secrets is not None
    sent = changed = 0
    for value in values(100 + seed, 6000):
        native = _native.maybe_sensitive(value, secrets)
        sent += native
        if value.lstrip()[:1] in ("{", "[") or stage.scrub(value) != (value, ""):
            changed += 1
            assert native, repr(value)
        if not pattern.search(value) and value.lstrip()[:1] not in ("{", "["):
            assert not native or not value.isascii(), repr(value)  # no trigger: let through
    assert 0 < changed < sent < 6000


def test_long_digit_runs_go_on_only_when_a_card_number_may_be_in_them():
    secrets = LabelStage(LabelPolicy()).ascii_query_secrets()
    assert _native.maybe_sensitive("/orders/4111111111111111/items", secrets)
    assert _native.maybe_sensitive("card 4111-1111-1111-1111", secrets)
    assert not _native.maybe_sensitive("/orders/1099511627776/items", secrets)  # 13 digits, no Luhn window


def test_plain_values_are_let_through():
    secrets = LabelStage(LabelPolicy()).ascii_query_secrets()
    for value in ["GET /orders/{id}", "/api/v1/orders?ref=7", "checkout", "user-123", "200", "", "10.0.0.1"]:
        assert not _native.maybe_sensitive(value, secrets), value


def test_a_non_ascii_query_secret_turns_the_filter_off():
    from streams.stages.label_policy import RedactionPolicy

    stage = LabelStage(LabelPolicy(redaction=RedactionPolicy(query_secrets=("ſig",))))
    assert stage.ascii_query_secrets() is None
    assert stage._maybe_sensitive.search("/a?sig=1")  # Python folds ſ onto s


def _card_window(s: str) -> bool:
    """The card part of maybe_sensitive, spelled out: some window of 13 to 19 digits of a chain of
    digits (one space or dash allowed between two) passes Luhn's check."""
    def luhn(digits: str) -> bool:
        total = 0
        for i, d in enumerate(reversed(digits)):
            v = int(d) * (2 if i % 2 else 1)
            total += v - 9 if v > 9 else v
        return total % 10 == 0

    chains, chain, i = [], "", 0
    while i < len(s):
        if s[i].isdigit():
            chain += s[i]
            i += 1
            if i + 1 < len(s) and s[i] in " -" and s[i + 1].isdigit():
                i += 1
            continue
        chains.append(chain)
        chain = ""
        i += 1
    chains.append(chain)
    return any(luhn(c[a:a + n]) for c in chains for n in range(13, 20) for a in range(len(c) - n + 1))


@pytest.mark.parametrize("seed", range(3))
def test_the_card_check_reads_chains_of_any_length(seed):
    """Digits, separators and slashes only (nothing else can trigger): the native answer is the
    card rule's, for chains short and long (past the 64 digits held on the stack)."""
    import random

    rng = random.Random(seed)
    secrets = LabelStage(LabelPolicy()).ascii_query_secrets()
    seen = set()
    for _ in range(3000):
        length = rng.choice([5, 12, 13, 16, 19, 40, 63, 64, 65, 66, 90, 200])
        value = "".join(rng.choice("0123456789" * 6 + " -/") for _ in range(length))
        expected = _card_window(value)
        seen.add(expected)
        assert _native.maybe_sensitive(value, secrets) == expected, value
    assert seen == {True, False}
