"""`CsmsClient` against the CSMS emulator over real HTTP (the emulator on its own thread)."""

from __future__ import annotations

import logging
import shutil
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from dew_csi.csms import (
    AuthenticationFailed,
    Credentials,
    CredentialsError,
    CsmsClient,
    CsmsClientConfig,
    CsmsError,
    CsmsUnavailable,
    InvalidRequest,
    RetryPolicy,
    SecretNotFound,
    Throttled,
    VersionNotFound,
    endpoint_for_region,
)
from dew_csi.csms.emulator import CsmsEmulatorThread, FaultRule, Limits, TemporaryCredentials

PROJECT = "0123456789abcdef0123456789abcdef"
AK = "CLIENTTESTAK00000001"
SK = "client-test-secret-key-000000000000000001"
TMP_AK = "TMPCLIENTAK000000001"
TMP_SK = "client-temporary-secret-key-00000000001"
TOKEN = "client-security-token-" + "t" * 80
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.05, deadline=5.0)


@pytest.fixture
def csms() -> Iterator[CsmsEmulatorThread]:
    temporary = TemporaryCredentials(
        TMP_AK, TMP_SK, TOKEN, expires_at=datetime.now(UTC) + timedelta(hours=1)
    )
    with CsmsEmulatorThread(
        project_id=PROJECT, ak=AK, sk=SK, temporary_credentials=[temporary]
    ) as thread:
        yield thread


def make_client(
    url: str,
    *,
    ak: str = AK,
    sk: str = SK,
    token: str | None = None,
    retry: RetryPolicy = FAST_RETRY,
    **options: Any,
) -> CsmsClient:
    config_options: dict[str, Any] = {"endpoint": url, "retry": retry}
    client_options: dict[str, Any] = {}
    for key, value in options.items():
        target = client_options if key in ("clock", "on_attempt") else config_options
        target[key] = value
    credentials = Credentials(ak=ak, sk=sk, security_token=token, project_id=PROJECT)
    return CsmsClient(credentials, CsmsClientConfig(**config_options), **client_options)


@pytest.fixture
async def client(csms: CsmsEmulatorThread) -> AsyncIterator[CsmsClient]:
    async with make_client(csms.url) as client:
        yield client


# ---- every operation ---------------------------------------------------------------------------


async def test_secret_lifecycle(client: CsmsClient, csms: CsmsEmulatorThread) -> None:
    info = await client.create_secret("app-db", '{"user":"u"}', description="database")
    assert (info.name, info.state, info.description) == ("app-db", "ENABLED", "database")
    assert info.created_at is not None
    assert abs(info.created_at - datetime.now(UTC)) < timedelta(minutes=1)

    v2 = await client.put_version("app-db", '{"user":"u2"}')
    assert (v2.version_id, v2.stages) == ("v2", ("SYSCURRENT",))

    latest = await client.get_secret_version("app-db")
    assert (latest.version_id, latest.secret_string, latest.stages) == (
        "v2",
        '{"user":"u2"}',
        ("SYSCURRENT",),
    )
    assert latest.value == b'{"user":"u2"}'
    first = await client.get_secret_version("app-db", "v1")
    assert (first.secret_string, first.stages) == ('{"user":"u"}', ("SYSPREVIOUS",))

    shown = await client.get_secret("app-db")
    assert shown.id == info.id
    versions = await client.list_versions("app-db")
    assert [(v.version_id, v.stages) for v in versions] == [
        ("v1", ("SYSPREVIOUS",)),
        ("v2", ("SYSCURRENT",)),
    ]

    await client.delete_secret("app-db")
    with pytest.raises(SecretNotFound):
        await client.get_secret("app-db")
    assert csms.emulator.calls("delete_secret", "app-db") == 1


async def test_binary_values_and_custom_stages(client: CsmsClient) -> None:
    raw = bytes(range(256))
    await client.create_secret("blob", raw)
    version = await client.get_secret_version("blob", "latest")
    assert (version.secret_string, version.secret_binary, version.value) == (None, raw, raw)

    staged = await client.put_version("blob", b"\x00new", stages=["canary"])
    assert staged.stages == ("canary",)
    # `latest` is the newest version even when SYSCURRENT did not move.
    newest = await client.get_secret_version("blob")
    assert (newest.version_id, newest.value) == ("v2", b"\x00new")


