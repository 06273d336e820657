"""Server-side Table output: the columns `kubectl get` prints for each resource.

kubectl asks for `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` and prints the cells as
they come, so the server decides what NAME/READY/STATUS/AGE show. The column choices and cell
rules follow the real apiserver's printers for the resources the emulator serves; custom
resources use their CRD version's additionalPrinterColumns, as the real CRD table convertor does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from dew_csi.sandbox.apistore import Obj, ResourceType, as_dict, as_list, meta_of, parse_timestamp

Cells = Callable[[Obj, datetime], list[Any]]

_NAME_DESC = (
    "Name must be unique within a namespace. Is required when creating resources, although some "
    "resources may allow a client to request the generation of an appropriate name "
    "automatically. Name is primarily intended for creation idempotence and configuration "
    "definition. Cannot be updated."
)
_AGE_DESC = (
    "CreationTimestamp is a timestamp representing the server time when this object was created. "
    "It is not guaranteed to be set in happens-before order across separate operations. Clients "
    "may not set this value. It is represented in RFC3339 form and is in UTC."
)


def format_age(delta: timedelta) -> str:
    """A duration the way kubectl's AGE column shows it (`5s`, `3m20s`, `20h`, `18d`)."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        rest = seconds % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = seconds // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y{days}d" if days else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def age(value: Any, now: datetime) -> str:
    when = parse_timestamp(value)
    return "<unknown>" if when is None else format_age(now - when)


def column(
    name: str, kind: str = "string", *, fmt: str = "", priority: int = 0, description: str = ""
) -> Obj:
    return {
        "name": name,
        "type": kind,
        "format": fmt,
        "description": description or name,
        "priority": priority,
    }


NAME = column("Name", fmt="name", description=_NAME_DESC)
AGE = column("Age", description=_AGE_DESC)


def _created(obj: Obj, now: datetime) -> str:
    return age(meta_of(obj).get("creationTimestamp"), now)


def _name(obj: Obj) -> str:
    return str(meta_of(obj).get("name", ""))


def _none(value: Any) -> Any:
    return "<none>" if value in (None, "", []) else value


def _pod_cells(pod: Obj, now: datetime) -> list[Any]:
    """READY, STATUS and RESTARTS as kubectl's pod printer computes them."""
    spec, status = as_dict(pod.get("spec")), as_dict(pod.get("status"))
    total = len(as_list(spec.get("containers")))
    reason = status.get("reason") or status.get("phase") or ""
    restarts = ready = 0
    initializing = False
    init_statuses = as_list(status.get("initContainerStatuses"))
    for index, cs in enumerate(init_statuses):
        restarts += int(cs.get("restartCount") or 0)
        state = as_dict(cs.get("state"))
        terminated, waiting = state.get("terminated"), state.get("waiting")
        if terminated and terminated.get("exitCode") == 0:
            continue
        if terminated:
            reason = "Init:" + (
                terminated.get("reason") or f"ExitCode:{terminated.get('exitCode')}"
            )
        elif waiting and waiting.get("reason") and waiting["reason"] != "PodInitializing":
            reason = "Init:" + waiting["reason"]
        else:
            reason = f"Init:{index}/{len(spec.get('initContainers') or [])}"
        initializing = True
        break
    if not initializing:
        restarts = 0
        has_running = False
        for cs in reversed(as_list(status.get("containerStatuses"))):
            restarts += int(cs.get("restartCount") or 0)
            state = as_dict(cs.get("state"))
            waiting, terminated = state.get("waiting"), state.get("terminated")
            if waiting and waiting.get("reason"):
                reason = waiting["reason"]
            elif terminated and terminated.get("reason"):
                reason = terminated["reason"]
            elif terminated is not None:
                signal = terminated.get("signal")
                reason = f"Signal:{signal}" if signal else f"ExitCode:{terminated.get('exitCode')}"
            elif cs.get("ready") and "running" in state:
                has_running = True
                ready += 1
        if reason == "Completed" and has_running:
            conditions = as_list(status.get("conditions"))
            is_ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in conditions
            )
            reason = "Running" if is_ready else "NotReady"
    meta = meta_of(pod)
    if meta.get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    return [
        _name(pod),
        f"{ready}/{total}",
        reason,
        restarts,
        _created(pod, now),
        _none(status.get("podIP")),
        _none(spec.get("nodeName")),
        _none(status.get("nominatedNodeName")),
        "<none>",
    ]


