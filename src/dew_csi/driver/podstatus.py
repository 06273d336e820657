"""SecretProviderClassPodStatus: the record of what one pod volume has mounted (DESIGN §2.6)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dew_csi import kube
from dew_csi.kube import NODE_NAME_LABEL, SECRET_PROVIDER_CLASS_POD_STATUS, Kube, KubeObject

CONFLICT_RETRIES = 5


def status_name(pod_name: str, namespace: str, spc_name: str) -> str:
    return f"{pod_name}-{namespace}-{spc_name}"


def build_pod_status(
    *,
    pod_name: str,
    namespace: str,
    pod_uid: str,
    spc_name: str,
    node_id: str,
    target_path: str,
    versions: Mapping[str, str],
) -> KubeObject:
    return {
        "apiVersion": SECRET_PROVIDER_CLASS_POD_STATUS.api_version,
        "kind": SECRET_PROVIDER_CLASS_POD_STATUS.kind,
        "metadata": {
            "name": status_name(pod_name, namespace, spc_name),
            "namespace": namespace,
            "labels": {NODE_NAME_LABEL: node_id},
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Pod", "name": pod_name, "uid": pod_uid}
            ],
        },
        "status": {
            "podName": pod_name,
            "secretProviderClassName": spc_name,
            "mounted": True,
            "targetPath": target_path,
            "objects": [{"id": i, "version": v} for i, v in sorted(versions.items())],
        },
    }


def recorded_versions(pod_status: Mapping[str, Any]) -> dict[str, str]:
    objects = pod_status.get("status", {}).get("objects") or []
    return {str(o.get("id")): str(o.get("version")) for o in objects if isinstance(o, Mapping)}


async def upsert_pod_status(
    client: Kube, desired: KubeObject, *, known: KubeObject | None = None, reread: bool = False
) -> KubeObject:
    """Create the SPCPS, or overwrite its node label, owner and status (a pod that moved nodes
    keeps its name), retrying on write conflicts. `known` is the object as last written, which
    saves a read when nobody else changed it; `reread` reads it anyway (to restore an SPCPS that
    someone edited or deleted)."""
    if reread:
        known = await client.find(
            SECRET_PROVIDER_CLASS_POD_STATUS,
            desired["metadata"]["name"],
            desired["metadata"]["namespace"],
        )
        if known is None:
            return await client.create(SECRET_PROVIDER_CLASS_POD_STATUS, desired)
    elif known is None:
        try:
            return await client.create(SECRET_PROVIDER_CLASS_POD_STATUS, desired)
        except kube.AlreadyExists:
            pass
    metadata = desired["metadata"]
    for attempt in range(CONFLICT_RETRIES):
        if known is not None:
            current, known = known, None
        else:
            current = await client.get(
                SECRET_PROVIDER_CLASS_POD_STATUS, metadata["name"], metadata["namespace"]
            )
        same = (
            current.get("status") == desired["status"]
            and current["metadata"].get("labels", {}).get(NODE_NAME_LABEL)
            == metadata["labels"][NODE_NAME_LABEL]
            and current["metadata"].get("ownerReferences") == metadata["ownerReferences"]
        )
        if same:
            return current
        updated = dict(current)
        updated["metadata"] = {
            **current["metadata"],
            "labels": {**(current["metadata"].get("labels") or {}), **metadata["labels"]},
            "ownerReferences": metadata["ownerReferences"],
        }
        updated["status"] = desired["status"]
        try:
            return await client.replace(SECRET_PROVIDER_CLASS_POD_STATUS, updated)
        except kube.Conflict:
            if attempt == CONFLICT_RETRIES - 1:
                raise
        except kube.NotFound:  # deleted since we last wrote it: create it again
            return await client.create(SECRET_PROVIDER_CLASS_POD_STATUS, desired)
    raise AssertionError("unreachable")
