"""The admission webhook (`dew-csi webhook`) answering real AdmissionReviews over HTTPS, and the
API emulator calling webhooks as the real kube-apiserver does (sandbox/admission.py).

Certificates are made for each test module with the real `openssl`; the API emulator runs on its
own loop in a thread and every request crosses a real socket."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp import web

from dew_csi import cli
from dew_csi import spc as spc_module
from dew_csi.logs import KlogFormatter
from dew_csi.sandbox.apiserver import ApiServerThread, write_kubeconfig
from dew_csi.sandbox.apistore import WriteOptions
from dew_csi.sandbox.cluster import self_signed_certificate
from dew_csi.spc import SpcValidationError, validate_spc
from dew_csi.webhook import (
    Validator,
    Webhook,
    WebhookConfig,
    WebhookServer,
    config_from_args,
    load_tls,
)
from tests.conftest import EXAMPLES, crd_documents
from tests.hostile_objects import alias_bomb, huge_objects

GROUP = "secrets-store.csi.x-k8s.io"
SPC_KIND = {"group": GROUP, "version": "v1", "kind": "SecretProviderClass"}
SPC_RESOURCE = {"group": GROUP, "version": "v1", "resource": "secretproviderclasses"}
CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
VWCS = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
HOOK = "validate.secretproviderclasses.dew-csi.io"


def spcs_path(namespace: str = "default", version: str = "v1") -> str:
    return f"/apis/{GROUP}/{version}/namespaces/{namespace}/secretproviderclasses"


# ----------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class Tls:
    cert: Path
    key: Path

    @property
    def ca_bundle(self) -> str:
        """clientConfig.caBundle: the certificate, base64 PEM (it is its own CA)."""
        return base64.b64encode(self.cert.read_bytes()).decode()

    def client(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))


def make_certificate(directory: Path, name: str) -> Tls:
    """A self-signed certificate for 127.0.0.1, made by the real openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    self_signed_certificate(cert, key)
    return Tls(cert, key)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: the tests make their certificates with it")
    return make_certificate(tmp_path_factory.mktemp("tls"), "webhook")


