"""The provider's parameters.objects parser: off the event loop, once per text (valid or not),
shared between concurrent requests, bounded in bytes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable

import pytest

from dew_csi import spc
from dew_csi.provider import objects as objects_module
from dew_csi.provider.objects import ObjectsParser, footprint

VALID = "- {objectName: secret_1, objectType: csms, objectVersion: v1}\n"
INVALID = "- {objectName: secret_1, objectType: kms, objectVersion: v1}\n"


@pytest.fixture
async def parser() -> AsyncIterator[ObjectsParser]:
    parser = ObjectsParser()
    yield parser
    parser.close()


def objects_named(prefix: str, count: int = 1) -> str:
    return "".join(
        f"- {{objectName: {prefix}{i}, objectType: csms, objectVersion: v1}}\n"
        for i in range(count)
    )


def spy_on_parsing(
    monkeypatch: pytest.MonkeyPatch, before: Callable[[], None] = lambda: None
) -> list[int]:
    """Record the thread of every real parse; `before` runs first in that thread."""
    threads: list[int] = []
    real = spc.parse_objects

    def parse(spc_name: str, objects_yaml: str) -> tuple[spc.SecretObject, ...]:
        threads.append(threading.get_ident())
        before()
        return real(spc_name, objects_yaml)

    monkeypatch.setattr(objects_module.spc, "parse_objects", parse)
    return threads


async def test_parsing_runs_in_a_worker_thread(
    parser: ObjectsParser, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = spy_on_parsing(monkeypatch)
    (obj,) = await parser.parse("spc", VALID)
    assert obj.object_name == "secret_1"
    assert threads
    assert threads[0] != threading.get_ident()


async def test_the_loop_keeps_running_while_a_parse_holds_the_gil(
    parser: ObjectsParser, monkeypatch: pytest.MonkeyPatch
) -> None:
    def busy() -> None:  # pure Python, never releasing the GIL on its own, like PyYAML
        deadline = time.perf_counter() + 0.5
        while time.perf_counter() < deadline:
            pass

    spy_on_parsing(monkeypatch, busy)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    try:
        await parser.parse("spc", VALID)
    finally:
        ticking.cancel()
    assert ticks >= 5  # the loop ran during the half-second parse


async def test_valid_and_invalid_texts_are_parsed_once(
    parser: ObjectsParser, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = spy_on_parsing(monkeypatch)
    for _ in range(3):
        assert len(await parser.parse("spc", VALID)) == 1
    errors = []
    for _ in range(3):
        with pytest.raises(spc.SpcValidationError) as caught:
            await parser.parse("spc", INVALID)
        errors.append(caught.value)
    assert len(threads) == 2
    assert (parser.parses, parser.hits) == (2, 4)
    # Each refusal is its own exception, with no traceback or context of the original parse.
    assert len({id(e) for e in errors}) == 3
    assert {str(e) for e in errors} == {
        'SecretProviderClass "spc": object "secret_1": objectType "kms" is not supported; '
        'the only supported objectType is "csms"'
    }
    assert {(e.rule, e.object_name) for e in errors} == {
        (spc.Rule.OBJECT_TYPE_UNSUPPORTED, "secret_1")
    }
    assert all(e.__context__ is None and e.__cause__ is None for e in errors)


async def test_the_class_name_is_part_of_the_key(parser: ObjectsParser) -> None:
    for name in ("a", "b"):
        with pytest.raises(spc.SpcValidationError, match=f'^SecretProviderClass "{name}"'):
            await parser.parse(name, INVALID)
    assert parser.parses == 2


async def test_concurrent_requests_share_one_parse(
    parser: ObjectsParser, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = spy_on_parsing(monkeypatch, lambda: time.sleep(0.2))
    results = await asyncio.gather(*(parser.parse("spc", VALID) for _ in range(20)))
    assert len({id(r) for r in results}) == 1
    assert len(threads) == 1


async def test_a_cancelled_request_does_not_cancel_the_shared_parse(
    parser: ObjectsParser, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = spy_on_parsing(monkeypatch, lambda: time.sleep(0.2))
    first = asyncio.create_task(parser.parse("spc", VALID))
    second = asyncio.create_task(parser.parse("spc", VALID))
    await asyncio.sleep(0.05)
    first.cancel()
    assert len(await second) == 1
    assert len(threads) == 1
    assert parser.remembered == 1


async def test_oversized_text_is_refused_before_it_is_hashed_or_parsed(
    parser: ObjectsParser, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads = spy_on_parsing(monkeypatch)

    def no_hashing(*args: object) -> None:
        raise AssertionError("hashed")

    monkeypatch.setattr(objects_module.hashlib, "sha256", no_hashing)
    huge = VALID + "#" * spc.MAX_OBJECTS_BYTES
    with pytest.raises(spc.SpcValidationError, match="larger than the limit of 256 KiB"):
        await parser.parse("spc", huge)
    assert threads == []
    assert parser.remembered == 0


async def test_memory_is_bounded_in_bytes_not_entries() -> None:
    one_result = footprint(spc.parse_objects("spc", objects_named("s", 50)))
    parser = ObjectsParser(max_bytes=one_result * 4)
    try:
        for n in range(20):
            await parser.parse("spc", objects_named(f"n{n}_", 50))
            assert parser.remembered_bytes <= one_result * 4
        assert 1 <= parser.remembered <= 4
        # Small results fit many times over in the same bytes.
        for n in range(40):
            with pytest.raises(spc.SpcValidationError):
                await parser.parse(f"spc-{n}", INVALID)
        assert parser.remembered > 4
        assert parser.remembered_bytes <= one_result * 4
        # The most recent stays; the oldest went first.
        parses = parser.parses
        with pytest.raises(spc.SpcValidationError):
            await parser.parse("spc-39", INVALID)
        await parser.parse("spc", objects_named("n0_", 50))
        assert parser.parses == parses + 1
    finally:
        parser.close()


def test_footprint_grows_with_the_result() -> None:
    small = footprint(spc.parse_objects("spc", objects_named("s", 1)))
    large = footprint(spc.parse_objects("spc", objects_named("s", 500)))
    assert 100 * small < large * 2
    with pytest.raises(spc.SpcValidationError) as caught:
        spc.parse_objects("spc", INVALID)
    assert footprint(caught.value) > len(str(caught.value))
