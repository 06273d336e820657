"""kube.py against the API emulator over real HTTP: CRUD, conflicts, selectors, garbage collection,
and the watch cache's resume, relist-after-410 and reconnect-after-restart behaviour."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from dew_csi import kube
from dew_csi.kube import (
    POD,
    SECRET,
    SECRET_PROVIDER_CLASS,
    SECRET_PROVIDER_CLASS_POD_STATUS,
    SERVICE_ACCOUNT,
    CacheEvent,
    EventType,
    Kube,
    PatchKind,
    WatchCache,
)
from dew_csi.sandbox.apiserver import ApiServerThread
from tests.tcp_proxy import CuttableProxy

REPO = Path(__file__).resolve().parents[2]
CRDS = REPO / "deploy" / "crds"


@pytest.fixture
def apiserver() -> Iterator[ApiServerThread]:
    with ApiServerThread() as server:
        yield server


@pytest.fixture
async def client(apiserver: ApiServerThread) -> AsyncIterator[Kube]:
    async with Kube.from_url(apiserver.url) as k:
        await install_crds(k)
        yield k


async def install_crds(k: Kube) -> None:
    import yaml

    for path in sorted(CRDS.glob("*.yaml")):
        await k.create(kube.CUSTOM_RESOURCE_DEFINITION, yaml.safe_load(path.read_text()))


def sa(name: str, **annotations: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "default", "annotations": annotations}}


def spc(
    name: str, objects: str = "- objectName: a\n", namespace: str = "default"
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"provider": "cce", "parameters": {"objects": objects}},
    }


async def wait_for(predicate: Any, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Recorder:
    """A cache handler that keeps every event it gets."""

    def __init__(self) -> None:
        self.events: list[CacheEvent] = []

    async def __call__(self, event: CacheEvent) -> None:
        self.events.append(event)

    def seen(self, kind: EventType, name: str) -> bool:
        return any(e.type == kind and e.obj["metadata"]["name"] == name for e in self.events)


# --------------------------------------------------------------------------- CRUD


async def test_create_get_replace_patch_apply_delete(client: Kube) -> None:
    created = await client.create(SERVICE_ACCOUNT, sa("app", **{"cce.io/dew-resource": '["a"]'}))
    assert created["metadata"]["uid"]
    assert created["kind"] == "ServiceAccount"

    fetched = await client.get(SERVICE_ACCOUNT, "app", "default")
    assert fetched["metadata"]["annotations"] == {"cce.io/dew-resource": '["a"]'}

    fetched["metadata"]["labels"] = {"tier": "web"}
    replaced = await client.replace(SERVICE_ACCOUNT, fetched)
    assert replaced["metadata"]["labels"] == {"tier": "web"}
    assert int(replaced["metadata"]["resourceVersion"]) > int(
        created["metadata"]["resourceVersion"]
    )

    merged = await client.patch(SERVICE_ACCOUNT, "app", {"metadata": {"labels": {"x": "1"}}})
    assert merged["metadata"]["labels"] == {"tier": "web", "x": "1"}
    json_patched = await client.patch(
        SERVICE_ACCOUNT,
        "app",
        [{"op": "remove", "path": "/metadata/labels/tier"}],
        kind=PatchKind.JSON,
    )
    assert json_patched["metadata"]["labels"] == {"x": "1"}
    strategic = await client.patch(
        SERVICE_ACCOUNT, "app", {"metadata": {"labels": {"y": "2"}}}, kind=PatchKind.STRATEGIC
    )
    assert strategic["metadata"]["labels"] == {"x": "1", "y": "2"}

    applied = await client.apply(SECRET, {"metadata": {"name": "s"}, "stringData": {"k": "v"}})
    assert applied["data"] == {"k": "dg=="}
    reapplied = await client.apply(SECRET, {"metadata": {"name": "s"}, "stringData": {"k": "w"}})
    assert reapplied["data"]["k"] == "dw=="

    assert await client.delete(SERVICE_ACCOUNT, "app") is True
    assert await client.find(SERVICE_ACCOUNT, "app") is None
    assert await client.delete(SERVICE_ACCOUNT, "app") is False
    with pytest.raises(kube.NotFound):
        await client.get(SERVICE_ACCOUNT, "app")


async def test_custom_resources_round_trip(client: Kube) -> None:
    created = await client.create(SECRET_PROVIDER_CLASS, spc("spc-test"))
    assert created["apiVersion"] == "secrets-store.csi.x-k8s.io/v1"
    assert created["metadata"]["generation"] == 1
    changed = await client.patch(
        SECRET_PROVIDER_CLASS, "spc-test", {"spec": {"parameters": {"objects": "- b\n"}}}
    )
    assert changed["metadata"]["generation"] == 2
    relabelled = await client.patch(
        SECRET_PROVIDER_CLASS, "spc-test", {"metadata": {"labels": {"a": "b"}}}
    )
    assert relabelled["metadata"]["generation"] == 2  # metadata changes are not spec changes


async def test_conflicts_and_already_exists(client: Kube) -> None:
    first = await client.create(SERVICE_ACCOUNT, sa("app"))
    with pytest.raises(kube.AlreadyExists):
        await client.create(SERVICE_ACCOUNT, sa("app"))
    await client.patch(SERVICE_ACCOUNT, "app", {"metadata": {"labels": {"v": "2"}}})
    stale = dict(first)
    stale["metadata"] = {**first["metadata"], "labels": {"v": "stale"}}
    with pytest.raises(kube.Conflict) as caught:
        await client.replace(SERVICE_ACCOUNT, stale)
    assert caught.value.code == 409
    assert (await client.get(SERVICE_ACCOUNT, "app"))["metadata"]["labels"] == {"v": "2"}


async def test_label_and_field_selectors(client: Kube) -> None:
    for name, node in (("p1", "node-a"), ("p2", "node-b"), ("p3", "node-a")):
        await client.create(
            POD,
            {
                "metadata": {"name": name, "labels": {"app": "web" if name != "p2" else "db"}},
                "spec": {"nodeName": node, "containers": [{"name": "c", "image": "nginx"}]},
            },
        )
    on_a, version = await client.list_objects(POD, "default", fields={"spec.nodeName": "node-a"})
    assert sorted(p["metadata"]["name"] for p in on_a) == ["p1", "p3"]
    assert int(version) > 0
    web, _ = await client.list_objects(POD, kube.ALL_NAMESPACES, labels={"app": "web"})
    assert sorted(p["metadata"]["name"] for p in web) == ["p1", "p3"]
    named, _ = await client.list_objects(POD, "default", fields={"metadata.name": "p2"})
    assert [p["metadata"]["name"] for p in named] == ["p2"]


async def test_garbage_collection_follows_owner_references(client: Kube) -> None:
    pod = await client.create(
        POD, {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    )
    status = await client.create(
        SECRET_PROVIDER_CLASS_POD_STATUS,
        {
            "metadata": {
                "name": "web-default-spc",
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "name": "web",
                        "uid": pod["metadata"]["uid"],
                    }
                ],
            },
            "status": {"podName": "web", "mounted": True},
        },
    )
    owner = {
        "apiVersion": status["apiVersion"],
        "kind": status["kind"],
        "name": status["metadata"]["name"],
        "uid": status["metadata"]["uid"],
    }
    await client.create(
        SECRET, {"metadata": {"name": "synced", "ownerReferences": [owner]}, "data": {}}
    )
    # The pod has no node, so deleting it removes it at once; its dependents follow.
    assert await client.delete(POD, "web")

    async def gone(resource: kube.Resource, name: str) -> bool:
        return await client.find(resource, name) is None

    for resource, name in (
        (SECRET_PROVIDER_CLASS_POD_STATUS, "web-default-spc"),
        (SECRET, "synced"),
    ):
        for _ in range(100):
            if await gone(resource, name):
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError(f"{name} was not garbage collected")


async def test_events_are_recorded_against_the_object(client: Kube) -> None:
    pod = await client.create(
        POD, {"metadata": {"name": "web"}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    )
    await client.record_event(pod, reason="FailedMount", message="no such secret", warning=True)
    events, _ = await client.list_objects(
        kube.EVENT, "default", fields={"involvedObject.name": "web"}
    )
    assert [(e["reason"], e["type"], e["message"]) for e in events] == [
        ("FailedMount", "Warning", "no such secret")
    ]
    assert events[0]["involvedObject"]["uid"] == pod["metadata"]["uid"]


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = datetime(2026, 3, 21, 13, 49, 29, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


async def make_pod(client: Kube, name: str = "web") -> dict[str, Any]:
    return await client.create(
        POD, {"metadata": {"name": name}, "spec": {"containers": [{"name": "c", "image": "x"}]}}
    )


async def events_about(client: Kube, name: str) -> list[dict[str, Any]]:
    events, _ = await client.list_objects(
        kube.EVENT, "default", fields={"involvedObject.name": name}
    )
    return sorted(events, key=lambda e: (e["reason"], e["message"]))


async def test_a_repeated_event_is_one_event_with_a_count(client: Kube) -> None:
    """client-go's de-duplication: the same Event recorded 4 times is one Event, count 4."""
    pod = await make_pod(client)
    clock = Clock()
    recorder = kube.EventRecorder(client, clock=clock)
    for _ in range(4):
        await recorder.record(pod, reason="FailedToMountSecrets", message="boom", warning=True)
        clock.advance(3)
    [event] = await events_about(client, "web")
    assert event["count"] == 4
    assert event["firstTimestamp"] == "2026-03-21T13:49:29Z"
    assert event["lastTimestamp"] == "2026-03-21T13:49:38Z"  # the 4th, 9 s after the 1st
    assert (event["type"], event["reason"], event["message"]) == (
        "Warning",
        "FailedToMountSecrets",
        "boom",
    )
    # client-go's name: <object name>.<hex nanoseconds>.
    assert re.fullmatch(r"web\.[0-9a-f]{15,16}", event["metadata"]["name"])
    assert not {"series", "eventTime"} & set(event)  # a core/v1 Event of the legacy recorder


