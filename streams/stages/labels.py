"""The label stage: redaction, templating and cardinality rules over one columnar batch.

``LabelStage(policy).apply(batch) -> (batch, counts)`` returns a new batch (input untouched).
Redaction fails closed: it covers every string a row carries, found by the cells' types rather
than by a list of column names, so a column added later is covered without a change here:

- in every attribute map (span, log, metric point, event, link, exemplar, metric metadata,
  resource, scope), keys matching the block list are dropped (allow mode: keys not on the allow
  list are dropped, in every map), and so are keys the value detectors flag;
- every value, and every other text column (span and event names, status messages, log bodies
  and event names, trace states, scope names, schema URLs, metric names and descriptions...),
  passes the value detectors: bearer and basic credentials (any case), card numbers
  (Luhn-checked), emails, passwords in URLs (``scheme://user:pw@``), ``password=...``-style
  assignments (also ``oldPassword=``, ``X-Api-Key:``; a quoted value masked whole), and secrets
  in URL query strings (``?token=...``). A detected secret is masked, dropped or hashed (stable,
  seeded);
- values holding JSON (kvlist and array attributes and bodies are stored as JSON) are looked into:
  nested keys meet the same key rules, nested strings and numbers the same detectors, whatever
  the JSON's form (a duplicated key is checked each time; numbers keep their text when it is
  rewritten); text that opens like JSON but that no JSON reader takes (cut short, a Python dict's
  repr) has the values after its dropped keys masked, then passes the detectors as text;
- redaction is idempotent: what it writes (the mask, ``hash:<16 hex>``) the detectors leave
  alone, and they run again over what they wrote until they find nothing more, so a value
  redacted twice (by the router before the tail buffer, then here) is stored as if redacted once;
- only validated identifiers (trace and span ids as hex) and the fixed enum names (span kind,
  status code) are exempt (``EXEMPT_COLUMNS``).

Beyond redaction: URL attributes and ``METHOD /path`` span names are templated (``http.route``
wins); cardinality rules apply by key: ``hash`` → ``bucket_N`` of a seeded xxhash, ``template``,
``truncate_hash`` (long values → ``hash:<16 hex>``), ``top_k`` (the K most frequent values of
the previous window stay, the rest become ``__other__``), ``drop``; metric points whose name is
not allowed are removed.

``counts`` maps (stage, reason) to how many values or rows were changed or dropped. Decisions per
key and per value are memoised (bounded caches), so repeated keys and values cost a lookup.
Deterministic: the same policy gives the same output in every worker and on replay (never
Python's ``hash()``). The one exception is ``top_k``, which by nature depends on what was seen
before: its windows follow record time (the newest timestamp of each batch), so the same records in
the same order give the same output, but its counts are per process. Metrics are routed by name,
so a metric's ``top_k`` counts are complete; for spans and logs they are those of one worker.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import json
import re
from collections import Counter
from itertools import chain
from typing import Any

import orjson
import re2
import xxhash

from streams.otlp.batch import ORIGIN, ColumnBatch
from streams.stages.label_policy import CardinalityRule, LabelPolicy
from streams.stages.templating import template_path, template_span_name

# Columns no redaction applies to: ids the decoder writes as hex of validated bytes, and enum names
# it takes from fixed lists. Every other column holding text is redacted (see the module's text).
EXEMPT_COLUMNS = frozenset({"TraceId", "SpanId", "ParentSpanId", "Links.TraceId", "Links.SpanId",
                            "Exemplars.TraceId", "Exemplars.SpanId", "SpanKind", "StatusCode", ORIGIN})
SHARED_MAP_COLUMNS = ("ResourceAttributes", "ScopeAttributes")  # one map object shared by many rows
SIGNAL_OF_TABLE = {"otel_traces": "traces", "otel_logs": "logs"}
MASK = "****"
OTHER = "__other__"
_CACHE_LIMIT = 200_000
TIME_COLUMNS = ("Timestamp", "TimeUnix")
_PLAIN = ("keep", False, ())  # a kept key with no URL templating and no rule: only the detectors apply

_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}")
_BASIC = re.compile(r"(?i)\bbasic\s+([A-Za-z0-9+/]{3,}={0,2})")  # 3: base64 of ":" and one byte
# RE2 as well: a backtracking engine retries the scheme at every letter of a long word.
_URL_CREDENTIALS = re2.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^\s/?#@:]*:)([^\s/?#@]+)@")
# ``name=value``, ``name: "two words"``: a credential name, also inside a longer one (oldPassword,
# refreshToken, db_password, X-Api-Key), then a quoted value (masked whole) or a word. RE2: a
# backtracking engine retries the quoted value at every opening quote.
_ASSIGNMENT = re2.compile(r"(?i)((?:passw(?:or)?d|pwd|passphrase|secret|api[_-]?key|token|private[_-]?key)"
                          r"[\"']?\s*[=:]\s*)"
                          r"(\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'|[\"']?[^\s\"'&;,{}\[\]]+)")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
# RE2 (linear time): Python's backtracking engine is quadratic on "a" * n + "@" with this pattern.
_EMAIL = re2.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# anything a detector could match: '@' (email, URL credentials), 'bearer' or 'basic' (any case),
# 13 digits (card), or the start of a secret assignment; each stage adds its policy's query
# parameters (``LabelStage._maybe_sensitive``). A test checks it passes whatever a detector changes.
_MAYBE_SENSITIVE = r"@|(?i:bearer|basic|passw|pwd|passphrase|secret|api.?key|token|private.?key)|\d[\d -]{11,}\d"
_MAX_JSON_DEPTH = 128  # deeper JSON in a value is masked whole rather than walked
# A member of JSON (or of a Python dict's repr) in text no JSON reader accepts: its quoted key, then
# its value: a quoted string (unclosed: to the end), a scalar, or nothing when an object or array opens.
_JSON_MEMBER = re2.compile(r"""("(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')\s*:\s*"""
                           r"""("(?:[^"\\]|\\.)*"?|'(?:[^'\\]|\\.)*'?|[^\s,:\]}\[{"']*)""")
