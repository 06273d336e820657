"""The API emulator's pod `log` subresource over real HTTP: the API server's checks (options,
container name) and kubelet's (the container's state) with the real messages, and the content
of a registered container's log file (containers.py) with container, tailLines, sinceSeconds,
sinceTime, timestamps, limitBytes, previous and follow."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dew_csi.sandbox import containers
from dew_csi.sandbox.apiserver import ApiServerThread

PODS = "/api/v1/namespaces/default/pods"
STARTED = "2026-01-02T03:04:05Z"


def klog(when: datetime, message: str) -> str:
    return f"I{when:%m%d %H:%M:%S}.{when.microsecond:06d}       7 app.py:1] {message}\n"


def stamp(when: datetime) -> str:
    return f"{when:%Y-%m-%dT%H:%M:%S}.{when.microsecond:06d}000Z"


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    return tmp_path / containers.REGISTRY_FILE


@pytest.fixture
def server(registry: Path) -> Iterator[ApiServerThread]:
    with ApiServerThread(container_registry=registry) as thread:
        yield thread


@pytest.fixture
async def api(server: ApiServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as client:
        yield client


@pytest.fixture
def process() -> Iterator[subprocess.Popen[bytes]]:
    """A real process for a registered pod to stand for."""
    child = subprocess.Popen(["sleep", "60"])
    yield child
    child.kill()
    child.wait()


def running(name: str, started: str = STARTED) -> dict[str, Any]:
    return {
        "name": name,
        "ready": True,
        "restartCount": 0,
        "image": "x",
        "imageID": "",
        "containerID": f"sandbox://{name}",
        "state": {"running": {"startedAt": started}},
    }


async def make_pod(
    api: httpx.AsyncClient,
    name: str,
    names: list[str],
    statuses: list[dict[str, Any]] | None,
    *,
    node: str | None = "node-1",
    init: list[str] | None = None,
) -> None:
    spec: dict[str, Any] = {"containers": [{"name": n, "image": "x"} for n in names]}
    if init:
        spec["initContainers"] = [{"name": n, "image": "x"} for n in init]
    if node:
        spec["nodeName"] = node
    created = await api.post(PODS, json={"metadata": {"name": name}, "spec": spec})
    assert created.status_code == 201, created.text
    if statuses is not None:
        patched = await api.patch(
            f"{PODS}/{name}/status",
            json={"status": {"phase": "Running", "containerStatuses": statuses}},
            headers={"Content-Type": "application/merge-patch+json"},
        )
        assert patched.status_code == 200, patched.text


def register(
    registry: Path,
    pod: str,
    logs: dict[str, tuple[Path, int]],
    process: subprocess.Popen[bytes],
    *,
    own: str | None = None,
) -> None:
    ticks = containers.process_start_ticks(process.pid)
    assert ticks is not None
    entry = containers.SystemPod(
        "default",
        pod,
        "driver",
        process.pid,
        ticks,
        STARTED,
        {
            name: containers.ContainerLog(str(path), offset, name == own)
            for name, (path, offset) in logs.items()
        },
    )
    registry.write_text(containers.Registry((entry,)).to_json())


async def failure(response: httpx.Response, code: int) -> str:
    assert response.status_code == code, response.text
    body = response.json()
    assert body["kind"] == "Status"
    assert body["code"] == code
    return str(body["message"])


# ------------------------------------------------------------------ the API server's checks


async def test_discovery_lists_pods_log(api: httpx.AsyncClient) -> None:
    resources = {r["name"]: r for r in (await api.get("/api/v1")).json()["resources"]}
    assert resources["pods/log"]["verbs"] == ["get"]
    assert resources["pods/log"]["kind"] == "Pod"


async def test_container_name_checks(api: httpx.AsyncClient) -> None:
    await make_pod(api, "multi", ["a", "b", "c"], [running("a"), running("b"), running("c")])
    message = await failure(await api.get(f"{PODS}/multi/log"), 400)
    assert message == "a container name must be specified for pod multi, choose one of: [a b c]"
    response = await api.get(f"{PODS}/multi/log", params={"container": "nope"})
    assert await failure(response, 400) == "container nope is not valid for pod multi"

    await make_pod(api, "with-init", ["a", "b"], [running("a"), running("b")], init=["setup"])
    message = await failure(await api.get(f"{PODS}/with-init/log"), 400)
    assert message == (
        "a container name must be specified for pod with-init, choose one of: [a b] "
        "or one of the init containers: [setup]"
    )

    missing = await api.get(f"{PODS}/ghost/log")
    assert await failure(missing, 404) == 'pods "ghost" not found'
    assert (await api.post(f"{PODS}/multi/log", json={})).status_code == 405


@pytest.mark.parametrize(
    ("params", "message"),
    [
        (
            {"tailLines": "-1"},
            'PodLogOptions "web" is invalid: tailLines: Invalid value: -1: '
            "must be greater than or equal to 0",
        ),
        (
            {"limitBytes": "0"},
            'PodLogOptions "web" is invalid: limitBytes: Invalid value: 0: must be greater than 0',
        ),
        (
            {"sinceSeconds": "0"},
            'PodLogOptions "web" is invalid: sinceSeconds: Invalid value: 0: '
            "must be greater than 0",
        ),
        (
            {"sinceSeconds": "5", "sinceTime": "2026-01-01T00:00:00Z"},
            'PodLogOptions "web" is invalid: '
            "Forbidden: at most one of `sinceTime` or `sinceSeconds` may be specified",
        ),
    ],
)
async def test_invalid_options_are_422(
    api: httpx.AsyncClient, params: dict[str, str], message: str
) -> None:
    await make_pod(api, "web", ["nginx"], [running("nginx")])
    assert await failure(await api.get(f"{PODS}/web/log", params=params), 422) == message


async def test_options_that_are_not_numbers_or_times_are_400(api: httpx.AsyncClient) -> None:
    await make_pod(api, "web", ["nginx"], [running("nginx")])
    for params in ({"tailLines": "ten"}, {"sinceTime": "yesterday"}):
        await failure(await api.get(f"{PODS}/web/log", params=params), 400)


# --------------------------------------------------------------------------- kubelet's checks


async def test_container_state_checks(api: httpx.AsyncClient) -> None:
    waiting = {
        "name": "nginx",
        "ready": False,
        "restartCount": 0,
        "image": "nginx",
        "imageID": "",
        "state": {"waiting": {"reason": "ContainerCreating"}},
    }
    await make_pod(api, "creating", ["nginx"], [waiting])
    message = await failure(await api.get(f"{PODS}/creating/log"), 400)
    assert message == 'container "nginx" in pod "creating" is waiting to start: ContainerCreating'

    config_error = {**waiting, "state": {"waiting": {"reason": "CreateContainerConfigError"}}}
    await make_pod(api, "config", ["nginx"], [config_error])
    message = await failure(await api.get(f"{PODS}/config/log"), 400)
    assert message.endswith("is waiting to start: CreateContainerConfigError")

    pulling = {**waiting, "state": {"waiting": {"reason": "ImagePullBackOff"}}}
    await make_pod(api, "pulling", ["nginx"], [pulling])
    message = await failure(await api.get(f"{PODS}/pulling/log"), 400)
    assert message.endswith("is waiting to start: trying and failing to pull image")

    await make_pod(api, "bound", ["nginx"], None)  # on a node, no status yet
    message = await failure(await api.get(f"{PODS}/bound/log"), 400)
    assert message == 'container "nginx" in pod "bound" is not available'

    await make_pod(api, "web", ["nginx"], [running("nginx")])
    response = await api.get(f"{PODS}/web/log", params={"previous": "true"})
    message = await failure(response, 400)
    assert message == 'previous terminated container "nginx" in pod "web" not found'


async def test_an_application_container_has_an_empty_log(api: httpx.AsyncClient) -> None:
    """The simulator runs no container: a running one printed nothing (200, no body)."""
    await make_pod(api, "web", ["nginx"], [running("nginx")])
    for params in ({}, {"timestamps": "true", "tailLines": "10", "sinceSeconds": "60"}):
        response = await api.get(f"{PODS}/web/log", params=params)
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.content == b""
    # Not scheduled yet: the real API server answers an empty log too.
    await make_pod(api, "pending", ["nginx"], None, node=None)
    response = await api.get(f"{PODS}/pending/log")
    assert response.status_code == 200
    assert response.content == b""


# --------------------------------------------------------------------------- registered logs


@pytest.fixture
def driver_log(tmp_path: Path) -> tuple[Path, int, list[datetime]]:
    """A log with an earlier run's output, then this run's: a line without a klog header first,
    then three klog lines a minute apart, the last a second ago, and a print."""
    now = datetime.now(UTC).replace(microsecond=123456)
    times = [now - timedelta(seconds=121), now - timedelta(seconds=61), now - timedelta(seconds=1)]
    path = tmp_path / "driver.log"
    earlier = "=== dew-csi sandbox: starting driver ===\nold run\n"
    path.write_text(
        earlier
        + "=== dew-csi sandbox: starting driver ===\n"
        + "starting up\n"
        + klog(times[0], '"Initializing Secrets Store CSI Driver"')
        + klog(times[1], '"Listening for connections"')
        + "dew-csi driver listening on /x/csi.sock\n"
        + klog(times[2], '"starting rotation reconciler"')
    )
    offset = len(earlier) + len("=== dew-csi sandbox: starting driver ===\n")
    return path, offset, times


async def test_a_registered_container_log(
    api: httpx.AsyncClient,
    registry: Path,
    process: subprocess.Popen[bytes],
    driver_log: tuple[Path, int, list[datetime]],
    tmp_path: Path,
) -> None:
    path, offset, times = driver_log
    sidecar = tmp_path / "registrar.log"
    sidecar.write_text(klog(times[0], '"sidecar line"'))
    names = ["registrar", "secrets-store"]
    await make_pod(api, "csi-abcde", names, [running(n) for n in names])
    register(
        registry,
        "csi-abcde",
        {"registrar": (sidecar, 0), "secrets-store": (path, offset)},
        process,
        own="secrets-store",
    )
    url = f"{PODS}/csi-abcde/log"

    async def text(**params: str) -> str:
        response = await api.get(url, params={"container": "secrets-store", **params})
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/plain")
        return response.text

    whole = await text()
    assert whole.splitlines()[0] == "starting up"  # this run only, without the sandbox's line
    assert "old run" not in whole
    assert "===" not in whole
    assert len(whole.splitlines()) == 5
    assert (await api.get(url, params={"container": "registrar"})).text.endswith('"sidecar line"\n')

    assert (await text(tailLines="2")).splitlines() == whole.splitlines()[-2:]
    assert await text(tailLines="0") == ""
    assert await text(limitBytes="5") == "start"

    recent = (await text(sinceSeconds="30")).splitlines()
    assert len(recent) == 1
    assert recent[0].endswith('"starting rotation reconciler"')
    # The print takes its time from the klog line before it.
    since_time = f"{times[1] - timedelta(seconds=1):%Y-%m-%dT%H:%M:%S}Z"
    since = (await text(sinceTime=since_time)).splitlines()
    assert len(since) == 3
    assert since[0].endswith('"Listening for connections"')
    assert since[1] == "dew-csi driver listening on /x/csi.sock"

    stamped = (await text(timestamps="true")).splitlines()
    started = "2026-01-02T03:04:05.000000000Z"
    assert stamped[0] == f"{started} starting up"  # before any klog line: the process's start
    assert stamped[1].startswith(stamp(times[0]) + " I")
    assert stamped[3] == f"{stamp(times[1])} dew-csi driver listening on /x/csi.sock"
    assert await text(timestamps="true", limitBytes="10") == started[:10]
    tail = await text(timestamps="true", tailLines="1", sinceSeconds="30")
    assert tail.startswith(stamp(times[2]) + " I")


async def test_follow_streams_until_the_process_ends(
    api: httpx.AsyncClient,
    registry: Path,
    process: subprocess.Popen[bytes],
    driver_log: tuple[Path, int, list[datetime]],
) -> None:
    path, offset, _ = driver_log
    await make_pod(api, "csi-abcde", ["secrets-store"], [running("secrets-store")])
    register(registry, "csi-abcde", {"secrets-store": (path, offset)}, process, own="secrets-store")
    params = {"follow": "true", "tailLines": "1"}
    async with api.stream("GET", f"{PODS}/csi-abcde/log", params=params) as response:
        assert response.status_code == 200
        assert response.headers.get("Transfer-Encoding") == "chunked"
        lines = response.aiter_lines()
        first = await asyncio.wait_for(anext(lines), 5)
        assert first.endswith('"starting rotation reconciler"')
        with path.open("a") as log:
            log.write("half a li")
            log.flush()
            await asyncio.sleep(0.5)  # an unfinished line is not sent while the process lives
            log.write("ne\n")
        assert await asyncio.wait_for(anext(lines), 5) == "half a line"
        with path.open("a") as log:
            log.write("last words, no newline")
        process.kill()
        process.wait()
        # The process is gone: what it wrote last comes, then the stream ends.
        rest = [line async for line in lines]
        assert rest == ["last words, no newline"]


async def test_follow_of_an_application_container_ends_with_its_pod(
    api: httpx.AsyncClient,
) -> None:
    await make_pod(api, "web", ["nginx"], [running("nginx")])
    started = time.monotonic()
    async with api.stream("GET", f"{PODS}/web/log", params={"follow": "true"}) as response:
        assert response.status_code == 200

        async def delete_soon() -> None:
            await asyncio.sleep(0.5)
            deleted = await api.delete(f"{PODS}/web", params={"gracePeriodSeconds": "0"})
            assert deleted.status_code == 200

        deleting = asyncio.create_task(delete_soon())
        body = await asyncio.wait_for(response.aread(), 5)
        await deleting
    assert body == b""
    assert time.monotonic() - started >= 0.5


async def test_follow_ends_at_the_byte_limit(
    api: httpx.AsyncClient,
    registry: Path,
    process: subprocess.Popen[bytes],
    driver_log: tuple[Path, int, list[datetime]],
) -> None:
    path, offset, _ = driver_log
    await make_pod(api, "csi-abcde", ["secrets-store"], [running("secrets-store")])
    register(registry, "csi-abcde", {"secrets-store": (path, offset)}, process, own="secrets-store")
    params = {"follow": "true", "limitBytes": "8"}
    async with api.stream("GET", f"{PODS}/csi-abcde/log", params=params) as response:
        body = await asyncio.wait_for(response.aread(), 5)
    assert body == b"starting"


async def test_a_disconnected_follower_is_let_go(
    server: ApiServerThread,
    api: httpx.AsyncClient,
    registry: Path,
    process: subprocess.Popen[bytes],
    driver_log: tuple[Path, int, list[datetime]],
) -> None:
    """The stream ends on the server once its client is gone."""
    path, offset, _ = driver_log
    await make_pod(api, "csi-abcde", ["secrets-store"], [running("secrets-store")])
    register(registry, "csi-abcde", {"secrets-store": (path, offset)}, process, own="secrets-store")
    async with httpx.AsyncClient(base_url=server.url, timeout=10) as follower:
        params = {"follow": "true"}
        async with follower.stream("GET", f"{PODS}/csi-abcde/log", params=params) as response:
            await asyncio.wait_for(anext(response.aiter_lines()), 5)
            assert server.call(lambda: server.server.log_followers) == 1
    for _ in range(100):
        if server.call(lambda: server.server.log_followers) == 0:
            break
        await asyncio.sleep(0.05)
    assert server.call(lambda: server.server.log_followers) == 0
