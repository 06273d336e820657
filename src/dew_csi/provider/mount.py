"""What the provider does for one Mount request: parse, authorise, fetch, render.

The steps, in order, and all or nothing:
1. parse the request the driver sent (attributes JSON, per-volume secrets, default permission);
2. parse and validate `parameters.objects` (spc.py, the same rules the webhook applies), in a
   worker thread and once per text (objects.py);
3. authorise: every objectName must be listed in the pod ServiceAccount's `cce.io/dew-resource`
   annotation. This runs on every mount and rotation, before any cache is consulted;
4. read each secret from CSMS through the cache (pinned versions from memory, `latest` coalesced);
5. render the files (whole secret, jmesPath extractions) and one object version per file.

Errors are `MountError`s with a status a gRPC servicer can return and a message a user can act on.
Messages name secrets, versions, keys and ServiceAccounts, never a secret value.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

import jmespath
import jmespath.exceptions

from dew_csi import spc
from dew_csi.csms import (
    AuthenticationFailed,
    Credentials,
    CredentialsError,
    CsmsClient,
    CsmsError,
    CsmsUnavailable,
    InvalidRequest,
    SecretNotFound,
    SecretVersion,
    Throttled,
    VersionNotFound,
)
from dew_csi.kube import KubeError
from dew_csi.logs import fields
from dew_csi.provider.cache import CacheKey, SecretCache
from dew_csi.provider.objects import ObjectsParser
from dew_csi.volume_context import (
    OBJECTS,
    POD_NAME,
    POD_NAMESPACE,
    SERVICE_ACCOUNT_NAME,
)
from dew_csi.volume_context import SECRET_PROVIDER_CLASS as SPC_NAME

log = logging.getLogger(__name__)

WHITELIST_ANNOTATION: Final = "cce.io/dew-resource"
MAX_MODE: Final = 0o777


class Status(Enum):
    """The outcome classes a Mount can fail with; the servicer maps them onto gRPC codes."""

    INVALID_ARGUMENT = "InvalidArgument"
    PERMISSION_DENIED = "PermissionDenied"
    UNAUTHENTICATED = "Unauthenticated"
    NOT_FOUND = "NotFound"
    FAILED_PRECONDITION = "FailedPrecondition"
    UNAVAILABLE = "Unavailable"


class MountError(Exception):
    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class MountInput:
    """A Mount request, parsed."""

    attributes: Mapping[str, str]
    node_publish_secrets: Mapping[str, str] | None
    default_mode: int
    target_path: str
    current_versions: Mapping[str, str] = field(default_factory=dict)

    @property
    def spc_name(self) -> str:
        return self.attributes.get(SPC_NAME, "")

    @property
    def pod(self) -> str:
        return f"{self.attributes.get(POD_NAMESPACE, '')}/{self.attributes.get(POD_NAME, '')}"


def parse_request(
    attributes: str,
    secrets: str,
    permission: str,
    target_path: str,
    current_versions: Sequence[tuple[str, str]] = (),
) -> MountInput:
    """Parse the MountRequest fields as the upstream driver fills them."""
    parsed_attributes = _string_map(attributes, "attributes")
    if parsed_attributes is None:
        raise MountError(Status.INVALID_ARGUMENT, "the mount request has no attributes")
    parsed_secrets = _string_map(secrets or "null", "secrets")  # Go's nil map arrives as "null"
    try:
        mode = int(json.loads(permission)) if permission else 0o644
    except (ValueError, TypeError):
        raise MountError(
            Status.INVALID_ARGUMENT,
            f"the mount request's permission {permission[:16]!r} is not a decimal file mode",
        ) from None
    if not 0 <= mode <= MAX_MODE:
        raise MountError(
            Status.INVALID_ARGUMENT, f"the mount request's permission {mode} is not within 0..511"
        )
    return MountInput(
        attributes=parsed_attributes,
        node_publish_secrets=parsed_secrets,
        default_mode=mode,
        target_path=target_path,
        current_versions=dict(current_versions),
    )


def _string_map(text: str, what: str) -> dict[str, str] | None:
    try:
        value = json.loads(text)
    except ValueError:
        raise MountError(
            Status.INVALID_ARGUMENT, f"the mount request's {what} are not valid JSON"
        ) from None
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise MountError(
            Status.INVALID_ARGUMENT,
            f"the mount request's {what} must be a JSON object of strings",
        )
    return value


# --------------------------------------------------------------------------- authorisation


def allowed_secrets(
    service_account: Mapping[str, Any] | None, namespace: str, name: str
) -> set[str]:
    """The secret names the ServiceAccount's whitelist annotation allows."""
    where = f'ServiceAccount "{namespace}/{name}"'
    if service_account is None:
        raise MountError(
            Status.PERMISSION_DENIED,
            f"{where} does not exist; the pod's ServiceAccount must exist and list the secrets it "
            f"may mount in the annotation {WHITELIST_ANNOTATION}",
        )
    annotations = service_account.get("metadata", {}).get("annotations") or {}
    raw = annotations.get(WHITELIST_ANNOTATION)
    example = f"""{WHITELIST_ANNOTATION}: '["secret_1","secret_2"]'"""
    if raw is None:
        raise MountError(
            Status.PERMISSION_DENIED,
            f"{where} has no annotation {WHITELIST_ANNOTATION}; add the names of the CSMS "
            f"secrets its pods may mount, for example {example}",
        )
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise MountError(
            Status.PERMISSION_DENIED,
            f"{where} has a malformed annotation {WHITELIST_ANNOTATION}: it must be a JSON "
            f"array of secret names, for example {example}",
        )
    return set(names)


