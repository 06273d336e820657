"""The only module that talks to the Kubernetes API.

Objects cross this boundary as plain JSON documents (`KubeObject`); errors as the typed exceptions
below. Nothing outside this module imports lightkube or sees an HTTP exception, so the rest of the
code reads like the Kubernetes API itself: resources, names, namespaces, patches.

`WatchCache` is a small informer: list, then watch from the list's resourceVersion; resume from the
last seen resourceVersion after a disconnect; relist (and synthesise the DELETED events a gap hid)
when the server answers 410 Gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Final, cast

import httpx2
import yaml
from lightkube import ALL_NS, ApiError, AsyncClient, ConfigError, KubeConfig
from lightkube.config.kubeconfig import SingleConfig
from lightkube.config.models import Cluster, User
from lightkube.generic_resource import create_global_resource, create_namespaced_resource
from lightkube.types import CascadeType, OnErrorAction, OnErrorResult, PatchType

log = logging.getLogger(__name__)


KubeObject = dict[str, Any]
"""A Kubernetes object as its JSON document."""

ALL_NAMESPACES: Final = ALL_NS

SPC_GROUP: Final = "secrets-store.csi.x-k8s.io"
NODE_NAME_LABEL: Final = "internal.secrets-store.csi.k8s.io/node-name"
MANAGED_SECRET_LABEL: Final = "secrets-store.csi.k8s.io/managed"
FIELD_MANAGER: Final = "dew-csi"


# --------------------------------------------------------------------------- resources


@dataclass(frozen=True)
class Resource:
    """One kind of object the project reads or writes."""

    group: str
    version: str
    kind: str
    plural: str
    namespaced: bool = True

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def describe(self, name: str, namespace: str | None = None) -> str:
        """`kind namespace/name`, for messages."""
        return f"{self.kind} {namespace}/{name}" if namespace else f"{self.kind} {name}"


NAMESPACE: Final = Resource("", "v1", "Namespace", "namespaces", namespaced=False)
NODE: Final = Resource("", "v1", "Node", "nodes", namespaced=False)
SERVICE_ACCOUNT: Final = Resource("", "v1", "ServiceAccount", "serviceaccounts")
SECRET: Final = Resource("", "v1", "Secret", "secrets")
CONFIG_MAP: Final = Resource("", "v1", "ConfigMap", "configmaps")
POD: Final = Resource("", "v1", "Pod", "pods")
EVENT: Final = Resource("", "v1", "Event", "events")
DEPLOYMENT: Final = Resource("apps", "v1", "Deployment", "deployments")
REPLICA_SET: Final = Resource("apps", "v1", "ReplicaSet", "replicasets")
CUSTOM_RESOURCE_DEFINITION: Final = Resource(
    "apiextensions.k8s.io",
    "v1",
    "CustomResourceDefinition",
    "customresourcedefinitions",
    namespaced=False,
)
VALIDATING_WEBHOOK_CONFIGURATION: Final = Resource(
    "admissionregistration.k8s.io",
    "v1",
    "ValidatingWebhookConfiguration",
    "validatingwebhookconfigurations",
    namespaced=False,
)
SECRET_PROVIDER_CLASS: Final = Resource(
    SPC_GROUP, "v1", "SecretProviderClass", "secretproviderclasses"
)
SECRET_PROVIDER_CLASS_POD_STATUS: Final = Resource(
    SPC_GROUP, "v1", "SecretProviderClassPodStatus", "secretproviderclasspodstatuses"
)

# lightkube's generic classes are made at run time; its overloads cannot type them, so they
# are `Any` at this one boundary.
_RESOURCE_CLASSES: dict[Resource, Any] = {}


def _lightkube_class(resource: Resource) -> Any:
    """The lightkube generic class for a resource (dict-backed; no generated models needed)."""
    cls = _RESOURCE_CLASSES.get(resource)
    if cls is None:
        factory = create_namespaced_resource if resource.namespaced else create_global_resource
        cls = factory(resource.group, resource.version, resource.kind, resource.plural)
        _RESOURCE_CLASSES[resource] = cls
    return cls


# --------------------------------------------------------------------------- errors


class KubeError(Exception):
    """The API server refused a request; `code` and `reason` are the Status fields."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


