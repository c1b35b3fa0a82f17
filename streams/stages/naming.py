"""Metric naming conventions: find names that break the rules, report them, optionally reject them.

Rules (policy ``[naming]``): lowercase; only ``[a-z0-9]``, the allowed separators and ``_``; no
empty segments; optionally the first segment from a set of domains, some segment from a set of
action verbs, and a unit suffix (``_ms``, ``_seconds``, ``_bytes`` ...) on the last segment, as in
``user.profile.view.duration_ms``.

``check_name(name, rules)`` → the broken rules with a detail each (pure, memoised).
``NamingStage.apply(batch)`` → (batch without rejected points, violation rows for
``otelpipe_violations``, counts). Violation rows carry the point's own time, so a replay writes the
same rows; the table keeps one row per (service, metric, rule).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache

from streams.otlp.batch import ColumnBatch

VIOLATIONS_TABLE = "otelpipe_violations"
VIOLATION_COLUMNS = ["FirstSeen", "Service", "MetricName", "Rule", "Detail", "Action"]


@dataclass(frozen=True)
class NamingRules:
    enabled: bool = True
    action: str = "report"  # report | reject
    separators: tuple[str, ...] = (".",)
    unit_suffixes: tuple[str, ...] = ()  # e.g. ("_ms", "_seconds", "_bytes", "_total"); empty: not required
    verbs: tuple[str, ...] = ()  # allowed action verbs, one must appear; empty: any
    domains: tuple[str, ...] = ()  # allowed first segments; empty: any


@lru_cache(maxsize=100_000)
def check_name(name: str, rules: NamingRules) -> tuple[tuple[str, str], ...]:
    problems = []
    if name != name.lower():
        problems.append(("lowercase", f"{name!r} has upper-case letters"))
    allowed = "".join(re.escape(s) for s in rules.separators)
    bad = sorted(set(re.sub(f"[a-z0-9_{allowed}]", "", name.lower())))
    if bad:
        problems.append(("characters", f"{name!r} has {''.join(bad)!r}; allowed: a-z 0-9 _ {' '.join(rules.separators)}"))
    segments = re.split(f"[{allowed}]", name) if allowed else [name]
    if any(not s for s in segments):
        problems.append(("separators", f"{name!r} has an empty segment (doubled, leading or trailing separator)"))
    if rules.domains and segments[0] not in rules.domains:
        problems.append(("domain", f"{name!r} starts with {segments[0]!r}; allowed: {', '.join(rules.domains)}"))
    if rules.verbs:
        words = {w for s in segments for w in s.split("_")}
        if not words & set(rules.verbs):
            problems.append(("verb", f"{name!r} has no action verb from: {', '.join(rules.verbs)}"))
    if rules.unit_suffixes and not any(segments[-1].endswith(u) for u in rules.unit_suffixes):
        problems.append(("unit", f"{name!r} does not end with a unit: {', '.join(rules.unit_suffixes)}"))
    return tuple(problems)


class NamingStage:
    def __init__(self, rules: NamingRules):
        self.rules = rules

    def apply(self, batch: ColumnBatch) -> tuple[ColumnBatch, ColumnBatch | None, Counter]:
        counts: Counter = Counter()
        if not self.rules.enabled or "MetricName" not in batch.columns:
            return batch, None, counts
        names, services, times = batch.columns["MetricName"], batch.columns["ServiceName"], batch.columns["TimeUnix"]
        verdicts = {n: check_name(n, self.rules) for n in set(names)}
        if not any(verdicts.values()):
            return batch, None, counts
        first: dict[tuple[str, str, str], tuple[int, str]] = {}
        rejected = []
        for i, (name, service, ts) in enumerate(zip(names, services, times)):
            problems = verdicts[name]
            if not problems:
                continue
            rejected.append(i)
            for rule, detail in problems:
                key = (service, name, rule)
                if key not in first or ts < first[key][0]:
                    first[key] = (ts, detail)
        action = self.rules.action
        rows = {c: [] for c in VIOLATION_COLUMNS}
        for (service, name, rule), (ts, detail) in sorted(first.items()):
            for column, value in zip(VIOLATION_COLUMNS, (ts // 1_000_000, service, name, rule, detail, action)):
                rows[column].append(value)
            counts[("naming", rule)] += 1
        violations = ColumnBatch(VIOLATIONS_TABLE, rows, batch.source)
        if action == "reject":
            drop = set(rejected)
            keep = [i for i in range(len(names)) if i not in drop]
            counts[("naming", "rejected_points")] += len(drop)
            batch = ColumnBatch(batch.table, {c: [v[i] for i in keep] for c, v in batch.columns.items()}, batch.source)
        return batch, violations, counts
