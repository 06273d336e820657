"""Bad requests to the API emulator: each one gets the Kubernetes Status the real server would
send (never a 500, never a dropped connection), and the server keeps serving afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dew_csi.sandbox.apiserver import ApiServerThread
from tests.conftest import crd_documents

GROUP = "secrets-store.csi.x-k8s.io"
SPC = f"/apis/{GROUP}/v1/namespaces/default/secretproviderclasses"
SECRETS = "/api/v1/namespaces/default/secrets"
CONFIGMAPS = "/api/v1/namespaces/default/configmaps"
DEPLOYMENTS = "/apis/apps/v1/namespaces/default/deployments"
JSON = {"Content-Type": "application/json"}
MERGE = {"Content-Type": "application/merge-patch+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}
STRATEGIC = {"Content-Type": "application/strategic-merge-patch+json"}
APPLY = {"Content-Type": "application/apply-patch+yaml"}
TABLE = {"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"}
LIMIT = 3 * 1024 * 1024


@pytest.fixture(scope="module")
def server() -> Iterator[ApiServerThread]:
    with ApiServerThread() as thread:
        yield thread


@pytest.fixture(scope="module")
def api(server: ApiServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for crd in crd_documents():
            assert (
                client.post(
                    "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=crd
                ).status_code
                == 201
            )
        spc = {
            "apiVersion": f"{GROUP}/v1",
            "kind": "SecretProviderClass",
            "metadata": {"name": "existing"},
            "spec": {"provider": "cce"},
        }
        assert client.post(SPC, json=spc).status_code == 201
        assert client.post(SECRETS, json={"metadata": {"name": "existing"}}).status_code == 201
        deployment = {
            "metadata": {"name": "d"},
            "spec": {
                "selector": {"matchLabels": {"app": "d"}},
                "template": {
                    "metadata": {"labels": {"app": "d"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]},
                },
            },
        }
        assert client.post(DEPLOYMENTS, json=deployment).status_code == 201
        yield client


@dataclass
class Case:
    id: str
    method: str
    path: str
    code: int
    reason: str
    message: str = ""  # a part of the expected message
    body: Any = None  # JSON-encoded unless bytes
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


def secret(**extra: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, **extra}


CASES = [
    Case(
        "malformed JSON",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "json parse error",
        b'{"metadata": {"name": ',
        JSON,
    ),
    Case(
        "malformed YAML",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "error converting YAML to JSON",
        b"metadata:\n  name: [unclosed\n",
        {"Content-Type": "application/yaml"},
    ),
    Case(
        "YAML with two documents",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "more than one document",
        b"metadata: {name: a}\n---\nmetadata: {name: b}\n",
        {"Content-Type": "application/yaml"},
    ),
    Case("body is an array", "POST", SECRETS, 400, "BadRequest", "expected a JSON object", [1, 2]),
    Case("body is empty", "POST", SECRETS, 400, "BadRequest", "got null", b"", JSON),
    Case(
        "NaN in JSON",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "json parse error",
        b'{"metadata": {"name": "n"}, "x": NaN}',
        JSON,
    ),
    Case(
        "number too large",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "json parse error",
        b'{"metadata": {"name": "n"}, "x": 1e999}',
        JSON,
    ),
    Case(
        "deeply nested JSON",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "nest",
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        JSON,
    ),
    Case(
        "invalid UTF-8",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "json parse error",
        b'{"metadata": {"name": "\xff\xfe"}}',
        JSON,
    ),
    Case(
        "unknown resource",
        "GET",
        "/api/v1/namespaces/default/widgets",
        404,
        "NotFound",
        "the server could not find the requested resource",
    ),
    Case(
        "unknown group",
        "GET",
        "/apis/example.com/v1/things",
        404,
        "NotFound",
        "the server could not find the requested resource",
    ),
    Case("unknown version", "GET", "/apis/apps/v9/deployments", 404, "NotFound"),
    Case("unknown top-level path", "GET", "/nothing/here", 404, "NotFound"),
    Case(
        "cluster resource under a namespace",
        "GET",
        "/api/v1/namespaces/default/nodes",
        404,
        "NotFound",
    ),
    Case("missing subresource", "GET", f"{SPC}/existing/status", 404, "NotFound"),
    Case("too many path segments", "GET", f"{SECRETS}/existing/a/b", 404, "NotFound"),
    Case(
        "kind does not match the URL",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        'ConfigMap in version "v1" cannot be handled as a Secret',
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}},
    ),
    Case(
        "apiVersion does not match the URL",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "the API version in the data (apps/v1) does not match the expected API version (v1)",
        {"apiVersion": "apps/v1", "kind": "Secret", "metadata": {"name": "x"}},
    ),
    Case(
        "custom resource without kind",
        "POST",
        SPC,
        400,
        "BadRequest",
        "Object 'Kind' is missing",
        {"metadata": {"name": "x"}},
    ),
    Case(
        "namespace does not match the URL",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "the namespace of the provided object does not match the namespace sent on the request",
        {"metadata": {"name": "x", "namespace": "kube-system"}},
    ),
    Case(
        "name does not match the URL",
        "PUT",
        f"{SECRETS}/existing",
        400,
        "BadRequest",
        "the name of the object (other) does not match the name on the URL (existing)",
        {"metadata": {"name": "other"}},
    ),
    Case(
        "missing name",
        "POST",
        SECRETS,
        422,
        "Invalid",
        "metadata.name: Required value: name or generateName is required",
        {"metadata": {}},
    ),
    Case(
        "invalid DNS name",
        "POST",
        SECRETS,
        422,
        "Invalid",
        "RFC 1123 subdomain",
        {"metadata": {"name": "No_Good"}},
    ),
    Case(
        "name too long",
        "POST",
        "/api/v1/namespaces",
        422,
        "Invalid",
        "must be no more than 63 characters",
        {"metadata": {"name": "n" * 64}},
    ),
    Case(
        "resourceVersion on create",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "resourceVersion should not be set on objects to be created",
        {"metadata": {"name": "x", "resourceVersion": "5"}},
    ),
    Case(
        "metadata is a string",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "cannot unmarshal string",
        {"metadata": "x"},
    ),
    Case(
        "label value is a number",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "cannot unmarshal number",
        {"metadata": {"name": "x", "labels": {"a": 1}}},
    ),
    Case(
        "ownerReferences is a map",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "ownerReferences",
        {"metadata": {"name": "x", "ownerReferences": {"uid": "u"}}},
    ),
    Case(
        "owner reference without uid",
        "POST",
        SECRETS,
        422,
        "Invalid",
        "metadata.ownerReferences.uid",
        {
            "metadata": {
                "name": "x",
                "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "o"}],
            }
        },
    ),
    Case(
        "secret data not base64",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        "illegal base64 data",
        secret(data={"k": "not base64!"}),
    ),
    Case(
        "secret data key invalid",
        "POST",
        SECRETS,
        422,
        "Invalid",
        "a valid config key",
        secret(stringData={"bad key": "v"}),
    ),
    Case(
        "TLS secret without its keys",
        "POST",
        SECRETS,
        422,
        "Invalid",
        "data[tls.crt]: Required value",
        secret(type="kubernetes.io/tls"),
    ),
    Case(
        "pod without containers",
        "POST",
        "/api/v1/namespaces/default/pods",
        422,
        "Invalid",
        "spec.containers: Required value",
        {"metadata": {"name": "p"}, "spec": {}},
    ),
    Case(
        "deployment selector does not match",
        "POST",
        DEPLOYMENTS,
        422,
        "Invalid",
        "`selector` does not match template `labels`",
        {
            "metadata": {"name": "bad"},
            "spec": {
                "selector": {"matchLabels": {"app": "x"}},
                "template": {
                    "metadata": {"labels": {"app": "y"}},
                    "spec": {"containers": [{"name": "c", "image": "i"}]},
                },
            },
        },
    ),
    Case(
        "CRD name is not plural.group",
        "POST",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        422,
        "Invalid",
        'must be spec.names.plural+"."+spec.group',
        {
            "metadata": {"name": "wrong"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"plural": "things", "kind": "Thing"},
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {"openAPIV3Schema": {"type": "object"}},
                    }
                ],
            },
        },
    ),
    Case(
        "unsupported patch type",
        "PATCH",
        f"{SECRETS}/existing",
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format",
        {},
        {"Content-Type": "text/plain"},
    ),
    Case(
        "strategic merge on a custom resource",
        "PATCH",
        f"{SPC}/existing",
        415,
        "UnsupportedMediaType",
        "application/merge-patch+json",
        {},
        STRATEGIC,
    ),
    Case(
        "JSON patch that is not a list",
        "PATCH",
        f"{SECRETS}/existing",
        400,
        "BadRequest",
        "jsonpatch.Patch",
        {"op": "add", "path": "/x", "value": 1},
        JSON_PATCH,
    ),
    Case(
        "JSON patch with an unknown op",
        "PATCH",
        f"{SECRETS}/existing",
        422,
        "Invalid",
        "Unexpected kind: frobnicate",
        [{"op": "frobnicate", "path": "/data"}],
        JSON_PATCH,
    ),
    Case(
        "JSON patch without a value",
        "PATCH",
        f"{SECRETS}/existing",
        422,
        "Invalid",
        "missing a value",
        [{"op": "add", "path": "/data"}],
        JSON_PATCH,
    ),
    Case(
        "JSON patch with a bad pointer",
        "PATCH",
        f"{SECRETS}/existing",
        422,
        "Invalid",
        "JSON pointer",
        [{"op": "remove", "path": "data"}],
        JSON_PATCH,
    ),
    Case(
        "JSON patch into a missing array index",
        "PATCH",
        f"{SECRETS}/existing",
        422,
        "Invalid",
        "",
        [{"op": "add", "path": "/metadata/finalizers/3", "value": "x"}],
        JSON_PATCH,
    ),
    Case(
        "merge patch that is a list",
        "PATCH",
        f"{SECRETS}/existing",
        400,
        "BadRequest",
        "cannot unmarshal array",
        [1],
        MERGE,
    ),
    Case(
        "merge patch that is not JSON",
        "PATCH",
        f"{SECRETS}/existing",
        400,
        "BadRequest",
        "error decoding patch",
        b"{nope",
        MERGE,
    ),
    Case(
        "merge patch making a bad object",
        "PATCH",
        f"{SECRETS}/existing",
        400,
        "BadRequest",
        "cannot unmarshal",
        {"metadata": {"labels": "flat"}},
        MERGE,
    ),
    Case(
        "apply patch that is not YAML",
        "PATCH",
        f"{SPC}/existing",
        400,
        "BadRequest",
        "error converting YAML",
        b"a: [",
        APPLY,
        {"fieldManager": "m"},
    ),
    Case(
        "apply patch that is a list",
        "PATCH",
        f"{SPC}/existing",
        400,
        "BadRequest",
        "expected an object",
        b"- a\n",
        APPLY,
        {"fieldManager": "m"},
    ),
    Case(
        "apply patch without kind",
        "PATCH",
        f"{SPC}/existing",
        400,
        "BadRequest",
        "kind must be set",
        b"apiVersion: v1\nmetadata: {name: existing}\n",
        APPLY,
        {"fieldManager": "m"},
    ),
    Case(
        "force on a non-apply patch",
        "PATCH",
        f"{SECRETS}/existing",
        422,
        "Invalid",
        "force: Forbidden",
        {},
        MERGE,
        {"force": "true"},
    ),
    Case(
        "patch of a missing object",
        "PATCH",
        f"{SECRETS}/missing",
        404,
        "NotFound",
        'secrets "missing" not found',
        {},
        MERGE,
    ),
    Case(
        "get of a missing object",
        "GET",
        f"{SPC}/missing",
        404,
        "NotFound",
        f'secretproviderclasses.{GROUP} "missing" not found',
    ),
    Case(
        "bad label selector",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "expected: ',' or ')'",
        params={"labelSelector": "a in (b"},
    ),
    Case(
        "bad label key",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "unable to parse requirement",
        params={"labelSelector": "-bad-=x"},
    ),
    Case(
        "label selector with two operators",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "found '='",
        params={"labelSelector": "a=b=c"},
    ),
    Case(
        "bad field selector",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "invalid selector",
        params={"fieldSelector": "metadata.name"},
    ),
    Case(
        "bad field selector escape",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "escape",
        params={"fieldSelector": "metadata.name=a\\q"},
    ),
    Case(
        "unsupported field selector",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "field label not supported: spec.nodeName",
        params={"fieldSelector": "spec.nodeName=x"},
    ),
    Case(
        "unsupported field selector on watch",
        "GET",
        SPC,
        400,
        "BadRequest",
        "is not a known field selector",
        params={"watch": "1", "fieldSelector": "status.x=1"},
    ),
    Case(
        "resourceVersion not a number",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        'resourceVersion: Invalid value: "abc"',
        params={"resourceVersion": "abc"},
    ),
    Case(
        "watch resourceVersion not a number",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "resourceVersion",
        params={"watch": "true", "resourceVersion": "-1"},
    ),
    Case(
        "resourceVersion from the future",
        "GET",
        SECRETS,
        504,
        "Timeout",
        "Too large resource version",
        params={"resourceVersion": "99999999"},
    ),
    Case(
        "unknown resourceVersionMatch",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "resourceVersionMatch",
        params={"resourceVersion": "1", "resourceVersionMatch": "Any"},
    ),
    Case(
        "Exact without a version",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "Exact",
        params={"resourceVersionMatch": "Exact"},
    ),
    Case(
        "limit not a number",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        'limit: Invalid value: "ten"',
        params={"limit": "ten"},
    ),
    Case(
        "negative limit",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "greater than or equal to 0",
        params={"limit": "-1"},
    ),
    Case(
        "timeoutSeconds not a number",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "timeoutSeconds",
        params={"watch": "1", "timeoutSeconds": "soon"},
    ),
    Case(
        "garbage continue token",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "continue key is not valid",
        params={"limit": "1", "continue": "!!!"},
    ),
    Case(
        "continue with a resourceVersion",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "specifying resource version is not allowed when using continue",
        params={"continue": "eyJydiI6MSwic3RhcnQiOlsiIiwiIl19", "resourceVersion": "1"},
    ),
    Case(
        "sendInitialEvents without NotOlderThan",
        "GET",
        SECRETS,
        422,
        "Invalid",
        "sendInitialEvents",
        params={"watch": "1", "sendInitialEvents": "true"},
    ),
    Case(
        "bad includeObject",
        "GET",
        SECRETS,
        400,
        "BadRequest",
        "includeObject",
        headers=TABLE,
        params={"includeObject": "Everything"},
    ),
    Case(
        "PUT on a collection",
        "PUT",
        SECRETS,
        405,
        "MethodNotAllowed",
        "does not allow",
        {"metadata": {"name": "x"}},
    ),
    Case(
        "POST on an item",
        "POST",
        f"{SECRETS}/existing",
        405,
        "MethodNotAllowed",
        body={"metadata": {"name": "x"}},
    ),
    Case(
        "POST across all namespaces",
        "POST",
        "/api/v1/secrets",
        405,
        "MethodNotAllowed",
        body={"metadata": {"name": "x"}},
    ),
    Case("OPTIONS", "OPTIONS", SECRETS, 405, "MethodNotAllowed"),
    Case(
        "protobuf body",
        "POST",
        SECRETS,
        415,
        "UnsupportedMediaType",
        "application/json, application/yaml",
        b"\x6b\x38\x73\x00",
        {"Content-Type": "application/vnd.kubernetes.protobuf"},
    ),
    Case(
        "only protobuf accepted",
        "GET",
        SECRETS,
        406,
        "NotAcceptable",
        "only the following media types are accepted",
        headers={"Accept": "application/vnd.kubernetes.protobuf"},
    ),
    Case(
        "unknown fieldValidation",
        "POST",
        SECRETS,
        422,
        "Invalid",
        'fieldValidation: Unsupported value: "Loose"',
        {"metadata": {"name": "x"}},
        params={"fieldValidation": "Loose"},
    ),
    Case(
        "duplicate field under Strict",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        'duplicate field "type"',
        b'{"metadata": {"name": "x"}, "type": "a", "type": "b"}',
        JSON,
        {"fieldValidation": "Strict"},
    ),
    Case(
        "unknown field under Strict",
        "POST",
        SECRETS,
        400,
        "BadRequest",
        'strict decoding error: unknown field "spec"',
        {"metadata": {"name": "x"}, "spec": {}},
        params={"fieldValidation": "Strict"},
    ),
    Case(
        "unknown dryRun",
        "POST",
        SECRETS,
        422,
        "Invalid",
        'dryRun: Unsupported value: "Some"',
        {"metadata": {"name": "x"}},
        params={"dryRun": "Some"},
    ),
    Case(
        "unknown propagationPolicy",
        "DELETE",
        f"{SECRETS}/existing",
        422,
        "Invalid",
        'propagationPolicy: Unsupported value: "Sideways"',
        {"propagationPolicy": "Sideways"},
    ),
    Case(
        "malformed DeleteOptions",
        "DELETE",
        f"{SECRETS}/existing",
        400,
        "BadRequest",
        "json parse error",
        b"{",
        JSON,
    ),
    Case(
        "gracePeriodSeconds not a number",
        "DELETE",
        f"{SECRETS}/existing",
        400,
        "BadRequest",
        "gracePeriodSeconds",
        params={"gracePeriodSeconds": "later"},
    ),
    Case(
        "gracePeriodSeconds a string in the body",
        "DELETE",
        f"{SECRETS}/existing",
        400,
        "BadRequest",
        "gracePeriodSeconds",
        {"gracePeriodSeconds": "5"},
    ),
    Case("delete of a missing object", "DELETE", f"{SECRETS}/missing", 404, "NotFound"),
    Case(
        "scale to a negative count",
        "PUT",
        f"{DEPLOYMENTS}/d/scale",
        422,
        "Invalid",
        "spec.replicas",
        {"kind": "Scale", "spec": {"replicas": -1}},
    ),
    Case(
        "binding without a target",
        "POST",
        "/api/v1/namespaces/default/pods/p/binding",
        422,
        "Invalid",
        "target.name",
        {"metadata": {"name": "p"}},
    ),
    Case("compact with GET", "GET", "/_emulator/compact", 405, "MethodNotAllowed"),
]


def send(api: httpx.Client, case: Case) -> httpx.Response:
    if isinstance(case.body, bytes):
        content = case.body
    elif case.body is None:
        content = None
    else:
        content = json.dumps(case.body).encode()
    headers = dict(case.headers)
    if content is not None and "Content-Type" not in headers:
        headers["Content-Type"] = "application/json"
    return api.request(case.method, case.path, content=content, headers=headers, params=case.params)


def assert_status(response: httpx.Response, code: int, reason: str, message: str = "") -> None:
    assert response.status_code == code, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["kind"] == "Status"
    assert body["apiVersion"] == "v1"
    assert body["status"] == "Failure"
    assert (body["code"], body["reason"]) == (code, reason)
    assert message in body["message"], body["message"]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request_gets_a_kubernetes_status(api: httpx.Client, case: Case) -> None:
    assert_status(send(api, case), case.code, case.reason, case.message)


def test_oversized_bodies_are_413(api: httpx.Client) -> None:
    big = {"metadata": {"name": "big"}, "stringData": {"k": "x" * (LIMIT + 10)}}
    response = api.post(SECRETS, json=big)
    assert_status(
        response, 413, "RequestEntityTooLarge", "Request entity too large: limit is 3145728"
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is counted while reading
        yield b'{"metadata": {"name": "big"}, "data": {"k": "'
        for _ in range(64):
            yield b"A" * 65536
        yield b'"}}'

    response = api.post(CONFIGMAPS, content=chunks(), headers=JSON)
    assert_status(response, 413, "RequestEntityTooLarge")
    patch = api.patch(f"{SECRETS}/existing", content=b" " * (LIMIT + 1), headers=MERGE)
    assert_status(patch, 413, "RequestEntityTooLarge")
    assert api.get(f"{SECRETS}/big").status_code == 404


def test_continue_token_that_decodes_to_nonsense(api: httpx.Client) -> None:
    import base64

    token = base64.urlsafe_b64encode(b'{"rv": "x", "start": 3}').decode()
    response = api.get(SECRETS, params={"limit": "1", "continue": token})
    assert_status(response, 400, "BadRequest", "continue key is not valid")


_KEYS = st.sampled_from(
    [
        "apiVersion",
        "kind",
        "metadata",
        "name",
        "namespace",
        "generateName",
        "labels",
        "annotations",
        "finalizers",
        "ownerReferences",
        "uid",
        "resourceVersion",
        "spec",
        "status",
        "data",
        "stringData",
        "type",
        "containers",
        "image",
        "selector",
        "matchLabels",
        "template",
        "replicas",
        "nodeName",
        "terminationGracePeriodSeconds",
        "involvedObject",
        "conditions",
        "containerStatuses",
        "group",
        "names",
        "plural",
        "versions",
        "scope",
        "op",
        "path",
        "value",
        "from",
        "$patch",
        "$retainKeys",
        "$setElementOrder/containers",
        "provider",
        "parameters",
        "objects",
        "immutable",
        "webhooks",
    ]
) | st.text(max_size=8)
_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.text(max_size=12)
    | (st.floats(allow_nan=False, allow_infinity=False))
)
JSON_VALUES = st.recursive(
    _SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(_KEYS, children, max_size=5),
    max_leaves=25,
)
ENDPOINTS = [
    (
        "/api/v1/namespaces/default/{}",
        ("secrets", "configmaps", "pods", "serviceaccounts", "events"),
    ),
    ("/apis/apps/v1/namespaces/default/{}", ("deployments", "replicasets", "daemonsets")),
    ("/apis/apiextensions.k8s.io/v1/{}", ("customresourcedefinitions",)),
    ("/apis/admissionregistration.k8s.io/v1/{}", ("validatingwebhookconfigurations",)),
    ("/api/v1/{}", ("namespaces", "nodes")),
    (
        f"/apis/{GROUP}/v1/namespaces/default/{{}}",
        ("secretproviderclasses", "secretproviderclasspodstatuses"),
    ),
]
COLLECTIONS = [template.format(p) for template, plurals in ENDPOINTS for p in plurals]
EXISTING = [
    f"{SECRETS}/existing",
    f"{SPC}/existing",
    f"{DEPLOYMENTS}/d",
    f"{DEPLOYMENTS}/d/status",
    f"{DEPLOYMENTS}/d/scale",
]
PATCH_TYPES = [JSON, MERGE, JSON_PATCH, STRATEGIC, APPLY]


def _assert_handled(response: httpx.Response) -> None:
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert body["kind"] == "Status"
        assert body["code"] == response.status_code


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=JSON_VALUES,
    name=st.text(max_size=6) | st.just("fuzz"),
    collection=st.sampled_from(COLLECTIONS),
)
def test_random_objects_never_break_the_server(
    api: httpx.Client, body: Any, name: str, collection: str
) -> None:
    if isinstance(body, dict) and isinstance(body.get("metadata"), dict):
        body["metadata"].setdefault("name", name)
    created = api.post(collection, json=body)
    _assert_handled(created)
    if created.status_code == 201:
        # Whatever got in must be readable, listable, patchable and deletable.
        path = f"{collection}/{created.json()['metadata']['name']}"
        assert api.get(path).status_code == 200
        assert api.get(collection, headers=TABLE).status_code == 200
        _assert_handled(api.patch(path, json=body, headers=MERGE))
        _assert_handled(api.put(path, json=body))
        _assert_handled(api.get(path, headers=TABLE))
        _assert_handled(api.delete(path))
        _assert_handled(api.delete(path, params={"gracePeriodSeconds": "0"}))


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    body=JSON_VALUES,
    path=st.sampled_from(EXISTING),
    headers=st.sampled_from(PATCH_TYPES),
)
def test_random_patches_never_break_the_server(
    api: httpx.Client, body: Any, path: str, headers: dict[str, str]
) -> None:
    _assert_handled(api.patch(path, json=body, headers=headers, params={"fieldManager": "fuzz"}))
    _assert_handled(api.put(path, json=body))


VALID: dict[str, dict[str, Any]] = {
    "/api/v1/namespaces/default/pods": {
        "metadata": {"name": "p", "labels": {"a": "b"}, "finalizers": ["example.com/f"]},
        "spec": {
            "nodeName": "node-1",
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "c", "image": "i", "env": [{"name": "E", "value": "1"}]}],
        },
        "status": {"phase": "Running", "containerStatuses": [
            {"name": "c", "ready": True, "restartCount": 1, "state": {"running": {}}}]},
    },
    DEPLOYMENTS: {
        "metadata": {"name": "dep"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "x"}}, "template": {
            "metadata": {"labels": {"app": "x"}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}},
        "status": {"readyReplicas": 1},
    },
    SECRETS: {"metadata": {"name": "sec"}, "type": "Opaque", "stringData": {"k": "v"}},
    "/api/v1/namespaces/default/events": {
        "metadata": {"name": "ev"},
        "involvedObject": {"kind": "Pod", "name": "p", "namespace": "default"},
        "reason": "R", "message": "m", "type": "Normal", "count": 1,
    },
    "/api/v1/nodes": {"metadata": {"name": "node-1", "labels": {
        "node-role.kubernetes.io/worker": ""}}, "status": {"conditions": [
            {"type": "Ready", "status": "True"}], "nodeInfo": {"kubeletVersion": "v1.31.9"}}},
    f"/apis/{GROUP}/v1/namespaces/default/secretproviderclasspodstatuses": {
        "apiVersion": f"{GROUP}/v1", "kind": "SecretProviderClassPodStatus",
        "metadata": {"name": "ps"},
        "status": {"podName": "p", "secretProviderClassName": "s", "mounted": True,
                   "objects": [{"id": "a", "version": "v1"}]},
    },
}  # fmt: skip


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, sub in value.items():
            found += _paths(sub, (*prefix, key))
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            found += _paths(sub, (*prefix, index))
    return found


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), collection=st.sampled_from(sorted(VALID)))
def test_valid_objects_with_random_values_never_break_the_server(
    api: httpx.Client, data: st.DataObject, collection: str
) -> None:
    body = json.loads(json.dumps(VALID[collection]))
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from([p for p in _paths(body) if p and p[0] != "metadata"]
                                         or [("spec",)]))  # fmt: skip
        parent: Any = body
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = data.draw(JSON_VALUES)
    created = api.post(collection, json=body)
    _assert_handled(created)
    listed = api.get(collection, headers=TABLE)
    _assert_handled(listed)
    if created.status_code == 201:
        name = created.json()["metadata"]["name"]
        path = f"{collection}/{name}"
        _assert_handled(api.get(path, headers=TABLE))
        _assert_handled(api.patch(path, json={"metadata": {"finalizers": None}}, headers=MERGE))
        _assert_handled(api.delete(path))
        _assert_handled(api.delete(path, params={"gracePeriodSeconds": "0"}))
        assert api.get(path).status_code in (200, 404)
        api.delete(path, params={"gracePeriodSeconds": "0"})


def test_the_server_still_serves_after_all_of_that(api: httpx.Client) -> None:
    assert api.get("/api/v1/namespaces/default").status_code == 200
    created = api.post(CONFIGMAPS, json={"metadata": {"name": "still-fine"}, "data": {"a": "b"}})
    assert created.status_code == 201
    assert api.get(f"{CONFIGMAPS}/still-fine").json()["data"] == {"a": "b"}
    with api.stream(
        "GET", CONFIGMAPS, params={"watch": "1", "fieldSelector": "metadata.name=still-fine"}
    ) as stream:
        first = json.loads(next(stream.iter_lines()))
        assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "still-fine")