def authorise(
    objects: Sequence[spc.SecretObject],
    service_account: Mapping[str, Any] | None,
    namespace: str,
    name: str,
) -> None:
    allowed = allowed_secrets(service_account, namespace, name)
    for obj in objects:
        if obj.object_name not in allowed:
            raise MountError(
                Status.PERMISSION_DENIED,
                f'secret "{obj.object_name}" is not allowed for ServiceAccount '
                f'"{namespace}/{name}": add it to the annotation {WHITELIST_ANNOTATION} '
                f"(it lists {json.dumps(sorted(allowed))})",
            )


# --------------------------------------------------------------------------- rendering


@dataclass(frozen=True)
class RenderedFile:
    path: str
    mode: int
    contents: bytes = field(repr=False)


@dataclass(frozen=True)
class MountResult:
    files: tuple[RenderedFile, ...]
    versions: tuple[tuple[str, str], ...]
    """(file name, CSMS version id) for every file."""


def render_object(
    obj: spc.SecretObject, version: SecretVersion, default_mode: int
) -> list[RenderedFile]:
    """The files of one object: the whole secret under its file name, then each jmesPath entry."""
    mode = obj.file_permission if obj.file_permission is not None else default_mode
    value = version.value
    files = [RenderedFile(obj.file_name, mode, value)]
    if obj.jmes_path:
        document = _json_object(obj, version, value)
        for entry in obj.jmes_path:
            extracted = _extract(obj, version, document, entry.path)
            files.append(RenderedFile(entry.object_alias, mode, extracted))
    return files


def _json_object(obj: spc.SecretObject, version: SecretVersion, value: bytes) -> dict[str, Any]:
    try:
        document = json.loads(value)
    except ValueError:
        document = None
    if not isinstance(document, dict):
        raise MountError(
            Status.INVALID_ARGUMENT,
            f'secret "{obj.object_name}" version {version.version_id} is not a JSON object, so '
            f"its jmesPath entries cannot be extracted; store the secret as JSON "
            f'(for example {{"key1": "..."}}) or remove jmesPath',
        )
    return document


