"""The sandbox's workload controllers: Deployment -> ReplicaSet -> Pods.

Enough of kube-controller-manager for the guide's `kubectl apply -f deployment.yaml` and
`kubectl get deploy,rs,pod`:

* a Deployment owns one ReplicaSet per pod template, named `<deployment>-<pod-template-hash>`
  (the hash of the template, 10 characters from the alphabet Kubernetes uses), labelled and
  selected by `pod-template-hash`, with a controller ownerReference to the Deployment and the
  `deployment.kubernetes.io/revision` annotation;
* the current ReplicaSet is scaled to `spec.replicas` and every older one to 0 at the same time
  (a simple recreate; no surge/unavailability accounting), old ones beyond
  `revisionHistoryLimit` are deleted; going back to an earlier template reuses its ReplicaSet;
* a ReplicaSet creates pods with `generateName: <replicaset>-` (the API server adds five
  random characters) and a controller ownerReference, and deletes the surplus (unscheduled, then
  not ready, then newest first);
* ReplicaSet and Deployment status (replicas, readyReplicas, availableReplicas, updatedReplicas,
  observedGeneration, the Available and Progressing conditions) follow pod readiness, so
  `kubectl get deploy` shows `1/1` once the kubelet reports the pod ready;
* Events as the real controllers record them (`ScalingReplicaSet`, `SuccessfulCreate`,
  `SuccessfulDelete`, `FailedCreate`).

Deleting a Deployment needs nothing here: the API emulator's garbage collector follows the
ownerReferences. Orphaned pods are not adopted. Reconciles read fresh state from the API (not the
watch caches, which only trigger them), so a create is never repeated because a cache lagged.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import signal
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from dew_csi import kube
from dew_csi.durations import parse_duration
from dew_csi.logs import fields, setup_logging

log = logging.getLogger(__name__)

KubeObject = kube.KubeObject
WorkKey = tuple[str, str, str]  # (kind, namespace, name)

TEMPLATE_HASH_LABEL: Final = "pod-template-hash"
REVISION_ANNOTATION: Final = "deployment.kubernetes.io/revision"
DESIRED_ANNOTATION: Final = "deployment.kubernetes.io/desired-replicas"
MAX_ANNOTATION: Final = "deployment.kubernetes.io/max-replicas"
# The alphabet Kubernetes encodes generated name parts with (no vowels, no look-alikes).
SAFE_ALPHABET: Final = "bcdfghjklmnpqrstvwxz2456789"
DEPLOYMENT_KIND: Final = "deploy"
REPLICA_SET_KIND: Final = "rs"


# --------------------------------------------------------------------------- pure helpers


def _fnv1a_32(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value ^= byte
        value = (value * 0x01000193) & 0xFFFFFFFF
    return value


def template_hash(template: Mapping[str, Any], collision_count: int = 0) -> str:
    """The pod-template-hash: FNV-1a of the template (and the collision count, which changes
    the name when two templates collide), its decimal digits encoded into the safe alphabet as
    Kubernetes does; zero-padded so it is always 10 characters."""
    canonical = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        canonical += str(collision_count).encode()
    digits = f"{_fnv1a_32(canonical):010d}"
    return "".join(SAFE_ALPHABET[ord(char) % len(SAFE_ALPHABET)] for char in digits)


def controller_uid(obj: Mapping[str, Any]) -> str | None:
    """The uid of the object's controller (the ownerReference with controller: true)."""
    for reference in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if reference.get("controller"):
            return str(reference.get("uid"))
    return None


def _controller_reference(obj: Mapping[str, Any], api_version: str, kind: str) -> KubeObject:
    meta = obj["metadata"]
    return {
        "apiVersion": api_version,
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def is_pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in (pod.get("status") or {}).get("conditions") or []
    )


def _is_active(pod: Mapping[str, Any]) -> bool:
    return not (pod.get("metadata") or {}).get("deletionTimestamp") and (
        pod.get("status") or {}
    ).get("phase") not in ("Succeeded", "Failed")


