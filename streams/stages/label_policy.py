"""The label policy: redaction, templating, cardinality rules and allowed metric names, from one
TOML file validated as a whole.

``load_policy(path)`` reports every problem at once with its path
(``cardinality.rules[2].buckets: must be > 0``). Without a file the defaults apply: never store
Authorization, Cookie, Set-Cookie, Proxy-Authorization, passwords, tokens, API keys, private keys or
session ids (by key pattern); mask bearer tokens, card numbers and emails in values and secrets in URL
query strings; template span names. Example::

    [redaction]
    mode = "block"                       # or "allow": only allow_keys survive (fail closed)
    value_action = "mask"                # mask | drop | hash (stable, seeded: joins still work)
    [templating]
    span_names = true
    [[cardinality.rules]]
    type = "hash"                        # hash | template | truncate_hash | top_k | drop
    key = "user.id"                      # glob, case-insensitive
    buckets = 100
    [[cardinality.rules]]
    type = "top_k"                       # the k most frequent values of the last window, the rest __other__
    key = "customer.tier"
    k = 20
    window_s = 300
    [metrics]
    allowed_names = ["http.*", "process.*"]   # empty: every name is allowed
    [budgets]                            # distinct attribute sets per metric and window
    default_limit = 10000
    window_s = 3600
    action = "bucketize"                 # bucketize the highest-cardinality label, or drop new series
    [[budgets.metrics]]
    name = "http.server.*"               # glob; the first matching entry wins
    limit = 500
    action = "drop"

The file's schema is the pydantic models ``*Section`` / ``LabelPolicyFile`` below
(``policy_json_schema()``); a validated file becomes the frozen ``LabelPolicy`` the stages read.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator)

from streams.config import ProblemsError, problems_of, read_toml
from streams.stages.naming import NamingRules

DEFAULT_BLOCK_KEYS = (
    "authorization", "*.authorization", "http.request.header.authorization",
    "cookie", "*.cookie", "set-cookie", "*.set-cookie", "proxy-authorization", "*.proxy-authorization",
    "*password*", "*passwd*", "*secret*", "*token*", "*api_key*", "*api-key*", "*apikey*", "*private_key*",
    # ``pwd`` also names a working directory (the shell's PWD): dropped all the same, as it fails closed.
    "*pwd*", "*passphrase*", "*private-key*", "*privatekey*", "*authorization*", "*cookie*",
    # session identifiers are bearer credentials; OpenTelemetry's ``session.id`` (a client-made
    # correlation id) is not one of them and stays
    "session", "*.session", "*_session", "*-session", "*sessionid*", "*session_id*", "*session-id*", "*sessid*",
)
DEFAULT_QUERY_SECRETS = ("token", "access_token", "refresh_token", "id_token", "password", "passwd", "pwd",
                         "secret", "client_secret", "api_key", "apikey", "key", "signature", "sig", "auth")
DETECTORS = ("bearer", "basic", "card", "email", "url_credentials", "assignment")
RULE_TYPES = ("hash", "template", "truncate_hash", "top_k", "drop")
BUDGET_ACTIONS = ("bucketize", "drop")
SIGNALS = ("traces", "logs", "metrics")


class PolicyError(ProblemsError):
    what = "policy"


# ------------------------------------------------------------------ what the stages read

@dataclass(frozen=True)
class RedactionPolicy:
    mode: str = "block"
    block_keys: tuple[str, ...] = DEFAULT_BLOCK_KEYS
    allow_keys: tuple[str, ...] = ()
    value_action: str = "mask"
    detect: tuple[str, ...] = DETECTORS
    query_secrets: tuple[str, ...] = DEFAULT_QUERY_SECRETS
    hash_seed: str = "otelpipe"


@dataclass(frozen=True)
class CardinalityRule:
    type: str
    key: str
    buckets: int = 100
    max_length: int = 200
    signals: tuple[str, ...] = SIGNALS
    seed: str = "otelpipe"
    k: int = 10
    window_s: int = 300


@dataclass(frozen=True)
class MetricBudget:
    name: str  # glob over metric names
    limit: int
    action: str = "bucketize"


@dataclass(frozen=True)
class BudgetPolicy:
    """Series budgets: at most ``limit`` distinct attribute sets per metric per window."""

    enabled: bool = True
    default_limit: int = 10_000
    default_action: str = "bucketize"
    window_s: int = 3600
    buckets: int = 100  # values of the bucketized label: bucket_0 .. bucket_{buckets-1}
    seed: str = "otelpipe"
    metrics: tuple[MetricBudget, ...] = ()

    def for_metric(self, name: str) -> MetricBudget:
        for budget in self.metrics:
            if fnmatch.fnmatchcase(name, budget.name):
                return budget
        return MetricBudget("*", self.default_limit, self.default_action)


@dataclass(frozen=True)
class LabelPolicy:
    redaction: RedactionPolicy = field(default_factory=RedactionPolicy)
    naming: NamingRules = field(default_factory=NamingRules)
    template_span_names: bool = True
    template_url_keys: tuple[str, ...] = ("url.path", "url.full", "http.target", "http.url")
    rules: tuple[CardinalityRule, ...] = ()
    allowed_metric_names: tuple[str, ...] = ()
    budgets: BudgetPolicy = field(default_factory=BudgetPolicy)


# ------------------------------------------------------------------ the file's schema
# Each check raises ValueError("the problem"); problems_of() prefixes it with the setting's path. The
# checks are strict (no "3" for 3, no 1 for true), as TOML gives the types the file wrote.

_REQUIRED = {  # a missing required setting (by name) → the problem
    "type": f"required, must be one of {', '.join(RULE_TYPES)}",
    "key": "required, a key or glob pattern",
    "name": "required, a metric name or glob pattern",
}


def _either(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


def _choice(choices: tuple[str, ...], one_of: bool = False) -> Any:
    """A string among ``choices`` (an enum in the JSON schema)."""
    def check(value: Any) -> Any:
        if value not in choices:
            listed = "one of " + ", ".join(choices) if one_of else _either(choices)
            raise ValueError(f"must be {listed}, got {value!r}")
        return value
    return Annotated[Literal[choices], BeforeValidator(check)]  # type: ignore[valid-type]


def _strings(value: Any) -> tuple[str, ...]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of strings")
    return tuple(value)


def _tables(toml: str) -> BeforeValidator:
    def check(value: Any) -> Any:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"must be a list of tables ({toml})")
        return value
    return BeforeValidator(check)


def _positive(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"must be > 0, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def _text(problem: str, empty: bool = False) -> BeforeValidator:
    """A string (a non-empty one unless ``empty``); ``problem`` otherwise."""
    def check(value: Any) -> str:
        if not isinstance(value, str) or not (value or empty):
            raise ValueError(problem)
        return value
    return BeforeValidator(check)


def _signals(value: Any) -> tuple[str, ...]:
    unknown = [s for s in _strings(value) if s not in SIGNALS]
    if unknown:
        raise ValueError(f"unknown signal{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}")
    return tuple(value)


def _separator(value: str) -> str:
    if len(value) != 1 or value.isalnum():
        raise ValueError(f"must be one punctuation character, got {value!r}")
    return value


Strings = Annotated[tuple[str, ...], BeforeValidator(_strings)]
Positive = Annotated[int, Field(gt=0), BeforeValidator(_positive)]
Bool = Annotated[bool, BeforeValidator(_bool)]
Seed = Annotated[str, Field(min_length=1), _text("must be a non-empty string")]
RuleType = _choice(RULE_TYPES, one_of=True)
BudgetAction = _choice(BUDGET_ACTIONS)
Detectors = Annotated[tuple[_choice(DETECTORS, one_of=True), ...], BeforeValidator(_strings)]
Signals = Annotated[tuple[Literal[SIGNALS], ...], BeforeValidator(_signals)]  # type: ignore[valid-type]
Separators = Annotated[tuple[Annotated[str, AfterValidator(_separator)], ...], BeforeValidator(_strings)]
RedactionMode = _choice(("block", "allow"))
ValueAction = _choice(("mask", "drop", "hash"))
NamingAction = _choice(("report", "reject"))


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown key is a problem: "<path>: unknown setting"


class RedactionSection(_Section):
    """``[redaction]``: keys never stored, and secrets found in values."""

    mode: RedactionMode = Field(RedactionPolicy.mode, description="block: drop block_keys; allow: keep only "
                                "allow_keys, in every attribute map and inside kvlist values (fail closed)")
    block_keys: Strings = Field(RedactionPolicy.block_keys, description="globs of keys never stored")
    allow_keys: Strings = Field(RedactionPolicy.allow_keys, validate_default=True,
                                description="globs of the keys that survive in allow mode")
    value_action: ValueAction = Field(RedactionPolicy.value_action,
                                      description="what happens to a detected secret in a value")
    detect: Detectors = Field(RedactionPolicy.detect, description="the detectors applied to values")
    query_secrets: Strings = Field(RedactionPolicy.query_secrets,
                                   description="URL query parameters whose values are masked")
    hash_seed: Seed = Field(RedactionPolicy.hash_seed, description="seed of value_action = hash")

    @field_validator("allow_keys")
    @classmethod
    def _allow_mode_needs_keys(cls, keys: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if info.data.get("mode") == "allow" and not keys:
            raise ValueError("allow mode needs at least one key (otherwise nothing survives)")
        return keys


class TemplatingSection(_Section):
    """``[templating]``: ids in span names and URLs → placeholders (``/order/123`` → ``/order/{num}``)."""

    span_names: Bool = Field(LabelPolicy.template_span_names, description="template span names")
    url_keys: Strings = Field(LabelPolicy.template_url_keys, description="attributes templated as URLs")


class CardinalityRuleSection(_Section):
    """``[[cardinality.rules]]``: how the values of matching keys are bounded."""

    type: RuleType = Field(description="hash → bucket_N; template: ids → placeholders; truncate_hash: long "
                           "values → hash:<hex>; top_k: the k most frequent values, the rest __other__; drop")
    key: Annotated[str, _text(_REQUIRED["key"])] = Field(description="a key or glob pattern, case-insensitive")
    buckets: Positive = Field(CardinalityRule.buckets, description="hash: values → bucket_0 .. bucket_{buckets-1}")
    max_length: Positive = Field(CardinalityRule.max_length, description="truncate_hash: longer values are hashed")
    signals: Signals = Field(CardinalityRule.signals, description="the signals the rule applies to")
    seed: Annotated[str, _text("must be a string", empty=True)] = Field(CardinalityRule.seed,
                                                                         description="hash seed")
    k: Positive = Field(CardinalityRule.k, description="top_k: the number of values kept")
    window_s: Positive = Field(CardinalityRule.window_s, description="top_k: the window counted, in seconds")


class CardinalitySection(_Section):
    rules: Annotated[tuple[CardinalityRuleSection, ...], _tables("[[cardinality.rules]]")] = ()


class MetricsSection(_Section):
    allowed_names: Strings = Field((), description="globs of the metric names stored; empty: every name")


class NamingSection(_Section):
    """``[naming]``: metric naming conventions; violations go to otelpipe_violations."""

    enabled: Bool = NamingRules.enabled
    action: NamingAction = Field(NamingRules.action, description="reject: points with a bad name are not stored")
    separators: Separators = NamingRules.separators
    unit_suffixes: Strings = Field(NamingRules.unit_suffixes, description="required unit suffixes; empty: none")
    verbs: Strings = Field(NamingRules.verbs, description="one of these action verbs must appear; empty: any")
    domains: Strings = Field(NamingRules.domains, description="allowed first segments; empty: any")


class MetricBudgetSection(_Section):
    """``[[budgets.metrics]]``: the budget of the metrics matching ``name`` (the first match wins)."""

    name: Annotated[str, _text(_REQUIRED["name"])] = Field(description="a metric name or glob pattern")
    limit: Positive = Field(description="distinct attribute sets per window")
    action: BudgetAction | None = Field(None, description="past the limit (default: budgets.action)")


class BudgetsSection(_Section):
    """``[budgets]``: distinct attribute sets per metric and window."""

    enabled: Bool = BudgetPolicy.enabled
    default_limit: Positive = BudgetPolicy.default_limit
    window_s: Positive = BudgetPolicy.window_s
    action: BudgetAction = Field(BudgetPolicy.default_action, description="past the limit: bucketize the "
                                 "highest-cardinality label of new series, or drop their points")
    buckets: Positive = Field(BudgetPolicy.buckets, description="values of a bucketized label")
    seed: Seed = BudgetPolicy.seed
    metrics: Annotated[tuple[MetricBudgetSection, ...], _tables("[[budgets.metrics]]")] = ()


class LabelPolicyFile(_Section):
    """A label policy file (TOML)."""

    redaction: RedactionSection = Field(default_factory=RedactionSection)
    templating: TemplatingSection = Field(default_factory=TemplatingSection)
    cardinality: CardinalitySection = Field(default_factory=CardinalitySection)
    metrics: MetricsSection = Field(default_factory=MetricsSection)
    naming: NamingSection = Field(default_factory=NamingSection)
    budgets: BudgetsSection = Field(default_factory=BudgetsSection)

    def to_policy(self) -> LabelPolicy:
        b = self.budgets
        return LabelPolicy(
            redaction=RedactionPolicy(**dict(self.redaction)),
            naming=NamingRules(**dict(self.naming)),
            template_span_names=self.templating.span_names,
            template_url_keys=self.templating.url_keys,
            rules=tuple(CardinalityRule(**dict(rule)) for rule in self.cardinality.rules),
            allowed_metric_names=self.metrics.allowed_names,
            budgets=BudgetPolicy(enabled=b.enabled, default_limit=b.default_limit, default_action=b.action,
                                 window_s=b.window_s, buckets=b.buckets, seed=b.seed,
                                 metrics=tuple(MetricBudget(m.name, m.limit, m.action or b.action)
                                               for m in b.metrics)))




def parse_policy(data: dict[str, Any]) -> LabelPolicy:
    try:
        return LabelPolicyFile.model_validate(data).to_policy()
    except ValidationError as exc:
        raise PolicyError(problems_of(exc, required=_REQUIRED)) from None


def policy_json_schema() -> dict[str, Any]:
    """The JSON Schema of a label policy file (``otelpipe policy schema``)."""
    return LabelPolicyFile.model_json_schema()


def load_policy(path: str | Path | None) -> LabelPolicy:
    if not path:
        return LabelPolicy()
    return parse_policy(read_toml(path, "policy", PolicyError))
