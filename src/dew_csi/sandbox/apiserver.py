"""The Kubernetes API emulator's HTTP side (aiohttp): URL routing, discovery, OpenAPI, content
negotiation (JSON, YAML, Table), watch streams, bearer-token auth and state persistence.

The rules (what a write does, selectors, patches, GC) live in `apistore.py`; this module only
speaks HTTP. `ApiServer` runs on the caller's event loop, `ApiServerThread` on its own loop in a
daemon thread (so a blocking bug in the code under test cannot hide behind a shared loop), and
`run_from_args` is `dew-csi sandbox apiserver`.

Pod logs (`GET .../pods/NAME/log`). The real API server checks the options and the container
name, then proxies to the node's kubelet, which checks the container's state and streams its log
file. This emulator does both halves itself, with the same messages (400 `a container name must
be specified for pod X, choose one of: [a b c]`, `container X is not valid for pod Y`, `container
"c" in pod "p" is waiting to start: ContainerCreating`, ...; 422 for invalid options). The content
comes from the sandbox's container registry (`containers.py`: the add-on's pods in kube-system,
backed by the sandbox's real processes; named by $DEW_CSI_SANDBOX_CONTAINERS when the emulator
starts), with `container`, `tailLines`, `sinceSeconds`, `sinceTime`, `timestamps`, `limitBytes`
and `follow` (a chunked stream until the client goes, the pod goes or its process ends). Every
other container, an application pod's for instance, runs no process in the sandbox (the kubelet
simulator starts none), so a running one has an empty log: 200 with no body, where a real
cluster would return what the container printed (nginx's image prints a few start-up lines).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, TypeVar

import yaml
from aiohttp import web

from dew_csi.logs import setup_logging
from dew_csi.sandbox import apitables, containers
from dew_csi.sandbox.admission import Admission, named
from dew_csi.sandbox.apistore import (
    MAX_BODY_BYTES,
    PATCH_APPLY,
    STANDARD_VERBS,
    SUBRESOURCE_KINDS,
    ApiError,
    DeleteOptions,
    FieldError,
    Obj,
    ResourceType,
    Store,
    WatchSpec,
    WriteOptions,
    bad_request,
    decode_json,
    invalid_object,
    meta_of,
    method_not_allowed,
    parse_selectors,
    parse_yaml,
    resource_not_found,
    unsupported_media_type,
)
from dew_csi.statefile import write_atomically

log = logging.getLogger(__name__)
T = TypeVar("T")

# kubectl's dispatcher picks the kubectl binary matching this minor version; 1.31 sends JSON
# (1.32+ sends protobuf for `kubectl create secret ...`), see the kube-api-emulation notes.
VERSION_INFO: Final = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.9",
    "gitCommit": "dew-csi-emulator",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.22.12",
    "compiler": "gc",
    "platform": "linux/amd64",
}
BODY_TYPES: Final = ("application/json", "application/yaml")
DRAIN_LIMIT: Final = 64 * 1024 * 1024  # beyond this an oversized body is not even read away
WATCH_QUEUE_LIMIT: Final = 10000  # a watcher this far behind is cut off, as the real one is
ANONYMOUS_PATHS: Final = frozenset({"healthz", "livez", "readyz", "version"})
LOG_FOLLOW_INTERVAL: Final = 0.2  # how often a followed log is read again


def _parse_bool(value: str | None) -> bool:
    """Booleans as the apiserver parses query parameters: absent, 0 or false means false."""
    return value is not None and value.strip().lower() not in ("", "0", "false")


def _parse_int(query: Any, name: str, *, minimum: int = 0) -> int | None:
    text = query.get(name)
    if text in (None, ""):
        return None
    try:
        value = int(text)
    except ValueError:
        raise bad_request(f'{name}: Invalid value: "{text}": must be an integer') from None
    if value < minimum:
        raise bad_request(
            f"{name}: Invalid value: {value}: must be greater than or equal to {minimum}"
        )
    return value


@dataclass(frozen=True)
class _Media:
    mode: str  # json | yaml | table | meta
    content_type: str


def _negotiate(accept: str) -> _Media:
    """Pick the response form from an Accept header, in the client's order of preference."""
    if not accept.strip():
        return _Media("json", "application/json")
    for part in accept.split(","):
        media, *raw_params = [p.strip() for p in part.split(";")]
        params = dict(p.split("=", 1) for p in raw_params if "=" in p)
        as_kind = params.get("as")
        if as_kind:
            if params.get("g") != "meta.k8s.io" or params.get("v") not in ("v1", "v1beta1"):
                continue
            if as_kind == "Table":
                return _Media("table", f"application/json;as=Table;v={params['v']};g=meta.k8s.io")
            if as_kind in ("PartialObjectMetadata", "PartialObjectMetadataList"):
                return _Media(
                    "meta", f"application/json;as={as_kind};v={params['v']};g=meta.k8s.io"
                )
            continue
        if media in ("application/json", "*/*", "application/*", "*"):
            return _Media("json", "application/json")
        if media in ("application/yaml", "text/yaml"):
            return _Media("yaml", "application/yaml")
    raise ApiError(
        406,
        "NotAcceptable",
        "only the following media types are accepted: application/json, application/yaml",
    )


