"""The state and rules of the Kubernetes API emulator, without any HTTP.

Everything here is synchronous and runs on the server's event loop: one write is one call, so a
watcher registered in the same call as its replay can never miss or duplicate an event. The HTTP
layer (`apiserver.py`) only parses requests, calls the `Store`, and encodes what it returns.

What is emulated, and how closely, is described on each part: resource types and discovery data
(`ResourceType`, `Registry`), selectors, the four patch formats, CRD schema validation and pruning,
garbage collection, graceful deletion, finalizers, namespaces, watch history, persistence.
"""

from __future__ import annotations

import base64
import json
import math
import random
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

Obj = dict[str, Any]
RKey = tuple[str, str]  # (group, plural)
Key = tuple[str, str]  # (namespace, name); namespace is "" for cluster-scoped objects

MAX_BODY_BYTES: Final = 3 * 1024 * 1024  # the real apiserver's request body limit
STATE_FORMAT: Final = "dew-csi-apiserver-state/1"
FIELD_VALIDATION = ("Ignore", "Warn", "Strict")
MODIFIED_MESSAGE: Final = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


class _Missing:
    def __repr__(self) -> str:
        return "<missing>"


MISSING: Final = _Missing()


# --------------------------------------------------------------------------------------------
# Small JSON helpers


def clone(value: Any) -> Any:
    """Deep copy of a JSON value (much faster than copy.deepcopy for plain dicts and lists)."""
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [clone(v) for v in value]
    return value


def json_equal(a: Any, b: Any) -> bool:
    """Equality of JSON values: unlike ==, True is not 1 and a dict never equals a list."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict):
        return (
            isinstance(b, dict)
            and a.keys() == b.keys()
            and all(json_equal(v, b[k]) for k, v in a.items())
        )
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(json_equal, a, b))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and bool(a == b)


def json_type(value: Any) -> str:
    """The JSON type name the apiserver uses in messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def go_json_type(value: Any) -> str:
    """The JSON type name Go's encoding/json uses in "cannot unmarshal" errors."""
    kind = json_type(value)
    return {"integer": "number", "boolean": "bool"}.get(kind, kind)


def timestamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: Any) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def go_value(value: Any) -> str:
    """A value as Go's %v/%q would show it in a field error."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, dict) and all(isinstance(v, str) for v in value.values()):
        inner = ", ".join(f"{json.dumps(k)}:{json.dumps(v)}" for k, v in sorted(value.items()))
        return "map[string]string{" + inner + "}"
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def as_dict(value: Any) -> Obj:
    """`value` when it is a JSON object, else an empty one (built-ins are stored without a
    schema, so nested fields may hold anything a client sent)."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def meta_of(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def labels_of(obj: Obj) -> dict[str, str]:
    labels = meta_of(obj).get("labels")
    return labels if isinstance(labels, dict) else {}


def owner_uids(obj: Obj) -> set[str]:
    refs = meta_of(obj).get("ownerReferences")
    if not isinstance(refs, list):
        return set()
    return {r["uid"] for r in refs if isinstance(r, dict) and isinstance(r.get("uid"), str)}


# --------------------------------------------------------------------------------------------
# Errors: every failure the API can report, as the Status body the real server sends


class ApiError(Exception):
    """A Kubernetes `Status` failure."""

    def __init__(self, code: int, reason: str, message: str, details: Obj | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> Obj:
        body: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
        }
        if self.details is not None:
            body["details"] = self.details
        body["code"] = self.code
        return body


_REASONS: Final = {
    "required": "FieldValueRequired",
    "invalid": "FieldValueInvalid",
    "forbidden": "FieldValueForbidden",
    "unsupported": "FieldValueNotSupported",
    "duplicate": "FieldValueDuplicate",
    "toolong": "FieldValueTooLong",
}


@dataclass
class FieldError:
    """One entry of a 422 Invalid, formatted like k8s.io/apimachinery's field.Error."""

    kind: str  # required | invalid | forbidden | unsupported | duplicate | toolong
    field: str
    detail: str = ""
    value: Any = MISSING
    supported: tuple[str, ...] = ()

    def body(self) -> str:
        value = "" if self.value is MISSING else go_value(self.value)
        if self.kind == "required":
            text = "Required value"
        elif self.kind == "forbidden":
            text = "Forbidden"
        elif self.kind == "toolong":
            text = "Too long"
        elif self.kind == "duplicate":
            text = f"Duplicate value: {value}"
        elif self.kind == "unsupported":
            text = f"Unsupported value: {value}"
            if self.supported:
                text += ": supported values: " + ", ".join(json.dumps(s) for s in self.supported)
        else:
            text = f"Invalid value: {value}"
        return f"{text}: {self.detail}" if self.detail else text

    def message(self) -> str:
        return f"{self.field}: {self.body()}" if self.field else self.body()

    def cause(self) -> Obj:
        return {"reason": _REASONS[self.kind], "message": self.body(), "field": self.field}


def resource_not_found() -> ApiError:
    return ApiError(404, "NotFound", "the server could not find the requested resource", {})


def method_not_allowed() -> ApiError:
    return ApiError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def unsupported_media_type(accepted: Iterable[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted),
    )


