"""Async CSMS v1 client (httpx): signing, credentials, retries, typed errors.

Only the calls dew-csi needs: read a secret version (the provider), read and list secrets and
versions, create a secret, add a version and delete a secret (`dew-csi csms`, tests).

Retries: 429, 5xx and transport errors are retried with exponential backoff and full jitter,
bounded by attempts and by a total time budget. A POST (create) is retried only when CSMS
cannot have applied it: on 429 (refused at the gateway) or when the connection was never made.
Secret values never reach a log line, an error message or a repr.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlsplit

import httpx

from dew_csi import __version__
from dew_csi.csms import signer
from dew_csi.csms.credentials import (
    Clock,
    Credentials,
    CredentialsProvider,
    StaticCredentialsProvider,
    utc_now,
)
from dew_csi.csms.errors import (
    AuthenticationFailed,
    CredentialsError,
    CsmsError,
    CsmsUnavailable,
    InvalidRequest,
    SecretNotFound,
    Throttled,
    VersionNotFound,
)

log = logging.getLogger(__name__)

ENDPOINT_TEMPLATE = "https://kms.{region}.myhuaweicloud.com"
NOT_FOUND_CODES = frozenset({"CSMS.0106", "CSMS.0005"})
SECRET_NOT_FOUND_CODE = "CSMS.0106"
JSON_CONTENT_TYPE = "application/json"
JSON_BODY_CONTENT_TYPE = "application/json;charset=utf-8"
# Retrying a POST after these cannot double-apply it: the request never left this host.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)

Outcome = Literal[
    "success",
    "not_found",
    "auth_error",
    "throttled",
    "server_error",
    "client_error",
    "connection_error",
]
# Called once per HTTP attempt: (operation, outcome, seconds). For metrics.
AttemptObserver = Callable[[str, Outcome, float], None]


def endpoint_for_region(region: str) -> str:
    """CSMS is served from the KMS host of the region (reference csms-api.md §1.4)."""
    if not region or "/" in region or "." in region:
        raise ValueError(f"not a Huawei Cloud region id: {region!r}")
    return ENDPOINT_TEMPLATE.format(region=region)


@dataclass(frozen=True)
class RetryPolicy:
    """`max_attempts` counts the first try. Delays: full jitter over
    `min(max_delay, base_delay * 2**n)`; no retry starts once `deadline` seconds have passed
    since the first attempt (or would pass during the wait)."""

    max_attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 8.0
    deadline: float = 30.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.base_delay < 0 or self.max_delay < 0 or self.deadline < 0:
            raise ValueError("retry delays and deadline cannot be negative")

    def delay(self, retry_number: int, rng: random.Random) -> float:
        ceiling = min(self.max_delay, self.base_delay * (2 ** (retry_number - 1)))
        return rng.uniform(0.0, ceiling)


@dataclass(frozen=True)
class CsmsClientConfig:
    """Where and how to reach CSMS. `endpoint` wins over `region`. `project_id` is used when
    the credentials carry none."""

    region: str | None = None
    endpoint: str | None = None
    project_id: str | None = None
    verify_tls: bool = True
    ca_bundle: str | None = None
    connect_timeout: float = 5.0
    read_timeout: float = 15.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    trust_env: bool = True

    def resolved_endpoint(self) -> str:
        if self.endpoint:
            endpoint = self.endpoint.rstrip("/")
            parts = urlsplit(endpoint)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(
                    f"CSMS endpoint {self.endpoint!r} must look like https://host[:port]"
                )
            if parts.path or parts.query:
                raise ValueError(f"CSMS endpoint {self.endpoint!r} must not have a path")
            return endpoint
        if self.region:
            return endpoint_for_region(self.region)
        raise ValueError("set a CSMS region (for example cn-north-4) or an explicit endpoint")


def _from_epoch_ms(value: object) -> datetime | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        return None
    return datetime.fromtimestamp(value / 1000, tz=UTC)


@dataclass(frozen=True)
class VersionMetadata:
    name: str
    version_id: str
    stages: tuple[str, ...]
    created_at: datetime | None
    expires_at: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], name: str) -> VersionMetadata:
        return cls(
            name=str(data.get("secret_name") or name),
            version_id=str(data["id"]),
            stages=tuple(str(s) for s in data.get("version_stages") or ()),
            created_at=_from_epoch_ms(data.get("create_time")),
            expires_at=_from_epoch_ms(data.get("expire_time")),
        )


@dataclass(frozen=True)
class SecretVersion:
    """A version with its value. The value fields are excluded from repr."""

    name: str
    version_id: str
    secret_string: str | None = field(repr=False)
    secret_binary: bytes | None = field(repr=False)
    stages: tuple[str, ...]
    created_at: datetime | None
    expires_at: datetime | None = None

    @property
    def value(self) -> bytes:
        """The content as bytes: the UTF-8 string, or the decoded binary."""
        if self.secret_binary is not None:
            return self.secret_binary
        return (self.secret_string or "").encode("utf-8")


@dataclass(frozen=True)
class SecretInfo:
    name: str
    id: str
    state: str
    description: str
    kms_key_id: str
    secret_type: str
    created_at: datetime | None
    updated_at: datetime | None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SecretInfo:
        return cls(
            name=str(data["name"]),
            id=str(data.get("id") or ""),
            state=str(data.get("state") or ""),
            description=str(data.get("description") or ""),
            kms_key_id=str(data.get("kms_key_id") or ""),
            secret_type=str(data.get("secret_type") or ""),
            created_at=_from_epoch_ms(data.get("create_time")),
            updated_at=_from_epoch_ms(data.get("update_time")),
        )


@dataclass(frozen=True)
class _Call:
    """One logical operation, for routing, retry rules and error messages."""

    operation: str
    method: str
    segments: tuple[str, ...]
    query: tuple[tuple[str, str], ...] = ()
    body: Mapping[str, Any] | None = None
    secret_name: str | None = None
    version_id: str | None = None
    # Strings to cut out of any server text we quote (values being written).
    sensitive: tuple[str, ...] = field(default=(), repr=False)
    # Per-call credentials (a volume's nodePublishSecretRef) instead of the client's provider.
    credentials: Credentials | None = field(default=None, repr=False)


@dataclass
class _Failure:
    error: CsmsError
    retryable: bool
    retry_after: float | None = None


def _value_fields(value: str | bytes) -> dict[str, str]:
    if isinstance(value, bytes):
        return {"secret_binary": base64.b64encode(value).decode("ascii")}
    return {"secret_string": value}


def _sensitive_forms(value: str | bytes) -> tuple[str, ...]:
    """The forms a value being written could take in a server's error text."""
    forms = list(_value_fields(value).values())
    if isinstance(value, bytes):
        forms.append(value.decode("utf-8", "replace"))
    return tuple(forms)


