import pytest

from streams.otlp.encode import encode_request
from streams.tools.producer import FileProblem, read_otlp_file
from tests.otlp_builders import logs_request, metrics_request, traces_request


def test_json_lines_of_mixed_signals_with_a_bad_line(tmp_path):
    path = tmp_path / "export.jsonl"
    lines = [encode_request(traces_request(), "otlp_json"), b"{not json", encode_request(logs_request(), "otlp_json"),
             b"", encode_request(metrics_request(), "otlp_json"), b'{"other": 1}']
    path.write_bytes(b"\n".join(lines) + b"\n")
    items, problems = read_otlp_file(str(path))
    assert [(s, e) for s, e, _ in items] == [("traces", "otlp_json"), ("logs", "otlp_json"), ("metrics", "otlp_json")]
    assert len(problems) == 2 and ":2:" in problems[0] and ":6:" in problems[1]


def test_length_prefixed_protobuf(tmp_path):
    payloads = [traces_request(i + 1).SerializeToString() for i in range(3)]
    path = tmp_path / "spans.pb"
    path.write_bytes(b"".join(len(p).to_bytes(4, "big") + p for p in payloads))
    items, problems = read_otlp_file(str(path))
    assert problems == [] and [p for _, _, p in items] == payloads and {s for s, _, _ in items} == {"traces"}


def test_bare_protobuf_needs_a_signal(tmp_path):
    path = tmp_path / "dump.bin"
    path.write_bytes(logs_request().SerializeToString())
    with pytest.raises(FileProblem, match="--signal"):
        read_otlp_file(str(path))
    items, _ = read_otlp_file(str(path), signal="logs")
    assert [(s, e) for s, e, _ in items] == [("logs", "otlp_proto")]