def gone(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def too_old(requested: int, oldest: int) -> ApiError:
    return gone(f"too old resource version: {requested} ({oldest})")


def invalid_object(kind: str, group: str, name: str, errors: list[FieldError]) -> ApiError:
    group_kind = f"{kind}.{group}" if group else kind
    messages = [e.message() for e in errors]
    text = messages[0] if len(messages) == 1 else "[" + ", ".join(messages) + "]"
    details: Obj = {"name": name}
    if group:
        details["group"] = group
    details["kind"] = kind
    details["causes"] = [e.cause() for e in errors]
    return ApiError(422, "Invalid", f'{group_kind} "{name}" is invalid: {text}', details)


# --------------------------------------------------------------------------------------------
# Name and label validation (the messages are the real ones)

_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_CONFIG_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")

SUBDOMAIN_MSG: Final = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used "
    "for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)
LABEL_MSG: Final = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and "
    "must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex "
    "used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
LABEL_VALUE_MSG: Final = (
    "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or "
    "'.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or "
    "'my_value',  or '12345', regex used for validation is "
    "'(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')"
)
QUALIFIED_NAME_MSG: Final = (
    "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and "
    "end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex "
    "used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')"
)
CONFIG_KEY_MSG: Final = (
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. "
    "'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"
)


def name_problems(name: str, rule: str) -> list[str]:
    """Why `name` is not valid under `rule` (subdomain, label or path); empty when valid."""
    if rule == "path":
        if name in (".", ".."):
            return [f"may not be '{name}'"]
        return [f"may not contain '{c}'" for c in "/%" if c in name]
    problems: list[str] = []
    limit = 63 if rule == "label" else 253
    if len(name) > limit:
        problems.append(f"must be no more than {limit} characters")
    pattern, message = (_LABEL, LABEL_MSG) if rule == "label" else (_SUBDOMAIN, SUBDOMAIN_MSG)
    if not pattern.match(name):
        problems.append(message)
    return problems


def qualified_name_problems(key: str) -> list[str]:
    prefix, slash, name = key.rpartition("/")
    problems: list[str] = []
    if slash:
        if not prefix:
            problems.append("prefix part must be non-empty")
        elif len(prefix) > 253 or not _SUBDOMAIN.match(prefix):
            problems.append("prefix part " + SUBDOMAIN_MSG)
    if not name:
        problems.append("name part must be non-empty")
    elif len(name) > 63:
        problems.append("name part must be no more than 63 characters")
    elif not _QUALIFIED_NAME.match(name):
        problems.append(QUALIFIED_NAME_MSG)
    return problems


def label_value_problems(value: str) -> list[str]:
    problems: list[str] = []
    if len(value) > 63:
        problems.append("must be no more than 63 characters")
    if not _LABEL_VALUE.match(value):
        problems.append(LABEL_VALUE_MSG)
    return problems


# --------------------------------------------------------------------------------------------
# Resource types and the registry (what discovery shows)

STANDARD_VERBS: Final = (
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
)

# Subresources: (kind, group, version, verbs) of what each one speaks.
SUBRESOURCE_KINDS: Final[dict[str, tuple[str, str, str, tuple[str, ...]]]] = {
    "status": ("", "", "", ("get", "patch", "update")),
    "scale": ("Scale", "autoscaling", "v1", ("get", "patch", "update")),
    "binding": ("Binding", "", "v1", ("create",)),
    "token": ("TokenRequest", "authentication.k8s.io", "v1", ("create",)),
    "log": ("", "", "", ("get",)),
}

_KUBE_VERSION = re.compile(r"^v(\d+)(?:(alpha|beta)(\d+))?$")


def version_priority(version: str) -> tuple[int, int, int, int, str]:
    """Sort key giving Kubernetes' version order: v2 > v1 > v1beta2 > v1beta1 > v1alpha1 > other."""
    match = _KUBE_VERSION.match(version)
    if not match:
        return (1, 0, 0, 0, version)
    stage = {None: 0, "beta": 1, "alpha": 2}[match.group(2)]
    return (0, stage, -int(match.group(1)), -int(match.group(3) or 0), version)


@dataclass
class ResourceType:
    """One resource as the apiserver serves it: URL names, scope, behaviour switches."""

    group: str
    plural: str
    kind: str
    namespaced: bool
    versions: tuple[str, ...]  # served, preferred first
    storage_version: str = ""
    singular: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    builtin: bool = True
    has_generation: bool = False
    returns_deleted_object: bool = True
    unconditional_update: bool = True
    name_rule: str = "subdomain"
    field_selectors: frozenset[str] = frozenset()
    top_level: frozenset[str] | None = None  # known top-level fields of a built-in
    schemas: dict[str, Obj] = field(default_factory=dict)  # CRs: version -> openAPIV3Schema
    columns: dict[str, list[Obj]] = field(default_factory=dict)  # CRs: additionalPrinterColumns
    deprecations: dict[str, str] = field(default_factory=dict)  # version -> warning
    list_kind_name: str = ""

    def __post_init__(self) -> None:
        self.singular = self.singular or self.kind.lower()
        self.storage_version = self.storage_version or self.versions[0]
        self.list_kind_name = self.list_kind_name or self.kind + "List"

    @property
    def key(self) -> RKey:
        return (self.group, self.plural)

    @property
    def list_kind(self) -> str:
        return self.list_kind_name

    @property
    def group_resource(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def api_version(self, version: str | None = None) -> str:
        version = version or self.storage_version
        return f"{self.group}/{version}" if self.group else version

    def field_names(self) -> frozenset[str]:
        return self.field_selectors | {"metadata.name", "metadata.namespace"}


CORE_META: Final = frozenset({"apiVersion", "kind", "metadata"})


def _top(*names: str) -> frozenset[str]:
    return CORE_META | frozenset(names)


def builtin_types() -> list[ResourceType]:
    """The built-in resources. Behaviour flags follow the real registry for each of them."""
    wl = ("spec", "status")
    return [
        ResourceType(
            "",
            "namespaces",
            "Namespace",
            False,
            ("v1",),
            short_names=("ns",),
            subresources=frozenset({"status"}),
            name_rule="label",
            field_selectors=frozenset({"status.phase"}),
            top_level=_top(*wl),
        ),
        ResourceType(
            "",
            "serviceaccounts",
            "ServiceAccount",
            True,
            ("v1",),
            short_names=("sa",),
            subresources=frozenset({"token"}),
            top_level=_top("secrets", "imagePullSecrets", "automountServiceAccountToken"),
        ),
        ResourceType(
            "",
            "secrets",
            "Secret",
            True,
            ("v1",),
            returns_deleted_object=False,
            field_selectors=frozenset({"type"}),
            top_level=_top("data", "stringData", "type", "immutable"),
        ),
        ResourceType(
            "",
            "configmaps",
            "ConfigMap",
            True,
            ("v1",),
            short_names=("cm",),
            returns_deleted_object=False,
            top_level=_top("data", "binaryData", "immutable"),
        ),
        ResourceType(
            "",
            "pods",
            "Pod",
            True,
            ("v1",),
            short_names=("po",),
            categories=("all",),
            subresources=frozenset({"status", "binding", "log"}),
            field_selectors=frozenset(
                {
                    "spec.nodeName",
                    "spec.restartPolicy",
                    "spec.schedulerName",
                    "spec.serviceAccountName",
                    "spec.hostNetwork",
                    "status.phase",
                    "status.podIP",
                    "status.nominatedNodeName",
                }
            ),
            top_level=_top(*wl),
        ),
        ResourceType(
            "",
            "events",
            "Event",
            True,
            ("v1",),
            short_names=("ev",),
            returns_deleted_object=False,
            name_rule="path",
            field_selectors=frozenset(
                {
                    "involvedObject.kind",
                    "involvedObject.namespace",
                    "involvedObject.name",
                    "involvedObject.uid",
                    "involvedObject.apiVersion",
                    "involvedObject.resourceVersion",
                    "involvedObject.fieldPath",
                    "reason",
                    "reportingComponent",
                    "source",
                    "type",
                }
            ),
            top_level=_top(
                "involvedObject",
                "reason",
                "message",
                "source",
                "firstTimestamp",
                "lastTimestamp",
                "count",
                "type",
                "eventTime",
                "series",
                "action",
                "related",
                "reportingComponent",
                "reportingInstance",
            ),
        ),
        ResourceType(
            "",
            "nodes",
            "Node",
            False,
            ("v1",),
            short_names=("no",),
            subresources=frozenset({"status"}),
            field_selectors=frozenset({"spec.unschedulable"}),
            top_level=_top(*wl),
        ),
        ResourceType(
            "apps",
            "deployments",
            "Deployment",
            True,
            ("v1",),
            short_names=("deploy",),
            categories=("all",),
            subresources=frozenset({"status", "scale"}),
            has_generation=True,
            top_level=_top(*wl),
        ),
        ResourceType(
            "apps",
            "replicasets",
            "ReplicaSet",
            True,
            ("v1",),
            short_names=("rs",),
            categories=("all",),
            subresources=frozenset({"status", "scale"}),
            has_generation=True,
            top_level=_top(*wl),
        ),
        ResourceType(
            "apps",
            "daemonsets",
            "DaemonSet",
            True,
            ("v1",),
            short_names=("ds",),
            categories=("all",),
            subresources=frozenset({"status"}),
            has_generation=True,
            top_level=_top(*wl),
        ),
        ResourceType(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            False,
            ("v1",),
            short_names=("crd", "crds"),
            categories=("api-extensions",),
            subresources=frozenset({"status"}),
            has_generation=True,
            top_level=_top(*wl),
        ),
        ResourceType(
            "admissionregistration.k8s.io",
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
            False,
            ("v1",),
            categories=("api-extensions",),
            has_generation=True,
            top_level=_top("webhooks"),
        ),
        ResourceType(
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            False,
            ("v1",),
            categories=("api-extensions",),
            has_generation=True,
            top_level=_top("webhooks"),
        ),
        ResourceType(
            "storage.k8s.io",
            "csidrivers",
            "CSIDriver",
            False,
            ("v1",),
            top_level=_top("spec"),
        ),
        ResourceType(
            "rbac.authorization.k8s.io",
            "clusterroles",
            "ClusterRole",
            False,
            ("v1",),
            name_rule="path",
            top_level=_top("rules", "aggregationRule"),
        ),
        ResourceType(
            "rbac.authorization.k8s.io",
            "clusterrolebindings",
            "ClusterRoleBinding",
            False,
            ("v1",),
            name_rule="path",
            top_level=_top("subjects", "roleRef"),
        ),
        ResourceType(
            "rbac.authorization.k8s.io",
            "roles",
            "Role",
            True,
            ("v1",),
            name_rule="path",
            top_level=_top("rules"),
        ),
        ResourceType(
            "rbac.authorization.k8s.io",
            "rolebindings",
            "RoleBinding",
            True,
            ("v1",),
            name_rule="path",
            top_level=_top("subjects", "roleRef"),
        ),
        ResourceType(
            "coordination.k8s.io",
            "leases",
            "Lease",
            True,
            ("v1",),
            top_level=_top("spec"),
        ),
    ]


NAMESPACES: Final = ("", "namespaces")
SERVICE_ACCOUNTS: Final = ("", "serviceaccounts")
SECRETS: Final = ("", "secrets")
CONFIG_MAPS: Final = ("", "configmaps")
PODS: Final = ("", "pods")
DEPLOYMENTS: Final = ("apps", "deployments")
REPLICA_SETS: Final = ("apps", "replicasets")
DAEMON_SETS: Final = ("apps", "daemonsets")
CRDS: Final = ("apiextensions.k8s.io", "customresourcedefinitions")
WORKLOADS: Final = (DEPLOYMENTS, REPLICA_SETS, DAEMON_SETS)


def crd_resource_type(crd: Obj) -> ResourceType | None:
    """The resource a CustomResourceDefinition serves, or None when it serves no version."""
    spec = as_dict(crd.get("spec"))
    names = as_dict(spec.get("names"))
    versions = [v for v in as_list(spec.get("versions")) if isinstance(v, dict)]
    served = sorted((v["name"] for v in versions if v.get("served")), key=version_priority)
    if not served:
        return None
    storage = next((v["name"] for v in versions if v.get("storage")), served[0])
    subresources: set[str] = set()
    schemas: dict[str, Obj] = {}
    columns: dict[str, list[Obj]] = {}
    deprecations: dict[str, str] = {}
    group, kind = spec["group"], names["kind"]
    for v in versions:
        subresources.update(as_dict(v.get("subresources")).keys())
        schemas[v["name"]] = (as_dict(v.get("schema")).get("openAPIV3Schema")) or {}
        columns[v["name"]] = list(as_list(v.get("additionalPrinterColumns")))
        if v.get("deprecated"):
            deprecations[v["name"]] = (
                v.get("deprecationWarning") or f"{group}/{v['name']} {kind} is deprecated"
            )
    return ResourceType(
        group,
        names["plural"],
        kind,
        spec.get("scope") == "Namespaced",
        tuple(served),
        storage_version=storage,
        singular=names.get("singular") or "",
        short_names=tuple(names.get("shortNames") or ()),
        categories=tuple(names.get("categories") or ()),
        subresources=frozenset(subresources & {"status", "scale"}),
        builtin=False,
        has_generation=True,
        unconditional_update=False,
        schemas=schemas,
        columns=columns,
        deprecations=deprecations,
        list_kind_name=names.get("listKind") or "",
    )


class Registry:
    """The resources being served, built-in first, then one entry per established CRD."""

    def __init__(self) -> None:
        self._types: dict[RKey, ResourceType] = {}
        for rt in builtin_types():
            self._types[rt.key] = rt
        self.builtin_groups = list(dict.fromkeys(rt.group for rt in self._types.values()))

    def add(self, rt: ResourceType) -> None:
        self._types[rt.key] = rt

    def remove(self, key: RKey) -> None:
        self._types.pop(key, None)

    def get(self, key: RKey) -> ResourceType | None:
        return self._types.get(key)

    def lookup(self, group: str, version: str, plural: str) -> ResourceType | None:
        rt = self._types.get((group, plural))
        return rt if rt is not None and version in rt.versions else None

    def all(self) -> list[ResourceType]:
        return list(self._types.values())

    def groups(self) -> list[tuple[str, list[str]]]:
        """(group, served versions in preference order), the core group first."""
        versions: dict[str, set[str]] = {}
        for rt in self._types.values():
            versions.setdefault(rt.group, set()).update(rt.versions)
        custom = sorted(g for g in versions if g not in self.builtin_groups)
        order = [g for g in self.builtin_groups if g in versions] + custom
        return [(g, sorted(versions[g], key=version_priority)) for g in order]

    def resources(self, group: str, version: str) -> list[ResourceType]:
        return [rt for rt in self._types.values() if rt.group == group and version in rt.versions]


# --------------------------------------------------------------------------------------------
# Label and field selectors


class SelectorError(ValueError):
    pass


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # exists | !exists | = | != | in | notin | gt | lt
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key, "")
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        try:
            number = int(value)
        except ValueError:
            return False
        limit = int(self.values[0])
        return present and (number > limit if self.op == "gt" else number < limit)


_SEL_SPECIAL = frozenset(" \t\r\n,=!()<>")


def _lex_label_selector(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
        elif text.startswith("==", i) or text.startswith("!=", i):
            tokens.append((text[i : i + 2], text[i : i + 2]))
            i += 2
        elif c in ",=!()<>":
            tokens.append((c, c))
            i += 1
        else:
            start = i
            while i < len(text) and text[i] not in _SEL_SPECIAL:
                i += 1
            word = text[start:i]
            tokens.append((word if word in ("in", "notin") else "id", word))
    tokens.append(("end", ""))
    return tokens


class LabelSelector:
    """A parsed label selector: `a=b,c!=d,e in (f,g),h notin (i),j,!k,l>1`."""

    def __init__(self, requirements: Iterable[Requirement] = ()) -> None:
        self.requirements = tuple(requirements)

    def __bool__(self) -> bool:
        return bool(self.requirements)

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)

    @classmethod
    def parse(cls, text: str) -> LabelSelector:
        tokens = _lex_label_selector(text)
        pos = 0

        def take() -> tuple[str, str]:
            nonlocal pos
            token = tokens[pos]
            pos += 1
            return token

        def value() -> str:
            kind, word = tokens[pos]
            if kind in (",", "end", ")"):
                return ""
            if kind != "id":
                raise SelectorError(f"found '{word}', expected: identifier")
            take()
            return word

        requirements: list[Requirement] = []
        if tokens[0][0] == "end":
            return cls()
        while True:
            kind, word = take()
            if kind == "!":
                key_kind, key = take()
                if key_kind != "id":
                    raise SelectorError(f"found '{key}', expected: identifier")
                requirements.append(Requirement(_label_key(key), "!exists"))
            elif kind == "id":
                key = _label_key(word)
                op_kind, op_word = tokens[pos]
                if op_kind in (",", "end"):
                    requirements.append(Requirement(key, "exists"))
                else:
                    take()
                    if op_kind in ("=", "=="):
                        requirements.append(Requirement(key, "=", (_label_value(value()),)))
                    elif op_kind == "!=":
                        requirements.append(Requirement(key, "!=", (_label_value(value()),)))
                    elif op_kind in ("in", "notin"):
                        if take()[0] != "(":
                            raise SelectorError(f"found '{tokens[pos - 1][1]}', expected: '('")
                        values = [_label_value(value())]
                        while True:
                            sep_kind, sep = take()
                            if sep_kind == ")":
                                break
                            if sep_kind != ",":
                                raise SelectorError(f"found '{sep}', expected: ',' or ')'")
                            values.append(_label_value(value()))
                        requirements.append(Requirement(key, op_kind, tuple(values)))
                    elif op_kind in (">", "<"):
                        number = value()
                        if not re.fullmatch(r"-?\d+", number):
                            raise SelectorError(
                                f"for 'Gt', 'Lt' operators, the value must be an integer, "
                                f"not {number!r}"
                            )
                        requirements.append(
                            Requirement(key, "gt" if op_kind == ">" else "lt", (number,))
                        )
                    else:
                        raise SelectorError(
                            f"found '{op_word}', expected: in, notin, =, ==, !=, gt, lt"
                        )
            else:
                raise SelectorError(f"found '{word}', expected: !, identifier, or 'end of string'")
            sep_kind, sep = take()
            if sep_kind == "end":
                return cls(requirements)
            if sep_kind != ",":
                raise SelectorError(f"found '{sep}', expected: ',' or 'end of string'")
            if tokens[pos][0] == "end":
                raise SelectorError("found '', expected: identifier after ','")

    @classmethod
    def from_object(cls, selector: Any) -> LabelSelector:
        """A metav1.LabelSelector (matchLabels + matchExpressions)."""
        if not isinstance(selector, dict):
            return cls()
        requirements = [
            Requirement(str(k), "=", (str(v),))
            for k, v in as_dict(selector.get("matchLabels")).items()
        ]
        ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!exists"}
        for expr in as_list(selector.get("matchExpressions")):
            if isinstance(expr, dict) and expr.get("operator") in ops:
                values = tuple(str(v) for v in expr.get("values") or ())
                requirements.append(
                    Requirement(str(expr.get("key")), ops[expr["operator"]], values)
                )
        return cls(requirements)


def _label_key(key: str) -> str:
    problems = qualified_name_problems(key)
    if problems:
        raise SelectorError(
            f"unable to parse requirement: key: Invalid value: {json.dumps(key)}: {problems[0]}"
        )
    return key


def _label_value(value: str) -> str:
    problems = label_value_problems(value)
    if problems:
        raise SelectorError(
            f"unable to parse requirement: values[0]: Invalid value: {json.dumps(value)}: "
            f"{problems[0]}"
        )
    return value


def _split_unescaped(text: str, sep: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            current.append(text[i : i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
        i += 1
    parts.append("".join(current))
    return parts


def _unescape_field_value(text: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "\\":
            if i + 1 >= len(text) or text[i + 1] not in "\\,=":
                raise SelectorError(f"invalid field selector: invalid escape sequence in {text!r}")
            out.append(text[i + 1])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class FieldSelector:
    """A parsed field selector: `metadata.name=x,spec.nodeName!=y` (== also accepted)."""

    terms: tuple[tuple[str, str, str], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.terms)

    @classmethod
    def parse(cls, text: str) -> FieldSelector:
        terms: list[tuple[str, str, str]] = []
        for term in _split_unescaped(text, ","):
            if not term:
                continue
            split = _split_field_term(term)
            if split is None:
                raise SelectorError(f"invalid selector: '{term}'; can't understand '{term}'")
            lhs, op, rhs = split
            terms.append((lhs, "!=" if op == "!=" else "=", _unescape_field_value(rhs)))
        return cls(tuple(terms))

    def fields(self) -> set[str]:
        return {t[0] for t in self.terms}

    def matches(self, values: Mapping[str, str]) -> bool:
        for name, op, wanted in self.terms:
            actual = values.get(name, "")
            if (actual == wanted) != (op == "="):
                return False
        return True


def _split_field_term(term: str) -> tuple[str, str, str] | None:
    i = 0
    while i < len(term):
        if term[i] == "\\":
            i += 2
            continue
        for op in ("!=", "==", "="):
            if term.startswith(op, i):
                return term[:i], op, term[i + len(op) :]
        i += 1
    return None


def field_values(rt: ResourceType, obj: Obj, wanted: Iterable[str]) -> dict[str, str]:
    """The string value of each selectable field, as the real field-label conversion gives it."""
    out: dict[str, str] = {}
    for name in wanted:
        if name == "source" and rt.key == ("", "events"):
            path = ["source", "component"]
        else:
            path = name.split(".")
        value: Any = obj
        for part in path:
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, bool):
            out[name] = "true" if value else "false"
        elif value is None:
            out[name] = "false" if name in ("spec.hostNetwork", "spec.unschedulable") else ""
        else:
            out[name] = str(value)
    return out


@dataclass(frozen=True)
class WatchSpec:
    """What a list or a watch selects: one resource, maybe one namespace, selectors."""

    rt: ResourceType
    namespace: str | None = None
    labels: LabelSelector = field(default_factory=LabelSelector)
    fields: FieldSelector = field(default_factory=FieldSelector)

    def matches(self, obj: Obj) -> bool:
        meta = meta_of(obj)
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        if self.labels and not self.labels.matches(labels_of(obj)):
            return False
        return not self.fields or self.fields.matches(
            field_values(self.rt, obj, self.fields.fields())
        )


def parse_selectors(
    rt: ResourceType, label_text: str | None, field_text: str | None
) -> tuple[LabelSelector, FieldSelector]:
    """Parse both selectors; a bad one, or an unsupported field, is a 400 BadRequest."""
    try:
        labels = LabelSelector.parse(label_text or "")
        fields = FieldSelector.parse(field_text or "")
    except SelectorError as error:
        raise bad_request(str(error)) from None
    for name in sorted(fields.fields() - rt.field_names()):
        if rt.field_selectors:
            raise bad_request(f"field label not supported: {name}")
        raise bad_request(
            f'"{name}" is not a known field selector: only "metadata.name", "metadata.namespace"'
        )
    return labels, fields


# --------------------------------------------------------------------------------------------
# Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge, server-side apply


def merge_patch(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class PatchFailed(Exception):
    """A JSON patch operation that does not apply (422 on the real server)."""


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise PatchFailed(f"path must be a string, not {json_type(path)}")
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchFailed(f'JSON pointer must be empty or start with a "/": {path!r}')
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _index(token: str, size: int, *, for_insert: bool) -> int:
    if token == "-" and for_insert:
        return size
    if not re.fullmatch(r"0|[1-9][0-9]*", token):
        raise PatchFailed(f"invalid array index {token!r}")
    index = int(token)
    if index > size or (index == size and not for_insert):
        raise PatchFailed(f"array index out of bounds: {index}")
    return index


def _walk(doc: Any, parts: list[str], op: str, path: str) -> Any:
    current = doc
    for part in parts:
        if isinstance(current, dict) and part in current:
            current = current[part]
        elif isinstance(current, list):
            try:
                current = current[_index(part, len(current), for_insert=False)]
            except PatchFailed:
                raise PatchFailed(
                    f"{op} operation does not apply: doc is missing path: {path!r}"
                ) from None
        else:
            raise PatchFailed(f"{op} operation does not apply: doc is missing path: {path!r}")
    return current


def json_patch(doc: Any, operations: Any) -> Any:
    """Apply an RFC 6902 patch; PatchFailed when an operation does not apply."""
    if not isinstance(operations, list):
        kind = go_json_type(operations)
        raise bad_request(f"json: cannot unmarshal {kind} into Go value of type jsonpatch.Patch")
    doc = clone(doc)
    for operation in operations:
        if not isinstance(operation, dict):
            raise bad_request(
                f"json: cannot unmarshal {go_json_type(operation)} into Go value of type "
                "jsonpatch.Operation"
            )
        op = operation.get("op")
        path = operation.get("path")
        parts = _pointer(path)
        assert isinstance(path, str)
        if op in ("add", "replace", "test") and "value" not in operation:
            raise PatchFailed(f"{op} operation is missing a value: {path!r}")
        if op == "add":
            doc = _add(doc, parts, clone(operation["value"]), path)
        elif op == "remove":
            doc, _ = _remove(doc, parts, path, "remove")
        elif op == "replace":
            doc, _ = _remove(doc, parts, path, "replace")
            doc = _add(doc, parts, clone(operation["value"]), path)
        elif op in ("move", "copy"):
            source = operation.get("from")
            from_parts = _pointer(source)
            if op == "move":
                if path != source and str(path).startswith(f"{source}/"):
                    raise PatchFailed(f"move operation cannot move {source!r} into its own child")
                doc, value = _remove(doc, from_parts, str(source), "move")
            else:
                value = clone(_walk(doc, from_parts, "copy", str(source)))
            doc = _add(doc, parts, value, path)
        elif op == "test":
            if not json_equal(_walk(doc, parts, "test", str(path)), operation["value"]):
                raise PatchFailed(f"testing value {path} failed: test failed")
        else:
            raise PatchFailed(f"Unexpected kind: {op}")
    return doc


def _add(doc: Any, parts: list[str], value: Any, path: Any) -> Any:
    if not parts:
        return value
    parent = _walk(doc, parts[:-1], "add", str(path))
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_index(last, len(parent), for_insert=True), value)
    else:
        raise PatchFailed(f"add operation does not apply: doc is missing path: {path!r}")
    return doc


def _remove(doc: Any, parts: list[str], path: str, op: str) -> tuple[Any, Any]:
    if not parts:
        raise PatchFailed(f"{op} operation does not apply: cannot {op} the whole document")
    parent = _walk(doc, parts[:-1], op, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return doc, parent.pop(last)
    if isinstance(parent, list):
        try:
            return doc, parent.pop(_index(last, len(parent), for_insert=False))
        except PatchFailed:
            pass
    raise PatchFailed(f"{op} operation does not apply: doc is missing path: {path!r}")


# List semantics: ("map", keys) merges elements by key, ("set", ()) is a union of scalars,
# ("atomic", ()) replaces the whole list. `path` holds the field names from the root.
ListType = tuple[str, tuple[str, ...]]
ListTypeFn = Callable[[tuple[str, ...]], ListType]

_CONTAINER_LISTS: Final = frozenset({"containers", "initContainers", "ephemeralContainers"})
# patchMergeKey of the built-in lists with patchStrategy "merge" (from the API types).
_MERGE_KEYS: Final = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "secrets": "name",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "podIPs": "ip",
    "hostIPs": "ip",
    "webhooks": "name",
    "addresses": "type",
}


def builtin_list_type(path: tuple[str, ...]) -> ListType:
    if not path:
        return ("atomic", ())
    name = path[-1]
    if path == ("metadata", "finalizers"):
        return ("set", ())
    if name == "ports":
        in_container = any(p in _CONTAINER_LISTS for p in path)
        return ("map", ("containerPort" if in_container else "port",))
    key = _MERGE_KEYS.get(name)
    return ("map", (key,)) if key else ("atomic", ())


def schema_list_type(root: Obj) -> ListTypeFn:
    """List semantics read from a CRD's structural schema (x-kubernetes-list-type)."""

    def lookup(path: tuple[str, ...]) -> ListType:
        if path == ("metadata", "finalizers"):
            return ("set", ())
        if path and path[0] == "metadata":
            return builtin_list_type(path)
        schema: Any = root
        for name in path:
            while isinstance(schema, dict) and schema.get("type") == "array":
                schema = schema.get("items")
            if not isinstance(schema, dict):
                return ("atomic", ())
            props = as_dict(schema.get("properties"))
            extra = schema.get("additionalProperties")
            schema = props.get(name) if name in props else extra
        if not isinstance(schema, dict):
            return ("atomic", ())
        kind = schema.get("x-kubernetes-list-type")
        if kind == "map":
            return ("map", tuple(schema.get("x-kubernetes-list-map-keys") or ()))
        if kind == "set":
            return ("set", ())
        return ("atomic", ())

    return lookup


class _Delete:
    pass


_DELETE: Final = _Delete()


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: _strip_directives(v)
            for k, v in value.items()
            if not k.startswith("$") and v is not None
        }
    if isinstance(value, list):
        return [
            _strip_directives(v)
            for v in value
            if not (isinstance(v, dict) and set(v) == {"$patch"})
        ]
    return value


def strategic_merge(original: Obj, patch: Obj, list_type: ListTypeFn) -> Obj:
    """Apply a strategic merge patch with the directives kubectl sends ($patch, $retainKeys,
    $deleteFromPrimitiveList/..., $setElementOrder/...)."""
    result = _smp_map(original, patch, list_type, ())
    if not isinstance(result, dict):
        raise bad_request("a strategic merge patch cannot delete the whole object")
    return result


def _smp_map(original: Any, patch: Obj, list_type: ListTypeFn, path: tuple[str, ...]) -> Any:
    patch = dict(patch)
    directive = patch.pop("$patch", None)
    if directive == "replace":
        return _strip_directives(patch)
    if directive == "delete":
        return _DELETE
    if directive not in (None, "merge"):
        raise bad_request(f"unknown patch type: {directive}")
    retain = patch.pop("$retainKeys", None)
    orders: dict[str, Any] = {}
    removals: dict[str, Any] = {}
    for key in [k for k in patch if k.startswith("$")]:
        value = patch.pop(key)
        if key.startswith("$setElementOrder/"):
            orders[key.partition("/")[2]] = value
        elif key.startswith("$deleteFromPrimitiveList/"):
            removals[key.partition("/")[2]] = value
    result: Obj = clone(original) if isinstance(original, dict) else {}
    for key, value in patch.items():
        sub = (*path, key)
        current = result.get(key)
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            merged = _smp_map(current if isinstance(current, dict) else {}, value, list_type, sub)
            if isinstance(merged, _Delete):
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(
                current if isinstance(current, list) else [], value, list_type, sub
            )
        else:
            result[key] = value
    for key, values in removals.items():
        if isinstance(result.get(key), list) and isinstance(values, list):
            result[key] = [v for v in result[key] if not any(json_equal(v, x) for x in values)]
    for key, order in orders.items():
        if isinstance(result.get(key), list) and isinstance(order, list):
            _, keys = list_type((*path, key))
            result[key] = _reorder(result[key], order, keys)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _element_id(element: Any, keys: tuple[str, ...]) -> str:
    if keys and isinstance(element, dict):
        return json.dumps([element.get(k) for k in keys])
    return json.dumps(element, sort_keys=True)


def _reorder(items: list[Any], order: list[Any], keys: tuple[str, ...]) -> list[Any]:
    position = {_element_id(o, keys): i for i, o in enumerate(order)}
    listed = sorted(
        (e for e in items if _element_id(e, keys) in position),
        key=lambda e: position[_element_id(e, keys)],
    )
    return listed + [e for e in items if _element_id(e, keys) not in position]


def _smp_list(
    original: list[Any], patch: list[Any], list_type: ListTypeFn, path: tuple[str, ...]
) -> list[Any]:
    if any(isinstance(e, dict) and e.get("$patch") == "replace" for e in patch):
        return [_strip_directives(e) for e in patch if not (isinstance(e, dict) and "$patch" in e)]
    kind, keys = list_type(path)
    if kind == "atomic" or (kind == "map" and not keys):
        return [_strip_directives(e) for e in patch]
    result = [clone(e) for e in original]
    if kind == "set":
        for element in patch:
            if not any(json_equal(element, e) for e in result):
                result.append(clone(element))
        return result
    for element in patch:
        if not isinstance(element, dict):
            raise bad_request(f"{'.'.join(path)}: expected a map in a list merged by {keys[0]}")
        if any(k not in element for k in keys):
            raise bad_request(
                f"map: {go_value(element)} does not contain declared merge key: {keys[0]}"
            )
        ident = _element_id(element, keys)
        index = next((i for i, e in enumerate(result) if _element_id(e, keys) == ident), None)
        if element.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            result.append(_strip_directives(element))
        else:
            merged = _smp_map(result[index], element, list_type, path)
            if isinstance(merged, _Delete):
                del result[index]
            else:
                result[index] = merged
    return result


# Server-side apply. Field ownership is kept per manager as a set of paths in the fieldsV1
# notation ("f:spec", 'k:{"name":"x"}', 'v:"y"'); it drives conflicts and field removal.
FieldPath = tuple[str, ...]
_UNOWNED_META: Final = frozenset(
    {
        "name",
        "namespace",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "managedFields",
        "selfLink",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
    }
)


def field_set(obj: Obj, list_type: ListTypeFn, *, skip_status: bool) -> set[FieldPath]:
    paths: set[FieldPath] = set()
    for key, value in obj.items():
        if key in ("apiVersion", "kind") or (skip_status and key == "status"):
            continue
        if key == "metadata" and isinstance(value, dict):
            for mkey, mvalue in value.items():
                if mkey not in _UNOWNED_META:
                    _collect_fields(
                        mvalue, ("f:metadata", f"f:{mkey}"), ("metadata", mkey), list_type, paths
                    )
            continue
        _collect_fields(value, (f"f:{key}",), (key,), list_type, paths)
    return paths


def _collect_fields(
    value: Any, path: FieldPath, names: tuple[str, ...], list_type: ListTypeFn, out: set[FieldPath]
) -> None:
    if isinstance(value, dict) and value:
        for key, sub in value.items():
            _collect_fields(sub, (*path, f"f:{key}"), (*names, key), list_type, out)
        return
    if isinstance(value, list) and value:
        kind, keys = list_type(names)
        if kind == "map" and keys and all(isinstance(e, dict) for e in value):
            for element in value:
                ident = (
                    *path,
                    "k:"
                    + json.dumps(
                        {k: element.get(k) for k in keys}, separators=(",", ":"), sort_keys=True
                    ),
                )
                out.add(ident)
                for key, sub in element.items():
                    _collect_fields(sub, (*ident, f"f:{key}"), (*names, key), list_type, out)
            return
        if kind == "set":
            for element in value:
                out.add((*path, "v:" + json.dumps(element, separators=(",", ":"))))
            return
    out.add(path)


def _step(container: Any, element: str) -> tuple[Any, Any]:
    """(the child at `element`, a handle to delete it); (MISSING, None) when absent."""
    kind, _, ref = element.partition(":")
    if kind == "f":
        if isinstance(container, dict) and ref in container:
            return container[ref], ref
        return MISSING, None
    if not isinstance(container, list):
        return MISSING, None
    wanted = json.loads(ref)
    for index, item in enumerate(container):
        if kind == "k" and isinstance(item, dict):
            if all(json_equal(item.get(k), v) for k, v in wanted.items()):
                return item, index
        elif kind == "v" and json_equal(item, wanted):
            return item, index
    return MISSING, None


def value_at(obj: Any, path: FieldPath) -> Any:
    current = obj
    for element in path:
        current, _ = _step(current, element)
        if current is MISSING:
            return MISSING
    return current


def remove_at(obj: Any, path: FieldPath) -> None:
    parent = value_at(obj, path[:-1])
    if parent is MISSING:
        return
    _, handle = _step(parent, path[-1])
    if handle is not None:
        del parent[handle]


def format_field_path(path: FieldPath) -> str:
    out = ""
    for element in path:
        kind, _, ref = element.partition(":")
        if kind == "f":
            out += f".{ref}"
        elif kind == "k":
            pairs = json.loads(ref)
            out += "[" + ",".join(f"{k}={json.dumps(v)}" for k, v in pairs.items()) + "]"
        else:
            out += f"[={ref}]"
    return out


def ssa_merge(live: Any, applied: Any, list_type: ListTypeFn, names: tuple[str, ...]) -> Any:
    if isinstance(applied, dict) and isinstance(live, dict):
        result = dict(live)
        for key, value in applied.items():
            if value is None:
                result.pop(key, None)
            else:
                result[key] = ssa_merge(live.get(key, MISSING), value, list_type, (*names, key))
        return result
    if isinstance(applied, list) and isinstance(live, list):
        kind, keys = list_type(names)
        if kind == "set":
            merged = list(live)
            merged.extend(clone(e) for e in applied if not any(json_equal(e, x) for x in live))
            return merged
        if kind == "map" and keys:
            merged = list(live)
            for element in applied:
                ident = _element_id(element, keys)
                index = next(
                    (i for i, e in enumerate(merged) if _element_id(e, keys) == ident), None
                )
                if index is None:
                    merged.append(clone(element))
                else:
                    merged[index] = ssa_merge(merged[index], element, list_type, names)
            return merged
    return clone(applied)


@dataclass
class ManagedEntry:
    manager: str
    operation: str  # Apply | Update
    fields: set[FieldPath]

    def to_json(self) -> Obj:
        return {
            "manager": self.manager,
            "operation": self.operation,
            "fields": sorted(list(p) for p in self.fields),
        }

    @classmethod
    def from_json(cls, data: Obj) -> ManagedEntry:
        return cls(data["manager"], data["operation"], {tuple(p) for p in data["fields"]})


Managers = dict[str, ManagedEntry]  # keyed "manager/operation"


def copy_managers(managers: Managers) -> Managers:
    return {k: ManagedEntry(e.manager, e.operation, set(e.fields)) for k, e in managers.items()}


def track_update(
    managers: Managers,
    manager: str,
    old: Obj,
    new: Obj,
    list_type: ListTypeFn,
    *,
    skip_status: bool,
) -> None:
    """Give `manager` the fields this update changed, and take them from everyone else."""
    old_fields = field_set(old, list_type, skip_status=skip_status)
    new_fields = field_set(new, list_type, skip_status=skip_status)
    changed = {p for p in new_fields if not json_equal(value_at(old, p), value_at(new, p))}
    gone_fields = old_fields - new_fields
    for entry in managers.values():
        entry.fields -= changed | gone_fields
    if changed:
        entry = managers.setdefault(f"{manager}/Update", ManagedEntry(manager, "Update", set()))
        entry.fields |= changed
    for key in [k for k, e in managers.items() if not e.fields]:
        del managers[key]


# --------------------------------------------------------------------------------------------
# Structural schema validation and pruning for custom resources


class _Prune:
    pass


_PRUNE: Final = _Prune()


def check_schema(
    value: Any, schema: Obj, path: str, errors: list[FieldError], unknown: list[str]
) -> Any:
    """Validate `value` against a CRD schema; return it pruned of fields the schema does not
    declare (collected in `unknown`), or _PRUNE for a null the schema does not allow."""
    if value is None:
        return None if schema.get("nullable") else _PRUNE
    if schema.get("x-kubernetes-int-or-string"):
        if not isinstance(value, int | str) or isinstance(value, bool):
            errors.append(_type_error(path, value, "integer or string"))
        return value
    expected = schema.get("type")
    actual = json_type(value)
    if expected == "object":
        if not isinstance(value, dict):
            errors.append(_type_error(path, value, "object"))
            return value
        return _check_object(value, schema, path, errors, unknown)
    if expected == "array":
        if not isinstance(value, list):
            errors.append(_type_error(path, value, "array"))
            return value
        items = schema.get("items")
        result = [
            check_schema(e, items, f"{path}[{i}]", errors, unknown)
            if isinstance(items, dict)
            else e
            for i, e in enumerate(value)
        ]
        result = [e for e in result if not isinstance(e, _Prune)]
        if "maxItems" in schema and len(result) > schema["maxItems"]:
            errors.append(
                FieldError("toolong", path, f"must have at most {schema['maxItems']} items")
            )
        if "minItems" in schema and len(result) < schema["minItems"]:
            errors.append(
                FieldError(
                    "invalid",
                    path,
                    f"{path} in body should have at least {schema['minItems']} items",
                    len(result),
                )
            )
        return result
    if expected == "string" and actual != "string":
        errors.append(_type_error(path, value, "string"))
        return value
    if expected == "boolean" and actual != "boolean":
        errors.append(_type_error(path, value, "boolean"))
        return value
    if expected == "integer" and not (
        actual == "integer" or (actual == "number" and float(value).is_integer())
    ):
        errors.append(_type_error(path, value, "integer"))
        return value
    if expected == "number" and actual not in ("integer", "number"):
        errors.append(_type_error(path, value, "number"))
        return value
    _check_scalar(value, schema, path, errors)
    return value


def _type_error(path: str, value: Any, expected: str) -> FieldError:
    actual = json_type(value)
    return FieldError(
        "invalid", path, f'{path} in body must be of type {expected}: "{actual}"', actual
    )


def _check_scalar(value: Any, schema: Obj, path: str, errors: list[FieldError]) -> None:
    enum = schema.get("enum")
    if isinstance(enum, list) and not any(json_equal(value, e) for e in enum):
        errors.append(FieldError("unsupported", path, "", value, tuple(str(e) for e in enum)))
    if isinstance(value, str):
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            errors.append(
                FieldError(
                    "toolong", path, f"may not be more than {schema['maxLength']} bytes", value
                )
            )
        if "minLength" in schema and len(value) < schema["minLength"]:
            errors.append(
                FieldError(
                    "invalid",
                    path,
                    f"{path} in body should be at least {schema['minLength']} chars long",
                    value,
                )
            )
        pattern = schema.get("pattern")
        if isinstance(pattern, str):
            try:
                matched = re.search(pattern, value) is not None
            except re.error:
                matched = True
            if not matched:
                errors.append(
                    FieldError("invalid", path, f"{path} in body should match '{pattern}'", value)
                )
    elif isinstance(value, int | float) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(
                FieldError(
                    "invalid",
                    path,
                    f"{path} in body should be greater than or equal to {schema['minimum']}",
                    value,
                )
            )
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(
                FieldError(
                    "invalid",
                    path,
                    f"{path} in body should be less than or equal to {schema['maximum']}",
                    value,
                )
            )


def _check_object(
    value: Obj, schema: Obj, path: str, errors: list[FieldError], unknown: list[str]
) -> Obj:
    props = as_dict(schema.get("properties"))
    extra = schema.get("additionalProperties")
    preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
    result: Obj = {}
    for key, sub in value.items():
        sub_path = f"{path}.{key}" if path else key
        if key in props:
            checked = check_schema(sub, props[key], sub_path, errors, unknown)
        elif isinstance(extra, dict):
            checked = check_schema(sub, extra, sub_path, errors, unknown)
        elif extra is True or preserve:
            checked = sub
        else:
            unknown.append(sub_path)
            continue
        if not isinstance(checked, _Prune):
            result[key] = checked
    for required in as_list(schema.get("required")):
        if required not in result:
            errors.append(FieldError("required", f"{path}.{required}" if path else required))
    _check_scalar(value, schema, path, errors)
    return result


KNOWN_METADATA: Final = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)


class Raw:
    """A field-error value printed as is (Go's %#v of an unsigned zero is `0x0`)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def __str__(self) -> str:
        return self.text


# JSON types of the top-level fields of built-ins, checked the way a typed decoder would.
_FIELD_TYPES: Final[dict[str, str]] = {
    "spec": "object",
    "status": "object",
    "data": "object",
    "stringData": "object",
    "binaryData": "object",
    "type": "string",
    "immutable": "boolean",
    "secrets": "array",
    "imagePullSecrets": "array",
    "automountServiceAccountToken": "boolean",
    "involvedObject": "object",
    "source": "object",
    "related": "object",
    "series": "object",
    "reason": "string",
    "message": "string",
    "action": "string",
    "count": "integer",
    "firstTimestamp": "string",
    "lastTimestamp": "string",
    "eventTime": "string",
    "reportingComponent": "string",
    "reportingInstance": "string",
    "webhooks": "array",
    "rules": "array",
    "aggregationRule": "object",
    "subjects": "array",
    "roleRef": "object",
}
_META_STRINGS: Final = (
    "name",
    "generateName",
    "namespace",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "deletionTimestamp",
    "selfLink",
)
_GENERATE_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
_PROTECTED_NAMESPACES: Final = frozenset({"default", "kube-system", "kube-public"})
INITIAL_NAMESPACES: Final = ("default", "kube-system", "kube-public", "kube-node-lease")
PATCH_JSON: Final = "application/json-patch+json"
PATCH_MERGE: Final = "application/merge-patch+json"
PATCH_STRATEGIC: Final = "application/strategic-merge-patch+json"
PATCH_APPLY: Final = "application/apply-patch+yaml"
PATCH_TYPES_BUILTIN: Final = (PATCH_JSON, PATCH_MERGE, PATCH_STRATEGIC, PATCH_APPLY)
PATCH_TYPES_CUSTOM: Final = (PATCH_JSON, PATCH_MERGE, PATCH_APPLY)


@dataclass(slots=True)
class Event:
    """One change in the history: the object after it (for DELETED, the last state with a new
    resourceVersion) and before it (None for ADDED)."""

    rv: int
    type: str
    rkey: RKey
    obj: Obj
    old: Obj | None


class Watcher(Protocol):
    """A live watch stream; `deliver` must not block (the store calls it inside a write)."""

    spec: WatchSpec

    def deliver(self, event_type: str, obj: Obj) -> None: ...

    def close(self) -> None: ...


def translate(spec: WatchSpec, event: Event) -> tuple[str, Obj] | None:
    """The event a watcher with `spec` sees, if any. Like the real server, an object that stops
    matching a selector is sent as DELETED and one that starts matching as ADDED."""
    if event.rkey != spec.rt.key:
        return None
    now_matches = spec.matches(event.obj)
    if event.type in ("ADDED", "DELETED"):
        return (event.type, event.obj) if now_matches else None
    before_matched = event.old is not None and spec.matches(event.old)
    if now_matches:
        return ("MODIFIED" if before_matched else "ADDED", event.obj)
    return ("DELETED", event.obj) if before_matched else None


@dataclass
class WriteOptions:
    manager: str = ""
    field_validation: str = "Warn"
    dry_run: bool = False
    force: bool = False
    duplicates: tuple[str, ...] = ()  # field names the JSON body repeated


@dataclass
class DeleteOptions:
    grace_period: int | None = None
    propagation: str = "Background"
    uid: str | None = None
    resource_version: str | None = None
    dry_run: bool = False


@dataclass
class Result:
    obj: Obj
    code: int = 200
    warnings: list[str] = field(default_factory=list)


@dataclass
class ListResult:
    items: list[Obj]
    resource_version: int
    continue_token: str = ""
    remaining: int | None = None


@dataclass
class Decoded:
    obj: Obj
    warnings: list[str]
    errors: list[FieldError]


def parse_resource_version(text: str | None, what: str = "resourceVersion") -> int | None:
    if text in (None, ""):
        return None
    assert text is not None
    if not re.fullmatch(r"[0-9]{1,19}", text):
        raise bad_request(f'{what}: Invalid value: "{text}": must be a non-negative integer')
    return int(text)


def encode_continue(rv: int, last: Key) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(last)})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, Key]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        rv, start = data["rv"], data["start"]
        if not isinstance(rv, int) or rv < 0 or not isinstance(start, list) or len(start) != 2:
            raise ValueError("unexpected content")
        return rv, (str(start[0]), str(start[1]))
    except (ValueError, KeyError, TypeError) as error:
        raise bad_request(f"continue key is not valid: {error}") from None


def _summary(body: Any) -> str:
    text = json.dumps(body, separators=(",", ":"))
    return text if len(text) <= 60 else text[:57] + "..."


def _qos_class(spec: Obj) -> str:
    containers = [
        c
        for c in as_list(spec.get("containers")) + as_list(spec.get("initContainers"))
        if isinstance(c, dict)
    ]
    resources = [as_dict(c.get("resources")) for c in containers]
    if not any((r.get("requests") or r.get("limits")) for r in resources):
        return "BestEffort"
    for r in resources:
        limits, requests = as_dict(r.get("limits")), as_dict(r.get("requests"))
        for name in ("cpu", "memory"):
            if name not in limits or requests.get(name, limits[name]) != limits[name]:
                return "Burstable"
    return "Guaranteed"


def _pod_spec_defaults(spec: Obj) -> None:
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
    spec["serviceAccountName"] = account
    spec["serviceAccount"] = account
    for container in as_list(spec.get("containers")) + as_list(spec.get("initContainers")):
        if not isinstance(container, dict):
            continue
        image = str(container.get("image") or "")
        tag = image.rpartition("/")[2].partition("@")[0]
        latest = ":" not in tag or tag.endswith(":latest")
        container.setdefault(
            "imagePullPolicy", "Always" if latest and "@" not in image else "IfNotPresent"
        )
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})


def _pod_spec_errors(spec: Any, path: str) -> list[FieldError]:
    if not isinstance(spec, dict):
        return [FieldError("required", f"{path}.containers")]
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        return [FieldError("required", f"{path}.containers")]
    errors: list[FieldError] = []
    grace = spec.get("terminationGracePeriodSeconds")
    if grace is not None and (not isinstance(grace, int) or isinstance(grace, bool) or grace < 0):
        errors.append(
            FieldError(
                "invalid",
                f"{path}.terminationGracePeriodSeconds",
                "must be greater than or equal to 0",
                grace,
            )
        )
    if not isinstance(spec.get("nodeName", ""), str):
        errors.append(
            FieldError("invalid", f"{path}.nodeName", "must be a string", spec["nodeName"])
        )
    seen: set[str] = set()
    for i, container in enumerate(containers):
        where = f"{path}.containers[{i}]"
        if not isinstance(container, dict):
            errors.append(FieldError("invalid", where, "must be an object", container))
            continue
        name = container.get("name")
        if not name:
            errors.append(FieldError("required", f"{where}.name"))
        elif not isinstance(name, str) or name_problems(name, "label"):
            errors.append(FieldError("invalid", f"{where}.name", LABEL_MSG, name))
        elif name in seen:
            errors.append(FieldError("duplicate", f"{where}.name", value=name))
        else:
            seen.add(name)
        if not container.get("image"):
            errors.append(FieldError("required", f"{where}.image"))
    return errors


class Store:
    """All objects, the resourceVersion counter, the event history and the live watchers."""

    def __init__(
        self, *, event_history: int = 10000, clock: Callable[[], datetime] | None = None
    ) -> None:
        self.registry = Registry()
        self.rv = 0
        self.event_history = max(1, event_history)
        self.compacted_rv = 0  # a watch or list needing events at or before this gets 410
        self._clock = clock or (lambda: datetime.now(UTC))
        self._objects: dict[RKey, dict[Key, Obj]] = {}
        self._uids: dict[str, tuple[RKey, Key]] = {}
        self._dependents: dict[str, set[tuple[RKey, Key]]] = {}
        self._managers: dict[str, Managers] = {}
        self._events: deque[Event] = deque()
        self._watchers: set[Watcher] = set()
        self._serialized: dict[tuple[RKey, Key], str] = {}

    # -- setup, persistence, history

    def bootstrap(self) -> None:
        """The namespaces (and their `default` ServiceAccounts) every cluster starts with."""
        namespaces = self._rt(NAMESPACES)
        for name in INITIAL_NAMESPACES:
            if self.get(namespaces, None, name) is None:
                self.create(
                    namespaces,
                    "v1",
                    None,
                    {"metadata": {"name": name}},
                    WriteOptions(manager="kube-apiserver"),
                )

    def now(self) -> datetime:
        return self._clock()

    def compact(self) -> None:
        """Forget the event history: watches and continues from older versions now get 410."""
        self._events.clear()
        self.compacted_rv = self.rv

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    def dump(self) -> bytes:
        """The whole state as JSON; each object's text is cached until it changes."""
        parts: list[str] = []
        for rkey, objects in self._objects.items():
            for key, obj in objects.items():
                text = self._serialized.get((rkey, key))
                if text is None:
                    entry: Obj = {"group": rkey[0], "resource": rkey[1], "object": obj}
                    managers = self._managers.get(meta_of(obj).get("uid", ""))
                    if managers:
                        entry["managers"] = [m.to_json() for m in managers.values()]
                    text = json.dumps(entry, separators=(",", ":"))
                    self._serialized[(rkey, key)] = text
                parts.append(text)
        head = json.dumps({"format": STATE_FORMAT, "resourceVersion": self.rv})
        return (head[:-1] + ',"objects":[' + ",".join(parts) + "]}").encode()

    def load(self, data: bytes) -> None:
        """Restore a dump. History is not kept, so older watches get 410 and relist."""
        try:
            self._load(json.loads(data))
        except (KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"damaged state file: {type(error).__name__}: {error}") from None

    def _load(self, state: Any) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a {STATE_FORMAT} state file")
        entries = list(state["objects"])
        entries.sort(key=lambda e: (e["group"], e["resource"]) != CRDS)  # CRDs first
        for entry in entries:
            rt = self.registry.get((entry["group"], entry["resource"]))
            if rt is None:
                continue  # its CRD is gone
            obj = entry["object"]
            key = self._key(rt, obj)
            self._objects.setdefault(rt.key, {})[key] = obj
            uid = meta_of(obj)["uid"]
            self._uids[uid] = (rt.key, key)
            for owner in owner_uids(obj):
                self._dependents.setdefault(owner, set()).add((rt.key, key))
            if entry.get("managers"):
                self._managers[uid] = {
                    f"{m['manager']}/{m['operation']}": ManagedEntry.from_json(m)
                    for m in entry["managers"]
                }
            if rt.key == CRDS:
                self._register_crd(obj)
        self.rv = int(state["resourceVersion"])
        self.compacted_rv = self.rv

    # -- reads

    def _rt(self, key: RKey) -> ResourceType:
        rt = self.registry.get(key)
        assert rt is not None, key
        return rt

    @staticmethod
    def _key(rt: ResourceType, obj: Obj) -> Key:
        meta = meta_of(obj)
        return (meta.get("namespace", "") if rt.namespaced else "", meta.get("name", ""))

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj | None:
        key = (namespace or "" if rt.namespaced else "", name)
        return self._objects.get(rt.key, {}).get(key)

    def require(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.get(rt, namespace, name)
        if obj is None:
            raise not_found(rt, name)
        return obj

    @staticmethod
    def view(rt: ResourceType, obj: Obj, version: str) -> Obj:
        """The object as served in `version` (stored once, apiVersion rewritten on the way out,
        as the real server does for CRDs with conversion strategy None)."""
        api_version = rt.api_version(version)
        if obj.get("apiVersion") == api_version:
            return obj
        out = dict(obj)
        out["apiVersion"] = api_version
        return out

    def list_objects(
        self,
        spec: WatchSpec,
        *,
        limit: int = 0,
        continue_token: str = "",
        resource_version: str = "",
        match: str = "",
    ) -> ListResult:
        start_after: Key | None = None
        at: int | None = None
        if continue_token:
            if resource_version not in ("",):
                raise bad_request("specifying resource version is not allowed when using continue")
            at, start_after = decode_continue(continue_token)
            if at < self.compacted_rv:
                raise gone(
                    "The provided continue parameter is too old to display a consistent list "
                    "result. You can start a new list without the continue parameter, or use "
                    "the continue token in this response to retrieve the remainder of the "
                    "results. Continuing with the provided token results in an inconsistent "
                    "list - objects that were created, modified, or deleted between the time "
                    "the first chunk was returned and now may show up in the list."
                )
        else:
            requested = parse_resource_version(resource_version)
            if match == "Exact":
                if not requested:
                    raise bad_request(
                        'resourceVersionMatch: Forbidden: "Exact" is forbidden for '
                        'resourceVersion "0" or unset'
                    )
                at = requested
            elif match == "NotOlderThan":
                if requested is None:
                    raise bad_request(
                        "resourceVersionMatch: Forbidden: resourceVersionMatch "
                        "is forbidden unless resourceVersion is provided"
                    )
            elif match:
                raise bad_request(
                    f'resourceVersionMatch: Unsupported value: "{match}": supported values: '
                    '"Exact", "NotOlderThan"'
                )
            if requested is not None and requested > self.rv:
                raise too_large(requested, self.rv)
            if at is not None and at < self.compacted_rv:
                raise too_old(at, self.compacted_rv)
        objects = self._objects.get(spec.rt.key, {})
        if at is not None and at < self.rv:
            objects = self._snapshot(spec.rt.key, at)
        keys = sorted(k for k in objects if spec.namespace is None or k[0] == spec.namespace)
        if start_after is not None:
            keys = [k for k in keys if k > start_after]
        list_rv = at if at is not None else self.rv
        items: list[Obj] = []
        for index, key in enumerate(keys):
            obj = objects[key]
            if not spec.matches(obj):
                continue
            if limit and len(items) == limit:
                remaining = sum(1 for k in keys[index:] if spec.matches(objects[k]))
                last = self._key(spec.rt, items[-1])
                return ListResult(items, list_rv, encode_continue(list_rv, last), remaining)
            items.append(obj)
        return ListResult(items, list_rv)

    def _snapshot(self, rkey: RKey, at: int) -> dict[Key, Obj]:
        """The objects of one resource as they were at resourceVersion `at`, rebuilt by undoing
        the history after it (the caller checked it is not compacted)."""
        current = dict(self._objects.get(rkey, {}))
        rt = self.registry.get(rkey)
        assert rt is not None
        for event in reversed(self._events):
            if event.rv <= at:
                break
            if event.rkey != rkey:
                continue
            key = self._key(rt, event.obj)
            if event.type == "ADDED" or event.old is None:
                current.pop(key, None)
            else:
                current[key] = event.old
        return current

    # -- watch

    def watch(
        self,
        spec: WatchSpec,
        watcher: Watcher,
        *,
        resource_version: str = "",
        initial_events: bool = False,
    ) -> list[tuple[str, Obj]]:
        """Register `watcher` and return the events it must be sent first. Both happen in this one
        call, so no change can fall between the replay and the live stream."""
        requested = parse_resource_version(resource_version)
        if initial_events or not requested:
            objects = self._objects.get(spec.rt.key, {})
            initial = [("ADDED", objects[k]) for k in sorted(objects) if spec.matches(objects[k])]
        else:
            if requested < self.compacted_rv:
                raise too_old(requested, self.compacted_rv)
            initial = []
            for event in self._events:
                if event.rv > requested:
                    seen = translate(spec, event)
                    if seen is not None:
                        initial.append(seen)
        self._watchers.add(watcher)
        return initial

    def unwatch(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def close_watchers(self) -> None:
        for watcher in list(self._watchers):
            watcher.close()
        self._watchers.clear()

    def _emit(self, event: Event) -> None:
        self._events.append(event)
        while len(self._events) > self.event_history:
            self.compacted_rv = self._events.popleft().rv
        for watcher in list(self._watchers):
            seen = translate(watcher.spec, event)
            if seen is not None:
                watcher.deliver(*seen)

    # -- low-level writes (each one a new resourceVersion and one event)

    def _put(
        self,
        rt: ResourceType,
        obj: Obj,
        old: Obj | None,
        event_type: str,
        managers: Managers | None = None,
    ) -> Obj:
        self.rv += 1
        meta = obj["metadata"]
        meta["resourceVersion"] = str(self.rv)
        key = self._key(rt, obj)
        self._objects.setdefault(rt.key, {})[key] = obj
        uid = meta["uid"]
        self._uids[uid] = (rt.key, key)
        if managers is not None:
            if managers:
                self._managers[uid] = managers
            else:
                self._managers.pop(uid, None)
        before = owner_uids(old) if old is not None else set()
        after = owner_uids(obj)
        for owner in before - after:
            self._dependents.get(owner, set()).discard((rt.key, key))
        for owner in after - before:
            self._dependents.setdefault(owner, set()).add((rt.key, key))
        self._serialized.pop((rt.key, key), None)
        self._emit(Event(self.rv, event_type, rt.key, obj, old))
        return obj

    def _drop(self, rt: ResourceType, obj: Obj, last: Obj | None = None) -> Obj:
        """Remove `obj`; the DELETED event carries `last` (or obj) with a new resourceVersion."""
        key = self._key(rt, obj)
        self._objects.get(rt.key, {}).pop(key, None)
        self.rv += 1
        final = dict(last if last is not None else obj)
        final["metadata"] = dict(meta_of(final))
        final["metadata"]["resourceVersion"] = str(self.rv)
        uid = meta_of(obj).get("uid", "")
        self._uids.pop(uid, None)
        self._managers.pop(uid, None)
        self._serialized.pop((rt.key, key), None)
        for owner in owner_uids(obj):
            self._dependents.get(owner, set()).discard((rt.key, key))
        self._emit(Event(self.rv, "DELETED", rt.key, final, obj))
        self._after_removal(rt, final)
        return final

    # -- create

    def create(
        self, rt: ResourceType, version: str, namespace: str | None, body: Any, opts: WriteOptions
    ) -> Result:
        return self._create(rt, version, namespace, self._decode(rt, version, body, opts), opts)

    def _create(
        self,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        decoded: Decoded,
        opts: WriteOptions,
        *,
        operation: str = "Update",
    ) -> Result:
        obj = decoded.obj
        meta = obj["metadata"]
        if rt.namespaced:
            assert namespace is not None
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the "
                    "namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise bad_request("resourceVersion should not be set on objects to be created")
        for name in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
            "managedFields",
        ):
            meta.pop(name, None)
        name = meta.get("name") or ""
        if not name and meta.get("generateName"):
            name = self._generate_name(rt, namespace, str(meta["generateName"]))
            meta["name"] = name
        if rt.namespaced and namespace is not None:
            self._check_namespace_open(rt, namespace, name)
        errors = list(decoded.errors)
        if not name:
            errors.insert(
                0, FieldError("required", "metadata.name", "name or generateName is required")
            )
        else:
            errors[:0] = [
                FieldError("invalid", "metadata.name", p, name)
                for p in name_problems(name, rt.name_rule)
            ]
        self._prepare(rt, None, obj, errors)
        errors += self._meta_errors(obj)
        if errors:
            raise invalid_object(rt.kind, rt.group, name, errors)
        if self.get(rt, namespace, name) is not None:
            raise already_exists(rt, name)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = timestamp(self.now())
        if rt.has_generation:
            meta["generation"] = 1
        if opts.dry_run:
            return Result(self.view(rt, obj, version), 201, decoded.warnings)
        managers: Managers = {}
        if opts.manager:
            fields = field_set(obj, self._list_type(rt), skip_status=False)
            if fields:
                managers[f"{opts.manager}/{operation}"] = ManagedEntry(
                    opts.manager, operation, fields
                )
        stored = self._put(rt, obj, None, "ADDED", managers)
        self._after_write(rt, None, stored)
        result = Result(self.view(rt, stored, version), 201, decoded.warnings)
        owners = owner_uids(stored)
        if owners and not owners & self._uids.keys():
            # Every owner is already gone (deleted while this was being created): the garbage
            # collector removes such a dependent, as the real one does shortly after.
            self._delete_object(rt, stored, None, "Background")
        return result

    def _generate_name(self, rt: ResourceType, namespace: str | None, prefix: str) -> str:
        prefix = prefix[:58]
        while True:
            name = prefix + "".join(random.choices(_GENERATE_ALPHABET, k=5))
            if self.get(rt, namespace, name) is None:
                return name

    def _check_namespace_open(self, rt: ResourceType, namespace: str, name: str) -> None:
        ns = self.get(self._rt(NAMESPACES), None, namespace)
        if ns is None:
            raise ApiError(
                404,
                "NotFound",
                f'namespaces "{namespace}" not found',
                {"name": namespace, "kind": "namespaces"},
            )
        if meta_of(ns).get("deletionTimestamp"):
            details: Obj = {"name": name}
            if rt.group:
                details["group"] = rt.group
            details["kind"] = rt.plural
            details["causes"] = [
                {
                    "reason": "NamespaceTerminating",
                    "field": "metadata.namespace",
                    "message": f"namespace {namespace} is being terminated",
                }
            ]
            raise ApiError(
                403,
                "Forbidden",
                f'{rt.group_resource} "{name}" is forbidden: unable to create new content in '
                f"namespace {namespace} because it is being terminated",
                details,
            )

    # -- decoding and validation shared by every write

    def _decode(self, rt: ResourceType, version: str, body: Any, opts: WriteOptions) -> Decoded:
        """Check a request object against its URL, drop what the schema does not declare (an
        error under fieldValidation=Strict, a warning under Warn), collect schema errors."""
        cannot = f'{rt.kind} in version "{version}" cannot be handled as a {rt.kind}'
        if not isinstance(body, dict):
            raise bad_request(
                f"the object provided is unrecognized (must be of type {rt.kind}): couldn't get "
                f"version/kind; json parse error: expected a JSON object, got {json_type(body)}"
            )
        kind, api_version = body.get("kind"), body.get("apiVersion")
        expected = rt.api_version(version)
        if api_version not in (None, "") and api_version != expected:
            raise bad_request(
                f"the API version in the data ({api_version}) does not match the "
                f"expected API version ({expected})"
            )
        if kind in (None, "") and not rt.builtin:
            raise bad_request(
                f"the object provided is unrecognized (must be of type {rt.kind}): "
                f"Object 'Kind' is missing in '{_summary(body)}'"
            )
        if kind not in (None, "") and kind != rt.kind:
            given = str(api_version or expected).rpartition("/")[2]
            raise bad_request(
                f'{kind} in version "{given}" cannot be handled as a {rt.kind}: '
                f"converting ({given}.{kind}) to ({rt.kind}): unknown conversion"
            )
        meta = body.get("metadata")
        if meta is None:
            meta = {}
        if not isinstance(meta, dict):
            raise bad_request(
                f"{cannot}: json: cannot unmarshal {go_json_type(meta)} into Go struct "
                f"field {rt.kind}.metadata of type v1.ObjectMeta"
            )
        meta = clone(meta)
        self._check_meta_types(meta, cannot)
        unknown = [f"metadata.{k}" for k in meta if k not in KNOWN_METADATA]
        for name in unknown:
            del meta[name.partition(".")[2]]
        obj: Obj = {"apiVersion": rt.api_version(), "kind": rt.kind, "metadata": meta}
        rest = {k: v for k, v in body.items() if k not in CORE_META}
        errors: list[FieldError] = []
        if rt.top_level is not None:
            for name in list(rest):
                if name not in rt.top_level:
                    unknown.append(name)
                    del rest[name]
                elif rest[name] is None:
                    del rest[name]  # null decodes to the zero value in a typed struct
                else:
                    wanted = _FIELD_TYPES.get(name)
                    if wanted is not None and json_type(rest[name]) != wanted:
                        raise bad_request(
                            f"{cannot}: json: cannot unmarshal {go_json_type(rest[name])} into "
                            f"Go struct field {rt.kind}.{name} of type {wanted}"
                        )
            obj.update(clone(rest))
        else:
            schema = rt.schemas.get(version) or {}
            obj.update(_check_object(rest, schema, "", errors, unknown) if schema else clone(rest))
        problems = [f'unknown field "{u}"' for u in unknown]
        problems += [f'duplicate field "{d}"' for d in opts.duplicates]
        if problems and opts.field_validation == "Strict":
            raise bad_request(f"{cannot}: strict decoding error: " + ", ".join(problems))
        warnings = problems if opts.field_validation == "Warn" else []
        return Decoded(obj, warnings, errors)

    @staticmethod
    def _check_meta_types(meta: Obj, cannot: str) -> None:
        def fail(name: str, value: Any, go_type: str) -> ApiError:
            return bad_request(
                f"{cannot}: json: cannot unmarshal {go_json_type(value)} into Go "
                f"struct field ObjectMeta.metadata.{name} of type {go_type}"
            )

        for name in _META_STRINGS:
            if name in meta and meta[name] is not None and not isinstance(meta[name], str):
                raise fail(name, meta[name], "string")
        for name in ("labels", "annotations"):
            value = meta.get(name)
            if value is None:
                meta.pop(name, None)
                continue
            if not isinstance(value, dict):
                raise fail(name, value, "map[string]string")
            for sub in value.values():
                if not isinstance(sub, str):
                    raise fail(name, sub, "string")
        finalizers = meta.get("finalizers")
        if finalizers is not None and (
            not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers)
        ):
            raise fail("finalizers", finalizers, "[]string")
        refs = meta.get("ownerReferences")
        if refs is not None and (
            not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs)
        ):
            raise fail("ownerReferences", refs, "[]v1.OwnerReference")
        for name in ("generation", "deletionGracePeriodSeconds"):
            value = meta.get(name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise fail(name, value, "int64")

    @staticmethod
    def _meta_errors(obj: Obj) -> list[FieldError]:
        meta = obj["metadata"]
        errors: list[FieldError] = []
        for key, value in as_dict(meta.get("labels")).items():
            errors += [
                FieldError("invalid", "metadata.labels", p, key)
                for p in qualified_name_problems(key)
            ]
            errors += [
                FieldError("invalid", "metadata.labels", p, value)
                for p in label_value_problems(value)
            ]
        annotations = as_dict(meta.get("annotations"))
        for key in annotations:
            errors += [
                FieldError("invalid", "metadata.annotations", p, key)
                for p in qualified_name_problems(key.lower())
            ]
        if sum(len(k) + len(v) for k, v in annotations.items()) > 256 * 1024:
            errors.append(
                FieldError("toolong", "metadata.annotations", "must have at most 262144 bytes")
            )
        for finalizer in as_list(meta.get("finalizers")):
            errors += [
                FieldError("invalid", "metadata.finalizers", p, finalizer)
                for p in qualified_name_problems(finalizer)
            ]
        controllers = 0
        for ref in as_list(meta.get("ownerReferences")):
            for name in ("apiVersion", "kind", "name", "uid"):
                if not ref.get(name):
                    errors.append(
                        FieldError(
                            "invalid",
                            f"metadata.ownerReferences.{name}",
                            f"{name} must not be empty",
                            "",
                        )
                    )
            controllers += ref.get("controller") is True
        if controllers > 1:
            errors.append(
                FieldError(
                    "invalid",
                    "metadata.ownerReferences",
                    "Only one reference can have Controller set to true",
                    meta["ownerReferences"],
                )
            )
        return errors

    def _prepare(
        self, rt: ResourceType, old: Obj | None, obj: Obj, errors: list[FieldError]
    ) -> None:
        """Per-resource defaulting and validation, for create (old is None) and update."""
        creating = old is None
        if rt.key == NAMESPACES:
            name = meta_of(obj).get("name", "")
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            if creating:
                obj["status"] = {"phase": "Active"}
            obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = name
        elif rt.key == SECRETS:
            self._prepare_secret(old, obj, errors)
        elif rt.key == CONFIG_MAPS:
            self._prepare_config_map(old, obj, errors)
        elif rt.key == PODS:
            spec = obj.get("spec")
            errors += _pod_spec_errors(spec, "spec")
            if isinstance(spec, dict) and creating:
                _pod_spec_defaults(spec)
                self._check_service_account(obj)
                obj["status"] = {"phase": "Pending", "qosClass": _qos_class(spec)}
        elif rt.key in WORKLOADS:
            self._prepare_workload(rt, old, obj, errors)
        elif rt.key == CRDS:
            self._prepare_crd(old, obj, errors)
        elif creating and "status" in rt.subresources and not rt.builtin:
            obj.pop("status", None)

    def _prepare_secret(self, old: Obj | None, obj: Obj, errors: list[FieldError]) -> None:
        cannot = 'Secret in version "v1" cannot be handled as a Secret'
        data = obj.get("data")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise bad_request(
                f"{cannot}: json: cannot unmarshal {go_json_type(data)} into Go "
                "struct field Secret.data of type map[string][]uint8"
            )
        for key, value in data.items():
            if not isinstance(value, str):
                raise bad_request(
                    f"{cannot}: json: cannot unmarshal {go_json_type(value)} into Go "
                    "struct field Secret.data of type []uint8"
                )
            try:
                base64.b64decode(value.replace("\n", "").replace("\r", ""), validate=True)
            except ValueError:
                raise bad_request(f"{cannot}: illegal base64 data in data[{key}]") from None
        string_data = obj.pop("stringData", None) or {}
        if not isinstance(string_data, dict) or not all(
            isinstance(v, str) for v in string_data.values()
        ):
            raise bad_request(
                f"{cannot}: json: cannot unmarshal stringData: expected a map of strings"
            )
        for key, value in string_data.items():
            data[key] = base64.b64encode(value.encode()).decode()
        if data:
            obj["data"] = data
        else:
            obj.pop("data", None)
        obj.setdefault("type", "Opaque")
        kind = obj["type"]
        for key in data:
            if not _CONFIG_KEY.match(key):
                errors.append(FieldError("invalid", f"data[{key}]", CONFIG_KEY_MSG, key))
        required = {
            "kubernetes.io/dockerconfigjson": (".dockerconfigjson",),
            "kubernetes.io/dockercfg": (".dockercfg",),
            "kubernetes.io/tls": ("tls.crt", "tls.key"),
        }.get(kind, ())
        errors += [FieldError("required", f"data[{k}]") for k in required if k not in data]
        if sum(len(base64.b64decode(v)) for v in data.values()) > 1024 * 1024:
            errors.append(FieldError("toolong", "data", "must have at most 1048576 bytes"))
        if old is not None:
            if old.get("type", "Opaque") != kind:
                errors.append(FieldError("invalid", "type", "field is immutable", kind))
            self._check_immutable_data(old, obj, errors)

    def _prepare_config_map(self, old: Obj | None, obj: Obj, errors: list[FieldError]) -> None:
        for field_name in ("data", "binaryData"):
            value = obj.get(field_name)
            if value is None:
                continue
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise bad_request(
                    f'ConfigMap in version "v1" cannot be handled as a ConfigMap: '
                    f"{field_name} must be a map of strings"
                )
            for key in value:
                if not _CONFIG_KEY.match(key):
                    errors.append(
                        FieldError("invalid", f"{field_name}[{key}]", CONFIG_KEY_MSG, key)
                    )
        if old is not None:
            self._check_immutable_data(old, obj, errors)

    @staticmethod
    def _check_immutable_data(old: Obj, obj: Obj, errors: list[FieldError]) -> None:
        if old.get("immutable") is True:
            if obj.get("immutable") is not True:
                errors.append(
                    FieldError(
                        "forbidden", "immutable", "field is immutable when `immutable` is set"
                    )
                )
            for name in ("data", "binaryData"):
                if not json_equal(old.get(name), obj.get(name)):
                    errors.append(
                        FieldError("forbidden", name, "field is immutable when `immutable` is set")
                    )

    def _check_service_account(self, pod: Obj) -> None:
        """The ServiceAccount admission plugin: a pod's ServiceAccount must exist."""
        meta = pod["metadata"]
        namespace, account = meta.get("namespace", ""), pod["spec"]["serviceAccountName"]
        if self.get(self._rt(SERVICE_ACCOUNTS), namespace, account) is None:
            name = meta.get("name", "")
            raise ApiError(
                403,
                "Forbidden",
                f'pods "{name}" is forbidden: error looking up service account '
                f'{namespace}/{account}: serviceaccount "{account}" not found',
                {"name": name, "kind": "pods"},
            )

    def _prepare_workload(
        self, rt: ResourceType, old: Obj | None, obj: Obj, errors: list[FieldError]
    ) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            errors.append(FieldError("required", "spec.selector"))
            return
        selector = spec.get("selector")
        template: Obj = spec["template"] if isinstance(spec.get("template"), dict) else {}
        template_labels = as_dict(as_dict(template.get("metadata")).get("labels"))
        parsed = LabelSelector.from_object(selector)
        if not selector:
            errors.append(FieldError("required", "spec.selector"))
        elif not parsed:
            errors.append(
                FieldError(
                    "invalid",
                    "spec.selector",
                    f"empty selector is invalid for {rt.singular}",
                    selector,
                )
            )
        elif not parsed.matches(template_labels):
            errors.append(
                FieldError(
                    "invalid",
                    "spec.template.metadata.labels",
                    "`selector` does not match template `labels`",
                    template_labels,
                )
            )
        errors += _pod_spec_errors(template.get("spec"), "spec.template.spec")
        if isinstance(template.get("spec"), dict):
            _pod_spec_defaults(template["spec"])
        if rt.key != DAEMON_SETS:
            spec.setdefault("replicas", 1)
            replicas = spec["replicas"]
            if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
                errors.append(
                    FieldError(
                        "invalid", "spec.replicas", "must be greater than or equal to 0", replicas
                    )
                )
        spec.setdefault("revisionHistoryLimit", 10)
        if rt.key == DEPLOYMENTS:
            spec.setdefault(
                "strategy",
                {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"},
                },
            )
            spec.setdefault("progressDeadlineSeconds", 600)
        elif rt.key == DAEMON_SETS:
            spec.setdefault(
                "updateStrategy",
                {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}},
            )
        if old is None:
            obj["status"] = {}
        elif not json_equal(as_dict(old.get("spec")).get("selector"), selector):
            errors.append(FieldError("invalid", "spec.selector", "field is immutable", selector))

    def _prepare_crd(self, old: Obj | None, obj: Obj, errors: list[FieldError]) -> None:
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            errors.append(FieldError("required", "spec"))
            return
        group = spec.get("group") or ""
        names: Obj = spec["names"] if isinstance(spec.get("names"), dict) else {}
        spec["names"] = names
        plural, kind = names.get("plural") or "", names.get("kind") or ""
        if not group:
            errors.append(FieldError("required", "spec.group"))
        elif "." not in group or name_problems(group, "subdomain"):
            errors.append(
                FieldError(
                    "invalid", "spec.group", "should be a domain with at least one dot", group
                )
            )
        if not plural:
            errors.append(FieldError("required", "spec.names.plural"))
        elif name_problems(plural, "label"):
            errors.append(FieldError("invalid", "spec.names.plural", LABEL_MSG, plural))
        if not kind:
            errors.append(FieldError("required", "spec.names.kind"))
        if kind:
            names.setdefault("singular", kind.lower())
            names.setdefault("listKind", kind + "List")
        scope = spec.get("scope")
        if scope not in ("Namespaced", "Cluster"):
            errors.append(
                FieldError("unsupported", "spec.scope", "", scope, ("Cluster", "Namespaced"))
            )
        name = meta_of(obj).get("name", "")
        if plural and group and name != f"{plural}.{group}":
            errors.append(
                FieldError(
                    "invalid", "metadata.name", 'must be spec.names.plural+"."+spec.group', name
                )
            )
        versions = spec.get("versions")
        if not isinstance(versions, list) or not versions:
            errors.append(FieldError("required", "spec.versions"))
            versions = []
        seen: set[str] = set()
        storage = []
        for i, version in enumerate(versions):
            where = f"spec.versions[{i}]"
            if not isinstance(version, dict) or not version.get("name"):
                errors.append(FieldError("required", f"{where}.name"))
                continue
            if version["name"] in seen:
                errors.append(FieldError("duplicate", f"{where}.name", value=version["name"]))
            seen.add(version["name"])
            if version.get("storage"):
                storage.append(version["name"])
            schema = as_dict(version.get("schema")).get("openAPIV3Schema")
            if not isinstance(schema, dict):
                errors.append(
                    FieldError(
                        "required", f"{where}.schema.openAPIV3Schema", "schemas are required"
                    )
                )
            subresources = version.get("subresources")
            if subresources is not None and not isinstance(subresources, dict):
                errors.append(
                    FieldError(
                        "invalid", f"{where}.subresources", "must be an object", subresources
                    )
                )
            columns = version.get("additionalPrinterColumns")
            if columns is not None and not isinstance(columns, list):
                errors.append(
                    FieldError(
                        "invalid", f"{where}.additionalPrinterColumns", "must be a list", columns
                    )
                )
            for j, column in enumerate(as_list(columns)):
                at = f"{where}.additionalPrinterColumns[{j}]"
                if not isinstance(column, dict):
                    errors.append(FieldError("invalid", at, "must be an object", column))
                    continue
                for key in ("name", "jsonPath"):
                    if not isinstance(column.get(key), str) or not column[key]:
                        errors.append(FieldError("required", f"{at}.{key}"))
                if column.get("type") not in ("integer", "number", "string", "boolean", "date"):
                    errors.append(
                        FieldError(
                            "unsupported",
                            f"{at}.type",
                            "",
                            column.get("type"),
                            ("boolean", "date", "integer", "number", "string"),
                        )
                    )
                priority = column.get("priority", 0)
                if not isinstance(priority, int) or isinstance(priority, bool) or priority < 0:
                    errors.append(
                        FieldError(
                            "invalid", f"{at}.priority", "must be a non-negative integer", priority
                        )
                    )
        if versions and len(storage) != 1:
            errors.append(
                FieldError(
                    "invalid",
                    "spec.versions",
                    "must have exactly one version marked as storage version",
                    [v.get("name") for v in versions if isinstance(v, dict)],
                )
            )
        if old is not None and as_dict(old.get("spec")).get("scope") != scope:
            errors.append(FieldError("invalid", "spec.scope", "field is immutable", scope))
        if errors:
            return
        builtin = self.registry.get((group, plural))
        conflict = builtin is not None and builtin.builtin
        now = timestamp(self.now())
        status = clone(old.get("status")) if old is not None else {}
        if not isinstance(status, dict) or not status.get("conditions"):
            status = {
                "conditions": [
                    {
                        "type": "NamesAccepted",
                        "status": "False" if conflict else "True",
                        "lastTransitionTime": now,
                        "reason": "PluralConflict" if conflict else "NoConflicts",
                        "message": f'"{plural}" is already in use'
                        if conflict
                        else "no conflicts found",
                    },
                    {
                        "type": "Established",
                        "status": "False" if conflict else "True",
                        "lastTransitionTime": now,
                        "reason": "NotAccepted" if conflict else "InitialNamesAccepted",
                        "message": "not all names are accepted"
                        if conflict
                        else "the initial names have been accepted",
                    },
                ]
            }
        status["acceptedNames"] = {
            k: v
            for k, v in names.items()
            if k in ("plural", "singular", "kind", "listKind", "shortNames", "categories")
        }
        stored = list(as_list(status.get("storedVersions")))
        status["storedVersions"] = stored + [v for v in storage if v not in stored]
        obj["status"] = status

    # -- update, patch, apply

    def update(
        self,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        name: str,
        body: Any,
        opts: WriteOptions,
        subresource: str | None = None,
    ) -> Result:
        decoded = self._decode(rt, version, body, opts)
        self._match_url(rt, decoded.obj, namespace, name)
        old = self.require(rt, namespace, name)
        self._check_version(rt, old, meta_of(decoded.obj).get("resourceVersion"), name)
        new = self._merge_subresource(rt, old, decoded.obj, subresource)
        return self._finish_update(rt, version, old, new, opts, decoded, subresource)

    @staticmethod
    def _match_url(rt: ResourceType, obj: Obj, namespace: str | None, name: str) -> None:
        meta = obj["metadata"]
        if meta.get("name") and meta["name"] != name:
            raise bad_request(
                f"the name of the object ({meta['name']}) does not match the name "
                f"on the URL ({name})"
            )
        meta["name"] = name
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise bad_request(
                    "the namespace of the provided object does not match the "
                    "namespace sent on the request"
                )
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)

    @staticmethod
    def _check_version(rt: ResourceType, old: Obj, wanted: Any, name: str) -> None:
        """Optimistic concurrency: a stale metadata.resourceVersion is a 409."""
        if wanted in (None, ""):
            if not rt.unconditional_update:
                raise invalid_object(
                    rt.kind,
                    rt.group,
                    name,
                    [
                        FieldError(
                            "invalid",
                            "metadata.resourceVersion",
                            "must be specified for an update",
                            Raw("0x0"),
                        )
                    ],
                )
            return
        if not isinstance(wanted, str) or not wanted.isdigit():
            raise bad_request(
                f"metadata.resourceVersion: Invalid value: {go_value(wanted)}: "
                "must be a resource version returned by the server"
            )
        if wanted != meta_of(old).get("resourceVersion"):
            raise conflict(rt, name)

    @staticmethod
    def _merge_subresource(rt: ResourceType, old: Obj, new: Obj, subresource: str | None) -> Obj:
        """The status subresource writes only status; the main resource never writes it."""
        if subresource == "status":
            merged: Obj = clone(old)
            merged["metadata"]["resourceVersion"] = meta_of(new).get("resourceVersion")
            if "status" in new:
                merged["status"] = new["status"]
            else:
                merged.pop("status", None)
            return merged
        if "status" in rt.subresources:
            if "status" in old:
                new["status"] = clone(old["status"])
            else:
                new.pop("status", None)
        return new

    def _list_type(self, rt: ResourceType) -> ListTypeFn:
        if rt.builtin:
            return builtin_list_type
        return schema_list_type(rt.schemas.get(rt.storage_version) or {})

    def _finish_update(
        self,
        rt: ResourceType,
        version: str,
        old: Obj,
        new: Obj,
        opts: WriteOptions,
        decoded: Decoded,
        subresource: str | None,
        managers: Managers | None = None,
    ) -> Result:
        meta, old_meta = new["metadata"], old["metadata"]
        name = old_meta["name"]
        for system in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "resourceVersion",
        ):
            if system in old_meta:
                meta[system] = old_meta[system]
            else:
                meta.pop(system, None)
        for dropped in ("managedFields", "selfLink"):
            meta.pop(dropped, None)
        new["apiVersion"], new["kind"] = rt.api_version(), rt.kind
        errors = list(decoded.errors)
        self._prepare(rt, old, new, errors)
        errors += self._meta_errors(new)
        if old_meta.get("deletionTimestamp"):
            added = [
                f
                for f in as_list(meta.get("finalizers"))
                if f not in as_list(old_meta.get("finalizers"))
            ]
            if added:
                errors.append(
                    FieldError(
                        "forbidden",
                        "metadata.finalizers",
                        "no new finalizers can be added if the object is being "
                        f"deleted, found new finalizers {go_value(added)}",
                    )
                )
        if errors:
            raise invalid_object(rt.kind, rt.group, name, errors)
        if json_equal(new, old):
            return Result(self.view(rt, old, version), 200, decoded.warnings)  # a no-op write
        if rt.has_generation and self._spec_changed(rt, old, new):
            meta["generation"] = int(old_meta.get("generation") or 0) + 1
        if opts.dry_run:
            return Result(self.view(rt, new, version), 200, decoded.warnings)
        if managers is None:
            managers = copy_managers(self._managers.get(old_meta["uid"], {}))
            if opts.manager:
                track_update(
                    managers, opts.manager, old, new, self._list_type(rt), skip_status=False
                )
        if (
            meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and not meta.get("deletionGracePeriodSeconds")
        ):
            # The last finalizer is gone: the object goes now, as the real registry does.
            final = self._drop(rt, old, last=new)
            return Result(self.view(rt, final, version), 200, decoded.warnings)
        stored = self._put(rt, new, old, "MODIFIED", managers)
        self._after_write(rt, old, stored)
        return Result(self.view(rt, stored, version), 200, decoded.warnings)

    @staticmethod
    def _spec_changed(rt: ResourceType, old: Obj, new: Obj) -> bool:
        """metadata.generation follows the spec: everything but metadata (and status, when status
        is a subresource)."""
        ignored = {"metadata", "status"} if "status" in rt.subresources else {"metadata"}
        return not json_equal(
            {k: v for k, v in old.items() if k not in ignored},
            {k: v for k, v in new.items() if k not in ignored},
        )

    def patch(
        self,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        name: str,
        patch_type: str,
        raw: bytes,
        opts: WriteOptions,
        subresource: str | None = None,
    ) -> Result:
        allowed = PATCH_TYPES_BUILTIN if rt.builtin else PATCH_TYPES_CUSTOM
        if patch_type not in allowed:
            raise unsupported_media_type(allowed)
        if patch_type == PATCH_APPLY:
            return self._apply(rt, version, namespace, name, raw, opts, subresource)
        try:
            body, _ = decode_json(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise bad_request(f"error decoding patch: {error}") from None
        old = self.require(rt, namespace, name)
        current = clone(self.view(rt, old, version))
        patched = self._patched(current, patch_type, body)
        decoded = self._decode(rt, version, patched, opts)
        self._match_url(rt, decoded.obj, namespace, name)
        wanted = meta_of(decoded.obj).get("resourceVersion")
        if wanted not in (None, "") and wanted != meta_of(old).get("resourceVersion"):
            raise conflict(rt, name)
        new = self._merge_subresource(rt, old, decoded.obj, subresource)
        return self._finish_update(rt, version, old, new, opts, decoded, subresource)

    @staticmethod
    def _patched(current: Obj, patch_type: str, body: Any) -> Obj:
        try:
            if patch_type == PATCH_JSON:
                patched = json_patch(current, body)
            elif not isinstance(body, dict):
                raise bad_request(
                    f"json: cannot unmarshal {go_json_type(body)} into Go value of "
                    "type map[string]interface {}"
                )
            elif patch_type == PATCH_MERGE:
                patched = merge_patch(current, body)
            else:
                patched = strategic_merge(current, body, builtin_list_type)
        except PatchFailed as error:
            raise ApiError(
                422,
                "Invalid",
                str(error),
                {"causes": [{"reason": "UnexpectedServerResponse", "message": str(error)}]},
            ) from None
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patched object is not a JSON object")
        return patched

    def _apply(
        self,
        rt: ResourceType,
        version: str,
        namespace: str | None,
        name: str,
        raw: bytes,
        opts: WriteOptions,
        subresource: str | None,
    ) -> Result:
        """Server-side apply: create, or merge the applied configuration with field ownership
        (conflicts with other managers unless force; fields this manager stopped applying are
        removed when no one else owns them)."""
        if not opts.manager:
            raise invalid_object(
                "PatchOptions",
                "meta.k8s.io",
                "",
                [FieldError("required", "fieldManager", "is required for apply patch")],
            )
        applied = parse_yaml(raw)
        if not isinstance(applied, dict):
            raise bad_request(f"error decoding YAML: expected an object, got {json_type(applied)}")
        for required in ("apiVersion", "kind"):
            if not applied.get(required):
                raise bad_request(f"{required} must be set in an applied configuration")
        decoded = self._decode(rt, version, applied, opts)
        obj = decoded.obj
        self._match_url(rt, obj, namespace, name)
        old = self.get(rt, namespace, name)
        if old is None:
            if subresource:
                raise not_found(rt, name)
            return self._create(rt, version, namespace, decoded, opts, operation="Apply")
        wanted = meta_of(obj).get("resourceVersion")
        if wanted not in (None, "") and wanted != meta_of(old).get("resourceVersion"):
            raise conflict(rt, name)
        list_type = self._list_type(rt)
        skip_status = "status" in rt.subresources and subresource != "status"
        applied_fields = field_set(obj, list_type, skip_status=skip_status)
        live = clone(old)
        managers = copy_managers(self._managers.get(meta_of(old)["uid"], {}))
        conflicts = [
            (entry, path)
            for entry in managers.values()
            if entry.manager != opts.manager
            for path in sorted(applied_fields & entry.fields)
            # Only values conflict; owning a list element's existence (k:/v:) never does.
            if path[-1].startswith("f:")
            and not json_equal(value_at(live, path), value_at(obj, path))
        ]
        if conflicts and not opts.force:
            raise self._apply_conflict(rt, name, conflicts)
        for entry, path in conflicts:
            entry.fields.discard(path)
        own = f"{opts.manager}/Apply"
        previous = managers[own].fields if own in managers else set()
        others: set[FieldPath] = set()
        for key, entry in managers.items():
            if key != own:
                others |= entry.fields
        for path in sorted(previous - applied_fields, key=len, reverse=True):
            if path not in others:
                remove_at(live, path)
        merged = ssa_merge(live, {k: v for k, v in obj.items() if k != "metadata"}, list_type, ())
        merged["metadata"] = ssa_merge(live["metadata"], obj["metadata"], list_type, ("metadata",))
        managers[own] = ManagedEntry(opts.manager, "Apply", applied_fields)
        for key in [k for k, e in managers.items() if not e.fields]:
            del managers[key]
        new = self._merge_subresource(rt, old, merged, subresource)
        return self._finish_update(rt, version, old, new, opts, decoded, subresource, managers)

    @staticmethod
    def _apply_conflict(
        rt: ResourceType, name: str, conflicts: list[tuple[ManagedEntry, FieldPath]]
    ) -> ApiError:
        version = rt.api_version()
        by_manager: dict[str, list[str]] = {}
        for entry, path in conflicts:
            by_manager.setdefault(entry.manager, []).append(format_field_path(path))
        count = len(conflicts)
        if count == 1:
            manager, paths = next(iter(by_manager.items()))
            text = (
                f'Apply failed with 1 conflict: conflict with "{manager}" using {version}: '
                f"{paths[0]}"
            )
        else:
            groups = [
                f'conflicts with "{m}" using {version}:\n' + "\n".join(f"- {p}" for p in ps)
                for m, ps in by_manager.items()
            ]
            text = f"Apply failed with {count} conflicts: " + "\n".join(groups)
        causes = [
            {
                "reason": "FieldManagerConflict",
                "field": format_field_path(path),
                "message": f'conflict with "{entry.manager}" using {version}',
            }
            for entry, path in conflicts
        ]
        details: Obj = {"name": name}
        if rt.group:
            details["group"] = rt.group
        details["kind"] = rt.plural
        details["causes"] = causes
        return ApiError(409, "Conflict", text, details)

    # -- subresources other than status

    def scale(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.require(rt, namespace, name)
        meta = meta_of(obj)
        spec = as_dict(obj.get("spec"))
        selector = LabelSelector.from_object(spec.get("selector"))
        text = ",".join(
            f"{r.key}={r.values[0]}" if r.op == "=" else r.key for r in selector.requirements
        )
        return {
            "kind": "Scale",
            "apiVersion": "autoscaling/v1",
            "metadata": {
                k: meta[k]
                for k in ("name", "namespace", "uid", "resourceVersion", "creationTimestamp")
                if k in meta
            },
            "spec": {"replicas": spec.get("replicas", 0)},
            "status": {"replicas": as_dict(obj.get("status")).get("replicas", 0), "selector": text},
        }

    def update_scale(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        opts: WriteOptions,
        patch_type: str | None = None,
    ) -> Obj:
        if patch_type is not None:
            if patch_type not in (PATCH_JSON, PATCH_MERGE, PATCH_STRATEGIC):
                raise unsupported_media_type((PATCH_JSON, PATCH_MERGE, PATCH_STRATEGIC))
            body = self._patched(clone(self.scale(rt, namespace, name)), patch_type, body)
        if not isinstance(body, dict) or body.get("kind") not in (None, "Scale"):
            raise bad_request("the object provided is unrecognized (must be of type Scale)")
        old = self.require(rt, namespace, name)
        self._check_version(rt, old, meta_of(body).get("resourceVersion") or None, name)
        replicas = as_dict(body.get("spec")).get("replicas", 0)
        if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
            raise invalid_object(
                "Scale",
                "autoscaling",
                name,
                [
                    FieldError(
                        "invalid", "spec.replicas", "must be greater than or equal to 0", replicas
                    )
                ],
            )
        new = clone(old)
        new.setdefault("spec", {})["replicas"] = replicas
        self._finish_update(rt, rt.storage_version, old, new, opts, Decoded(new, [], []), None)
        return self.scale(rt, namespace, name)

    def bind(self, namespace: str, name: str, body: Any, opts: WriteOptions) -> Obj:
        """pods/binding: what the scheduler does to put a pod on a node."""
        pods = self._rt(PODS)
        target = body.get("target") if isinstance(body, dict) else None
        node = target.get("name") if isinstance(target, dict) else None
        if not node:
            raise invalid_object("Binding", "", name, [FieldError("required", "target.name")])
        old = self.require(pods, namespace, name)
        current = as_dict(old.get("spec")).get("nodeName")
        if current:
            raise ApiError(
                409,
                "Conflict",
                f"Operation cannot be fulfilled on pods/binding "
                f'"{name}": pod {name} is already assigned to node "{current}"',
                {"name": name, "kind": "pods/binding"},
            )
        new = clone(old)
        new.setdefault("spec", {})["nodeName"] = node
        self._finish_update(pods, "v1", old, new, opts, Decoded(new, [], []), None)
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }

    def token_request(self, namespace: str, name: str, body: Any) -> Obj:
        """serviceaccounts/token: a made-up token (nothing here verifies tokens)."""
        self.require(self._rt(SERVICE_ACCOUNTS), namespace, name)
        spec: Obj = {}
        if isinstance(body, dict) and isinstance(body.get("spec"), dict):
            spec = body["spec"]
        seconds = spec.get("expirationSeconds") or 3600
        if not isinstance(seconds, int) or seconds < 600:
            raise invalid_object(
                "TokenRequest",
                "authentication.k8s.io",
                name,
                [
                    FieldError(
                        "invalid",
                        "spec.expirationSeconds",
                        "may not specify a duration less than 10 minutes",
                        seconds,
                    )
                ],
            )
        token = "emulated." + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        expires = timestamp(self.now() + timedelta(seconds=seconds))
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace, "creationTimestamp": None},
            "spec": {
                "audiences": as_list(spec.get("audiences")),
                "expirationSeconds": seconds,
                "boundObjectRef": spec.get("boundObjectRef"),
            },
            "status": {"token": token, "expirationTimestamp": expires},
        }

    # -- delete, garbage collection, namespaces

    def delete(
        self, rt: ResourceType, version: str, namespace: str | None, name: str, opts: DeleteOptions
    ) -> Result:
        obj = self.require(rt, namespace, name)
        meta = meta_of(obj)
        if opts.uid is not None and opts.uid != meta.get("uid"):
            raise conflict(
                rt,
                name,
                f"Precondition failed: UID in precondition: {opts.uid}, UID "
                f"in object meta: {meta.get('uid')}",
            )
        if opts.resource_version is not None and opts.resource_version != meta.get(
            "resourceVersion"
        ):
            raise conflict(
                rt,
                name,
                "Precondition failed: ResourceVersion in precondition: "
                f"{opts.resource_version}, ResourceVersion in object meta: "
                f"{meta.get('resourceVersion')}",
            )
        if opts.dry_run:
            return Result(self.view(rt, obj, version))
        final, removed = self._delete_object(rt, obj, opts.grace_period, opts.propagation)
        if removed and not rt.returns_deleted_object:
            details: Obj = {"name": name}
            if rt.group:
                details["group"] = rt.group
            details["kind"] = rt.plural
            details["uid"] = meta.get("uid")
            return Result(
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "metadata": {},
                    "status": "Success",
                    "details": details,
                }
            )
        return Result(self.view(rt, final, version))

    def delete_collection(self, spec: WatchSpec, version: str, opts: DeleteOptions) -> list[Obj]:
        rt = spec.rt
        if rt.key == NAMESPACES:
            raise method_not_allowed()
        out: list[Obj] = []
        for obj in self.list_objects(spec).items:
            current = self.get(rt, meta_of(obj).get("namespace"), meta_of(obj)["name"])
            if current is None:
                continue  # already collected as a dependent of an earlier one
            if opts.dry_run:
                out.append(self.view(rt, current, version))
                continue
            final, _ = self._delete_object(rt, current, opts.grace_period, opts.propagation)
            out.append(self.view(rt, final, version))
        return out

    def _delete_object(
        self, rt: ResourceType, obj: Obj, grace: int | None, propagation: str
    ) -> tuple[Obj, bool]:
        """Delete as the registry does: graceful for scheduled pods, pending while finalizers
        remain, at once otherwise. Returns (object, whether it is gone)."""
        meta = meta_of(obj)
        if propagation == "Orphan":
            self._orphan_dependents(meta.get("uid", ""))
        if rt.key == NAMESPACES:
            return self._delete_namespace(obj)
        if rt.key == CRDS:
            custom = self.registry.get(self._crd_key(obj))
            if custom is not None and not custom.builtin:
                for item in list(self._objects.get(custom.key, {}).values()):
                    self._drop(custom, item)
        finalizers = as_list(meta.get("finalizers"))
        period = 0
        spec, status = as_dict(obj.get("spec")), as_dict(obj.get("status"))
        if (
            rt.key == PODS
            and spec.get("nodeName")
            and status.get("phase") not in ("Succeeded", "Failed")
        ):
            default = spec.get("terminationGracePeriodSeconds", 30)
            period = grace if grace is not None else default if isinstance(default, int) else 30
            period = 1 if period < 0 else int(period)
        if meta.get("deletionTimestamp"):
            if period < int(meta.get("deletionGracePeriodSeconds") or 0):
                if period == 0 and not finalizers:
                    return self._drop(rt, obj), True
                return self._mark_deleting(rt, obj, period), False
            return obj, False
        if period > 0 or finalizers:
            return self._mark_deleting(rt, obj, period), False
        return self._drop(rt, obj), True

    def _mark_deleting(self, rt: ResourceType, obj: Obj, period: int) -> Obj:
        new = clone(obj)
        meta = new["metadata"]
        if not meta.get("deletionTimestamp") and "generation" in meta:
            meta["generation"] += 1
        meta["deletionTimestamp"] = timestamp(self.now() + timedelta(seconds=period))
        meta["deletionGracePeriodSeconds"] = period
        return self._put(rt, new, obj, "MODIFIED")

    def _orphan_dependents(self, uid: str) -> None:
        for rkey, key in sorted(self._dependents.get(uid, set())):
            rt, obj = self.registry.get(rkey), self._objects.get(rkey, {}).get(key)
            if rt is None or obj is None:
                continue
            new = clone(obj)
            refs = [r for r in new["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
            if refs:
                new["metadata"]["ownerReferences"] = refs
            else:
                new["metadata"].pop("ownerReferences", None)
            self._put(rt, new, obj, "MODIFIED")

    def _collect_dependents(self, uid: str) -> None:
        """The garbage collector, run when an object is gone: dependents with no owner left are
        deleted (background propagation); references to the gone owner are dropped from the
        others."""
        for rkey, key in sorted(self._dependents.pop(uid, set())):
            rt, obj = self.registry.get(rkey), self._objects.get(rkey, {}).get(key)
            if rt is None or obj is None:
                continue
            refs = meta_of(obj).get("ownerReferences") or []
            alive = [r for r in refs if r.get("uid") in self._uids]
            if alive:
                if len(alive) != len(refs):
                    new = clone(obj)
                    new["metadata"]["ownerReferences"] = alive
                    self._put(rt, new, obj, "MODIFIED")
            elif not meta_of(obj).get("deletionTimestamp"):
                self._delete_object(rt, obj, None, "Background")

    def _delete_namespace(self, obj: Obj) -> tuple[Obj, bool]:
        rt = self._rt(NAMESPACES)
        name = meta_of(obj)["name"]
        if name in _PROTECTED_NAMESPACES:
            raise ApiError(
                403,
                "Forbidden",
                f'namespaces "{name}" is forbidden: this namespace may not be deleted',
                {"name": name, "kind": "namespaces"},
            )
        if not meta_of(obj).get("deletionTimestamp"):
            new = clone(obj)
            new["metadata"]["deletionTimestamp"] = timestamp(self.now())
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new.setdefault("status", {})["phase"] = "Terminating"
            obj = self._put(rt, new, obj, "MODIFIED")
            # The namespace controller's job: delete everything inside.
            for content_rt in self.registry.all():
                if not content_rt.namespaced:
                    continue
                for key in sorted(k for k in self._objects.get(content_rt.key, {}) if k[0] == name):
                    current = self._objects.get(content_rt.key, {}).get(key)
                    if current is not None and not meta_of(current).get("deletionTimestamp"):
                        self._delete_object(content_rt, current, None, "Background")
        final = self._maybe_finalize_namespace(name)
        if self.get(rt, None, name) is None:
            return (final or obj), True
        return obj, False

    def _maybe_finalize_namespace(self, namespace: str) -> Obj | None:
        rt = self._rt(NAMESPACES)
        ns = self.get(rt, None, namespace)
        if ns is None or not meta_of(ns).get("deletionTimestamp"):
            return None
        for objects in self._objects.values():
            if any(k[0] == namespace for k in objects):
                return None
        return self._drop(rt, ns)

    def _namespace_active(self, namespace: str) -> bool:
        ns = self.get(self._rt(NAMESPACES), None, namespace)
        return ns is not None and not meta_of(ns).get("deletionTimestamp")

    # -- reactions to writes (what controllers do in a real cluster, done synchronously here)

    def _after_write(self, rt: ResourceType, old: Obj | None, obj: Obj) -> None:
        if rt.key == CRDS:
            self._register_crd(obj)
        elif rt.key == NAMESPACES and old is None:
            self._ensure_default_service_account(meta_of(obj)["name"])

    def _after_removal(self, rt: ResourceType, final: Obj) -> None:
        meta = meta_of(final)
        if meta.get("uid"):
            self._collect_dependents(meta["uid"])
        if rt.key == CRDS:
            self._unregister_crd(final)
        namespace = meta.get("namespace", "")
        if (
            rt.key == SERVICE_ACCOUNTS
            and meta.get("name") == "default"
            and self._namespace_active(namespace)
        ):
            self._ensure_default_service_account(namespace)  # as the token controller does
        if rt.namespaced and namespace:
            self._maybe_finalize_namespace(namespace)

    def _ensure_default_service_account(self, namespace: str) -> None:
        rt = self._rt(SERVICE_ACCOUNTS)
        if self.get(rt, namespace, "default") is None:
            account: Obj = {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {
                    "name": "default",
                    "namespace": namespace,
                    "uid": str(uuid.uuid4()),
                    "creationTimestamp": timestamp(self.now()),
                },
            }
            self._put(rt, account, None, "ADDED")

    @staticmethod
    def _crd_key(crd: Obj) -> RKey:
        spec = as_dict(crd.get("spec"))
        return (spec.get("group", ""), as_dict(spec.get("names")).get("plural", ""))

    def _register_crd(self, crd: Obj) -> None:
        key = self._crd_key(crd)
        existing = self.registry.get(key)
        if existing is not None and existing.builtin:
            return
        established = any(
            c.get("type") == "Established" and c.get("status") == "True"
            for c in as_list(as_dict(crd.get("status")).get("conditions"))
        )
        rt = crd_resource_type(crd) if established else None
        if rt is None:
            self.registry.remove(key)
        else:
            self.registry.add(rt)

    def _unregister_crd(self, crd: Obj) -> None:
        key = self._crd_key(crd)
        rt = self.registry.get(key)
        if rt is None or rt.builtin:
            return
        for item in list(self._objects.get(key, {}).values()):
            self._drop(rt, item)
        self._objects.pop(key, None)
        self.registry.remove(key)
        for watcher in list(self._watchers):
            if watcher.spec.rt.key == key:
                watcher.close()  # the real server ends watches of a resource that went away
                self._watchers.discard(watcher)

    def objects(self, rt: ResourceType) -> Iterator[Obj]:
        """Every stored object of one resource (for tests and tools on the server's loop)."""
        yield from self._objects.get(rt.key, {}).values()


def not_found(rt: ResourceType, name: str) -> ApiError:
    details: Obj = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.plural
    return ApiError(404, "NotFound", f'{rt.group_resource} "{name}" not found', details)


def already_exists(rt: ResourceType, name: str) -> ApiError:
    details: Obj = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.plural
    return ApiError(409, "AlreadyExists", f'{rt.group_resource} "{name}" already exists', details)


def conflict(rt: ResourceType, name: str, why: str = MODIFIED_MESSAGE) -> ApiError:
    details: Obj = {"name": name}
    if rt.group:
        details["group"] = rt.group
    details["kind"] = rt.plural
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.group_resource} "{name}": {why}',
        details,
    )


