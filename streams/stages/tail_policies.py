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

Each type is a pydantic model (a ``TailPolicy``), the list a union discriminated by ``type``.
``parse_policies`` raises ``TailPolicyError`` listing every problem with its path
(``policies[1].threshold_ms: must be > 0``); the checks are strict, as TOML gives the types the
file wrote (no ``"5"`` for 5, no ``1`` for true). ``tail_policy_json_schema()`` is the JSON Schema of
the file, for editors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Callable, Literal, Union, get_args

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ModelWrapValidatorHandler,
                      ValidationError, model_validator)
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError
from pydantic_core.core_schema import ErrorType

from streams.config import ProblemsError, problems_of, read_toml
from streams.stages.sampling import probability_to_threshold, trace_randomness


class TailPolicyError(ProblemsError):
    what = "tail sampling policy"


@dataclass(frozen=True)
class TraceFacts:
    """What every policy but the attribute ones reads of a trace, and what its summary row holds:
    the same whether taken from Python columns (``facts_of``) or from a native block's rows."""

    span_count: int
    statuses: frozenset[str]  # the spans' status codes, lowercase
    max_duration: int | None  # None without spans
    root_duration: int | None  # None without a root span
    root_service: str  # "" without a root span
    root_span: str
    service: str  # the root span's service, else the first span's ("" without spans)
    start: int | None  # earliest Timestamp
    end: int | None  # latest Timestamp + Duration
    errors: int  # spans with status Error

    def merged(self, later: TraceFacts) -> TraceFacts:
        """The facts of this trace's spans followed by ``later``'s (the root is the first one)."""
        has_root = self.root_duration is not None
        if has_root or later.root_duration is None:
            service = self.service if self.span_count else later.service
        else:
            service = later.service
        return TraceFacts(
            self.span_count + later.span_count, self.statuses | later.statuses,
            optional(max, self.max_duration, later.max_duration),
            self.root_duration if has_root else later.root_duration,
            self.root_service if has_root else later.root_service,
            self.root_span if has_root else later.root_span,
            service,
            optional(min, self.start, later.start), optional(max, self.end, later.end), self.errors + later.errors)


def optional(pick: Callable[[int, int], int], a: int | None, b: int | None) -> int | None:
    """``pick(a, b)``, or the one that is not None."""
    return b if a is None else a if b is None else pick(a, b)


@dataclass(frozen=True)
class TraceBounds:
    """Bounds of a trace's facts, read before its spans are decoded and staged: at most these
    spans, a subset of these statuses, no longer durations, and if a root, one of these roots
    (the stages only drop spans; they never change a span's trace id, parent, status or times)."""

    spans: int
    statuses: frozenset[str]  # lowercase
    max_duration: int | None
    max_root_duration: int | None

    def merged(self, other: TraceBounds) -> TraceBounds:
        return TraceBounds(self.spans + other.spans, self.statuses | other.statuses,
                           optional(max, self.max_duration, other.max_duration),
                           optional(max, self.max_root_duration, other.max_root_duration))


def facts_of(columns: dict[str, list[Any]], root: int | None) -> TraceFacts:
    """A trace's facts from its span columns (StatusCode, Duration, ServiceName, SpanName,
    Timestamp) and the index of its root span."""
    n = len(columns["StatusCode"])
    durations, starts, services = columns["Duration"], columns["Timestamp"], columns["ServiceName"]
    statuses = [str(s).lower() for s in columns["StatusCode"]]
    return TraceFacts(
        n, frozenset(statuses), max(durations) if n else None,
        durations[root] if root is not None else None,
        services[root] if root is not None else "",
        columns["SpanName"][root] if root is not None else "",
        services[root] if root is not None else (services or [""])[0],
        min(starts) if n else None, max(t + d for t, d in zip(starts, durations)) if n else None,
        statuses.count("error"))


@dataclass
class TraceView:
    """What the policies look at: one trace's facts, and its spans as columns where an attribute
    policy needs them (a slice of a traces batch; None when the facts came without columns)."""

    trace_id: str
    columns: dict[str, list[Any]] | None
    root: int | None = None  # index of the root span (no parent) in ``columns``, if it arrived
    facts: TraceFacts = None  # type: ignore[assignment]  # from the columns when not given

    def __post_init__(self) -> None:
        if self.facts is None:
            if self.columns is None:
                raise ValueError("a TraceView needs its facts or its columns")
            self.facts = facts_of(self.columns, self.root)

    @property
    def span_count(self) -> int:
        return self.facts.span_count