def _extract(
    obj: spc.SecretObject, version: SecretVersion, document: dict[str, Any], path: str
) -> bytes:
    """A literal top-level key first (any characters), else a JMESPath expression."""
    if path in document:
        found = document[path]
    else:
        try:
            found = jmespath.search(path, document)
        except jmespath.exceptions.JMESPathError:
            found = None
    if found is None:
        raise MountError(
            Status.NOT_FOUND,
            f'jmesPath "{path}" matches nothing in secret "{obj.object_name}" version '
            f"{version.version_id}: it is neither a top-level key of the secret's JSON nor a "
            f"JMESPath expression that finds a value",
        )
    if isinstance(found, str):
        return found.encode("utf-8")
    return json.dumps(found, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


# --------------------------------------------------------------------------- the mount

ServiceAccountLookup = Callable[[str, str], Awaitable[Mapping[str, Any] | None]]


@dataclass(frozen=True)
class CsmsAccess:
    """A client to read with, the credentials to read with (None: the client's own), and what
    identifies them (for cache keys)."""

    client: CsmsClient
    identity: str
    project_id: str
    credentials: Credentials | None = None


ClientFactory = Callable[[Mapping[str, str] | None], Awaitable[CsmsAccess]]
"""Given the volume's nodePublishSecretRef data (or None), the CSMS access to use."""


class Mounter:
    def __init__(
        self,
        *,
        service_account: ServiceAccountLookup,
        csms_access: ClientFactory,
        cache: SecretCache[SecretVersion],
        objects: ObjectsParser,
        on_mount: Callable[[str, float], None] | None = None,
    ) -> None:
        self._service_account = service_account
        self._csms_access = csms_access
        self._cache = cache
        self._objects_parser = objects
        self._on_mount = on_mount

    async def mount(self, request: MountInput) -> MountResult:
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await self._mount(request)
            outcome = "success"
            return result
        except MountError as error:
            outcome = error.status.value
            raise
        finally:
            if self._on_mount is not None:
                self._on_mount(outcome, time.perf_counter() - started)

    async def _mount(self, request: MountInput) -> MountResult:
        namespace = _required(request, POD_NAMESPACE)
        account = _required(request, SERVICE_ACCOUNT_NAME)
        log.info(
            "Servicing mount request",
            extra=fields(
                Pod=request.attributes.get(POD_NAME, ""),
                Namespace=namespace,
                ServiceAccount=account,
            ),
        )
        objects = await self._objects(request)
        try:
            service_account = await self._service_account(namespace, account)
        except KubeError as error:
            raise MountError(
                Status.UNAVAILABLE,
                f'cannot read ServiceAccount "{namespace}/{account}" to check its '
                f"{WHITELIST_ANNOTATION} whitelist: {error.message}",
            ) from None
        authorise(objects, service_account, namespace, account)
        try:
            access = await self._csms_access(request.node_publish_secrets)
        except CredentialsError as error:
            status = (
                Status.INVALID_ARGUMENT
                if request.node_publish_secrets is not None
                else Status.FAILED_PRECONDITION
            )
            raise MountError(status, f"CSMS credentials: {error.message}") from None

        outcomes = await asyncio.gather(
            *(self._read(access, obj) for obj in objects), return_exceptions=True
        )
        files: list[RenderedFile] = []
        versions: list[tuple[str, str]] = []
        for obj, outcome in zip(objects, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                raise outcome  # the first failing object, in the SPC's order: all or nothing
            for rendered in render_object(obj, outcome, request.default_mode):
                files.append(rendered)
                versions.append((rendered.path, outcome.version_id))
        log.info("Write secret file finished", extra=fields(files=len(files)))
        return MountResult(tuple(files), tuple(versions))

    async def _objects(self, request: MountInput) -> tuple[spc.SecretObject, ...]:
        spc_name = request.spc_name or "(unnamed)"
        objects_yaml = request.attributes.get(OBJECTS)
        if objects_yaml is None:
            raise MountError(
                Status.INVALID_ARGUMENT,
                f'SecretProviderClass "{spc_name}" has no parameters.objects: list the CSMS '
                f"secrets to mount there",
            )
        try:
            return await self._objects_parser.parse(spc_name, objects_yaml)
        except spc.SpcValidationError as error:
            raise MountError(Status.INVALID_ARGUMENT, str(error)) from None

    async def _read(self, access: CsmsAccess, obj: spc.SecretObject) -> SecretVersion:
        key = CacheKey(
            access.identity,
            access.client.endpoint,
            access.project_id,
            obj.object_name,
            obj.object_version,
        )
        try:
            lookup = await self._cache.get(
                key,
                lambda: access.client.get_secret_version(
                    obj.object_name, obj.object_version, credentials=access.credentials
                ),
            )
        except CsmsError as error:
            log.warning(
                "Get secret failed",
                # The request id (for Huawei Cloud support) is here, not in the error message.
                extra=fields(
                    name=obj.object_name,
                    version=obj.object_version,
                    error=error.message,
                    **({"request_id": error.request_id} if error.request_id else {}),
                ),
            )
            raise mount_error_from_csms(obj, error) from None
        version = lookup.value
        if lookup.from_cache and not obj.is_latest:
            log.info(
                "object [%s]'s version [%s] doesn't change, read from local",
                obj.object_name,
                version.version_id,
            )
        else:
            log.info(
                "Get secret successfully",
                extra=fields(name=obj.object_name, version=version.version_id),
            )
        return version


def _required(request: MountInput, key: str) -> str:
    value = request.attributes.get(key)
    if not value:
        raise MountError(
            Status.INVALID_ARGUMENT,
            f"the mount request lacks {key}: the CSIDriver object must set podInfoOnMount: true",
        )
    return value


def mount_error_from_csms(obj: spc.SecretObject, error: CsmsError) -> MountError:
    """The MountError for a failed CSMS read; `dew-csi check` uses it too, so both say the same."""
    subject = f'secret "{obj.object_name}" version {obj.object_version}'
    text = error.message  # no request id: Mounter._read logs it
    if isinstance(error, SecretNotFound):
        return MountError(
            Status.NOT_FOUND, f'secret "{obj.object_name}" does not exist in CSMS: {text}'
        )
    if isinstance(error, VersionNotFound):
        return MountError(Status.NOT_FOUND, f"{subject} does not exist in CSMS: {text}")
    if isinstance(error, AuthenticationFailed):
        return MountError(Status.UNAUTHENTICATED, f"CSMS refused the credentials: {text}")
    if isinstance(error, CredentialsError):
        return MountError(Status.FAILED_PRECONDITION, f"CSMS credentials: {text}")
    if isinstance(error, InvalidRequest):
        return MountError(Status.INVALID_ARGUMENT, f"CSMS refused reading {subject}: {text}")
    if isinstance(error, Throttled | CsmsUnavailable):
        return MountError(Status.UNAVAILABLE, f"CSMS is unavailable reading {subject}: {text}")
    return MountError(Status.UNAVAILABLE, f"reading {subject} from CSMS failed: {text}")