def too_large(requested: int, current: int) -> ApiError:
    return ApiError(
        504,
        "Timeout",
        f"Too large resource version: {requested}, current: {current}",
        {
            "causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}
            ],
            "retryAfterSeconds": 1,
        },
    )


# --------------------------------------------------------------------------------------------
# YAML bodies


def _yaml_loader() -> type[Any]:
    import yaml

    base: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

    class Loader(base):  # type: ignore[misc]
        """Timestamps stay strings, as in sigs.k8s.io/yaml (which converts YAML to JSON)."""

    Loader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
        for first, resolvers in base.yaml_implicit_resolvers.items()
    }
    return Loader


_LOADER: type[Any] | None = None


def parse_yaml(raw: bytes) -> Any:
    """One YAML (or JSON) document as JSON values; a bad document is a 400."""
    import yaml

    global _LOADER
    if _LOADER is None:
        _LOADER = _yaml_loader()
    try:
        documents = [d for d in yaml.load_all(raw, Loader=_LOADER) if d is not None]
    except yaml.YAMLError as error:
        raise bad_request(f"error converting YAML to JSON: {error}".replace("\n", " ")) from None
    except (UnicodeDecodeError, ValueError) as error:
        raise bad_request(f"error converting YAML to JSON: {error}") from None
    except RecursionError:
        raise bad_request("error converting YAML to JSON: the document nests too deeply") from None
    if len(documents) > 1:
        raise bad_request("error converting YAML to JSON: the body holds more than one document")
    try:
        check_depth(documents[0] if documents else None)
        return _jsonable(documents[0] if documents else None)
    except ValueError as error:
        raise bad_request(f"error converting YAML to JSON: {error}") from None