def pods_to_delete(pods: list[KubeObject], count: int) -> list[KubeObject]:
    """The `count` pods a scale-down removes: unscheduled, then pending, then not ready, and
    among equals the newest."""
    phase_rank = {"Pending": 0, "Unknown": 1, "Running": 2}
    newest_first = sorted(
        pods,
        key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""),
        reverse=True,
    )
    ranked = sorted(  # stable: equal ranks keep newest-first order
        newest_first,
        key=lambda p: (
            1 if (p.get("spec") or {}).get("nodeName") else 0,
            phase_rank.get(str((p.get("status") or {}).get("phase")), 0),
            1 if is_pod_ready(p) else 0,
        ),
    )
    return ranked[:count]


def _replicas(obj: Mapping[str, Any]) -> int:
    value = (obj.get("spec") or {}).get("replicas")
    return 1 if value is None else int(value)


def _revision(obj: Mapping[str, Any]) -> int:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    try:
        return int(annotations.get(REVISION_ANNOTATION, "0"))
    except ValueError:
        return 0


def _scaled_value(value: Any, total: int, *, round_up: bool) -> int:
    """maxSurge/maxUnavailable: an int, or a percentage of `total`."""
    if value is None:
        return 0
    text = str(value)
    if text.endswith("%"):
        share = total * int(text[:-1]) / 100
        return math.ceil(share) if round_up else math.floor(share)
    return int(text)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _omit_zero(status: Mapping[str, Any], keep: tuple[str, ...] = ()) -> KubeObject:
    """Zero counts are omitted (omitempty), as the real API serialises them; as a merge patch,
    None removes a count that dropped to zero."""
    return {k: (v if v or k in keep else None) for k, v in status.items()}


