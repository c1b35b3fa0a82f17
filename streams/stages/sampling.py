"""Consistent probability sampling (OpenTelemetry TraceState ``th``/``rv``) and the head sampler.

Arithmetic, after the OpenTelemetry specification "TraceState: Probability Sampling":

- randomness R: 56 bits, from ``ot=rv:<14 hex>`` in the span's TraceState, else the trace id's
  last 7 bytes;
- rejection threshold T: 56 bits; a span is kept when ``R >= T``; probability ``(2^56 - T) / 2^56``;
  ``th`` is T in hex with trailing zeros removed (``th:0`` = keep all);
- a downstream sampler may raise a threshold, never lower it (equalizing sampler): a span arriving
  with ``th`` above ours keeps it; otherwise it is kept when ``R >= T_ours`` and its TraceState
  records ``th`` = ours.

``HeadSampler.apply(batch)`` keeps or drops every span and log of a batch by its trace's randomness
and its service's rate (a default, overridden per service), so every span of a trace gets the same
decision in every worker, after restarts and on replay, at a given rate. Kept spans carry their
adjusted count (``SampleWeight`` = 1 / probability). With rates that differ by service, a trace
kept at a lower rate is also kept at every higher rate (consistency), so services with lower rates
keep a subset of the traces others keep. Logs with a trace id follow the same decision, except
severities at or above ``keep_log_severity`` (default WARN), which are always kept; logs without a
trace id pass.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction

from streams.otlp.batch import ColumnBatch

MAX_THRESHOLD = 1 << 56
HEX_DIGITS = 14
DEFAULT_PRECISION = 4
SEVERITY_WARN = 13


class SamplingError(ValueError):
    pass


# ------------------------------------------------------------------ threshold arithmetic


@functools.lru_cache(maxsize=4096)
def probability_to_threshold(probability: float, precision: int = DEFAULT_PRECISION) -> int:
    """The 56-bit rejection threshold of a probability, rounded to ``precision`` hex digits
    (more for small probabilities, so the significant digits keep their precision). Memoised:
    policies and services ask for the same few rates once per trace."""
    if not (1 / MAX_THRESHOLD <= probability <= 1):
        raise SamplingError(f"sampling probability must be in [2^-56, 1], got {probability!r}")
    if probability == 1:
        return 0
    _, exp = math.frexp(probability)
    digits = max(1, min(12, precision + exp // -4))
    reject = 1 - Fraction(probability)
    scaled = reject * 16**digits
    rounded = math.floor(scaled + Fraction(1, 2))
    if rounded >= 16**digits:  # rounds up to "reject everything": keep the smallest probability instead
        rounded = 16**digits - 1
    return rounded * 16 ** (HEX_DIGITS - digits)


def threshold_to_th(threshold: int) -> str:
    if threshold == 0:
        return "0"
    return f"{threshold:014x}".rstrip("0")


def th_to_threshold(th: str) -> int:
    if not (1 <= len(th) <= HEX_DIGITS) or any(c not in "0123456789abcdef" for c in th):
        raise SamplingError(f"th must be 1 to 14 lower-case hex digits, got {th!r}")
    return int(th.ljust(HEX_DIGITS, "0"), 16)


def threshold_probability(threshold: int) -> float:
    return (MAX_THRESHOLD - threshold) / MAX_THRESHOLD


def adjusted_count(threshold: int) -> float:
    return MAX_THRESHOLD / (MAX_THRESHOLD - threshold)


def trace_randomness(trace_id_hex: str, rv: str | None = None) -> int:
    if rv is not None:
        return int(rv, 16)
    return int(trace_id_hex[-HEX_DIGITS:] or "0", 16)


# ------------------------------------------------------------------ W3C tracestate


def parse_ot(tracestate: str) -> dict[str, str]:
    """The sub-keys of the ``ot`` member of a W3C tracestate (``ot=th:8;rv:...``)."""
    for member in tracestate.split(","):
        key, _, value = member.strip().partition("=")
        if key == "ot":
            out = {}
            for item in value.split(";"):
                k, sep, v = item.partition(":")
                if sep:
                    out[k] = v
            return out
    return {}


def with_th(tracestate: str, th: str) -> str:
    """The tracestate with ``ot`` carrying this ``th`` (``ot`` moved first, everything else kept)."""
    members = [m.strip() for m in tracestate.split(",") if m.strip()]
    ot = parse_ot(tracestate)
    ot["th"] = th
    others = [m for m in members if m.partition("=")[0] != "ot"]
    ot_value = ";".join([f"th:{th}"] + [f"{k}:{v}" for k, v in ot.items() if k != "th"])
    return ",".join([f"ot={ot_value}"] + others)


def _valid_rv(value: str | None) -> str | None:
    if value is not None and len(value) == HEX_DIGITS and all(c in "0123456789abcdef" for c in value):
        return value
    return None


# ------------------------------------------------------------------ the head sampler


# The smallest probability otelpipe accepts unless configured otherwise (sampling.min_rate): a
# kept span then stands for at most 2^20 (about a million) spans.
DEFAULT_MIN_RATE = 2.0**-20


@dataclass(frozen=True)
class HeadRates:
    """Probabilities: a default and per service (1.0 keeps everything), none below ``floor``.

    ``floor`` is also the trust boundary for what producers send: a span arriving with a ``th``
    below it (a weight above ``1 / floor``) is counted with ``1 / floor`` at most."""

    default: float = 1.0
    services: dict[str, float] = field(default_factory=dict)
    floor: float = DEFAULT_MIN_RATE

    def __post_init__(self) -> None:
        probability_to_threshold(self.floor)
        for name, rate in [("default", self.default), *self.services.items()]:
            probability_to_threshold(rate)  # raises SamplingError naming the bad rate
            if rate < self.floor:
                raise SamplingError(f"sampling rate of {name!r} is {rate!r}, below the floor of {self.floor!r} "
                                    "(sampling.min_rate)")

    def rate(self, service: str) -> float:
        return self.services.get(service, self.default)

    @property
    def active(self) -> bool:
        return self.default < 1 or any(r < 1 for r in self.services.values())


# HeadSampler.decide's modes: every span of the group kept, its trace id's randomness tested, or none kept.
KEEP, TEST, DROP = 0, 1, 2


class HeadSampler:
    def __init__(self, rates: HeadRates, keep_log_severity: int = SEVERITY_WARN):
        self.rates = rates
        self.keep_log_severity = keep_log_severity
        self._thresholds: dict[str, int] = {}
        self._max_weight = 1 / rates.floor

    def threshold(self, service: str) -> int:
        t = self._thresholds.get(service)
        if t is None:
            t = self._thresholds[service] = probability_to_threshold(self.rates.rate(service))
        return t

    def apply(self, batch: ColumnBatch) -> tuple[ColumnBatch, Counter]:
        counts: Counter = Counter()
        if batch.table == "otel_traces":
            return self._spans(batch, counts), counts
        if batch.table == "otel_logs":
            return self._logs(batch, counts), counts
        return batch, counts

    def decide(self, service: str, state: str) -> tuple[int, int, float, str | None, bool]:
        """How the spans of one service with one trace state are sampled: (mode, threshold,
        weight, new trace state or None to keep it, whether the weight was capped). ``KEEP``: every
        such span stays; ``DROP``: none; ``TEST``: a span stays when its trace id's randomness
        is at least ``threshold``. Kept spans weigh ``weight``."""
        ours = self.threshold(service)
        upstream = 0
        rv = None
        if state:
            ot = parse_ot(state)
            rv = _valid_rv(ot.get("rv"))
            if "th" in ot:
                try:
                    upstream = th_to_threshold(ot["th"])
                except SamplingError:
                    upstream = 0
        if upstream >= ours:  # an earlier stage was as selective or more: nothing to do
            weight = adjusted_count(upstream)
            if weight > self._max_weight:  # a producer's th is trusted down to the floor rate only
                return KEEP, 0, self._max_weight, None, True
            return KEEP, 0, weight, None, False
        new_state = with_th(state, threshold_to_th(ours))
        if rv is not None:
            return (KEEP if trace_randomness("", rv) >= ours else DROP), ours, adjusted_count(ours), new_state, False
        return TEST, ours, adjusted_count(ours), new_state, False

    def skips_spans(self, any_trace_state: bool) -> bool:
        """True when head sampling leaves spans as they are: every rate 1, nothing sampled before
        (weights stay 1, the column's default)."""
        return not self.rates.active and not any_trace_state

    def _spans(self, batch: ColumnBatch, counts: Counter) -> ColumnBatch:
        cols = batch.columns
        if self.skips_spans(any(cols["TraceState"])):
            return batch
        keep: list[int] = []
        states = list(cols["TraceState"])
        weights: list[float] = []
        decided: dict[tuple[str, str], tuple[int, int, float, str | None, bool]] = {}
        for i, (trace_id, service, state) in enumerate(zip(cols["TraceId"], cols["ServiceName"], states)):
            decision = decided.get((service, state))
            if decision is None:
                decision = decided[(service, state)] = self.decide(service, state)
            mode, threshold, weight, new_state, capped = decision
            if mode == KEEP or (mode == TEST and trace_randomness(trace_id) >= threshold):
                keep.append(i)
                weights.append(weight)
                if capped:
                    counts[("sampling", "upstream_weight_capped")] += 1
                if new_state is not None:
                    states[i] = new_state
            else:
                counts[("sampling", "head_dropped_span")] += 1
        out = {name: values for name, values in cols.items()}
        out["TraceState"] = states
        if len(keep) != len(states):
            out = {name: [values[i] for i in keep] for name, values in out.items()}
        out["SampleWeight"] = weights
        return ColumnBatch(batch.table, out, batch.source)

    def _logs(self, batch: ColumnBatch, counts: Counter) -> ColumnBatch:
        cols = batch.columns
        if not self.rates.active:
            return batch
        keep: list[int] = []
        for i, (trace_id, service, severity) in enumerate(zip(cols["TraceId"], cols["ServiceName"],
                                                               cols["SeverityNumber"])):
            if not trace_id or severity >= self.keep_log_severity:
                keep.append(i)
                continue
            if trace_randomness(trace_id) >= self.threshold(service):
                keep.append(i)
            else:
                counts[("sampling", "head_dropped_log")] += 1
        if len(keep) == len(cols["TraceId"]):
            return batch
        return ColumnBatch(batch.table, {name: [values[i] for i in keep] for name, values in cols.items()},
                           batch.source)


def rate_from_record(key: str, value: bytes | None, floor: float = DEFAULT_MIN_RATE) -> float | None:
    """A control-topic record → its rate (None: the override is removed). Raises SamplingError,
    also for a rate below ``floor``."""
    if value is None:
        return None
    text = value.decode("utf-8", "replace").strip()
    try:
        rate = float(text)
    except ValueError:
        raise SamplingError(f"rate for {key!r} must be a number, got {text!r}") from None
    probability_to_threshold(rate)
    if rate < floor:
        raise SamplingError(f"rate for {key!r} is {rate!r}, below the floor of {floor!r} (sampling.min_rate)")
    return rate


def rates_with_overrides(base: HeadRates, overrides: dict[str, float]) -> HeadRates:
    """Runtime overrides (key ``*`` = the default) over the configured rates."""
    services = dict(base.services)
    services.update({k: v for k, v in overrides.items() if k != "*"})
    return HeadRates(overrides.get("*", base.default), services, base.floor)
