"""Log lines look like klog's (the guide's log examples) or JSON, and never show credentials."""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import re
from collections.abc import Iterator

import pytest

from dew_csi.csms import emulator
from dew_csi.logs import REDACTED, KlogFormatter, escape, fields, quote, setup_logging
from dew_csi.sandbox import apiserver


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


# ------------------------------------------------------------------ one record, one line

FORGED = 'I0101 00:00:00.000000       1 mount.py:1] "Mount succeeded"'
ATTACKS = {
    "newline": f"secret_1\n{FORGED}",
    "carriage-return": f"secret_1\r{FORGED}",
    "escape-sequence": "secret_1\x1b[2K\x1b[1Ghidden",
    "line-separator": f"secret_1\u2028{FORGED}",
    "bidi-override": "secret_1\u202egnp.exe",
    "c1-next-line": f"secret_1\x85{FORGED}",
}
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\ud800-\udfff]")


def lines_of(stream: io.StringIO) -> list[str]:
    text = stream.getvalue()
    assert text.endswith("\n")
    return text[:-1].split("\n")


def assert_one_clean_line(stream: io.StringIO) -> str:
    [line] = lines_of(stream)
    assert not UNSAFE.search(line), line
    assert not line.startswith("I0101")
    return line


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("where", ["message", "argument", "field"])
def test_a_forged_line_stays_escaped_on_one_klog_line(
    captured: tuple[io.StringIO, logging.Logger], attack: str, where: str
) -> None:
    stream, log = captured
    setup_logging("text", stream=stream)
    name = ATTACKS[attack]
    if where == "message":
        log.error(f"Mount failed for {name}")
    elif where == "argument":
        log.error("Mount failed for %s", name)
    else:
        log.error("Mount failed", extra=fields(name=name))
    line = assert_one_clean_line(stream)
    assert "secret_1\\" in line  # escaped in place, JSON style
    if where == "field":
        value = line.split(" name=", 1)[1]
        assert json.loads(value) == name  # the field is a JSON string: it decodes exactly


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_forged_line_stays_inside_one_json_line(
    captured: tuple[io.StringIO, logging.Logger], attack: str
) -> None:
    stream, log = captured
    setup_logging("json", stream=stream)
    name = ATTACKS[attack]
    log.error("Mount failed for %s", name, extra=fields(name=name, **{f"k{name}": 1}))
    document = json.loads(assert_one_clean_line(stream))
    # Only the line is escaped: the values decode to exactly what was logged.
    assert document["msg"] == f"Mount failed for {name}"
    assert document["name"] == name
    assert document[f"k{name}"] == 1


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_exception_text_is_escaped_on_the_same_line(
    captured: tuple[io.StringIO, logging.Logger], log_format: str
) -> None:
    stream, log = captured
    setup_logging(log_format, stream=stream)
    try:
        raise ValueError(f"bad name {ATTACKS['newline']}")
    except ValueError:
        log.exception("Cannot decide", extra=fields(object="default/x"))
    line = assert_one_clean_line(stream)
    if log_format == "text":
        assert ' err="Traceback (most recent call last):\\n' in line
        assert "ValueError: bad name secret_1\\nI0101" in line
    else:
        error = json.loads(line)["error"]
        assert error.startswith("Traceback (most recent call last):\n")
        assert error.endswith(f"ValueError: bad name {ATTACKS['newline']}")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_lone_surrogate_neither_crashes_nor_reaches_the_stream(
    log_format: str, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = io.BytesIO()
    # A strict UTF-8 stream, as a file or a pipe with errors="strict" would be.
    stream = io.TextIOWrapper(raw, encoding="utf-8", errors="strict", write_through=True)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    try:
        setup_logging(log_format, stream=stream)
        logging.getLogger("dew_csi.test").error("name \udc80 here", extra=fields(name="a\ud800b"))
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    line = raw.getvalue().decode("utf-8")  # strict: proves valid UTF-8 was written
    assert "name \\udc80 here" in line
    assert "a\\ud800b" in line
    assert "Logging error" not in capsys.readouterr().err


def test_escape_and_quote() -> None:
    assert escape("plain é 中 😀") == "plain é 中 😀"
    assert escape("a\nb\rc\td\x1b\x7f\x85\u2028\ud800") == (
        "a\\nb\\rc\\td\\u001b\\u007f\\u0085\\u2028\\ud800"
    )
    for text in ("a\nb", 'q"\\', "\x1b[31m", "\ud800", "\u202e"):
        quoted = quote(text)
        assert json.loads(quoted) == text
        assert quoted.isprintable()


@pytest.mark.parametrize("component", ["csms-emulator", "apiserver"])
def test_the_emulators_log_through_the_same_formatter(
    captured: tuple[io.StringIO, logging.Logger], component: str
) -> None:
    run = emulator.run_from_args if component == "csms-emulator" else apiserver.run_from_args
    # A bad --listen: the command sets its logging up, then stops before serving.
    assert run(argparse.Namespace(listen="no-port")) == 2
    [handler] = logging.getLogger().handlers
    assert isinstance(handler.formatter, KlogFormatter)
