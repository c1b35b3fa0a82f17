from sinks.clickhouse import DAY_NS, blocks_within_partition_limit
from streams.otlp.batch import ColumnBatch


def batch(days):
    return ColumnBatch("otel_traces", {"Timestamp": [d * DAY_NS + 5 for d in days], "SpanId": [str(i) for i in range(len(days))]})


def test_small_batches_are_left_whole():
    b = batch([1, 2, 2, 3])
    assert blocks_within_partition_limit(b, limit=3) == [b]


def test_many_days_are_cut_into_pieces_of_at_most_the_limit():
    days = [9, 1, 5, 1, 7, 3, 9, 2, 8, 4, 6, 0]
    pieces = blocks_within_partition_limit(batch(days), limit=4)
    assert [len({t // DAY_NS for t in p.columns["Timestamp"]}) for p in pieces] == [4, 4, 2]
    assert sorted(i for p in pieces for i in p.columns["SpanId"]) == sorted(str(i) for i in range(len(days)))
    first = pieces[0].columns
    assert first["SpanId"] == ["1", "3", "5", "7", "11"]  # rows keep their order within a piece
    assert blocks_within_partition_limit(batch(days), limit=4)[1].columns == pieces[1].columns  # deterministic


def test_tables_without_a_time_partition_are_untouched():
    b = ColumnBatch("otelpipe_alerts", {"Timestamp": [1, 2]})
    assert blocks_within_partition_limit(b, limit=1) == [b]