async def test_list_secrets_follows_markers(client: CsmsClient, csms: CsmsEmulatorThread) -> None:
    names = [f"s-{index:02d}" for index in range(7)]
    for name in names:
        csms.emulator.set_secret_versions(name, ["value"])
    secrets = await client.list_secrets(page_size=3)
    assert [s.name for s in secrets] == names
    assert csms.emulator.calls("list_secrets") == 3

    csms.emulator.set_secret_versions("many", [f"value {i}" for i in range(5)])
    versions = await client.list_versions("many", page_size=2)
    assert [v.version_id for v in versions] == ["v1", "v2", "v3", "v4", "v5"]
    assert csms.emulator.calls("list_secret_versions", "many") == 3


async def test_unicode_names_are_encoded_and_signed(
    client: CsmsClient, csms: CsmsEmulatorThread
) -> None:
    # Seeding bypasses CSMS's name rule, so the wire encoding of such names can be tested.
    names = ["密钥-ü", "a b+c", "tilde~and%percent"]
    for name in names:
        csms.emulator.set_secret_versions(name, [f"value of {name}"])
    for name in names:
        version = await client.get_secret_version(name, "v1")
        assert (version.name, version.secret_string) == (name, f"value of {name}")
    # Unicode markers travel in the signed query string.
    listed = await client.list_secrets(page_size=1)
    assert sorted(s.name for s in listed) == sorted(names)

    with pytest.raises(InvalidRequest) as caught:
        await client.create_secret("名字", "value")
    assert caught.value.error_code == "CSMS.0002"
    with pytest.raises(SecretNotFound):
        await client.get_secret_version("不存在", "latest")


# ---- typed errors ------------------------------------------------------------------------------


async def test_missing_secret_and_version(client: CsmsClient, csms: CsmsEmulatorThread) -> None:
    with pytest.raises(SecretNotFound) as missing_secret:
        await client.get_secret_version("nope", "latest")
    error = missing_secret.value
    assert (error.status, error.error_code) == (400, "CSMS.0106")
    assert error.request_id
    assert "'nope'" in str(error)

    csms.emulator.set_secret_versions("app", ["one"])
    with pytest.raises(VersionNotFound) as missing_version:
        await client.get_secret_version("app", "v7")
    assert missing_version.value.error_code == "CSMS.0005"
    assert "'v7'" in str(missing_version.value)
    # Not-found answers are final: no retries.
    assert csms.emulator.calls("show_secret_version") == 2


async def test_wrong_keys_fail_authentication_without_retry(csms: CsmsEmulatorThread) -> None:
    async with make_client(csms.url, sk="not-the-secret-key") as wrong_sk:
        with pytest.raises(AuthenticationFailed) as caught:
            await wrong_sk.get_secret_version("app")
    error = caught.value
    assert (error.status, error.error_code) == (401, "APIG.0301")
    assert AK in str(error)
    assert "verify aksk signature fail" in str(error)
    async with make_client(csms.url, ak="UNKNOWNAK") as wrong_ak:
        with pytest.raises(AuthenticationFailed, match="ak not exist"):
            await wrong_ak.get_secret_version("app")
    assert csms.emulator.calls("show_secret_version") == 2


async def test_clock_skew_is_reported(csms: CsmsEmulatorThread) -> None:
    def slow_clock() -> datetime:
        return datetime.now(UTC) - timedelta(minutes=20)

    async with make_client(csms.url, clock=slow_clock) as client:
        with pytest.raises(AuthenticationFailed, match="15 minutes"):
            await client.get_secret_version("app")


async def test_security_token_flows(csms: CsmsEmulatorThread) -> None:
    csms.emulator.set_secret_versions("app", ["value"])
    async with make_client(csms.url, ak=TMP_AK, sk=TMP_SK, token=TOKEN) as temporary:
        assert (await temporary.get_secret_version("app")).secret_string == "value"
    async with make_client(csms.url, ak=TMP_AK, sk=TMP_SK) as no_token:
        with pytest.raises(AuthenticationFailed, match="X-Security-Token"):
            await no_token.get_secret_version("app")
    async with make_client(csms.url, ak=TMP_AK, sk=TMP_SK, token="forged") as forged:
        with pytest.raises(AuthenticationFailed):
            await forged.get_secret_version("app")
    async with make_client(csms.url, token=TOKEN) as permanent_with_token:
        with pytest.raises(AuthenticationFailed):
            await permanent_with_token.get_secret_version("app")


