"""Merging the cuts of a batch (one per partition) into one insert per table."""

from streams.agents.signal_writer import merge_parts
from streams.otlp.batch import ORIGIN, ColumnBatch, DecodeResult, RawMessage


def part(partition: int, n: int, extra: bool = False) -> tuple[list[RawMessage], DecodeResult]:
    messages = [RawMessage("t", partition, o, b"") for o in range(n)]
    columns = {"A": [f"{partition}:{o}" for o in range(n)], ORIGIN: list(range(n))}
    if extra:
        columns["B"] = [1] * n
    return messages, DecodeResult(batches={"otel_traces": ColumnBatch("otel_traces", columns)})


def test_one_batch_per_table_with_origins_shifted_to_the_merged_run():
    run, batches = merge_parts([part(0, 2), part(1, 3)])
    assert [(m.partition, m.offset) for m in run] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2)]
    assert list(batches) == ["otel_traces"]
    merged = batches["otel_traces"]
    assert merged.columns["A"] == ["0:0", "0:1", "1:0", "1:1", "1:2"]
    assert merged.origins() == [0, 1, 2, 3, 4]
    assert [run[o].partition for o in merged.origins()] == [0, 0, 1, 1, 1]


def test_batches_of_other_columns_stay_apart_in_a_stable_order():
    _, batches = merge_parts([part(0, 1), part(1, 1, extra=True), part(2, 1)])
    assert list(batches) == ["otel_traces", "otel_traces#1"]
    assert batches["otel_traces"].columns["A"] == ["0:0", "2:0"]
    assert batches["otel_traces#1"].origins() == [1]


def test_empty_batches_are_left_out():
    messages, result = part(0, 0)
    run, batches = merge_parts([(messages, result), part(1, 1)])
    assert batches["otel_traces"].origins() == [0] and len(run) == 1
