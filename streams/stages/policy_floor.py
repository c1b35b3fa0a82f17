"""The floor a label policy from the policy topic must stay above: the worker's own policy
(``worker.label_policy``, or the defaults).

``relaxations(base, candidate)`` lists how ``candidate`` redacts less than ``base``; empty means it
redacts at least as much, and may replace it. A topic policy may tighten redaction (more
detectors, more block keys or query secrets, block mode to allow mode, fewer allowed keys) but,
unless ``control.topic_policy_may_relax``, not loosen it. The comparison is of the patterns as
written (case-insensitive): a pattern the base has is kept only by having it too, even when
another pattern would cover it, so the check errs on the side of refusing.

Each relaxation names the setting and a count, never the patterns themselves.
"""

from __future__ import annotations

from streams.stages.label_policy import LabelPolicy

# value_action: each secret found in a value is masked, dropped with its value, or replaced by a
# stable hash; the hash alone still lets a guessable secret (a card number) be found again.
_VALUE_ACTION_STRENGTH = {"hash": 0, "mask": 1, "drop": 1}


def _lowered(patterns: tuple[str, ...]) -> set[str]:
    return {p.lower() for p in patterns}


def _lacks(setting: str, base: tuple[str, ...], candidate: tuple[str, ...]) -> list[str]:
    missing = _lowered(base) - _lowered(candidate)
    return [f"redaction.{setting}: lacks {len(missing)} of the base policy's entries"] if missing else []


def relaxations(base: LabelPolicy, candidate: LabelPolicy) -> list[str]:
    """How ``candidate`` redacts less than ``base`` (empty: not at all)."""
    b, c = base.redaction, candidate.redaction
    found = []
    if b.mode == "allow" and c.mode != "allow":
        found.append("redaction.mode: block where the base policy is allow")
    elif b.mode == "allow":
        extra = _lowered(c.allow_keys) - _lowered(b.allow_keys)
        if extra:
            found.append(f"redaction.allow_keys: allows {len(extra)} pattern{'s' * (len(extra) != 1)} "
                         "the base policy does not")
    found += _lacks("block_keys", b.block_keys, c.block_keys)
    found += _lacks("detect", b.detect, c.detect)
    found += _lacks("query_secrets", b.query_secrets, c.query_secrets)
    if _VALUE_ACTION_STRENGTH.get(c.value_action, 0) < _VALUE_ACTION_STRENGTH.get(b.value_action, 0):
        found.append(f"redaction.value_action: {c.value_action} where the base policy is {b.value_action}")
    return found
