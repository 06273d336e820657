"""`parameters.objects` for the provider: parsed off the event loop, each text once.

Every Mount carries its SecretProviderClass's `parameters.objects` text, and rotation passes and
kubelet retries send the same text again and again. Parsing costs more than the rest of a warm
Mount (benchmarks/rotation.py), and a hostile text must not stall every other mount on the node
(benchmarks/hostile_spc.py). So:

- the size bound (spc.MAX_OBJECTS_BYTES) is checked first, on the loop, before anything else
  touches the text; spc's own bounded scan then refuses too many objects or an alias bomb
  before anything is built;
- a parse runs in one worker thread, never on the event loop. PyYAML holds the GIL while it
  works, but the interpreter hands it over every few milliseconds (sys.getswitchinterval), so
  the loop keeps answering; one worker means parses queue behind each other and never take more
  than one core between them;
- results are remembered, valid and invalid alike, so a kubelet retrying a broken class costs a
  hash and a lookup. The key is the class name and a SHA-256 of the text: the provider sees only
  the text in the Mount attributes, never the object's resourceVersion, so the content is what
  names a version of the class (and a 32-byte digest keeps no copy of the text);
- concurrent requests for the same text share one parse;
- the memory is bounded in bytes (an estimate of each result's size), least recently used first.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Final

from dew_csi import spc
from dew_csi.lru import BoundedLru

DEFAULT_MAX_BYTES: Final = 16 * 1024 * 1024
# A key (tuple, digest, name) and its OrderedDict slot, roughly.
_ENTRY_OVERHEAD: Final = 256

Objects = tuple[spc.SecretObject, ...]
_Result = Objects | spc.SpcValidationError
_Key = tuple[str, bytes]


def footprint(result: _Result) -> int:
    """An estimate, in bytes, of the memory a remembered result holds (CPython object sizes)."""
    if isinstance(result, spc.SpcValidationError):
        return (
            _ENTRY_OVERHEAD
            + sys.getsizeof(result)
            + sum(sys.getsizeof(text) for text in result.args if isinstance(text, str))
            + sys.getsizeof(result.__dict__)
        )
    size = _ENTRY_OVERHEAD + sys.getsizeof(result)
    for obj in result:
        size += sys.getsizeof(obj) + sys.getsizeof(obj.jmes_path)
        size += sum(
            sys.getsizeof(text)
            for text in (obj.object_name, obj.object_alias, obj.object_version)
            if text is not None
        )
        for entry in obj.jmes_path:
            size += sys.getsizeof(entry) + sys.getsizeof(entry.path)
            size += sys.getsizeof(entry.object_alias)
    return size


def _bare(error: spc.SpcValidationError) -> spc.SpcValidationError:
    """A copy with no traceback or context: those hold the frames (and so the YAML text and the
    parsed document) the error was raised in, and a raise appends to the traceback it has."""
    return spc.SpcValidationError(
        error.spc_name,
        error.rule,
        str(error),
        object_name=error.object_name,
        secret_object=error.secret_object,
    )


def _parse(spc_name: str, objects_yaml: str) -> _Result:
    try:
        return spc.parse_objects(spc_name, objects_yaml)
    except spc.SpcValidationError as error:
        return _bare(error)


class ObjectsParser:
    """Parses `parameters.objects` in a worker thread and remembers each result by content."""

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._results: BoundedLru[_Key, _Result] = BoundedLru(max_bytes=max_bytes)
        self._in_flight: dict[_Key, asyncio.Future[_Result]] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dew-objects")
        self.parses = 0
        self.hits = 0

    async def parse(self, spc_name: str, objects_yaml: str) -> Objects:
        """The validated objects, or the `spc.SpcValidationError` saying what is wrong."""
        spc.check_objects_size(spc_name, objects_yaml)  # before hashing, or any parsing
        digest = hashlib.sha256(objects_yaml.encode("utf-8", "surrogatepass")).digest()
        key = (spc_name, digest)
        result = self._results.get(key)
        if result is not None:
            self.hits += 1
        else:
            result = await self._parse_once(key, spc_name, objects_yaml)
        if isinstance(result, spc.SpcValidationError):
            raise _bare(result)
        return result

    async def _parse_once(self, key: _Key, spc_name: str, objects_yaml: str) -> _Result:
        shared = self._in_flight.get(key)
        if shared is None:
            self.parses += 1
            loop = asyncio.get_running_loop()
            shared = loop.run_in_executor(self._executor, _parse, spc_name, objects_yaml)
            self._in_flight[key] = shared
            shared.add_done_callback(lambda done: self._finish(key, done))
        else:
            self.hits += 1
        # Shielded: one mount giving up (a gRPC deadline) must not cancel the parse others await.
        return await asyncio.shield(shared)

    def _finish(self, key: _Key, done: asyncio.Future[_Result]) -> None:
        del self._in_flight[key]
        if not done.cancelled() and done.exception() is None:
            result = done.result()
            self._results.put(key, result, footprint(result))

    @property
    def remembered(self) -> int:
        return len(self._results)

    @property
    def remembered_bytes(self) -> int:
        return self._results.bytes

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
