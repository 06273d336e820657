"""Our SDK-HMAC-SHA256 signer against the official SDK's `Signer`, byte for byte.

The SDK is a test dependency only. Importing its credentials module writes
`~/.huaweicloud/application_id`, so it is imported with HOME pointed at a temporary directory.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dew_csi.csms import signer


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp_path_factory.mktemp("sdk-home")))
        signer_module = importlib.import_module("huaweicloudsdkcore.signer.signer")
        request_module = importlib.import_module("huaweicloudsdkcore.sdk_request")
        credentials_module = importlib.import_module("huaweicloudsdkcore.auth.credentials")

    class CapturingSigner(signer_module.Signer):  # type: ignore[misc,name-defined]
        """The SDK signer, keeping the canonical request it built."""

        captured: str = ""

        def _process_canonical_request(self, request: Any, signed_headers: Any) -> str:
            text: str = super()._process_canonical_request(request, signed_headers)
            self.captured = text
            return text

    return SimpleNamespace(
        Signer=CapturingSigner,
        SdkRequest=request_module.SdkRequest,
        BasicCredentials=credentials_module.BasicCredentials,
    )


@dataclass
class Case:
    method: str
    schema: str
    host: str
    segments: list[str]
    query: list[tuple[str, str]]
    headers: dict[str, str]
    body: bytes
    ak: str
    sk: str
    date: datetime

    @property
    def resource_path(self) -> str:
        # What the SDK does with path parameters: quote(value, safe='').
        return "/" + "/".join(quote(segment, safe="") for segment in self.segments)


def sdk_sign(sdk: SimpleNamespace, case: Case) -> tuple[Any, str]:
    request = sdk.SdkRequest(
        method=case.method,
        schema=case.schema,
        host=case.host,
        resource_path=case.resource_path,
        query_params=list(case.query),
        header_params=dict(case.headers) | {"X-Sdk-Date": signer.format_sdk_date(case.date)},
        body=case.body,
    )
    sdk_signer = sdk.Signer(sdk.BasicCredentials(case.ak, case.sk))
    sdk_signer.sign(request)
    return request, sdk_signer.captured


def our_sign(case: Case) -> signer.SignedRequest:
    return signer.sign_request(
        method=case.method,
        host=case.host,
        path=case.resource_path,
        query=case.query,
        headers=case.headers,
        body=case.body,
        access_key=case.ak,
        secret_key=case.sk,
        now=case.date,
    )


# ---- generated requests ------------------------------------------------------------------------

any_text = st.text(max_size=12)
token_chars = st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
header_names = st.text(token_chars, min_size=1, max_size=12).filter(
    lambda name: (
        name.lower()
        not in {"host", "x-sdk-date", "authorization", "content-type", "x-sdk-content-sha256"}
    )
)
header_values = st.text(
    st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\u2028\u2029\x85"),
    max_size=16,
)
printable = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=40)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    keys = draw(st.lists(any_text, min_size=1, max_size=3))
    query = draw(st.lists(st.tuples(st.sampled_from(keys), any_text), max_size=6))
    headers: dict[str, str] = {
        "Content-Type": draw(
            st.sampled_from(
                [
                    "application/json",
                    "application/json;charset=utf-8",
                    "application/bson",
                    "application/octet-stream",
                    "text/plain; charset=utf-8",
                ]
            )
        ),
        "X-Project-Id": draw(st.text("0123456789abcdef", min_size=32, max_size=32)),
    }
    if draw(st.booleans()):
        headers["X-Security-Token"] = draw(printable)
    if draw(st.booleans()):
        headers["User-Agent"] = draw(header_values)
    taken = {name.lower() for name in headers}
    for name, value in draw(st.dictionaries(header_names, header_values, max_size=3)).items():
        if name.lower() not in taken:
            taken.add(name.lower())
            headers[name] = value
    body_kind = draw(st.sampled_from(["empty", "json", "bytes"]))
    if body_kind == "json":
        body = json.dumps({"name": draw(any_text), "secret_string": draw(any_text)}).encode()
    elif body_kind == "bytes":
        body = draw(st.binary(min_size=1, max_size=64))
    else:
        body = b""
    return Case(
        method=draw(st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD"])),
        schema=draw(st.sampled_from(["https", "http"])),
        host=draw(
            st.sampled_from(
                ["kms.cn-north-4.myhuaweicloud.com", "127.0.0.1:18090", "[::1]:8443", "h"]
            )
        ),
        segments=["v1", *draw(st.lists(st.text(max_size=10), min_size=1, max_size=5))],
        query=query,
        headers=headers,
        body=body,
        # Real AKs are upper-case alphanumerics; `,` or `=` would be ambiguous in the header.
        ak=draw(st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", min_size=1, max_size=20)),
        sk=draw(printable),
        date=draw(
            st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)).map(
                lambda moment: moment.replace(microsecond=0, tzinfo=UTC)
            )
        ),
    )


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_signature_and_canonical_request_match_the_sdk(sdk: SimpleNamespace, case: Case) -> None:
    sdk_request, sdk_canonical = sdk_sign(sdk, case)
    ours = our_sign(case)

    assert ours.canonical_request == sdk_canonical
    assert ours.canonical_request.encode() == sdk_canonical.encode()
    assert ours.headers["Authorization"] == sdk_request.header_params["Authorization"]
    # The SDK sends the canonical query string on the wire; so do we.
    assert ours.query_string == sdk_request.uri.partition("?")[2]
    # Same set of headers added (X-Sdk-Content-Sha256 for non-JSON bodies, Host, X-Sdk-Date).
    assert {name.lower() for name in ours.headers} == {
        name.lower() for name in sdk_request.header_params
    }


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases())
def test_verify_accepts_what_the_sdk_signed_and_rejects_tampering(
    sdk: SimpleNamespace, case: Case
) -> None:
    sdk_request, _ = sdk_sign(sdk, case)
    # The SDK hands header values to `requests` as latin-1 views of UTF-8; a server decodes
    # the bytes as UTF-8 again.
    received = {
        name: value.encode("iso-8859-1").decode("utf-8")
        for name, value in sdk_request.header_params.items()
    }
    authorization = signer.parse_authorization(received["Authorization"])
    raw_query = sdk_request.uri.partition("?")[2]

    def verify(**changes: Any) -> bool:
        arguments: dict[str, Any] = {
            "method": case.method,
            "raw_path": case.resource_path,
            "raw_query": raw_query,
            "headers": received,
            "body": case.body,
            "authorization": authorization,
            "secret_key": case.sk,
        }
        arguments.update(changes)
        return signer.verify_signature(**arguments)

    assert authorization.access_key == case.ak
    assert verify()
    assert not verify(secret_key=case.sk + "x")
    assert not verify(method="OPTIONS")
    assert not verify(raw_path=case.resource_path + "/extra")
    assert not verify(raw_query=raw_query + "&injected=1")
    assert not verify(headers=received | {"X-Project-Id": "f" * 32 + "0"})
    if signer.payload_hash(received, case.body) != signer.UNSIGNED_PAYLOAD:
        assert not verify(body=case.body + b"!")


def test_known_answer_from_the_reference_capture() -> None:
    """The GET captured from the real SDK in csms-api.md §5 (fake keys), signature included."""
    user_agent = (
        "huaweicloud-usdk-python/3.0; os/Linux##1_SMP_PREEMPT_DYNAMIC_@0#x86_64 "
        "python/3.11.7 impl/CPython; app/d4a2116e-171e-44c7-9c93-0392a5bb0ca7"
    )
    signed = signer.sign_request(
        method="GET",
        host="127.0.0.1:18090",
        path="/v1/0123456789abcdef0123456789abcdef/secrets/app-db/versions/latest",
        query=[],
        headers={
            "User-Agent": user_agent,
            "Content-Type": "application/json",
            "X-Project-Id": "0123456789abcdef0123456789abcdef",
        },
        body=b"",
        access_key="FAKEAK1234567890",
        secret_key="FAKESKabcdefghijklmnopqrstuvwxyz",
        now=datetime(2026, 11, 22, 16, 50, tzinfo=UTC),
    )
    assert signed.headers["X-Sdk-Date"] == "20261122T165000Z"
    assert signed.headers["Host"] == "127.0.0.1:18090"
    assert signed.headers["Authorization"] == (
        "SDK-HMAC-SHA256 Access=FAKEAK1234567890, "
        "SignedHeaders=content-type;host;user-agent;x-project-id;x-sdk-date, "
        "Signature=7f347bfec0c7c088e0a39cf88f6427a7f54b89f6bbf6ed7bb4735bc4565d21e8"
    )
    string_to_sign = signer.string_to_sign(signed.canonical_request, "20261122T165000Z")
    assert string_to_sign.endswith(
        "7a8f0918776d126513fa1c77abf778dd94920bfe22ccaa2596582fb38b0b87ae"
    )


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/p/secrets", "/v1/p/secrets/"),
        ("/v1/p/secrets/", "/v1/p/secrets/"),
        ("/v1/p/secrets/a%20b", "/v1/p/secrets/a%20b/"),
        ("/v1/p/secrets/a%2Fb", "/v1/p/secrets/a/b/"),
        ("/v1/p/secrets/%E5%AF%86%E9%92%A5~x", "/v1/p/secrets/%E5%AF%86%E9%92%A5~x/"),
    ],
)
def test_canonical_uri(path: str, expected: str) -> None:
    assert signer.canonical_uri(path) == expected


def test_canonical_query_sorts_raw_pairs_keeps_repeats_and_empties() -> None:
    pairs = [("b", "2"), ("a", ""), ("b", "1"), ("é", "x y"), ("z", "+")]
    assert signer.canonical_query(pairs) == "a=&b=1&b=2&z=%2B&%C3%A9=x%20y"
    assert sorted(signer.parse_query("a=&b=1&b=2&z=%2B&%C3%A9=x%20y&flag")) == sorted(
        [*pairs, ("flag", "")]
    )


def test_header_names_with_underscores_are_not_signed() -> None:
    signed = signer.sign_request(
        method="GET",
        host="h",
        path="/",
        query=[],
        headers={"Content-Type": "application/json", "X_Custom": "1", "X-Other": "2"},
        body=b"",
        access_key="ak",
        secret_key="sk",
        now=datetime(2030, 1, 1, tzinfo=UTC),
    )
    assert "SignedHeaders=content-type;host;x-other;x-sdk-date," in signed.headers["Authorization"]


@pytest.mark.parametrize(
    "value",
    [
        "",
        "SDK-HMAC-SHA256",
        "SDK-HMAC-SHA256 Access=ak",
        "SDK-HMAC-SHA256 Access=ak, SignedHeaders=host",
        "SDK-HMAC-SHA256 Access=, SignedHeaders=host, Signature=00",
        "SDK-HMAC-SHA256 garbage, SignedHeaders=host, Signature=00",
    ],
)
def test_malformed_authorization_is_refused(value: str) -> None:
    with pytest.raises(signer.MalformedAuthorization):
        signer.parse_authorization(value)


def test_signing_without_keys_is_refused() -> None:
    with pytest.raises(ValueError, match="secret key"):
        signer.sign_request(
            method="GET",
            host="h",
            path="/",
            query=[],
            headers={},
            body=b"",
            access_key="ak",
            secret_key="",
        )


def test_sdk_date_round_trip() -> None:
    moment = datetime(2026, 11, 22, 16, 50, 7, tzinfo=UTC)
    assert signer.parse_sdk_date(signer.format_sdk_date(moment)) == moment
    with pytest.raises(ValueError, match="does not match format"):
        signer.parse_sdk_date("2026-11-22T16:50:07Z")