@dataclass(frozen=True)
class Verdict:
    keep: bool
    probability: float  # the chance the trace had of being kept: weight = 1 / probability
    policy: str  # the policy that decided ("" when dropped)


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
    if view.columns is None:
        raise ValueError("attribute policies need the trace's columns")
    values = []
    for column in ("SpanAttributes", "ResourceAttributes"):
        for attrs in view.columns.get(column, ()):
            if attrs and key in attrs:
                values.append(attrs[key])
    return values


# ------------------------------------------------------------------ checks (ValueError("the problem"))


def _positive(value: float) -> float:
    if value <= 0:
        raise ValueError("must be > 0")
    return value


def _rate(value: float) -> float:
    probability_to_threshold(value)  # SamplingError (a ValueError) names the problem
    return value


Positive = Annotated[float, AfterValidator(_positive), Field(json_schema_extra={"exclusiveMinimum": 0})]
Rate = Annotated[float, AfterValidator(_rate), Field(json_schema_extra={"minimum": 2**-56, "maximum": 1})]


def _list(default: Any = ..., doc: str = "", **kw: Any) -> Any:
    """A list of the file, kept as a tuple (TOML arrays are lists: the tuple itself is not strict)."""
    return Field(default, description=doc, strict=False, **kw)


def _not_empty(problem: str) -> BeforeValidator:
    """At least one item, counted in the file (pydantic's min_length counts the valid ones)."""
    def check(value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError(problem)
        return value
    return BeforeValidator(check)


_MIN_ONE = {"minItems": 1}


# ------------------------------------------------------------------ the policy types


class TailPolicy(BaseModel):
    """What every policy type has; each subclass keeps (or not) a trace by its ``matches``."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    type: str
    name: Annotated[str, BeforeValidator(str)] = Field(  # "" only until _name_defaults_to_type
        "", description="Names the policy in otel_trace_summary.Policy and `sampling check` (default: its type).",
        json_schema_extra=lambda schema: schema.pop("default", None))

    @model_validator(mode="before")
    @classmethod
    def _name_defaults_to_type(cls, data: Any) -> Any:
        if isinstance(data, dict) and "name" not in data and "type" in data:
            return {**data, "name": data["type"]}
        return data

    def matches(self, view: TraceView, limiter: RateLimiter, now_s: int) -> tuple[bool, float]:
        """(keeps the trace, probability that it did)."""
        raise NotImplementedError

    @property
    def bounded(self) -> bool:
        """Whether ``may_match`` can say no: bounded policies decide on bounds alone (False only
        when ``matches`` is False for every trace within them); the others may match any trace,
        or keep by state (rate limits)."""
        return False

    def may_match(self, trace_id: str, bounds: TraceBounds) -> bool:
        """Whether ``matches`` can keep a trace whose facts lie within ``bounds``."""
        return True


class AlwaysPolicy(TailPolicy):
    """Keeps every trace."""

    type: Literal["always"]

    def matches(self, view: TraceView, limiter: RateLimiter, now_s: int) -> tuple[bool, float]:
        return True, 1.0


class ProbabilisticPolicy(TailPolicy):
    """Keeps a share of the traces, consistent with head sampling (by the trace's randomness)."""

    type: Literal["probabilistic"]
    rate: Rate = Field(description="The probability of keeping a trace, in [2^-56, 1].")

    @property
    def bounded(self) -> bool:
        return True

    def matches(self, view: TraceView, limiter: RateLimiter, now_s: int) -> tuple[bool, float]:
        rate = float(self.rate)
        return self._kept(view.trace_id), rate

    def may_match(self, trace_id: str, bounds: TraceBounds) -> bool:
        return self._kept(trace_id)

    def _kept(self, trace_id: str) -> bool:
        return trace_randomness(trace_id) >= probability_to_threshold(float(self.rate))


class StatusCodePolicy(TailPolicy):
    """Keeps a trace with a span of one of these statuses (case-insensitive)."""

    type: Literal["status_code"]
    status_codes: tuple[str, ...] = _list(("Error",), "Span statuses: Unset, Ok, Error.")

    def matches(self, view: TraceView, limiter: RateLimiter, now_s: int) -> tuple[bool, float]:
        return self._any_of(view.facts.statuses), 1.0

    @property
    def bounded(self) -> bool:
        return True

    def may_match(self, trace_id: str, bounds: TraceBounds) -> bool:
        return self._any_of(bounds.statuses)

    def _any_of(self, statuses: frozenset[str]) -> bool:
        return not {s.lower() for s in self.status_codes}.isdisjoint(statuses)


class LatencyPolicy(TailPolicy):
    """Keeps a trace whose root span (or any span) lasted at least ``threshold_ms``."""

    type: Literal["latency"]
    threshold_ms: Positive = Field(description="Minimum duration, in milliseconds (> 0).")
    scope: Literal["root", "any"] = Field("root", description="Which spans count: the root span or any span.")

    def matches(self, view: TraceView, limiter: RateLimiter, now_s: int) -> tuple[bool, float]:
        return self._long(view.facts.root_duration if self.scope == "root" else view.facts.max_duration), 1.0

    @property
    def bounded(self) -> bool:
        return True

    def may_match(self, trace_id: str, bounds: TraceBounds) -> bool:
        return self._long(bounds.max_root_duration if self.scope == "root" else bounds.max_duration)

    def _long(self, duration: int | None) -> bool:
        return duration is not None and duration >= float(self.threshold_ms) * 1_000_000


class StringAttributePolicy(TailPolicy):
    """Keeps a trace with a span (or resource) attribute ``key`` equal to one of ``values``."""

    type: Literal["string_attribute"]
    key: str = Field(description="Attribute name, looked up in span then resource attributes.")
    values: tuple[str, ...] = _list(doc="The values that match.")
    invert: bool = Field(False, description="Keep the traces that do not match instead.")

    def matches(self, view: TraceView, limiter: RateLimiter, now_s: int) -> tuple[bool, float]:
        wanted = set(self.values)
        found = any(str(v) in wanted for v in _attr(view, self.key))
        return found != self.invert, 1.0


class NumericAttributePolicy(TailPolicy):
    """Keeps a trace with a numeric attribute ``key`` in [``min``, ``max``]."""

    type: Literal["numeric_attribute"]
    key: str = Field(description="Attribute name, looked up in span then resource attributes.")
    min: float | None = Field(None, description="Lowest matching value (default: no bound).")
    max: float | None = Field(None, description="Highest matching value (default: no bound).")

    def matches(self, view: TraceView, limiter: RateLimiter, now_s: int) -> tuple[bool, float]:
        lo = float("-inf") if self.min is None else self.min
        hi = float("inf") if self.max is None else self.max
        for v in _attr(view, self.key):
            try:
                if lo <= float(v) <= hi:
                    return True, 1.0
            except ValueError:
                continue
        return False, 1.0


class BooleanAttributePolicy(TailPolicy):
    """Keeps a trace with a boolean attribute ``key`` equal to ``value``."""

    type: Literal["boolean_attribute"]
    key: str = Field(description="Attribute name, looked up in span then resource attributes.")
    value: bool = Field(description="The value that matches.")

    def matches(self, view: TraceView, limiter: RateLimiter, now_s: int) -> tuple[bool, float]:
        want = "true" if self.value else "false"
        return any(str(v).lower() == want for v in _attr(view, self.key)), 1.0


class SpanCountPolicy(TailPolicy):
    """Keeps a trace with between ``min_spans`` and ``max_spans`` spans."""

    type: Literal["span_count"]
    min_spans: int = Field(description="Fewest spans.")
    max_spans: int | None = Field(None, description="Most spans (default: no bound).")

    def matches(self, view: TraceView, limiter: RateLimiter, now_s: int) -> tuple[bool, float]:
        n = view.span_count
        return n >= self.min_spans and n <= (n if self.max_spans is None else self.max_spans), 1.0

    @property
    def bounded(self) -> bool:
        return True

    def may_match(self, trace_id: str, bounds: TraceBounds) -> bool:
        return bounds.spans >= self.min_spans  # fewer spans may still fall under max_spans


class RateLimitingPolicy(TailPolicy):
    """Per service of the root span, keeps traces while the service's spans this second stay under the limit."""

    type: Literal["rate_limiting"]
    spans_per_second: Positive = Field(description="Spans per second per service (> 0).")

    def matches(self, view: TraceView, limiter: RateLimiter, now_s: int) -> tuple[bool, float]:
        return limiter.take(id(self), view.facts.service, view.span_count, float(self.spans_per_second), now_s), 1.0


class AndPolicy(TailPolicy):
    """Keeps a trace every sub-policy keeps."""

    type: Literal["and"]
    policies: Annotated[tuple[AnyTailPolicy, ...], _not_empty("needs at least one policy")] = _list(
        doc="The sub-policies (at least one).", json_schema_extra=_MIN_ONE)

    def matches(self, view: TraceView, limiter: RateLimiter, now_s: int) -> tuple[bool, float]:
        probability = 1.0
        for child in self.policies:
            keep, prob = child.matches(view, limiter, now_s)
            if not keep:
                return False, 1.0
            probability = min(probability, prob)
        return True, probability

    @property
    def bounded(self) -> bool:
        return any(child.bounded for child in self.policies)

    def may_match(self, trace_id: str, bounds: TraceBounds) -> bool:
        return all(child.may_match(trace_id, bounds) for child in self.policies)


class CompositePolicy(TailPolicy):
    """Keeps a trace by the first sub-policy that keeps it and still has room in its share of the budget."""

    type: Literal["composite"]
    max_total_spans_per_second: Positive = Field(description="The budget shared by the sub-policies (> 0).")
    policies: Annotated[tuple[AnyTailPolicy, ...], _not_empty("needs at least one policy")] = _list(
        doc="The sub-policies, in order (at least one).", json_schema_extra=_MIN_ONE)
    shares: tuple[float, ...] = _list(doc="Percent of the budget of each sub-policy, in order; at most 100 in all.")

    @model_validator(mode="wrap")
    @classmethod
    def _check_shares(cls, data: Any, handler: ModelWrapValidatorHandler[CompositePolicy]) -> CompositePolicy:
        # on the file's values, so the shares are checked even when a sub-policy is invalid
        problem = _shares_problem(data.get("shares"), data.get("policies")) if isinstance(data, dict) else None
        try:
            policy = handler(data)
        except ValidationError as exc:
            if problem is None:
                raise
            errors = [e for e in exc.errors() if e["loc"][:1] != ("shares",)]  # the problem says it all
            raise _with_error(cls, errors, problem, data) from None
        if problem is not None:
            raise _with_error(cls, [], problem, data)
        return policy

    def matches(self, view: TraceView, limiter: RateLimiter, now_s: int) -> tuple[bool, float]:
        total = float(self.max_total_spans_per_second)
        for i, (child, share) in enumerate(zip(self.policies, self.shares)):
            keep, prob = child.matches(view, limiter, now_s)
            if keep and limiter.take(id(self) * 1000 + i, "", view.span_count, total * share / 100, now_s):
                return True, prob
        return False, 1.0


def _shares_problem(shares: Any, policies: Any) -> str | None:
    if not isinstance(shares, list) or not isinstance(policies, list) or not policies:
        return None  # a wrong type or no sub-policies is its own problem
    if len(shares) != len(policies) or not all(
            isinstance(s, (int, float)) and not isinstance(s, bool) and s > 0 for s in shares):
        return "one positive percentage per policy"
    if sum(shares) > 100:
        return f"add up to {sum(shares)}%, more than 100"
    return None


_ERROR_TYPES = frozenset(get_args(ErrorType))


def _with_error(cls: type[BaseModel], errors: list[ErrorDetails], problem: str,
                data: dict[str, Any]) -> ValidationError:
    """``errors`` (of the model's fields) and the shares ``problem``, as one ValidationError."""
    line_errors: list[InitErrorDetails] = []
    for e in errors:
        kind = e["type"]
        if kind in _ERROR_TYPES:
            line_errors.append({"type": kind, "loc": e["loc"], "input": e["input"],
                                **({"ctx": e["ctx"]} if "ctx" in e else {})})
        else:  # a shares problem of a nested composite
            line_errors.append({"type": PydanticCustomError(kind, "{problem}", {"problem": e["msg"]}),
                                "loc": e["loc"], "input": e["input"]})
    line_errors.append({"type": PydanticCustomError("shares", "{problem}", {"problem": problem}),
                        "loc": ("shares",), "input": data.get("shares")})
    return ValidationError.from_exception_data(cls.__name__, line_errors)


AnyTailPolicy = Annotated[
    Union[AlwaysPolicy, ProbabilisticPolicy, StatusCodePolicy, LatencyPolicy, StringAttributePolicy,
          NumericAttributePolicy, BooleanAttributePolicy, SpanCountPolicy, RateLimitingPolicy, AndPolicy,
          CompositePolicy],
    Field(discriminator="type"),
]
AndPolicy.model_rebuild()
CompositePolicy.model_rebuild()


_NONE = "at least one [[policies]] table is needed"


class TailPolicyFile(BaseModel):
    """A tail sampling policy file: a trace is kept when any of its policies keeps it."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, title="otelpipe tail sampling policies")

    policies: Annotated[tuple[AnyTailPolicy, ...], _not_empty(_NONE)] = _list(
        doc="The policies ([[policies]] tables), in order (at least one).", json_schema_extra=_MIN_ONE)


TYPES: tuple[str, ...] = tuple(  # the tags, in order: always, probabilistic, …
    get_args(model.model_fields["type"].annotation)[0] for model in get_args(get_args(AnyTailPolicy)[0]))



# ------------------------------------------------------------------ parsing


def _problems(exc: ValidationError) -> list[str]:
    """pydantic's errors as ``path: problem`` lines, in the words of every otelpipe file."""
    empty = [e for e in exc.errors(include_url=False) if tuple(e["loc"]) == ("policies",)
             and e["type"] in ("missing", "tuple_type")]
    if empty:
        return [f"policies: {_NONE}"]
    return problems_of(exc, tags=TYPES)


def parse_policies(data: dict[str, Any]) -> tuple[TailPolicy, ...]:
    """The policies of a policy file's content; ``TailPolicyError`` lists every problem."""
    try:
        return TailPolicyFile.model_validate(data).policies
    except ValidationError as exc:
        raise TailPolicyError(_problems(exc)) from None


def tail_policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a tail sampling policy file, for editors to complete and check."""
    return TailPolicyFile.model_json_schema()


DEFAULT_POLICIES = parse_policies({"policies": [
    {"name": "errors", "type": "status_code", "status_codes": ["Error"]},
    {"name": "slow", "type": "latency", "threshold_ms": 1000, "scope": "root"},
    {"name": "baseline", "type": "probabilistic", "rate": 0.01},
]})


# ------------------------------------------------------------------ evaluation


def evaluate(policies: tuple[TailPolicy, ...], view: TraceView, limiter: RateLimiter, now_s: int) -> Verdict:
    """Keep when any policy keeps; the probability is 1 when a policy that does not depend on
    chance keeps, else the highest rate among the probabilistic policies that keep."""
    best: Verdict | None = None
    for policy in policies:
        keep, probability = policy.matches(view, limiter, now_s)
        if not keep:
            continue
        if probability >= 1.0:
            return Verdict(True, 1.0, policy.name)
        if best is None or probability > best.probability:
            best = Verdict(True, probability, policy.name)
    return best if best is not None else Verdict(False, 1.0, "")


def bounded(policies: tuple[TailPolicy, ...]) -> bool:
    """Whether some trace can be dropped on its bounds alone: every policy is bounded."""
    return bool(policies) and all(p.bounded for p in policies)


def may_keep(policies: tuple[TailPolicy, ...], trace_id: str, bounds: TraceBounds) -> bool:
    """False only when no policy can keep a trace whose facts lie within ``bounds``."""
    return any(p.may_match(trace_id, bounds) for p in policies)


def load_policies(path: str | None) -> tuple[TailPolicy, ...]:
    if not path:
        return DEFAULT_POLICIES
    return parse_policies(read_toml(path, "tail policy", TailPolicyError))