async def test_record_event_on_the_client_aggregates_too(client: Kube) -> None:
    """`Kube.record_event`, which the driver, kubelet simulator and controllers call, keeps its
    signature and now aggregates: kubelet-style retries no longer pile up Events."""
    pod = await make_pod(client)
    for _ in range(4):
        await client.record_event(pod, reason="MountRotationFailed", message="m", warning=True)
    [event] = await events_about(client, "web")
    assert event["count"] == 4


async def test_events_that_differ_are_separate_events(client: Kube) -> None:
    pod = await make_pod(client)
    other = await make_pod(client, "other")
    recorder = kube.EventRecorder(client, clock=Clock())
    await recorder.record(pod, reason="R", message="first")
    await recorder.record(pod, reason="R", message="second")
    await recorder.record(pod, reason="R", message="first", warning=True)  # another type
    await recorder.record(pod, reason="Q", message="first")  # another reason
    await recorder.record(pod, reason="R", message="first", component="kubelet")  # source
    await recorder.record(other, reason="R", message="first")  # another object
    await recorder.record(pod, reason="R", message="first")  # a repeat: counted
    events = await events_about(client, "web")
    assert sorted(
        (e["reason"], e["message"], e["type"], e["source"]["component"], e["count"]) for e in events
    ) == [
        ("Q", "first", "Normal", "csi-secrets-store", 1),
        ("R", "first", "Normal", "csi-secrets-store", 2),
        ("R", "first", "Normal", "kubelet", 1),
        ("R", "first", "Warning", "csi-secrets-store", 1),
        ("R", "second", "Normal", "csi-secrets-store", 1),
    ]
    assert [e["count"] for e in await events_about(client, "other")] == [1]