class NotFound(KubeError):
    pass


class AlreadyExists(KubeError):
    pass


class Conflict(KubeError):
    """A write carried a stale resourceVersion: read again and retry."""


class Gone(KubeError):
    """A watch or list asked for a resourceVersion the server no longer has (410)."""


class KubeUnavailable(KubeError):
    """The API server could not be reached or timed out."""

    def __init__(self, message: str) -> None:
        super().__init__(0, "Unavailable", message)


class KubeConfigError(Exception):
    """No usable Kubernetes client configuration: no kubeconfig and not in a pod, a kubeconfig
    that cannot be read or parsed, or one naming a context, cluster or file that does not exist.
    The message names the problem and what to do, never the kubeconfig's content (it may hold
    a token or a client key)."""


_KUBECONFIG_FIX: Final = "pass --kubeconfig FILE or set KUBECONFIG to a valid kubeconfig"
_IN_CLUSTER_FIX: Final = (
    "mount the pod's ServiceAccount token (automountServiceAccountToken must not be false), "
    "or pass --kubeconfig FILE"
)


def load_config(kubeconfig: str | Path | None = None) -> KubeConfig:
    """The kubeconfig when one is given; else the in-cluster config; else $KUBECONFIG, else
    ~/.kube/config (lightkube's order). `KubeConfigError` says what is missing and what to do."""
    if kubeconfig:
        return _config_from_file(Path(kubeconfig), "--kubeconfig")
    in_pod = bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    try:
        return KubeConfig.from_service_account()
    except (ConfigError, OSError, KeyError) as error:
        in_cluster_problem = _in_cluster_problem(error)
    from_env = os.environ.get("KUBECONFIG")
    if from_env:
        if os.pathsep in from_env:
            raise KubeConfigError(
                f"KUBECONFIG lists several files ({from_env}); dew-csi reads one: pass "
                f"--kubeconfig FILE or set KUBECONFIG to one file"
            )
        return _config_from_file(Path(from_env), "KUBECONFIG")
    try:
        default: Path | None = Path("~/.kube/config").expanduser()
    except RuntimeError:  # no home directory to expand ~ with
        default = None
    if default is not None and (default.exists() or default.is_symlink()):
        return _config_from_file(default, "the default kubeconfig")
    if in_pod:
        raise KubeConfigError(
            f"running in a pod (KUBERNETES_SERVICE_HOST is set) but its in-cluster "
            f"configuration cannot be used: {in_cluster_problem}; {_IN_CLUSTER_FIX}"
        )
    where = str(default) if default is not None else "~/.kube/config"
    raise KubeConfigError(
        f"no Kubernetes configuration: not running in a pod (KUBERNETES_SERVICE_HOST is not "
        f"set), KUBECONFIG is not set and {where} does not exist; pass --kubeconfig FILE or set "
        f"KUBECONFIG"
    )


def _in_cluster_problem(error: BaseException) -> str:
    cause = error.__cause__ if isinstance(error, ConfigError) else error
    if isinstance(cause, OSError) and cause.filename:
        return f"{cause.filename}: {cause.strerror or type(cause).__name__}"
    if isinstance(error, KeyError):
        return f"the environment variable {error.args[0]} is not set"
    return str(error)


