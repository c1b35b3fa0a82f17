"""Redaction fails closed: a secret planted in every field of every signal (the field list comes
from the OTLP schema, see tests/planted_secrets.py) is found in no stored cell, whichever column it
lands in, through both decoders (protobuf and JSON)."""

import base64
import re

import orjson
import pytest
from google.protobuf import json_format

from streams.otlp.batch import ORIGIN, RawMessage
from streams.otlp.columns import SIGNAL_TABLES, SPAN_KINDS, STATUS_CODES
from streams.stages.label_policy import parse_policy
from streams.stages.labels import EXEMPT_COLUMNS, LabelStage
from streams.stages.pipeline import Stages
from tests.planted_secrets import MARKERS, SECRET_TEXT, leaks, requests_with_secrets

_HEX = re.compile(r"[0-9a-f]*")


def _as_otlp_json(request) -> bytes:
    """OTLP JSON (ids as hex, as the OTLP spec writes them, not protobuf's base64)."""
    data = json_format.MessageToDict(request)

    def hexify(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("traceId", "spanId", "parentSpanId") and isinstance(value, str):
                    node[key] = base64.b64decode(value).hex()
                else:
                    hexify(value)
        elif isinstance(node, list):
            for item in node:
                hexify(item)
    hexify(data)
    return orjson.dumps(data)


def _stages(encoding: str) -> Stages:
    return Stages(lambda topic: encoding, 16 * 1024 * 1024, LabelStage(parse_policy({})))


@pytest.mark.parametrize("encoding", ["otlp_proto", "otlp_json"])
@pytest.mark.parametrize("signal", ["traces", "logs", "metrics"])
def test_no_planted_secret_reaches_a_row(signal, encoding):
    tables_seen = set()
    for request in requests_with_secrets(signal):
        value = request.SerializeToString() if encoding == "otlp_proto" else _as_otlp_json(request)
        result = _stages(encoding).run(signal, [RawMessage("t", 0, 0, value)])
        assert not result.dead_letters, [(d.reason, d.detail) for d in result.dead_letters]
        for table, batch in result.batches.items():
            assert len(batch), table
            tables_seen.add(table)
            for column, cells in batch.columns.items():
                for row, cell in enumerate(cells):
                    assert not leaks(cell), f"{table}.{column} row {row} keeps {leaks(cell)}: {cell!r}"[:600]
    assert set(SIGNAL_TABLES[signal]) <= tables_seen  # every table of the signal was filled


def test_the_planted_fields_do_reach_the_rows_without_a_policy():
    """The check above can fail: with the label stage off, the secrets are stored."""
    for signal in ("traces", "logs", "metrics"):
        request = next(requests_with_secrets(signal))
        result = Stages(lambda topic: "otlp_proto", 16 * 1024 * 1024, None).run(
            signal, [RawMessage("t", 0, 0, request.SerializeToString())])
        found = {m for batch in result.batches.values() for cells in batch.columns.values()
                 for cell in cells for m in leaks(cell)}
        assert found == set(MARKERS), signal


@pytest.mark.parametrize("signal", ["traces", "logs", "metrics"])
def test_every_text_column_is_redacted_or_holds_only_ids_and_enum_names(signal):
    """Every column that received the planted text is redacted; the exempt ones cannot hold it."""
    request = next(requests_with_secrets(signal))
    raw = Stages(lambda topic: "otlp_proto", 16 * 1024 * 1024, None).run(
        signal, [RawMessage("t", 0, 0, request.SerializeToString())])
    enums = set(SPAN_KINDS) | set(STATUS_CODES)
    for batch in raw.batches.values():
        for column in EXEMPT_COLUMNS & set(batch.columns):
            for cell in batch.columns[column]:
                items = cell if isinstance(cell, (list, tuple)) else [cell]
                for item in items:
                    if column == ORIGIN:
                        assert isinstance(item, int)
                    else:
                        assert _HEX.fullmatch(item) or item in enums, (column, item)
        carriers = [c for c, cells in batch.columns.items()
                    if any(SECRET_TEXT in s for cell in cells for s in _strings(cell))]
        assert carriers and not set(carriers) & EXEMPT_COLUMNS


def _strings(cell):
    from tests.planted_secrets import strings_of
    return strings_of(cell)
