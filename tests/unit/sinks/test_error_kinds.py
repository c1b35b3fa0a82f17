"""How the sink tells "try later" from "these rows cannot be stored", and what it does with each."""

from __future__ import annotations

import struct

import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, DataError, OperationalError

from sinks.clickhouse import REFUSED, RETRY, UNKNOWN, ClickHouseSink, describe_error, error_kind
from sinks.settings import ClickHouseSettings
from streams.otlp.batch import ORIGIN, ColumnBatch


@pytest.mark.parametrize("exc, kind", [
    (OperationalError("connection refused"), RETRY),
    (ConnectionResetError(), RETRY),
    (TimeoutError(), RETRY),
    (DatabaseError("Code: 252. DB::Exception: Too many parts (TOO_MANY_PARTS)"), RETRY),
    (DatabaseError("Code: 241. DB::Exception: Memory limit (MEMORY_LIMIT_EXCEEDED)"), RETRY),
    (DatabaseError("Code: 60. DB::Exception: Table x.y does not exist. (UNKNOWN_TABLE)"), RETRY),
    (DatabaseError("Code: 516. DB::Exception: default: Authentication failed (AUTHENTICATION_FAILED)"), RETRY),
    (DataError("Unable to create native array for column `a`: error"), REFUSED),
    (struct.error("ubyte format requires 0 <= number <= 255"), REFUSED),
    (ValueError("invalid literal for int()"), REFUSED),
    (DatabaseError("Code: 53. DB::Exception: Type mismatch (TYPE_MISMATCH)"), REFUSED),
    (DatabaseError("Code: 131. DB::Exception: String too large (TOO_LARGE_STRING_SIZE)"), REFUSED),
    (DatabaseError("Code: 1001. DB::Exception: std::exception (STD_EXCEPTION)"), UNKNOWN),
    (DatabaseError("something without a code"), UNKNOWN),
    (RuntimeError("who knows"), UNKNOWN),
])
def test_error_kind(exc, kind):
    assert error_kind(exc) == kind


def test_described_without_the_text_that_may_quote_rows():
    exc = DatabaseError("Code: 27. DB::Exception: Cannot parse input: expected '\"' before: 'secret-token-123' "
                        "(CANNOT_PARSE_INPUT_ASSERTION_FAILED)")
    assert describe_error(exc) == "DatabaseError code 27 CANNOT_PARSE_INPUT_ASSERTION_FAILED"
    assert describe_error(DataError("column `a`: value 300")) == "DataError"


class FailingClient:
    """A client whose inserts fail while their rows contain a value, with a given error."""

    def __init__(self, bad_value: int, error: BaseException, transient: int = 0):
        self.bad_value, self.error, self.transient = bad_value, error, transient
        self.inserted: dict[str, list[int]] = {}  # token → values

    def insert(self, table, columns, column_names, column_oriented, settings):
        if self.transient:
            self.transient -= 1
            raise OperationalError("server away")
        values = columns[column_names.index("V")]
        if self.bad_value in values:
            raise self.error
        self.inserted.setdefault(settings["insert_deduplication_token"], values)


def batch(values: list[int]) -> ColumnBatch:
    return ColumnBatch("t", {"V": values, ORIGIN: list(range(len(values)))})


def sink(client, retries: int = 3) -> ClickHouseSink:
    return ClickHouseSink(client, ClickHouseSettings(unknown_error_retries=retries), "g")


def stored(client) -> list[int]:
    return sorted(v for values in client.inserted.values() for v in values)


def test_refused_rows_are_found_by_halving():
    client = FailingClient(13, DataError("bad"))
    values = list(range(20)) + [13, 13]
    refused = sink(client).write_isolating(batch(values), "tok")
    assert sorted(r.origin for r in refused) == [13, 20, 21]
    assert stored(client) == sorted(v for v in values if v != 13)
    # the cuts depend on the rows only: the same batch again makes the same tokens
    tokens = set(client.inserted)
    sink(client).write_isolating(batch(values), "tok")
    assert set(client.inserted) == tokens


def test_an_unknown_error_is_retried_a_bounded_number_of_times_then_halved():
    client = FailingClient(5, RuntimeError("unheard of"))
    s = sink(client, retries=3)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            s.write_isolating(batch(list(range(8))), "tok")
    refused = s.write_isolating(batch(list(range(8))), "tok")
    assert [r.origin for r in refused] == [5]
    assert stored(client) == [0, 1, 2, 3, 4, 6, 7]


def test_retryable_errors_are_raised_every_time():
    client = FailingClient(999, DataError("never"), transient=50)
    s = sink(client, retries=1)
    for _ in range(50):
        with pytest.raises(OperationalError):
            s.write_isolating(batch([1, 2]), "tok")
    assert s.write_isolating(batch([1, 2]), "tok") == []
    assert stored(client) == [1, 2]


@pytest.mark.parametrize("seed", range(30))
def test_any_set_of_bad_rows_is_found_exactly(seed):
    import random

    rng = random.Random(seed)
    n = rng.randint(1, 60)
    values = [rng.randint(0, 9) for _ in range(n)]
    client = FailingClient(7, DataError("bad"))
    refused = sink(client).write_isolating(batch(values), f"tok{seed}")
    assert sorted(r.origin for r in refused) == [i for i, v in enumerate(values) if v == 7]
    assert stored(client) == sorted(v for v in values if v != 7)
