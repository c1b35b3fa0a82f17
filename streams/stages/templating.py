"""Template URL paths and span names so ids do not become distinct values.

``/api/order/123`` → ``/api/order/{num}``; ``/item?id=123&src=feed`` → ``/item?id={num}&src={str}``;
UUIDs, hex ids, emails and IP addresses in a path segment become ``{uuid}``, ``{hex}``, ``{email}``,
``{ip}``. A span name ``GET /api/order/123`` becomes ``GET /api/order/{num}``, unless the span has an
``http.route``, which wins over guessing. Pure and memoised: the same input always gives the same
output, and repeated values cost one dictionary lookup.
"""

from __future__ import annotations

import re

_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^(?=.*\d)[0-9a-fA-F]{8,}$")
_NUM = re.compile(r"^[+-]?\d+(?:[.,]\d+)?$")
_EMAIL = re.compile(r"^[^@\s/]+@[^@\s/]+\.[A-Za-z]{2,}$")
_IPV4 = re.compile(r"^(?:\d{1,3}\.){3}\d{1,3}(?::\d+)?$")
_IPV6 = re.compile(r"^\[?[0-9a-fA-F]*:[0-9a-fA-F:]+\]?$")
_MIXED_ID = re.compile(r"^(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_-]{16,}$")  # long opaque tokens

_CACHE_LIMIT = 100_000
_path_cache: dict[str, str] = {}
_name_cache: dict[tuple[str, str], str] = {}


def template_segment(segment: str) -> str:
    if not segment or segment.startswith("{"):
        return segment
    if _NUM.match(segment):
        return "{num}"
    if _UUID.match(segment):
        return "{uuid}"
    if _EMAIL.match(segment):
        return "{email}"
    if _IPV4.match(segment) or (":" in segment and _IPV6.match(segment)):
        return "{ip}"
    if _HEX.match(segment):
        return "{hex}"
    if _MIXED_ID.match(segment):
        return "{id}"
    return segment


def _template_query(query: str) -> str:
    parts = []
    for pair in query.split("&"):
        name, sep, value = pair.partition("=")
        if not sep:
            parts.append(pair)
            continue
        if not value or value.startswith("{") or value == "****":  # empty, templated or masked already
            parts.append(pair)
            continue
        templated = template_segment(value)
        parts.append(f"{name}={templated if templated != value else '{str}'}")
    return "&".join(parts)


def template_path(value: str) -> str:
    """A path or URL with ids replaced; scheme and host are kept, the fragment dropped."""
    cached = _path_cache.get(value)
    if cached is not None:
        return cached
    text = value
    prefix = ""
    scheme_end = text.find("://")
    if scheme_end != -1:
        host_end = text.find("/", scheme_end + 3)
        if host_end == -1:
            host_end = len(text)
        prefix, text = text[:host_end], text[host_end:]
    text = text.split("#", 1)[0]
    path, sep, query = text.partition("?")
    templated = "/".join(template_segment(s) for s in path.split("/"))
    if sep:
        templated += "?" + _template_query(query)
    result = prefix + templated
    if len(_path_cache) >= _CACHE_LIMIT:
        _path_cache.clear()
    _path_cache[value] = result
    return result


def template_span_name(name: str, route: str = "") -> str:
    """``METHOD /path`` names get their path templated, or replaced by the span's http.route."""
    key = (name, route)
    cached = _name_cache.get(key)
    if cached is not None:
        return cached
    method, sep, rest = name.partition(" ")
    if sep and route and rest.startswith("/"):
        result = f"{method} {route}"
    elif name.startswith("/"):
        result = route or template_path(name)
    elif sep and rest.startswith("/"):
        result = f"{method} {template_path(rest)}"
    else:
        result = name
    if len(_name_cache) >= _CACHE_LIMIT:
        _name_cache.clear()
    _name_cache[key] = result
    return result
