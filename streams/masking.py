"""Secrets kept out of logs and printouts: passwords in URLs, bearer and basic credentials, and the
values of every secret setting (``SecretStr`` fields, whatever their section).

``install(settings)`` makes every log record of the process masked (a record factory, so it holds
whatever handlers faust or mode set up later: the record masks its text when a handler first
formats it, so records no handler takes cost nothing), and masks the traceback of an
exception nobody caught, in the main thread or another (``sys.excepthook``,
``threading.excepthook``); installed again, it replaces its hooks and their secrets.
``add_secret`` adds a secret learnt later. ``mask(text, secrets)`` is the pure function behind
them all.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any, Iterable

import re2
from pydantic import BaseModel, SecretStr

from sinks.settings import mask_secrets

MASK = "****"
# RE2 (linear time), as every pattern here: a masked text may quote what a producer sent.
_CREDENTIALS = re2.compile(r"(?i)\b(bearer|basic)(\s+)[A-Za-z0-9._~+/=-]{8,}")
_MIN_SECRET = 4  # shorter configured values would mask common words


def secret_values(settings: BaseModel) -> list[str]:
    """The values of every ``SecretStr`` setting, at any depth, longest first."""
    found: list[str] = []

    def walk(model: BaseModel) -> None:
        for name in type(model).model_fields:
            value = getattr(model, name)
            if isinstance(value, SecretStr):
                found.append(value.get_secret_value())
            elif isinstance(value, BaseModel):
                walk(value)
    walk(settings)
    return sorted({v for v in found if len(v) >= _MIN_SECRET}, key=len, reverse=True)


def mask(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        if secret in text:
            text = text.replace(secret, MASK)
    text = mask_secrets(text)  # lone surrogates replaced: RE2 reads UTF-8
    return _CREDENTIALS.sub(lambda m: m.group(1) + m.group(2) + MASK, text)


# The secrets the installed hooks mask, longest first: set by ``install``, grown by ``add_secret``;
# replaced whole, never changed in place, so a hook in another thread reads one consistent set.
_masked: tuple[str, ...] = ()


def _secret_set(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({v for v in values if len(v) >= _MIN_SECRET}, key=len, reverse=True))


def add_secret(value: str) -> None:
    """Mask ``value`` too from now on: a secret learnt after ``install``."""
    global _masked
    if value not in _masked:
        _masked = _secret_set([*_masked, value])


def _excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
    import traceback

    sys.stderr.write(mask("".join(traceback.format_exception(kind, value, tb)), _masked))


def _thread_excepthook(args: threading.ExceptHookArgs) -> None:
    """``threading.excepthook`` as Python's own (silent for SystemExit), masked."""
    if args.exc_type is SystemExit or sys.stderr is None:
        return
    import traceback

    name = args.thread.name if args.thread is not None else threading.get_ident()
    text = "".join(traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback))
    sys.stderr.write(mask(f"Exception in thread {name}:\n{text}", _masked))
    sys.stderr.flush()


class _MaskedMessage:
    """A record's ``getMessage``, masked: the first call formats and masks the message (and the
    traceback, which ``Formatter.format`` reads after the message), then the record holds the
    masked text. Every formatter asks for the message this way, so nothing reaches a handler's
    output unmasked."""

    __slots__ = ("record",)

    def __init__(self, record: logging.LogRecord):
        self.record = record

    def __call__(self) -> str:
        record = self.record
        message = logging.LogRecord.getMessage(record)  # raises as logging's own would
        masked = mask(message, _masked)
        record.msg, record.args = masked, ()  # () not None: mode's formatter turns None into (None,)
        if record.exc_info and record.exc_info[1] is not None and not record.exc_text:
            record.exc_text = mask(logging.Formatter().formatException(record.exc_info), _masked)
        return masked


def install(settings: BaseModel, extra: Iterable[str] = ()) -> None:
    """Mask every log record and uncaught traceback of this process from now on, with the secrets
    of ``settings`` and ``extra``. Installed again, the hooks are the same ones (never stacked) and
    the new secrets replace the old."""
    global _masked
    _masked = _secret_set([*secret_values(settings), *extra])
    previous = logging.getLogRecordFactory()
    if getattr(previous, "otelpipe_masking", False):
        previous = previous.wrapped  # installed again (tests, a second command): replace, never stack

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        # Masked when its text is first asked for (a handler formats it): a record no handler
        # takes (below every level) costs no formatting, however large its arguments.
        record.getMessage = _MaskedMessage(record)  # type: ignore[method-assign]
        return record

    factory.otelpipe_masking = True  # type: ignore[attr-defined]
    factory.wrapped = previous  # type: ignore[attr-defined]
    logging.setLogRecordFactory(factory)
    sys.excepthook = _excepthook  # one hook, whatever was installed before: never a stale secret set
    threading.excepthook = _thread_excepthook
