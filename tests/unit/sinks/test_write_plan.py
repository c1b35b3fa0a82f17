from sinks.write_plan import Segment, plan_segments


def test_no_recorded_ranges_is_one_new_segment():
    assert plan_segments([5, 6, 7], []) == ([Segment(5, 7, 0, 3, False)], 3)


def test_redelivered_batch_is_cut_at_recorded_range():
    # [0..9] was recorded (and maybe inserted) before a crash; after restart 0..14 arrive at once.
    segments, ready = plan_segments(list(range(15)), [(0, 9)])
    assert segments == [Segment(0, 9, 0, 10, True), Segment(10, 14, 10, 15, False)]
    assert ready == 15


def test_partial_recorded_range_is_held_until_complete():
    segments, ready = plan_segments([0, 1, 2, 3, 4], [(0, 9)])
    assert segments == [] and ready == 0
    segments, ready = plan_segments(list(range(12)), [(0, 9)])
    assert segments[0] == Segment(0, 9, 0, 10, True) and ready == 12


def test_several_recorded_ranges_and_gaps():
    offsets = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    segments, ready = plan_segments(offsets, [(2, 3), (6, 8)])
    assert segments == [
        Segment(0, 1, 0, 2, False),
        Segment(2, 3, 2, 4, True),
        Segment(4, 5, 4, 6, False),
        Segment(6, 8, 6, 9, True),
        Segment(9, 9, 9, 10, False),
    ]
    assert ready == 10


def test_ranges_before_the_batch_are_ignored():
    assert plan_segments([10, 11], [(0, 4), (5, 9)]) == ([Segment(10, 11, 0, 2, False)], 2)


def test_batch_starting_inside_a_recorded_range_reuses_its_token():
    segments, ready = plan_segments([5, 6, 7, 8], [(3, 6)])
    assert segments == [Segment(3, 6, 0, 2, True), Segment(7, 8, 2, 4, False)]


def test_offsets_with_gaps_from_transaction_markers():
    segments, _ = plan_segments([0, 2, 4, 6], [(0, 4)])
    assert segments == [Segment(0, 4, 0, 3, True), Segment(6, 6, 3, 4, False)]


def test_every_offset_is_planned_exactly_once():
    import random

    rng = random.Random(3)
    for _ in range(500):
        offsets = sorted(rng.sample(range(60), rng.randrange(1, 40)))
        cuts = sorted(rng.sample(range(60), rng.randrange(0, 10)))
        ranges = []
        for a, b in zip(cuts[::2], cuts[1::2]):
            ranges.append((a, b))
        segments, ready = plan_segments(offsets, ranges)
        covered = [i for s in segments for i in range(s.start, s.stop)]
        assert covered == list(range(ready))
        for s in segments:
            assert s.first_offset <= offsets[s.start] and offsets[s.stop - 1] <= s.last_offset


def test_stale_ranges_are_found_by_fingerprint_or_offsets_never_by_clocks():
    from sinks.write_plan import RecordedRange, stale_ranges

    messages = {0: "a", 1: "b", 2: "c"}
    fp = {"a": 11, "b": 12, "c": 13, "x": 99}

    def check(ranges, end=None):
        return stale_ranges(ranges, messages, lambda m: fp[m], end)

    same = RecordedRange(0, 2, 11, 13, 5000)
    assert check([same]) == [] and check([same], end=3) == []
    other_first = RecordedRange(0, 2, 99, 13, 5000)
    other_last = RecordedRange(0, 2, 11, 99, 5000)
    assert check([other_first, other_last]) == [other_first, other_last]
    # recorded long before these messages' timestamps (a producer with a fast clock): not stale
    assert check([RecordedRange(0, 2, 11, 13, 1)]) == []
    beyond_end = RecordedRange(0, 9, 11, 0, 5000)  # offset 9 does not exist: the topic was recreated
    assert check([beyond_end], end=3) == [beyond_end]
    unknown = RecordedRange(0, 9, 0, 0, 0)  # no fingerprints, end unknown: kept (and held until offset 9)
    assert check([unknown]) == []


def test_overlapping_recorded_ranges_resolve_to_the_first_recorded():
    from sinks.write_plan import RecordedRange, resolve_overlaps

    first = RecordedRange(0, 9, recorded_at_ms=100)
    later = [RecordedRange(0, 4, recorded_at_ms=101), RecordedRange(5, 12, recorded_at_ms=101)]
    beyond = RecordedRange(13, 20, recorded_at_ms=102)
    assert resolve_overlaps(later + [beyond, first]) == [first, beyond]
    assert resolve_overlaps(later) == later


def test_an_insert_id_names_its_ranges_in_any_order():
    from sinks.write_plan import insert_id

    a = [("spans", 0, 0, 9, "a.b"), ("spans", 1, 5, 7, "c.d")]
    assert insert_id(a) == insert_id(list(reversed(a)))
    assert insert_id(a) != insert_id(a[:1]) != insert_id([("spans", 0, 0, 9, "a.x")])


def test_recorded_inserts_complete_held_then_written_missing():
    from sinks.write_plan import COMPLETE, HOLD, MISSING, RecordedRange, recorded_inserts

    r0 = RecordedRange(0, 9, recorded_at_ms=1_000, insert_id="x", insert_ranges=2)
    r1 = RecordedRange(0, 9, recorded_at_ms=1_000, insert_id="x", insert_ranges=2)  # same offsets, other partition
    both = {"x": [("spans", 0, r0), ("spans", 1, r1)]}
    assert recorded_inserts(both, None, 60_000) == {"x": COMPLETE}
    one = {"x": [("spans", 0, r0)]}
    assert recorded_inserts(one, None, 60_000) == {"x": HOLD}  # no clock: never given up on
    assert recorded_inserts(one, 60_999, 60_000) == {"x": HOLD}  # its writer may still be inserting
    assert recorded_inserts(one, 61_000, 60_000) == {"x": MISSING}
    twice = {"x": [("spans", 0, r0), ("spans", 0, r0)]}  # one range seen twice is still one range
    assert recorded_inserts(twice, 0, 60_000) == {"x": HOLD}
