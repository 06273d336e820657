"""The Kubernetes API emulator over real HTTP: discovery, CRUD, patches, server-side apply,
selectors, paging, watch, garbage collection, deletion rules, namespaces, tables, auth and
persistence across a restart of the real `dew-csi sandbox apiserver` process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import socket
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dew_csi.sandbox.apiserver import ApiServerThread
from dew_csi.sandbox.apitables import format_age
from tests.conftest import ApiServerProcess, crd_documents

GROUP = "secrets-store.csi.x-k8s.io"
SPC = f"/apis/{GROUP}/v1/namespaces/default/secretproviderclasses"
SPC_ALPHA = f"/apis/{GROUP}/v1alpha1/namespaces/default/secretproviderclasses"
SPCPS = f"/apis/{GROUP}/v1/namespaces/default/secretproviderclasspodstatuses"
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
SECRETS = "/api/v1/namespaces/default/secrets"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
PODS = "/api/v1/namespaces/default/pods"
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
REPLICASETS = "/apis/apps/v1/namespaces/default/replicasets"
NAMESPACES = "/api/v1/namespaces"
TABLE = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
STRATEGIC = {"Content-Type": "application/strategic-merge-patch+json"}
APPLY = {"Content-Type": "application/apply-patch+yaml"}
AGE = re.compile(r"^\d+s$")


# -- helpers


@pytest.fixture
async def api(apiserver: ApiServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=apiserver.url, timeout=10) as client:
        yield client


@pytest.fixture
async def crd_api(api: httpx.AsyncClient) -> httpx.AsyncClient:
    for crd in crd_documents():
        await ok(await api.post(CRDS, json=crd), 201)
    return api


async def ok(response: httpx.Response, code: int = 200) -> Any:
    assert response.status_code == code, response.text
    return response.json()


def failure(response: httpx.Response, code: int, reason: str) -> dict[str, Any]:
    """The response is a Kubernetes Status failure with this code and reason."""
    assert response.status_code == code, response.text
    body = response.json()
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert body["code"] == code
    assert body["reason"] == reason
    assert body["message"]
    return dict(body)


def spc(name: str, objects: str = "- objectName: a\n", **meta: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": name, **meta},
        "spec": {"provider": "cce", "parameters": {"objects": objects}},
    }


def configmap(name: str, labels: dict[str, str] | None = None, **meta: Any) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": labels or {}, **meta}, "data": {"k": "v"}}


def pod(name: str, node: str | None = None, **meta: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "nginx:alpine"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, **meta}, "spec": spec}


def deployment(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "nginx:1"}]},
            },
            **spec,
        },
    }


def owner_ref(obj: dict[str, Any], kind: str, api_version: str = "v1") -> dict[str, Any]:
    meta = obj["metadata"]
    return {"apiVersion": api_version, "kind": kind, "name": meta["name"], "uid": meta["uid"]}


def rv(obj: dict[str, Any]) -> int:
    return int(obj["metadata"]["resourceVersion"])


class WatchStream:
    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        while True:
            line = await asyncio.wait_for(anext(self._lines), timeout)
            if line.strip():
                return dict(json.loads(line))

    async def ended(self, timeout: float = 5.0) -> bool:
        """True when the server ends the stream (without sending anything more)."""
        try:
            await self.next(timeout)
        except StopAsyncIteration:
            return True
        return False


@contextlib.asynccontextmanager
async def watch(
    api: httpx.AsyncClient, path: str, headers: dict[str, str] | None = None, **params: Any
) -> AsyncIterator[WatchStream]:
    params.setdefault("watch", "true")
    async with api.stream("GET", path, params=params, headers=headers or {}) as response:
        assert response.status_code == 200
        yield WatchStream(response)


async def names(api: httpx.AsyncClient, path: str, **params: Any) -> list[str]:
    body = await ok(await api.get(path, params=params))
    return [item["metadata"]["name"] for item in body["items"]]


async def eventually(check: Callable[[], Any], timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


# -- discovery


async def test_version_reports_a_1_31_server(api: httpx.AsyncClient) -> None:
    for path in ("/version", "/version/"):
        body = await ok(await api.get(path))
        assert (body["major"], body["minor"]) == ("1", "31")
        assert body["gitVersion"].startswith("v1.31.")
    assert (await api.get("/healthz")).text == "ok"
    assert (await api.get("/readyz")).text == "ok"
    assert (await api.get("/livez")).text == "ok"


async def test_legacy_discovery(api: httpx.AsyncClient) -> None:
    core = await ok(await api.get("/api/"))
    assert core["kind"] == "APIVersions"
    assert core["versions"] == ["v1"]
    groups = await ok(await api.get("/apis"))
    by_name = {g["name"]: g for g in groups["groups"]}
    assert {"apps", "apiextensions.k8s.io", "admissionregistration.k8s.io"} <= set(by_name)
    assert by_name["apps"]["preferredVersion"]["groupVersion"] == "apps/v1"
    v1 = await ok(await api.get("/api/v1/"))
    resources = {r["name"]: r for r in v1["resources"]}
    assert resources["pods"]["namespaced"] is True
    assert resources["pods"]["shortNames"] == ["po"]
    assert resources["pods/status"]["verbs"] == ["get", "patch", "update"]
    assert resources["namespaces"]["namespaced"] is False
    assert resources["serviceaccounts"]["shortNames"] == ["sa"]
    apps = await ok(await api.get("/apis/apps/v1"))
    assert {"deployments", "deployments/scale", "replicasets"} <= {
        r["name"] for r in apps["resources"]
    }
    group = await ok(await api.get("/apis/apps"))
    assert group["kind"] == "APIGroup"
    assert group["name"] == "apps"
    failure(await api.get(f"/apis/{GROUP}"), 404, "NotFound")


async def test_aggregated_discovery_echoes_its_media_type(api: httpx.AsyncClient) -> None:
    accept = (
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
        "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,"
        "application/json"
    )
    response = await api.get("/apis", headers={"Accept": accept})
    assert response.headers["Content-Type"] == (
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    )
    body = response.json()
    assert body["kind"] == "APIGroupDiscoveryList"
    apps = next(i for i in body["items"] if i["metadata"]["name"] == "apps")
    deploy = next(r for r in apps["versions"][0]["resources"] if r["resource"] == "deployments")
    assert deploy["scope"] == "Namespaced"
    assert deploy["shortNames"] == ["deploy"]
    assert {s["subresource"] for s in deploy["subresources"]} == {"status", "scale"}
    core = (await api.get("/api", headers={"Accept": accept})).json()
    assert [v["version"] for v in core["items"][0]["versions"]] == ["v1"]


async def test_openapi_v3_has_a_patch_with_field_validation_for_every_kind(
    crd_api: httpx.AsyncClient,
) -> None:
    index = await ok(await crd_api.get("/openapi/v3"))
    assert {"api/v1", "apis/apps/v1", f"apis/{GROUP}/v1", f"apis/{GROUP}/v1alpha1"} <= set(
        index["paths"]
    )
    for group_version, entry in index["paths"].items():
        document = await ok(await crd_api.get(entry["serverRelativeURL"]))
        kinds = set()
        for operations in document["paths"].values():
            patch = operations["patch"]
            assert "fieldValidation" in {p["name"] for p in patch["parameters"]}
            kinds.add(patch["x-kubernetes-group-version-kind"]["kind"])
        if group_version == f"apis/{GROUP}/v1":
            assert kinds == {"SecretProviderClass", "SecretProviderClassPodStatus"}
        if group_version == "api/v1":
            assert {"Pod", "Secret", "ServiceAccount", "Namespace"} <= kinds
    failure(await crd_api.get("/openapi/v2"), 404, "NotFound")


async def test_crd_registration_serves_the_resource_and_deletion_removes_it(
    api: httpx.AsyncClient,
) -> None:
    failure(await api.get(SPC), 404, "NotFound")
    failure(await api.get(f"/apis/{GROUP}/v1"), 404, "NotFound")
    crds = crd_documents()
    for crd in crds:
        created = await ok(await api.post(CRDS, json=crd), 201)
        conditions = {c["type"]: c["status"] for c in created["status"]["conditions"]}
        assert conditions == {"NamesAccepted": "True", "Established": "True"}
        assert created["status"]["storedVersions"] == ["v1"]
    resources = await ok(await api.get(f"/apis/{GROUP}/v1"))
    spc_entry = next(r for r in resources["resources"] if r["name"] == "secretproviderclasses")
    assert spc_entry["shortNames"] == ["spc"]
    assert spc_entry["singularName"] == "secretproviderclass"
    group = await ok(await api.get(f"/apis/{GROUP}"))
    assert [v["version"] for v in group["versions"]] == ["v1", "v1alpha1"]
    assert group["preferredVersion"]["version"] == "v1"
    await ok(await api.post(SPC, json=spc("will-go")), 201)

    async with watch(api, SPC) as stream:
        assert (await stream.next())["type"] == "ADDED"
        name = "secretproviderclasses." + GROUP
        await ok(await api.delete(f"{CRDS}/{name}"))
        deleted = await stream.next()
        assert (deleted["type"], deleted["object"]["metadata"]["name"]) == ("DELETED", "will-go")
        assert await stream.ended()  # the resource went away, so did its watches
    failure(await api.get(SPC), 404, "NotFound")
    resources = await ok(await api.get(f"/apis/{GROUP}/v1"))
    assert [r["name"] for r in resources["resources"]] == ["secretproviderclasspodstatuses"]


# -- CRUD, conflicts, generation


async def test_namespaces_and_their_default_service_accounts_exist_from_the_start(
    api: httpx.AsyncClient,
) -> None:
    assert set(await names(api, NAMESPACES)) == {
        "default",
        "kube-system",
        "kube-public",
        "kube-node-lease",
    }
    accounts = await ok(await api.get("/api/v1/serviceaccounts"))
    assert sorted(i["metadata"]["namespace"] for i in accounts["items"]) == sorted(
        ["default", "kube-system", "kube-public", "kube-node-lease"]
    )
    await ok(await api.post(NAMESPACES, json={"metadata": {"name": "team-a"}}), 201)
    assert await names(api, "/api/v1/namespaces/team-a/serviceaccounts") == ["default"]
    # Like the token controller, the emulator puts a deleted `default` back.
    await ok(await api.delete("/api/v1/namespaces/team-a/serviceaccounts/default"))
    assert await names(api, "/api/v1/namespaces/team-a/serviceaccounts") == ["default"]


async def test_secret_crud_folds_string_data_and_defaults_the_type(
    api: httpx.AsyncClient,
) -> None:
    body = {"metadata": {"name": "s1"}, "stringData": {"user": "admin"}, "data": {"x": "eA=="}}
    created = await ok(await api.post(SECRETS, json=body), 201)
    assert created["kind"] == "Secret"
    assert created["apiVersion"] == "v1"
    assert created["data"] == {"x": "eA==", "user": "YWRtaW4="}
    assert "stringData" not in created
    assert created["type"] == "Opaque"
    meta = created["metadata"]
    assert meta["namespace"] == "default"
    assert meta["uid"]
    assert meta["creationTimestamp"]
    assert "generation" not in meta  # Secrets have no generation

    listed = await ok(await api.get(SECRETS))
    assert listed["kind"] == "SecretList"
    assert listed["apiVersion"] == "v1"
    assert int(listed["metadata"]["resourceVersion"]) >= rv(created)
    assert "kind" not in listed["items"][0]
    assert "apiVersion" not in listed["items"][0]

    failure(await api.post(SECRETS, json=body), 409, "AlreadyExists")
    update = dict(created, stringData={"user": "root"})
    replaced = await ok(await api.put(f"{SECRETS}/s1", json=update))
    assert replaced["data"]["user"] == "cm9vdA=="
    assert rv(replaced) > rv(created)
    stale = failure(await api.put(f"{SECRETS}/s1", json=update), 409, "Conflict")
    assert stale["message"] == (
        'Operation cannot be fulfilled on secrets "s1": the object has been modified; please '
        "apply your changes to the latest version and try again"
    )
    deleted = await ok(await api.delete(f"{SECRETS}/s1"))
    assert deleted["status"] == "Success"
    assert deleted["details"]["name"] == "s1"
    missing = failure(await api.get(f"{SECRETS}/s1"), 404, "NotFound")
    assert missing["message"] == 'secrets "s1" not found'
    assert missing["details"] == {"name": "s1", "kind": "secrets"}


async def test_custom_resources_are_stored_once_and_served_in_every_version(
    crd_api: httpx.AsyncClient,
) -> None:
    api = crd_api
    created = await ok(await api.post(SPC, json=spc("spc-a")), 201)
    assert created["metadata"]["generation"] == 1
    alpha = await api.get(f"{SPC_ALPHA}/spc-a")
    assert alpha.json()["apiVersion"] == f"{GROUP}/v1alpha1"
    assert alpha.json()["spec"] == created["spec"]
    assert "v1alpha1 is deprecated" in alpha.headers["Warning"]
    listed = await ok(await api.get(SPC))
    assert listed["kind"] == "SecretProviderClassList"
    assert listed["items"][0]["kind"] == "SecretProviderClass"  # CR list items keep these
    assert listed["items"][0]["apiVersion"] == f"{GROUP}/v1"
    cluster_wide = await ok(await api.get(f"/apis/{GROUP}/v1/secretproviderclasses"))
    assert [i["metadata"]["name"] for i in cluster_wide["items"]] == ["spc-a"]

    # Custom resources need a resourceVersion on update, and a stale one is a conflict.
    unconditional = dict(created)
    unconditional["metadata"] = {"name": "spc-a"}
    invalid = failure(await api.put(f"{SPC}/spc-a", json=unconditional), 422, "Invalid")
    assert "metadata.resourceVersion: Invalid value: 0x0: must be specified" in invalid["message"]
    changed = dict(created, spec={"provider": "cce", "parameters": {"objects": "- b\n"}})
    updated = await ok(await api.put(f"{SPC}/spc-a", json=changed))
    stale = failure(await api.put(f"{SPC}/spc-a", json=changed), 409, "Conflict")
    assert stale["message"] == (
        f'Operation cannot be fulfilled on secretproviderclasses.{GROUP} "spc-a": the object '
        "has been modified; please apply your changes to the latest version and try again"
    )
    # The same write through v1alpha1 lands on the same object.
    through_alpha = dict(updated, apiVersion=f"{GROUP}/v1alpha1")
    through_alpha["metadata"] = dict(updated["metadata"], labels={"via": "alpha"})
    await ok(await api.put(f"{SPC_ALPHA}/spc-a", json=through_alpha))
    assert (await ok(await api.get(f"{SPC}/spc-a")))["metadata"]["labels"] == {"via": "alpha"}

    deleted = await ok(await api.delete(f"{SPC}/spc-a"))
    assert deleted["kind"] == "SecretProviderClass"  # custom resources return the object
    failure(await api.get(f"{SPC}/spc-a"), 404, "NotFound")


async def test_generation_follows_the_spec(crd_api: httpx.AsyncClient) -> None:
    api = crd_api
    await ok(await api.post(SPC, json=spc("gen")), 201)
    labelled = await ok(
        await api.patch(f"{SPC}/gen", json={"metadata": {"labels": {"a": "b"}}}, headers=MERGE)
    )
    assert labelled["metadata"]["generation"] == 1
    respec = {"spec": {"parameters": {"objects": "- c\n"}}}
    changed = await ok(await api.patch(f"{SPC}/gen", json=respec, headers=MERGE))
    assert changed["metadata"]["generation"] == 2
    # Without a status subresource, a status change is a change outside metadata too.
    with_status = await ok(
        await api.patch(f"{SPC}/gen", json={"status": {"byPod": []}}, headers=MERGE)
    )
    assert with_status["metadata"]["generation"] == 3
    same = await ok(await api.patch(f"{SPC}/gen", json=respec, headers=MERGE))
    assert same["metadata"]["generation"] == 3
    assert rv(same) == rv(with_status)  # a no-op write changes nothing, not even the RV

    # Deployments have a status subresource: status writes never bump generation, and the
    # main resource ignores status.
    created = await ok(await api.post(DEPLOYMENTS, json=deployment("web")), 201)
    assert created["metadata"]["generation"] == 1
    assert created["status"] == {}
    status = {"status": {"replicas": 1, "readyReplicas": 1, "observedGeneration": 1}}
    after_status = await ok(
        await api.patch(f"{DEPLOYMENTS}/web/status", json=status, headers=MERGE)
    )
    assert after_status["status"]["readyReplicas"] == 1
    assert after_status["metadata"]["generation"] == 1
    ignored = await ok(
        await api.patch(f"{DEPLOYMENTS}/web", json={"status": {"replicas": 9}}, headers=MERGE)
    )
    assert ignored["status"]["replicas"] == 1
    scaled = await ok(
        await api.patch(f"{DEPLOYMENTS}/web", json={"spec": {"replicas": 3}}, headers=MERGE)
    )
    assert scaled["metadata"]["generation"] == 2


async def test_generate_name_and_name_validation(api: httpx.AsyncClient) -> None:
    generated = await ok(
        await api.post(CONFIGMAPS, json={"metadata": {"generateName": "cfg-"}}), 201
    )
    assert re.fullmatch(r"cfg-[a-z0-9]{5}", generated["metadata"]["name"])
    missing = failure(await api.post(CONFIGMAPS, json={"metadata": {}}), 422, "Invalid")
    assert missing["message"] == (
        'ConfigMap "" is invalid: metadata.name: Required value: name or generateName is required'
    )
    assert missing["details"]["causes"][0]["field"] == "metadata.name"
    bad = failure(
        await api.post(CONFIGMAPS, json={"metadata": {"name": "Bad_Name"}}), 422, "Invalid"
    )
    assert bad["message"].startswith(
        'ConfigMap "Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase '
        "RFC 1123 subdomain"
    )
    label = failure(await api.post(NAMESPACES, json={"metadata": {"name": "a.b"}}), 422, "Invalid")
    assert "RFC 1123 label" in label["message"]
    bad_label = failure(
        await api.post(CONFIGMAPS, json=configmap("c", {"k": "not ok!"})), 422, "Invalid"
    )
    assert "metadata.labels: Invalid value" in bad_label["message"]


async def test_custom_resource_schema_validation_and_pruning(crd_api: httpx.AsyncClient) -> None:
    api = crd_api
    bad = spc("typed")
    bad["spec"]["provider"] = 7
    invalid = failure(await api.post(SPC, json=bad), 422, "Invalid")
    assert invalid["message"] == (
        f'SecretProviderClass.{GROUP} "typed" is invalid: spec.provider: Invalid value: '
        '"integer": spec.provider in body must be of type string: "integer"'
    )
    unknown = spc("unknown")
    unknown["spec"]["extra"] = True
    strict = failure(
        await api.post(SPC, json=unknown, params={"fieldValidation": "Strict"}), 400, "BadRequest"
    )
    assert strict["message"] == (
        'SecretProviderClass in version "v1" cannot be handled as a SecretProviderClass: '
        'strict decoding error: unknown field "spec.extra"'
    )
    warned = await api.post(SPC, json=unknown, params={"fieldValidation": "Warn"})
    assert warned.status_code == 201
    assert warned.headers["Warning"] == '299 - "unknown field \\"spec.extra\\""'
    assert "extra" not in warned.json()["spec"]  # pruned, as CRDs prune unknown fields
    quiet = await api.post(
        SPC, json=spc("quiet") | {"surplus": 1}, params={"fieldValidation": "Ignore"}
    )
    assert quiet.status_code == 201
    assert "Warning" not in quiet.headers
    assert "surplus" not in quiet.json()


async def test_request_bodies_may_be_yaml(api: httpx.AsyncClient) -> None:
    body = (
        b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: from-yaml\n"
        b"data:\n  when: 2024-01-01\n"
    )
    created = await ok(
        await api.post(CONFIGMAPS, content=body, headers={"Content-Type": "application/yaml"}),
        201,
    )
    assert created["data"] == {"when": "2024-01-01"}  # a YAML timestamp stays a string


async def test_pods_need_their_service_account(api: httpx.AsyncClient) -> None:
    body = pod("p")
    body["spec"]["serviceAccountName"] = "nobody"
    forbidden = failure(await api.post(PODS, json=body), 403, "Forbidden")
    assert forbidden["message"] == (
        'pods "p" is forbidden: error looking up service account default/nobody: '
        'serviceaccount "nobody" not found'
    )
    created = await ok(await api.post(PODS, json=pod("p")), 201)
    assert created["spec"]["serviceAccountName"] == "default"
    assert created["status"] == {"phase": "Pending", "qosClass": "BestEffort"}


# -- patches


async def test_merge_patch(api: httpx.AsyncClient) -> None:
    await ok(await api.post(CONFIGMAPS, json=configmap("m", {"a": "1", "b": "2"})), 201)
    patched = await ok(
        await api.patch(
            f"{CONFIGMAPS}/m",
            json={"metadata": {"labels": {"a": None, "c": "3"}}, "data": {"n": "1"}},
            headers=MERGE,
        )
    )
    assert patched["metadata"]["labels"] == {"b": "2", "c": "3"}
    assert patched["data"] == {"k": "v", "n": "1"}
    stale = {"metadata": {"resourceVersion": "1"}, "data": {"z": "z"}}
    failure(await api.patch(f"{CONFIGMAPS}/m", json=stale, headers=MERGE), 409, "Conflict")
    failure(await api.patch(f"{CONFIGMAPS}/nope", json={}, headers=MERGE), 404, "NotFound")


async def test_json_patch_operations_and_errors(api: httpx.AsyncClient) -> None:
    await ok(await api.post(CONFIGMAPS, json=configmap("j", {"a": "1"})), 201)
    operations = [
        {"op": "test", "path": "/data/k", "value": "v"},
        {"op": "add", "path": "/data/x", "value": "1"},
        {"op": "replace", "path": "/data/k", "value": "w"},
        {"op": "copy", "from": "/data/x", "path": "/data/y"},
        {"op": "move", "from": "/data/x", "path": "/data/z"},
        {"op": "remove", "path": "/metadata/labels/a"},
        {"op": "add", "path": "/metadata/finalizers", "value": ["example.com/a"]},
        {"op": "add", "path": "/metadata/finalizers/-", "value": "example.com/c"},
        {"op": "add", "path": "/metadata/finalizers/1", "value": "example.com/b"},
        {"op": "add", "path": "/metadata/annotations", "value": {"a~b/c": "1"}},
        {"op": "remove", "path": "/metadata/annotations/a~0b~1c"},
    ]
    patched = await ok(await api.patch(f"{CONFIGMAPS}/j", json=operations, headers=JSON_PATCH))
    assert patched["data"] == {"k": "w", "y": "1", "z": "1"}
    assert patched["metadata"]["labels"] == {}
    assert patched["metadata"]["finalizers"] == ["example.com/a", "example.com/b", "example.com/c"]
    assert patched["metadata"]["annotations"] == {}

    test_failed = failure(
        await api.patch(
            f"{CONFIGMAPS}/j",
            json=[{"op": "test", "path": "/data/k", "value": "v"}],
            headers=JSON_PATCH,
        ),
        422,
        "Invalid",
    )
    assert test_failed["message"] == "testing value /data/k failed: test failed"
    missing = failure(
        await api.patch(
            f"{CONFIGMAPS}/j",
            json=[{"op": "replace", "path": "/data/nope", "value": "1"}],
            headers=JSON_PATCH,
        ),
        422,
        "Invalid",
    )
    assert "/data/nope" in missing["message"]
    not_a_list = failure(
        await api.patch(f"{CONFIGMAPS}/j", json={"op": "add"}, headers=JSON_PATCH),
        400,
        "BadRequest",
    )
    assert "jsonpatch.Patch" in not_a_list["message"]
    # Failed patches changed nothing.
    assert (await ok(await api.get(f"{CONFIGMAPS}/j")))["data"]["k"] == "w"


async def test_strategic_merge_patch_merges_lists_by_key_with_directives(
    api: httpx.AsyncClient,
) -> None:
    body = deployment("smp")
    template = body["spec"]["template"]["spec"]
    template["containers"] = [
        {
            "name": "app",
            "image": "a:1",
            "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
            "volumeMounts": [{"name": "v1", "mountPath": "/x"}],
            "ports": [{"containerPort": 80}],
        },
        {"name": "side", "image": "s:1"},
    ]
    template["volumes"] = [{"name": "v1", "emptyDir": {}}]
    template["imagePullSecrets"] = [{"name": "pull-a"}]
    body["metadata"]["finalizers"] = ["example.com/f1", "example.com/f2"]
    await ok(await api.post(DEPLOYMENTS, json=body), 201)

    first = {
        "metadata": {
            "$deleteFromPrimitiveList/finalizers": ["example.com/f1"],
            "finalizers": ["example.com/f3"],
        },
        "spec": {
            "strategy": {"$retainKeys": ["type"], "type": "Recreate", "rollingUpdate": None},
            "template": {
                "spec": {
                    "containers": [
                        {
                            "name": "app",
                            "image": "a:2",
                            "env": [{"name": "B", "value": "3"}, {"name": "C", "value": "4"}],
                            "ports": [{"containerPort": 8080}],
                        },
                        {"name": "side", "$patch": "delete"},
                    ],
                    "volumes": [{"name": "v2", "emptyDir": {}}],
                    "imagePullSecrets": [{"name": "pull-b"}],
                }
            },
        },
    }
    patched = await ok(await api.patch(f"{DEPLOYMENTS}/smp", json=first, headers=STRATEGIC))
    spec = patched["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["app"]
    app = spec["containers"][0]
    assert app["image"] == "a:2"
    assert app["env"] == [
        {"name": "A", "value": "1"},
        {"name": "B", "value": "3"},
        {"name": "C", "value": "4"},
    ]
    assert app["volumeMounts"] == [{"name": "v1", "mountPath": "/x"}]
    assert [p["containerPort"] for p in app["ports"]] == [80, 8080]
    assert [v["name"] for v in spec["volumes"]] == ["v1", "v2"]
    assert [s["name"] for s in spec["imagePullSecrets"]] == ["pull-a", "pull-b"]
    assert patched["spec"]["strategy"] == {"type": "Recreate"}
    assert patched["metadata"]["finalizers"] == ["example.com/f2", "example.com/f3"]
    assert patched["metadata"]["generation"] == 2

    second = {
        "spec": {
            "template": {
                "spec": {
                    "$setElementOrder/containers": [{"name": "first"}, {"name": "app"}],
                    "containers": [{"name": "first", "image": "f:1"}],
                    "volumes": [{"$patch": "replace"}, {"name": "only", "emptyDir": {}}],
                },
                "metadata": {"$patch": "replace", "labels": {"app": "smp"}},
            }
        }
    }
    patched = await ok(await api.patch(f"{DEPLOYMENTS}/smp", json=second, headers=STRATEGIC))
    spec = patched["spec"]["template"]["spec"]
    assert [c["name"] for c in spec["containers"]] == ["first", "app"]
    assert spec["volumes"] == [{"name": "only", "emptyDir": {}}]
    assert patched["spec"]["template"]["metadata"] == {"labels": {"app": "smp"}}
    unknown = failure(
        await api.patch(
            f"{DEPLOYMENTS}/smp", json={"spec": {"$patch": "explode"}}, headers=STRATEGIC
        ),
        400,
        "BadRequest",
    )
    assert "unknown patch type" in unknown["message"]


async def test_strategic_merge_patch_is_unsupported_for_custom_resources(
    crd_api: httpx.AsyncClient,
) -> None:
    await ok(await crd_api.post(SPC, json=spc("x")), 201)
    refused = failure(
        await crd_api.patch(f"{SPC}/x", json={"spec": {}}, headers=STRATEGIC),
        415,
        "UnsupportedMediaType",
    )
    assert refused["message"] == (
        "the body of the request was in an unknown format - accepted media types include: "
        "application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml"
    )


async def test_server_side_apply_creates_merges_and_tracks_ownership(
    crd_api: httpx.AsyncClient,
) -> None:
    api = crd_api
    url = f"{SPC}/ssa"
    applied = (
        f"apiVersion: {GROUP}/v1\nkind: SecretProviderClass\nmetadata:\n  name: ssa\n"
        "  labels: {a: '1', b: '2'}\nspec:\n  provider: cce\n  parameters:\n    objects: one\n"
    )
    created = await ok(
        await api.patch(url, content=applied, headers=APPLY, params={"fieldManager": "alice"}),
        201,
    )
    assert created["spec"]["parameters"]["objects"] == "one"
    # alice stops applying label b and changes objects: b is removed, objects updated.
    second = applied.replace(", b: '2'", "").replace("objects: one", "objects: two")
    updated = await ok(
        await api.patch(url, content=second, headers=APPLY, params={"fieldManager": "alice"})
    )
    assert updated["metadata"]["labels"] == {"a": "1"}
    assert updated["spec"]["parameters"]["objects"] == "two"
    assert updated["metadata"]["generation"] == 2

    # bob wants another provider: a conflict with alice, unless forced.
    bob = (
        f'{{"apiVersion": "{GROUP}/v1", "kind": "SecretProviderClass", '
        '"metadata": {"name": "ssa"}, "spec": {"provider": "other"}}'
    )
    conflicted = failure(
        await api.patch(url, content=bob, headers=APPLY, params={"fieldManager": "bob"}),
        409,
        "Conflict",
    )
    assert conflicted["message"] == (
        f'Apply failed with 1 conflict: conflict with "alice" using {GROUP}/v1: .spec.provider'
    )
    forced = await ok(
        await api.patch(
            url, content=bob, headers=APPLY, params={"fieldManager": "bob", "force": "true"}
        )
    )
    assert forced["spec"]["provider"] == "other"
    assert forced["spec"]["parameters"]["objects"] == "two"  # alice's field stays
    # Now bob owns the provider: alice re-applying her old value conflicts with bob.
    again = failure(
        await api.patch(url, content=second, headers=APPLY, params={"fieldManager": "alice"}),
        409,
        "Conflict",
    )
    assert '"bob"' in again["message"]
    # An ordinary update takes ownership of what it changed.
    await ok(
        await api.patch(
            url,
            json={"spec": {"parameters": {"objects": "carol's"}}},
            headers=MERGE,
            params={"fieldManager": "carol"},
        )
    )
    third = second.replace("  provider: cce\n", "")
    by_carol = failure(
        await api.patch(url, content=third, headers=APPLY, params={"fieldManager": "alice"}),
        409,
        "Conflict",
    )
    assert '"carol"' in by_carol["message"]
    assert ".spec.parameters.objects" in by_carol["message"]
    no_manager = failure(await api.patch(url, content=second, headers=APPLY), 422, "Invalid")
    assert "fieldManager: Required value" in no_manager["message"]


async def test_server_side_apply_on_built_ins_merges_keyed_lists(api: httpx.AsyncClient) -> None:
    body = deployment("applied")
    url = f"{DEPLOYMENTS}/applied"
    params = {"fieldManager": "ci"}
    await ok(await api.patch(url, content=json.dumps(body), headers=APPLY, params=params), 201)
    body["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:2"
    updated = await ok(await api.patch(url, content=json.dumps(body), headers=APPLY, params=params))
    containers = updated["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("app", "nginx:2")]
    assert containers[0]["imagePullPolicy"] == "IfNotPresent"  # defaults are kept


# -- selectors and paging


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", ["a", "b", "c", "d"]),
        ("tier=web", ["a", "b"]),
        ("tier==web", ["a", "b"]),
        ("tier!=web", ["c", "d"]),
        ("tier in (web, db)", ["a", "b", "c"]),
        ("tier notin (web)", ["c", "d"]),
        ("env", ["a", "c"]),
        ("!env", ["b", "d"]),
        ("tier=web,env=prod", ["a"]),
        ("tier in (web),!env", ["b"]),
        ("rank>1", ["b", "c"]),
        ("rank<2", ["a"]),
        ("example.com/team=x", ["d"]),
    ],
)
async def test_label_selectors(api: httpx.AsyncClient, selector: str, expected: list[str]) -> None:
    labels = {
        "a": {"tier": "web", "env": "prod", "rank": "1"},
        "b": {"tier": "web", "rank": "2"},
        "c": {"tier": "db", "env": "dev", "rank": "3"},
        "d": {"example.com/team": "x"},
    }
    for name, values in labels.items():
        await ok(await api.post(CONFIGMAPS, json=configmap(name, values)), 201)
    assert await names(api, CONFIGMAPS, labelSelector=selector) == expected


async def test_field_selectors(api: httpx.AsyncClient) -> None:
    await ok(await api.post(NAMESPACES, json={"metadata": {"name": "other"}}), 201)
    for namespace in ("default", "other"):
        for name in ("one", "two"):
            path = f"/api/v1/namespaces/{namespace}/configmaps"
            await ok(await api.post(path, json=configmap(name)), 201)
    all_configmaps = "/api/v1/configmaps"
    assert await names(api, all_configmaps, fieldSelector="metadata.name=one") == ["one", "one"]
    assert await names(
        api, all_configmaps, fieldSelector="metadata.namespace==other,metadata.name!=one"
    ) == ["two"]
    assert await names(api, CONFIGMAPS, fieldSelector="metadata.name=one,metadata.name=one") == [
        "one"
    ]  # duplicates are fine

    await ok(await api.post(PODS, json=pod("on-node", node="node-1")), 201)
    await ok(await api.post(PODS, json=pod("pending")), 201)
    await ok(
        await api.patch(
            f"{PODS}/on-node/status", json={"status": {"phase": "Running"}}, headers=MERGE
        )
    )
    assert await names(api, PODS, fieldSelector="spec.nodeName=node-1") == ["on-node"]
    assert await names(api, PODS, fieldSelector="spec.nodeName=") == ["pending"]
    assert await names(api, PODS, fieldSelector="status.phase=Running") == ["on-node"]
    assert await names(api, PODS, fieldSelector="status.phase!=Running") == ["pending"]

    event = {
        "metadata": {"name": "ev1"},
        "involvedObject": {"kind": "Pod", "name": "on-node", "namespace": "default", "uid": "u1"},
        "reason": "Mounted",
        "type": "Normal",
    }
    await ok(await api.post("/api/v1/namespaces/default/events", json=event), 201)
    selected = await names(
        api,
        "/api/v1/namespaces/default/events",
        fieldSelector="involvedObject.name=on-node,involvedObject.kind=Pod,involvedObject.uid=u1",
    )
    assert selected == ["ev1"]
    unsupported = failure(
        await api.get(CONFIGMAPS, params={"fieldSelector": "spec.nodeName=x"}), 400, "BadRequest"
    )
    assert unsupported["message"] == (
        '"spec.nodeName" is not a known field selector: only "metadata.name", "metadata.namespace"'
    )
    on_pods = failure(
        await api.get(PODS, params={"fieldSelector": "spec.bogus=x"}), 400, "BadRequest"
    )
    assert on_pods["message"] == "field label not supported: spec.bogus"


async def test_limit_and_continue_page_through_a_consistent_snapshot(
    api: httpx.AsyncClient,
) -> None:
    for index in range(5):
        await ok(await api.post(CONFIGMAPS, json=configmap(f"cm-{index}")), 201)
    page = await ok(await api.get(CONFIGMAPS, params={"limit": 2}))
    assert [i["metadata"]["name"] for i in page["items"]] == ["cm-0", "cm-1"]
    assert page["metadata"]["remainingItemCount"] == 3
    token, version = page["metadata"]["continue"], page["metadata"]["resourceVersion"]
    # Changes after the first page do not show in later pages of the same list.
    await ok(await api.post(CONFIGMAPS, json=configmap("cm-9")), 201)
    await ok(await api.delete(f"{CONFIGMAPS}/cm-3"))
    await ok(await api.patch(f"{CONFIGMAPS}/cm-2", json={"data": {"k": "new"}}, headers=MERGE))
    second = await ok(await api.get(CONFIGMAPS, params={"limit": 2, "continue": token}))
    assert [i["metadata"]["name"] for i in second["items"]] == ["cm-2", "cm-3"]
    assert second["items"][0]["data"] == {"k": "v"}
    assert second["metadata"]["resourceVersion"] == version
    third = await ok(
        await api.get(CONFIGMAPS, params={"limit": 2, "continue": second["metadata"]["continue"]})
    )
    assert [i["metadata"]["name"] for i in third["items"]] == ["cm-4"]
    assert "continue" not in third["metadata"]
    assert await names(api, CONFIGMAPS) == ["cm-0", "cm-1", "cm-2", "cm-4", "cm-9"]
    # A continue token from before a compaction can no longer be served.
    await ok(await api.post("/_emulator/compact"))
    expired = failure(
        await api.get(CONFIGMAPS, params={"limit": 2, "continue": token}), 410, "Expired"
    )
    assert expired["message"].startswith("The provided continue parameter is too old")
    exact = failure(
        await api.get(
            CONFIGMAPS, params={"resourceVersion": version, "resourceVersionMatch": "Exact"}
        ),
        410,
        "Expired",
    )
    assert exact["message"].startswith("too old resource version")


# -- watch


async def test_watch_without_a_version_starts_with_the_current_objects(
    api: httpx.AsyncClient,
) -> None:
    await ok(await api.post(CONFIGMAPS, json=configmap("before")), 201)
    async with watch(api, CONFIGMAPS, resourceVersion="0") as stream:
        first = await stream.next()
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "before")
        assert first["object"]["kind"] == "ConfigMap"  # watch objects carry their type
        await ok(await api.post(CONFIGMAPS, json=configmap("after")), 201)
        live = await stream.next()
        assert (live["type"], live["object"]["metadata"]["name"]) == ("ADDED", "after")
    async with watch(api, CONFIGMAPS) as stream:  # no resourceVersion at all
        seen = {(await stream.next())["object"]["metadata"]["name"] for _ in range(2)}
        assert seen == {"before", "after"}


async def test_watch_from_a_version_replays_only_later_events(api: httpx.AsyncClient) -> None:
    first = await ok(await api.post(CONFIGMAPS, json=configmap("w1")), 201)
    await ok(await api.patch(f"{CONFIGMAPS}/w1", json={"data": {"k": "2"}}, headers=MERGE))
    await ok(await api.post(CONFIGMAPS, json=configmap("w2")), 201)
    deleted = await ok(await api.delete(f"{CONFIGMAPS}/w2"))
    assert deleted["status"] == "Success"
    async with watch(api, CONFIGMAPS, resourceVersion=str(rv(first))) as stream:
        events = [await stream.next() for _ in range(3)]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
            ("MODIFIED", "w1"),
            ("ADDED", "w2"),
            ("DELETED", "w2"),
        ]
        versions = [rv(e["object"]) for e in events]
        assert versions == sorted(versions)
        assert versions[0] > rv(first)
        # DELETED carries the last state, with a resourceVersion of its own.
        assert events[2]["object"]["data"] == {"k": "v"}
        assert versions[2] > versions[1]
        await ok(await api.patch(f"{CONFIGMAPS}/w1", json={"data": {"k": "3"}}, headers=MERGE))
        assert (await stream.next())["object"]["data"] == {"k": "3"}


async def test_watch_bookmarks_carry_the_current_version() -> None:
    with ApiServerThread(bookmark_interval=0.2) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as api:
            created = await ok(await api.post(CONFIGMAPS, json=configmap("bm")), 201)
            async with watch(
                api, CONFIGMAPS, resourceVersion=str(rv(created)), allowWatchBookmarks="True"
            ) as stream:
                bookmark = await stream.next(timeout=2)
                assert bookmark["type"] == "BOOKMARK"
                assert bookmark["object"]["kind"] == "ConfigMap"
                assert bookmark["object"]["apiVersion"] == "v1"
                assert bookmark["object"]["metadata"] == {"resourceVersion": str(rv(created))}
                changed = await ok(
                    await api.patch(f"{CONFIGMAPS}/bm", json={"data": {"k": "2"}}, headers=MERGE)
                )
                modified = await stream.next()
                if modified["type"] == "BOOKMARK":  # one may fall just before the change
                    modified = await stream.next()
                assert modified["type"] == "MODIFIED"
                later = await stream.next(timeout=2)
                assert later["type"] == "BOOKMARK"
                assert later["object"]["metadata"]["resourceVersion"] == str(rv(changed))
            async with watch(api, CONFIGMAPS, resourceVersion=str(rv(changed))) as stream:
                await ok(
                    await api.patch(f"{CONFIGMAPS}/bm", json={"data": {"a": "b"}}, headers=MERGE)
                )
                assert (await stream.next())["type"] == "MODIFIED"
                with pytest.raises(TimeoutError):
                    await stream.next(timeout=0.6)  # no bookmarks unless asked for


async def test_watch_timeout_seconds_ends_the_stream_cleanly(api: httpx.AsyncClient) -> None:
    started = asyncio.get_running_loop().time()
    async with watch(api, CONFIGMAPS, resourceVersion="1", timeoutSeconds="1") as stream:
        assert await stream.ended(timeout=5)
    elapsed = asyncio.get_running_loop().time() - started
    assert 0.9 <= elapsed < 3


@pytest.mark.parametrize("flag", ["true", "1", "True", "yes"])
async def test_watch_flag_is_parsed_like_the_apiserver(api: httpx.AsyncClient, flag: str) -> None:
    await ok(await api.post(CONFIGMAPS, json=configmap("flag")), 201)
    async with watch(api, CONFIGMAPS, watch=flag, timeoutSeconds="1") as stream:
        assert (await stream.next())["type"] == "ADDED"
    listed = await ok(await api.get(CONFIGMAPS, params={"watch": "false"}))
    assert listed["kind"] == "ConfigMapList"


async def test_watch_from_a_compacted_version_is_410_inside_the_stream(
    api: httpx.AsyncClient, apiserver: ApiServerThread
) -> None:
    first = await ok(await api.post(CONFIGMAPS, json=configmap("old")), 201)
    await ok(await api.post(CONFIGMAPS, json=configmap("newer")), 201)
    apiserver.server.compact()
    async with watch(api, CONFIGMAPS, resourceVersion=str(rv(first))) as stream:
        error = await stream.next()
        assert error["type"] == "ERROR"
        status = error["object"]
        assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
        assert status["message"].startswith(f"too old resource version: {rv(first)} (")
        assert await stream.ended()
    # From the current version it works.
    current = (await ok(await api.get(CONFIGMAPS)))["metadata"]["resourceVersion"]
    async with watch(api, CONFIGMAPS, resourceVersion=current) as stream:
        await ok(await api.delete(f"{CONFIGMAPS}/old"))
        assert (await stream.next())["type"] == "DELETED"


async def test_watch_with_selectors_reports_objects_entering_and_leaving(
    api: httpx.AsyncClient,
) -> None:
    await ok(await api.post(CONFIGMAPS, json=configmap("sel", {"role": "db"})), 201)
    async with watch(api, CONFIGMAPS, labelSelector="role=web", resourceVersion="0") as stream:
        await ok(
            await api.patch(
                f"{CONFIGMAPS}/sel", json={"metadata": {"labels": {"role": "web"}}}, headers=MERGE
            )
        )
        entered = await stream.next()
        assert entered["type"] == "ADDED"
        await ok(await api.patch(f"{CONFIGMAPS}/sel", json={"data": {"x": "y"}}, headers=MERGE))
        assert (await stream.next())["type"] == "MODIFIED"
        await ok(
            await api.patch(
                f"{CONFIGMAPS}/sel", json={"metadata": {"labels": {"role": "db"}}}, headers=MERGE
            )
        )
        left = await stream.next()
        assert left["type"] == "DELETED"
        assert left["object"]["metadata"]["labels"] == {"role": "db"}
        await ok(await api.post(CONFIGMAPS, json=configmap("other", {"role": "db"})), 201)
        await ok(await api.post(CONFIGMAPS, json=configmap("web2", {"role": "web"})), 201)
        assert (await stream.next())["object"]["metadata"]["name"] == "web2"
    async with watch(
        api, CONFIGMAPS, fieldSelector="metadata.name=other", resourceVersion="0"
    ) as stream:
        only = await stream.next()
        assert only["object"]["metadata"]["name"] == "other"
        await ok(await api.delete(f"{CONFIGMAPS}/web2"))
        await ok(await api.delete(f"{CONFIGMAPS}/other"))
        assert (await stream.next())["object"]["metadata"]["name"] == "other"


async def test_watch_of_one_namespace_sees_nothing_of_others(api: httpx.AsyncClient) -> None:
    await ok(await api.post(NAMESPACES, json={"metadata": {"name": "elsewhere"}}), 201)
    async with watch(api, CONFIGMAPS, resourceVersion="0") as stream:
        await ok(
            await api.post("/api/v1/namespaces/elsewhere/configmaps", json=configmap("x")), 201
        )
        await ok(await api.post(CONFIGMAPS, json=configmap("here")), 201)
        assert (await stream.next())["object"]["metadata"]["name"] == "here"


async def test_watch_clients_that_leave_are_noticed(
    api: httpx.AsyncClient, apiserver: ApiServerThread
) -> None:
    async with watch(api, CONFIGMAPS, resourceVersion="0"):
        assert apiserver.server.watcher_count == 1
    # The client closed its connection; the server notices within about a second.

    async def gone() -> bool:
        return apiserver.server.watcher_count == 0

    await eventually(gone, timeout=5)


async def test_a_watcher_that_does_not_read_never_blocks_the_server(
    api: httpx.AsyncClient,
) -> None:
    async with api.stream("GET", CONFIGMAPS, params={"watch": "1"}) as response:
        assert response.status_code == 200
        big = {"k": "x" * 20000}
        for index in range(60):  # ~1.2 MB of events nobody reads
            body = {"metadata": {"name": f"flood-{index}"}, "data": big}
            await ok(await api.post(CONFIGMAPS, json=body), 201)
        assert len(await names(api, CONFIGMAPS)) == 60


async def test_watch_in_table_form(crd_api: httpx.AsyncClient) -> None:
    api = crd_api
    async with watch(api, SPCPS, headers={"Accept": TABLE}, resourceVersion="0") as stream:
        status = {"podName": "p1", "secretProviderClassName": "spc", "mounted": True}
        body = {
            "apiVersion": f"{GROUP}/v1",
            "kind": "SecretProviderClassPodStatus",
            "metadata": {"name": "p1-default-spc"},
            "status": status,
        }
        await ok(await api.post(SPCPS, json=body), 201)
        first = await stream.next()
        assert first["object"]["kind"] == "Table"
        assert [c["name"] for c in first["object"]["columnDefinitions"]] == [
            "Name",
            "Pod",
            "SPC",
            "Mounted",
            "Age",
        ]
        assert first["object"]["rows"][0]["cells"][:4] == ["p1-default-spc", "p1", "spc", True]
        await ok(await api.delete(f"{SPCPS}/p1-default-spc"))
        second = await stream.next()
        assert second["type"] == "DELETED"
        assert second["object"]["columnDefinitions"] == []


# -- garbage collection, deletion, finalizers, namespaces


async def test_dependents_go_with_their_owner(api: httpx.AsyncClient) -> None:
    owner = await ok(await api.post(CONFIGMAPS, json=configmap("owner")), 201)
    dependent = {"metadata": {"name": "dep", "ownerReferences": [owner_ref(owner, "ConfigMap")]}}
    await ok(await api.post(SECRETS, json=dependent), 201)
    async with watch(api, SECRETS, resourceVersion=str(rv(owner))) as stream:
        assert (await stream.next())["type"] == "ADDED"
        await ok(await api.delete(f"{CONFIGMAPS}/owner"))
        gone = await stream.next()
        assert (gone["type"], gone["object"]["metadata"]["name"]) == ("DELETED", "dep")
    failure(await api.get(f"{SECRETS}/dep"), 404, "NotFound")


async def test_a_dependent_with_several_owners_waits_for_all_of_them(
    api: httpx.AsyncClient,
) -> None:
    first = await ok(await api.post(CONFIGMAPS, json=configmap("first")), 201)
    second = await ok(await api.post(CONFIGMAPS, json=configmap("second")), 201)
    refs = [owner_ref(first, "ConfigMap"), owner_ref(second, "ConfigMap")]
    await ok(
        await api.post(SECRETS, json={"metadata": {"name": "shared", "ownerReferences": refs}}), 201
    )
    await ok(await api.delete(f"{CONFIGMAPS}/first"))
    kept = await ok(await api.get(f"{SECRETS}/shared"))
    # The reference to the gone owner is dropped, as the garbage collector does.
    assert kept["metadata"]["ownerReferences"] == [owner_ref(second, "ConfigMap")]
    await ok(await api.delete(f"{CONFIGMAPS}/second"))
    failure(await api.get(f"{SECRETS}/shared"), 404, "NotFound")


async def test_orphan_propagation_keeps_dependents_without_the_reference(
    api: httpx.AsyncClient,
) -> None:
    owner = await ok(await api.post(CONFIGMAPS, json=configmap("owner")), 201)
    ref = owner_ref(owner, "ConfigMap")
    await ok(
        await api.post(SECRETS, json={"metadata": {"name": "kept", "ownerReferences": [ref]}}), 201
    )
    await ok(
        await api.request("DELETE", f"{CONFIGMAPS}/owner", json={"propagationPolicy": "Orphan"})
    )
    kept = await ok(await api.get(f"{SECRETS}/kept"))
    assert "ownerReferences" not in kept["metadata"]
    owner = await ok(await api.post(CONFIGMAPS, json=configmap("owner2")), 201)
    ref = owner_ref(owner, "ConfigMap")
    await ok(
        await api.post(SECRETS, json={"metadata": {"name": "kept2", "ownerReferences": [ref]}}), 201
    )
    await ok(await api.delete(f"{CONFIGMAPS}/owner2", params={"orphanDependents": "true"}))
    assert "ownerReferences" not in (await ok(await api.get(f"{SECRETS}/kept2")))["metadata"]


async def test_deletion_cascades_through_a_chain_of_owners(api: httpx.AsyncClient) -> None:
    deploy = await ok(await api.post(DEPLOYMENTS, json=deployment("chain")), 201)
    rs = deployment("chain-abc")
    rs["kind"] = "ReplicaSet"
    rs["metadata"]["ownerReferences"] = [owner_ref(deploy, "Deployment", "apps/v1")]
    replica_set = await ok(await api.post(REPLICASETS, json=rs), 201)
    child = pod("chain-abc-1", ownerReferences=[owner_ref(replica_set, "ReplicaSet", "apps/v1")])
    await ok(await api.post(PODS, json=child), 201)
    scheduled = pod(
        "chain-abc-2",
        node="node-1",
        ownerReferences=[owner_ref(replica_set, "ReplicaSet", "apps/v1")],
    )
    await ok(await api.post(PODS, json=scheduled), 201)
    await ok(await api.delete(f"{DEPLOYMENTS}/chain"))
    failure(await api.get(f"{REPLICASETS}/chain-abc"), 404, "NotFound")
    failure(await api.get(f"{PODS}/chain-abc-1"), 404, "NotFound")
    # A scheduled pod is deleted gracefully: it is now terminating, waiting for its kubelet.
    terminating = await ok(await api.get(f"{PODS}/chain-abc-2"))
    assert terminating["metadata"]["deletionTimestamp"]


async def test_graceful_pod_deletion(api: httpx.AsyncClient) -> None:
    await ok(await api.post(PODS, json=pod("sched", node="node-1")), 201)
    async with watch(api, PODS, resourceVersion="0") as stream:
        assert (await stream.next())["type"] == "ADDED"
        marked = await ok(await api.delete(f"{PODS}/sched"))
        assert marked["metadata"]["deletionGracePeriodSeconds"] == 30
        assert marked["metadata"]["deletionTimestamp"]
        event = await stream.next()
        assert event["type"] == "MODIFIED"
        assert event["object"]["metadata"]["deletionTimestamp"]
        table = await ok(await api.get(f"{PODS}/sched", headers={"Accept": TABLE}))
        assert table["rows"][0]["cells"][2] == "Terminating"
        # A longer grace period does not extend it; zero removes the pod.
        again = await ok(await api.delete(f"{PODS}/sched", params={"gracePeriodSeconds": "60"}))
        assert again["metadata"]["deletionGracePeriodSeconds"] == 30
        await ok(await api.delete(f"{PODS}/sched", params={"gracePeriodSeconds": "0"}))
        assert (await stream.next())["type"] == "DELETED"
    failure(await api.get(f"{PODS}/sched"), 404, "NotFound")

    await ok(await api.post(PODS, json=pod("custom", node="node-1")), 201)
    marked = await ok(await api.request("DELETE", f"{PODS}/custom", json={"gracePeriodSeconds": 7}))
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 7
    unscheduled = await ok(await api.post(PODS, json=pod("unscheduled")), 201)
    gone = await ok(await api.delete(f"{PODS}/unscheduled"))
    assert gone["metadata"]["uid"] == unscheduled["metadata"]["uid"]
    failure(await api.get(f"{PODS}/unscheduled"), 404, "NotFound")


async def test_finalizers_hold_an_object_until_they_are_removed(api: httpx.AsyncClient) -> None:
    body = configmap("held", finalizers=["example.com/cleanup"])
    await ok(await api.post(CONFIGMAPS, json=body), 201)
    pending = await ok(await api.delete(f"{CONFIGMAPS}/held"))
    assert pending["metadata"]["deletionTimestamp"]
    assert (await ok(await api.get(f"{CONFIGMAPS}/held")))["metadata"]["deletionTimestamp"]
    refused = failure(
        await api.patch(
            f"{CONFIGMAPS}/held",
            json={"metadata": {"finalizers": ["example.com/cleanup", "example.com/more"]}},
            headers=MERGE,
        ),
        422,
        "Invalid",
    )
    assert "no new finalizers can be added if the object is being deleted" in refused["message"]
    await ok(
        await api.patch(
            f"{CONFIGMAPS}/held", json={"metadata": {"finalizers": None}}, headers=MERGE
        )
    )
    failure(await api.get(f"{CONFIGMAPS}/held"), 404, "NotFound")


async def test_deleting_a_namespace_deletes_everything_in_it(api: httpx.AsyncClient) -> None:
    await ok(await api.post(NAMESPACES, json={"metadata": {"name": "doomed"}}), 201)
    base = "/api/v1/namespaces/doomed"
    await ok(await api.post(f"{base}/secrets", json={"metadata": {"name": "s"}}), 201)
    await ok(await api.post(f"{base}/configmaps", json=configmap("c")), 201)
    await ok(await api.post(f"{base}/pods", json=pod("loose")), 201)
    await ok(await api.post(f"{base}/pods", json=pod("stuck", node="node-1")), 201)
    terminating = await ok(await api.delete(f"{NAMESPACES}/doomed"))
    assert terminating["status"]["phase"] == "Terminating"
    for path in ("secrets/s", "configmaps/c", "pods/loose", "serviceaccounts/default"):
        failure(await api.get(f"{base}/{path}"), 404, "NotFound")
    # The scheduled pod waits for its kubelet, and the namespace waits for the pod.
    assert (await ok(await api.get(f"{base}/pods/stuck")))["metadata"]["deletionTimestamp"]
    assert (await ok(await api.get(f"{NAMESPACES}/doomed")))["status"]["phase"] == "Terminating"
    refused = failure(
        await api.post(f"{base}/configmaps", json=configmap("late")), 403, "Forbidden"
    )
    assert refused["message"] == (
        'configmaps "late" is forbidden: unable to create new content in namespace doomed '
        "because it is being terminated"
    )
    await ok(await api.delete(f"{base}/pods/stuck", params={"gracePeriodSeconds": "0"}))
    failure(await api.get(f"{NAMESPACES}/doomed"), 404, "NotFound")
    missing = failure(await api.post(f"{base}/configmaps", json=configmap("x")), 404, "NotFound")
    assert missing["message"] == 'namespaces "doomed" not found'
    protected = failure(await api.delete(f"{NAMESPACES}/default"), 403, "Forbidden")
    assert (
        protected["message"]
        == 'namespaces "default" is forbidden: this namespace may not be deleted'
    )


async def test_delete_collection_with_a_selector(api: httpx.AsyncClient) -> None:
    for name, tier in (("a", "x"), ("b", "x"), ("c", "y")):
        await ok(await api.post(CONFIGMAPS, json=configmap(name, {"tier": tier})), 201)
    deleted = await ok(await api.delete(CONFIGMAPS, params={"labelSelector": "tier=x"}))
    assert [i["metadata"]["name"] for i in deleted["items"]] == ["a", "b"]
    assert await names(api, CONFIGMAPS) == ["c"]


async def test_preconditions_and_dry_run(api: httpx.AsyncClient) -> None:
    created = await ok(await api.post(CONFIGMAPS, json=configmap("pre")), 201)
    wrong = {"preconditions": {"uid": "not-it"}}
    failure(await api.request("DELETE", f"{CONFIGMAPS}/pre", json=wrong), 409, "Conflict")
    dry = await ok(await api.post(CONFIGMAPS, json=configmap("dry"), params={"dryRun": "All"}), 201)
    assert dry["metadata"]["name"] == "dry"
    failure(await api.get(f"{CONFIGMAPS}/dry"), 404, "NotFound")
    await ok(await api.delete(f"{CONFIGMAPS}/pre", params={"dryRun": "All"}))
    still = await ok(await api.get(f"{CONFIGMAPS}/pre"))
    assert rv(still) == rv(created)


# -- subresources


async def test_scale_and_binding_subresources(api: httpx.AsyncClient) -> None:
    await ok(await api.post(DEPLOYMENTS, json=deployment("scaled")), 201)
    scale = await ok(await api.get(f"{DEPLOYMENTS}/scaled/scale"))
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 1
    assert scale["status"]["selector"] == "app=scaled"
    scale["spec"]["replicas"] = 4
    await ok(await api.put(f"{DEPLOYMENTS}/scaled/scale", json=scale))
    patched = await ok(
        await api.patch(
            f"{DEPLOYMENTS}/scaled/scale", json={"spec": {"replicas": 2}}, headers=MERGE
        )
    )
    assert patched["spec"]["replicas"] == 2
    current = await ok(await api.get(f"{DEPLOYMENTS}/scaled"))
    assert current["spec"]["replicas"] == 2
    assert current["metadata"]["generation"] == 3

    await ok(await api.post(PODS, json=pod("bindme")), 201)
    binding = {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": "bindme"},
        "target": {"apiVersion": "v1", "kind": "Node", "name": "node-7"},
    }
    await ok(await api.post(f"{PODS}/bindme/binding", json=binding), 201)
    assert (await ok(await api.get(f"{PODS}/bindme")))["spec"]["nodeName"] == "node-7"
    failure(await api.post(f"{PODS}/bindme/binding", json=binding), 409, "Conflict")


# -- tables


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (5, "5s"),
        (119, "119s"),
        (200, "3m20s"),
        (600, "10m"),
        (3 * 3600 + 300, "3h5m"),
        (20 * 3600, "20h"),
        (18 * 86400, "18d"),
        (3 * 86400 + 3600, "3d1h"),
        (800 * 86400, "2y70d"),
    ],
)
def test_age_is_formatted_like_kubectl(seconds: int, shown: str) -> None:
    assert format_age(timedelta(seconds=seconds)) == shown


async def test_tables_for_service_accounts_and_secrets(api: httpx.AsyncClient) -> None:
    secret = {"metadata": {"name": "my-secret-01"}, "stringData": {"a": "1", "b": "2"}}
    await ok(await api.post(SECRETS, json=secret), 201)
    response = await api.get(
        "/api/v1/namespaces/default/serviceaccounts", headers={"Accept": TABLE}
    )
    assert response.headers["Content-Type"] == "application/json;as=Table;v=v1;g=meta.k8s.io"
    table = response.json()
    assert table["kind"] == "Table"
    assert table["metadata"]["resourceVersion"]
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Secrets", "Age"]
    row = table["rows"][0]
    assert row["cells"][:2] == ["default", 0]
    assert AGE.match(row["cells"][2])
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == "default"
    table = await ok(await api.get(SECRETS, headers={"Accept": TABLE}))
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Type", "Data", "Age"]
    assert table["rows"][0]["cells"][:3] == ["my-secret-01", "Opaque", 2]
    full = await ok(
        await api.get(SECRETS, headers={"Accept": TABLE}, params={"includeObject": "Object"})
    )
    assert full["rows"][0]["object"]["data"] == {"a": "MQ==", "b": "Mg=="}
    plain = await ok(await api.get(SECRETS, headers={"Accept": "application/json"}))
    assert plain["kind"] == "SecretList"


async def test_pod_table_status_column(api: httpx.AsyncClient) -> None:
    for name in ("pending", "running", "config-error"):
        await ok(await api.post(PODS, json=pod(name)), 201)
    running = {
        "phase": "Running",
        "containerStatuses": [
            {"name": "app", "ready": True, "restartCount": 2, "state": {"running": {}}}
        ],
    }
    waiting = {
        "phase": "Pending",
        "containerStatuses": [
            {
                "name": "app",
                "ready": False,
                "restartCount": 0,
                "state": {"waiting": {"reason": "CreateContainerConfigError"}},
            }
        ],
    }
    for name, status in (("running", running), ("config-error", waiting)):
        await ok(await api.patch(f"{PODS}/{name}/status", json={"status": status}, headers=MERGE))
    table = await ok(await api.get(PODS, headers={"Accept": TABLE}))
    assert [c["name"] for c in table["columnDefinitions"]][:5] == [
        "Name",
        "Ready",
        "Status",
        "Restarts",
        "Age",
    ]
    assert [c["priority"] for c in table["columnDefinitions"]][5:] == [1, 1, 1, 1]
    rows = {r["cells"][0]: r["cells"][1:4] for r in table["rows"]}
    assert rows == {
        "config-error": ["0/1", "CreateContainerConfigError", 0],
        "pending": ["0/1", "Pending", 0],
        "running": ["1/1", "Running", 2],
    }


async def test_tables_for_deployments_and_custom_resources(crd_api: httpx.AsyncClient) -> None:
    api = crd_api
    await ok(await api.post(DEPLOYMENTS, json=deployment("nginx-spc")), 201)
    table = await ok(await api.get(DEPLOYMENTS, headers={"Accept": TABLE}))
    assert [c["name"] for c in table["columnDefinitions"] if c["priority"] == 0] == [
        "Name",
        "Ready",
        "Up-to-date",
        "Available",
        "Age",
    ]
    assert table["rows"][0]["cells"][:4] == ["nginx-spc", "0/1", 0, 0]
    await ok(await api.post(SPC, json=spc("spc-test")), 201)
    table = await ok(await api.get(SPC, headers={"Accept": TABLE}))
    assert [c["name"] for c in table["columnDefinitions"]] == ["Name", "Age"]
    assert table["rows"][0]["cells"][0] == "spc-test"
    assert AGE.match(table["rows"][0]["cells"][1])
    one = await ok(await api.get(f"{SPC}/spc-test", headers={"Accept": TABLE}))
    assert one["kind"] == "Table"
    assert len(one["rows"]) == 1
    status = {"podName": "nginx-spc-1", "secretProviderClassName": "spc-test", "mounted": True}
    body = {
        "apiVersion": f"{GROUP}/v1",
        "kind": "SecretProviderClassPodStatus",
        "metadata": {"name": "nginx-spc-1-default-spc-test"},
        "status": status,
    }
    await ok(await api.post(SPCPS, json=body), 201)
    table = await ok(await api.get(SPCPS, headers={"Accept": TABLE}))
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name",
        "Pod",
        "SPC",
        "Mounted",
        "Age",
    ]
    cells = table["rows"][0]["cells"]
    assert cells[:4] == ["nginx-spc-1-default-spc-test", "nginx-spc-1", "spc-test", True]
    assert AGE.match(cells[4])


# -- auth, robustness, persistence


async def test_bearer_token_is_required_when_configured() -> None:
    with ApiServerThread(token="s3cret") as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as api:
            anonymous = failure(await api.get(NAMESPACES), 401, "Unauthorized")
            assert anonymous["message"] == "Unauthorized"
            failure(
                await api.get(NAMESPACES, headers={"Authorization": "Bearer wrong"}),
                401,
                "Unauthorized",
            )
            failure(
                await api.get(NAMESPACES, headers={"Authorization": "Basic s3cret"}),
                401,
                "Unauthorized",
            )
            for scheme in ("Bearer", "bearer", "BEARER"):
                headers = {"Authorization": f"{scheme} s3cret"}
                await ok(await api.get(NAMESPACES, headers=headers))
            assert (await api.get("/healthz")).status_code == 200


async def test_unexpected_errors_become_500_statuses_and_the_server_keeps_serving(
    api: httpx.AsyncClient, apiserver: ApiServerThread
) -> None:
    store = apiserver.server.store
    original = store.list_objects

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    apiserver.call(lambda: setattr(store, "list_objects", broken))
    try:
        body = failure(await api.get(CONFIGMAPS), 500, "InternalError")
        assert "boom" in body["message"]
    finally:
        apiserver.call(lambda: setattr(store, "list_objects", original))
    await ok(await api.get(CONFIGMAPS))


async def test_state_is_on_disk_before_the_write_is_acknowledged(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    with ApiServerThread(state_file=state) as server:
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as api:
            created = await ok(await api.post(CONFIGMAPS, json=configmap("durable")), 201)
            saved = json.loads(state.read_bytes())
            assert saved["resourceVersion"] == rv(created)
            stored = [
                e["object"]["metadata"]["name"]
                for e in saved["objects"]
                if e["resource"] == "configmaps"
            ]
            assert stored == ["durable"]
            leftovers = [p.name for p in os.scandir(tmp_path) if p.name.startswith(".state")]
            assert leftovers == []  # no temp file left behind


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_state_survives_a_restart_of_the_real_process(
    tmp_path: Path, spawn_apiserver: Callable[..., ApiServerProcess]
) -> None:
    state = tmp_path / "state.json"
    port = free_port()
    args = ("--listen", f"127.0.0.1:{port}", "--state", str(state))
    first = spawn_apiserver(*args)
    assert first.url == f"http://127.0.0.1:{port}"
    with httpx.Client(base_url=first.url, timeout=10) as api:
        for crd in crd_documents():
            assert api.post(CRDS, json=crd).status_code == 201
        assert api.post(SPC, json=spc("kept")).status_code == 201
        assert api.post(SPC, json=spc("removed")).status_code == 201
        assert api.delete(f"{SPC}/removed").status_code == 200
        owner = api.post(CONFIGMAPS, json=configmap("owner")).json()
        ref = owner_ref(owner, "ConfigMap")
        secret = {"metadata": {"name": "owned", "ownerReferences": [ref]}, "stringData": {"a": "b"}}
        assert api.post(SECRETS, json=secret).status_code == 201
        last = api.patch(f"{SPC}/kept", json={"spec": {"provider": "cce2"}}, headers=MERGE)
        last_version = rv(last.json())
    assert first.stop() == 0

    second = spawn_apiserver(*args)
    with httpx.Client(base_url=second.url, timeout=10) as api:
        kept = api.get(f"{SPC}/kept")
        assert kept.status_code == 200
        assert kept.json()["spec"]["provider"] == "cce2"
        assert api.get(f"{SPC}/removed").status_code == 404
        assert api.get(f"{SPC_ALPHA}/kept").status_code == 200  # the CRD is registered again
        listed = api.get(SPC).json()
        assert int(listed["metadata"]["resourceVersion"]) == last_version
        created = api.post(SPC, json=spc("after")).json()
        assert rv(created) > last_version
        # The ownership index came back too: deleting the owner collects the secret.
        assert api.get(f"{SECRETS}/owned").json()["data"] == {"a": "Yg=="}
        assert api.delete(f"{CONFIGMAPS}/owner").status_code == 200
        assert api.get(f"{SECRETS}/owned").status_code == 404
        # Watches from before the restart have no history to resume from.
        gone = api.get(SPC, params={"watch": "1", "resourceVersion": str(last_version - 1)})
        assert json.loads(gone.text.splitlines()[0])["object"]["code"] == 410
    assert second.stop() == 0


async def test_a_write_that_cannot_be_saved_is_not_acknowledged(tmp_path: Path) -> None:
    with ApiServerThread(state_file=tmp_path / "state.json") as server:
        blocker = tmp_path / "not-a-directory"
        blocker.write_text("")
        server.call(lambda: setattr(server.server, "state_file", blocker / "state.json"))
        async with httpx.AsyncClient(base_url=server.url, timeout=10) as api:
            refused = failure(
                await api.post(CONFIGMAPS, json=configmap("unsaved")), 500, "InternalError"
            )
            assert refused["message"].startswith("Internal error occurred: FileExistsError")
            await ok(await api.get(NAMESPACES))  # reads go on


def test_a_damaged_state_file_stops_the_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    state = tmp_path / "state.json"
    state.write_text('{"format": "dew-csi-apiserver-state/1", "objects": [{"group": ""}]}')
    result = subprocess.run(
        [sys.executable, "-m", "dew_csi.cli", "sandbox", "apiserver", "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert "cannot start: damaged state file" in result.stderr


def test_the_process_writes_a_kubeconfig_and_stops_on_sigint(
    tmp_path: Path, spawn_apiserver: Callable[..., ApiServerProcess]
) -> None:
    import signal

    import yaml

    kubeconfig = tmp_path / "kubeconfig"
    child = spawn_apiserver("--token", "t0k3n", kubeconfig=kubeconfig)
    config = yaml.safe_load(kubeconfig.read_text())
    assert oct(kubeconfig.stat().st_mode & 0o777) == "0o600"
    assert config["clusters"][0]["cluster"]["server"] == child.url
    assert config["users"][0]["user"] == {"token": "t0k3n"}
    assert config["contexts"][0]["context"]["namespace"] == "default"
    with httpx.Client(base_url=child.url) as api:
        assert api.get(NAMESPACES).status_code == 401
        assert api.get(NAMESPACES, headers={"Authorization": "Bearer t0k3n"}).status_code == 200
    child.process.send_signal(signal.SIGINT)
    assert child.process.wait(timeout=10) == 0
    assert child.process.stdout is not None
    assert child.process.stdout.read() == ""  # exactly one line was printed


async def test_the_legacy_watch_path(api: httpx.AsyncClient) -> None:
    await ok(await api.post(CONFIGMAPS, json=configmap("legacy")), 201)
    async with watch(api, "/api/v1/watch/namespaces/default/configmaps", watch="0") as stream:
        assert (await stream.next())["object"]["metadata"]["name"] == "legacy"
    async with watch(api, "/api/v1/watch/namespaces/default/configmaps/legacy") as stream:
        assert (await stream.next())["object"]["metadata"]["name"] == "legacy"


async def test_server_side_apply_conflicts_name_the_keyed_list_field(
    api: httpx.AsyncClient,
) -> None:
    body = deployment("shared")
    await ok(
        await api.patch(
            f"{DEPLOYMENTS}/shared",
            content=json.dumps(body),
            headers=APPLY,
            params={"fieldManager": "first"},
        ),
        201,
    )
    body["spec"]["template"]["spec"]["containers"][0]["image"] = "nginx:9"
    conflicted = failure(
        await api.patch(
            f"{DEPLOYMENTS}/shared",
            content=json.dumps(body),
            headers=APPLY,
            params={"fieldManager": "second"},
        ),
        409,
        "Conflict",
    )
    assert conflicted["message"] == (
        'Apply failed with 1 conflict: conflict with "first" using apps/v1: '
        '.spec.template.spec.containers[name="app"].image'
    )


async def test_watch_list_sends_initial_events_then_a_bookmark(api: httpx.AsyncClient) -> None:
    await ok(await api.post(CONFIGMAPS, json=configmap("one")), 201)
    last = await ok(await api.post(CONFIGMAPS, json=configmap("two")), 201)
    params = {
        "sendInitialEvents": "true",
        "resourceVersionMatch": "NotOlderThan",
        "allowWatchBookmarks": "true",
    }
    async with watch(api, CONFIGMAPS, **params) as stream:
        added = [await stream.next() for _ in range(2)]
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in added] == [
            ("ADDED", "one"),
            ("ADDED", "two"),
        ]
        end = await stream.next()
        assert end["type"] == "BOOKMARK"
        assert end["object"]["metadata"] == {
            "resourceVersion": str(rv(last)),
            "annotations": {"k8s.io/initial-events-end": "true"},
        }


async def test_a_dependent_created_after_its_owner_is_gone_is_collected(
    api: httpx.AsyncClient,
) -> None:
    owner = await ok(await api.post(CONFIGMAPS, json=configmap("short-lived")), 201)
    ref = owner_ref(owner, "ConfigMap")
    await ok(await api.delete(f"{CONFIGMAPS}/short-lived"))
    orphan = {"metadata": {"name": "late", "ownerReferences": [ref]}}
    await ok(await api.post(SECRETS, json=orphan), 201)  # accepted, as a real server does
    failure(await api.get(f"{SECRETS}/late"), 404, "NotFound")  # then collected
    alive = await ok(await api.post(CONFIGMAPS, json=configmap("alive")), 201)
    kept = {"metadata": {"name": "kept-late", "ownerReferences": [owner_ref(alive, "ConfigMap")]}}
    await ok(await api.post(SECRETS, json=kept), 201)
    await ok(await api.get(f"{SECRETS}/kept-late"))
