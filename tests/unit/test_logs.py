"""Log lines look like klog's (the guide's log examples) or JSON, and never show credentials."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator

import pytest

from dew_csi.logs import REDACTED, fields, setup_logging


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    stream = io.StringIO()
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    yield stream, logging.getLogger("dew_csi.test")
    root.handlers[:] = saved_handlers
    root.setLevel(saved_level)


def test_text_lines_follow_klog_layout(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = captured
    setup_logging("text", stream=stream)
    log.info("Get secret successfully", extra=fields(name="secret_1", version="v1"))
    log.warning("object [secret_1]'s version [v1] doesn't change, read from local")
    first, second = stream.getvalue().splitlines()
    assert re.fullmatch(
        rf"I\d{{4}} \d\d:\d\d:\d\d\.\d{{6}} +{os.getpid()} test_logs\.py:\d+\] "
        r'"Get secret successfully" name="secret_1" version="v1"',
        first,
    )
    assert re.match(r"W\d{4} ", second)
    assert second.endswith("] object [secret_1]'s version [v1] doesn't change, read from local")


def test_json_lines_carry_fields(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = captured
    setup_logging("json", stream=stream)
    log.error("Mount failed", extra=fields(pod="web", attempt=2))
    document = json.loads(stream.getvalue())
    assert document["msg"] == "Mount failed"
    assert document["level"] == "error"
    assert (document["pod"], document["attempt"]) == ("web", 2)


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_credential_fields_are_masked(
    captured: tuple[io.StringIO, logging.Logger], log_format: str
) -> None:
    stream, log = captured
    setup_logging(log_format, stream=stream)
    log.info(
        "request",
        extra=fields(
            sk="SK-VALUE-123",
            security_token="TOKEN-456",
            **{"csi.storage.k8s.io/serviceAccount.tokens": "SA-TOKEN-789"},
            secret_string="hunter2",
            name="secret_1",
        ),
    )
    output = stream.getvalue()
    for leaked in ("SK-VALUE-123", "TOKEN-456", "SA-TOKEN-789", "hunter2"):
        assert leaked not in output
    assert output.count(REDACTED) == 4
    assert "secret_1" in output


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="--log-format"):
        setup_logging("yaml")