def _encode_json(body: Any, *, pretty: bool = False) -> bytes:
    if pretty:
        return (json.dumps(body, indent=2, ensure_ascii=False) + "\n").encode()
    return (json.dumps(body, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


class _QueueWatcher:
    """One watch stream's mailbox: the store appends, the HTTP task drains."""

    def __init__(self, spec: WatchSpec) -> None:
        self.spec = spec
        self.pending: deque[tuple[str, Obj]] = deque()
        self.wake = asyncio.Event()
        self.closed = False

    def deliver(self, event_type: str, obj: Obj) -> None:
        if self.closed:
            return
        self.pending.append((event_type, obj))
        if len(self.pending) > WATCH_QUEUE_LIMIT:
            self.closed = True  # too slow: end the stream; the client re-watches or relists
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


@dataclass
class _Target:
    """A resource URL taken apart."""

    rt: ResourceType
    version: str
    namespace: str | None
    name: str | None
    subresource: str | None
    watch_path: bool  # the deprecated /watch/ prefix


class ApiServer:
    """An in-memory Kubernetes API server on 127.0.0.1 (see the module docstring)."""

    def __init__(
        self,
        *,
        state_file: Path | None = None,
        token: str | None = None,
        event_history: int = 10000,
        bookmark_interval: float = 15.0,
        container_registry: Path | None = None,
    ) -> None:
        self.store = Store(event_history=event_history)
        # Where the sandbox's real containers log (containers.py); None: no container has output.
        self.containers = containers.RegistryFile(container_registry)
        self.log_followers = 0  # followed logs being streamed now
        self._closing = False
        self.admission = Admission(self.store)
        self.state_file = Path(state_file) if state_file is not None else None
        self.token = token
        self.bookmark_interval = bookmark_interval
        self.url = ""
        self.port = 0
        self.host = "127.0.0.1"
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._persisted_rv = -1
        if self.state_file is not None and self.state_file.exists():
            self.store.load(self.state_file.read_bytes())
            self._persisted_rv = self.store.rv
        self.store.bootstrap()

    # -- lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._loop = asyncio.get_running_loop()
        app = web.Application(middlewares=[self._errors], client_max_size=MAX_BODY_BYTES + 1)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port, reuse_address=True)
        await site.start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.host = host
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}"
        self._persist()

    async def stop(self) -> None:
        self._closing = True  # ends followed logs
        self.store.close_watchers()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.admission.close()

    def compact(self) -> None:
        """Drop the watch history: a watch or continue from an older resourceVersion gets 410.
        Safe to call from any thread."""
        self._call(self.store.compact)

    @property
    def watcher_count(self) -> int:
        return self._call(lambda: self.store.watcher_count)

    def _call(self, function: Callable[[], T]) -> T:
        """Run `function` on the server's loop (the store is not thread-safe)."""
        loop = self._loop
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if loop is None or running is loop or not loop.is_running():
            return function()

        async def call() -> T:
            return function()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(timeout=10)

    def _persist(self) -> None:
        """Write the state after an acknowledged write, before the response goes out."""
        if self.state_file is None or self.store.rv == self._persisted_rv:
            return
        write_atomically(self.state_file, self.store.dump())
        self._persisted_rv = self.store.rv

    # -- request plumbing

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        response: web.StreamResponse
        try:
            response = await handler(request)
        except ApiError as error:
            response = self._status_response(request, error)
        except web.HTTPException:
            raise
        except Exception as error:
            log.exception("unexpected error serving %s %s", request.method, request.path_qs)
            response = self._status_response(request, _internal(error))
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            try:
                self._persist()
            except OSError as error:
                # Not on disk means not acknowledged: the client must not take it as done.
                log.exception("cannot write the state file %s", self.state_file)
                return self._status_response(request, _internal(error))
        return response

    @staticmethod
    def _status_response(request: web.Request, error: ApiError) -> web.Response:
        return web.Response(
            status=error.code,
            body=_encode_json(error.status()),
            headers={"Content-Type": "application/json"},
        )

    def _authorize(self, request: web.Request, first: str) -> None:
        if self.token is None or first in ANONYMOUS_PATHS:
            return
        scheme, _, credential = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            credential.strip().encode(), self.token.encode()
        ):
            raise ApiError(401, "Unauthorized", "Unauthorized")

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        segments = [s for s in request.path.split("/") if s]
        first = segments[0] if segments else ""
        self._authorize(request, first)
        if first in ("healthz", "livez", "readyz") and len(segments) == 1:
            return web.Response(text="ok", content_type="text/plain")
        if first == "version" and len(segments) == 1:
            return self._json(request, VERSION_INFO)
        if segments == ["_emulator", "compact"]:
            if request.method != "POST":
                raise method_not_allowed()
            self.store.compact()
            return self._json(
                request,
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "message": f"compacted at {self.store.rv}",
                },
            )
        if not segments:
            return self._json(request, {"paths": sorted(self._root_paths())})
        if first == "openapi":
            return self._openapi(request, segments[1:])
        if first not in ("api", "apis"):
            raise resource_not_found()
        group = ""
        rest = segments[1:]
        if first == "apis":
            if not rest:
                return self._discovery_groups(request)
            group, rest = rest[0], rest[1:]
            if not rest:
                return self._discovery_group(request, group)
        elif not rest:
            return self._discovery_core(request)
        version, rest = rest[0], rest[1:]
        if not rest:
            return self._discovery_resources(request, group, version)
        target = self._target(group, version, rest)
        if request.method == "GET":
            return await self._get(request, target)
        if request.method == "POST":
            return await self._post(request, target)
        if request.method == "PUT":
            return await self._put(request, target)
        if request.method == "PATCH":
            return await self._patch(request, target)
        if request.method == "DELETE":
            return await self._delete(request, target)
        raise method_not_allowed()

    def _target(self, group: str, version: str, rest: list[str]) -> _Target:
        watch_path = False
        if rest[0] == "watch":
            watch_path, rest = True, rest[1:]
        namespace: str | None = None
        # /api/v1/namespaces/NAME/status is the namespace's own subresource.
        if (
            len(rest) >= 3
            and rest[0] == "namespaces"
            and not (group == "" and len(rest) == 3 and rest[2] == "status")
        ):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            raise resource_not_found()
        rt = self.store.registry.lookup(group, version, rest[0])
        if rt is None:
            raise resource_not_found()
        name = rest[1] if len(rest) > 1 else None
        subresource = rest[2] if len(rest) > 2 else None
        if namespace is not None and not rt.namespaced:
            raise resource_not_found()
        if rt.namespaced and namespace is None and name is not None:
            raise resource_not_found()
        if subresource is not None and subresource not in rt.subresources:
            raise resource_not_found()
        return _Target(rt, version, namespace, name, subresource, watch_path)

    def _json(
        self,
        request: web.Request,
        body: Any,
        status: int = 200,
        warnings: list[str] | None = None,
        media: _Media | None = None,
    ) -> web.Response:
        media = media or _Media("json", "application/json")
        if media.mode == "yaml":
            data = yaml.safe_dump(body, sort_keys=False, allow_unicode=True).encode()
        else:
            data = _encode_json(body, pretty=_parse_bool(request.query.get("pretty")))
        response = web.Response(
            status=status, body=data, headers={"Content-Type": media.content_type}
        )
        for warning in warnings or []:
            response.headers.add("Warning", _warning_header(warning))
        return response

    def _warnings(self, target: _Target, extra: list[str] | None = None) -> list[str]:
        warnings = list(extra or [])
        deprecation = target.rt.deprecations.get(target.version)
        if deprecation:
            warnings.insert(0, deprecation)
        return warnings

    async def _read_body(self, request: web.Request) -> bytes:
        """The request body, or 413 past the real server's 3 MiB limit (read away first, up to a
        point, so the client gets the answer instead of a broken pipe)."""
        length = request.content_length
        if length is not None and length > MAX_BODY_BYTES:
            await self._drain(request, length)
            raise _too_large()
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = await request.content.read(65536)
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                await self._drain(request, None)
                raise _too_large()
            chunks.append(chunk)

    @staticmethod
    async def _drain(request: web.Request, length: int | None) -> None:
        if length is not None and length > DRAIN_LIMIT:
            return
        read = 0
        while read <= DRAIN_LIMIT:
            chunk = await request.content.read(1 << 20)
            if not chunk:
                return
            read += len(chunk)

    async def _object_body(self, request: web.Request, kind: str) -> tuple[Any, list[str]]:
        """A JSON or YAML request object and the duplicate fields it held."""
        media = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if media in ("application/vnd.kubernetes.protobuf",) or (
            media and media not in ("application/json", "application/yaml", "*/*")
        ):
            raise unsupported_media_type(BODY_TYPES)
        raw = await self._read_body(request)
        if media == "application/yaml":
            return parse_yaml(raw), []
        if not raw.strip():
            return None, []
        try:
            return decode_json(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise bad_request(
                f"the object provided is unrecognized (must be of type {kind}): "
                f"couldn't get version/kind; json parse error: {error}"
            ) from None

    def _write_options(
        self, request: web.Request, operation: str, duplicates: list[str] | None = None
    ) -> WriteOptions:
        query = request.query
        errors: list[FieldError] = []
        validation = query.get("fieldValidation") or "Warn"
        if validation not in ("Ignore", "Warn", "Strict"):
            errors.append(
                FieldError(
                    "unsupported", "fieldValidation", "", validation, ("Ignore", "Strict", "Warn")
                )
            )
        dry_run = query.getall("dryRun", [])
        for value in dry_run:
            if value != "All":
                errors.append(FieldError("unsupported", "dryRun", "", value, ("All",)))
        manager = query.get("fieldManager")
        apply = request.headers.get("Content-Type", "").split(";")[0].strip() == PATCH_APPLY
        if manager is None and apply:
            manager = ""  # apply needs an explicit manager (a 422 from the store)
        elif manager is None:
            agent = request.headers.get("User-Agent", "")
            manager = agent.split("/")[0][:128] if agent else "unknown"
        elif len(manager) > 128:
            errors.append(FieldError("toolong", "fieldManager", "may not be more than 128 bytes"))
        force = query.get("force")
        if force is not None and not apply:
            errors.append(
                FieldError("forbidden", "force", "may not be specified for non-apply patch")
            )
        if errors:
            raise invalid_object(operation, "meta.k8s.io", "", errors)
        return WriteOptions(
            manager=manager,
            field_validation=validation,
            dry_run=bool(dry_run),
            force=_parse_bool(force),
            duplicates=tuple(duplicates or ()),
        )

    # -- reads and watches

    async def _get(self, request: web.Request, target: _Target) -> web.StreamResponse:
        query = request.query
        rt = target.rt
        if target.subresource == "log" and target.name is not None:
            return await self._pod_log(request, target)
        watching = target.watch_path or _parse_bool(query.get("watch"))
        if target.name is not None and not watching:
            if target.subresource == "scale":
                return self._json(request, self.store.scale(rt, target.namespace, target.name))
            if target.subresource not in (None, "status"):
                raise method_not_allowed()
            obj = self.store.require(rt, target.namespace, target.name)
            return self._one(request, target, self.store.view(rt, obj, target.version))
        if target.subresource is not None:
            raise method_not_allowed()
        field_text = query.get("fieldSelector") or ""
        if target.name is not None:  # GET /watch/.../NAME: a watch on one object
            field_text = ",".join(p for p in (field_text, f"metadata.name={target.name}") if p)
        labels, fields = parse_selectors(rt, query.get("labelSelector"), field_text)
        spec = WatchSpec(rt, target.namespace, labels, fields)
        if watching:
            return await self._watch(request, target, spec)
        result = self.store.list_objects(
            spec,
            limit=_parse_int(query, "limit") or 0,
            continue_token=query.get("continue", ""),
            resource_version=query.get("resourceVersion", ""),
            match=query.get("resourceVersionMatch", ""),
        )
        metadata: Obj = {"resourceVersion": str(result.resource_version)}
        if result.continue_token:
            metadata["continue"] = result.continue_token
            metadata["remainingItemCount"] = result.remaining
        items = [self.store.view(rt, obj, target.version) for obj in result.items]
        media = _negotiate(request.headers.get("Accept", ""))
        warnings = self._warnings(target)
        if media.mode == "table":
            body = apitables.table(
                rt,
                target.version,
                items,
                now=self.store.now(),
                include=self._include(request),
                metadata=metadata,
            )
            return self._json(request, body, warnings=warnings, media=media)
        if media.mode == "meta":
            body = {
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": metadata,
                "items": [apitables.row_object(o, "Metadata") for o in items],
            }
            return self._json(request, body, warnings=warnings, media=media)
        if rt.builtin:  # built-in list items carry no kind/apiVersion; custom ones do
            items = [{k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items]
        body = {
            "kind": rt.list_kind,
            "apiVersion": rt.api_version(target.version),
            "metadata": metadata,
            "items": items,
        }
        return self._json(request, body, warnings=warnings, media=media)

    @staticmethod
    def _include(request: web.Request) -> str:
        include = request.query.get("includeObject") or "Metadata"
        if include not in ("None", "Metadata", "Object"):
            raise bad_request(
                f'includeObject: Unsupported value: "{include}": supported values: '
                '"None", "Metadata", "Object"'
            )
        return include

    def _one(
        self,
        request: web.Request,
        target: _Target,
        obj: Obj,
        status: int = 200,
        warnings: list[str] | None = None,
    ) -> web.Response:
        media = _negotiate(request.headers.get("Accept", ""))
        warnings = self._warnings(target, warnings)
        if media.mode == "table" and obj.get("kind") == target.rt.kind:
            body = apitables.table(
                target.rt,
                target.version,
                [obj],
                now=self.store.now(),
                include=self._include(request),
                metadata={"resourceVersion": meta_of(obj).get("resourceVersion", "")},
            )
            return self._json(request, body, status, warnings, media)
        if media.mode == "meta" and obj.get("kind") == target.rt.kind:
            return self._json(
                request, apitables.row_object(obj, "Metadata"), status, warnings, media
            )
        if media.mode != "yaml":
            media = _Media("json", "application/json")
        return self._json(request, obj, status, warnings, media)

    async def _watch(
        self, request: web.Request, target: _Target, spec: WatchSpec
    ) -> web.StreamResponse:
        query = request.query
        timeout = _parse_int(query, "timeoutSeconds")
        bookmarks = _parse_bool(query.get("allowWatchBookmarks"))
        initial_events = _parse_bool(query.get("sendInitialEvents"))
        if initial_events and (
            query.get("resourceVersionMatch") != "NotOlderThan" or not bookmarks
        ):
            raise invalid_object(
                "ListOptions",
                "meta.k8s.io",
                "",
                [
                    FieldError(
                        "forbidden",
                        "sendInitialEvents",
                        "sendInitialEvents is forbidden for watch unless resourceVersionMatch "
                        "is NotOlderThan and allowWatchBookmarks is true",
                    )
                ],
            )
        media = _negotiate(request.headers.get("Accept", ""))
        table_mode = media.mode == "table"
        include = self._include(request)
        rt, version = target.rt, target.version
        watcher = _QueueWatcher(spec)
        try:
            initial = self.store.watch(
                spec,
                watcher,
                resource_version=query.get("resourceVersion", ""),
                initial_events=initial_events,
            )
            registered_at = self.store.rv  # what the initial events are complete up to
        except ApiError as error:
            if error.code != 410:
                raise
            # Too old: the real server reports it as an ERROR event inside a 200 stream.
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(_encode_json({"type": "ERROR", "object": error.status()}))
            await response.write_eof()
            return response
        columns_sent = False

        def encode(event_type: str, obj: Obj) -> bytes:
            nonlocal columns_sent
            served = self.store.view(rt, obj, version)
            if table_mode:
                served = apitables.table(
                    rt,
                    version,
                    [served],
                    now=self.store.now(),
                    include=include,
                    metadata={"resourceVersion": meta_of(obj).get("resourceVersion", "")},
                    with_columns=not columns_sent,
                )
                columns_sent = True
            return _encode_json({"type": event_type, "object": served})

        def bookmark(at: int, annotations: dict[str, str] | None = None) -> bytes:
            metadata: Obj = {"resourceVersion": str(at)}
            if annotations:
                metadata["annotations"] = annotations
            if table_mode:
                obj: Obj = {
                    "kind": "Table",
                    "apiVersion": "meta.k8s.io/v1",
                    "metadata": metadata,
                    "columnDefinitions": [],
                    "rows": [],
                }
            else:
                obj = {"kind": rt.kind, "apiVersion": rt.api_version(version), "metadata": metadata}
            return _encode_json({"type": "BOOKMARK", "object": obj})

        response = web.StreamResponse(
            headers={"Content-Type": media.content_type if table_mode else "application/json"}
        )
        for warning in self._warnings(target):
            response.headers.add("Warning", _warning_header(warning))
        response.enable_chunked_encoding()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout if timeout else None
        interval = max(self.bookmark_interval, 0.01)
        next_bookmark = loop.time() + interval if bookmarks else None
        try:
            await response.prepare(request)
            first = b"".join(encode(t, o) for t, o in initial)
            if initial_events:
                first += bookmark(registered_at, {"k8s.io/initial-events-end": "true"})
            if first:
                await response.write(first)
            while True:
                watcher.wake.clear()
                while watcher.pending:
                    batch: list[bytes] = []
                    while watcher.pending and len(batch) < 100:
                        batch.append(encode(*watcher.pending.popleft()))
                    await response.write(b"".join(batch))
                if watcher.closed:
                    break
                now = loop.time()
                if deadline is not None and now >= deadline:
                    break
                if next_bookmark is not None and now >= next_bookmark:
                    if watcher.pending:
                        continue  # the bookmark must not claim events not yet written
                    await response.write(bookmark(self.store.rv))
                    next_bookmark = now + interval
                transport = request.transport
                if transport is None or transport.is_closing():
                    break  # the client went away
                waits = [1.0]
                if deadline is not None:
                    waits.append(deadline - now)
                if next_bookmark is not None:
                    waits.append(next_bookmark - now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(watcher.wake.wait(), timeout=max(0.0, min(waits)))
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up mid-write
        finally:
            self.store.unwatch(watcher)
        return response

    # -- pods/log

    async def _pod_log(self, request: web.Request, target: _Target) -> web.StreamResponse:
        """The API server's checks (options, container name), kubelet's (the container's
        state), then the log: all at once, or followed (see the module docstring)."""
        name, namespace = target.name or "", target.namespace or ""
        options, follow, previous = _log_options(request.query, name)
        pod = self.store.require(target.rt, namespace, name)
        container = _log_container(pod, request.query.get("container") or "")
        plain = {"Content-Type": "text/plain"}
        if not (pod.get("spec") or {}).get("nodeName"):
            return web.Response(headers=plain)  # not scheduled: an empty log, as the real one
        problem = _container_log_problem(pod, container, previous)
        if problem is not None:
            raise bad_request(problem)
        registered = self.containers.current().find(namespace, name)
        source = registered.containers.get(container) if registered is not None else None
        reader = None
        if source is not None and registered is not None and not previous:
            start = datetime.fromisoformat(registered.started_at)
            reader = containers.ContainerLogReader(Path(source.path), source.offset, start)
        writer = containers.LogWriter(options)
        lines = await asyncio.to_thread(reader.read, final=not follow) if reader else []
        body = writer.first(lines)
        if not follow:
            return web.Response(body=body, headers=plain)
        response = web.StreamResponse(headers=plain)
        response.enable_chunked_encoding()
        uid = meta_of(pod).get("uid")
        self.log_followers += 1
        try:
            await response.prepare(request)
            if body:
                await response.write(body)
            while not writer.done and not self._closing:
                transport = request.transport
                if transport is None or transport.is_closing():
                    break  # the client went away
                running = self._log_source_running(target.rt, namespace, name, uid, container)
                if reader is not None:
                    lines = await asyncio.to_thread(reader.read, final=not running)
                    chunk = writer.render(lines)
                    if chunk:
                        await response.write(chunk)
                if not running:
                    break
                await asyncio.sleep(LOG_FOLLOW_INTERVAL)
            await response.write_eof()
        except (ConnectionError, RuntimeError):
            pass  # the client hung up mid-write
        finally:
            self.log_followers -= 1
        return response

    def _log_source_running(
        self, rt: ResourceType, namespace: str, name: str, uid: Any, container: str
    ) -> bool:
        """Whether a followed container can still write: its pod is still this one and the
        container runs (for the sandbox's processes: the process lives)."""
        pod = self.store.get(rt, namespace, name)
        if pod is None or meta_of(pod).get("uid") != uid:
            return False
        registered = self.containers.current().find(namespace, name)
        source = registered.containers.get(container) if registered is not None else None
        if registered is not None and source is not None and source.process:
            return registered.alive()
        status = _container_status(pod, container) or {}
        return "running" in (status.get("state") or {})

    # -- writes

    async def _post(self, request: web.Request, target: _Target) -> web.Response:
        rt = target.rt
        if target.name is not None:
            if target.subresource == "binding":
                body, _ = await self._object_body(request, "Binding")
                options = self._write_options(request, "CreateOptions")
                status = self.store.bind(target.namespace or "", target.name, body, options)
                return self._json(request, status, 201)
            if target.subresource == "token":
                body, _ = await self._object_body(request, "TokenRequest")
                token = self.store.token_request(target.namespace or "", target.name, body)
                return self._json(request, token, 201)
            raise method_not_allowed()
        if rt.namespaced and target.namespace is None:
            raise method_not_allowed()
        body, duplicates = await self._object_body(request, rt.kind)
        options = self._write_options(request, "CreateOptions", duplicates)
        result = await self.admission.admit(
            rt,
            target.version,
            target.namespace,
            None,
            None,
            options,
            lambda opts, name: self.store.create(
                rt, target.version, target.namespace, named(body, name), opts
            ),
        )
        return self._one(request, target, result.obj, result.code, result.warnings)

    async def _put(self, request: web.Request, target: _Target) -> web.Response:
        if target.name is None:
            raise method_not_allowed()
        rt = target.rt
        if target.subresource == "scale":
            body, _ = await self._object_body(request, "Scale")
            options = self._write_options(request, "UpdateOptions")
            scale = self.store.update_scale(rt, target.namespace, target.name, body, options)
            return self._json(request, scale)
        if target.subresource not in (None, "status"):
            raise method_not_allowed()
        body, duplicates = await self._object_body(request, rt.kind)
        options = self._write_options(request, "UpdateOptions", duplicates)
        name = target.name
        result = await self.admission.admit(
            rt,
            target.version,
            target.namespace,
            name,
            target.subresource,
            options,
            lambda opts, _: self.store.update(
                rt, target.version, target.namespace, name, body, opts, target.subresource
            ),
        )
        return self._one(request, target, result.obj, result.code, result.warnings)

    async def _patch(self, request: web.Request, target: _Target) -> web.Response:
        if target.name is None:
            raise method_not_allowed()
        rt = target.rt
        patch_type = request.headers.get("Content-Type", "").split(";")[0].strip()
        raw = await self._read_body(request)
        options = self._write_options(request, "PatchOptions")
        if target.subresource == "scale":
            try:
                body, _ = decode_json(raw)
            except (ValueError, UnicodeDecodeError) as error:
                raise bad_request(f"error decoding patch: {error}") from None
            scale = self.store.update_scale(
                rt, target.namespace, target.name, body, options, patch_type
            )
            return self._json(request, scale)
        if target.subresource not in (None, "status"):
            raise method_not_allowed()
        name = target.name
        result = await self.admission.admit(
            rt,
            target.version,
            target.namespace,
            name,
            target.subresource,
            options,
            lambda opts, _: self.store.patch(
                rt,
                target.version,
                target.namespace,
                name,
                patch_type,
                raw,
                opts,
                target.subresource,
            ),
        )
        return self._one(request, target, result.obj, result.code, result.warnings)

    async def _delete(self, request: web.Request, target: _Target) -> web.Response:
        rt = target.rt
        if target.subresource is not None:
            raise method_not_allowed()
        options = await self._delete_options(request)
        if target.name is None:
            labels, fields = parse_selectors(
                rt, request.query.get("labelSelector"), request.query.get("fieldSelector")
            )
            spec = WatchSpec(rt, target.namespace, labels, fields)
            items = self.store.delete_collection(spec, target.version, options)
            if rt.builtin:
                items = [
                    {k: v for k, v in o.items() if k not in ("kind", "apiVersion")} for o in items
                ]
            body = {
                "kind": rt.list_kind,
                "apiVersion": rt.api_version(target.version),
                "metadata": {"resourceVersion": str(self.store.rv)},
                "items": items,
            }
            return self._json(request, body, warnings=self._warnings(target))
        result = self.store.delete(rt, target.version, target.namespace, target.name, options)
        if result.obj.get("kind") == "Status":
            return self._json(request, result.obj, warnings=self._warnings(target))
        return self._one(request, target, result.obj)

    async def _delete_options(self, request: web.Request) -> DeleteOptions:
        query = request.query
        body: Any = None
        if request.can_read_body:
            body, _ = await self._object_body(request, "DeleteOptions")
        if body is not None and not isinstance(body, dict):
            raise bad_request("the object provided is unrecognized (must be of type DeleteOptions)")
        body = body or {}
        grace: Any = body.get("gracePeriodSeconds")
        if grace is None:
            grace = _parse_int(query, "gracePeriodSeconds", minimum=-(2**62))
        elif not isinstance(grace, int) or isinstance(grace, bool):
            raise bad_request("gracePeriodSeconds must be an integer")
        propagation = body.get("propagationPolicy") or query.get("propagationPolicy")
        orphan = body.get("orphanDependents")
        if orphan is None and query.get("orphanDependents") is not None:
            orphan = _parse_bool(query.get("orphanDependents"))
        if propagation is not None and orphan is not None:
            raise invalid_object(
                "DeleteOptions",
                "meta.k8s.io",
                "",
                [
                    FieldError(
                        "invalid",
                        "propagationPolicy",
                        "orphanDependents and deletionPropagation cannot be both set",
                        propagation,
                    )
                ],
            )
        if propagation is None:
            propagation = "Orphan" if orphan else "Background"
        if propagation not in ("Foreground", "Background", "Orphan"):
            raise invalid_object(
                "DeleteOptions",
                "meta.k8s.io",
                "",
                [
                    FieldError(
                        "unsupported",
                        "propagationPolicy",
                        "",
                        propagation,
                        ("Foreground", "Background", "Orphan"),
                    )
                ],
            )
        dry_run = list(body.get("dryRun") or []) + query.getall("dryRun", [])
        if any(v != "All" for v in dry_run):
            raise invalid_object(
                "DeleteOptions",
                "meta.k8s.io",
                "",
                [
                    FieldError(
                        "unsupported",
                        "dryRun",
                        "",
                        next(v for v in dry_run if v != "All"),
                        ("All",),
                    )
                ],
            )
        preconditions = body.get("preconditions") or {}
        return DeleteOptions(
            grace_period=grace,
            # Foreground is emulated as Background: dependents go right after the owner.
            propagation="Orphan" if propagation == "Orphan" else "Background",
            uid=preconditions.get("uid"),
            resource_version=preconditions.get("resourceVersion"),
            dry_run=bool(dry_run),
        )

    # -- discovery and OpenAPI

    def _root_paths(self) -> list[str]:
        paths = [
            "/api",
            "/api/v1",
            "/apis",
            "/healthz",
            "/livez",
            "/readyz",
            "/version",
            "/openapi/v3",
        ]
        for group, versions in self.store.registry.groups():
            if group:
                paths.append(f"/apis/{group}")
                paths += [f"/apis/{group}/{v}" for v in versions]
        return paths

    @staticmethod
    def _aggregated(request: web.Request) -> str | None:
        """The aggregated discovery version the client accepts first, if any."""
        for part in request.headers.get("Accept", "").split(","):
            params = dict(p.strip().split("=", 1) for p in part.split(";")[1:] if "=" in p)
            if (
                params.get("as") == "APIGroupDiscoveryList"
                and params.get("g") == ("apidiscovery.k8s.io")
                and params.get("v") in ("v2", "v2beta1")
            ):
                return params["v"]
        return None

    def _aggregated_response(
        self, request: web.Request, version: str, groups: list[tuple[str, list[str]]]
    ) -> web.Response:
        items = []
        for group, versions in groups:
            entries = []
            for v in versions:
                resources = [
                    self._aggregated_resource(rt, v)
                    for rt in self.store.registry.resources(group, v)
                ]
                entries.append({"version": v, "resources": resources, "freshness": "Current"})
            metadata: Obj = {"creationTimestamp": None}
            if group:
                metadata["name"] = group
            items.append({"metadata": metadata, "versions": entries})
        body = {
            "kind": "APIGroupDiscoveryList",
            "apiVersion": f"apidiscovery.k8s.io/{version}",
            "metadata": {},
            "items": items,
        }
        # kubectl only trusts the body when the Content-Type echoes the aggregated type.
        media = _Media(
            "json", f"application/json;g=apidiscovery.k8s.io;v={version};as=APIGroupDiscoveryList"
        )
        return self._json(request, body, media=media)

    @staticmethod
    def _aggregated_resource(rt: ResourceType, version: str) -> Obj:
        entry: Obj = {
            "resource": rt.plural,
            "responseKind": {"group": rt.group, "version": version, "kind": rt.kind},
            "scope": "Namespaced" if rt.namespaced else "Cluster",
            "singularResource": rt.singular,
            "verbs": list(STANDARD_VERBS),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        subresources = []
        for sub in sorted(rt.subresources):
            kind, group, sub_version, verbs = SUBRESOURCE_KINDS[sub]
            subresources.append(
                {
                    "subresource": sub,
                    "responseKind": {
                        "group": group if kind else rt.group,
                        "version": sub_version if kind else version,
                        "kind": kind or rt.kind,
                    },
                    "verbs": list(verbs),
                }
            )
        if subresources:
            entry["subresources"] = subresources
        return entry

    def _discovery_core(self, request: web.Request) -> web.Response:
        aggregated = self._aggregated(request)
        if aggregated:
            return self._aggregated_response(request, aggregated, [("", ["v1"])])
        return self._json(
            request,
            {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [
                    {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                ],
            },
        )

    def _discovery_groups(self, request: web.Request) -> web.Response:
        groups = [(g, v) for g, v in self.store.registry.groups() if g]
        aggregated = self._aggregated(request)
        if aggregated:
            return self._aggregated_response(request, aggregated, groups)
        return self._json(
            request,
            {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [self._group(g, v) for g, v in groups],
            },
        )

    @staticmethod
    def _group(group: str, versions: list[str]) -> Obj:
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0]}

    def _discovery_group(self, request: web.Request, group: str) -> web.Response:
        for name, versions in self.store.registry.groups():
            if name == group and group:
                return self._json(
                    request,
                    {"kind": "APIGroup", "apiVersion": "v1", **self._group(group, versions)},
                )
        raise resource_not_found()

    def _discovery_resources(self, request: web.Request, group: str, version: str) -> web.Response:
        resources = self.store.registry.resources(group, version)
        if not resources:
            raise resource_not_found()
        listed: list[Obj] = []
        for rt in sorted(resources, key=lambda r: r.plural):
            entry: Obj = {
                "name": rt.plural,
                "singularName": rt.singular,
                "namespaced": rt.namespaced,
                "kind": rt.kind,
                "verbs": list(STANDARD_VERBS),
            }
            if rt.short_names:
                entry["shortNames"] = list(rt.short_names)
            if rt.categories:
                entry["categories"] = list(rt.categories)
            listed.append(entry)
            for sub in sorted(rt.subresources):
                kind, sub_group, sub_version, verbs = SUBRESOURCE_KINDS[sub]
                item: Obj = {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": kind or rt.kind,
                    "verbs": list(verbs),
                }
                if kind and sub_version:
                    item["group"], item["version"] = sub_group, sub_version
                listed.append(item)
        group_version = f"{group}/{version}" if group else version
        return self._json(
            request,
            {
                "kind": "APIResourceList",
                "apiVersion": "v1",
                "groupVersion": group_version,
                "resources": listed,
            },
        )

    def _openapi(self, request: web.Request, rest: list[str]) -> web.Response:
        """A minimal OpenAPI v3: enough for kubectl to trust the server with field validation
        (one PATCH per kind carrying its group/version/kind and a fieldValidation parameter)."""
        if not rest or rest[0] != "v3":
            raise resource_not_found()  # v2 is absent; kubectl copes with that
        documents = {}
        for group, versions in self.store.registry.groups():
            for version in versions:
                path = f"api/{version}" if not group else f"apis/{group}/{version}"
                documents[path] = (group, version)
        if len(rest) == 1:
            paths = {}
            for path, (group, version) in documents.items():
                digest = hashlib.sha512(_encode_json(self._openapi_doc(group, version)))
                paths[path] = {
                    "serverRelativeURL": f"/openapi/v3/{path}?hash="
                    f"{digest.hexdigest()[:32].upper()}"
                }
            return self._json(request, {"paths": paths})
        wanted = "/".join(rest[1:])
        if wanted not in documents:
            raise resource_not_found()
        return self._json(request, self._openapi_doc(*documents[wanted]))

    def _openapi_doc(self, group: str, version: str) -> Obj:
        prefix = f"/api/{version}" if not group else f"/apis/{group}/{version}"
        paths: Obj = {}
        for rt in sorted(self.store.registry.resources(group, version), key=lambda r: r.plural):
            item = (
                f"{prefix}/namespaces/{{namespace}}/{rt.plural}/{{name}}"
                if rt.namespaced
                else f"{prefix}/{rt.plural}/{{name}}"
            )
            gvk = {"group": group, "version": version, "kind": rt.kind}
            parameters = [
                {"name": "fieldValidation", "in": "query", "schema": {"type": "string"}},
                {"name": "fieldManager", "in": "query", "schema": {"type": "string"}},
                {"name": "dryRun", "in": "query", "schema": {"type": "string"}},
            ]
            operation = {
                "x-kubernetes-group-version-kind": gvk,
                "parameters": parameters,
                "responses": {"200": {"description": "OK"}},
            }
            paths[item] = {verb: operation for verb in ("get", "put", "patch", "delete")}
        return {
            "openapi": "3.0.0",
            "info": {"title": "Kubernetes", "version": VERSION_INFO["gitVersion"]},
            "paths": paths,
            "components": {"schemas": {}},
        }


def _log_options(query: Any, name: str) -> tuple[containers.LogOptions, bool, bool]:
    """PodLogOptions from the query, validated as the API server does (400 for a value that is
    not a number or a time, 422 for one out of range); with `follow` and `previous`."""
    lowest = -(2**63)
    tail = _parse_int(query, "tailLines", minimum=lowest)
    limit = _parse_int(query, "limitBytes", minimum=lowest)
    since_seconds = _parse_int(query, "sinceSeconds", minimum=lowest)
    since_time = None
    text = query.get("sinceTime")
    if text:
        try:
            since_time = datetime.fromisoformat(text)
        except ValueError:
            since_time = None
        if since_time is None or since_time.tzinfo is None:
            raise bad_request(f'sinceTime: Invalid value: "{text}": must be an RFC 3339 time')
    errors: list[FieldError] = []
    if tail is not None and tail < 0:
        errors.append(
            FieldError("invalid", "tailLines", "must be greater than or equal to 0", tail)
        )
    if limit is not None and limit < 1:
        errors.append(FieldError("invalid", "limitBytes", "must be greater than 0", limit))
    if since_seconds is not None and since_time is not None:
        errors.append(
            FieldError(
                "forbidden", "", "at most one of `sinceTime` or `sinceSeconds` may be specified"
            )
        )
    elif since_seconds is not None and since_seconds < 1:
        errors.append(
            FieldError("invalid", "sinceSeconds", "must be greater than 0", since_seconds)
        )
    if errors:
        raise invalid_object("PodLogOptions", "", name, errors)
    since = since_time
    if since_seconds is not None:
        since = datetime.now(UTC) - timedelta(seconds=since_seconds)
    options = containers.LogOptions(
        tail_lines=tail,
        since=since,
        timestamps=_parse_bool(query.get("timestamps")),
        limit_bytes=limit,
    )
    return options, _parse_bool(query.get("follow")), _parse_bool(query.get("previous"))


def _names(pod: Obj, key: str) -> list[str]:
    return [str(c.get("name")) for c in (pod.get("spec") or {}).get(key) or []]


def _log_container(pod: Obj, requested: str) -> str:
    """The container a log request is for, or the API server's 400 (LogLocation)."""
    name = meta_of(pod).get("name", "")
    regular, init = _names(pod, "containers"), _names(pod, "initContainers")
    if not requested:
        if len(regular) == 1:
            return regular[0]
        if not regular:
            raise bad_request(f"a container name must be specified for pod {name}")
        message = (
            f"a container name must be specified for pod {name}, "
            f"choose one of: [{' '.join(regular)}]"
        )
        if init:
            message += f" or one of the init containers: [{' '.join(init)}]"
        raise bad_request(message)
    if requested not in (*regular, *init, *_names(pod, "ephemeralContainers")):
        raise bad_request(f"container {requested} is not valid for pod {name}")
    return requested


def _container_status(pod: Obj, container: str) -> Obj | None:
    status = pod.get("status") or {}
    for key in ("containerStatuses", "initContainerStatuses", "ephemeralContainerStatuses"):
        for entry in status.get(key) or []:
            if isinstance(entry, dict) and entry.get("name") == container:
                return entry
    return None


def _container_log_problem(pod: Obj, container: str, previous: bool) -> str | None:
    """Why kubelet would refuse this container's log (validateContainerLogStatus), or None."""
    pod_name = meta_of(pod).get("name", "")
    where = f'container "{container}" in pod "{pod_name}"'
    status = _container_status(pod, container)
    if status is None:
        return f"{where} is not available"
    state = status.get("state") or {}
    last = (status.get("lastState") or {}).get("terminated") or {}
    waiting, terminated = state.get("waiting"), state.get("terminated")
    if previous:
        if not last.get("containerID"):
            return f'previous terminated container "{container}" in pod "{pod_name}" not found'
        return None
    if state.get("running") is not None:
        return None
    if terminated is not None:
        if terminated.get("containerID") or last.get("containerID"):
            return None
        return f"{where} is terminated"
    if last:
        return None if last.get("containerID") else f"{where} is terminated"
    if waiting is not None:
        reason = waiting.get("reason") or ""
        if reason == "ErrImagePull":
            return f"{where} is waiting to start: image can't be pulled"
        if reason == "ImagePullBackOff":
            return f"{where} is waiting to start: trying and failing to pull image"
        return f"{where} is waiting to start: {reason}"
    return f"{where} is waiting to start - no logs yet"


def _warning_header(text: str) -> str:
    """A `Warning: 299` value; quotes and anything outside printable ASCII are escaped, since a
    raw control character would make the whole response unsendable."""
    escaped = "".join(
        c
        if 0x20 <= ord(c) < 0x7F and c not in '"\\'
        else ("\\" + c if c in '"\\' else f"\\u{ord(c):04x}")
        for c in text
    )
    return f'299 - "{escaped}"'


def _internal(error: BaseException) -> ApiError:
    return ApiError(
        500,
        "InternalError",
        f"Internal error occurred: {type(error).__name__}: {error}",
        {"causes": [{"message": str(error)}]},
    )


def _too_large() -> ApiError:
    return ApiError(
        413, "RequestEntityTooLarge", f"Request entity too large: limit is {MAX_BODY_BYTES}"
    )


class ApiServerThread:
    """An ApiServer on its own event loop in a daemon thread."""

    def __init__(self, **api_server_kwargs: Any) -> None:
        self._kwargs = api_server_kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ApiServer | None = None

    @property
    def server(self) -> ApiServer:
        assert self._server is not None, "the API server thread is not started"
        return self._server

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def port(self) -> int:
        return self.server.port

    def start(self, host: str = "127.0.0.1", port: int = 0) -> ApiServerThread:
        """Start and block until the server listens (or raise what stopped it)."""
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = ApiServer(**self._kwargs)
                loop.run_until_complete(self._server.start(host, port))
            except BaseException as error:
                failure.append(error)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="dew-csi-apiserver", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    def call(self, function: Callable[[], T]) -> T:
        """Run `function` (for example a look at `server.store`) on the server's loop."""
        return self.server._call(function)

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None or not thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self.server.stop(), loop).result(timeout=15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=15)

    def __enter__(self) -> ApiServerThread:
        return self.start() if self._thread is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_kubeconfig(
    path: Path, url: str, token: str | None = None, namespace: str = "default"
) -> None:
    """A kubeconfig whose current context points at `url` (mode 0600, written atomically)."""
    name = "dew-csi-sandbox"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": url}}],
        "users": [{"name": name, "user": {"token": token} if token else {}}],
        "contexts": [
            {"name": name, "context": {"cluster": name, "user": name, "namespace": namespace}}
        ],
        "current-context": name,
        "preferences": {},
    }
    path = Path(path)
    write_atomically(path, yaml.safe_dump(config, sort_keys=False).encode())
    os.chmod(path, 0o600)


def _parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ValueError(f"--listen must be HOST:PORT, not {text!r}")
    return host.strip("[]"), int(port)


def run_from_args(args: argparse.Namespace) -> int:
    """`dew-csi sandbox apiserver`: serve until SIGTERM or SIGINT, then exit 0."""
    setup_logging("text", level=logging.WARNING)
    try:
        host, port = _parse_listen(args.listen)
    except ValueError as error:
        print(f"dew-csi sandbox apiserver: {error}", file=sys.stderr)
        return 2

    async def serve() -> int:
        try:
            registry = os.environ.get(containers.REGISTRY_ENV)
            server = ApiServer(
                state_file=Path(args.state) if args.state else None,
                token=args.token,
                container_registry=Path(registry) if registry else None,
            )
            await server.start(host, port)
        except (OSError, ValueError) as error:
            print(f"dew-csi sandbox apiserver: cannot start: {error}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        try:
            if args.kubeconfig_out:
                write_kubeconfig(Path(args.kubeconfig_out), server.url, args.token)
            print(f"dew-csi apiserver listening on {server.url}", flush=True)
            await stop.wait()
        finally:
            await server.stop()
        return 0

    return asyncio.run(serve())
