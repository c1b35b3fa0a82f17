"""Where a dead letter is shown to come from, and where it is re-fed to."""

from streams.agents.routing import PROTOBUF_HEADER, encode_envelope
from streams.otlp.batch import DeadLetter, RawMessage
from streams.tools.dead_letters import Letter, refeed


def letter_of(dead: DeadLetter, dlq: str) -> Letter:
    return Letter(dlq, 0, 7, 0, dead.message.key, dead.message.value, tuple(dead.headers()))


def test_a_source_letter_goes_back_to_its_source_with_its_own_headers():
    source = RawMessage("otlp_spans", 2, 40, b"\x0a\x00", b"k", (("content-type", b"application/x-protobuf"),))
    letter = letter_of(DeadLetter(source, "undecodable", "x"), "otlp_spans.dlq")
    assert letter.source() == "otlp_spans[2]@40"
    assert refeed(letter, "otlp_spans.dlq") == ("otlp_spans", b"\x0a\x00", [("content-type", b"application/x-protobuf")])


def test_a_routed_letter_goes_back_to_the_source_topic_as_the_piece_it_held():
    source = RawMessage("otlp_metrics", 1, 99, b"whole request", timestamp_ms=5)
    routed = RawMessage("otlp_metrics.routed", 3, 12, encode_envelope("metrics", source, 3, b"piece"))
    letter = letter_of(DeadLetter(routed, "invalid_value", "x"), "otlp_metrics.routed.dlq")
    env = letter.routed_part()
    assert (env["source_topic"], env["source_partition"], env["source_offset"]) == ("otlp_metrics", 1, 99)
    assert refeed(letter, "otlp_metrics.routed.dlq") == ("otlp_metrics", b"piece", [PROTOBUF_HEADER])


def test_letters_that_cannot_be_refed_are_left():
    routed = RawMessage("otlp_metrics.routed", 3, 12, b"not an envelope")
    assert refeed(letter_of(DeadLetter(routed, "undecodable", ""), "otlp_metrics.routed.dlq"),
                  "otlp_metrics.routed.dlq") is None
    cut = letter_of(DeadLetter(RawMessage("otlp_spans", 0, 1, b"x" * 10), "too_large", ""), "otlp_spans.dlq")
    cut = Letter(*[getattr(cut, f) for f in ("topic", "partition", "offset", "timestamp_ms", "key", "value")],
                 cut.headers + (("otelpipe.dlq.truncated_from", b"99999999"),))
    assert refeed(cut, "otlp_spans.dlq") is None


def test_undersized_topics_are_named_with_the_fix():
    from streams.tools.kafka_admin import undersized_topics

    [warning] = undersized_topics({"a.dlq": 1048588, "b.dlq": 17_000_000}, 16_842_752)
    assert "a.dlq" in warning and "max.message.bytes=16842752" in warning