def _config_from_file(path: Path, named_by: str | None = None) -> KubeConfig:
    where = f"the kubeconfig {path}" + (f" ({named_by})" if named_by else "")
    file = path.expanduser()
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise KubeConfigError(f"{where} does not exist; {_KUBECONFIG_FIX}") from None
    except IsADirectoryError:
        raise KubeConfigError(f"{where} is a directory, not a file; {_KUBECONFIG_FIX}") from None
    except PermissionError:
        raise KubeConfigError(
            f"{where} cannot be read: permission denied (this process runs as uid "
            f"{os.getuid()}); make it readable, or {_KUBECONFIG_FIX}"
        ) from None
    except UnicodeDecodeError:
        raise KubeConfigError(f"{where} is not UTF-8 text; {_KUBECONFIG_FIX}") from None
    except OSError as error:
        raise KubeConfigError(
            f"{where} cannot be read: {error.strerror or type(error).__name__}; {_KUBECONFIG_FIX}"
        ) from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise KubeConfigError(f"{where} {_yaml_problem(error)}; {_KUBECONFIG_FIX}") from None
    if not isinstance(document, dict):
        raise KubeConfigError(
            f"{where} is not a kubeconfig: expected a YAML mapping with clusters, contexts and "
            f"users; {_KUBECONFIG_FIX}"
        )
    try:
        return KubeConfig.from_dict(document, fname=file)
    except KeyError as error:
        problem = f"has no {error.args[0]!r}"
    except (TypeError, AttributeError, ValueError) as error:
        problem = f"has malformed clusters, contexts or users ({type(error).__name__})"
    raise KubeConfigError(f"{where} is not a usable kubeconfig: it {problem}; {_KUBECONFIG_FIX}")


def _yaml_problem(error: yaml.YAMLError) -> str:
    """A YAML error's own text quotes the file, which may hold a token or a client key: keep
    only its problem and position."""
    if isinstance(error, yaml.MarkedYAMLError):
        mark = error.problem_mark or error.context_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        return f"is not valid YAML: {error.problem or error.context or 'syntax error'}{at}"
    return "is not valid YAML"


def _unusable_config(config: KubeConfig, error: Exception) -> str:
    """Why lightkube cannot build a client from a loaded configuration."""
    if config.fname is not None:
        where, fix = f"the kubeconfig {config.fname}", _KUBECONFIG_FIX
    else:
        where, fix = "the in-cluster configuration", _IN_CLUSTER_FIX
    if isinstance(error, ConfigError):
        problem = str(error)
    elif isinstance(error, KeyError):
        problem = f"its context names {error.args[0]!r}, which it does not define"
    elif isinstance(error, AssertionError):  # lightkube asserts a user: "Missing user"
        problem = (
            f"{str(error) or 'incomplete'} (its context names no user; without authentication "
            "give it a user entry with `user: {}`)"
        )
    elif isinstance(error, ssl.SSLError):
        problem = f"its certificate data cannot be used ({error.reason or 'SSL error'})"
    elif isinstance(error, OSError):
        # ssl does not say which file it could not load: name the ones the context points to.
        what = error.filename or _files_named(config) or "a certificate or key file it names"
        problem = f"cannot read {what}: {error.strerror or type(error).__name__}"
    else:
        problem = f"it is malformed ({type(error).__name__})"
    return f"{where} cannot be used: {problem}; {fix}"


def _files_named(config: KubeConfig) -> str:
    """The certificate and key files the current context names that are not readable files."""
    try:
        single = config.get()
        if single is None:
            return ""
        user = single.user
        named = [single.cluster.certificate_auth, user.client_cert if user else None]
        named.append(user.client_key if user else None)
        paths = [Path(single.abs_file(name)) for name in named if name]
    except (ConfigError, KeyError):
        return ""
    return ", ".join(str(path) for path in paths if not os.access(path, os.R_OK))


def _translate(error: ApiError) -> KubeError:
    status = error.status
    code = int(status.code or 0)
    reason = str(status.reason or "")
    message = str(status.message or error)
    if code == 404:
        return NotFound(code, reason, message)
    if code == 409 and reason == "AlreadyExists":
        return AlreadyExists(code, reason, message)
    if code == 409:
        return Conflict(code, reason, message)
    if code == 410:
        return Gone(code, reason, message)
    return KubeError(code, reason, message)


@contextlib.contextmanager
def _api_errors() -> Iterator[None]:
    """Turn lightkube and transport exceptions into this module's errors."""
    try:
        yield
    except ApiError as error:
        raise _translate(error) from None
    except (httpx2.TransportError, OSError) as error:
        raise KubeUnavailable(f"Kubernetes API unreachable: {error}") from None


