"""Cut a partition's messages into insert segments that a crash cannot duplicate.

A batch's insert token is derived from its offset range. After a crash the same messages come back,
but in batches of other sizes, so tokens alone would not match. The sink therefore records every
range before inserting it; ``plan_segments`` cuts re-delivered offsets at those recorded ranges:

- offsets inside a recorded range ``[a, b]`` form one segment with that range's token, once offset
  ``b`` itself has arrived (ClickHouse then drops the rows that had already landed, or inserts
  them if the crash came first);
- if a recorded range is only partly here, the offsets from it on are held back (not written, not
  acked) until the rest arrives with a later batch;
- offsets outside every recorded range form new segments, recorded before they are inserted.

Pure: offsets and ranges in, segments out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import xxhash

@dataclass(frozen=True)
class RecordedRange:
    first_offset: int
    last_offset: int
    first_hash: int = 0  # 0: unknown (recorded before fingerprints existed)
    last_hash: int = 0
    recorded_at_ms: int = 0
    insert_id: str = ""  # the insert (of one batch, across partitions) the range was recorded for
    insert_ranges: int = 0  # how many ranges that insert holds; 0: recorded alone


def stale_ranges(ranges: Sequence[RecordedRange], messages: Mapping[int, object],
                 fingerprint: Callable[[object], int], end_offset: int | None = None) -> list[RecordedRange]:
    """Recorded ranges that describe other messages than the ones at those offsets now.

    That happens when a topic is deleted and created again, or the broker's data is wiped: offsets
    restart and old ranges would hold the new messages back forever. Judged by the data and the
    offsets alone, never by anyone's clock: a range is stale when the message now at its first or
    last offset has another fingerprint, or when it ends at or past the partition's end offset
    (``end_offset``, the next offset the broker will give: a recorded range had all its messages).
    A range only partly here, with neither end among ``messages``, is held until its last offset
    arrives, and then its fingerprint decides.
    """
    stale = []
    for r in ranges:
        first, last = messages.get(r.first_offset), messages.get(r.last_offset)
        if r.first_hash and first is not None and fingerprint(first) != r.first_hash:
            stale.append(r)
        elif r.last_hash and last is not None and fingerprint(last) != r.last_hash:
            stale.append(r)
        elif end_offset is not None and r.last_offset >= end_offset:
            stale.append(r)
    return stale


class LedgerConflict(RuntimeError):
    """Another writer recorded ranges over the same messages first: plan again from the ledger."""


def resolve_overlaps(ranges: Sequence[RecordedRange]) -> list[RecordedRange]:
    """The ranges that stand when recorded ranges overlap: the first recorded wins (ClickHouse's
    clock, ``recorded_at_ms``; ties by offsets), and a range overlapping one that stands is set
    aside. Two writers that recorded different cuts of the same messages at the same moment thus
    both read the same cut back, and only its writer inserts under it. Sorted by first offset."""
    standing: list[RecordedRange] = []
    for r in sorted(ranges, key=lambda r: (r.recorded_at_ms, r.first_offset, r.last_offset)):
        if all(r.last_offset < s.first_offset or s.last_offset < r.first_offset for s in standing):
            standing.append(r)
    return sorted(standing, key=lambda r: r.first_offset)


@dataclass(frozen=True)
class Segment:
    first_offset: int  # token range: for a recorded segment, the recorded range itself
    last_offset: int
    start: int  # index into the offsets list, inclusive
    stop: int  # index, exclusive
    recorded: bool  # True: range already in the ledger, reuse its token


def plan_segments(offsets: Sequence[int], recorded: Sequence[tuple[int, int]]) -> tuple[list[Segment], int]:
    """Return (segments, ready): offsets[ready:] must be held back for a later batch.

    ``offsets`` is sorted and distinct; ``recorded`` holds inclusive (first, last) ranges.
    """
    n = len(offsets)
    segments: list[Segment] = []
    i = 0
    for first, last in sorted(recorded):
        if i >= n:
            break
        if last < offsets[i]:
            continue
        j = i
        while j < n and offsets[j] < first:
            j += 1
        if j > i:
            segments.append(Segment(offsets[i], offsets[j - 1], i, j, False))
            i = j
        if i >= n:
            break
        k = i
        while k < n and offsets[k] <= last:
            k += 1
        if k == i:
            continue  # nothing of this range here; the next offsets are past it
        if offsets[k - 1] != last:
            return segments, i  # the range's last message has not arrived yet: hold
        segments.append(Segment(first, last, i, k, True))
        i = k
    if i < n:
        segments.append(Segment(offsets[i], offsets[n - 1], i, n, False))
    return segments, n


def insert_id(keys: Sequence[tuple[str, int, int, int, str]]) -> str:
    """The id of one insert holding these ranges ((topic, partition, first, last, fingerprint)):
    the same ranges always make the same id, whatever their order."""
    text = "\n".join(f"{t}:{p}:{a}-{b}:{f}" for t, p, a, b, f in sorted(keys))
    return xxhash.xxh3_64_hexdigest(text.encode())


COMPLETE, HOLD, MISSING = "complete", "hold", "missing"


def recorded_inserts(present: Mapping[str, Sequence[tuple[str, int, RecordedRange]]], now_ms: int | None,
                     grace_ms: int) -> dict[str, str]:
    """What to do with the recorded inserts some of whose ranges are here (insert id → (topic,
    partition, range) of each range here):

    - ``complete``: every range of the insert is here: insert them together again under its token,
      and ClickHouse drops whatever had landed;
    - ``hold``: some ranges are elsewhere (not fetched yet, or their partition now belongs to another
      worker) and the insert was recorded less than ``grace_ms`` ago: its writer may still be
      inserting, so wait;
    - ``missing``: the rest is elsewhere for good: insert only the rows the tables lack (by RecordId),
      which is exact whether or not the first attempt landed, and whoever has the other ranges does
      the same with theirs.
    ``now_ms`` is ClickHouse's clock (None when every insert here is complete).
    """
    out = {}
    for key, here in present.items():
        expected = max(r.insert_ranges for _, _, r in here)
        if len({(t, p, r.first_offset, r.last_offset) for t, p, r in here}) >= expected:
            out[key] = COMPLETE
        elif now_ms is not None and now_ms - min(r.recorded_at_ms for _, _, r in here) >= grace_ms:
            out[key] = MISSING
        else:
            out[key] = HOLD
    return out