def _containers(obj: Obj) -> tuple[str, str]:
    template = (as_dict(obj.get("spec")).get("template") or {}).get("spec") or {}
    containers = as_list(template.get("containers"))
    return (
        ",".join(str(c.get("name", "")) for c in containers),
        ",".join(str(c.get("image", "")) for c in containers),
    )


def _selector_text(selector: Any) -> str:
    if not isinstance(selector, dict):
        return "<none>"
    parts = [f"{k}={v}" for k, v in as_dict(selector.get("matchLabels")).items()]
    for expr in as_list(selector.get("matchExpressions")):
        parts.append(
            f"{expr.get('key')} {str(expr.get('operator', '')).lower()} "
            f"({','.join(expr.get('values') or [])})"
        )
    return ",".join(parts) or "<none>"


def _deployment_cells(obj: Obj, now: datetime) -> list[Any]:
    spec, status = as_dict(obj.get("spec")), as_dict(obj.get("status"))
    names, images = _containers(obj)
    return [
        _name(obj),
        f"{status.get('readyReplicas', 0)}/{spec.get('replicas', 0)}",
        status.get("updatedReplicas", 0),
        status.get("availableReplicas", 0),
        _created(obj, now),
        names,
        images,
        _selector_text(spec.get("selector")),
    ]


def _replica_set_cells(obj: Obj, now: datetime) -> list[Any]:
    spec, status = as_dict(obj.get("spec")), as_dict(obj.get("status"))
    names, images = _containers(obj)
    return [
        _name(obj),
        spec.get("replicas", 0),
        status.get("replicas", 0),
        status.get("readyReplicas", 0),
        _created(obj, now),
        names,
        images,
        _selector_text(spec.get("selector")),
    ]


def _daemon_set_cells(obj: Obj, now: datetime) -> list[Any]:
    status = as_dict(obj.get("status"))
    template = (as_dict(obj.get("spec")).get("template") or {}).get("spec") or {}
    selector = ",".join(f"{k}={v}" for k, v in as_dict(template.get("nodeSelector")).items())
    return [
        _name(obj),
        status.get("desiredNumberScheduled", 0),
        status.get("currentNumberScheduled", 0),
        status.get("numberReady", 0),
        status.get("updatedNumberScheduled", 0),
        status.get("numberAvailable", 0),
        selector or "<none>",
        _created(obj, now),
    ]


def _node_cells(obj: Obj, now: datetime) -> list[Any]:
    status = as_dict(obj.get("status"))
    ready = next((c for c in as_list(status.get("conditions")) if c.get("type") == "Ready"), None)
    state = "Unknown"
    if ready is not None:
        state = "Ready" if ready.get("status") == "True" else "NotReady"
    if as_dict(obj.get("spec")).get("unschedulable"):
        state += ",SchedulingDisabled"
    prefix = "node-role.kubernetes.io/"
    roles = sorted(
        k[len(prefix) :] for k in (meta_of(obj).get("labels") or {}) if k.startswith(prefix)
    )
    version = as_dict(status.get("nodeInfo")).get("kubeletVersion", "")
    return [_name(obj), state, ",".join(roles) or "<none>", _created(obj, now), version]