async def test_invalid_requests(client: CsmsClient, csms: CsmsEmulatorThread) -> None:
    with pytest.raises(InvalidRequest) as too_big:
        await client.create_secret("big", "x" * 32769)
    assert too_big.value.status == 400
    with pytest.raises(InvalidRequest):
        await client.create_secret("bad/name", "value")
    csms.emulator.set_secret_versions("app", ["one"])
    with pytest.raises(InvalidRequest):
        await client.put_version("app", "two", stages=["not a stage!"])


async def test_missing_project_id_is_a_credentials_error(csms: CsmsEmulatorThread) -> None:
    credentials = Credentials(ak=AK, sk=SK)
    async with CsmsClient(credentials, CsmsClientConfig(endpoint=csms.url)) as client:
        with pytest.raises(CredentialsError, match="project id"):
            await client.get_secret_version("app")
    # The configured project id is used when the credentials carry none.
    csms.emulator.set_secret_versions("app", ["value"])
    config = CsmsClientConfig(endpoint=csms.url, project_id=PROJECT)
    async with CsmsClient(credentials, config) as client:
        assert (await client.get_secret_version("app")).secret_string == "value"


# ---- retries -----------------------------------------------------------------------------------


async def test_429_then_success(client: CsmsClient, csms: CsmsEmulatorThread) -> None:
    csms.emulator.set_secret_versions("app", ["value"])
    csms.emulator.set_fault(FaultRule(fail_next=2, error_status=429), secret="app")
    version = await client.get_secret_version("app")
    assert version.secret_string == "value"
    assert csms.emulator.calls("show_secret_version", "app") == 3
    assert csms.emulator.request_counts()["by_status"] == {"429": 2, "200": 1}


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_5xx_then_success(client: CsmsClient, csms: CsmsEmulatorThread, status: int) -> None:
    csms.emulator.set_secret_versions("app", ["value"])
    csms.emulator.set_fault(FaultRule(fail_next=1, error_status=status))
    assert (await client.get_secret("app")).name == "app"
    assert csms.emulator.calls("show_secret", "app") == 2


async def test_deterministic_error_rate(client: CsmsClient, csms: CsmsEmulatorThread) -> None:
    csms.emulator.set_secret_versions("app", ["value"])
    csms.emulator.set_fault(FaultRule(error_rate=0.5, deterministic=True, error_status=503))
    for _ in range(3):
        await client.get_secret_version("app")
    # Every other request fails, starting with the first: each read takes two calls.
    assert csms.emulator.calls("show_secret_version", "app") == 6


async def test_outage_gives_up_after_bounded_attempts(csms: CsmsEmulatorThread) -> None:
    csms.emulator.set_fault(FaultRule(outage=True))
    policy = RetryPolicy(max_attempts=3, base_delay=0.05, max_delay=0.1, deadline=10)
    async with make_client(csms.url, retry=policy) as client:
        started = time.monotonic()
        with pytest.raises(CsmsUnavailable) as caught:
            await client.get_secret_version("app")
        elapsed = time.monotonic() - started
    assert csms.emulator.calls("show_secret_version", "app") == 3
    assert elapsed < 2.0
    assert caught.value.status == 503
    assert "3 attempts" in str(caught.value)


async def test_dropped_connections_are_unavailable(csms: CsmsEmulatorThread) -> None:
    csms.emulator.set_fault(FaultRule(outage=True, outage_mode="reset"))
    async with make_client(csms.url) as client:
        with pytest.raises(CsmsUnavailable) as caught:
            await client.get_secret_version("app")
    assert caught.value.status is None
    assert csms.emulator.calls("show_secret_version", "app") == FAST_RETRY.max_attempts


async def test_retry_deadline_bounds_total_time(csms: CsmsEmulatorThread) -> None:
    csms.emulator.set_fault(FaultRule(outage=True))
    policy = RetryPolicy(max_attempts=50, base_delay=0.2, max_delay=0.2, deadline=0.5)
    async with make_client(csms.url, retry=policy) as client:
        started = time.monotonic()
        with pytest.raises(CsmsUnavailable):
            await client.get_secret_version("app")
        assert time.monotonic() - started < 1.0
    assert csms.emulator.calls("show_secret_version", "app") < 50