def _scrub(text: str, sensitive: Iterable[str]) -> str:
    for item in sensitive:
        if item and len(item) >= 3:
            text = text.replace(item, "***")
    return text


def _parse_retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


class CsmsClient:
    """`async with CsmsClient(credentials, CsmsClientConfig(region=...)) as csms: ...`"""

    def __init__(
        self,
        credentials: CredentialsProvider | Credentials,
        config: CsmsClientConfig | None = None,
        *,
        clock: Clock = utc_now,
        transport: httpx.AsyncBaseTransport | None = None,
        rng: random.Random | None = None,
        on_attempt: AttemptObserver | None = None,
    ) -> None:
        self._config = config or CsmsClientConfig()
        self._endpoint = self._config.resolved_endpoint()
        self._host = urlsplit(self._endpoint).netloc
        self._provider = (
            StaticCredentialsProvider(credentials)
            if isinstance(credentials, Credentials)
            else credentials
        )
        self._clock = clock
        self._rng = rng or random.Random()
        self._on_attempt = on_attempt
        timeout = httpx.Timeout(
            connect=self._config.connect_timeout,
            read=self._config.read_timeout,
            write=self._config.read_timeout,
            pool=self._config.connect_timeout,
        )
        self._http = httpx.AsyncClient(
            timeout=timeout,
            verify=self._tls_verification(),
            trust_env=self._config.trust_env,
            transport=transport,
            headers={"User-Agent": f"dew-csi/{__version__}"},
        )

    def _tls_verification(self) -> ssl.SSLContext | bool:
        if self._config.ca_bundle:
            try:
                return ssl.create_default_context(cafile=self._config.ca_bundle)
            except (OSError, ssl.SSLError) as exc:
                raise ValueError(
                    f"cannot load the CA bundle {self._config.ca_bundle}: {exc}"
                ) from None
        if not self._config.verify_tls:
            log.warning("TLS verification of the CSMS endpoint %s is disabled", self._endpoint)
        return self._config.verify_tls

    @property
    def endpoint(self) -> str:
        return self._endpoint

    async def __aenter__(self) -> CsmsClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    # ---- operations -------------------------------------------------------------------------

    async def get_secret_version(
        self, name: str, version_id: str = "latest", *, credentials: Credentials | None = None
    ) -> SecretVersion:
        """Read one version's value; `version_id` is `latest`, `v1`, `v2`, ...

        Every operation takes an optional `credentials`, used for this call instead of the
        client's provider (per-volume credentials sharing one connection pool)."""
        call = _Call(
            "show_secret_version",
            "GET",
            ("secrets", name, "versions", version_id),
            secret_name=name,
            version_id=version_id,
            credentials=credentials,
        )
        document = await self._execute(call)
        try:
            version = document["version"]
            metadata = VersionMetadata.from_json(version["version_metadata"], name)
            binary_text = version.get("secret_binary")
            binary = (
                base64.b64decode(binary_text, validate=True)
                if isinstance(binary_text, str)
                else None
            )
            text = version.get("secret_string")
        except (KeyError, TypeError, AttributeError, binascii.Error):
            raise self._malformed(call) from None
        return SecretVersion(
            name=metadata.name,
            version_id=metadata.version_id,
            secret_string=text if isinstance(text, str) else None,
            secret_binary=binary,
            stages=metadata.stages,
            created_at=metadata.created_at,
            expires_at=metadata.expires_at,
        )

    async def get_secret(self, name: str, *, credentials: Credentials | None = None) -> SecretInfo:
        call = _Call(
            "show_secret", "GET", ("secrets", name), secret_name=name, credentials=credentials
        )
        document = await self._execute(call)
        try:
            return SecretInfo.from_json(document["secret"])
        except (KeyError, TypeError, AttributeError):
            raise self._malformed(call) from None

    async def list_secrets(
        self, *, page_size: int = 50, credentials: Credentials | None = None
    ) -> list[SecretInfo]:
        """Every secret of the project, following the pagination markers."""
        secrets: list[SecretInfo] = []
        async for page in self._pages(
            "list_secrets", ("secrets",), "secrets", page_size, None, credentials
        ):
            secrets.extend(SecretInfo.from_json(item) for item in page)
        return secrets

    async def list_versions(
        self, name: str, *, page_size: int = 50, credentials: Credentials | None = None
    ) -> list[VersionMetadata]:
        """Metadata (no values) of every version of a secret."""
        versions: list[VersionMetadata] = []
        async for page in self._pages(
            "list_secret_versions",
            ("secrets", name, "versions"),
            "version_metadatas",
            page_size,
            name,
            credentials,
        ):
            versions.extend(VersionMetadata.from_json(item, name) for item in page)
        return versions

    async def create_secret(
        self,
        name: str,
        value: str | bytes,
        *,
        description: str | None = None,
        credentials: Credentials | None = None,
    ) -> SecretInfo:
        """Create a secret whose first version (`v1`, SYSCURRENT) holds `value`; `bytes` are
        stored as `secret_binary`."""
        body: dict[str, Any] = {"name": name, **_value_fields(value)}
        if description is not None:
            body["description"] = description
        call = _Call(
            "create_secret",
            "POST",
            ("secrets",),
            body=body,
            secret_name=name,
            sensitive=_sensitive_forms(value),
            credentials=credentials,
        )
        document = await self._execute(call)
        try:
            return SecretInfo.from_json(document["secret"])
        except (KeyError, TypeError, AttributeError):
            raise self._malformed(call) from None

    async def put_version(
        self,
        name: str,
        value: str | bytes,
        *,
        stages: Sequence[str] | None = None,
        credentials: Credentials | None = None,
    ) -> VersionMetadata:
        """Add a version. Without `stages` it becomes SYSCURRENT and the previous current
        version SYSPREVIOUS."""
        body: dict[str, Any] = dict(_value_fields(value))
        if stages is not None:
            body["version_stages"] = list(stages)
        call = _Call(
            "create_secret_version",
            "POST",
            ("secrets", name, "versions"),
            body=body,
            secret_name=name,
            sensitive=_sensitive_forms(value),
            credentials=credentials,
        )
        document = await self._execute(call)
        try:
            return VersionMetadata.from_json(document["version_metadata"], name)
        except (KeyError, TypeError, AttributeError):
            raise self._malformed(call) from None

    async def delete_secret(self, name: str, *, credentials: Credentials | None = None) -> None:
        """Delete a secret and all its versions at once (not recoverable)."""
        call = _Call(
            "delete_secret", "DELETE", ("secrets", name), secret_name=name, credentials=credentials
        )
        await self._execute(call)

    # ---- plumbing ---------------------------------------------------------------------------

    async def _pages(
        self,
        operation: str,
        segments: tuple[str, ...],
        items_key: str,
        page_size: int,
        secret_name: str | None,
        credentials: Credentials | None,
    ) -> AsyncIterator[list[Any]]:
        marker: str | None = None
        seen: set[str] = set()
        while True:
            query: list[tuple[str, str]] = [("limit", str(page_size))]
            if marker is not None:
                query.append(("marker", marker))
            call = _Call(
                operation,
                "GET",
                segments,
                tuple(query),
                secret_name=secret_name,
                credentials=credentials,
            )
            document = await self._execute(call)
            items = document.get(items_key)
            if not isinstance(items, list):
                raise self._malformed(call)
            yield items
            page_info = document.get("page_info") or {}
            next_marker = page_info.get("next_marker") if isinstance(page_info, dict) else None
            # A repeated marker would loop for ever; treat it as the last page.
            if not items or not next_marker or next_marker in seen:
                return
            seen.add(next_marker)
            marker = str(next_marker)

    def _describe(self, call: _Call) -> str:
        if call.secret_name is None:
            return f"CSMS {call.operation}"
        if call.version_id is None:
            return f"CSMS {call.operation} of secret {call.secret_name!r}"
        return f"CSMS {call.operation} of secret {call.secret_name!r} version {call.version_id!r}"

    def _malformed(self, call: _Call) -> CsmsUnavailable:
        return CsmsUnavailable(
            f"{self._describe(call)}: {self._endpoint} returned a response that is not a CSMS "
            f"answer of the expected shape; check that the endpoint really is CSMS (KMS host)"
        )

    async def _credentials(self, call: _Call) -> tuple[Credentials, str]:
        credentials = call.credentials or await self._provider.get()
        project_id = credentials.project_id or self._config.project_id
        if not project_id:
            raise CredentialsError(
                f"no Huawei Cloud project id for the credentials from {credentials.source} "
                f"(AK {credentials.ak}): set project_id next to the AK/SK or in the CSMS "
                f"client configuration"
            )
        return credentials, project_id

    def _build(
        self, call: _Call, credentials: Credentials, project_id: str
    ) -> tuple[str, dict[str, str], bytes]:
        path = "/v1/" + "/".join(quote(part, safe="") for part in (project_id, *call.segments))
        body = b"" if call.body is None else json.dumps(call.body).encode("utf-8")
        headers = {
            "Content-Type": JSON_BODY_CONTENT_TYPE if call.body is not None else JSON_CONTENT_TYPE,
            "Host": self._host,
            signer.HEADER_PROJECT_ID: project_id,
        }
        if credentials.security_token:
            headers[signer.HEADER_SECURITY_TOKEN] = credentials.security_token
        signed = signer.sign_request(
            method=call.method,
            host=self._host,
            path=path,
            query=call.query,
            headers=headers,
            body=body,
            access_key=credentials.ak,
            secret_key=credentials.sk,
            now=self._clock(),
        )
        url = self._endpoint + path + (f"?{signed.query_string}" if signed.query_string else "")
        return url, signed.headers, body

    async def _execute(self, call: _Call) -> dict[str, Any]:
        policy = self._config.retry
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            credentials, project_id = await self._credentials(call)
            result = await self._attempt(call, credentials, project_id)
            if isinstance(result, dict):
                return result
            failure = result
            if (
                call.method == "DELETE"
                and attempt > 1
                and isinstance(failure.error, SecretNotFound)
            ):
                # An earlier attempt that timed out or got a 5xx did delete it.
                return {}
            if not failure.retryable or attempt >= policy.max_attempts:
                raise self._final(failure, attempt)
            delay = policy.delay(attempt, self._rng)
            if failure.retry_after is not None:
                delay = min(policy.max_delay, max(delay, failure.retry_after))
            if time.monotonic() - started + delay > policy.deadline:
                raise self._final(failure, attempt)
            log.warning(
                "%s failed (%s), retrying in %.2fs (attempt %d of %d)",
                self._describe(call),
                failure.error.error_code or type(failure.error).__name__,
                delay,
                attempt,
                policy.max_attempts,
            )
            await asyncio.sleep(delay)

    def _final(self, failure: _Failure, attempts: int) -> CsmsError:
        error = failure.error
        if attempts > 1:
            error.message += f" (gave up after {attempts} attempts)"
            error.args = (error.message,)
        return error

    def _observe(self, call: _Call, outcome: Outcome, started: float) -> None:
        if self._on_attempt is not None:
            self._on_attempt(call.operation, outcome, time.monotonic() - started)

    async def _attempt(
        self, call: _Call, credentials: Credentials, project_id: str
    ) -> dict[str, Any] | _Failure:
        url, headers, body = self._build(call, credentials, project_id)
        started = time.monotonic()
        try:
            response = await self._http.request(call.method, url, headers=headers, content=body)
        except httpx.TransportError as exc:
            self._observe(call, "connection_error", started)
            retryable = call.method != "POST" or isinstance(exc, _NOT_SENT_ERRORS)
            return _Failure(
                CsmsUnavailable(
                    f"{self._describe(call)}: cannot reach CSMS at {self._endpoint} "
                    f"({type(exc).__name__}); check the endpoint or region, DNS, the VPC "
                    f"endpoint for DEW and any proxy settings"
                ),
                retryable=retryable,
            )
        log.debug(
            "%s -> HTTP %d in %.3fs",
            self._describe(call),
            response.status_code,
            time.monotonic() - started,
        )
        if 200 <= response.status_code < 300:
            document = self._decode_success(call, response)
            self._observe(call, "success", started)
            return document
        failure = self._failure_from_response(call, credentials, project_id, response)
        self._observe(call, _outcome(failure.error), started)
        return failure

    def _decode_success(self, call: _Call, response: httpx.Response) -> dict[str, Any]:
        if not response.content.strip():
            return {}
        try:
            document = json.loads(response.content)
        except ValueError:
            raise self._malformed(call) from None
        if not isinstance(document, dict):
            raise self._malformed(call)
        return document

    def _failure_from_response(
        self, call: _Call, credentials: Credentials, project_id: str, response: httpx.Response
    ) -> _Failure:
        status = response.status_code
        code, message = _error_fields(response)
        sensitive = (credentials.sk, credentials.security_token or "", *call.sensitive)
        message = _scrub(message, sensitive)[:300]
        request_id = response.headers.get("X-Request-Id")
        detail = f"HTTP {status}" + (f" {code}" if code else "")
        detail += f": {message}" if message else ""
        where = self._describe(call)
        kwargs: dict[str, Any] = {"status": status, "error_code": code, "request_id": request_id}
        if status in (401, 403):
            return _Failure(
                AuthenticationFailed(
                    f"{where}: CSMS refused the credentials from {credentials.source} (AK "
                    f"{credentials.ak}, project {project_id}; {detail}). Check the "
                    f"AK/SK pair, the security token and its expiry, that the project id belongs "
                    f"to the region, the IAM permissions for CSMS, and the node clock (requests "
                    f"more than 15 minutes off are refused)",
                    **kwargs,
                ),
                retryable=False,
            )
        if status == 429:
            return _Failure(
                Throttled(
                    f"{where}: CSMS is throttling requests ({detail}); reduce the "
                    f"request rate (longer rotation interval, fewer objects) or retry later",
                    **kwargs,
                ),
                retryable=True,
                retry_after=_parse_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 500:
            retryable = call.method != "POST"
            note = "" if retryable else " (a create is not retried: it may have been applied)"
            return _Failure(
                CsmsUnavailable(
                    f"{where}: CSMS at {self._endpoint} is failing ({detail}){note}",
                    **kwargs,
                ),
                retryable=retryable,
            )
        if status == 404 or code in NOT_FOUND_CODES:
            return _Failure(self._not_found(call, code, detail, kwargs), retryable=False)
        return _Failure(
            InvalidRequest(f"{where}: CSMS refused the request ({detail})", **kwargs),
            retryable=False,
        )

    def _not_found(
        self, call: _Call, code: str | None, detail: str, kwargs: dict[str, Any]
    ) -> CsmsError:
        name = call.secret_name
        if call.version_id is None or code == SECRET_NOT_FOUND_CODE:
            return SecretNotFound(
                f"CSMS secret {name!r} does not exist ({detail}); check the secret "
                f"name, the region and the project",
                **kwargs,
            )
        return VersionNotFound(
            f"CSMS secret {name!r} has no version {call.version_id!r} ({detail}); "
            f"check objectVersion against the secret's versions, or use 'latest'",
            **kwargs,
        )


def _outcome(error: CsmsError) -> Outcome:
    if isinstance(error, SecretNotFound | VersionNotFound):
        return "not_found"
    if isinstance(error, AuthenticationFailed):
        return "auth_error"
    if isinstance(error, Throttled):
        return "throttled"
    if isinstance(error, CsmsUnavailable):
        return "server_error"
    return "client_error"


def _error_fields(response: httpx.Response) -> tuple[str | None, str]:
    """`error_code`/`error_msg` from a flat CSMS body or a nested KMS-style `{"error": {...}}`."""
    try:
        document = json.loads(response.content)
    except ValueError:
        return None, response.text.strip()[:200]
    if isinstance(document, dict) and isinstance(document.get("error"), dict):
        document = document["error"]
    if not isinstance(document, dict):
        return None, ""
    code = document.get("error_code")
    message = document.get("error_msg")
    return (
        str(code) if code else None,
        str(message) if message else "",
    )
