"""Log setup: klog-like text lines (as the upstream components print) or JSON lines.

Structured fields go in `extra=fields(name=..., version=...)`. With fields, the message is quoted,
as klog's structured calls print it:

    I0321 13:49:29.319708   1 mount.py:107] "Get secret successfully" name="secret_1" version="v1"

Field names that can carry credentials are masked whatever their value, as a last line of defence:
code must not log secret values or tokens in the first place.

One record is one line, whatever it carries. Names in a log come from pod specs, SecretProviderClass
objects and API requests, so a newline, a carriage return or an ESC sequence in one could forge or
hide a line. `escape` is the one mechanism every formatter applies (the message, every field and the
exception text, in text and JSON alike): control characters, line and paragraph separators, bidi
overrides and lone surrogates become JSON-style escapes (`\\n`, `\\u001b`). A lone surrogate
(valid in a JSON escape, not in UTF-8) thus never reaches the stream, where it would fail to encode.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final, TextIO

FIELDS_ATTRIBUTE: Final = "dew_fields"
REDACTED: Final = "[REDACTED]"

_SENSITIVE_KEYS: Final = frozenset(
    {
        "sk",
        "secret_key",
        "security_token",
        "token",
        "tokens",
        "password",
        "authorization",
        "csi.storage.k8s.io/serviceaccount.tokens",
        "secret_string",
        "secret_binary",
        "value",
    }
)

_LEVEL_LETTERS: Final = {
    logging.DEBUG: "I",
    logging.INFO: "I",
    logging.WARNING: "W",
    logging.ERROR: "E",
    logging.CRITICAL: "F",
}


# Everything that can end a line, move the cursor, recolour or reorder text, or fail to encode:
# C0 and C1 controls and DEL, the Unicode line and paragraph separators, the bidi embedding,
# override and isolate marks, and lone surrogates.
_UNSAFE: Final = re.compile(
    r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
_SHORT_ESCAPES: Final = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _escape_one(match: re.Match[str]) -> str:
    char = match.group()
    return _SHORT_ESCAPES.get(char) or f"\\u{ord(char):04x}"


def escape(text: str) -> str:
    """`text` with every unsafe character written as its JSON escape (`\\n`, `\\u001b`, `\\ud800`).

    The result is one line of printable, encodable text. Applied to JSON text it stays JSON that
    decodes to the same values, since only characters inside strings are unsafe there."""
    return _UNSAFE.sub(_escape_one, text)


def quote(text: str) -> str:
    """`text` as a double-quoted JSON string literal holding only safe characters."""
    return escape(json.dumps(text, ensure_ascii=False))


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a structured log call: `log.info("msg", extra=fields(pod=name))`."""
    return {FIELDS_ATTRIBUTE: values}


def is_sensitive(key: str) -> bool:
    lowered = key.lower()
    return lowered in _SENSITIVE_KEYS or lowered.endswith(("token", "tokens", "_sk", "secret"))


def redact(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy with the values of credential-bearing keys masked."""
    return {key: REDACTED if is_sensitive(key) else value for key, value in values.items()}


def _record_fields(record: logging.LogRecord) -> dict[str, Any]:
    values = getattr(record, FIELDS_ATTRIBUTE, None)
    return redact(values) if values else {}


def _klog_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return quote(value if isinstance(value, str) else str(value))


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str | None:
    """The traceback (and stack) of a record, unescaped; the caller escapes it with the rest."""
    parts = []
    if record.exc_info:
        parts.append(formatter.formatException(record.exc_info))
    if record.stack_info:
        parts.append(formatter.formatStack(record.stack_info))
    return "\n".join(parts) if parts else None


class KlogFormatter(logging.Formatter):
    """`Lmmdd hh:mm:ss.uuuuuu threadid file:line] msg key="value" ... err="Traceback ..."`

    The message is quoted when there are fields (as klog's structured calls print it), else
    escaped in place; a traceback follows as an `err` field, so the record stays one line."""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        letter = _LEVEL_LETTERS.get(record.levelno, "I")
        message = record.getMessage()
        values = _record_fields(record)
        if values:
            message = quote(message) + "".join(
                f" {escape(key)}={_klog_value(value)}" for key, value in values.items()
            )
        else:
            message = escape(message)
        line = (
            f"{letter}{when:%m%d %H:%M:%S}.{when.microsecond:06d} {os.getpid():>7} "
            f"{escape(record.filename)}:{record.lineno}] {message}"
        )
        exception = _exception_text(self, record)
        if exception is not None:
            line += f" err={quote(exception)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, caller, msg, the structured fields, and the
    traceback as `error`. JSON escapes the C0 controls itself; `escape` over the whole line does
    the rest, so the values decode to exactly what was logged."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "caller": f"{record.filename}:{record.lineno}",
            "msg": record.getMessage(),
        }
        document.update(_record_fields(record))
        exception = _exception_text(self, record)
        if exception is not None:
            document["error"] = exception
        return escape(json.dumps(document, ensure_ascii=False, default=str))


def setup_logging(
    log_format: str = "text", level: int | str = logging.INFO, stream: TextIO | None = None
) -> None:
    """Configure the root logger once for a dew-csi process."""
    if log_format not in ("text", "json"):
        raise ValueError(f'--log-format must be "text" or "json", not {log_format!r}')
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(KlogFormatter() if log_format == "text" else JsonFormatter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # Transport libraries log request lines that can include credentials in URLs or headers.
    for noisy in ("httpx", "httpx2", "httpcore", "aiohttp.access", "hpack"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