async def test_a_deleted_event_is_created_again(client: Kube) -> None:
    """The patch answers 404 (the Event expired or was deleted): client-go creates it again
    under its old name, keeping the running count and the first timestamp."""
    pod = await make_pod(client)
    clock = Clock()
    recorder = kube.EventRecorder(client, clock=clock)
    first = await recorder.record(pod, reason="R", message="m")
    clock.advance(5)
    await recorder.record(pod, reason="R", message="m")
    name = first["metadata"]["name"]
    assert await client.delete(kube.EVENT, name, "default")
    clock.advance(5)
    again = await recorder.record(pod, reason="R", message="m")
    [event] = await events_about(client, "web")
    assert event["metadata"]["uid"] == again["metadata"]["uid"] != first["metadata"]["uid"]
    assert event["metadata"]["name"] == name
    assert event["count"] == 3
    assert (event["firstTimestamp"], event["lastTimestamp"]) == (
        "2026-03-21T13:49:29Z",
        "2026-03-21T13:49:39Z",
    )
    clock.advance(5)
    await recorder.record(pod, reason="R", message="m")  # and it is patched from then on
    [event] = await events_about(client, "web")
    assert (event["metadata"]["uid"], event["count"]) == (again["metadata"]["uid"], 4)


async def test_concurrent_identical_records_make_one_event(client: Kube) -> None:
    pod = await make_pod(client)
    await asyncio.gather(
        *(client.record_event(pod, reason="R", message="m", warning=True) for _ in range(20))
    )
    [event] = await events_about(client, "web")
    assert event["count"] == 20
    # Different Events recorded concurrently are all written, each once.
    await asyncio.gather(
        *(client.record_event(pod, reason="S", message=f"m{i % 3}") for i in range(9))
    )
    assert sorted((e["message"], e["count"]) for e in await events_about(client, "web")) == [
        ("m", 20),
        ("m0", 3),
        ("m1", 3),
        ("m2", 3),
    ]