def _needs_write(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    return any(current.get(k) != v for k, v in desired.items())


def _merge_condition(
    previous: list[Mapping[str, Any]], kind: str, status: bool, reason: str, message: str
) -> KubeObject:
    """A workload condition; lastTransitionTime moves with its status, lastUpdateTime with
    its reason or message."""
    now = _now()
    text = "True" if status else "False"
    old = next((c for c in previous if c.get("type") == kind), {})
    same_status = old.get("status") == text
    same_text = same_status and old.get("reason") == reason and old.get("message") == message
    return {
        "type": kind,
        "status": text,
        "lastUpdateTime": old.get("lastUpdateTime") if same_text else now,
        "lastTransitionTime": old.get("lastTransitionTime") if same_status else now,
        "reason": reason,
        "message": message,
    }


class _Retry(Exception):
    """Reconcile again later (the reason is in the message)."""


# --------------------------------------------------------------------------- the controllers


class WorkloadControllers:
    """Use as `async with WorkloadControllers(client): ...` or start()/stop()."""

    def __init__(
        self,
        client: kube.Kube,
        *,
        resync: float = 30.0,
        retry_initial: float = 0.5,
        retry_max: float = 8.0,
    ) -> None:
        self._kube = client
        self._resync = resync
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._deployments = kube.WatchCache(client, kube.DEPLOYMENT)
        self._replica_sets = kube.WatchCache(client, kube.REPLICA_SET)
        self._pods = kube.WatchCache(client, kube.POD)
        self._queue: dict[WorkKey, None] = {}
        self._ready = asyncio.Event()
        self._failures: dict[WorkKey, int] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._deployments.add_handler(self._on_deployment)
        self._replica_sets.add_handler(self._on_replica_set)
        self._pods.add_handler(self._on_pod)
        for cache in (self._deployments, self._replica_sets, self._pods):
            await cache.start()
        self._tasks = [
            asyncio.create_task(self._work(), name="controllers-work"),
            asyncio.create_task(self._resync_loop(), name="controllers-resync"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        for cache in (self._pods, self._replica_sets, self._deployments):
            await cache.stop()

    async def __aenter__(self) -> WorkloadControllers:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def idle(self, timeout: float = 10.0) -> None:
        """Wait until the work queue is empty (for tests)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._queue or self._ready.is_set():
            if loop.time() > deadline:
                raise TimeoutError("controllers still busy")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------ triggers

    def _enqueue(self, key: WorkKey) -> None:
        self._queue[key] = None
        self._ready.set()

    async def _on_deployment(self, event: kube.CacheEvent) -> None:
        namespace, name = kube.object_key(event.obj)
        self._enqueue((DEPLOYMENT_KIND, namespace, name))

    async def _on_replica_set(self, event: kube.CacheEvent) -> None:
        namespace, name = kube.object_key(event.obj)
        self._enqueue((REPLICA_SET_KIND, namespace, name))
        owner = self._owner_name(event.obj, "Deployment")
        if owner:
            self._enqueue((DEPLOYMENT_KIND, namespace, owner))

    async def _on_pod(self, event: kube.CacheEvent) -> None:
        owner = self._owner_name(event.obj, "ReplicaSet")
        if owner:
            namespace, _ = kube.object_key(event.obj)
            self._enqueue((REPLICA_SET_KIND, namespace, owner))

    @staticmethod
    def _owner_name(obj: Mapping[str, Any], kind: str) -> str | None:
        for reference in (obj.get("metadata") or {}).get("ownerReferences") or []:
            if reference.get("controller") and reference.get("kind") == kind:
                return str(reference.get("name"))
        return None

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self._resync)
            for obj in self._deployments.items():
                namespace, name = kube.object_key(obj)
                self._enqueue((DEPLOYMENT_KIND, namespace, name))
            for obj in self._replica_sets.items():
                namespace, name = kube.object_key(obj)
                self._enqueue((REPLICA_SET_KIND, namespace, name))

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._ready.wait()
            while self._queue:
                key = next(iter(self._queue))
                del self._queue[key]
                try:
                    if key[0] == DEPLOYMENT_KIND:
                        await self._sync_deployment(key[1], key[2])
                    else:
                        await self._sync_replica_set(key[1], key[2])
                    self._failures.pop(key, None)
                except (kube.KubeError, _Retry) as error:
                    failures = self._failures.get(key, 0)
                    self._failures[key] = failures + 1
                    delay = min(self._retry_max, self._retry_initial * 2.0 ** min(failures, 30))
                    log.warning(
                        "reconcile failed; retrying",
                        extra=fields(
                            object=f"{key[0]} {key[1]}/{key[2]}",
                            error=getattr(error, "message", str(error)),
                            retry_in=delay,
                        ),
                    )
                    loop.call_later(delay, self._enqueue, key)
                except Exception:
                    log.exception("reconcile crashed", extra=fields(object="/".join(key)))
            self._ready.clear()

    # ------------------------------------------------------------------ ReplicaSet

    async def _sync_replica_set(self, namespace: str, name: str) -> None:
        replica_set = await self._kube.find(kube.REPLICA_SET, name, namespace)
        if replica_set is None or replica_set["metadata"].get("deletionTimestamp"):
            return
        uid = replica_set["metadata"]["uid"]
        pods, _ = await self._kube.list_objects(kube.POD, namespace)
        active = [p for p in pods if controller_uid(p) == uid and _is_active(p)]
        wanted = _replicas(replica_set)
        if len(active) < wanted:
            created = [await self._create_pod(replica_set) for _ in range(wanted - len(active))]
            if not await self._still_there(kube.REPLICA_SET, replica_set):
                await self._undo(kube.POD, created)
                return
            active += created
        elif len(active) > wanted:
            for pod in pods_to_delete(active, len(active) - wanted):
                await self._kube.delete(kube.POD, pod["metadata"]["name"], namespace)
                await self._event(
                    replica_set,
                    "SuccessfulDelete",
                    f"Deleted pod: {pod['metadata']['name']}",
                    component="replicaset-controller",
                )
                active.remove(pod)
        ready = sum(1 for p in active if is_pod_ready(p))
        status = _omit_zero(
            {
                "replicas": len(active),
                "fullyLabeledReplicas": len(active),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "observedGeneration": replica_set["metadata"].get("generation", 1),
            },
            keep=("replicas",),
        )
        if _needs_write(replica_set.get("status") or {}, status):
            await self._kube.replace_status(
                kube.REPLICA_SET,
                {"metadata": {"name": name, "namespace": namespace}, "status": status},
            )

    async def _create_pod(self, replica_set: KubeObject) -> KubeObject:
        meta = replica_set["metadata"]
        template = (replica_set.get("spec") or {}).get("template") or {}
        template_meta = template.get("metadata") or {}
        pod_meta: KubeObject = {
            "generateName": f"{meta['name']}-",
            "namespace": meta["namespace"],
            "labels": dict(template_meta.get("labels") or {}),
            "ownerReferences": [_controller_reference(replica_set, "apps/v1", "ReplicaSet")],
        }
        if template_meta.get("annotations"):
            pod_meta["annotations"] = dict(template_meta["annotations"])
        try:
            pod = await self._kube.create(
                kube.POD, {"metadata": pod_meta, "spec": template.get("spec") or {}}
            )
        except kube.KubeError as error:
            await self._event(
                replica_set,
                "FailedCreate",
                f"Error creating: {error.message}",
                warning=True,
                component="replicaset-controller",
            )
            raise _Retry(
                f"cannot create a pod for ReplicaSet {meta['name']}: {error.message}"
            ) from None
        await self._event(
            replica_set,
            "SuccessfulCreate",
            f"Created pod: {pod['metadata']['name']}",
            component="replicaset-controller",
        )
        return pod

    # ------------------------------------------------------------------ Deployment

    async def _sync_deployment(self, namespace: str, name: str) -> None:
        deployment = await self._kube.find(kube.DEPLOYMENT, name, namespace)
        if deployment is None or deployment["metadata"].get("deletionTimestamp"):
            return
        uid = deployment["metadata"]["uid"]
        listed, _ = await self._kube.list_objects(kube.REPLICA_SET, namespace)
        owned = [rs for rs in listed if controller_uid(rs) == uid]
        spec = deployment.get("spec") or {}
        status = deployment.get("status") or {}
        collisions = int(status.get("collisionCount") or 0)
        pod_hash = template_hash(spec.get("template") or {}, collisions)
        current = next(
            (
                rs
                for rs in owned
                if (rs["metadata"].get("labels") or {}).get(TEMPLATE_HASH_LABEL) == pod_hash
            ),
            None,
        )
        if spec.get("paused"):
            await self._write_deployment_status(deployment, owned, current, collisions)
            return
        if current is None:
            current = await self._create_replica_set(deployment, owned, pod_hash, collisions)
            if current is None:
                return  # a name collision: the status write above requeues with a new hash
            if not await self._still_there(kube.DEPLOYMENT, deployment):
                await self._undo(kube.REPLICA_SET, [current])
                return
            owned.append(current)
        elif _revision(current) < max((_revision(rs) for rs in owned), default=0):
            # Back to an earlier template: its ReplicaSet becomes the newest revision again.
            current = await self._kube.patch(
                kube.REPLICA_SET,
                current["metadata"]["name"],
                {
                    "metadata": {
                        "annotations": {REVISION_ANNOTATION: str(self._next_revision(owned))}
                    }
                },
                namespace,
            )
            owned = [
                current if rs["metadata"]["uid"] == current["metadata"]["uid"] else rs
                for rs in owned
            ]
        wanted = _replicas(deployment)
        for index, rs in enumerate(owned):
            target = wanted if rs["metadata"]["uid"] == current["metadata"]["uid"] else 0
            if _replicas(rs) != target:
                owned[index] = await self._scale(deployment, rs, target)
        await self._clean_up_history(deployment, owned, current)
        await self._write_deployment_status(deployment, owned, current, collisions)

    async def _still_there(self, resource: kube.Resource, owner: KubeObject) -> bool:
        """Whether `owner` (this very object, by uid) still exists and is not being deleted."""
        meta = owner["metadata"]
        current = await self._kube.find(resource, meta["name"], meta["namespace"])
        return (
            current is not None
            and current["metadata"]["uid"] == meta["uid"]
            and not current["metadata"].get("deletionTimestamp")
        )

    async def _undo(self, resource: kube.Resource, created: list[KubeObject]) -> None:
        """Delete what was just created for an owner that went away meanwhile. (The real
        garbage collector deletes dependents whose owner is gone; the emulator only collects
        when an owner is removed, so a create that raced the removal would stay forever.)"""
        for obj in created:
            await self._kube.delete(resource, obj["metadata"]["name"], obj["metadata"]["namespace"])
        log.info(
            "owner went away; removed what was created for it", extra=fields(count=len(created))
        )

    @staticmethod
    def _next_revision(owned: list[KubeObject]) -> int:
        return max((_revision(rs) for rs in owned), default=0) + 1

    async def _create_replica_set(
        self,
        deployment: KubeObject,
        owned: list[KubeObject],
        pod_hash: str,
        collisions: int,
    ) -> KubeObject | None:
        meta, spec = deployment["metadata"], deployment.get("spec") or {}
        template = spec.get("template") or {}
        template_meta = dict(template.get("metadata") or {})
        labels = {**(template_meta.get("labels") or {}), TEMPLATE_HASH_LABEL: pod_hash}
        template_meta["labels"] = labels
        selector = dict(spec.get("selector") or {})
        selector["matchLabels"] = {
            **(selector.get("matchLabels") or {}),
            TEMPLATE_HASH_LABEL: pod_hash,
        }
        wanted = _replicas(deployment)
        surge = _scaled_value(
            ((spec.get("strategy") or {}).get("rollingUpdate") or {}).get("maxSurge"),
            wanted,
            round_up=True,
        )
        name = f"{meta['name']}-{pod_hash}"
        replica_set = {
            "metadata": {
                "name": name,
                "namespace": meta["namespace"],
                "labels": labels,
                "annotations": {
                    DESIRED_ANNOTATION: str(wanted),
                    MAX_ANNOTATION: str(wanted + surge),
                    REVISION_ANNOTATION: str(self._next_revision(owned)),
                },
                "ownerReferences": [_controller_reference(deployment, "apps/v1", "Deployment")],
            },
            "spec": {
                "replicas": 0,
                "minReadySeconds": int(spec.get("minReadySeconds") or 0),
                "selector": selector,
                "template": {"metadata": template_meta, "spec": template.get("spec") or {}},
            },
        }
        try:
            created = await self._kube.create(kube.REPLICA_SET, replica_set)
        except kube.AlreadyExists:
            existing = await self._kube.get(kube.REPLICA_SET, name, meta["namespace"])
            if controller_uid(existing) == meta["uid"]:
                return existing
            # Someone else's ReplicaSet has this name: change the hash, as Kubernetes does.
            await self._kube.replace_status(
                kube.DEPLOYMENT,
                {
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                    "status": {"collisionCount": collisions + 1},
                },
            )
            return None
        log.info("created ReplicaSet", extra=fields(replicaset=f"{meta['namespace']}/{name}"))
        return created

    async def _scale(self, deployment: KubeObject, replica_set: KubeObject, to: int) -> KubeObject:
        rs_meta = replica_set["metadata"]
        before = _replicas(replica_set)
        scaled = await self._kube.patch(
            kube.REPLICA_SET,
            rs_meta["name"],
            {
                "metadata": {"annotations": {DESIRED_ANNOTATION: str(_replicas(deployment))}},
                "spec": {"replicas": to},
            },
            rs_meta["namespace"],
        )
        if to > before:
            message = f"Scaled up replica set {rs_meta['name']} to {to}"
        else:
            message = f"Scaled down replica set {rs_meta['name']} to {to} from {before}"
        await self._event(
            deployment, "ScalingReplicaSet", message, component="deployment-controller"
        )
        return scaled

    async def _clean_up_history(
        self, deployment: KubeObject, owned: list[KubeObject], current: KubeObject
    ) -> None:
        """Delete old, empty ReplicaSets beyond revisionHistoryLimit, oldest first."""
        limit = (deployment.get("spec") or {}).get("revisionHistoryLimit")
        limit = 10 if limit is None else int(limit)
        old = [
            rs
            for rs in owned
            if rs["metadata"]["uid"] != current["metadata"]["uid"]
            and _replicas(rs) == 0
            and not (rs.get("status") or {}).get("replicas")
        ]
        old.sort(key=_revision)
        for rs in old[: max(0, len(old) - limit)]:
            await self._kube.delete(
                kube.REPLICA_SET, rs["metadata"]["name"], rs["metadata"]["namespace"]
            )
            owned.remove(rs)

    async def _write_deployment_status(
        self,
        deployment: KubeObject,
        owned: list[KubeObject],
        current: KubeObject | None,
        collisions: int,
    ) -> None:
        meta, spec = deployment["metadata"], deployment.get("spec") or {}
        old_status = deployment.get("status") or {}
        wanted = _replicas(deployment)

        def count(rs: Mapping[str, Any], key: str) -> int:
            return int((rs.get("status") or {}).get(key) or 0)

        replicas = sum(count(rs, "replicas") for rs in owned)
        ready = sum(count(rs, "readyReplicas") for rs in owned)
        available = sum(count(rs, "availableReplicas") for rs in owned)
        updated = count(current, "replicas") if current is not None else 0
        strategy = spec.get("strategy") or {}
        max_unavailable = (
            0
            if strategy.get("type") == "Recreate"
            else _scaled_value(
                (strategy.get("rollingUpdate") or {}).get("maxUnavailable"),
                wanted,
                round_up=False,
            )
        )
        previous = list(old_status.get("conditions") or [])
        is_available = available >= wanted - max_unavailable
        conditions = [
            _merge_condition(
                previous,
                "Available",
                is_available,
                "MinimumReplicasAvailable" if is_available else "MinimumReplicasUnavailable",
                "Deployment has minimum availability."
                if is_available
                else "Deployment does not have minimum availability.",
            )
        ]
        if current is not None:
            rs_name = current["metadata"]["name"]
            complete = updated == wanted and available == wanted and replicas == wanted
            conditions.append(
                _merge_condition(
                    previous,
                    "Progressing",
                    True,
                    "NewReplicaSetAvailable" if complete else "ReplicaSetUpdated",
                    f'ReplicaSet "{rs_name}" has successfully progressed.'
                    if complete
                    else f'ReplicaSet "{rs_name}" is progressing.',
                )
            )
        status = _omit_zero(
            {
                "observedGeneration": meta.get("generation", 1),
                "replicas": replicas,
                "updatedReplicas": updated,
                "readyReplicas": ready,
                "availableReplicas": available,
                "unavailableReplicas": max(wanted - available, 0),
                "collisionCount": collisions,
            }
        )
        status["conditions"] = conditions
        comparable = {k: v for k, v in status.items() if k != "conditions"}
        if _needs_write(old_status, comparable) or _conditions_differ(previous, conditions):
            await self._kube.replace_status(
                kube.DEPLOYMENT,
                {
                    "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                    "status": status,
                },
            )

    # ------------------------------------------------------------------ events

    async def _event(
        self,
        obj: KubeObject,
        reason: str,
        message: str,
        *,
        component: str,
        warning: bool = False,
    ) -> None:
        meta = obj["metadata"]
        resource = kube.DEPLOYMENT if component == "deployment-controller" else kube.REPLICA_SET
        try:
            await self._kube.record_event(
                kube.involved_object(resource, meta),
                reason=reason,
                message=message,
                warning=warning,
                component=component,
            )
        except kube.KubeError as error:
            log.warning(
                "could not record an event", extra=fields(reason=reason, error=error.message)
            )


def _conditions_differ(old: list[Mapping[str, Any]], new: list[KubeObject]) -> bool:
    keys = ("type", "status", "reason", "message")
    return [tuple(c.get(k) for k in keys) for c in old] != [
        tuple(c.get(k) for k in keys) for c in new
    ]


# --------------------------------------------------------------------------- command


async def _serve(kubeconfig: str | None, resync: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    async with kube.Kube.from_options(kubeconfig) as client:
        controllers = WorkloadControllers(client, resync=resync)
        await controllers.start()
        print("dew-csi controllers running: deployments, replicasets", flush=True)
        try:
            await stop.wait()
        finally:
            await controllers.stop()


def run_from_args(args: argparse.Namespace) -> int:
    """`dew-csi sandbox controllers`: run until SIGTERM or SIGINT."""
    setup_logging(args.log_format)
    try:
        resync = parse_duration(args.resync)
    except ValueError as error:
        print(f"dew-csi sandbox controllers: {error}", file=sys.stderr, flush=True)
        return 2
    try:
        asyncio.run(_serve(args.kubeconfig, resync))
    except kube.KubeError as error:
        print(
            f"dew-csi sandbox controllers: cannot start: {error.message}",
            file=sys.stderr,
            flush=True,
        )
        return 1
    return 0
