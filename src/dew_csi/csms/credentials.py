"""Where CSMS credentials come from.

A `Credentials` value is one AK/SK pair (plus a security token for temporary credentials). The
sources, each a `CredentialsProvider`:

* `EnvironmentCredentialsProvider`: `HUAWEICLOUD_SDK_AK`, `..._SK`, `..._SECURITY_TOKEN`,
  `..._PROJECT_ID` (the official SDK's names).
* `FileCredentialsProvider`: a directory holding files `ak`, `sk`, `security_token`,
  `project_id`, as a mounted Kubernetes Secret looks.
* `MetadataCredentialsProvider`: the ECS/CCE node agency's temporary credentials from the
  metadata service, refreshed before they expire.
* `credentials_from_node_publish_secrets`: per volume, from the nodePublishSecretRef Secret.
* `CredentialsChain`: the first source that is configured wins.

Secret keys and tokens never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from dew_csi.csms.errors import CredentialsError, CredentialsUnavailable

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]

ENV_AK = "HUAWEICLOUD_SDK_AK"
ENV_SK = "HUAWEICLOUD_SDK_SK"
ENV_SECURITY_TOKEN = "HUAWEICLOUD_SDK_SECURITY_TOKEN"
ENV_PROJECT_ID = "HUAWEICLOUD_SDK_PROJECT_ID"

DEFAULT_METADATA_URL = "http://169.254.169.254"
METADATA_TOKEN_PATH = "/meta-data/latest/api/token"
METADATA_SECURITY_KEY_PATH = "/openstack/latest/securitykey"
METADATA_INSTANCE_PATH = "/openstack/latest/meta_data.json"
METADATA_TOKEN_HEADER = "X-Metadata-Token"
METADATA_TOKEN_TTL_HEADER = "X-Metadata-Token-Ttl-Seconds"
METADATA_TOKEN_TTL_SECONDS = 21600
# The metadata service answers 401 with this text when the node has no agency at all.
METADATA_NO_AGENCY_TEXT = "Please configure Cloud Service Agency first"
METADATA_EXPIRES_FORMATS = ("%Y-%m-%dT%H:%M:%S.%fZ", "%Y-%m-%dT%H:%M:%SZ")

NODE_PUBLISH_SECRET_KEYS = ("ak", "sk", "security_token", "project_id")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Credentials:
    """One AK/SK pair. `sk` and `security_token` are kept out of repr on purpose."""

    ak: str
    sk: str = field(repr=False)
    security_token: str | None = field(default=None, repr=False)
    project_id: str | None = None
    expires_at: datetime | None = None
    source: str = "static"

    def __post_init__(self) -> None:
        if not self.ak or not self.sk:
            raise CredentialsError(
                f"credentials from {self.source} need both an access key and a secret key"
            )

    @property
    def is_temporary(self) -> bool:
        return self.security_token is not None

    @property
    def identity(self) -> str:
        """Stable, log- and cache-key-safe: the AK, the project and a short digest that changes
        whenever the SK or token does (so a rotated key never shares a cache entry)."""
        material = f"{self.ak}\0{self.sk}\0{self.security_token or ''}".encode()
        digest = hashlib.sha256(material).hexdigest()[:16]
        return f"{self.ak}/{self.project_id or '-'}/{digest}"

    def expires_within(self, margin: timedelta, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at - now <= margin

    def with_project_id(self, project_id: str | None) -> Credentials:
        return self if project_id is None else replace(self, project_id=project_id)


class CredentialsProvider(ABC):
    """A source of credentials. `get` raises `CredentialsUnavailable` when the source is not
    configured here and `CredentialsError` when it is configured but unusable."""

    name: str = "credentials"

    @abstractmethod
    async def get(self) -> Credentials: ...

    async def aclose(self) -> None:  # noqa: B027 - optional hook, most sources hold nothing
        """Release what the provider holds (HTTP connections)."""


class StaticCredentialsProvider(CredentialsProvider):
    def __init__(self, credentials: Credentials) -> None:
        self._credentials = credentials
        self.name = credentials.source

    async def get(self) -> Credentials:
        return self._credentials


def _clean(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    return value or None


def _require_pair(
    ak: str | None, sk: str | None, where: str, ak_name: str, sk_name: str
) -> tuple[str, str]:
    """Both set: the pair. Neither: this source is not configured. One: a configuration error."""
    if ak is None and sk is None:
        raise CredentialsUnavailable(f"{where}: neither {ak_name} nor {sk_name} is set")
    if ak is None:
        raise CredentialsError(f"{where}: {sk_name} is set but {ak_name} is missing or empty")
    if sk is None:
        raise CredentialsError(f"{where}: {ak_name} is set but {sk_name} is missing or empty")
    return ak, sk


class EnvironmentCredentialsProvider(CredentialsProvider):
    name = "environment"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ

    async def get(self) -> Credentials:
        environ = os.environ if self._environ is None else self._environ
        ak, sk = _require_pair(
            _clean(environ.get(ENV_AK)), _clean(environ.get(ENV_SK)), "environment", ENV_AK, ENV_SK
        )
        return Credentials(
            ak=ak,
            sk=sk,
            security_token=_clean(environ.get(ENV_SECURITY_TOKEN)),
            project_id=_clean(environ.get(ENV_PROJECT_ID)),
            source="environment",
        )


class FileCredentialsProvider(CredentialsProvider):
    """Reads the files on every call, so a rotated Kubernetes Secret is picked up."""

    name = "files"

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self._directory = Path(directory)

    def _read(self, key: str) -> str | None:
        path = self._directory / key
        try:
            return _clean(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError) as exc:
            raise CredentialsError(
                f"cannot read credential file {path}: {type(exc).__name__}"
            ) from None

    async def get(self) -> Credentials:
        where = f"credential files in {self._directory}"
        if not self._directory.is_dir():
            raise CredentialsUnavailable(f"{where}: directory does not exist")
        ak, sk = _require_pair(self._read("ak"), self._read("sk"), where, "file 'ak'", "file 'sk'")
        return Credentials(
            ak=ak,
            sk=sk,
            security_token=self._read("security_token"),
            project_id=self._read("project_id"),
            source=f"files:{self._directory}",
        )


def credentials_from_node_publish_secrets(
    secrets: Mapping[str, str], *, source: str = "nodePublishSecretRef"
) -> Credentials:
    """Credentials for one volume from its nodePublishSecretRef Secret (keys `ak`, `sk`,
    optional `security_token` and `project_id`). Errors name keys, never values."""
    values = {key: _clean(secrets.get(key)) for key in NODE_PUBLISH_SECRET_KEYS}
    missing = [key for key in ("ak", "sk") if values[key] is None]
    if missing:
        present = sorted(key for key in secrets if secrets.get(key))
        raise CredentialsError(
            f"the {source} Secret is missing key {' and '.join(repr(k) for k in missing)} "
            f"(or it is empty); it must contain 'ak' and 'sk', and may contain "
            f"'security_token' and 'project_id'; keys present: "
            f"{', '.join(present) if present else 'none'}"
        )
    return Credentials(
        ak=values["ak"] or "",
        sk=values["sk"] or "",
        security_token=values["security_token"],
        project_id=values["project_id"],
        source=source,
    )


def _parse_expiry(text: object) -> datetime:
    if not isinstance(text, str):
        raise ValueError("expires_at is not a string")
    for fmt in METADATA_EXPIRES_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=UTC)
        except ValueError:
            continue
    raise ValueError("expires_at has an unknown format")


class MetadataCredentialsProvider(CredentialsProvider):
    """Temporary credentials of the node's agency, from the ECS metadata service.

    Protocol as the official SDK speaks it: `PUT /meta-data/latest/api/token` for a session
    token (skipped when the service does not offer one), then
    `GET /openstack/latest/securitykey` with `X-Metadata-Token`. The credential is cached and
    fetched again once it is within `refresh_margin` of `expires_at`. Concurrent callers share
    one refresh; a failed refresh keeps serving the old credential while it is still valid.
    """

    name = "ECS metadata"

    def __init__(
        self,
        *,
        base_url: str = DEFAULT_METADATA_URL,
        project_id: str | None = None,
        discover_project_id: bool = True,
        refresh_margin: timedelta = timedelta(minutes=15),
        min_refresh_interval: timedelta = timedelta(seconds=60),
        timeout: float = 3.0,
        clock: Clock = utc_now,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._base_url = base_url.rstrip("/")
        self._project_id = project_id
        self._discover_project_id = discover_project_id
        self._refresh_margin = refresh_margin
        self._min_refresh_interval = min_refresh_interval
        self._clock = clock
        # Metadata is link-local: never route it through HTTP(S)_PROXY.
        self._http = httpx.AsyncClient(
            base_url=self._base_url, timeout=timeout, trust_env=False, transport=transport
        )
        self._session_token: str | None = None
        self._cached: Credentials | None = None
        self._last_attempt: datetime | None = None
        self._lock = asyncio.Lock()
        self.refresh_count = 0

    async def aclose(self) -> None:
        await self._http.aclose()

    def _usable_cached(self) -> Credentials | None:
        """The cached credential if it needs no refresh yet: outside the refresh margin, or
        inside it but still valid and refreshed (or tried) less than `min_refresh_interval`
        ago, so a metadata service that has not rotated yet is not asked on every call."""
        cached, now = self._cached, self._clock()
        if cached is None:
            return None
        if not cached.expires_within(self._refresh_margin, now):
            return cached
        recently_tried = (
            self._last_attempt is not None and now - self._last_attempt < self._min_refresh_interval
        )
        if recently_tried and not cached.expires_within(timedelta(0), now):
            return cached
        return None

    async def get(self) -> Credentials:
        usable = self._usable_cached()
        if usable is not None:
            return usable
        async with self._lock:
            usable = self._usable_cached()
            if usable is not None:
                return usable
            self._last_attempt = self._clock()
            try:
                fetched = await self._fetch()
            except CredentialsError as exc:
                old = self._cached
                if old is not None and not old.expires_within(timedelta(0), self._clock()):
                    log.warning(
                        "refreshing ECS metadata credentials failed, keeping the current ones "
                        "until they expire: %s",
                        exc,
                    )
                    return old
                raise
            self._cached = fetched
            self.refresh_count += 1
            log.info(
                "got temporary credentials %s from the ECS metadata service, valid until %s",
                fetched.ak,
                fetched.expires_at,
            )
            return fetched

    async def _request(self, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
        try:
            return await self._http.request(method, path, headers=headers)
        except httpx.HTTPError as exc:
            raise CredentialsUnavailable(
                f"ECS metadata service at {self._base_url} is not reachable "
                f"({type(exc).__name__}); this is not an ECS/CCE node or the metadata URL is wrong"
            ) from None

    async def _refresh_session_token(self) -> None:
        response = await self._request(
            "PUT", METADATA_TOKEN_PATH, {METADATA_TOKEN_TTL_HEADER: str(METADATA_TOKEN_TTL_SECONDS)}
        )
        # 404/405/503: this metadata service has no session tokens; go on without one.
        self._session_token = response.text.strip() if response.status_code == 200 else None

    async def _get_security_key(self) -> httpx.Response:
        headers = {METADATA_TOKEN_HEADER: self._session_token} if self._session_token else {}
        return await self._request("GET", METADATA_SECURITY_KEY_PATH, headers)

    async def _fetch(self) -> Credentials:
        if self._session_token is None:
            await self._refresh_session_token()
        response = await self._get_security_key()
        if response.status_code == 401 and METADATA_NO_AGENCY_TEXT not in response.text:
            # The session token expired or was never issued: get one and try once more.
            await self._refresh_session_token()
            response = await self._get_security_key()
        if response.status_code == 401 and METADATA_NO_AGENCY_TEXT in response.text:
            raise CredentialsError(
                "the ECS metadata service has no temporary credentials for this node: no agency "
                "is attached to the node (ECS 'Cloud Service Agency'); attach one with CSMS read "
                "permission, or configure AK/SK credentials instead"
            )
        if response.status_code != 200:
            raise CredentialsError(
                f"the ECS metadata service at {self._base_url} answered HTTP "
                f"{response.status_code} for {METADATA_SECURITY_KEY_PATH}"
            )
        credentials = self._parse(response)
        project_id = self._project_id or await self._lookup_project_id()
        return credentials.with_project_id(project_id)

    def _parse(self, response: httpx.Response) -> Credentials:
        try:
            document = json.loads(response.text)
            body = document.get("credential") or document.get("credentials")
            ak, sk = body["access"], body["secret"]
            token = body.get("securitytoken") or body.get("security_token")
            expires_at = _parse_expiry(body.get("expires_at"))
            if not all(isinstance(v, str) and v for v in (ak, sk, token)):
                raise ValueError("access, secret and securitytoken must be non-empty strings")
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            # Say what is wrong with the shape, never echo the body: it holds the keys.
            raise CredentialsError(
                f"the ECS metadata service at {self._base_url} returned an unusable credential "
                f"document ({type(exc).__name__}: {_shape_error(exc)})"
            ) from None
        return Credentials(
            ak=ak, sk=sk, security_token=token, expires_at=expires_at, source="ECS metadata"
        )

    async def _lookup_project_id(self) -> str | None:
        if not self._discover_project_id:
            return None
        headers = {METADATA_TOKEN_HEADER: self._session_token} if self._session_token else {}
        try:
            response = await self._http.get(METADATA_INSTANCE_PATH, headers=headers)
            if response.status_code != 200:
                return None
            project_id = json.loads(response.text).get("project_id")
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return project_id if isinstance(project_id, str) and project_id else None


def _shape_error(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    if isinstance(exc, json.JSONDecodeError):
        return "not JSON"
    if isinstance(exc, ValueError):
        return str(exc)
    return "unexpected structure"


class CredentialsChain(CredentialsProvider):
    """Try each provider in order; the first that is configured wins and is remembered until
    it stops being available. A configured-but-broken source is an error, not a skip, so a
    typo in one place never silently falls through to other credentials."""

    name = "chain"

    def __init__(self, providers: Sequence[CredentialsProvider]) -> None:
        if not providers:
            raise ValueError("a credentials chain needs at least one provider")
        self._providers = list(providers)
        self._chosen: CredentialsProvider | None = None

    @property
    def chosen(self) -> CredentialsProvider | None:
        return self._chosen

    async def get(self) -> Credentials:
        if self._chosen is not None:
            try:
                return await self._chosen.get()
            except CredentialsUnavailable:
                self._chosen = None
        reasons: list[str] = []
        for provider in self._providers:
            try:
                credentials = await provider.get()
            except CredentialsUnavailable as exc:
                reasons.append(str(exc))
                continue
            self._chosen = provider
            log.info("using CSMS credentials from %s (%s)", provider.name, credentials.ak)
            return credentials
        raise CredentialsUnavailable("no CSMS credentials found: " + "; ".join(reasons))

    async def aclose(self) -> None:
        for provider in self._providers:
            await provider.aclose()


def default_chain(
    *,
    credentials_dir: str | os.PathLike[str] | None = None,
    metadata_url: str | None = DEFAULT_METADATA_URL,
    project_id: str | None = None,
) -> CredentialsChain:
    """Environment, then the files directory (if given), then the ECS metadata service (unless
    `metadata_url` is None)."""
    providers: list[CredentialsProvider] = [EnvironmentCredentialsProvider()]
    if credentials_dir is not None:
        providers.append(FileCredentialsProvider(credentials_dir))
    if metadata_url is not None:
        providers.append(MetadataCredentialsProvider(base_url=metadata_url, project_id=project_id))
    return CredentialsChain(providers)