async def test_many_distinct_messages_are_combined_into_one_event(client: Kube) -> None:
    """client-go's aggregation: from the 10th distinct message of one kind of Event within
    10 minutes, one combined Event counts them (and shows the latest message)."""
    pod = await make_pod(client)
    clock = Clock()
    recorder = kube.EventRecorder(client, clock=clock)
    for i in range(1, 13):
        await recorder.record(pod, reason="R", message=f"error {i}")
        clock.advance(1)
    events = await events_about(client, "web")
    combined = [e for e in events if e["message"].startswith("(combined")]
    assert len(events) == 10  # 9 on their own, then one combined
    assert [(e["message"], e["count"]) for e in combined] == [
        ("(combined from similar events): error 12", 3)
    ]
    # Ten minutes of quiet start the count of distinct messages afresh.
    clock.advance(601)
    await recorder.record(pod, reason="R", message="error 13")
    assert "error 13" in [e["message"] for e in await events_about(client, "web")]


async def test_the_recorder_remembers_a_bounded_number_of_events(client: Kube) -> None:
    pod = await make_pod(client)
    recorder = kube.EventRecorder(client, cache_size=2, clock=Clock())
    for reason in ("A", "B", "C"):
        await recorder.record(pod, reason=reason, message="m")
    assert recorder.cached == 2
    await recorder.record(pod, reason="C", message="m")  # still remembered: counted
    await recorder.record(pod, reason="A", message="m")  # forgotten: a new Event, as client-go
    counts = sorted((e["reason"], e["count"]) for e in await events_about(client, "web"))
    assert counts == [("A", 1), ("A", 1), ("B", 1), ("C", 2)]
    assert recorder.cached == 2


async def test_events_about_cluster_scoped_objects_live_in_default(client: Kube) -> None:
    """As client-go writes them: Event in "default", involvedObject without a namespace (so
    `kubectl describe node` finds them)."""
    node = await client.create(kube.NODE, {"metadata": {"name": "node-1"}})
    await client.record_event(
        kube.involved_object(kube.NODE, node["metadata"]), reason="R", message="m"
    )
    [event] = await events_about(client, "node-1")
    assert event["metadata"]["namespace"] == "default"
    assert "namespace" not in event["involvedObject"]
    assert event["involvedObject"]["kind"] == "Node"


async def test_unreachable_server_is_a_typed_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with Kube.from_url(f"http://127.0.0.1:{port}", timeout=2.0) as k:
        with pytest.raises(kube.KubeUnavailable):
            await k.get(SERVICE_ACCOUNT, "app")


# --------------------------------------------------------------------------- watch cache


async def test_watch_cache_lists_then_follows_changes(client: Kube) -> None:
    await client.create(SECRET_PROVIDER_CLASS, spc("before"))
    cache = WatchCache(client, SECRET_PROVIDER_CLASS)
    recorder = Recorder()
    cache.add_handler(recorder)
    async with cache:
        assert cache.get("before", "default") is not None
        assert recorder.seen(EventType.ADDED, "before")

        await client.create(SECRET_PROVIDER_CLASS, spc("after"))
        await client.patch(
            SECRET_PROVIDER_CLASS, "before", {"spec": {"parameters": {"objects": "- b\n"}}}
        )
        await client.delete(SECRET_PROVIDER_CLASS, "before")
        await wait_for(lambda: recorder.seen(EventType.DELETED, "before"))

        assert cache.get("before", "default") is None
        assert cache.get("after", "default") is not None
        kinds = [(e.type, e.obj["metadata"]["name"]) for e in recorder.events]
        assert kinds == [
            (EventType.ADDED, "before"),
            (EventType.ADDED, "after"),
            (EventType.MODIFIED, "before"),
            (EventType.DELETED, "before"),
        ]
        modified = recorder.events[2]
        assert modified.old is not None
        assert modified.old["spec"]["parameters"]["objects"] == "- objectName: a\n"
        assert modified.obj["spec"]["parameters"]["objects"] == "- b\n"
        assert cache.relists == 1


