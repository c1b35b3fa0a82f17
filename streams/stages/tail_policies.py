"""Tail sampling policies: which whole traces to keep, chosen by a ``type`` field.

A policy file (TOML) lists ``[[policies]]``; a trace is kept when any policy keeps it (as the
Collector's tail sampling processor does). Types:

- ``always``;
- ``probabilistic`` (``rate``): consistent with head sampling, by the trace's randomness;
- ``status_code`` (``status_codes``, default ``["Error"]``): a span with one of those statuses;
- ``latency`` (``threshold_ms``, ``scope`` = ``root`` or ``any``): the root span (or any span) lasted
  at least that long;
- ``string_attribute`` (``key``, ``values``, ``invert``), ``numeric_attribute`` (``key``, ``min``,
  ``max``), ``boolean_attribute`` (``key``, ``value``): some span (or its resource) has the attribute;
- ``span_count`` (``min_spans``, ``max_spans``);
- ``rate_limiting`` (``spans_per_second``): per service of the root span, keep traces while the
  service's spans in the current second stay under the limit;
- ``and`` (``policies``): every sub-policy keeps the trace;
- ``composite`` (``max_total_spans_per_second``, ``policies``, ``shares`` in percent, in order): the
  first sub-policy that keeps the trace and still has room in its share of the spans per second.

Weights: a trace kept by a policy that does not depend on chance has probability 1 of being kept
(weight 1); a trace kept only by ``probabilistic`` policies has weight 1 / the highest of their
rates, so ``sum(SampleWeight)`` stays an unbiased estimate. Rate limits keep by arrival, not by
chance: their traces get weight 1, and the estimate undercounts what they dropped (counted as
``rate_limited``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from streams.config import ProblemsError, read_toml
from streams.stages.sampling import SamplingError, probability_to_threshold, trace_randomness

TYPES = ("always", "probabilistic", "status_code", "latency", "string_attribute", "numeric_attribute",
         "boolean_attribute", "span_count", "rate_limiting", "and", "composite")


class TailPolicyError(ProblemsError):
    what = "tail sampling policy"


@dataclass(frozen=True)
class Policy:
    name: str
    type: str
    params: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)
    children: tuple["Policy", ...] = ()
    shares: tuple[float, ...] = ()


@dataclass
class TraceView:
    """What the policies look at: one trace's spans as columns (a slice of a traces batch)."""

    trace_id: str
    columns: dict[str, list[Any]]
    root: int | None  # index of the root span (no parent), if it arrived

    @property
    def span_count(self) -> int:
        return len(self.columns["SpanId"])


@dataclass(frozen=True)
class Verdict:
    keep: bool
    probability: float  # the chance the trace had of being kept: weight = 1 / probability
    policy: str  # the policy that decided ("" when dropped)


# ------------------------------------------------------------------ parsing


_PARAMS: dict[str, dict[str, type | tuple[type, ...]]] = {
    "always": {},
    "probabilistic": {"rate": (int, float)},
    "status_code": {"status_codes": list},
    "latency": {"threshold_ms": (int, float), "scope": str},
    "string_attribute": {"key": str, "values": list, "invert": bool},
    "numeric_attribute": {"key": str, "min": (int, float), "max": (int, float)},
    "boolean_attribute": {"key": str, "value": bool},
    "span_count": {"min_spans": int, "max_spans": int},
    "rate_limiting": {"spans_per_second": (int, float)},
    "and": {"policies": list},
    "composite": {"max_total_spans_per_second": (int, float), "policies": list, "shares": list},
}
_REQUIRED = {"probabilistic": ("rate",), "latency": ("threshold_ms",), "string_attribute": ("key", "values"),
             "numeric_attribute": ("key",), "boolean_attribute": ("key", "value"), "span_count": ("min_spans",),
             "rate_limiting": ("spans_per_second",), "and": ("policies",),
             "composite": ("max_total_spans_per_second", "policies", "shares")}


