"""Sync of `secretObjects` into Kubernetes Secrets (DESIGN §2.7).

Each Secret takes its data from the files just mounted, carries the label
`secrets-store.csi.k8s.io/managed=true`, and lists as owners the SPCPS objects of the pods that
mount it, so Kubernetes garbage collection removes it when the last such pod is gone.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping, Sequence
from typing import Any

from dew_csi import kube, spc
from dew_csi.kube import MANAGED_SECRET_LABEL, SECRET, Kube, KubeObject

TLS_TYPE = "kubernetes.io/tls"
CONFLICT_RETRIES = 5
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----\r?\n?", re.DOTALL)


class SecretSyncError(Exception):
    """A secretObjects entry cannot be built from the mounted files."""


def _tls_part(key: str, content: bytes, secret_name: str, object_name: str) -> bytes:
    """`tls.crt` gets the certificate blocks of a PEM file, `tls.key` its private key block."""
    blocks = [m.group(0) for m in _PEM_BLOCK.finditer(content)]
    if key == "tls.crt":
        wanted = [b for b in blocks if b"CERTIFICATE-----" in b.split(b"\n", 1)[0]]
    elif key == "tls.key":
        wanted = [b for b in blocks if b"PRIVATE KEY-----" in b.split(b"\n", 1)[0]][:1]
    else:
        raise SecretSyncError(
            f'Secret "{secret_name}" has type {TLS_TYPE}, which only takes the keys tls.crt and '
            f'tls.key, not "{key}"'
        )
    if not wanted:
        part = "certificate" if key == "tls.crt" else "private key"
        raise SecretSyncError(
            f'Secret "{secret_name}" key {key}: the mounted file "{object_name}" holds no PEM '
            f"{part}"
        )
    return b"".join(block if block.endswith(b"\n") else block + b"\n" for block in wanted)


def secret_data(synced: spc.SyncedSecret, files: Mapping[str, bytes]) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for item in synced.data:
        content = files.get(item.object_name)
        if content is None:
            raise SecretSyncError(
                f'Secret "{synced.secret_name}": file matching objectName "{item.object_name}" '
                f"not found in the pod; it must be an objectAlias, jmesPath objectAlias or "
                f"objectName of the SecretProviderClass"
            )
        if synced.type == TLS_TYPE:
            content = _tls_part(item.key, content, synced.secret_name, item.object_name)
        data[item.key] = content
    return data


def build_secret(synced: spc.SyncedSecret, namespace: str, data: Mapping[str, bytes]) -> KubeObject:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": synced.secret_name,
            "namespace": namespace,
            "labels": {**synced.labels, MANAGED_SECRET_LABEL: "true"},
            "annotations": dict(synced.annotations),
        },
        "type": synced.type or "Opaque",
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in data.items()},
    }


def owner_reference(pod_status: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": pod_status["apiVersion"],
        "kind": pod_status["kind"],
        "name": pod_status["metadata"]["name"],
        "uid": pod_status["metadata"]["uid"],
    }


def _merged_owners(existing: Sequence[Mapping[str, Any]], owner: Mapping[str, Any]) -> list[Any]:
    owners = [dict(o) for o in existing if o.get("uid") != owner["uid"]]
    return [*owners, dict(owner)]


async def sync_secret(client: Kube, desired: KubeObject, owner: Mapping[str, Any]) -> bool:
    """Create the Secret or bring it to `desired`, adding `owner`; True when anything changed."""
    metadata = desired["metadata"]
    for attempt in range(CONFLICT_RETRIES):
        current = await client.find(SECRET, metadata["name"], metadata["namespace"])
        if current is None:
            body = {**desired, "metadata": {**metadata, "ownerReferences": [dict(owner)]}}
            try:
                await client.create(SECRET, body)
                return True
            except kube.AlreadyExists:
                continue
        owners = current["metadata"].get("ownerReferences") or []
        merged = _merged_owners(owners, owner)
        labels = {**(current["metadata"].get("labels") or {}), **metadata["labels"]}
        annotations = {**(current["metadata"].get("annotations") or {}), **metadata["annotations"]}
        unchanged = (
            (current.get("data") or {}) == desired["data"]
            and any(o.get("uid") == owner["uid"] for o in owners)
            and labels == (current["metadata"].get("labels") or {})
            and annotations == (current["metadata"].get("annotations") or {})
        )
        if unchanged:
            return False
        updated = {
            **current,
            "metadata": {
                **current["metadata"],
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": merged,
            },
            "data": desired["data"],
        }
        try:
            await client.replace(SECRET, updated)
            return True
        except kube.Conflict:
            if attempt == CONFLICT_RETRIES - 1:
                raise
    raise kube.Conflict(409, "Conflict", f"Secret {metadata['name']} kept changing under us")
