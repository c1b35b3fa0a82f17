"""Routing metrics by name: parts that add up to the request, stable partitions, envelopes."""

import asyncio

import pytest

from streams.otlp.batch import RawMessage
from streams.otlp.decode import decode_messages
from streams.otlp.values import BadMessage
from streams.otlp.encode import encode_request
from streams.agents.routing import decode_envelope, encode_envelope, route_partition, split_metrics, virtual_message
from tests.otlp_builders import metrics_request


def rows_by_metric(messages):
    result = decode_messages("metrics", messages)
    out = {}
    for table, batch in result.batches.items():
        for row in batch.rows():
            out.setdefault((table, row["MetricName"]), []).append(row)
    return out


def test_parts_hold_every_metric_once_each_in_its_partition():
    request = metrics_request()
    message = RawMessage("otlp_metrics", 2, 40, request.SerializeToString(), timestamp_ms=1234)
    parts = split_metrics(message, "otlp_proto", 4)
    assert len(parts) > 1  # the builder's five metrics do not all hash alike over 4 partitions
    for partition, payload in parts.items():
        names = {name for _, name in rows_by_metric([RawMessage("x", 0, 0, payload)])}
        assert names and all(route_partition(n, 4) == partition for n in names)
    whole = rows_by_metric([message])
    split = {}
    for p, payload in parts.items():
        split.update(rows_by_metric([RawMessage("x", 0, p, payload)]))
    assert split == whole  # resource, scope and every point survive the cut


def test_json_requests_are_split_too_and_one_partition_passes_bytes_through():
    request = metrics_request()
    as_json = encode_request(request, "otlp_json")
    message = RawMessage("m", 0, 0, as_json, headers=(("content-type", b"application/json"),))
    parts = split_metrics(message, "otlp_proto", 4)
    assert sum(len(rows) for rows in rows_by_metric([RawMessage("x", 0, i, p) for i, p in parts.items()]).values()) == 5
    raw = request.SerializeToString()
    assert split_metrics(RawMessage("m", 0, 0, raw), "otlp_proto", 1) == {0: raw}


def test_routes_are_fixed_forever():
    # pinned: a change would move metrics (and their budget state) to other partitions
    assert route_partition("http.server.duration", 1_000_003) == 762_933


def test_bad_requests_raise_bad_message():
    with pytest.raises(BadMessage):
        split_metrics(RawMessage("m", 0, 0, b"\xff\xff not protobuf"), "otlp_proto", 4)


def test_envelope_round_trip_and_virtual_coordinates():
    source = RawMessage("otlp_metrics", 3, 99, b"whatever", timestamp_ms=1700)
    value = encode_envelope("metrics", source, 1, b"payload")
    env = decode_envelope(value)
    routed = RawMessage("otlp_metrics.routed", 1, 7, value)
    virtual = virtual_message(env, routed)
    assert (virtual.partition, virtual.offset, virtual.value, virtual.timestamp_ms) == (3, 99, b"payload", 1700)
    assert virtual.topic == "otlp_metrics@otlp_metrics.routed/1"
    with pytest.raises(BadMessage):
        decode_envelope(b"\x01")


def test_a_refused_metrics_part_is_cut_in_halves_that_keep_every_metric_once():
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

    from streams.agents.routing import halve_metrics
    from tests.otlp_builders import metrics_request

    request = metrics_request()
    names = [m.name for rm in request.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]
    halves = halve_metrics(request.SerializeToString())
    got = [[m.name for rm in ExportMetricsServiceRequest.FromString(h).resource_metrics
            for sm in rm.scope_metrics for m in sm.metrics] for h in halves]
    assert got[0] + got[1] == names and len(got[0]) == len(names) // 2
    single = ExportMetricsServiceRequest.FromString(halves[0])
    while len([m for rm in single.resource_metrics for sm in rm.scope_metrics for m in sm.metrics]) > 1:
        single = ExportMetricsServiceRequest.FromString(halve_metrics(single.SerializeToString())[0])
    assert halve_metrics(single.SerializeToString()) is None


def test_a_piece_has_a_lane_of_its_own_in_its_routed_partition():
    from streams.agents.routing import PIECE_HEADER, assigned_partition, encode_envelope, virtual_message

    source = RawMessage("otlp_metrics", 1, 99, b"x")
    env = decode_envelope(encode_envelope("metrics", source, 2, b"piece"))
    whole = virtual_message(env, RawMessage("a.otlp_metrics.routed", 2, 7, b""))
    piece = virtual_message(env, RawMessage("a.otlp_metrics.routed", 2, 8, b"", headers=((PIECE_HEADER, b"0.1"),)))
    assert whole.topic != piece.topic and (piece.partition, piece.offset) == (1, 99)
    assert assigned_partition(piece.topic, piece.partition) == ("a.otlp_metrics.routed", 2)
    assert assigned_partition(whole.topic, whole.partition) == ("a.otlp_metrics.routed", 2)


def test_a_piece_header_that_is_not_a_piece_path_is_refused():
    from streams.agents.routing import PIECE_HEADER, encode_envelope, virtual_message

    env = decode_envelope(encode_envelope("metrics", RawMessage("otlp_metrics", 1, 99, b"x"), 2, b"piece"))
    for bad in (b"x" * 10_000, b"0/1", b"", b"1."):
        headers = ((PIECE_HEADER, bad),) if bad else ((PIECE_HEADER, b"\xff"),)
        with pytest.raises(BadMessage):
            virtual_message(env, RawMessage("a.otlp_metrics.routed", 2, 8, b"", headers=headers))


def test_a_router_waits_for_the_broker_every_so_many_bytes_and_counts_every_part():
    """Parts in flight are bounded by the source bytes routed since the last wait."""
    from streams.agents import routers

    loop = asyncio.new_event_loop()
    try:
        pending: list = []

        async def send():
            fut = loop.create_future()
            pending.append(fut)
            return fut

        async def run():
            sending = routers.Parts()
            waits = []
            for i in range(5):
                await sending.send(i, send)
                await sending.send(i, send)
                for fut in pending:
                    if not fut.done():
                        fut.set_result(None)  # the broker answers
                before = sending.awaited
                await sending.routed(routers.ROUTE_IN_FLIGHT_BYTES // 2)
                waits.append(sending.awaited > before)
            return waits, await sending.all_delivered()

        waits, total = loop.run_until_complete(run())
        assert waits == [False, True, False, True, False]  # every second message: 32 MiB of source
        assert total == 10
    finally:
        loop.close()
