"""Log setup: klog-like text lines (as the upstream components print) or JSON lines.

Structured fields go in `extra=fields(name=..., version=...)`. With fields, the message is quoted,
as klog's structured calls print it:

    I0321 13:49:29.319708   1 mount.py:107] "Get secret successfully" name="secret_1" version="v1"

Field names that can carry credentials are masked whatever their value, as a last line of defence:
code must not log secret values or tokens in the first place.
"""

from __future__ import annotations

import json
import logging
import os
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


def _quote(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value if isinstance(value, str) else str(value), ensure_ascii=False)


class KlogFormatter(logging.Formatter):
    """`Lmmdd hh:mm:ss.uuuuuu threadid file:line] msg key="value" ...`"""

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.fromtimestamp(record.created, UTC)
        letter = _LEVEL_LETTERS.get(record.levelno, "I")
        message = record.getMessage()
        values = _record_fields(record)
        if values:
            message = _quote(message) + "".join(
                f" {key}={_quote(value)}" for key, value in values.items()
            )
        line = (
            f"{letter}{when:%m%d %H:%M:%S}.{when.microsecond:06d} {os.getpid():>7} "
            f"{record.filename}:{record.lineno}] {message}"
        )
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, caller, msg, and the structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "caller": f"{record.filename}:{record.lineno}",
            "msg": record.getMessage(),
        }
        document.update(_record_fields(record))
        if record.exc_info:
            document["error"] = self.formatException(record.exc_info)
        return json.dumps(document, ensure_ascii=False, default=str)


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
