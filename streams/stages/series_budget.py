"""Series budgets: at most N distinct attribute sets per metric and window, exact, durable.

``SeriesBudgetStage.apply(batch)`` → (batch, counts, alert records). For every metric point it
computes the series (a seeded xxhash of the service and the point's attributes) and looks it up in
the state of its (metric, window): a known series passes; a new one is admitted while the metric
is under its budget (``BudgetPolicy.for_metric``); past the budget the metric's action applies:

- ``bucketize``: the metric's highest-cardinality label (the one with the most distinct values
  among the admitted series, chosen once when the budget is crossed) gets ``bucket_N`` of a seeded
  hash as its value in the new series' points; points without that label are dropped;
- ``drop``: points that would create a new series are dropped.

Crossing the budget makes one alert record (kind ``cardinality``) naming the metric, the label,
the series count, the label's distinct values and the budget, stamped with the point's time, so a
replay makes the same record. Windows are tumbling windows of point time, clamped to the time of
the messages ± a clock skew (``apply(batch, now_ns)``); a metric's windows share a few state keys
(``state_key``: window modulo ``slots_for``), so the state is bounded per metric whatever times the
points carry, and a window's state is overwritten when a later window takes its key.

State lives in a key-value store (``key → bytes``; in the worker a changelogged faust table whose
keys are routed with the metric, in a replay a dict). The stage never writes to it during
``apply``: changes stay pending until ``commit()``, which the worker calls only after the batch's
rows are in ClickHouse, so a crash can leave the state behind the data (the redelivered points then
meet the same decisions: admitting a series twice is a no-op) but never ahead of it.
"""

from __future__ import annotations

import sys
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import orjson
import xxhash

from streams.stages.alerts import Firing, record
from streams.otlp.batch import ColumnBatch
from streams.stages.labels import stable_hash
from streams.stages.label_policy import BudgetPolicy, MetricBudget

KEY_SEPARATOR = "\x1f"
_FORMAT = b"SB1"


DEFAULT_SLOTS = 4
# How far a point's time may be from the time of the messages carrying it before its window is
# taken from that bound instead (counted as late or future points).
DEFAULT_CLOCK_SKEW_S = 600


def slots_for(window_s: int, skew_s: int) -> int:
    """State keys per metric: enough for every window a point can fall in (now ± skew), plus one."""
    return max(DEFAULT_SLOTS, (2 * skew_s) // max(window_s, 1) + 3)


def state_key(metric: str, window: int, slots: int = DEFAULT_SLOTS) -> str:
    """A metric's state for a window lives in one of ``slots`` keys (the window's number modulo
    ``slots``); the state names its window, so a slot holding an older window reads as empty and
    is overwritten. A metric never has more keys than that, whatever times its points carry."""
    return f"{metric}{KEY_SEPARATOR}{window % slots}"


def metric_of_key(key: str) -> str:
    return key.rsplit(KEY_SEPARATOR, 1)[0]


def series_hash(seed: int, service: str, attrs: dict[str, str]) -> int:
    h = xxhash.xxh64(service.encode("utf-8", "surrogatepass"), seed=seed)
    for k in sorted(attrs):
        h.update(b"\x00" + k.encode("utf-8", "surrogatepass") + b"\x01" + attrs[k].encode("utf-8", "surrogatepass"))
    return h.intdigest()


def _u64(values: set[int]) -> bytes:
    arr = array("Q", sorted(values))
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tobytes()


def _from_u64(raw: bytes) -> set[int]:
    arr = array("Q")
    arr.frombytes(raw)
    if sys.byteorder != "little":
        arr.byteswap()
    return set(arr)


@dataclass
class SeriesState:
    """What one metric has seen in one window."""

    series: set[int] = field(default_factory=set)
    label_values: dict[str, set[int]] = field(default_factory=dict)  # label → hashes of its values
    over: bool = False  # the budget was crossed (and announced) in this window
    label: str = ""  # the label being bucketized
    refused: int = 0  # points dropped or bucketized in this window
    window: int | None = None  # the window this state is of (None: stored before states named it)

    def copy(self) -> "SeriesState":
        return SeriesState(set(self.series), {k: set(v) for k, v in self.label_values.items()}, self.over,
                           self.label, self.refused, self.window)

    def top_label(self) -> tuple[str, int]:
        """The label with the most distinct values (ties: the smaller name)."""
        if not self.label_values:
            return "", 0
        name, values = min(self.label_values.items(), key=lambda kv: (-len(kv[1]), kv[0]))
        return name, len(values)

    def to_bytes(self) -> bytes:
        labels = sorted(self.label_values)
        header = orjson.dumps({"over": self.over, "label": self.label, "refused": self.refused, "window": self.window,
                               "n": len(self.series), "labels": [[k, len(self.label_values[k])] for k in labels]})
        parts = [_FORMAT, len(header).to_bytes(4, "little"), header, _u64(self.series)]
        parts.extend(_u64(self.label_values[k]) for k in labels)
        return b"".join(parts)

    @classmethod
    def from_bytes(cls, raw: bytes) -> "SeriesState":
        if raw[:3] != _FORMAT:
            raise ValueError("not a series budget state")
        size = int.from_bytes(raw[3:7], "little")
        header = orjson.loads(raw[7:7 + size])
        pos = 7 + size
        n = header["n"]
        series = _from_u64(raw[pos:pos + 8 * n])
        pos += 8 * n
        label_values = {}
        for name, count in header["labels"]:
            label_values[name] = _from_u64(raw[pos:pos + 8 * count])
            pos += 8 * count
        return cls(series, label_values, header["over"], header["label"], header.get("refused", 0),
                   header.get("window"))


@dataclass
class BudgetCommit:
    """What ``commit`` hands the caller: state changes to store, and the alerts to announce."""

    set: dict[str, bytes] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)