def _event_cells(obj: Obj, now: datetime) -> list[Any]:
    """The real printEvent, wide (the server always sends the wide cells; kubectl shows the
    priority-1 ones, FIRST SEEN and COUNT among them, with `-o wide`)."""
    involved = as_dict(obj.get("involvedObject"))
    series = as_dict(obj.get("series"))
    first = age(obj.get("firstTimestamp") or obj.get("eventTime"), now)
    last = age(obj["lastTimestamp"], now) if obj.get("lastTimestamp") else first
    count = obj.get("count") or 1  # singleton events of the events.k8s.io API carry none
    if series:
        last = age(series.get("lastObservedTime"), now)
        count = series.get("count") or 0
    kind = str(involved.get("kind", "")).lower()
    source = as_dict(obj.get("source"))
    component = source.get("component") or obj.get("reportingComponent") or ""
    instance = source.get("host") or obj.get("reportingInstance") or ""
    return [
        last,
        obj.get("type", ""),
        obj.get("reason", ""),
        f"{kind}/{involved['name']}" if involved.get("name") else kind,
        involved.get("fieldPath", ""),
        f"{component}, {instance}" if instance else component,
        str(obj.get("message", "")).strip(),
        first,
        int(count),
        _name(obj),
    ]


_BUILTIN: dict[tuple[str, str], tuple[list[Obj], Cells]] = {
    ("", "pods"): (
        [
            NAME,
            column("Ready"),
            column("Status"),
            column("Restarts"),
            AGE,
            column("IP", priority=1),
            column("Node", priority=1),
            column("Nominated Node", priority=1),
            column("Readiness Gates", priority=1),
        ],
        _pod_cells,
    ),
    ("", "serviceaccounts"): (
        [NAME, column("Secrets", "integer"), AGE],
        lambda o, now: [_name(o), len(as_list(o.get("secrets"))), _created(o, now)],
    ),
    ("", "secrets"): (
        [NAME, column("Type"), column("Data", "integer"), AGE],
        lambda o, now: [_name(o), o.get("type", ""), len(as_dict(o.get("data"))), _created(o, now)],
    ),
    ("", "configmaps"): (
        [NAME, column("Data", "integer"), AGE],
        lambda o, now: [
            _name(o),
            len(as_dict(o.get("data"))) + len(as_dict(o.get("binaryData"))),
            _created(o, now),
        ],
    ),
    ("", "namespaces"): (
        [NAME, column("Status"), AGE],
        lambda o, now: [_name(o), as_dict(o.get("status")).get("phase", ""), _created(o, now)],
    ),
    ("", "nodes"): (
        [NAME, column("Status"), column("Roles"), AGE, column("Version")],
        _node_cells,
    ),
    ("", "events"): (
        [
            column("Last Seen"),
            column("Type"),
            column("Reason"),
            column("Object"),
            column("Subobject", priority=1),
            column("Source", priority=1),
            column("Message"),
            column("First Seen", priority=1),
            column("Count", priority=1),
            column("Name", fmt="name", priority=1, description=_NAME_DESC),
        ],
        _event_cells,
    ),
    ("apps", "deployments"): (
        [
            NAME,
            column("Ready"),
            column("Up-to-date", "integer"),
            column("Available", "integer"),
            AGE,
            column("Containers", priority=1),
            column("Images", priority=1),
            column("Selector", priority=1),
        ],
        _deployment_cells,
    ),
    ("apps", "replicasets"): (
        [
            NAME,
            column("Desired", "integer"),
            column("Current", "integer"),
            column("Ready", "integer"),
            AGE,
            column("Containers", priority=1),
            column("Images", priority=1),
            column("Selector", priority=1),
        ],
        _replica_set_cells,
    ),
    ("apps", "daemonsets"): (
        [
            NAME,
            column("Desired", "integer"),
            column("Current", "integer"),
            column("Ready", "integer"),
            column("Up-to-date", "integer"),
            column("Available", "integer"),
            column("Node Selector"),
            AGE,
        ],
        _daemon_set_cells,
    ),
    ("apiextensions.k8s.io", "customresourcedefinitions"): (
        [NAME, column("Created At", "date")],
        lambda o, now: [_name(o), meta_of(o).get("creationTimestamp", "")],
    ),
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations"): (
        [NAME, column("Webhooks", "integer"), AGE],
        lambda o, now: [_name(o), len(as_list(o.get("webhooks"))), _created(o, now)],
    ),
}