def _parse_one(raw: Any, path: str, problems: list[str]) -> Policy | None:
    if not isinstance(raw, dict):
        problems.append(f"{path}: must be a table")
        return None
    kind = raw.get("type")
    if kind not in TYPES:
        problems.append(f"{path}.type: must be one of {', '.join(TYPES)}, got {kind!r}")
        return None
    allowed = _PARAMS[kind]
    ok = True
    for key in sorted(set(raw) - set(allowed) - {"type", "name"}):
        problems.append(f"{path}.{key}: unknown setting for a {kind} policy")
        ok = False
    for key in _REQUIRED.get(kind, ()):
        if key not in raw:
            problems.append(f"{path}.{key}: required for a {kind} policy")
            ok = False
    for key, typ in allowed.items():
        if key in raw and (not isinstance(raw[key], typ) or (typ is not bool and isinstance(raw[key], bool))):
            problems.append(f"{path}.{key}: wrong type {type(raw[key]).__name__}")
            ok = False
    if not ok:
        return None
    params = {k: v for k, v in raw.items() if k not in ("type", "name", "policies", "shares")}
    if kind == "probabilistic":
        try:
            probability_to_threshold(float(raw["rate"]))
        except SamplingError as exc:
            problems.append(f"{path}.rate: {exc}")
            return None
    if kind == "latency" and raw.get("scope", "root") not in ("root", "any"):
        problems.append(f"{path}.scope: must be root or any")
        return None
    for key in ("spans_per_second", "max_total_spans_per_second", "threshold_ms"):
        if key in raw and raw[key] <= 0:
            problems.append(f"{path}.{key}: must be > 0")
            return None
    children: list[Policy] = []
    shares: tuple[float, ...] = ()
    if kind in ("and", "composite"):
        if not raw["policies"]:
            problems.append(f"{path}.policies: needs at least one policy")
            return None
        for i, child in enumerate(raw["policies"]):
            parsed = _parse_one(child, f"{path}.policies[{i}]", problems)
            if parsed is not None:
                children.append(parsed)
        if kind == "composite":
            shares = tuple(raw["shares"])
            if len(shares) != len(raw["policies"]) or not all(isinstance(s, (int, float)) and s > 0 for s in shares):
                problems.append(f"{path}.shares: one positive percentage per policy")
                return None
            if sum(shares) > 100:
                problems.append(f"{path}.shares: add up to {sum(shares)}%, more than 100")
                return None
    return Policy(str(raw.get("name", kind)), kind, params, tuple(children), shares)


def parse_policies(data: dict[str, Any]) -> tuple[Policy, ...]:
    problems: list[str] = []
    for key in sorted(set(data) - {"policies"}):
        problems.append(f"{key}: unknown setting")
    raw = data.get("policies", [])
    if not isinstance(raw, list) or not raw:
        problems.append("policies: at least one [[policies]] table is needed")
        raw = []
    out = []
    for i, item in enumerate(raw):
        policy = _parse_one(item, f"policies[{i}]", problems)
        if policy is not None:
            out.append(policy)
    if problems:
        raise TailPolicyError(problems)
    return tuple(out)


DEFAULT_POLICIES = (
    Policy("errors", "status_code", {"status_codes": ["Error"]}),
    Policy("slow", "latency", {"threshold_ms": 1000, "scope": "root"}),
    Policy("baseline", "probabilistic", {"rate": 0.01}),
)


# ------------------------------------------------------------------ evaluation


class RateLimiter:
    """Spans per second per key, by the arrival second (processing time)."""

    def __init__(self) -> None:
        self._second: dict[tuple[int, str], int] = {}
        self._used: dict[tuple[int, str], int] = {}

    def take(self, ident: int, key: str, spans: int, limit: float, now_s: int) -> bool:
        slot = (ident, key)
        if self._second.get(slot) != now_s:
            self._second[slot] = now_s
            self._used[slot] = 0
        if self._used[slot] + spans > limit:
            return False
        self._used[slot] += spans
        return True


