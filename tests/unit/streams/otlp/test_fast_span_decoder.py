"""The C span decoder gives exactly what the pure-Python decoder gives, on good and damaged input."""

import random

import pytest

from streams.otlp import decode as otlp_decode
from streams.otlp.batch import RawMessage
from streams.otlp.decode import decode_messages
from streams.tools.workload import Workload
from tests.otlp_builders import mutate_bytes, traces_request

def both(payloads: list[bytes]):
    messages = [RawMessage("t", 0, i, p) for i, p in enumerate(payloads)]
    fast = decode_messages("traces", messages, use_fast_path=True)
    slow = decode_messages("traces", messages, use_fast_path=False)
    return fast, slow


def assert_same(fast, slow):
    assert [(d.message.offset, d.reason) for d in fast.dead_letters] == \
        [(d.message.offset, d.reason) for d in slow.dead_letters]
    assert fast.batches.keys() == slow.batches.keys()
    for table in fast.batches:
        f, s = fast.batches[table].columns, slow.batches[table].columns
        for name in f:
            assert f[name] == s[name], name
            assert [type(v) for v in f[name]] == [type(v) for v in s[name]], name


def test_the_fast_path_is_built():
    # `pip install -e .` compiles streams/otlp/_fastotlp.c; without a C compiler otelpipe still runs on
    # the pure-Python decoder, but the suite insists on testing the path production uses.
    assert otlp_decode._fastotlp is not None, "streams.otlp._fastotlp is not built: install gcc and reinstall"


def test_every_field_and_value_kind():
    requests = [traces_request(3), traces_request(1, service=None)]
    r = traces_request(1)
    r.resource_spans[0].resource.attributes.add(key="process.executable.name").value.string_value = "java"
    del r.resource_spans[0].resource.attributes[0]  # no service.name
    requests.append(r)
    assert_same(*both([req.SerializeToString() for req in requests]))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_realistic_workload(seed):
    workload = Workload(seed=seed, extra_attributes=3)
    payloads = [workload.trace_requests(5)[0].SerializeToString() for _ in range(5)]
    assert_same(*both(payloads))


def test_damaged_payloads_fail_or_pass_alike():
    rng = random.Random(1234)
    base = traces_request(4).SerializeToString()
    workload = Workload(seed=9).trace_requests(2)[0].SerializeToString()
    damaged = [b"", b"\x00", b"\x0a\x00", b"\x0a\x05\x0a\x03\x0a\x01\x00"]
    for source in (base, workload):
        for _ in range(300):
            damaged.append(mutate_bytes(rng, source, [base, workload]))
    fast, slow = both(damaged)
    assert_same(fast, slow)
    assert fast.dead_letters, "damage should break some messages"


def test_spans_with_many_events_and_links():
    request = traces_request(2)
    for span in request.resource_spans[0].scope_spans[0].spans:
        for i in range(100):  # past the C reader's first 16 slots, so it grows its arrays
            span.events.add(time_unix_nano=5 + i, name=f"e{i}")
        for _ in range(40):
            span.links.add(trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    fast, slow = both([request.SerializeToString()])
    assert_same(fast, slow)
    assert len(fast.batches["otel_traces"].columns["Events.Name"][0]) == 101