@pytest.fixture(scope="module")
def other_tls(tls: Tls, tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A second, unrelated self-signed certificate (an untrusted server)."""
    return make_certificate(tmp_path_factory.mktemp("tls-other"), "other")


# ----------------------------------------------------------------------------- helpers


def spc(name: str, objects: Any, *, provider: str = "cce", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"provider": provider, "parameters": {"objects": objects}, **spec},
    }


def review(
    obj: dict[str, Any] | None,
    *,
    operation: str = "CREATE",
    old: dict[str, Any] | None = None,
    kind: dict[str, str] = SPC_KIND,
    namespace: str = "default",
    name: str | None = None,
    sub_resource: str | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """An AdmissionReview as the API server sends it."""
    if name is None:
        source = obj if obj is not None else old
        name = source["metadata"]["name"] if source else ""
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": kind,
        "resource": SPC_RESOURCE,
        "requestKind": kind,
        "requestResource": SPC_RESOURCE,
        "name": name,
        "namespace": namespace,
        "operation": operation,
        "userInfo": {"username": "kubernetes-admin", "groups": ["system:masters"]},
        "object": obj,
        "oldObject": old,
        "dryRun": dry_run,
        "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
    }
    if sub_resource:
        request["subResource"] = sub_resource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def validation_message(obj: dict[str, Any]) -> str:
    """What the provider says about this SecretProviderClass (it must be invalid)."""
    with pytest.raises(SpcValidationError) as caught:
        validate_spc(obj)
    return str(caught.value)


async def eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, what: str = "condition"
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.05)


@dataclass
class WebhookClient:
    """An HTTPS client for one running webhook."""

    http: httpx.AsyncClient
    url: str

    async def send(self, document: dict[str, Any]) -> dict[str, Any]:
        """POST a review; the AdmissionReview answer (checked for shape and uid)."""
        answer = await self.http.post(f"{self.url}/validate", json=document)
        assert answer.status_code == 200, answer.text
        assert answer.headers["Content-Type"].startswith("application/json")
        body = answer.json()
        assert body["apiVersion"] == document["apiVersion"]
        assert body["kind"] == "AdmissionReview"
        assert body["response"]["uid"] == document["request"]["uid"]
        return dict(body["response"])

    async def allowed(self, document: dict[str, Any]) -> bool:
        response = await self.send(document)
        if response["allowed"]:
            assert "status" not in response
        return bool(response["allowed"])


@contextlib.asynccontextmanager
async def running_server(tls: Tls, validator: Validator) -> AsyncIterator[WebhookClient]:
    server = WebhookServer(validator, load_tls(tls.cert, tls.key))
    await server.start("127.0.0.1", 0)
    try:
        async with httpx.AsyncClient(verify=tls.client(), timeout=10) as http:
            yield WebhookClient(http, server.url)
    finally:
        await server.stop()


@pytest.fixture
async def webhook(tls: Tls) -> AsyncIterator[WebhookClient]:
    """The webhook without the limit (--max-spcs 0): no API server needed."""
    async with running_server(tls, Validator(max_spcs=0)) as client:
        yield client


@contextlib.asynccontextmanager
async def running_webhook(config: WebhookConfig, tls: Tls) -> AsyncIterator[WebhookClient]:
    """The whole webhook (watch cache included) as `dew-csi webhook` runs it."""
    hook = Webhook(config)
    await hook.start(sync_timeout=10)
    try:
        async with httpx.AsyncClient(verify=tls.client(), timeout=10) as http:
            yield WebhookClient(http, hook.server.url)
    finally:
        await hook.stop()


@pytest.fixture
async def api(apiserver: ApiServerThread) -> AsyncIterator[httpx.AsyncClient]:
    """An API emulator with the project's CRDs."""
    async with httpx.AsyncClient(base_url=apiserver.url, timeout=30) as client:
        for crd in crd_documents():
            response = await client.post(CRDS, json=crd)
            assert response.status_code == 201, response.text
        yield client


@pytest.fixture
def kubeconfig(apiserver: ApiServerThread, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    write_kubeconfig(path, apiserver.url)
    return path


def store_spcs(apiserver: ApiServerThread, names: list[str], namespace: str = "default") -> None:
    """Create SecretProviderClass objects straight in the emulator's store (fast, no webhook)."""

    def create() -> None:
        store = apiserver.server.store
        rt = store.registry.lookup(GROUP, "v1", "secretproviderclasses")
        assert rt is not None
        for name in names:
            body = spc(name, "- {objectName: a, objectType: csms, objectVersion: latest}")
            body["metadata"]["namespace"] = namespace
            store.create(rt, "v1", namespace, body, WriteOptions(manager="test"))

    apiserver.call(create)


# ============================================================================= the webhook


GUIDE_SPCS = sorted(p.name for p in EXAMPLES.glob("secretproviderclass*.yaml"))


def test_the_guide_has_secretproviderclass_examples() -> None:
    assert len(GUIDE_SPCS) == 4


@pytest.mark.parametrize("file_name", GUIDE_SPCS)
async def test_the_guides_secretproviderclasses_are_allowed(
    webhook: WebhookClient, file_name: str
) -> None:
    obj = yaml.safe_load((EXAMPLES / file_name).read_text())
    obj["metadata"]["namespace"] = "default"
    assert await webhook.allowed(review(obj))
    assert await webhook.allowed(
        review(obj, operation="UPDATE", old=spc(obj["metadata"]["name"], ""))
    )


def _entry(**fields: Any) -> str:
    base = {"objectName": "secret_1", "objectType": "csms", "objectVersion": "latest"}
    base.update(fields)
    return yaml.safe_dump([{k: v for k, v in base.items() if v is not None}])


INVALID_SPCS: dict[str, dict[str, Any]] = {
    "objectType is not csms": spc("bad", _entry(objectType="kms")),
    "objectVersion is not a version id": spc("bad", _entry(objectVersion="v1.0")),
    "objectName is missing": spc("bad", _entry(objectName=None)),
    "objectType is missing": spc("bad", _entry(objectType=None)),
    "unknown key": spc("bad", _entry(objectname="x")),
    "duplicate objectName": spc(
        "bad",
        "- {objectName: a, objectType: csms, objectVersion: latest}\n"
        "- {objectName: a, objectType: csms, objectVersion: v1}\n",
    ),
    "alias equals objectName": spc("bad", _entry(objectAlias="secret_1")),
    "alias is not a file name": spc("bad", _entry(objectAlias="a/b")),
    "alias starts with ..": spc("bad", _entry(objectAlias="..data")),
    "filePermission is not octal": spc("bad", _entry(filePermission="0999")),
    "jmesPath path has a backslash": spc(
        "bad", _entry(jmesPath=[{"path": "a\\b", "objectAlias": "f"}])
    ),
    "objects is not YAML": spc("bad", "- objectName: [unclosed"),
    "objects is not a list": spc("bad", "objectName: a"),
    "objects is empty": spc("bad", "[]"),
    "objects is missing": spc("bad", None),
    "secretObjects names a file that is not mounted": spc(
        "bad",
        _entry(),
        secretObjects=[
            {"secretName": "s", "type": "Opaque", "data": [{"objectName": "nope", "key": "k"}]}
        ],
    ),
    "secretName is not a DNS name": spc(
        "bad",
        _entry(),
        secretObjects=[
            {
                "secretName": "Bad_Name",
                "type": "Opaque",
                "data": [{"objectName": "secret_1", "key": "k"}],
            }
        ],
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID_SPCS))
async def test_invalid_secretproviderclasses_are_denied_with_the_providers_message(
    webhook: WebhookClient, case: str
) -> None:
    obj = INVALID_SPCS[case]
    expected = validation_message(obj)
    response = await webhook.send(review(obj))
    assert response["allowed"] is False
    status = response["status"]
    assert status["message"] == expected
    assert status["code"] == 400
    assert status["status"] == "Failure"
    # No reason: kubectl then prints "Error from server: ..." followed by the message.
    assert "reason" not in status
    details = status["details"]
    assert details["name"] == "bad"
    assert details["group"] == GROUP
    assert details["kind"] == "secretproviderclasses"
    [cause] = details["causes"]
    assert cause["message"] == expected
    assert cause["field"].startswith(("spec.parameters.objects", "spec.secretObjects"))


async def test_causes_name_the_field(webhook: WebhookClient) -> None:
    secret_objects = INVALID_SPCS["secretObjects names a file that is not mounted"]
    response = await webhook.send(review(secret_objects))
    assert response["status"]["details"]["causes"][0]["field"] == "spec.secretObjects"
    objects = await webhook.send(review(INVALID_SPCS["objectType is not csms"]))
    assert objects["status"]["details"]["causes"][0]["field"] == "spec.parameters.objects"


async def test_an_update_to_an_invalid_spec_is_denied(webhook: WebhookClient) -> None:
    good = yaml.safe_load((EXAMPLES / "secretproviderclass.yaml").read_text())
    bad = json.loads(json.dumps(good))
    bad["spec"]["parameters"]["objects"] = _entry(objectVersion="1")
    response = await webhook.send(review(bad, operation="UPDATE", old=good))
    assert response["allowed"] is False
    assert response["status"]["message"] == validation_message(bad)


async def test_updates_that_leave_spec_alone_or_finish_a_deletion_are_allowed(
    webhook: WebhookClient,
) -> None:
    """An object stored before the webhook existed can still be relabelled, and its last
    finalizer removed; only spec changes are judged."""
    old = INVALID_SPCS["objectType is not csms"]
    relabelled = json.loads(json.dumps(old))
    relabelled["metadata"]["labels"] = {"team": "a"}
    assert await webhook.allowed(review(relabelled, operation="UPDATE", old=old))
    deleting = json.loads(json.dumps(old))
    deleting["spec"]["parameters"]["objects"] = "not even a list"
    deleting["metadata"]["deletionTimestamp"] = "2025-01-01T00:00:00Z"
    assert await webhook.allowed(review(deleting, operation="UPDATE", old=old))


async def test_secretproviderclasses_of_other_providers_are_allowed_untouched(
    webhook: WebhookClient,
) -> None:
    azure = spc(
        "kv", "array:\n  - |\n    objectName: x\n    objectType: secret\n", provider="azure"
    )
    assert await webhook.allowed(review(azure))
    no_provider = spc("none", "garbage: [")
    del no_provider["spec"]["provider"]
    assert await webhook.allowed(review(no_provider))
    # ... also when an update turns a cce class into another provider's.
    assert await webhook.allowed(
        review(azure, operation="UPDATE", old=INVALID_SPCS["objectType is not csms"])
    )


async def test_deletes_other_kinds_and_subresources_are_allowed(webhook: WebhookClient) -> None:
    bad = INVALID_SPCS["objectType is not csms"]
    assert await webhook.allowed(review(None, operation="DELETE", old=bad))
    pod_kind = {"group": "", "version": "v1", "kind": "Pod"}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}
    assert await webhook.allowed(review(pod, kind=pod_kind))
    assert await webhook.allowed(review(bad, operation="UPDATE", old=bad, sub_resource="status"))
    assert await webhook.allowed(review(bad, operation="CONNECT"))


async def test_the_name_comes_from_the_object_when_the_request_has_none(
    webhook: WebhookClient,
) -> None:
    document = review(INVALID_SPCS["objectType is not csms"])
    del document["request"]["name"]
    response = await webhook.send(document)
    assert response["status"]["details"]["name"] == "bad"


async def test_the_v1beta1_review_is_answered_in_v1beta1(webhook: WebhookClient) -> None:
    document = review(INVALID_SPCS["objectType is not csms"])
    document["apiVersion"] = "admission.k8s.io/v1beta1"
    response = await webhook.send(document)
    assert response["allowed"] is False


def _without(path: str) -> dict[str, Any]:
    document = review(spc("a", _entry()))
    *parents, last = path.split(".")
    target = document
    for part in parents:
        target = target[part]
    del target[last]
    return document


def _with(path: str, value: Any) -> dict[str, Any]:
    document = review(spc("a", _entry()))
    *parents, last = path.split(".")
    target = document
    for part in parents:
        target = target[part]
    target[last] = value
    return document


MALFORMED: dict[str, tuple[bytes, str]] = {
    "empty body": (b"", "the request body is empty"),
    "not JSON": (b"{not json", "the request body is not JSON"),
    "a JSON array": (b"[]", "expected an AdmissionReview JSON object, got an array"),
    "wrong apiVersion": (
        json.dumps(_with("apiVersion", "admission.k8s.io/v2")).encode(),
        'apiVersion is "admission.k8s.io/v2"; expected "admission.k8s.io/v1"',
    ),
    "wrong kind": (
        json.dumps(_with("kind", "Pod")).encode(),
        'kind is "Pod"; expected "AdmissionReview"',
    ),
    "no request": (json.dumps(_without("request")).encode(), "request is missing"),
    "no uid": (json.dumps(_without("request.uid")).encode(), "request.uid is missing"),
    "empty uid": (json.dumps(_with("request.uid", "")).encode(), "request.uid is empty"),
    "numeric uid": (
        json.dumps(_with("request.uid", 7)).encode(),
        "request.uid must be a string, not a number",
    ),
    "unknown operation": (
        json.dumps(_with("request.operation", "PATCH")).encode(),
        'request.operation "PATCH" is not one of CONNECT, CREATE, DELETE, UPDATE',
    ),
    "no kind": (json.dumps(_without("request.kind")).encode(), "request.kind is missing"),
    "create without object": (
        json.dumps(_with("request.object", None)).encode(),
        "request.object is missing; a CREATE must carry the object",
    ),
    "object is a string": (
        json.dumps(_with("request.object", "spc")).encode(),
        "request.object must be a JSON object or null",
    ),
    "update without oldObject": (
        json.dumps(_with("request.operation", "UPDATE")).encode(),
        "request.oldObject is missing; an UPDATE must carry the old object",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_reviews_get_a_400_with_the_reason(
    webhook: WebhookClient, case: str
) -> None:
    body, reason = MALFORMED[case]
    response = await webhook.http.post(
        f"{webhook.url}/validate", content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    assert response.text.startswith("malformed AdmissionReview: ")
    assert reason in response.text
    # ... and the server carries on.
    health = await webhook.http.get(f"{webhook.url}/healthz")
    assert (health.status_code, health.text) == (200, "ok")


async def test_routes(webhook: WebhookClient) -> None:
    assert (await webhook.http.get(f"{webhook.url}/validate")).status_code == 405
    assert (await webhook.http.post(f"{webhook.url}/mutate", json={})).status_code == 404
    too_big = b'{"pad": "' + b"x" * (9 * 1024 * 1024) + b'"}'
    assert (await webhook.http.post(f"{webhook.url}/validate", content=too_big)).status_code == 413


async def test_only_tls_is_served(webhook: WebhookClient, other_tls: Tls) -> None:
    plain = webhook.url.replace("https://", "http://")
    async with httpx.AsyncClient(timeout=5) as http:
        with pytest.raises(httpx.HTTPError):
            await http.post(f"{plain}/validate", json=review(spc("a", _entry())))
    # A client that does not trust the webhook's certificate refuses to talk to it.
    async with httpx.AsyncClient(verify=other_tls.client(), timeout=5) as http:
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await http.get(f"{webhook.url}/healthz")


async def test_decisions_are_logged_with_names_and_rules(
    webhook: WebhookClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="dew_csi.webhook")
    bad = INVALID_SPCS["objectType is not csms"]
    document = review(bad)
    await webhook.send(document)
    [record] = [r for r in caplog.records if r.getMessage() == "Denied"]
    fields = record.dew_fields  # type: ignore[attr-defined]
    assert fields["uid"] == document["request"]["uid"]
    assert fields["object"] == "default/bad"
    assert fields["operation"] == "CREATE"
    assert fields["rule"] == "object-type-unsupported"
    assert fields["message"] == validation_message(bad)
    good = spc("good", _entry())
    await webhook.send(review(good))
    assert any(
        r.getMessage() == "Admitted" and r.dew_fields["object"] == "default/good"  # type: ignore[attr-defined]
        for r in caplog.records
    )


# ----------------------------------------------------------------------------- the limit


async def test_the_limit_counts_every_namespace_and_refuses_only_creates(
    api: httpx.AsyncClient, apiserver: ApiServerThread, kubeconfig: Path, tls: Tls
) -> None:
    assert (
        await api.post("/api/v1/namespaces", json={"metadata": {"name": "team-b"}})
    ).status_code == 201
    store_spcs(apiserver, ["one", "two"])
    store_spcs(apiserver, ["three"], namespace="team-b")
    config = WebhookConfig("127.0.0.1", 0, tls.cert, tls.key, str(kubeconfig), max_spcs=3)
    async with running_webhook(config, tls) as webhook:
        fourth = spc("four", _entry())
        response = await webhook.send(review(fourth))
        assert response["allowed"] is False
        assert response["status"] == {
            "status": "Failure",
            "code": 403,
            "reason": "Forbidden",
            "message": 'SecretProviderClass "four" cannot be created: the cluster already has 3 '
            "SecretProviderClass objects and the limit is 3 for the CCE Secrets Manager for DEW "
            "add-on; delete SecretProviderClass objects that are no longer used first",
            "details": {
                "name": "four",
                "group": GROUP,
                "kind": "secretproviderclasses",
                "causes": [],
            },
        }
        # Another provider's class counts and is limited too: the limit is the cluster's.
        other = spc("five", "x", provider="azure")
        assert not await webhook.allowed(review(other))
        # An invalid class gets the validation message first.
        bad = INVALID_SPCS["objectType is not csms"]
        assert (await webhook.send(review(bad)))["status"]["message"] == validation_message(bad)
        # Updates are never refused for the limit, nor creates of a name that exists (the API
        # server answers those with AlreadyExists).
        one = spc("one", _entry(objectVersion="v2"))
        assert await webhook.allowed(review(one, operation="UPDATE", old=spc("one", _entry())))
        assert await webhook.allowed(review(spc("one", _entry())))

        # Deleting one makes room (once the watch has seen it).
        deleted = await api.delete(f"{spcs_path('team-b')}/three")
        assert deleted.status_code == 200, deleted.text

        async def room() -> bool:
            return await webhook.allowed(review(fourth, dry_run=True))

        await eventually(room, what="room after a delete")
        # A dry run reserves nothing; a real allowed create holds its place until it shows up
        # in the watch, so a burst of creates cannot overshoot the limit together.
        assert await webhook.allowed(review(fourth))
        assert not await webhook.allowed(review(spc("four-b", _entry())))


async def test_the_default_limit_is_500(
    api: httpx.AsyncClient, apiserver: ApiServerThread, kubeconfig: Path, tls: Tls
) -> None:
    args = cli.build_parser().parse_args(
        [
            "webhook",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            str(tls.cert),
            "--tls-key",
            str(tls.key),
            "--kubeconfig",
            str(kubeconfig),
        ]
    )
    config = config_from_args(args)
    assert config.max_spcs == 500
    store_spcs(apiserver, [f"spc-{i}" for i in range(499)])
    async with running_webhook(config, tls) as webhook:
        the_500th = spc("spc-499", _entry())
        assert await webhook.allowed(review(the_500th))
        created = await api.post(spcs_path(), json=the_500th)
        assert created.status_code == 201, created.text
        the_501st = spc("spc-500", _entry())

        async def refused() -> bool:
            return not await webhook.allowed(review(the_501st))

        await eventually(refused, what="the 501st refused")
        message = (await webhook.send(review(the_501st)))["status"]["message"]
        assert "the cluster already has 500 SecretProviderClass objects" in message
        assert "the limit is 500" in message


# ----------------------------------------------------------------------------- the command


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dew_csi.cli", "webhook", *args]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_command(*args), capture_output=True, text=True, timeout=30, check=False)


def test_the_command_refuses_to_start_without_usable_tls_files(tls: Tls, tmp_path: Path) -> None:
    missing = tmp_path / "none.pem"
    result = _run("--tls-cert", str(missing), "--tls-key", str(tls.key), "--max-spcs", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == f"dew-csi webhook: --tls-cert {missing}: no such file"
    result = _run("--tls-cert", str(tls.cert), "--tls-key", str(missing), "--max-spcs", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == f"dew-csi webhook: --tls-key {missing}: no such file"
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    result = _run("--tls-cert", str(garbage), "--tls-key", str(tls.key), "--max-spcs", "0")
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"dew-csi webhook: cannot load the TLS certificate {garbage} and key {tls.key}: "
    )
    # Without the TLS options at all, argparse says so.
    result = subprocess.run(_command(), capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 2
    assert "the following arguments are required: --tls-cert, --tls-key" in result.stderr


def test_the_command_checks_its_options(tls: Tls, tmp_path: Path) -> None:
    files = ("--tls-cert", str(tls.cert), "--tls-key", str(tls.key))
    result = _run(*files, "--listen", "nowhere")
    assert (result.returncode, result.stderr.strip()) == (
        2,
        "dew-csi webhook: --listen must be HOST:PORT, not 'nowhere'",
    )
    result = _run(*files, "--max-spcs", "-1")
    assert (result.returncode, result.stderr.strip()) == (
        2,
        "dew-csi webhook: --max-spcs must be 0 (no limit) or more, not -1",
    )
    missing = tmp_path / "kubeconfig"
    result = _run(*files, "--listen", "127.0.0.1:0", "--kubeconfig", str(missing))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"dew-csi webhook: the kubeconfig {missing} (--kubeconfig) does not exist; pass "
        "--kubeconfig FILE or set KUBECONFIG to a valid kubeconfig"
    )


@pytest.fixture
def webhook_process(tls: Tls) -> Iterator[tuple[subprocess.Popen[str], str]]:
    process = subprocess.Popen(
        _command(
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            str(tls.cert),
            "--tls-key",
            str(tls.key),
            "--max-spcs",
            "0",
            "--log-format",
            "json",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    prefix = "dew-csi webhook listening on "
    if not line.startswith(prefix):
        process.kill()
        raise AssertionError(f"unexpected first line: {line!r}; stderr: {process.communicate()[1]}")
    try:
        yield process, line.removeprefix(prefix)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


async def test_the_command_serves_and_logs_json_decisions(
    webhook_process: tuple[subprocess.Popen[str], str], tls: Tls
) -> None:
    process, url = webhook_process
    async with httpx.AsyncClient(verify=tls.client(), timeout=10) as http:
        client = WebhookClient(http, url)
        assert (await http.get(f"{url}/healthz")).text == "ok"
        bad = INVALID_SPCS["alias is not a file name"]
        response = await client.send(review(bad))
        assert response["status"]["message"] == validation_message(bad)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=10) == 0
    assert process.stderr is not None
    lines = [json.loads(line) for line in process.stderr.read().splitlines() if line.strip()]
    [denied] = [line for line in lines if line["msg"] == "Denied"]
    assert denied["level"] == "info"
    assert denied["object"] == "default/bad"
    assert denied["rule"] == "unsafe-file-name"
    assert denied["message"] == validation_message(bad)
    assert any(line["msg"] == "Listening for admission reviews" for line in lines)


# ============================================================================= the emulator


@dataclass
class FakeWebhook:
    """A programmable HTTPS webhook that records every review it gets."""

    url: str
    reviews: list[dict[str, Any]] = field(default_factory=list)
    answer: Callable[[dict[str, Any]], Awaitable[web.StreamResponse]] | None = None

    @staticmethod
    def reply(document: dict[str, Any], **response: Any) -> web.Response:
        body = {
            "apiVersion": document["apiVersion"],
            "kind": "AdmissionReview",
            "response": {"uid": document["request"]["uid"], **response},
        }
        return web.json_response(body)


@pytest.fixture
async def fake_webhook(tls: Tls) -> AsyncIterator[FakeWebhook]:
    fake = FakeWebhook(url="")

    async def handle(request: web.Request) -> web.StreamResponse:
        document = await request.json()
        fake.reviews.append(document)
        if fake.answer is not None:
            return await fake.answer(document)
        return FakeWebhook.reply(document, allowed=True)

    app = web.Application()
    app.router.add_post("/validate", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=load_tls(tls.cert, tls.key))
    await site.start()
    fake.url = f"https://127.0.0.1:{runner.addresses[0][1]}/validate"
    yield fake
    await runner.cleanup()


def configuration(
    url: str,
    ca_bundle: str,
    *,
    name: str = "dew-csi-webhook",
    hook: str = HOOK,
    failure_policy: str = "Fail",
    rules: list[dict[str, Any]] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name},
        "webhooks": [
            {
                "name": hook,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                "failurePolicy": failure_policy,
                "timeoutSeconds": 5,
                "rules": rules
                or [
                    {
                        "apiGroups": [GROUP],
                        "apiVersions": ["v1", "v1alpha1"],
                        "operations": ["CREATE", "UPDATE"],
                        "resources": ["secretproviderclasses"],
                        "scope": "Namespaced",
                    }
                ],
                "clientConfig": {"url": url, "caBundle": ca_bundle},
                **extra,
            }
        ],
    }


async def install(api: httpx.AsyncClient, config: dict[str, Any]) -> None:
    response = await api.post(VWCS, json=config)
    assert response.status_code == 201, response.text


def refusal(response: httpx.Response, code: int, reason: str) -> str:
    assert response.status_code == code, response.text
    status = response.json()
    assert status["kind"] == "Status"
    assert status["status"] == "Failure"
    assert status["code"] == code
    assert status["reason"] == reason
    return str(status["message"])


async def test_the_emulator_refuses_writes_the_webhook_denies(
    api: httpx.AsyncClient, webhook: WebhookClient, tls: Tls
) -> None:
    await install(api, configuration(f"{webhook.url}/validate", tls.ca_bundle))
    bad = INVALID_SPCS["objectType is not csms"]
    expected = f'admission webhook "{HOOK}" denied the request: {validation_message(bad)}'
    assert refusal(await api.post(spcs_path(), json=bad), 400, "") == expected
    assert (await api.get(f"{spcs_path()}/bad")).status_code == 404

    good = yaml.safe_load((EXAMPLES / "secretproviderclass.yaml").read_text())
    created = await api.post(spcs_path(), json=good)
    assert created.status_code == 201, created.text
    # Every way of changing it goes past the webhook: merge patch (kubectl apply), PUT,
    # server-side apply, JSON patch.
    objects = _entry(objectVersion="1")
    merge = {"spec": {"parameters": {"objects": objects}}}
    broken = json.loads(json.dumps(good))
    broken["spec"]["parameters"]["objects"] = objects
    message = f'admission webhook "{HOOK}" denied the request: {validation_message(broken)}'
    url = f"{spcs_path()}/spc-test"
    patched = await api.patch(
        url, json=merge, headers={"Content-Type": "application/merge-patch+json"}
    )
    assert refusal(patched, 400, "") == message
    current = (await api.get(url)).json()
    assert current["spec"] == good["spec"]
    put = json.loads(json.dumps(current))
    put["spec"]["parameters"]["objects"] = objects
    assert refusal(await api.put(url, json=put), 400, "") == message
    applied = await api.patch(
        url,
        content=json.dumps(broken),
        params={"fieldManager": "test", "force": "true"},
        headers={"Content-Type": "application/apply-patch+yaml"},
    )
    assert refusal(applied, 400, "") == message
    json_patch = [{"op": "replace", "path": "/spec/parameters/objects", "value": objects}]
    jp = await api.patch(
        url, json=json_patch, headers={"Content-Type": "application/json-patch+json"}
    )
    assert refusal(jp, 400, "") == message
    assert (await api.get(url)).json()["metadata"]["resourceVersion"] == current["metadata"][
        "resourceVersion"
    ]
    # A valid change passes; v1alpha1 requests go past the webhook too.
    fixed = await api.patch(
        url,
        json={"spec": {"parameters": {"objects": _entry(objectVersion="v3")}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert fixed.status_code == 200, fixed.text
    alpha = json.loads(json.dumps(bad))
    alpha["apiVersion"] = f"{GROUP}/v1alpha1"
    assert refusal(await api.post(spcs_path(version="v1alpha1"), json=alpha), 400, "") == expected


async def test_the_limit_through_the_emulator(
    api: httpx.AsyncClient, apiserver: ApiServerThread, kubeconfig: Path, tls: Tls
) -> None:
    config = WebhookConfig("127.0.0.1", 0, tls.cert, tls.key, str(kubeconfig), max_spcs=2)
    async with running_webhook(config, tls) as webhook:
        await install(api, configuration(f"{webhook.url}/validate", tls.ca_bundle))
        for name in ("a", "b"):
            created = await api.post(spcs_path(), json=spc(name, _entry()))
            assert created.status_code == 201, created.text
        third = await api.post(spcs_path(), json=spc("c", _entry()))
        message = refusal(third, 403, "Forbidden")
        assert message.startswith(
            f'admission webhook "{HOOK}" denied the request: SecretProviderClass "c" cannot be '
            "created: the cluster already has 2 SecretProviderClass objects and the limit is 2"
        )


async def test_the_review_the_emulator_sends(
    api: httpx.AsyncClient, fake_webhook: FakeWebhook, tls: Tls
) -> None:
    await install(api, configuration(fake_webhook.url, tls.ca_bundle))
    body = spc("", _entry())
    del body["metadata"]["name"]
    body["metadata"]["generateName"] = "gen-"
    created = await api.post(spcs_path(), json=body, params={"fieldManager": "me"})
    assert created.status_code == 201, created.text
    stored = created.json()
    [document] = fake_webhook.reviews
    assert document["apiVersion"] == "admission.k8s.io/v1"
    assert document["kind"] == "AdmissionReview"
    request = document["request"]
    uuid.UUID(request["uid"])
    assert request["kind"] == SPC_KIND
    assert request["resource"] == SPC_RESOURCE
    assert request["requestKind"] == SPC_KIND
    assert request["requestResource"] == SPC_RESOURCE
    assert request["operation"] == "CREATE"
    assert request["namespace"] == "default"
    assert "subResource" not in request
    # The webhook sees the generated name, the one that is stored.
    assert request["name"] == stored["metadata"]["name"]
    assert request["name"].startswith("gen-")
    assert request["object"]["metadata"]["name"] == request["name"]
    assert request["object"]["spec"] == stored["spec"]
    assert request["oldObject"] is None
    assert request["dryRun"] is False
    assert request["options"] == {
        "kind": "CreateOptions",
        "apiVersion": "meta.k8s.io/v1",
        "fieldManager": "me",
    }
    assert request["userInfo"]["username"]

    name = stored["metadata"]["name"]
    updated = await api.patch(
        f"{spcs_path()}/{name}",
        json={"metadata": {"labels": {"a": "b"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert updated.status_code == 200, updated.text
    update = fake_webhook.reviews[-1]["request"]
    assert update["operation"] == "UPDATE"
    assert update["options"]["kind"] == "UpdateOptions"
    assert (
        update["oldObject"]["metadata"]["resourceVersion"] == stored["metadata"]["resourceVersion"]
    )
    assert update["object"]["metadata"]["labels"] == {"a": "b"}


async def test_rules_decide_which_writes_are_sent(
    api: httpx.AsyncClient, fake_webhook: FakeWebhook, tls: Tls
) -> None:
    async def deny(document: dict[str, Any]) -> web.StreamResponse:
        return FakeWebhook.reply(document, allowed=False, status={"message": "no"})

    fake_webhook.answer = deny
    rules = [
        {
            "apiGroups": [GROUP],
            "apiVersions": ["v1"],
            "operations": ["UPDATE"],
            "resources": ["secretproviderclasses"],
        },
        {
            "apiGroups": [""],
            "apiVersions": ["*"],
            "operations": ["*"],
            "resources": ["configmaps"],
            "scope": "Cluster",
        },
        {
            "apiGroups": ["*"],
            "apiVersions": ["*"],
            "operations": ["CREATE"],
            "resources": ["*"],
            "scope": "Cluster",
        },
    ]
    await install(api, configuration(fake_webhook.url, tls.ca_bundle, rules=rules))
    # CREATE of a SecretProviderClass: the rule says UPDATE only.
    assert (await api.post(spcs_path(), json=spc("a", _entry()))).status_code == 201
    # A namespaced ConfigMap: the rule's scope is Cluster.
    config_map = {"metadata": {"name": "c"}, "data": {}}
    assert (
        await api.post("/api/v1/namespaces/default/configmaps", json=config_map)
    ).status_code == 201
    # ... but a cluster-scoped create matches `*` with scope Cluster, and is denied.
    namespace = await api.post("/api/v1/namespaces", json={"metadata": {"name": "x"}})
    assert refusal(namespace, 400, "") == f'admission webhook "{HOOK}" denied the request: no'
    assert [r["request"]["kind"]["kind"] for r in fake_webhook.reviews] == ["Namespace"]
    # UPDATE of the class matches; a v1alpha1 request is sent as v1 (matchPolicy Equivalent).
    patched = await api.patch(
        f"{spcs_path(version='v1alpha1')}/a",
        json={"metadata": {"labels": {"x": "y"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert refusal(patched, 400, "") == f'admission webhook "{HOOK}" denied the request: no'
    request = fake_webhook.reviews[-1]["request"]
    assert request["kind"] == SPC_KIND
    assert request["requestKind"] == {**SPC_KIND, "version": "v1alpha1"}
    assert request["object"]["apiVersion"] == f"{GROUP}/v1"


async def test_match_policy_exact_and_selectors(
    api: httpx.AsyncClient, fake_webhook: FakeWebhook, tls: Tls
) -> None:
    rules = [
        {
            "apiGroups": [GROUP],
            "apiVersions": ["v1"],
            "operations": ["CREATE"],
            "resources": ["secretproviderclasses"],
        }
    ]
    await install(
        api,
        configuration(
            fake_webhook.url,
            tls.ca_bundle,
            rules=rules,
            matchPolicy="Exact",
            objectSelector={"matchExpressions": [{"key": "skip", "operator": "DoesNotExist"}]},
            namespaceSelector={"matchLabels": {"kubernetes.io/metadata.name": "default"}},
        ),
    )
    alpha = spc("alpha", _entry())
    alpha["apiVersion"] = f"{GROUP}/v1alpha1"
    assert (await api.post(spcs_path(version="v1alpha1"), json=alpha)).status_code == 201
    skipped = spc("skipped", _entry())
    skipped["metadata"]["labels"] = {"skip": "yes"}
    assert (await api.post(spcs_path(), json=skipped)).status_code == 201
    assert (
        await api.post("/api/v1/namespaces", json={"metadata": {"name": "other"}})
    ).status_code == 201
    elsewhere = spc("elsewhere", _entry())
    elsewhere["metadata"]["namespace"] = "other"
    assert (await api.post(spcs_path("other"), json=elsewhere)).status_code == 201
    assert fake_webhook.reviews == []
    assert (await api.post(spcs_path(), json=spc("sent", _entry()))).status_code == 201
    assert [r["request"]["name"] for r in fake_webhook.reviews] == ["sent"]


async def test_failure_policy_fail_refuses_and_ignore_lets_through(
    api: httpx.AsyncClient, tls: Tls
) -> None:
    with socket_closed_port() as port:
        url = f"https://127.0.0.1:{port}/validate"
        await install(api, configuration(url, tls.ca_bundle))
        refused = await api.post(spcs_path(), json=spc("a", _entry()))
        assert refusal(refused, 500, "InternalError") == (
            f'Internal error occurred: failed calling webhook "{HOOK}": failed to call webhook: '
            f'Post "{url}?timeout=5s": dial tcp 127.0.0.1:{port}: connect: connection refused'
        )
        assert (await api.get(f"{spcs_path()}/a")).status_code == 404
        # Writes no rule matches do not care.
        assert (
            await api.post(
                "/api/v1/namespaces/default/configmaps", json={"metadata": {"name": "c"}}
            )
        ).status_code == 201
        ignore = [{"op": "replace", "path": "/webhooks/0/failurePolicy", "value": "Ignore"}]
        patched = await api.patch(
            f"{VWCS}/dew-csi-webhook",
            json=ignore,
            headers={"Content-Type": "application/json-patch+json"},
        )
        assert patched.status_code == 200, patched.text
        assert (await api.post(spcs_path(), json=spc("a", _entry()))).status_code == 201


@contextlib.contextmanager
def socket_closed_port() -> Iterator[int]:
    """A local port nothing listens on."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    yield port


async def test_bad_certificates_and_bad_answers_are_call_failures(
    api: httpx.AsyncClient, fake_webhook: FakeWebhook, other_tls: Tls, tls: Tls
) -> None:
    await install(api, configuration(fake_webhook.url, other_tls.ca_bundle))
    message = refusal(await api.post(spcs_path(), json=spc("a", _entry())), 500, "InternalError")
    assert message.startswith(
        f'Internal error occurred: failed calling webhook "{HOOK}": failed to call webhook: '
        f'Post "{fake_webhook.url}?timeout=5s": tls: failed to verify certificate: '
    )
    assert fake_webhook.reviews == []
    fix = [{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": tls.ca_bundle}]
    assert (
        await api.patch(
            f"{VWCS}/dew-csi-webhook",
            json=fix,
            headers={"Content-Type": "application/json-patch+json"},
        )
    ).status_code == 200

    answers: list[Callable[[dict[str, Any]], web.StreamResponse]] = [
        lambda d: web.json_response(
            {
                "apiVersion": d["apiVersion"],
                "kind": "AdmissionReview",
                "response": {"uid": "other", "allowed": True},
            }
        ),
        lambda d: web.Response(status=500, text="boom"),
        lambda d: web.Response(text="not json"),
        lambda d: web.json_response({"apiVersion": "v1", "kind": "Status"}),
    ]
    expected = [
        'received invalid webhook response: expected response.uid="{uid}", got "other"',
        "failed to call webhook: the server responded with HTTP 500: boom",
        "received invalid webhook response: the response is not JSON",
        "received invalid webhook response: expected webhook response of admission.k8s.io/v1, "
        "Kind=AdmissionReview, got v1, Kind=Status",
    ]
    for answer, text in zip(answers, expected, strict=True):

        async def reply(document: dict[str, Any], answer: Any = answer) -> web.StreamResponse:
            return answer(document)  # type: ignore[no-any-return]

        fake_webhook.answer = reply
        response = await api.post(spcs_path(), json=spc("a", _entry()))
        uid = fake_webhook.reviews[-1]["request"]["uid"]
        message = refusal(response, 500, "InternalError")
        assert text.format(uid=uid) in message, message


async def test_denials_keep_the_webhooks_code_reason_and_details(
    api: httpx.AsyncClient, fake_webhook: FakeWebhook, tls: Tls
) -> None:
    await install(api, configuration(fake_webhook.url, tls.ca_bundle))
    statuses: list[tuple[dict[str, Any] | None, int, str, str]] = [
        ({"code": 403, "reason": "Forbidden", "message": "m"}, 403, "Forbidden", ": m"),
        ({"code": 200, "message": "low code"}, 400, "", ": low code"),
        ({"reason": "OnlyAReason"}, 400, "OnlyAReason", ": OnlyAReason"),
        (None, 400, "", " without explanation"),
    ]
    for status, code, reason, tail in statuses:

        async def deny(document: dict[str, Any], status: Any = status) -> web.StreamResponse:
            extra = {} if status is None else {"status": status}
            return FakeWebhook.reply(document, allowed=False, **extra)

        fake_webhook.answer = deny
        response = await api.post(spcs_path(), json=spc("a", _entry()))
        assert (
            refusal(response, code, reason)
            == f'admission webhook "{HOOK}" denied the request{tail}'
        )


async def test_warnings_reach_the_client(
    api: httpx.AsyncClient, fake_webhook: FakeWebhook, tls: Tls
) -> None:
    async def warn(document: dict[str, Any]) -> web.StreamResponse:
        return FakeWebhook.reply(document, allowed=True, warnings=["objectVersion latest rotates"])

    fake_webhook.answer = warn
    await install(api, configuration(fake_webhook.url, tls.ca_bundle))
    created = await api.post(spcs_path(), json=spc("a", _entry()))
    assert created.status_code == 201
    assert created.headers.get_list("Warning") == ['299 - "objectVersion latest rotates"']


async def test_dry_run_is_sent_as_such_and_needs_side_effect_free_webhooks(
    api: httpx.AsyncClient, fake_webhook: FakeWebhook, tls: Tls
) -> None:
    await install(api, configuration(fake_webhook.url, tls.ca_bundle))
    dry = await api.post(spcs_path(), json=spc("a", _entry()), params={"dryRun": "All"})
    assert dry.status_code == 201, dry.text
    [document] = fake_webhook.reviews
    assert document["request"]["dryRun"] is True
    assert document["request"]["options"]["dryRun"] == ["All"]
    assert (await api.get(f"{spcs_path()}/a")).status_code == 404
    unknown = [{"op": "replace", "path": "/webhooks/0/sideEffects", "value": "Unknown"}]
    assert (
        await api.patch(
            f"{VWCS}/dew-csi-webhook",
            json=unknown,
            headers={"Content-Type": "application/json-patch+json"},
        )
    ).status_code == 200
    refused = await api.post(spcs_path(), json=spc("a", _entry()), params={"dryRun": "All"})
    assert (
        refusal(refused, 400, "BadRequest")
        == f'admission webhook "{HOOK}" does not support dry run'
    )


async def test_a_slow_webhook_does_not_block_other_clients_and_times_out(
    api: httpx.AsyncClient, fake_webhook: FakeWebhook, tls: Tls
) -> None:
    release = asyncio.Event()

    async def slow(document: dict[str, Any]) -> web.StreamResponse:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(release.wait(), timeout=5)
        return FakeWebhook.reply(document, allowed=True)

    fake_webhook.answer = slow
    await install(api, configuration(fake_webhook.url, tls.ca_bundle, timeoutSeconds=1))
    started = time.monotonic()
    pending = asyncio.create_task(api.post(spcs_path(), json=spc("a", _entry())))
    await eventually(lambda: _reviews_seen(fake_webhook, 1), what="the webhook called")
    # While the write waits for its webhook, the emulator serves everyone else.
    listed = await api.get("/api/v1/namespaces")
    assert listed.status_code == 200
    assert not pending.done()
    response = await pending
    release.set()
    assert 0.9 < time.monotonic() - started < 4
    assert refusal(response, 500, "InternalError").endswith(
        f'failed to call webhook: Post "{fake_webhook.url}?timeout=1s": context deadline exceeded'
    )


async def _reviews_seen(fake: FakeWebhook, count: int) -> bool:
    return len(fake.reviews) >= count


async def test_a_change_while_the_webhook_decides_is_decided_again(
    api: httpx.AsyncClient, fake_webhook: FakeWebhook, tls: Tls
) -> None:
    """What is stored is always what a webhook allowed: when the object changes between the
    preview and the commit, the write is previewed and sent again."""
    await install(api, configuration(fake_webhook.url, tls.ca_bundle))
    assert (await api.post(spcs_path(), json=spc("a", _entry()))).status_code == 201
    raced = False

    async def racing(document: dict[str, Any]) -> web.StreamResponse:
        nonlocal raced
        labels = document["request"]["object"]["metadata"].get("labels") or {}
        if not raced and labels.get("from") == "client":
            raced = True
            other = await api.patch(
                f"{spcs_path()}/a",
                json={"metadata": {"labels": {"other": "writer"}}},
                headers={"Content-Type": "application/merge-patch+json"},
            )
            assert other.status_code == 200, other.text
        return FakeWebhook.reply(document, allowed=True)

    fake_webhook.answer = racing
    patched = await api.patch(
        f"{spcs_path()}/a",
        json={"metadata": {"labels": {"from": "client"}}},
        headers={"Content-Type": "application/merge-patch+json"},
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["metadata"]["labels"] == {"other": "writer", "from": "client"}
    sent = [r["request"]["object"]["metadata"].get("labels") for r in fake_webhook.reviews]
    # create, the client's first try, the other writer, the client's second try
    assert sent[1:] == [
        {"from": "client"},
        {"other": "writer"},
        {"other": "writer", "from": "client"},
    ]


async def test_service_references_cannot_be_reached_from_the_sandbox(
    api: httpx.AsyncClient, tls: Tls
) -> None:
    config = configuration("", tls.ca_bundle)
    config["webhooks"][0]["clientConfig"] = {
        "service": {"name": "dew-csi-webhook", "namespace": "kube-system", "path": "/validate"}
    }
    await install(api, config)
    message = refusal(await api.post(spcs_path(), json=spc("a", _entry())), 500, "InternalError")
    assert "clientConfig.service cannot be reached from the sandbox API emulator" in message


# ============================================================================= hostile input


class _NoYamlLoading:
    def __init__(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("parameters.objects was loaded")


@pytest.mark.parametrize(
    ("objects", "rule", "named"),
    [
        (huge_objects(), "objects-too-large", "larger than the limit of 256 KiB"),
        (alias_bomb(), "objects-too-complex", "once its aliases are expanded"),
    ],
    ids=["one-mebibyte", "alias-bomb"],
)
async def test_a_hostile_secretproviderclass_is_denied_without_loading_it(
    webhook: WebhookClient,
    monkeypatch: pytest.MonkeyPatch,
    objects: str,
    rule: str,
    named: str,
) -> None:
    monkeypatch.setattr(spc_module.yaml, "load", _NoYamlLoading)
    if len(objects) > 256 * 1024:  # spc.MAX_OBJECTS_BYTES
        monkeypatch.setattr(spc_module, "_SafeLoader", _NoYamlLoading)  # not even scanned
    hostile = spc("hostile", objects)
    response = await asyncio.wait_for(webhook.send(review(hostile)), 10)
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert message.startswith('SecretProviderClass "hostile": parameters.objects ')
    assert named in message
    assert response["status"]["details"]["causes"][0]["field"] == "spec.parameters.objects"
    with pytest.raises(SpcValidationError) as caught:
        validate_spc(hostile)
    assert caught.value.rule.value == rule


async def test_healthz_and_other_reviews_are_answered_while_hostile_ones_are_checked(
    webhook: WebhookClient,
) -> None:
    # As heavy as the bounds allow without a refusal by size: 500 objects, then one over.
    heavy = "".join(
        f"- {{objectName: s{i}, objectType: csms, objectVersion: v1}}\n" for i in range(500)
    )
    hostile = [
        spc("huge", huge_objects()),
        spc("bomb", alias_bomb()),
        spc("heavy", heavy + "- {objectName: s0, objectType: csms, objectVersion: v1}\n"),
    ]
    stop = asyncio.Event()
    denied: list[bool] = []

    async def attacker(obj: dict[str, Any]) -> None:
        while not stop.is_set():
            denied.append(not await webhook.allowed(review(obj)))

    attackers = [asyncio.create_task(attacker(obj)) for obj in hostile for _ in range(2)]
    try:
        await asyncio.sleep(0.2)
        for _ in range(10):
            health = await asyncio.wait_for(webhook.http.get(f"{webhook.url}/healthz"), 5)
            assert health.text == "ok"
            assert await asyncio.wait_for(webhook.allowed(review(spc("good", _entry()))), 5)
    finally:
        stop.set()
        await asyncio.gather(*attackers)
    assert denied
    assert all(denied)


async def test_the_emulator_refuses_a_hostile_secretproviderclass_within_the_timeout(
    api: httpx.AsyncClient, webhook: WebhookClient, tls: Tls
) -> None:
    # deploy/ fails open (failurePolicy Ignore, timeoutSeconds 5): an answer too slow would let
    # the class in. It must be refused in time.
    await install(
        api,
        configuration(f"{webhook.url}/validate", tls.ca_bundle, failure_policy="Ignore"),
    )
    response = await api.post(spcs_path(), json=spc("hostile", huge_objects()))
    message = refusal(response, 400, "")
    assert message.startswith(
        f'admission webhook "{HOOK}" denied the request: SecretProviderClass "hostile": '
        "parameters.objects is larger than the limit of 256 KiB"
    )
    assert (await api.get(f"{spcs_path()}/hostile")).status_code == 404


@pytest.mark.parametrize(
    "name",
    ["secret_1\nI0101 00:00:00.000000 1 webhook.py:1] forged", "a\rb", "a\x1b[31mb", "a/b"],
    ids=["forged-line", "carriage-return", "escape-sequence", "slash"],
)
async def test_an_object_name_outside_the_csms_rule_is_denied(
    webhook: WebhookClient, name: str
) -> None:
    objects = json.dumps([{"objectName": name, "objectType": "csms", "objectVersion": "latest"}])
    bad = spc("bad", objects)
    response = await webhook.send(review(bad))
    assert response["allowed"] is False
    message = response["status"]["message"]
    assert message == validation_message(bad)
    assert message.startswith('SecretProviderClass "bad": object "')
    assert "objectName must be a CSMS secret name: 1 to 64 letters, digits, '.', '_' or '-'" in (
        message
    )
    assert message.isprintable()


async def test_the_webhook_logs_odd_names_escaped_one_line_each(webhook: WebhookClient) -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(KlogFormatter())
    root = logging.getLogger()
    saved_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    forged = 'I0101 00:00:00.000000       1 webhook.py:1] "Admitted"'
    name = f"a\n{forged}\x1b[1A"
    try:
        objects = json.dumps(
            [{"objectName": name, "objectType": "csms", "objectVersion": "latest"}]
        )
        await webhook.send(review(spc("bad", objects)))
        malformed = review(spc("bad", objects))
        malformed["request"]["operation"] = f"CREATE\n{forged}"
        answer = await webhook.http.post(f"{webhook.url}/validate", json=malformed)
        assert answer.status_code == 400
    finally:
        root.removeHandler(handler)
        root.setLevel(saved_level)
    lines = stream.getvalue().splitlines()
    assert any('"Denied"' in line for line in lines)
    assert any("Refused a malformed AdmissionReview" in line for line in lines)
    for line in lines:
        assert re.match(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d{6} +\d+ [\w.]+:\d+\] ", line), line
        assert "\x1b" not in line