def _attr(view: TraceView, key: str) -> list[Any]:
    values = []
    for column in ("SpanAttributes", "ResourceAttributes"):
        for attrs in view.columns.get(column, ()):
            if attrs and key in attrs:
                values.append(attrs[key])
    return values


def _matches(policy: Policy, view: TraceView, limiter: RateLimiter, now_s: int) -> tuple[bool, float]:
    """(keeps the trace, probability that it did)."""
    p, cols = policy.params, view.columns
    kind = policy.type
    if kind == "always":
        return True, 1.0
    if kind == "probabilistic":
        rate = float(p["rate"])
        return trace_randomness(view.trace_id) >= probability_to_threshold(rate), rate
    if kind == "status_code":
        wanted = {s.lower() for s in p.get("status_codes", ["Error"])}
        return any(str(s).lower() in wanted for s in cols["StatusCode"]), 1.0
    if kind == "latency":
        threshold_ns = float(p["threshold_ms"]) * 1_000_000
        if p.get("scope", "root") == "root":
            durations = [cols["Duration"][view.root]] if view.root is not None else []
        else:
            durations = cols["Duration"]
        return any(d >= threshold_ns for d in durations), 1.0
    if kind == "string_attribute":
        found = any(str(v) in set(p["values"]) for v in _attr(view, p["key"]))
        return found != bool(p.get("invert", False)), 1.0
    if kind == "numeric_attribute":
        lo, hi = p.get("min", float("-inf")), p.get("max", float("inf"))
        for v in _attr(view, p["key"]):
            try:
                if lo <= float(v) <= hi:
                    return True, 1.0
            except ValueError:
                continue
        return False, 1.0
    if kind == "boolean_attribute":
        want = "true" if p["value"] else "false"
        return any(str(v).lower() == want for v in _attr(view, p["key"])), 1.0
    if kind == "span_count":
        n = view.span_count
        return n >= p["min_spans"] and n <= p.get("max_spans", n), 1.0
    if kind == "rate_limiting":
        service = cols["ServiceName"][view.root] if view.root is not None else (cols["ServiceName"] or [""])[0]
        return limiter.take(id(policy), service, view.span_count, float(p["spans_per_second"]), now_s), 1.0
    if kind == "and":
        probability = 1.0
        for child in policy.children:
            keep, prob = _matches(child, view, limiter, now_s)
            if not keep:
                return False, 1.0
            probability = min(probability, prob)
        return True, probability
    if kind == "composite":
        total = float(p["max_total_spans_per_second"])
        for i, (child, share) in enumerate(zip(policy.children, policy.shares)):
            keep, prob = _matches(child, view, limiter, now_s)
            if keep and limiter.take(id(policy) * 1000 + i, "", view.span_count, total * share / 100, now_s):
                return True, prob
        return False, 1.0
    raise ValueError(f"unknown policy type {kind!r}")


def evaluate(policies: tuple[Policy, ...], view: TraceView, limiter: RateLimiter, now_s: int) -> Verdict:
    """Keep when any policy keeps; the probability is 1 when a policy that does not depend on
    chance keeps, else the highest rate among the probabilistic policies that keep."""
    best: Verdict | None = None
    for policy in policies:
        keep, probability = _matches(policy, view, limiter, now_s)
        if not keep:
            continue
        if probability >= 1.0:
            return Verdict(True, 1.0, policy.name)
        if best is None or probability > best.probability:
            best = Verdict(True, probability, policy.name)
    return best if best is not None else Verdict(False, 1.0, "")


def load_policies(path: str | None) -> tuple[Policy, ...]:
    if not path:
        return DEFAULT_POLICIES
    return parse_policies(read_toml(path, "tail policy", TailPolicyError))
