from streams.cli.waterfall import build_tree, render_trace

T = 1_700_000_000_000_000_000


def span(sid, parent, name, start_ms, dur_ms, service="svc", status="Unset", message=""):
    return {"TraceId": "ab" * 16, "SpanId": sid, "ParentSpanId": parent, "ServiceName": service, "SpanName": name,
            "SpanKind": "Server", "StatusCode": status, "StatusMessage": message,
            "Timestamp": T + start_ms * 1_000_000, "Duration": dur_ms * 1_000_000}


SPANS = [
    span("c", "a", "db", 60, 20, "checkout"),
    span("a", "", "GET /", 0, 100, "frontend"),
    span("b", "a", "checkout", 10, 40, "checkout", "Error", "declined"),
]
LOGS = [
    {"SpanId": "b", "ServiceName": "checkout", "SeverityText": "ERROR", "SeverityNumber": 17, "Body": "boom",
     "Timestamp": T + 30 * 1_000_000},
    {"SpanId": "zz", "ServiceName": "frontend", "SeverityText": "INFO", "SeverityNumber": 9, "Body": "orphan",
     "Timestamp": T + 5 * 1_000_000},
]


def test_tree_orders_children_by_start():
    [root] = build_tree(SPANS)
    assert root.span["SpanId"] == "a"
    assert [c.span["SpanName"] for c in root.children] == ["checkout", "db"]


def test_waterfall_draws_to_scale_and_marks_errors_and_logs():
    lines = render_trace(SPANS, LOGS, width=20)
    assert lines[0].startswith("trace " + "ab" * 16) and "3 spans, 2 services" in lines[0]
    assert "1 error span" in lines[0] and "2 logs" in lines[0]
    root, child, log, db, orphan = lines[1:]
    assert "frontend: GET /" in root and "│" + "█" * 20 + "│" in root and "100.0ms" in root
    assert "├─ checkout: checkout" in child and "ERROR: declined" in child
    bar = child.split("│")[1]
    assert bar.index("█") == 2 and bar.count("█") == 8  # starts at 10% and lasts 40% of 20 columns
    assert "+30.0ms ERROR checkout: boom" in log
    assert "└─ checkout: db" in db
    assert "orphan" in orphan


def test_colour_only_when_asked():
    assert "\033[" not in "\n".join(render_trace(SPANS, LOGS))
    assert "\033[31m" in "\n".join(render_trace(SPANS, LOGS, color=True))


def test_machine_formats_print_values_exactly():
    import json

    from streams.cli.render import format_csv, format_json, format_table

    rows = [[49818.66229209707, True, None, 3]]
    csv_text = format_csv(["sum", "ok", "missing", "n"], rows)
    assert csv_text.splitlines()[1] == "49818.66229209707,true,,3"
    assert json.loads(format_json(["sum", "ok", "missing", "n"], rows)) == [
        {"sum": 49818.66229209707, "ok": True, "missing": None, "n": 3}]
    assert "49818.7" in format_table(["sum", "ok", "missing", "n"], rows)  # rounded for people only