class SeriesBudgetStage:
    def __init__(self, policy: BudgetPolicy, get: Callable[[str], bytes | None], autocommit: bool = False,
                 clock_skew_s: int = DEFAULT_CLOCK_SKEW_S):
        """``get(key)`` reads the store. With ``autocommit`` (replays, tests over a dict) each
        ``apply`` commits its own changes into the dict given as ``get.__self__``."""
        self.policy = policy
        self.clock_skew_ns = clock_skew_s * 1_000_000_000
        self._slots = slots_for(policy.window_s, clock_skew_s)
        self.get = get
        self.autocommit = autocommit
        self._seed = xxhash.xxh32_intdigest(policy.seed.encode())
        self._window_ns = policy.window_s * 1_000_000_000
        self._budgets: dict[str, MetricBudget] = {}
        self._cache: dict[str, tuple[bytes, SeriesState]] = {}  # decoded store values, by identity
        self._pending: dict[str, SeriesState] = {}
        self._deletes: set[str] = set()
        self._alerts: list[dict[str, Any]] = []
        self._incoming: BudgetPolicy | None = None

    def set_policy(self, policy: BudgetPolicy) -> None:
        """A reloaded policy (from any thread): it takes effect at the next ``begin``, between two
        writes, never inside a batch being decided. What was seen stays."""
        self._incoming = policy
        if self.autocommit:  # no writes to wait for (replays, tests)
            self._adopt()

    def _adopt(self) -> None:
        policy, self._incoming = self._incoming, None
        if policy is None:
            return
        self.policy = policy
        self._seed = xxhash.xxh32_intdigest(policy.seed.encode())
        self._window_ns = policy.window_s * 1_000_000_000
        self._slots = slots_for(policy.window_s, self.clock_skew_ns // 1_000_000_000)
        self._budgets = {}

    @classmethod
    def in_memory(cls, policy: BudgetPolicy, clock_skew_s: int = DEFAULT_CLOCK_SKEW_S) -> "SeriesBudgetStage":
        store: dict[str, bytes] = {}
        stage = cls(policy, store.get, autocommit=True, clock_skew_s=clock_skew_s)
        stage.store = store  # type: ignore[attr-defined]
        return stage

    # ------------------------------------------------------------ state

    def begin(self) -> None:
        """Forget uncommitted changes (a failed write is retried from the stored state), and adopt
        a policy set since the last write."""
        self._adopt()
        self._pending.clear()
        self._deletes.clear()
        self._alerts.clear()

    def _budget(self, metric: str) -> MetricBudget:
        budget = self._budgets.get(metric)
        if budget is None:
            budget = self._budgets[metric] = self.policy.for_metric(metric)
        return budget

    def state(self, metric: str, window: int) -> SeriesState | None:
        """The state of a metric's window as stored plus pending changes (read-only)."""
        key = state_key(metric, window, self._slots)
        pending = self._pending.get(key)
        if pending is not None:
            return pending if pending.window == window else None
        if key in self._deletes:
            return None
        raw = self.get(key)
        if raw is None:
            return None
        cached = self._cache.get(key)
        if cached is not None and cached[0] is raw:
            state = cached[1]
        else:
            state = SeriesState.from_bytes(raw)
            self._cache[key] = (raw, state)
        return state if state.window in (window, None) else None

    def _writable(self, metric: str, window: int) -> SeriesState:
        key = state_key(metric, window, self._slots)
        pending = self._pending.get(key)
        if pending is None or pending.window != window:
            current = self.state(metric, window)
            pending = self._pending[key] = current.copy() if current is not None else SeriesState()
            pending.window = window
            self._deletes.discard(key)
        return pending

    def commit(self) -> BudgetCommit:
        out = BudgetCommit(alerts=list(self._alerts))
        for key, state in self._pending.items():
            raw = state.to_bytes()
            out.set[key] = raw
            self._cache[key] = (raw, state)
        for key in self._deletes:
            out.delete.append(key)
            self._cache.pop(key, None)
        self.begin()
        return out

    # ------------------------------------------------------------ the stage

    def apply(self, batch: ColumnBatch, now_ns: int | None = None) -> tuple[ColumnBatch, Counter, list[dict[str, Any]]]:
        """``now_ns``: the time of the messages the points came in (see ``Stages``); a point's
        window comes from its own time clamped to ``now_ns`` ± the clock skew, so a point stamped
        far in the past or future neither opens windows nor keeps state alive (counted as
        ``late_point`` / ``future_point``). Without ``now_ns`` point times are taken as they are."""
        counts: Counter = Counter()
        new_alerts: list[dict[str, Any]] = []
        if not self.policy.enabled or "MetricName" not in batch.columns or not len(batch):
            return batch, counts, new_alerts
        cols = batch.columns
        names, services, attrs_col, times = cols["MetricName"], cols["ServiceName"], cols["Attributes"], cols["TimeUnix"]
        keep: list[int] = []
        new_attrs: dict[int, dict[str, str]] = {}
        seed = self._seed
        window_ns = self._window_ns
        lo = hi = None
        if now_ns is not None:
            lo, hi = now_ns - self.clock_skew_ns, now_ns + self.clock_skew_ns
        for i, (metric, service, attrs, ts) in enumerate(zip(names, services, attrs_col, times)):
            if lo is not None:
                if ts < lo:
                    ts = lo
                    counts[("budget", "late_point")] += 1
                elif ts > hi:
                    ts = hi
                    counts[("budget", "future_point")] += 1
            window = ts // window_ns
            h = series_hash(seed, service, attrs)
            state = self.state(metric, window)
            if state is not None and h in state.series:
                keep.append(i)
                continue
            budget = self._budget(metric)
            if state is None or len(state.series) < budget.limit:
                state = self._writable(metric, window)
                state.series.add(h)
                for label, value in attrs.items():
                    state.label_values.setdefault(label, set()).add(
                        xxhash.xxh64_intdigest(value.encode("utf-8", "surrogatepass"), seed=seed))
                keep.append(i)
                continue
            state = self._writable(metric, window)
            if not state.over:
                state.over = True
                label, distinct = state.top_label()
                state.label = label if budget.action == "bucketize" else ""
                alert = record(Firing(
                    kind="cardinality", service=service, name=metric, severity="ticket",
                    value=float(len(state.series)), threshold=float(budget.limit),
                    details=(("action", budget.action), ("label", label), ("label_values", str(distinct)),
                             ("series", str(len(state.series))), ("budget", str(budget.limit)),
                             ("window_start", str(window * self.policy.window_s)),
                             ("window_s", str(self.policy.window_s)))), "firing", ts // 1_000_000)
                new_alerts.append(alert)
                counts[("budget", "crossed")] += 1
            state.refused += 1
            if budget.action == "bucketize" and state.label in attrs:
                changed = dict(attrs)
                changed[state.label] = f"bucket_{stable_hash(self.policy.seed, attrs[state.label]) % self.policy.buckets}"
                new_attrs[i] = changed
                keep.append(i)
                counts[("budget", "bucketized")] += 1
            else:
                counts[("budget", "dropped_new_series")] += 1
        self._alerts.extend(new_alerts)
        if len(keep) != len(names) or new_attrs:
            columns = {}
            for name, values in cols.items():
                if name == "Attributes":
                    columns[name] = [new_attrs.get(i, values[i]) for i in keep]
                else:
                    columns[name] = [values[i] for i in keep] if len(keep) != len(names) else values
            batch = ColumnBatch(batch.table, columns, batch.source)
        if self.autocommit:
            done = self.commit()
            store = getattr(self, "store", None)
            if store is not None:
                store.update(done.set)
                for key in done.delete:
                    store.pop(key, None)
        return batch, counts, new_alerts

    def series_counts(self) -> dict[str, tuple[int, int, str]]:
        """For the CLI and tests: state key → (series, budget, bucketized label), from the cache."""
        return {k: (len(s.series), self._budget(metric_of_key(k)).limit, s.label) for k, (_, s) in self._cache.items()}