async def test_watch_cache_resumes_after_disconnect_without_relisting(
    client: Kube, apiserver: ApiServerThread
) -> None:
    proxy = CuttableProxy("127.0.0.1", apiserver.port)
    await proxy.start()
    try:
        async with Kube.from_url(proxy.url) as through_proxy:
            cache = WatchCache(
                through_proxy, SECRET_PROVIDER_CLASS, backoff=kube.Backoff(0.05, 0.2)
            )
            recorder = Recorder()
            cache.add_handler(recorder)
            async with cache:
                await proxy.cut()
                await client.create(SECRET_PROVIDER_CLASS, spc("while-cut"))
                await proxy.restore()
                await wait_for(lambda: cache.get("while-cut", "default") is not None)
                await client.create(SECRET_PROVIDER_CLASS, spc("after-restore"))
                await wait_for(lambda: cache.get("after-restore", "default") is not None)
                # The history still held the missed event, so the watch resumed: no relist.
                assert cache.relists == 1
                assert recorder.seen(EventType.ADDED, "while-cut")
    finally:
        await proxy.stop()


async def test_watch_cache_relists_after_410_and_synthesises_deletions(
    client: Kube, apiserver: ApiServerThread
) -> None:
    await client.create(SECRET_PROVIDER_CLASS, spc("kept"))
    await client.create(SECRET_PROVIDER_CLASS, spc("deleted-in-gap"))
    await client.create(SECRET_PROVIDER_CLASS, spc("changed-in-gap"))
    proxy = CuttableProxy("127.0.0.1", apiserver.port)
    await proxy.start()
    try:
        async with Kube.from_url(proxy.url) as through_proxy:
            cache = WatchCache(
                through_proxy, SECRET_PROVIDER_CLASS, backoff=kube.Backoff(0.05, 0.2)
            )
            recorder = Recorder()
            cache.add_handler(recorder)
            async with cache:
                await proxy.cut()
                await client.delete(SECRET_PROVIDER_CLASS, "deleted-in-gap")
                await client.patch(
                    SECRET_PROVIDER_CLASS,
                    "changed-in-gap",
                    {"spec": {"parameters": {"objects": "- z\n"}}},
                )
                await client.create(SECRET_PROVIDER_CLASS, spc("created-in-gap"))
                apiserver.server.compact()  # the missed events are no longer in the history
                recorder.events.clear()
                await proxy.restore()

                await wait_for(lambda: cache.relists == 2)
                await wait_for(lambda: recorder.seen(EventType.DELETED, "deleted-in-gap"))
                assert cache.get("deleted-in-gap", "default") is None
                assert recorder.seen(EventType.ADDED, "created-in-gap")
                assert recorder.seen(EventType.MODIFIED, "changed-in-gap")
                assert not recorder.seen(EventType.MODIFIED, "kept")  # unchanged: no event
                # And the cache follows live changes again after the relist.
                await client.create(SECRET_PROVIDER_CLASS, spc("live"))
                await wait_for(lambda: cache.get("live", "default") is not None)
    finally:
        await proxy.stop()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_emulator(port: int, state: Path) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dew_csi.cli",
            "sandbox",
            "apiserver",
            "--listen",
            f"127.0.0.1:{port}",
            "--state",
            str(state),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert re.search(rf"listening on http://127\.0\.0\.1:{port}\b", line), line
    return process


def stop_emulator(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0


async def test_watch_cache_survives_an_api_server_restart_with_state(tmp_path: Path) -> None:
    port = free_port()
    state = tmp_path / "state.json"
    first = start_emulator(port, state)
    try:
        async with Kube.from_url(f"http://127.0.0.1:{port}") as k:
            await install_crds(k)
            await k.create(SECRET_PROVIDER_CLASS, spc("before-restart"))
            cache = WatchCache(k, SECRET_PROVIDER_CLASS, backoff=kube.Backoff(0.05, 0.3))
            recorder = Recorder()
            cache.add_handler(recorder)
            async with cache:
                version_before = int(cache.resource_version or 0)
                stop_emulator(first)
                second = start_emulator(port, state)
                try:
                    # Acknowledged writes survived, and the cache keeps following changes.
                    assert (await k.get(SECRET_PROVIDER_CLASS, "before-restart"))["metadata"]
                    await k.create(SECRET_PROVIDER_CLASS, spc("after-restart"))
                    await wait_for(lambda: cache.get("after-restart", "default") is not None, 10)
                    assert int(cache.resource_version or 0) > version_before
                    assert cache.get("before-restart", "default") is not None
                    assert not recorder.seen(EventType.DELETED, "before-restart")
                finally:
                    stop_emulator(second)
    finally:
        if first.poll() is None:
            first.kill()