_PATH_TOKEN = re.compile(r"\.([^.\[\]]+)|\[(\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]")


def json_path(obj: Any, path: str) -> Any:
    """Evaluate the simple JSONPath forms printer columns use: `.a.b`, `.a[0]`, `.a['k.x']`.
    None when a step is missing."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    position = 0
    current = obj
    while position < len(path):
        match = _PATH_TOKEN.match(path, position)
        if match is None:
            return None
        position = match.end()
        key, index, quoted, dquoted = match.groups()
        if index is not None:
            if not isinstance(current, list) or int(index) >= len(current):
                return None
            current = current[int(index)]
            continue
        name = key if key is not None else (quoted if quoted is not None else dquoted)
        if not isinstance(current, dict) or name not in current:
            return None
        current = current[name]
    return current


def _custom_cell(kind: str, value: Any, now: datetime) -> Any:
    """A printer-column cell as the CRD table convertor produces it: typed, dates as ages."""
    if value is None:
        return None
    if kind == "string":
        return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
    if kind == "integer":
        return (
            int(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        )
    if kind == "number":
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if kind == "boolean":
        return value if isinstance(value, bool) else None
    if kind == "date":
        if not isinstance(value, str):
            return None
        return "<invalid>" if parse_timestamp(value) is None else age(value, now)
    return None


def columns_for(rt: ResourceType, version: str) -> list[Obj]:
    if rt.builtin:
        return _BUILTIN[rt.key][0] if rt.key in _BUILTIN else [NAME, AGE]
    defined = rt.columns.get(version) or []
    if not defined:
        return [NAME, column("Age", "date", description=_AGE_DESC)]
    return [NAME] + [
        column(
            str(c.get("name", "")),
            str(c.get("type", "string")),
            fmt=str(c.get("format", "")),
            priority=int(c.get("priority", 0)),
            description=str(
                c.get("description")
                or f"Custom resource definition column (in JSONPath format): "
                f"{c.get('jsonPath', '')}"
            ),
        )
        for c in defined
    ]


def cells_for(rt: ResourceType, version: str, obj: Obj, now: datetime) -> list[Any]:
    """One row's cells. Built-ins are stored without a schema, so a field of an unexpected type
    shows as <invalid> instead of failing the whole listing."""
    try:
        return _cells(rt, version, obj, now)
    except (AttributeError, TypeError, ValueError, KeyError):
        return [_name(obj)] + ["<invalid>"] * (len(columns_for(rt, version)) - 1)


def _cells(rt: ResourceType, version: str, obj: Obj, now: datetime) -> list[Any]:
    if rt.builtin:
        if rt.key in _BUILTIN:
            return _BUILTIN[rt.key][1](obj, now)
        return [_name(obj), _created(obj, now)]
    defined = rt.columns.get(version) or []
    if not defined:
        return [_name(obj), _created(obj, now)]
    return [_name(obj)] + [
        _custom_cell(str(c.get("type", "string")), json_path(obj, str(c.get("jsonPath", ""))), now)
        for c in defined
    ]


def row_object(obj: Obj, include: str) -> Obj | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta_of(obj),
    }


def table(
    rt: ResourceType,
    version: str,
    objects: list[Obj],
    *,
    now: datetime,
    include: str,
    metadata: Obj,
    with_columns: bool = True,
) -> Obj:
    """A meta.k8s.io/v1 Table of `objects` (already in the served version)."""
    rows = []
    for obj in objects:
        row: Obj = {"cells": cells_for(rt, version, obj, now)}
        embedded = row_object(obj, include)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": metadata,
        "columnDefinitions": columns_for(rt, version) if with_columns else [],
        "rows": rows,
    }
