"""The sandbox's Deployment and ReplicaSet controllers against the real API emulator over HTTP:
names, labels and owners of what they create, scaling, a template change, status that follows
pod readiness, and deletion through the emulator's garbage collector. No kubelet runs here:
tests mark pods ready themselves, as a kubelet would."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from dew_csi import kube
from dew_csi.sandbox.apiserver import ApiServerThread
from dew_csi.sandbox.controllers import (
    SAFE_ALPHABET,
    WorkloadControllers,
    pods_to_delete,
    template_hash,
)

NS = "default"
HASH = re.compile(rf"^[{SAFE_ALPHABET}]{{10}}$")


@pytest.fixture
async def client(apiserver: ApiServerThread) -> AsyncIterator[kube.Kube]:
    async with kube.Kube.from_url(apiserver.url) as k:
        yield k


@pytest.fixture
async def controllers(client: kube.Kube) -> AsyncIterator[WorkloadControllers]:
    async with WorkloadControllers(client, retry_initial=0.05, retry_max=0.2) as running:
        yield running


async def eventually(
    check: Callable[[], Awaitable[Any]], timeout: float = 10.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout}s (last: {value!r})")
        await asyncio.sleep(0.02)


def deployment(
    name: str = "nginx-spc",
    replicas: int = 1,
    image: str = "nginx:alpine",
    service_account: str | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "nginx", "image": image}]}
    if service_account:
        spec["serviceAccountName"] = service_account
    return {
        "metadata": {"name": name, "namespace": NS, "labels": {"app": "nginx"}},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": "nginx"}},
            "template": {"metadata": {"labels": {"app": "nginx"}}, "spec": spec},
        },
    }


def owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    return any(
        r["uid"] == owner["metadata"]["uid"] and r.get("controller")
        for r in obj["metadata"].get("ownerReferences") or []
    )


async def replica_sets(client: kube.Kube, owner: dict[str, Any]) -> list[dict[str, Any]]:
    items, _ = await client.list_objects(kube.REPLICA_SET, NS)
    return [rs for rs in items if owned_by(rs, owner)]


async def live_pods(client: kube.Kube, owner: dict[str, Any]) -> list[dict[str, Any]]:
    items, _ = await client.list_objects(kube.POD, NS)
    return [p for p in items if owned_by(p, owner) and not p["metadata"].get("deletionTimestamp")]


async def wait_pods(client: kube.Kube, owner: dict[str, Any], count: int) -> list[dict[str, Any]]:
    async def enough() -> tuple[list[dict[str, Any]]] | None:
        pods = await live_pods(client, owner)
        return (pods,) if len(pods) == count else None  # a tuple: truthy even for no pods

    result: tuple[list[dict[str, Any]]] = await eventually(enough, what=f"{count} pods")
    return result[0]


async def make_ready(client: kube.Kube, pod: dict[str, Any]) -> None:
    """What the kubelet reports once the pod's containers run."""
    await client.replace_status(
        kube.POD,
        {
            "metadata": {"name": pod["metadata"]["name"], "namespace": NS},
            "status": {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        },
    )


async def deployment_status(client: kube.Kube, name: str) -> dict[str, Any]:
    status: dict[str, Any] = (await client.get(kube.DEPLOYMENT, name, NS)).get("status") or {}
    return status


# --------------------------------------------------------------------------- tests


async def test_deployment_creates_a_replica_set_named_by_its_template_hash(
    client: kube.Kube, controllers: WorkloadControllers
) -> None:
    created = await client.create(kube.DEPLOYMENT, deployment(replicas=2))

    async def one() -> list[dict[str, Any]]:
        return await replica_sets(client, created)

    [rs] = await eventually(one, what="a ReplicaSet")
    stored = await client.get(kube.DEPLOYMENT, "nginx-spc", NS)
    pod_hash = template_hash(stored["spec"]["template"])
    assert HASH.match(pod_hash)
    assert rs["metadata"]["name"] == f"nginx-spc-{pod_hash}"
    assert rs["metadata"]["labels"] == {"app": "nginx", "pod-template-hash": pod_hash}
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    [owner] = rs["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "nginx-spc",
        "uid": created["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    assert rs["spec"]["replicas"] == 2
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "nginx", "pod-template-hash": pod_hash}
    assert rs["spec"]["template"]["metadata"]["labels"]["pod-template-hash"] == pod_hash

    pods = await wait_pods(client, rs, 2)
    for pod in pods:
        assert re.fullmatch(rf"nginx-spc-{pod_hash}-[a-z0-9]{{5}}", pod["metadata"]["name"])
        assert pod["metadata"]["generateName"] == f"nginx-spc-{pod_hash}-"
        assert pod["metadata"]["labels"] == {"app": "nginx", "pod-template-hash": pod_hash}
        [pod_owner] = pod["metadata"]["ownerReferences"]
        assert pod_owner["kind"] == "ReplicaSet"
        assert pod_owner["name"] == rs["metadata"]["name"]
        assert pod_owner["controller"] is True
        assert pod["spec"]["containers"][0]["image"] == "nginx:alpine"


async def test_status_follows_pod_readiness(
    client: kube.Kube, controllers: WorkloadControllers
) -> None:
    created = await client.create(kube.DEPLOYMENT, deployment(replicas=2))
    [pod_a, pod_b] = await wait_pods(client, created_rs := await _the_rs(client, created), 2)

    async def not_ready_yet() -> dict[str, Any] | None:
        status = await deployment_status(client, "nginx-spc")
        return status if status.get("replicas") == 2 else None

    status = await eventually(not_ready_yet)
    assert "readyReplicas" not in status  # zero counts are omitted, as the real API does
    assert status["unavailableReplicas"] == 2
    assert status["updatedReplicas"] == 2
    available = next(c for c in status["conditions"] if c["type"] == "Available")
    assert available["status"] == "False"

    await make_ready(client, pod_a)
    await make_ready(client, pod_b)

    async def ready() -> dict[str, Any] | None:
        status = await deployment_status(client, "nginx-spc")
        return status if status.get("readyReplicas") == 2 else None

    status = await eventually(ready, what="2/2 ready")
    stored = await client.get(kube.DEPLOYMENT, "nginx-spc", NS)
    assert status["availableReplicas"] == 2
    assert status["updatedReplicas"] == 2
    assert status["replicas"] == 2
    assert "unavailableReplicas" not in status
    assert status["observedGeneration"] == stored["metadata"]["generation"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Available"]["status"] == "True"
    assert conditions["Available"]["reason"] == "MinimumReplicasAvailable"
    assert conditions["Progressing"]["reason"] == "NewReplicaSetAvailable"
    assert conditions["Progressing"]["message"] == (
        f'ReplicaSet "{created_rs["metadata"]["name"]}" has successfully progressed.'
    )
    rs_status = (await client.get(kube.REPLICA_SET, created_rs["metadata"]["name"], NS))["status"]
    assert rs_status["readyReplicas"] == 2
    assert rs_status["availableReplicas"] == 2


async def _the_rs(client: kube.Kube, owner: dict[str, Any]) -> dict[str, Any]:
    async def one() -> list[dict[str, Any]]:
        return await replica_sets(client, owner)

    [rs] = await eventually(one)
    found: dict[str, Any] = rs
    return found


async def test_scaling_up_and_down_keeps_the_ready_pod(
    client: kube.Kube, controllers: WorkloadControllers
) -> None:
    created = await client.create(kube.DEPLOYMENT, deployment(replicas=1))
    rs = await _the_rs(client, created)
    [first] = await wait_pods(client, rs, 1)
    await make_ready(client, first)

    await client.patch(kube.DEPLOYMENT, "nginx-spc", {"spec": {"replicas": 3}}, NS)
    await wait_pods(client, rs, 3)
    await client.patch(kube.DEPLOYMENT, "nginx-spc", {"spec": {"replicas": 1}}, NS)

    async def one_left() -> list[dict[str, Any]] | None:
        pods = await live_pods(client, rs)
        return pods if len(pods) == 1 else None

    [kept] = await eventually(one_left, what="scale down to 1")
    assert kept["metadata"]["uid"] == first["metadata"]["uid"]  # not-ready pods go first
    deletions = await _events(client, rs["metadata"]["name"], "SuccessfulDelete")
    assert len(deletions) == 2
    scaling = await _events(client, "nginx-spc", "ScalingReplicaSet")
    messages = [e["message"] for e in scaling]
    name = rs["metadata"]["name"]
    assert f"Scaled up replica set {name} to 1" in messages
    assert f"Scaled up replica set {name} to 3" in messages
    assert f"Scaled down replica set {name} to 1 from 3" in messages


async def _events(client: kube.Kube, name: str, reason: str) -> list[dict[str, Any]]:
    items, _ = await client.list_objects(kube.EVENT, NS, fields={"involvedObject.name": name})
    return [e for e in items if e["reason"] == reason]


async def test_a_template_change_makes_a_new_replica_set_and_empties_the_old(
    client: kube.Kube, controllers: WorkloadControllers
) -> None:
    created = await client.create(kube.DEPLOYMENT, deployment(replicas=2))
    old = await _the_rs(client, created)
    await wait_pods(client, old, 2)

    patch = {
        "spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:2"}]}}}
    }
    await client.patch(kube.DEPLOYMENT, "nginx-spc", patch, NS)

    async def two_sets() -> list[dict[str, Any]] | None:
        sets = await replica_sets(client, created)
        return sets if len(sets) == 2 else None

    sets = await eventually(two_sets, what="a second ReplicaSet")
    [new] = [rs for rs in sets if rs["metadata"]["uid"] != old["metadata"]["uid"]]
    assert new["metadata"]["name"] != old["metadata"]["name"]
    assert new["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "2"
    new_pods = await wait_pods(client, new, 2)
    assert {p["spec"]["containers"][0]["image"] for p in new_pods} == {"nginx:2"}
    await wait_pods(client, old, 0)
    old_now = await client.get(kube.REPLICA_SET, old["metadata"]["name"], NS)
    assert old_now["spec"]["replicas"] == 0

    async def updated() -> dict[str, Any] | None:
        status = await deployment_status(client, "nginx-spc")
        return (
            status if status.get("updatedReplicas") == 2 and status.get("replicas") == 2 else None
        )

    await eventually(updated, what="status counting the new ReplicaSet")

    # Back to the first template: its ReplicaSet is reused and becomes revision 3.
    back = {
        "spec": {"template": {"spec": {"containers": [{"name": "nginx", "image": "nginx:alpine"}]}}}
    }
    await client.patch(kube.DEPLOYMENT, "nginx-spc", back, NS)
    await wait_pods(client, old, 2)
    reused = await client.get(kube.REPLICA_SET, old["metadata"]["name"], NS)
    assert reused["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "3"
    assert len(await replica_sets(client, created)) == 2


async def test_deleting_the_deployment_removes_everything_for_good(
    client: kube.Kube, controllers: WorkloadControllers
) -> None:
    created = await client.create(kube.DEPLOYMENT, deployment(replicas=2))
    rs = await _the_rs(client, created)
    await wait_pods(client, rs, 2)

    await client.delete(kube.DEPLOYMENT, "nginx-spc", NS)

    async def all_gone() -> bool:
        sets, _ = await client.list_objects(kube.REPLICA_SET, NS)
        pods, _ = await client.list_objects(kube.POD, NS)
        return not sets and not pods

    await eventually(all_gone, what="garbage collection")
    await controllers.idle()
    await asyncio.sleep(0.2)
    assert await all_gone(), "the controllers must not bring anything back"


async def test_a_pod_that_cannot_be_created_is_retried(
    client: kube.Kube, controllers: WorkloadControllers
) -> None:
    created = await client.create(kube.DEPLOYMENT, deployment(service_account="later-sa"))
    rs = await _the_rs(client, created)

    async def failed() -> list[dict[str, Any]]:
        return await _events(client, rs["metadata"]["name"], "FailedCreate")

    events = await eventually(failed, what="FailedCreate")
    assert events[0]["type"] == "Warning"
    assert events[0]["message"].startswith("Error creating: ")
    assert 'serviceaccount "later-sa" not found' in events[0]["message"]

    await client.create(kube.SERVICE_ACCOUNT, {"metadata": {"name": "later-sa", "namespace": NS}})
    await wait_pods(client, rs, 1)


# --------------------------------------------------------------------------- pure parts


def test_template_hash_is_stable_and_depends_on_content_and_collisions() -> None:
    template = {"metadata": {"labels": {"app": "x"}}, "spec": {"containers": [{"name": "c"}]}}
    same_reordered = {"spec": {"containers": [{"name": "c"}]}, "metadata": {"labels": {"app": "x"}}}
    assert template_hash(template) == template_hash(same_reordered)
    assert HASH.match(template_hash(template))
    other = {"metadata": {"labels": {"app": "y"}}, "spec": {"containers": [{"name": "c"}]}}
    assert template_hash(other) != template_hash(template)
    assert template_hash(template, 1) != template_hash(template)


def test_scale_down_picks_unscheduled_then_not_ready_then_newest() -> None:
    def pod(name: str, created: str, node: str | None, ready: bool) -> dict[str, Any]:
        return {
            "metadata": {"name": name, "creationTimestamp": created},
            "spec": {"nodeName": node} if node else {},
            "status": {
                "phase": "Running" if node else "Pending",
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }

    pods = [
        pod("old-ready", "2025-01-01T00:00:00Z", "n", True),
        pod("new-ready", "2025-01-01T00:00:05Z", "n", True),
        pod("not-ready", "2025-01-01T00:00:01Z", "n", False),
        pod("unscheduled", "2025-01-01T00:00:00Z", None, False),
    ]
    names = [p["metadata"]["name"] for p in pods_to_delete(pods, 3)]
    assert names == ["unscheduled", "not-ready", "new-ready"]
