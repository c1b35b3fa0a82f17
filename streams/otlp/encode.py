"""Encode OTLP export requests as the Collector's Kafka exporter does: otlp_proto or otlp_json.

OTLP JSON differs from protobuf's JSON mapping in two ways that matter: trace and span ids are
hex (not base64) and enums are integers.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

CONTENT_TYPES = {"otlp_proto": b"application/x-protobuf", "otlp_json": b"application/json"}
_ID_KEYS = {"traceId", "spanId", "parentSpanId"}


def _ids_to_hex(node: Any) -> Any:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _ID_KEYS and isinstance(value, str):
                node[key] = base64.b64decode(value).hex()
            elif isinstance(value, (dict, list)):
                _ids_to_hex(value)
    elif isinstance(node, list):
        for item in node:
            _ids_to_hex(item)
    return node


def encode_request(request: Message, encoding: str) -> bytes:
    if encoding == "otlp_proto":
        return request.SerializeToString()
    if encoding == "otlp_json":
        data = json_format.MessageToDict(request, use_integers_for_enums=True)
        return orjson.dumps(_ids_to_hex(data))
    raise ValueError(f"unknown encoding {encoding!r}; expected otlp_proto or otlp_json")
