"""A local emulator of the ECS metadata service's credential endpoints (aiohttp).

It serves what the official SDK and `MetadataCredentialsProvider` use (reference csms-api.md
§4.2, item 4):

* `PUT /meta-data/latest/api/token` with `X-Metadata-Token-Ttl-Seconds` → a session token;
* `GET /openstack/latest/securitykey` with `X-Metadata-Token` →
  `{"credential": {"access", "secret", "securitytoken", "expires_at"}}`;
* `GET /openstack/latest/meta_data.json` → instance metadata including `project_id`.

Credentials rotate: each has a lifetime, and a new one is issued once the current one is within
`rotate_before_expiry` of expiring (or when forced). Every issued credential is handed to
`on_issue`, typically `CsmsEmulator.add_temporary_credentials`, so the CSMS emulator accepts it.
Admin endpoints under `/_emulator/` (loopback only): `POST rotate`, `GET requests`,
`POST agency` (`{"configured": false}` makes it answer as a node without an agency).
"""

from __future__ import annotations

import logging
import secrets
import string
import threading
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Self

from aiohttp import web

from dew_csi.csms.credentials import (
    METADATA_INSTANCE_PATH,
    METADATA_NO_AGENCY_TEXT,
    METADATA_SECURITY_KEY_PATH,
    METADATA_TOKEN_HEADER,
    METADATA_TOKEN_PATH,
    METADATA_TOKEN_TTL_HEADER,
)
from dew_csi.csms.emulator import (
    Clock,
    ServerThread,
    TemporaryCredentials,
    is_loopback,
    serve_app,
    utc_now,
)

log = logging.getLogger(__name__)

EXPIRES_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
MAX_SESSION_TOKEN_TTL = 21600


@dataclass(frozen=True)
class _SessionToken:
    value: str
    expires_at: datetime


def _random_text(alphabet: str, length: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(length))