async def test_persistent_throttling_raises_throttled(csms: CsmsEmulatorThread) -> None:
    csms.emulator.set_fault(FaultRule(error_rate=1.0, error_status=429))
    async with make_client(csms.url) as client:
        with pytest.raises(Throttled) as caught:
            await client.get_secret_version("app")
    assert (caught.value.status, caught.value.error_code) == (429, "APIG.0308")
    assert csms.emulator.calls("show_secret_version") == FAST_RETRY.max_attempts


async def test_read_timeout_is_retried_then_unavailable(csms: CsmsEmulatorThread) -> None:
    csms.emulator.set_secret_versions("app", ["value"])
    csms.emulator.set_fault(FaultRule(latency=0.5), secret="app")
    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.01)
    async with make_client(csms.url, retry=policy, read_timeout=0.1) as client:
        with pytest.raises(CsmsUnavailable, match="ReadTimeout"):
            await client.get_secret_version("app")
    assert csms.emulator.calls("show_secret_version", "app") == 2


async def test_creates_are_not_retried_after_5xx_but_are_after_429(
    client: CsmsClient, csms: CsmsEmulatorThread
) -> None:
    csms.emulator.set_secret_versions("app", ["one"])
    csms.emulator.set_fault(FaultRule(fail_next=1, error_status=503), secret="app")
    with pytest.raises(CsmsUnavailable):
        await client.put_version("app", "two")
    assert csms.emulator.calls("create_secret_version", "app") == 1

    csms.emulator.set_fault(FaultRule(fail_next=1, error_status=429), secret="app")
    assert (await client.put_version("app", "two")).version_id == "v2"
    assert csms.emulator.calls("create_secret_version", "app") == 3