_CARD_DIGITS = 13  # a number this long (as written) may be a card number
# What redaction writes: the detectors leave it alone, so redacting twice is redacting once. Lone
# surrogates (only JSON escapes make them) are left out too: RE2 reads UTF-8, which cannot hold them.
_REDACTED = re.compile("(\\*\\*\\*\\*|hash:[0-9a-f]{16}|[\ud800-\udfff]+)")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ROUNDS = 4


def _luhn(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = ord(ch) - 48
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_basic_credential(token: str) -> bool:
    """Whether a word after "Basic" is base64 of ``user:password`` (so "basic configuration" is
    not), whatever bytes the user and password are (UTF-8 or not, printable or not)."""
    try:
        decoded = base64.b64decode(token + "=" * (-len(token) % 4), validate=True)
    except (binascii.Error, ValueError):
        return False
    return b":" in decoded


class _TooDeep(Exception):
    pass


class _Members(list):
    """A JSON object as read by ``json``: its (key, value) pairs, duplicates included."""


class _Number:
    """A JSON number (or NaN, Infinity) as written, so that rewriting the JSON keeps its text."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text


def _read_json_exactly(value: str) -> Any:
    """JSON as ``json`` reads it, every member and number kept as written; None if it is not JSON."""
    try:
        return json.loads(value, object_pairs_hook=_Members, parse_int=_Number, parse_float=_Number,
                          parse_constant=_Number)
    except ValueError:
        return None


def _json_string(text: str) -> str:
    try:
        return orjson.dumps(text).decode()
    except orjson.JSONEncodeError:  # a lone surrogate (read from an escape): written as one
        return json.dumps(text)


def _dump_exactly(node: Any) -> str:
    """JSON read by ``_read_json_exactly`` (and cleaned) as compact text with sorted keys, like
    orjson writes it; a duplicated key keeps its last value, as JSON readers do."""
    if isinstance(node, _Members):
        last = dict(node)
        return "{" + ",".join(_json_string(k) + ":" + _dump_exactly(last[k]) for k in sorted(last)) + "}"
    if isinstance(node, list):
        return "[" + ",".join(_dump_exactly(item) for item in node) + "]"
    if isinstance(node, _Number):
        return node.text
    if isinstance(node, str):
        return _json_string(node)
    return orjson.dumps(node).decode()


def _unquote(key: str) -> str:
    """A quoted key as read from text: without its quotes, escapes decoded where they can be."""
    inner = key[1:-1]
    if "\\" in inner and key[0] == '"':
        try:
            return json.loads(key)
        except ValueError:
            pass
    return inner


def _cell_kind(values: list[Any]) -> str:
    """What a column's cells hold: "text", "map", "texts" (arrays of text), "maps" or "other"."""
    for value in values:
        if isinstance(value, str):
            return "text"
        if isinstance(value, dict):
            return "map"
        if isinstance(value, (list, tuple)):
            if not value:
                continue
            first = value[0]
            return "texts" if isinstance(first, str) else "maps" if isinstance(first, dict) else "other"
        return "other"
    return "other"


def stable_hash(seed: str, value: str) -> int:
    return xxhash.xxh64_intdigest(value.encode("utf-8", "surrogatepass"), seed=xxhash.xxh32_intdigest(seed.encode()))


class TopK:
    """Keep the K most frequent values of the previous window; the rest become ``__other__``.

    In the first window, before there are counts, the first K distinct values are kept. Counting
    is exact for up to ``capacity`` distinct values per window; values first seen after that are
    not counted (they cannot have been among the most frequent so far). Ties go to the smaller
    value, so the kept set depends on the counts only.
    """

    def __init__(self, k: int, window_s: int, capacity: int | None = None):
        self.k = k
        self.window_s = window_s
        self.capacity = capacity or max(1000, 50 * k)
        self.window: int | None = None
        self.counts: Counter = Counter()
        self.kept: set[str] = set()
        self.settled = False  # False in the first window: admit the first K distinct values

    def advance(self, now_s: int) -> None:
        window = now_s // self.window_s
        if self.window is None:
            self.window = window
        elif window > self.window:
            if window == self.window + 1 and self.counts:
                ranked = sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
                self.kept = {v for v, _ in ranked[: self.k]}
            else:  # a gap with no records: the last counts say nothing about now
                self.kept = set()
            self.settled = bool(self.kept)
            self.window = window
            self.counts = Counter()

    def map(self, value: str) -> str:
        counts = self.counts
        if value in counts or len(counts) < self.capacity:
            counts[value] += 1
        if value in self.kept:
            return value
        if not self.settled and len(self.kept) < self.k:
            self.kept.add(value)
            return value
        return OTHER


_DROPPED = object()  # a JSON item the detectors dropped


def _orjson_sorted(node: Any) -> str:
    return orjson.dumps(node, option=orjson.OPT_SORT_KEYS).decode()


def _globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex matching what any of the globs matches (as ``fnmatchcase``), lowercased."""
    return re.compile("|".join(fnmatch.translate(p.lower()) for p in patterns)) if patterns else None


class LabelStage:
    """The label stage of one policy. It keeps the policy it was built with (``policy`` is read
    only), as its decisions are memoised: a new policy is a new stage (followers swap it)."""

    def __init__(self, policy: LabelPolicy):
        self._policy = policy
        red = policy.redaction
        self._block = _globs(red.block_keys)
        self._allow = _globs(red.allow_keys)
        self._key_drops: dict[str, str] = {}  # key → key_drop(key)
        self._secrets = {s.lower() for s in red.query_secrets}
        names = "|".join(re.escape(s) for s in sorted(self._secrets))
        self._query = re.compile(r"([?&;](?:" + names + r")=)[^&#\s;\"']*", re.IGNORECASE) if names else None
        # whether a text may hold anything the detectors find: the query names exactly as they are matched
        self._maybe_sensitive = re.compile(_MAYBE_SENSITIVE + (r"|(?i:[?&;](?:" + names + r")=)" if names else ""))
        self._url_keys = set(policy.template_url_keys)
        self._value_cache: dict[str, tuple[str | None, str]] = {}
        self._plans_by_signal: dict[str, dict[str, tuple[Any, ...]]] = {}  # key plans, by signal
        self._name_cache: dict[tuple[str, str], tuple[str, str, str]] = {}  # (span name, route) → result
        self._plain_keys: dict[str, set[str]] = {}  # keys whose plan is _PLAIN, by signal
        self._clean_values: set[str] = set()  # values the detectors passed unchanged
        self._top_k: dict[tuple[int, str, str], TopK] = {}  # (rule index, signal, key)
        self._rule_index = {id(r): i for i, r in enumerate(policy.rules)}
        self._now_s = 0

    @property
    def policy(self) -> LabelPolicy:
        return self._policy

    # ------------------------------------------------------------ decisions (memoised)

    def _key_plan(self, signal: str, key: str) -> tuple[Any, ...]:
        """('drop', reason) | ('keep', template_url: bool, rules: tuple[CardinalityRule, ...]).

        The block list and allow mode apply to every map alike (fail closed), and so do the value
        detectors: a key that holds a secret itself (an email, a token) is dropped.
        """
        plan: tuple[Any, ...] | None = None
        drop = self.key_drop(key)
        if drop:
            plan = ("drop", drop)
        else:
            lowered = key.lower()
            rules = tuple(r for r in self.policy.rules
                          if signal in r.signals and fnmatch.fnmatchcase(lowered, r.key.lower()))
            if any(r.type == "drop" for r in rules):
                plan = ("drop", "cardinality_drop")
            elif key not in self._url_keys and not rules:
                plan = _PLAIN
            else:
                plan = ("keep", key in self._url_keys, rules)
        return plan

    def key_drop(self, key: str) -> str:
        """Why a key (of a map, or inside a JSON value) is never stored, or "" when it may be.
        Memoised (bounded: all are forgotten past the limit), as keys repeat in every map."""
        known = self._key_drops.get(key)
        if known is None:
            if len(self._key_drops) >= _CACHE_LIMIT:
                self._key_drops.clear()
            known = self._key_drops[key] = self._key_verdict(key)
        return known

    def _key_verdict(self, key: str) -> str:
        lowered = key.lower()
        if self._block is not None and self._block.match(lowered):
            return "blocked_key"
        if self.policy.redaction.mode == "allow" and (self._allow is None or not self._allow.match(lowered)):
            return "not_allowed"
        if self._scrub_text(key)[1]:
            return "sensitive_key"
        return ""

    def _plans(self, signal: str) -> dict[str, tuple[Any, ...]]:
        """The memoised plans of one signal (bounded: all are forgotten past the limit)."""
        plans = self._plans_by_signal.get(signal)
        if plans is None:
            plans = self._plans_by_signal[signal] = {}
        return plans

    def _remember_plan(self, plans: dict[str, tuple[Any, ...]], signal: str, key: str) -> tuple[Any, ...]:
        if sum(len(p) for p in self._plans_by_signal.values()) >= _CACHE_LIMIT:
            for known in self._plans_by_signal.values():
                known.clear()
            self._plain_keys.clear()
        plan = plans[key] = self._key_plan(signal, key)
        if plan is _PLAIN:
            self._plain_keys.setdefault(signal, set()).add(key)
        return plan

    def scrub(self, value: str) -> tuple[str | None, str]:
        """(new value or None to drop it, reason or "") after the value detectors; a value holding
        a JSON object or array is looked into (keys and strings at every level)."""
        cached = self._value_cache.get(value)
        if cached is not None:
            return cached
        result: tuple[str | None, str] | None = None
        if value.lstrip()[:1] in ("{", "["):
            try:
                result = self._scrub_json(value)
            except RecursionError:  # JSON strings nested in JSON strings, past what can be read
                result = (MASK, "too_deep_to_read")
            if result is None:  # no JSON reader takes it (cut short, a dict's repr): its members as text
                result = self._scrub_json_text(value)
        if result is None:
            result = self._scrub_text(value)
        if len(self._value_cache) >= _CACHE_LIMIT:
            self._value_cache.clear()
            self._clean_values.clear()
        self._value_cache[value] = result
        if result[1] == "" and result[0] == value:
            self._clean_values.add(value)
        return result

    def _replacement(self, found: str) -> str:
        action = self.policy.redaction.value_action
        if action == "hash":
            return f"hash:{stable_hash(self.policy.redaction.hash_seed, found):016x}"
        return MASK

    def _scrub_text(self, value: str) -> tuple[str | None, str]:
        """The detectors over text, again over what they wrote until they find nothing more (a
        masked secret can uncover another: ``4111...1111BEARER x`` has a word boundary once the
        digits are masked), so that scrubbing scrubbed text changes nothing. Past ``_ROUNDS``
        rounds nothing of the text is kept."""
        if not self._maybe_sensitive.search(value):
            return value, ""
        new, reasons = value, []
        for rounds in range(_ROUNDS):
            if rounds and not self._maybe_sensitive.search(new):
                break
            found: list[str] = []
            scrubbed = self._detect(new, found)
            if not found:
                break
            new = scrubbed
            reasons += found
        else:
            new = MASK
        if not reasons:
            return value, ""
        if self.policy.redaction.value_action == "drop" and any(r != "url_secret" for r in reasons):
            return None, reasons[0]
        return new, reasons[0]

    def _detect(self, text: str, found: list[str]) -> str:
        """One round of the detectors; what they wrote before (the mask, ``hash:<16 hex>``) is left
        out of it, so a hash is never hashed again and its digits are never a card number."""
        if MASK not in text and "hash:" not in text:  # the common case: nothing to leave out
            local: list[str] = []
            try:
                new = self._detect_in(text, local)
            except UnicodeEncodeError:  # a lone surrogate
                pass
            else:
                found += local
                return new
        parts = _REDACTED.split(text)  # text, redacted, text, ..., text
        for i in range(0, len(parts), 2):
            if parts[i] and self._maybe_sensitive.search(parts[i]):
                parts[i] = self._detect_in(parts[i], found)
        return "".join(parts)

    def _detect_in(self, text: str, found: list[str]) -> str:
        """Each detector of the policy once over ``text``; the reason of each that changed it is
        appended to ``found``."""
        detect = self.policy.redaction.detect
        new = text
        if "bearer" in detect:
            replaced = _BEARER.sub(lambda m: "Bearer " + self._replacement(m.group(0)), new)
            if replaced != new:
                new = replaced
                found.append("bearer_token")
        if "basic" in detect:
            replaced = _BASIC.sub(lambda m: "Basic " + self._replacement(m.group(1)) if _is_basic_credential(m.group(1))
                                  else m.group(0), new)
            if replaced != new:
                new = replaced
                found.append("basic_credentials")
        if "card" in detect:
            def card(m: re.Match[str]) -> str:
                digits = re.sub(r"\D", "", m.group(0))
                return self._replacement(m.group(0)) if 13 <= len(digits) <= 19 and _luhn(digits) else m.group(0)
            replaced = _CARD.sub(card, new)
            if replaced != new:
                new = replaced
                found.append("card_number")
        if "url_credentials" in detect:
            replaced = _URL_CREDENTIALS.sub(lambda m: m.group(1) + self._replacement(m.group(2)) + "@", new)
            if replaced != new:
                new = replaced
                found.append("url_credentials")
        if "email" in detect:
            replaced = _EMAIL.sub(lambda m: self._replacement(m.group(0)), new)
            if replaced != new:
                new = replaced
                found.append("email")
        if self._query is not None:  # an empty value has nothing to mask
            replaced = self._query.sub(lambda m: m.group(1) + MASK if m.end() > m.end(1) else m.group(0), new)
            if replaced != new:
                new = replaced
                found.append("url_secret")
        if "assignment" in detect:
            replaced = _ASSIGNMENT.sub(lambda m: m.group(1) + self._assigned(m.group(2)), new)
            if replaced != new:
                new = replaced
                found.append("secret_assignment")
        return new

    def _assigned(self, value: str) -> str:
        """An assigned value replaced; a quoted one whole, inside its quotes."""
        quote = value[0]
        if quote in "\"'" and len(value) > 1 and value[-1] == quote:
            inner = value[1:-1]
            return value if inner == MASK else quote + self._replacement(inner) + quote
        if quote in "\"'":  # an opening quote that is not closed: the word after it
            return value if value[1:] == MASK else quote + self._replacement(value[1:])
        return value if value == MASK else self._replacement(value)

    def _scrub_json(self, value: str) -> tuple[str | None, str] | None:
        """A JSON object or array with the key rules and detectors applied inside; None when the
        value is not JSON. Unchanged values keep their bytes.

        orjson reads the JSON it writes itself (the decoder's kvlist and array values) back to the
        same bytes; anything else (duplicate keys, which orjson reads as the last one; numbers a
        double cannot hold; NaN; lone surrogate escapes; other spacing) is read by ``json`` with every
        member and number as written, so each duplicate is checked and a rewrite keeps the numbers'
        text."""
        try:
            data = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            if str(exc).startswith("depth limit"):  # JSON too deep to look into: nothing of it is kept
                return MASK, "too_deep_to_read"
            data = None
        if data is not None and orjson.dumps(data) == value.encode():
            dump = _orjson_sorted
        else:
            data = _read_json_exactly(value)
            dump = _dump_exactly
        if not isinstance(data, (dict, list)):
            return None
        reasons: list[str] = []
        try:
            cleaned = self._walk_json(data, 1, reasons)
        except _TooDeep:
            return MASK, "too_deep_to_read"
        if not reasons:
            return value, ""
        return dump(cleaned), reasons[0]

    def _walk_json(self, node: Any, depth: int, reasons: list[str]) -> Any:
        if depth > _MAX_JSON_DEPTH:
            raise _TooDeep
        if isinstance(node, (dict, _Members)):
            members = node.items() if isinstance(node, dict) else node
            kept = []
            for key, item in members:
                drop = self.key_drop(key)
                if drop:
                    reasons.append(drop)
                    continue
                item = self._json_item(item, depth, reasons)
                if item is not _DROPPED:
                    kept.append((key, item))
            return dict(kept) if isinstance(node, dict) else _Members(kept)
        items = []
        for item in node:
            item = self._json_item(item, depth, reasons)
            if item is not _DROPPED:
                items.append(item)
        return items

    def _json_item(self, item: Any, depth: int, reasons: list[str]) -> Any:
        """One value inside JSON, cleaned; ``_DROPPED`` when the detectors drop it. Numbers meet
        the detectors as written (a card number may be sent as a number)."""
        if isinstance(item, (dict, list)):
            return self._walk_json(item, depth + 1, reasons)
        if isinstance(item, str):
            text = item
        else:
            if isinstance(item, _Number):
                text = item.text
            elif isinstance(item, (int, float)) and not isinstance(item, bool):
                text = repr(item)
            else:  # true, false, null
                return item
            if len(text) < _CARD_DIGITS:
                return item
        new, reason = self.scrub(text)
        if not reason:
            return item
        reasons.append(reason)
        return _DROPPED if new is None else new

    def _scrub_json_text(self, value: str) -> tuple[str | None, str]:
        """Text that looks like JSON but that no JSON reader takes: the key rules on each quoted key
        followed by a colon (the value after a dropped key is masked; an object or array there, to
        the end of the text), then the detectors on the whole."""
        pieces, last, key_reason = [], 0, ""
        # RE2 reads UTF-8: a lone surrogate is read as U+FFFD (one character for one: same offsets)
        readable = _SURROGATE.sub("\ufffd", value) if not value.isascii() else value
        for m in _JSON_MEMBER.finditer(readable):
            drop = self.key_drop(_unquote(m.group(1)))
            if not drop:
                continue
            start, end, found = m.start(2), m.end(2), m.group(2)
            quote = found[:1] if found[:1] in ("'", '"') else '"'
            if not found and value[start:start + 1] in ("{", "["):
                end = len(value)
            elif found.strip("'\"") == MASK:
                continue  # masked before
            pieces += (value[last:start], quote, MASK, quote)
            last, key_reason = end, key_reason or drop
            if end == len(value):
                break
        masked = "".join(pieces) + value[last:] if pieces else value
        new, reason = self._scrub_text(masked)
        return new, key_reason or reason

    def _top_k_for(self, rule: CardinalityRule, signal: str, key: str) -> TopK:
        ident = (self._rule_index[id(rule)], signal, key)
        top = self._top_k.get(ident)
        if top is None:
            top = self._top_k[ident] = TopK(rule.k, rule.window_s)
        top.advance(self._now_s)
        return top

    def _apply_rules(self, value: str, rules: tuple[CardinalityRule, ...], counts: Counter,
                     signal: str = "", key: str = "", n: int = 1) -> str:
        for rule in rules:
            if rule.type == "top_k":
                new = self._top_k_for(rule, signal, key).map(value)
                if new != value:
                    counts[("cardinality", "top_k")] += n
                value = new
                continue
            if rule.type == "hash":
                value = f"bucket_{stable_hash(rule.seed, value) % rule.buckets}"
                counts[("cardinality", "hash")] += n
            elif rule.type == "template":
                templated = template_path(value)
                if templated != value:
                    counts[("cardinality", "template")] += n
                value = templated
            elif rule.type == "truncate_hash" and len(value) > rule.max_length:
                value = f"hash:{stable_hash(rule.seed, value):016x}"
                counts[("cardinality", "truncate_hash")] += n
        return value

    # ------------------------------------------------------------ maps and batches

    def clean_map(self, signal: str, attrs: dict[str, str], counts: Counter) -> dict[str, str]:
        """The map with the policy applied; the same object when nothing changed.

        The common case is a kept key with no URL templating and no rule, whose value the detectors
        have seen before and left alone: two dict lookups, no call. Everything else takes the full path.
        """
        plain = self._plain_keys.get(signal)
        if plain is not None and plain.issuperset(attrs) and self._clean_values.issuperset(attrs.values()):
            return attrs  # every key plain, every value passed before: set operations, no Python loop
        plans = self._plans(signal)
        values = self._value_cache
        out: dict[str, str] | None = None
        for key, value in attrs.items():
            plan = plans.get(key)
            if plan is None:
                plan = self._remember_plan(plans, signal, key)
            if plan is _PLAIN:
                seen = values.get(value)
                if seen is not None and not seen[1]:
                    continue  # a plain key, a value the detectors already passed
            new = self._planned_value(plan, signal, key, value, counts)
            if new != value:
                if out is None:
                    out = {k: v for k, v in attrs.items()}
                if new is None:
                    del out[key]
                else:
                    out[key] = new
        return attrs if out is None else out

    def map_value(self, signal: str, key: str, value: str, counts: Counter, n: int = 1) -> str | None:
        """What one (key, value) pair of a map becomes: its new value, or None when it is dropped,
        as ``clean_map`` decides it; what changed is counted ``n`` times (the maps holding it)."""
        plans = self._plans(signal)
        plan = plans.get(key)
        if plan is None:
            plan = self._remember_plan(plans, signal, key)
        return self._planned_value(plan, signal, key, value, counts, n)

    def advance_to(self, newest_ns: int) -> None:
        """Move the ``top_k`` windows' clock to a batch's newest record time (never back)."""
        self._now_s = max(self._now_s, newest_ns // 1_000_000_000)

    def key_mode(self, signal: str, key: str) -> int:
        """How a key's values are decided: 0 by the detectors alone (``_PLAIN``), 1 by the detectors
        then URL templating, 2 otherwise (dropped keys, cardinality rules)."""
        plans = self._plans(signal)
        plan = plans.get(key)
        if plan is None:
            plan = self._remember_plan(plans, signal, key)
        if plan is _PLAIN:
            return 0
        if plan[0] == "keep" and plan[1] and not plan[2]:
            return 1
        return 2

    def ascii_query_secrets(self) -> list[str] | None:
        """The query-secret names (lowercase) when all are ASCII, else None: Python's
        case-insensitive matching folds some other letters onto ASCII ones (``ſ`` matches ``s``), so
        only ASCII names can be matched byte by byte (``streams.otlp._native.maybe_sensitive``)."""
        names = sorted(self._secrets)
        return names if all(n.isascii() for n in names) else None

    def per_value(self, signal: str) -> bool:
        """Whether every decision for this signal depends on the value alone (no ``top_k`` rule,
        whose output depends on what came before): then it can be made once per distinct value."""
        return not any(r.type == "top_k" and signal in r.signals for r in self.policy.rules)

    def _planned_value(self, plan: tuple[Any, ...], signal: str, key: str, value: str, counts: Counter,
                       n: int = 1) -> str | None:
        if plan[0] == "drop":
            counts[("redaction" if plan[1] != "cardinality_drop" else "cardinality", plan[1])] += n
            return None
        new, reason = self.scrub(value)
        if reason:
            counts[("redaction", reason)] += n
        _, template_url, rules = plan
        if new is not None and template_url:
            templated = template_path(new)
            if templated != new:
                counts[("templating", "url")] += n
            new = templated
        if new is not None and rules:
            new = self._apply_rules(new, rules, counts, signal, key, n)
        return new

    def text_value(self, value: str, counts: Counter, n: int = 1) -> str:
        """What a value of a text column becomes (``clean_texts`` of one value held by ``n`` rows)."""
        if not value or value in self._clean_values:
            return value
        new, reason = self.scrub(value)
        if not reason:
            return value
        counts[("redaction", reason)] += n
        return MASK if new is None else new

    def clean_texts(self, values: list[str], counts: Counter) -> list[str]:
        """A text column through the detectors (a value to drop becomes the mask: a column has a
        value in every row); the same list when nothing changed."""
        todo = set(values).difference(self._clean_values)
        todo.discard("")
        changes: dict[str, tuple[str, str]] = {}
        for value in todo:
            new, reason = self.scrub(value)
            if reason:
                changes[value] = (MASK if new is None else new, reason)
        if not changes:
            return values
        out = []
        for value in values:
            change = changes.get(value)
            if change is None:
                out.append(value)
            else:
                out.append(change[0])
                counts[("redaction", change[1])] += 1
        return out

    def _clean_text_cells(self, cells: list[Any], counts: Counter) -> list[Any]:
        """An array-of-text column (event names, link trace states...) through the detectors."""
        flat = list(chain.from_iterable(cells))
        cleaned = self.clean_texts(flat, counts)
        if cleaned is flat:
            return cells
        out, position = [], 0
        for cell in cells:
            size = len(cell)
            out.append(cleaned[position:position + size] if size else cell)
            position += size
        return out

    def _clean_column(self, signal: str, name: str, values: list[Any], counts: Counter,
                      shared: dict[int, dict[str, str]]) -> list[Any]:
        """One column with the policy applied, chosen by what its cells hold; the same list when
        nothing changed. Cells that are not text, maps or arrays of them (numbers, times) pass."""
        kind = _cell_kind(values)
        if kind == "text":
            return self.clean_texts(values, counts)
        if kind == "texts":
            return self._clean_text_cells(values, counts)
        if kind == "map":
            share = name in SHARED_MAP_COLUMNS
            out, changed = [], False
            for attrs in values:
                if not attrs:
                    out.append(attrs)
                    continue
                cleaned = shared.get(id(attrs)) if share else None
                if cleaned is None:
                    cleaned = self.clean_map(signal, attrs, counts)
                    if share:
                        shared[id(attrs)] = cleaned
                changed = changed or cleaned is not attrs
                out.append(cleaned)
            return out if changed else values
        if kind == "maps":
            out, changed = [], False
            for cell in values:
                if cell:
                    cleaned = [self.clean_map(signal, a, counts) for a in cell]
                    if any(c is not a for c, a in zip(cleaned, cell)):
                        changed = True
                        cell = cleaned
                out.append(cell)
            return out if changed else values
        return values

    def apply(self, batch: ColumnBatch, latest_ns: int | None = None) -> tuple[ColumnBatch, Counter]:
        """``latest_ns``: the latest record time to believe (the messages' time plus the clock
        skew, see ``Stages``); ``top_k`` windows never move past it, so one record stamped far in
        the future cannot freeze them (such rows are counted as ``future_time``)."""
        counts: Counter = Counter()
        table = batch.table
        signal = SIGNAL_OF_TABLE.get(table, "metrics")
        columns = dict(batch.columns)
        keep_rows: list[int] | None = None
        for name in TIME_COLUMNS:
            if columns.get(name):
                newest = max(columns[name])
                if latest_ns is not None and newest > latest_ns:
                    counts[("labels", "future_time")] += sum(1 for t in columns[name] if t > latest_ns)
                    newest = latest_ns
                self.advance_to(newest)
                break

        if signal == "metrics" and self.policy.allowed_metric_names:
            names = columns["MetricName"]
            allowed = {n: any(fnmatch.fnmatchcase(n, p) for p in self.policy.allowed_metric_names) for n in set(names)}
            if not all(allowed.values()):
                keep_rows = [i for i, n in enumerate(names) if allowed[n]]
                counts[("metrics", "unregistered_name")] += len(names) - len(keep_rows)
                columns = {name: [values[i] for i in keep_rows] for name, values in columns.items()}

        shared: dict[int, dict[str, str]] = {}  # resource and scope maps are shared by many rows
        # maps first: span names are templated with the (cleaned) http.route
        names = sorted(columns, key=lambda n: n == "SpanName")
        for name in names:
            if name in EXEMPT_COLUMNS:
                continue
            if name == "SpanName" and table == "otel_traces":
                columns[name] = self._span_names(columns[name], columns["SpanAttributes"], counts)
            else:
                columns[name] = self._clean_column(signal, name, columns[name], counts, shared)
        return ColumnBatch(table, columns, batch.source), counts


    def _span_names(self, names: list[str], attrs: list[dict[str, str]], counts: Counter) -> list[str]:
        """Templated and scrubbed span names, memoised by (name, http.route): names repeat."""
        out = []
        template = self.policy.template_span_names
        memo = self._name_cache
        for name, a in zip(names, attrs):
            route = a.get("http.route", "") if (a and template and "/" in name) else ""
            done = memo.get((name, route))
            if done is None:
                done = self._span_name(name, route)
            new, templated, redacted = done
            if templated:
                counts[("templating", templated)] += 1
            if redacted:
                counts[("redaction", redacted)] += 1
            out.append(new)
        return out

    def span_name(self, name: str, route: str, counts: Counter, n: int = 1) -> str:
        """What a span name becomes, given its span's ``http.route`` attribute ("" without one; cleaned
        already), for ``n`` rows (``_span_names`` of one distinct pair)."""
        route = route if (self.policy.template_span_names and "/" in name) else ""
        done = self._name_cache.get((name, route))
        if done is None:
            done = self._span_name(name, route)
        new, templated, redacted = done
        if templated:
            counts[("templating", templated)] += n
        if redacted:
            counts[("redaction", redacted)] += n
        return new

    def _span_name(self, name: str, route: str) -> tuple[str, str, str]:
        new = name
        templated = redacted = ""
        if self.policy.template_span_names and ("/" in name):
            new = template_span_name(name, route)
            if new != name:
                templated = "span_name"
        scrubbed, reason = self.scrub(new)
        if reason:
            redacted = reason
            new = MASK if scrubbed is None else scrubbed
        memo = self._name_cache
        if len(memo) >= _CACHE_LIMIT:
            memo.clear()
        done = memo[(name, route)] = (new, templated, redacted)
        return done