class MetadataEmulator:
    def __init__(
        self,
        *,
        project_id: str | None = None,
        credential_lifetime: timedelta = timedelta(hours=24),
        rotate_before_expiry: timedelta = timedelta(hours=1),
        on_issue: Callable[[TemporaryCredentials], None] | None = None,
        agency_configured: bool = True,
        session_tokens: bool = True,
        clock: Clock = utc_now,
    ) -> None:
        if rotate_before_expiry >= credential_lifetime:
            raise ValueError("rotate_before_expiry must be shorter than credential_lifetime")
        self.project_id = project_id
        self._lifetime = credential_lifetime
        self._rotate_before = rotate_before_expiry
        self._on_issue = on_issue
        self.agency_configured = agency_configured
        self._session_tokens = session_tokens
        self._clock = clock
        self._lock = threading.Lock()
        self._tokens: dict[str, _SessionToken] = {}
        self._current: TemporaryCredentials | None = None
        self.issued: list[TemporaryCredentials] = []
        self.requests: Counter[str] = Counter()
        self._runner: web.AppRunner | None = None
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            raise RuntimeError("the metadata emulator is not started")
        return self._url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        app = web.Application()
        app.router.add_put(METADATA_TOKEN_PATH, self._token)
        app.router.add_get(METADATA_SECURITY_KEY_PATH, self._security_key)
        app.router.add_get(METADATA_INSTANCE_PATH, self._instance)
        app.router.add_post("/_emulator/rotate", self._admin_rotate)
        app.router.add_get("/_emulator/requests", self._admin_requests)
        app.router.add_post("/_emulator/agency", self._admin_agency)
        self._runner, self._url = await serve_app(app, host, port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # -- credentials --

    def rotate(self) -> TemporaryCredentials:
        """Issue a new credential now (thread-safe)."""
        with self._lock:
            return self._issue()

    def current(self) -> TemporaryCredentials:
        """The credential the service hands out now, rotating it if it is due."""
        with self._lock:
            current = self._current
            if current is None or (
                current.expires_at is not None
                and current.expires_at - self._clock() <= self._rotate_before
            ):
                current = self._issue()
            return current

    def _issue(self) -> TemporaryCredentials:
        credentials = TemporaryCredentials(
            ak="TMP" + _random_text(string.ascii_uppercase + string.digits, 17),
            sk=_random_text(string.ascii_letters + string.digits, 40),
            security_token=_random_text(string.ascii_letters + string.digits + "-_", 160),
            expires_at=self._clock() + self._lifetime,
        )
        self._current = credentials
        self.issued.append(credentials)
        if self._on_issue is not None:
            self._on_issue(credentials)
        log.info("metadata emulator issued %s", credentials.ak)
        return credentials

    def _session_ok(self, request: web.Request) -> bool:
        if not self._session_tokens:
            return True
        value = request.headers.get(METADATA_TOKEN_HEADER)
        with self._lock:
            token = self._tokens.get(value or "")
        return token is not None and token.expires_at > self._clock()

    # -- handlers --

    async def _token(self, request: web.Request) -> web.Response:
        self.requests["token"] += 1
        if not self._session_tokens:
            return web.Response(status=404, text="Not Found")
        raw_ttl = request.headers.get(METADATA_TOKEN_TTL_HEADER, "")
        if not raw_ttl.isdigit() or not 1 <= int(raw_ttl) <= MAX_SESSION_TOKEN_TTL:
            return web.Response(status=400, text="invalid X-Metadata-Token-Ttl-Seconds")
        token = _SessionToken(
            value=secrets.token_urlsafe(32),
            expires_at=self._clock() + timedelta(seconds=int(raw_ttl)),
        )
        with self._lock:
            self._tokens[token.value] = token
        return web.Response(text=token.value)

    async def _security_key(self, request: web.Request) -> web.Response:
        self.requests["securitykey"] += 1
        if not self._session_ok(request):
            return web.Response(status=401, text="Unauthorized")
        if not self.agency_configured:
            return web.Response(status=401, text=METADATA_NO_AGENCY_TEXT)
        credentials = self.current()
        assert credentials.expires_at is not None
        return web.json_response(
            {
                "credential": {
                    "access": credentials.ak,
                    "secret": credentials.sk,
                    "securitytoken": credentials.security_token,
                    "expires_at": credentials.expires_at.strftime(EXPIRES_FORMAT),
                }
            }
        )

    async def _instance(self, request: web.Request) -> web.Response:
        self.requests["meta_data"] += 1
        if not self._session_ok(request):
            return web.Response(status=401, text="Unauthorized")
        document: dict[str, Any] = {
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_URL, "dew-csi-metadata-emulator")),
            "name": "dew-csi-node",
            "availability_zone": "local-1a",
        }
        if self.project_id is not None:
            document["project_id"] = self.project_id
        return web.json_response(document)

    async def _admin_rotate(self, request: web.Request) -> web.Response:
        if not _loopback(request):
            return web.Response(status=403)
        return web.json_response({"access": self.rotate().ak})

    async def _admin_requests(self, request: web.Request) -> web.Response:
        if not _loopback(request):
            return web.Response(status=403)
        return web.json_response(dict(self.requests))

    async def _admin_agency(self, request: web.Request) -> web.Response:
        if not _loopback(request):
            return web.Response(status=403)
        body = await request.json()
        self.agency_configured = bool(body.get("configured", True))
        return web.json_response({"configured": self.agency_configured})


def _loopback(request: web.Request) -> bool:
    return is_loopback(request.remote)


class MetadataEmulatorThread(ServerThread[MetadataEmulator]):
    """`with MetadataEmulatorThread(on_issue=csms.emulator.add_temporary_credentials) as md:`"""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        super().__init__(MetadataEmulator(**options), host, port)

    @property
    def emulator(self) -> MetadataEmulator:
        return self.server
