"""The label stage: redaction, templating and cardinality rules over one columnar batch.

``LabelStage(policy).apply(batch) -> (batch, counts)`` returns a new batch (input untouched) in
which, for every attribute map (span, log, metric point, event, link, resource and scope):

- keys matching the block list are dropped (allow mode: keys not on the allow list are dropped);
- values that look like bearer tokens, card numbers (Luhn-checked) or emails are masked, dropped
  or hashed (stable, seeded), and secrets in URL query strings (``?token=...``) are masked, also in
  span names and log bodies;
- URL attributes and ``METHOD /path`` span names are templated (``http.route`` wins);
- cardinality rules apply by key: ``hash`` → ``bucket_N`` of a seeded xxhash, ``template``,
  ``truncate_hash`` (long values → ``hash:<16 hex>``), ``top_k`` (the K most frequent values of
  the previous window stay, the rest become ``__other__``), ``drop``;
- metric points whose name is not allowed are removed.

``counts`` maps (stage, reason) to how many values or rows were changed or dropped. Decisions per
key and per value are memoised (bounded caches), so repeated keys and values cost a lookup.
Deterministic: the same policy gives the same output in every worker and on replay (never
Python's ``hash()``). The one exception is ``top_k``, which by nature depends on what was seen
before: its windows follow record time (the newest timestamp of each batch), so the same records in
the same order give the same output, but its counts are per process. Metrics are routed by name,
so a metric's ``top_k`` counts are complete; for spans and logs they are those of one worker.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from typing import Any

import re2
import xxhash

from streams.otlp.batch import ColumnBatch
from streams.stages.label_policy import CardinalityRule, LabelPolicy
from streams.stages.templating import template_path, template_span_name

MAP_COLUMNS = ("SpanAttributes", "LogAttributes", "Attributes", "ResourceAttributes", "ScopeAttributes")
NESTED_MAP_COLUMNS = ("Events.Attributes", "Links.Attributes", "Exemplars.FilteredAttributes")
SIGNAL_OF_TABLE = {"otel_traces": "traces", "otel_logs": "logs"}
MASK = "****"
OTHER = "__other__"
_CACHE_LIMIT = 200_000
TIME_COLUMNS = ("Timestamp", "TimeUnix")
_PLAIN = ("keep", False, ())  # a kept key with no URL templating and no rule: only the detectors apply

_BEARER = re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/=-]{8,}")
_CARD = re.compile(r"(?<!\d)(?:\d[ -]?){12,18}\d(?!\d)")
# RE2 (linear time): Python's backtracking engine is quadratic on "a" * n + "@" with this pattern.
_EMAIL = re2.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# anything a detector could match: '@' (email), 'earer' (bearer), 13 digits (card), '=' (query)
_MAYBE_SENSITIVE = re.compile(r"@|(?i:bearer)|\d[\d -]{11,}\d|[?&][A-Za-z_-]+=")


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


class LabelStage:
    def __init__(self, policy: LabelPolicy):
        self.policy = policy
        red = policy.redaction
        self._block = [p.lower() for p in red.block_keys]
        self._allow = [p.lower() for p in red.allow_keys]
        self._secrets = {s.lower() for s in red.query_secrets}
        self._query = re.compile(r"([?&;](?:" + "|".join(re.escape(s) for s in sorted(self._secrets)) +
                                 r")=)[^&#\s;\"']*", re.IGNORECASE) if self._secrets else None
        self._url_keys = set(policy.template_url_keys)
        self._value_cache: dict[str, tuple[str | None, str]] = {}
        self._plans_by_scope: dict[tuple[str, bool], dict[str, tuple[Any, ...]]] = {}  # key plans, by scope
        self._name_cache: dict[tuple[str, str], tuple[str, str, str]] = {}  # (span name, route) → result
        self._plain_keys: dict[tuple[str, bool], set[str]] = {}  # keys whose plan is _PLAIN, by scope
        self._clean_values: set[str] = set()  # values the detectors passed unchanged
        self._top_k: dict[tuple[int, str, str], TopK] = {}  # (rule index, signal, key)
        self._rule_index = {id(r): i for i, r in enumerate(policy.rules)}
        self._now_s = 0

    # ------------------------------------------------------------ decisions (memoised)

    def _key_plan(self, signal: str, key: str, record_level: bool) -> tuple[Any, ...]:
        """('drop', reason) | ('keep', template_url: bool, rules: tuple[CardinalityRule, ...]).

        The block list applies to every map; allow mode to record-level maps (span, log, point,
        event, link attributes), not to resource and scope attributes that name the sender.
        """
        plan: tuple[Any, ...] | None = None
        lowered = key.lower()
        if any(fnmatch.fnmatchcase(lowered, p) for p in self._block):
            plan = ("drop", "blocked_key")
        elif record_level and self.policy.redaction.mode == "allow":
            if not any(fnmatch.fnmatchcase(lowered, p) for p in self._allow):
                plan = ("drop", "not_allowed")
        if plan is None:
            rules = tuple(r for r in self.policy.rules if signal in r.signals and fnmatch.fnmatchcase(lowered, r.key.lower()))
            if any(r.type == "drop" for r in rules):
                plan = ("drop", "cardinality_drop")
            elif key not in self._url_keys and not rules:
                plan = _PLAIN
            else:
                plan = ("keep", key in self._url_keys, rules)
        return plan

    def _plans(self, signal: str, record_level: bool) -> dict[str, tuple[Any, ...]]:
        """The memoised plans of one scope (bounded: all scopes are forgotten past the limit)."""
        plans = self._plans_by_scope.get((signal, record_level))
        if plans is None:
            plans = self._plans_by_scope[(signal, record_level)] = {}
        return plans

    def _remember_plan(self, plans: dict[str, tuple[Any, ...]], signal: str, key: str,
                       record_level: bool) -> tuple[Any, ...]:
        if sum(len(p) for p in self._plans_by_scope.values()) >= _CACHE_LIMIT:
            for known in self._plans_by_scope.values():
                known.clear()
            self._plain_keys.clear()
        plan = plans[key] = self._key_plan(signal, key, record_level)
        if plan is _PLAIN:
            self._plain_keys.setdefault((signal, record_level), set()).add(key)
        return plan

    def scrub(self, value: str) -> tuple[str | None, str]:
        """(new value or None to drop the attribute, reason or "") after the value detectors."""
        cached = self._value_cache.get(value)
        if cached is not None:
            return cached
        result: tuple[str | None, str] = (value, "")
        if _MAYBE_SENSITIVE.search(value):
            result = self._scrub_slow(value)
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

    def _scrub_slow(self, value: str) -> tuple[str | None, str]:
        detect = self.policy.redaction.detect
        reason = ""
        new = value
        if "bearer" in detect and _BEARER.search(new):
            new, reason = _BEARER.sub(lambda m: "Bearer " + self._replacement(m.group(0)), new), "bearer_token"
        if "card" in detect:
            def card(m: re.Match[str]) -> str:
                digits = re.sub(r"\D", "", m.group(0))
                return self._replacement(m.group(0)) if 13 <= len(digits) <= 19 and _luhn(digits) else m.group(0)
            replaced = _CARD.sub(card, new)
            if replaced != new:
                new, reason = replaced, reason or "card_number"
        if "email" in detect:
            replaced = _EMAIL.sub(lambda m: self._replacement(m.group(0)), new)
            if replaced != new:
                new, reason = replaced, reason or "email"
        if self._query is not None:
            replaced = self._query.sub(lambda m: m.group(1) + MASK, new)
            if replaced != new:
                new, reason = replaced, reason or "url_secret"
        if reason and self.policy.redaction.value_action == "drop" and reason != "url_secret":
            return None, reason
        return new, reason

    def _top_k_for(self, rule: CardinalityRule, signal: str, key: str) -> TopK:
        ident = (self._rule_index[id(rule)], signal, key)
        top = self._top_k.get(ident)
        if top is None:
            top = self._top_k[ident] = TopK(rule.k, rule.window_s)
        top.advance(self._now_s)
        return top

    def _apply_rules(self, value: str, rules: tuple[CardinalityRule, ...], counts: Counter,
                     signal: str = "", key: str = "") -> str:
        for rule in rules:
            if rule.type == "top_k":
                new = self._top_k_for(rule, signal, key).map(value)
                if new != value:
                    counts[("cardinality", "top_k")] += 1
                value = new
                continue
            if rule.type == "hash":
                value = f"bucket_{stable_hash(rule.seed, value) % rule.buckets}"
                counts[("cardinality", "hash")] += 1
            elif rule.type == "template":
                templated = template_path(value)
                if templated != value:
                    counts[("cardinality", "template")] += 1
                value = templated
            elif rule.type == "truncate_hash" and len(value) > rule.max_length:
                value = f"hash:{stable_hash(rule.seed, value):016x}"
                counts[("cardinality", "truncate_hash")] += 1
        return value

    # ------------------------------------------------------------ maps and batches

    def clean_map(self, signal: str, attrs: dict[str, str], counts: Counter, record_level: bool = True) -> dict[str, str]:
        """The map with the policy applied; the same object when nothing changed.

        The common case is a kept key with no URL templating and no rule, whose value the detectors
        have seen before and left alone: two dict lookups, no call. Everything else takes the full path.
        """
        plain = self._plain_keys.get((signal, record_level))
        if plain is not None and plain.issuperset(attrs) and self._clean_values.issuperset(attrs.values()):
            return attrs  # every key plain, every value passed before: set operations, no Python loop
        plans = self._plans(signal, record_level)
        values = self._value_cache
        out: dict[str, str] | None = None
        for key, value in attrs.items():
            plan = plans.get(key)
            if plan is None:
                plan = self._remember_plan(plans, signal, key, record_level)
            if plan is _PLAIN:
                seen = values.get(value)
                if seen is not None and not seen[1]:
                    continue  # a plain key, a value the detectors already passed
            if plan[0] == "drop":
                counts[("redaction" if plan[1] != "cardinality_drop" else "cardinality", plan[1])] += 1
                if out is None:
                    out = {k: v for k, v in attrs.items()}
                del out[key]
                continue
            new, reason = self.scrub(value)
            if reason:
                counts[("redaction", reason)] += 1
            _, template_url, rules = plan
            if new is not None and template_url:
                templated = template_path(new)
                if templated != new:
                    counts[("templating", "url")] += 1
                new = templated
            if new is not None and rules:
                new = self._apply_rules(new, rules, counts, signal, key)
            if new != value:
                if out is None:
                    out = {k: v for k, v in attrs.items()}
                if new is None:
                    del out[key]
                else:
                    out[key] = new
        return attrs if out is None else out

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
                self._now_s = max(self._now_s, newest // 1_000_000_000)
                break

        if signal == "metrics" and self.policy.allowed_metric_names:
            names = columns["MetricName"]
            allowed = {n: any(fnmatch.fnmatchcase(n, p) for p in self.policy.allowed_metric_names) for n in set(names)}
            if not all(allowed.values()):
                keep_rows = [i for i, n in enumerate(names) if allowed[n]]
                counts[("metrics", "unregistered_name")] += len(names) - len(keep_rows)
                columns = {name: [values[i] for i in keep_rows] for name, values in columns.items()}

        shared: dict[int, dict[str, str]] = {}  # resource and scope maps are shared by many rows
        for name in MAP_COLUMNS:
            if name not in columns:
                continue
            values = columns[name]
            new_values = []
            changed = False
            for attrs in values:
                if not attrs:
                    new_values.append(attrs)
                    continue
                ident = id(attrs)
                cleaned = shared.get(ident)
                if cleaned is None:
                    record_level = name not in ("ResourceAttributes", "ScopeAttributes")
                    cleaned = self.clean_map(signal, attrs, counts, record_level)
                    if not record_level:
                        shared[ident] = cleaned
                changed = changed or cleaned is not attrs
                new_values.append(cleaned)
            if changed:
                columns[name] = new_values
        for name in NESTED_MAP_COLUMNS:
            if name in columns:
                values = columns[name]
                new_values = [[self.clean_map(signal, a, counts) for a in cell] if cell else cell for cell in values]
                columns[name] = new_values

        if table == "otel_traces":
            columns["SpanName"] = self._span_names(columns["SpanName"], columns["SpanAttributes"], counts)
        elif table == "otel_logs":
            bodies = columns["Body"]
            new_bodies = []
            for body in bodies:
                new, reason = self.scrub(body) if body else (body, "")
                if reason:
                    counts[("redaction", reason)] += 1
                new_bodies.append(MASK if new is None else new)
            columns["Body"] = new_bodies
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
                new = name
                templated = redacted = ""
                if template and ("/" in name):
                    new = template_span_name(name, route)
                    if new != name:
                        templated = "span_name"
                scrubbed, reason = self.scrub(new)
                if reason:
                    redacted = reason
                    new = MASK if scrubbed is None else scrubbed
                if len(memo) >= _CACHE_LIMIT:
                    memo.clear()
                done = memo[(name, route)] = (new, templated, redacted)
            new, templated, redacted = done
            if templated:
                counts[("templating", templated)] += 1
            if redacted:
                counts[("redaction", redacted)] += 1
            out.append(new)
        return out