def _to_json(obj: Any) -> KubeObject:
    """lightkube generic objects are dicts already; normalise to plain dicts."""
    if hasattr(obj, "to_dict"):
        return cast(KubeObject, obj.to_dict())
    return dict(obj)


# --------------------------------------------------------------------------- client


class PatchKind(Enum):
    MERGE = PatchType.MERGE
    JSON = PatchType.JSON
    STRATEGIC = PatchType.STRATEGIC


class Kube:
    """Async access to the Kubernetes API with plain JSON objects."""

    def __init__(self, config: KubeConfig, *, timeout: float = 10.0) -> None:
        try:
            self._client = AsyncClient(
                config,
                timeout=httpx2.Timeout(timeout),
                field_manager=FIELD_MANAGER,
                trust_env=False,
            )
        except (
            ConfigError,
            KeyError,
            TypeError,
            AttributeError,
            ValueError,
            OSError,
            AssertionError,
        ) as error:
            raise KubeConfigError(_unusable_config(config, error)) from None
        self.events = EventRecorder(self)
        """Records Events through this client, aggregating repeats (see `EventRecorder`)."""

    @classmethod
    def from_kubeconfig(cls, path: str | Path, **kwargs: Any) -> Kube:
        """`KubeConfigError` when the file cannot be read, parsed or used."""
        return cls(_config_from_file(Path(path)), **kwargs)

    @classmethod
    def in_cluster(cls, service_account_dir: str | Path | None = None, **kwargs: Any) -> Kube:
        if service_account_dir is None:
            return cls(KubeConfig.from_service_account(), **kwargs)
        return cls(KubeConfig.from_service_account(service_account_dir), **kwargs)

    @classmethod
    def from_url(cls, url: str, *, token: str | None = None, **kwargs: Any) -> Kube:
        config = KubeConfig.from_one(
            cluster=Cluster(server=url), user=User(token=token), namespace="default"
        )
        return cls(config, **kwargs)

    @classmethod
    def from_options(cls, kubeconfig: str | Path | None = None, **kwargs: Any) -> Kube:
        """The kubeconfig when one is given, else in-cluster config, else $KUBECONFIG/~/.kube;
        `KubeConfigError` saying what is missing and what to do (`load_config`)."""
        return cls(load_config(kubeconfig), **kwargs)

    @property
    def config(self) -> SingleConfig:
        return self._client.config

    async def close(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> Kube:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- reads

    async def get(self, resource: Resource, name: str, namespace: str | None = None) -> KubeObject:
        """The object; `NotFound` when there is none."""
        with _api_errors():
            obj = await self._client.get(
                _lightkube_class(resource), name, namespace=self._ns(resource, namespace)
            )
        return _to_json(obj)

    async def find(
        self, resource: Resource, name: str, namespace: str | None = None
    ) -> KubeObject | None:
        """The object, or None when there is none."""
        try:
            return await self.get(resource, name, namespace)
        except NotFound:
            return None

    async def list_objects(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        labels: Mapping[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
    ) -> tuple[list[KubeObject], str]:
        """All matching objects and the list's resourceVersion (to watch from)."""
        with _api_errors():
            listing = self._client.list(
                _lightkube_class(resource),
                namespace=self._ns(resource, namespace),
                labels=dict(labels) if labels else None,
                fields=dict(fields) if fields else None,
            )
            items = [_to_json(item) async for item in listing]
            return items, listing.resourceVersion

    # -- writes

    async def create(self, resource: Resource, obj: Mapping[str, Any]) -> KubeObject:
        body = self._with_type(resource, obj)
        with _api_errors():
            created = await self._client.create(_lightkube_class(resource).from_dict(body))
        return _to_json(created)

    async def replace(self, resource: Resource, obj: Mapping[str, Any]) -> KubeObject:
        """PUT the whole object; `Conflict` when its resourceVersion is stale."""
        body = self._with_type(resource, obj)
        with _api_errors():
            replaced = await self._client.replace(_lightkube_class(resource).from_dict(body))
        return _to_json(replaced)

    async def replace_status(self, resource: Resource, obj: Mapping[str, Any]) -> KubeObject:
        """Write the status subresource (pods, deployments) as a merge patch of `status`."""
        body = self._with_type(resource, obj)
        metadata = body["metadata"]
        with _api_errors():
            replaced = await self._client.patch(
                _lightkube_class(resource).Status,
                metadata["name"],
                {"status": body.get("status", {})},
                namespace=self._ns(resource, metadata.get("namespace")),
                patch_type=PatchType.MERGE,
            )
        return _to_json(replaced)

    async def patch(
        self,
        resource: Resource,
        name: str,
        patch: Mapping[str, Any] | list[Any],
        namespace: str | None = None,
        *,
        kind: PatchKind = PatchKind.MERGE,
    ) -> KubeObject:
        with _api_errors():
            patched = await self._client.patch(
                _lightkube_class(resource),
                name,
                patch if isinstance(patch, list) else dict(patch),
                namespace=self._ns(resource, namespace),
                patch_type=kind.value,
            )
        return _to_json(patched)

    async def apply(
        self, resource: Resource, obj: Mapping[str, Any], *, force: bool = True
    ) -> KubeObject:
        """Server-side apply: create the object or merge these fields into it."""
        body = self._with_type(resource, obj)
        metadata = body["metadata"]
        with _api_errors():
            applied = await self._client.apply(
                _lightkube_class(resource).from_dict(body),
                name=metadata["name"],
                namespace=self._ns(resource, metadata.get("namespace")),
                field_manager=FIELD_MANAGER,
                force=force,
            )
        return _to_json(applied)

    async def delete(
        self,
        resource: Resource,
        name: str,
        namespace: str | None = None,
        *,
        grace_period: int | None = None,
        orphan: bool = False,
    ) -> bool:
        """Delete; True when something was deleted, False when it was already gone."""
        cascade = CascadeType.ORPHAN if orphan else CascadeType.BACKGROUND
        try:
            with _api_errors():
                await self._client.delete(
                    _lightkube_class(resource),
                    name,
                    namespace=self._ns(resource, namespace),
                    grace_period=grace_period,
                    cascade=cascade,
                )
        except NotFound:
            return False
        return True

    async def record_event(
        self,
        involved: Mapping[str, Any],
        *,
        reason: str,
        message: str,
        warning: bool = False,
        component: str = "csi-secrets-store",
        host: str | None = None,
    ) -> KubeObject:
        """Record a core/v1 Event about `involved` (which must carry kind/apiVersion/metadata).
        A repeat of an Event this client recorded raises its count instead of making a new one,
        as client-go's recorder does (`EventRecorder.record`); the Event as written is returned."""
        return await self.events.record(
            involved,
            reason=reason,
            message=message,
            warning=warning,
            component=component,
            host=host,
        )

    # -- watch

    async def watch(
        self,
        resource: Resource,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
        labels: Mapping[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
        server_timeout: int | None = None,
        on_error: Callable[[Exception, int], OnErrorResult] | None = None,
    ) -> AsyncIterator[tuple[str, KubeObject]]:
        """Raw watch events `(type, object)`; lightkube reconnects from the last RV it saw."""
        stream = self._client.watch(
            _lightkube_class(resource),
            namespace=self._ns(resource, namespace),
            labels=dict(labels) if labels else None,
            fields=dict(fields) if fields else None,
            server_timeout=server_timeout,
            resource_version=resource_version,
            on_error=on_error or _raise_errors,
        )
        with _api_errors():
            async for event_type, obj in stream:
                yield event_type, _to_json(obj)

    # -- helpers

    def _ns(self, resource: Resource, namespace: str | None) -> str | None:
        if not resource.namespaced:
            return None
        return namespace or self._client.namespace

    def _with_type(self, resource: Resource, obj: Mapping[str, Any]) -> KubeObject:
        """A copy of `obj` with apiVersion, kind and (when namespaced) namespace filled in."""
        body = dict(obj)
        body.setdefault("apiVersion", resource.api_version)
        body.setdefault("kind", resource.kind)
        if "metadata" not in body:
            raise ValueError(f"a {resource.kind} needs metadata")
        if resource.namespaced:
            metadata = dict(body["metadata"])
            metadata["namespace"] = self._ns(resource, metadata.get("namespace"))
            body["metadata"] = metadata
        return body


def _raise_errors(error: Exception, count: int) -> OnErrorResult:
    return OnErrorResult(OnErrorAction.RAISE)


def involved_object(resource: Resource, metadata: Mapping[str, Any]) -> KubeObject:
    """What an Event points at: kind, apiVersion and the identifying metadata of an object.
    Kind and apiVersion come from `resource`, as built-in list items carry neither."""
    keys = ("name", "namespace", "uid", "resourceVersion")
    return {
        "apiVersion": resource.api_version,
        "kind": resource.kind,
        "metadata": {k: metadata[k] for k in keys if metadata.get(k) is not None},
    }


def object_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name) of an object; namespace is "" for cluster-scoped objects."""
    metadata = obj.get("metadata", {})
    return str(metadata.get("namespace") or ""), str(metadata["name"])


# --------------------------------------------------------------------------- watch cache


class EventType(StrEnum):
    ADDED = "ADDED"
    MODIFIED = "MODIFIED"
    DELETED = "DELETED"


@dataclass(frozen=True)
class CacheEvent:
    """A change seen by a WatchCache; `old` is the previous state (None when ADDED)."""

    type: EventType
    obj: KubeObject
    old: KubeObject | None = None


Handler = Callable[[CacheEvent], Awaitable[None]]


@dataclass
class Backoff:
    """Exponential backoff with full jitter for reconnects."""

    initial: float = 0.1
    maximum: float = 5.0
    attempts: int = field(default=0, init=False)

    def next_delay(self) -> float:
        ceiling = min(self.maximum, self.initial * (2**self.attempts))
        self.attempts += 1
        return random.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempts = 0


class WatchCache:
    """A list-then-watch cache of one resource, kept current in the background.

    Handlers run in event order, one at a time, after the cache has been updated, so a handler
    that reads the cache sees the state the event describes. A slow handler delays later events;
    handlers that do real work should hand it to a task of their own.
    """

    def __init__(
        self,
        kube: Kube,
        resource: Resource,
        namespace: str | None = ALL_NAMESPACES,
        *,
        labels: Mapping[str, str] | None = None,
        fields: Mapping[str, str] | None = None,
        server_timeout: int = 300,
        backoff: Backoff | None = None,
    ) -> None:
        self._kube = kube
        self.resource = resource
        self._namespace = namespace
        self._labels = dict(labels) if labels else None
        self._fields = dict(fields) if fields else None
        self._server_timeout = server_timeout
        self._backoff = backoff or Backoff()
        self._objects: dict[tuple[str, str], KubeObject] = {}
        self._handlers: list[Handler] = []
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.resource_version: str | None = None
        self.relists = 0
        """How many times the cache listed from scratch (the first list included)."""

    # -- reads

    def get(self, name: str, namespace: str | None = None) -> KubeObject | None:
        return self._objects.get((namespace or "", name))

    def items(self) -> list[KubeObject]:
        return list(self._objects.values())

    def __len__(self) -> int:
        return len(self._objects)

    @property
    def synced(self) -> bool:
        return self._synced.is_set()

    # -- lifecycle

    def add_handler(self, handler: Handler) -> None:
        self._handlers.append(handler)

    async def start(self, *, wait: bool = True, timeout: float | None = 30.0) -> None:
        """Start watching; with `wait`, return once the first list is in the cache."""
        if self._task is None:
            self._task = asyncio.create_task(
                self._run(), name=f"watch-cache-{self.resource.plural}"
            )
        if wait:
            await self.wait_synced(timeout)

    async def wait_synced(self, timeout: float | None = 30.0) -> None:
        waiter = asyncio.ensure_future(self._synced.wait())
        assert self._task is not None, "start() first"
        done, _ = await asyncio.wait(
            {waiter, self._task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if waiter not in done:
            waiter.cancel()
            if self._task in done:
                self._task.result()  # re-raise what stopped the loop
            raise TimeoutError(f"{self.resource.kind} cache not synced after {timeout}s")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> WatchCache:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- the loop

    async def _run(self) -> None:
        need_list = True
        while True:
            try:
                if need_list:
                    await self._relist()
                    need_list = False
                await self._follow()
            except Gone:
                log.info("%s watch expired (410 Gone); listing again", self.resource.kind)
                need_list = True
            except KubeError as error:
                delay = self._backoff.next_delay()
                log.warning(
                    "%s watch interrupted (%s); retrying in %.2fs",
                    self.resource.kind,
                    error,
                    delay,
                )
                await asyncio.sleep(delay)
            except Exception:
                # Anything else (a malformed event, a client bug) must not end the cache for
                # good: its readers would silently see a frozen world. List again after a pause.
                delay = self._backoff.next_delay()
                log.exception("%s watch failed; listing again in %.2fs", self.resource.kind, delay)
                need_list = True
                await asyncio.sleep(delay)

    async def _relist(self) -> None:
        items, version = await self._kube.list_objects(
            self.resource, self._namespace, labels=self._labels, fields=self._fields
        )
        self.relists += 1
        fresh = {object_key(item): item for item in items}
        stale = self._objects
        self._objects = dict(stale)
        self.resource_version = version
        events: list[CacheEvent] = []
        for key, old in stale.items():
            if key not in fresh:
                del self._objects[key]
                events.append(CacheEvent(EventType.DELETED, old, old))
        for key, new in fresh.items():
            previous = stale.get(key)
            self._objects[key] = new
            if previous is None:
                events.append(CacheEvent(EventType.ADDED, new))
            elif _resource_version(previous) != _resource_version(new):
                events.append(CacheEvent(EventType.MODIFIED, new, previous))
        self._backoff.reset()
        self._synced.set()
        for event in events:
            await self._dispatch(event)

    async def _follow(self) -> None:
        """Watch from the cache's resourceVersion until the stream fails for good."""

        def on_error(error: Exception, count: int) -> OnErrorResult:
            # 410 goes up to _run (relist); anything else is retried here from the last RV.
            if isinstance(error, ApiError) and error.status.code == 410:
                return OnErrorResult(OnErrorAction.RAISE)
            delay = self._backoff.next_delay()
            log.warning(
                "%s watch interrupted (%s); resuming from %s in %.2fs",
                self.resource.kind,
                type(error).__name__,
                self.resource_version,
                delay,
            )
            return OnErrorResult(OnErrorAction.RETRY, delay)

        stream = self._kube.watch(
            self.resource,
            self._namespace,
            resource_version=self.resource_version,
            labels=self._labels,
            fields=self._fields,
            server_timeout=self._server_timeout,
            on_error=on_error,
        )
        async for event_type, obj in stream:
            self._backoff.reset()
            await self._apply(event_type, obj)

    async def _apply(self, event_type: str, obj: KubeObject) -> None:
        version = _resource_version(obj)
        if version:
            self.resource_version = version
        key = object_key(obj)
        previous = self._objects.get(key)
        if event_type == EventType.DELETED:
            self._objects.pop(key, None)
            await self._dispatch(CacheEvent(EventType.DELETED, obj, previous))
        elif event_type in (EventType.ADDED, EventType.MODIFIED):
            self._objects[key] = obj
            kind = EventType.ADDED if previous is None else EventType.MODIFIED
            await self._dispatch(CacheEvent(kind, obj, previous))

    async def _dispatch(self, event: CacheEvent) -> None:
        for handler in self._handlers:
            try:
                await handler(event)
            except Exception:
                # One faulty handler must not stop the cache for every other reader.
                log.exception("%s cache handler failed", self.resource.kind)


def _resource_version(obj: Mapping[str, Any]) -> str | None:
    return cast(str | None, obj.get("metadata", {}).get("resourceVersion"))


# At the end: the recorder's module uses the names above (Kube, EVENT, the errors).
from dew_csi.kube_events import EventRecorder as EventRecorder  # noqa: E402