class LoseFirstDeleteAnswer(httpx.AsyncBaseTransport):
    """Send every request to the real server, but lose the answer to the first DELETE, as when
    a response times out after the server acted."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.lost = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        if request.method == "DELETE" and not self.lost:
            self.lost += 1
            await response.aclose()
            raise httpx.ReadTimeout("answer lost", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_delete_whose_answer_was_lost_counts_as_done(csms: CsmsEmulatorThread) -> None:
    csms.emulator.set_secret_versions("app", ["value"])
    transport = LoseFirstDeleteAnswer()
    credentials = Credentials(ak=AK, sk=SK, project_id=PROJECT)
    config = CsmsClientConfig(endpoint=csms.url, retry=FAST_RETRY)
    async with CsmsClient(credentials, config, transport=transport) as client:
        await client.delete_secret("app")
        with pytest.raises(SecretNotFound):
            await client.delete_secret("app")  # a first-attempt not-found is still an error
    assert transport.lost == 1
    assert csms.emulator.calls("delete_secret", "app") == 3


async def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with make_client(f"http://127.0.0.1:{port}") as client:
        with pytest.raises(CsmsUnavailable, match="cannot reach CSMS"):
            await client.get_secret_version("app")


async def test_attempt_observer_sees_each_attempt(csms: CsmsEmulatorThread) -> None:
    seen: list[tuple[str, str]] = []
    csms.emulator.set_secret_versions("app", ["value"])
    csms.emulator.set_fault(FaultRule(fail_next=1, error_status=429), secret="app")
    observer = lambda operation, outcome, seconds: seen.append((operation, outcome))  # noqa: E731
    async with make_client(csms.url, on_attempt=observer) as client:
        await client.get_secret_version("app")
        with pytest.raises(SecretNotFound):
            await client.get_secret_version("missing")
    assert seen == [
        ("show_secret_version", "throttled"),
        ("show_secret_version", "success"),
        ("show_secret_version", "not_found"),
    ]


# ---- nothing sensitive leaks -------------------------------------------------------------------


async def test_values_keys_and_tokens_never_leak(
    csms: CsmsEmulatorThread, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    values = ["s3cr3t-VALUE-one", "s3cr3t-VALUE-two", "s3cr3t-VALUE-three"]
    sensitive = [*values, SK, TMP_SK, TOKEN]
    errors: list[CsmsError] = []
    outputs: list[str] = []

    async with make_client(csms.url) as client:
        await client.create_secret("app", values[0])
        await client.put_version("app", values[1])
        version = await client.get_secret_version("app")
        outputs += [repr(version), str(version)]
        outputs += [repr(v) for v in await client.list_versions("app")]
        # A value that is refused: the error must not quote it.
        for call in (
            client.create_secret("app", values[2]),
            client.create_secret("too-big", values[2] * 3000),
            client.get_secret_version("app", "v9"),
        ):
            try:
                await call
            except CsmsError as exc:
                errors.append(exc)
        csms.emulator.set_fault(FaultRule(error_rate=1.0, error_status=503))
        try:
            await client.get_secret_version("app")
        except CsmsError as exc:
            errors.append(exc)
        csms.emulator.clear_faults()
    for kwargs in ({"sk": "wrong-" + SK}, {"ak": TMP_AK, "sk": TMP_SK, "token": TOKEN + "x"}):
        async with make_client(csms.url, **kwargs) as bad:
            try:
                await bad.get_secret_version("app")
            except CsmsError as exc:
                errors.append(exc)

    credentials = Credentials(ak=TMP_AK, sk=TMP_SK, security_token=TOKEN, project_id=PROJECT)
    outputs += [repr(credentials), str(credentials), credentials.identity]
    assert len(errors) == 6
    outputs += [str(e) for e in errors] + [repr(e) for e in errors]
    texts = [caplog.text, *outputs]
    for secret in sensitive:
        for text in texts:
            assert secret not in text
    assert "s3cr3t" not in caplog.text


# ---- configuration -----------------------------------------------------------------------------


def test_endpoint_from_region_or_explicit() -> None:
    assert endpoint_for_region("cn-north-4") == "https://kms.cn-north-4.myhuaweicloud.com"
    assert (
        CsmsClientConfig(region="ap-southeast-1").resolved_endpoint()
        == "https://kms.ap-southeast-1.myhuaweicloud.com"
    )
    explicit = CsmsClientConfig(region="cn-north-4", endpoint="https://vpcep.example:8443/")
    assert explicit.resolved_endpoint() == "https://vpcep.example:8443"
    for bad in ({}, {"endpoint": "kms.example"}, {"endpoint": "https://h/path"}):
        with pytest.raises(ValueError, match=r"region|endpoint"):
            CsmsClientConfig(**bad).resolved_endpoint()
    with pytest.raises(ValueError, match="region"):
        endpoint_for_region("evil.example.com/")
    with pytest.raises(ValueError, match="CA bundle"):
        make_client("https://h", ca_bundle="/nonexistent/ca.pem")


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=csms-emulator",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_tls_verification_and_custom_ca(tls_files: tuple[Path, Path]) -> None:
    cert, key = tls_files
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    with CsmsEmulatorThread(
        project_id=PROJECT, ak=AK, sk=SK, ssl_context=context, limits=Limits()
    ) as tls:
        assert tls.url.startswith("https://")
        tls.emulator.set_secret_versions("app", ["over tls"])
        async with make_client(tls.url, ca_bundle=str(cert)) as trusting:
            assert (await trusting.get_secret_version("app")).secret_string == "over tls"
        policy = RetryPolicy(max_attempts=1)
        async with make_client(tls.url, retry=policy) as default_trust:
            with pytest.raises(CsmsUnavailable):
                await default_trust.get_secret_version("app")
        async with make_client(tls.url, retry=policy, verify_tls=False) as insecure:
            assert (await insecure.get_secret_version("app")).secret_string == "over tls"


async def test_per_call_credentials_override_the_provider(csms: CsmsEmulatorThread) -> None:
    csms.emulator.set_secret_versions("app", ["value"])
    volume = Credentials(ak=TMP_AK, sk=TMP_SK, security_token=TOKEN, project_id=PROJECT)
    async with make_client(csms.url, sk="the client's own key is wrong") as client:
        with pytest.raises(AuthenticationFailed):
            await client.get_secret_version("app")
        version = await client.get_secret_version("app", credentials=volume)
        assert version.secret_string == "value"
        assert [v.version_id for v in await client.list_versions("app", credentials=volume)] == [
            "v1"
        ]
        assert (await client.get_secret("app", credentials=volume)).name == "app"