def decode_json(raw: bytes) -> tuple[Any, list[str]]:
    """JSON with the duplicate keys it held (reported under fieldValidation=Strict/Warn)."""
    duplicates: list[str] = []

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in items:
            if key in out:
                duplicates.append(key)
            out[key] = value
        return out

    def no_constants(name: str) -> Any:
        raise ValueError(f"invalid character {name!r} looking for beginning of value")

    def finite(text: str) -> float:
        value = float(text)
        if math.isinf(value):
            raise ValueError(f"cannot unmarshal number {text} into a float64")
        return value

    try:
        value = json.loads(
            raw, object_pairs_hook=pairs, parse_constant=no_constants, parse_float=finite
        )
    except RecursionError:
        raise ValueError("exceeded max depth: the document nests too deeply") from None
    check_depth(value)
    return value, duplicates


MAX_DEPTH: Final = 100


def check_depth(value: Any) -> None:
    """Refuse documents nested deeper than any Kubernetes object needs (the rules here recurse)."""
    stack = [(value, 1)]
    while stack:
        current, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValueError(f"exceeded max depth: objects may nest at most {MAX_DEPTH} levels")
        if isinstance(current, dict):
            stack.extend((v, depth + 1) for v in current.values())
        elif isinstance(current, list):
            stack.extend((v, depth + 1) for v in current)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {_key_text(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        raise ValueError(f"unsupported value: {value}")
    if isinstance(value, bytes | set | tuple):
        raise ValueError(f"unsupported YAML value of type {type(value).__name__}")
    return value


def _key_text(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bool):
        return "true" if key else "false"
    if key is None:
        return "null"
    if isinstance(key, int | float):
        return str(key)
    raise ValueError(f"unsupported map key of type {type(key).__name__}")
