"""The label policy: redaction, templating, cardinality rules and allowed metric names, from one
TOML file validated as a whole.

``load_policy(path)`` reports every problem at once with its path
(``cardinality.rules[2].buckets: must be > 0``). Without a file the defaults apply: never store
Authorization, Cookie, Set-Cookie, Proxy-Authorization, passwords, tokens or API keys (by key
pattern); mask bearer tokens, card numbers and emails in values and secrets in URL query strings;
template span names. Example::

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
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streams.config import ProblemsError, read_toml
from streams.stages.naming import NamingRules

DEFAULT_BLOCK_KEYS = (
    "authorization", "*.authorization", "http.request.header.authorization",
    "cookie", "*.cookie", "set-cookie", "*.set-cookie", "proxy-authorization", "*.proxy-authorization",
    "*password*", "*passwd*", "*secret*", "*token*", "*api_key*", "*api-key*", "*apikey*", "*private_key*",
)
DEFAULT_QUERY_SECRETS = ("token", "access_token", "refresh_token", "id_token", "password", "passwd", "pwd",
                         "secret", "client_secret", "api_key", "apikey", "key", "signature", "sig", "auth")
DETECTORS = ("bearer", "card", "email")
RULE_TYPES = ("hash", "template", "truncate_hash", "top_k", "drop")
BUDGET_ACTIONS = ("bucketize", "drop")
SIGNALS = ("traces", "logs", "metrics")


class PolicyError(ProblemsError):
    what = "policy"


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
        import fnmatch

        for budget in self.metrics:
            if fnmatch.fnmatchcase(name, budget.name):
                return budget
        return MetricBudget("*", self.default_limit, self.default_action)


@dataclass(frozen=True)
class Policy:
    redaction: RedactionPolicy = field(default_factory=RedactionPolicy)
    naming: NamingRules = field(default_factory=NamingRules)
    template_span_names: bool = True
    template_url_keys: tuple[str, ...] = ("url.path", "url.full", "http.target", "http.url")
    rules: tuple[CardinalityRule, ...] = ()
    allowed_metric_names: tuple[str, ...] = ()
    budgets: BudgetPolicy = field(default_factory=BudgetPolicy)


def _strings(value: Any, path: str, problems: list[str]) -> tuple[str, ...] | None:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problems.append(f"{path}: must be a list of strings")
        return None
    return tuple(value)


def _known(table: dict, allowed: set[str], path: str, problems: list[str]) -> None:
    for key in sorted(set(table) - allowed):
        problems.append(f"{path}{key}: unknown setting")


def parse_policy(data: dict[str, Any]) -> Policy:
    problems: list[str] = []
    _known(data, {"redaction", "templating", "cardinality", "metrics", "naming", "budgets"}, "", problems)

    red = data.get("redaction", {})
    red_kwargs: dict[str, Any] = {}
    if not isinstance(red, dict):
        problems.append("redaction: must be a table")
        red = {}
    _known(red, {"mode", "block_keys", "allow_keys", "value_action", "detect", "query_secrets", "hash_seed"},
           "redaction.", problems)
    _copy_choice(red, "mode", ("block", "allow"), "redaction.", problems, red_kwargs)
    _copy_choice(red, "value_action", ("mask", "drop", "hash"), "redaction.", problems, red_kwargs)
    for name in ("block_keys", "allow_keys", "query_secrets"):
        if name in red:
            value = _strings(red[name], f"redaction.{name}", problems)
            if value is not None:
                red_kwargs[name] = value
    if "detect" in red:
        value = _strings(red["detect"], "redaction.detect", problems)
        if value is not None:
            for i, d in enumerate(value):
                if d not in DETECTORS:
                    problems.append(f"redaction.detect[{i}]: must be one of {', '.join(DETECTORS)}, got {d!r}")
            red_kwargs["detect"] = value
    if "hash_seed" in red:
        if not isinstance(red["hash_seed"], str) or not red["hash_seed"]:
            problems.append("redaction.hash_seed: must be a non-empty string")
        else:
            red_kwargs["hash_seed"] = red["hash_seed"]
    if red_kwargs.get("mode") == "allow" and not red_kwargs.get("allow_keys"):
        problems.append("redaction.allow_keys: allow mode needs at least one key (otherwise nothing survives)")

    templ = data.get("templating", {})
    kwargs: dict[str, Any] = {}
    if not isinstance(templ, dict):
        problems.append("templating: must be a table")
        templ = {}
    _known(templ, {"span_names", "url_keys"}, "templating.", problems)
    _copy_bool(templ, "span_names", "templating.", problems, kwargs, "template_span_names")
    if "url_keys" in templ:
        value = _strings(templ["url_keys"], "templating.url_keys", problems)
        if value is not None:
            kwargs["template_url_keys"] = value

    card = data.get("cardinality", {})
    rules = []
    if not isinstance(card, dict):
        problems.append("cardinality: must be a table")
        card = {}
    _known(card, {"rules"}, "cardinality.", problems)
    raw_rules = card.get("rules", [])
    if not isinstance(raw_rules, list):
        problems.append("cardinality.rules: must be a list of tables ([[cardinality.rules]])")
        raw_rules = []
    for i, rule in enumerate(raw_rules):
        path = f"cardinality.rules[{i}]"
        if not isinstance(rule, dict):
            problems.append(f"{path}: must be a table")
            continue
        _known(rule, {"type", "key", "buckets", "max_length", "signals", "seed", "k", "window_s"}, f"{path}.",
               problems)
        ok = True
        if rule.get("type") not in RULE_TYPES:
            problems.append(f"{path}.type: must be one of {', '.join(RULE_TYPES)}, got {rule.get('type')!r}")
            ok = False
        if not isinstance(rule.get("key"), str) or not rule.get("key"):
            problems.append(f"{path}.key: required, a key or glob pattern")
            ok = False
        for name in ("buckets", "max_length", "k", "window_s"):
            ok = _positive_int(rule, name, f"{path}.", problems) and ok
        signals = SIGNALS
        if "signals" in rule:
            signals = _strings(rule["signals"], f"{path}.signals", problems) or ()
            for s in signals:
                if s not in SIGNALS:
                    problems.append(f"{path}.signals: unknown signal {s!r}")
                    ok = False
        if ok:
            rules.append(CardinalityRule(rule["type"], rule["key"], rule.get("buckets", 100),
                                         rule.get("max_length", 200), tuple(signals), rule.get("seed", "otelpipe"),
                                         rule.get("k", 10), rule.get("window_s", 300)))
    metrics = data.get("metrics", {})
    if not isinstance(metrics, dict):
        problems.append("metrics: must be a table")
        metrics = {}
    _known(metrics, {"allowed_names"}, "metrics.", problems)
    if "allowed_names" in metrics:
        value = _strings(metrics["allowed_names"], "metrics.allowed_names", problems)
        if value is not None:
            kwargs["allowed_metric_names"] = value
    naming = data.get("naming", {})
    naming_kwargs: dict[str, Any] = {}
    if not isinstance(naming, dict):
        problems.append("naming: must be a table")
        naming = {}
    _known(naming, {"enabled", "action", "separators", "unit_suffixes", "verbs", "domains"}, "naming.", problems)
    _copy_bool(naming, "enabled", "naming.", problems, naming_kwargs)
    _copy_choice(naming, "action", ("report", "reject"), "naming.", problems, naming_kwargs)
    for name in ("separators", "unit_suffixes", "verbs", "domains"):
        if name in naming:
            value = _strings(naming[name], f"naming.{name}", problems)
            if value is not None:
                naming_kwargs[name] = value
    for i, sep in enumerate(naming_kwargs.get("separators", ())):
        if len(sep) != 1 or sep.isalnum():
            problems.append(f"naming.separators[{i}]: must be one punctuation character, got {sep!r}")
    budgets = _parse_budgets(data.get("budgets", {}), problems)
    if problems:
        raise PolicyError(problems)
    return Policy(redaction=RedactionPolicy(**red_kwargs), rules=tuple(rules), naming=NamingRules(**naming_kwargs),
                  budgets=budgets, **kwargs)


def _either(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


def _copy_bool(table: dict, name: str, path: str, problems: list[str], into: dict, target: str = "") -> None:
    """``into[target or name] = table[name]`` when it is a boolean; a problem when it is something else."""
    if name in table:
        if isinstance(table[name], bool):
            into[target or name] = table[name]
        else:
            problems.append(f"{path}{name}: must be true or false")


def _copy_choice(table: dict, name: str, choices: tuple[str, ...], path: str, problems: list[str], into: dict,
                 target: str = "") -> None:
    """``into[target or name] = table[name]`` when it is one of ``choices``; a problem otherwise."""
    if name in table:
        if table[name] in choices:
            into[target or name] = table[name]
        else:
            problems.append(f"{path}{name}: must be {_either(choices)}, got {table[name]!r}")


def _positive_int(table: dict, name: str, path: str, problems: list[str]) -> bool:
    value = table.get(name)
    if name in table and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        problems.append(f"{path}{name}: must be > 0, got {value!r}")
        return False
    return True


def _parse_budgets(budgets: Any, problems: list[str]) -> BudgetPolicy:
    if not isinstance(budgets, dict):
        problems.append("budgets: must be a table")
        return BudgetPolicy()
    _known(budgets, {"enabled", "default_limit", "window_s", "action", "buckets", "seed", "metrics"}, "budgets.",
           problems)
    kwargs: dict[str, Any] = {}
    _copy_bool(budgets, "enabled", "budgets.", problems, kwargs)
    for name, target in (("default_limit", "default_limit"), ("window_s", "window_s"), ("buckets", "buckets")):
        if _positive_int(budgets, name, "budgets.", problems) and name in budgets:
            kwargs[target] = budgets[name]
    _copy_choice(budgets, "action", BUDGET_ACTIONS, "budgets.", problems, kwargs, "default_action")
    if "seed" in budgets:
        if not isinstance(budgets["seed"], str) or not budgets["seed"]:
            problems.append("budgets.seed: must be a non-empty string")
        else:
            kwargs["seed"] = budgets["seed"]
    entries = budgets.get("metrics", [])
    if not isinstance(entries, list):
        problems.append("budgets.metrics: must be a list of tables ([[budgets.metrics]])")
        entries = []
    parsed = []
    for i, entry in enumerate(entries):
        path = f"budgets.metrics[{i}]."
        if not isinstance(entry, dict):
            problems.append(f"budgets.metrics[{i}]: must be a table")
            continue
        _known(entry, {"name", "limit", "action"}, path, problems)
        ok = _positive_int(entry, "limit", path, problems)
        if not isinstance(entry.get("name"), str) or not entry.get("name"):
            problems.append(f"{path}name: required, a metric name or glob pattern")
            ok = False
        if "limit" not in entry:
            problems.append(f"{path}limit: required")
            ok = False
        action = entry.get("action", kwargs.get("default_action", "bucketize"))
        if action not in BUDGET_ACTIONS:
            problems.append(f"{path}action: must be bucketize or drop, got {action!r}")
            ok = False
        if ok:
            parsed.append(MetricBudget(entry["name"], entry["limit"], action))
    kwargs["metrics"] = tuple(parsed)
    return BudgetPolicy(**kwargs)


def load_policy(path: str | Path | None) -> Policy:
    if not path:
        return Policy()
    return parse_policy(read_toml(path, "policy", PolicyError))
