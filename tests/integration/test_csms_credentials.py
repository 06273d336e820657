"""Credential sources: environment, files, ECS metadata (against the metadata emulator, with
rotation and refresh before expiry), nodePublishSecretRef, and the chain."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from dew_csi.csms import (
    AuthenticationFailed,
    Credentials,
    CredentialsChain,
    CredentialsError,
    CredentialsUnavailable,
    CsmsClient,
    CsmsClientConfig,
    EnvironmentCredentialsProvider,
    FileCredentialsProvider,
    MetadataCredentialsProvider,
    RetryPolicy,
    StaticCredentialsProvider,
    credentials_from_node_publish_secrets,
    default_chain,
)
from dew_csi.csms.emulator import CsmsEmulatorThread
from dew_csi.csms.metadata_emulator import MetadataEmulatorThread

PROJECT = "0123456789abcdef0123456789abcdef"
SK_VALUE = "file-or-env-secret-key-0000000000000001"
TOKEN_VALUE = "file-or-env-security-token-000000000001"


class FakeClock:
    """One clock for the metadata emulator, the CSMS emulator and the code under test."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


# ---- Credentials value -------------------------------------------------------------------------


def test_credentials_hide_keys_and_give_a_safe_identity() -> None:
    credentials = Credentials(
        ak="AKVALUE", sk=SK_VALUE, security_token=TOKEN_VALUE, project_id=PROJECT
    )
    for text in (repr(credentials), str(credentials), credentials.identity):
        assert SK_VALUE not in text
        assert TOKEN_VALUE not in text
    assert credentials.identity.startswith(f"AKVALUE/{PROJECT}/")
    assert credentials.is_temporary
    same = Credentials(ak="AKVALUE", sk=SK_VALUE, security_token=TOKEN_VALUE, project_id=PROJECT)
    assert same.identity == credentials.identity
    rotated = Credentials(ak="AKVALUE", sk=SK_VALUE + "2", project_id=PROJECT)
    assert rotated.identity != credentials.identity
    with pytest.raises(CredentialsError, match="both an access key and a secret key"):
        Credentials(ak="", sk=SK_VALUE)


# ---- environment -------------------------------------------------------------------------------


async def test_environment_source() -> None:
    provider = EnvironmentCredentialsProvider(
        {
            "HUAWEICLOUD_SDK_AK": "ENVAK",
            "HUAWEICLOUD_SDK_SK": f" {SK_VALUE}\n",
            "HUAWEICLOUD_SDK_SECURITY_TOKEN": TOKEN_VALUE,
            "HUAWEICLOUD_SDK_PROJECT_ID": PROJECT,
        }
    )
    credentials = await provider.get()
    assert (credentials.ak, credentials.sk, credentials.security_token) == (
        "ENVAK",
        SK_VALUE,
        TOKEN_VALUE,
    )
    assert (credentials.project_id, credentials.source) == (PROJECT, "environment")


async def test_environment_source_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", "OSENVAK")
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", SK_VALUE)
    monkeypatch.delenv("HUAWEICLOUD_SDK_SECURITY_TOKEN", raising=False)
    credentials = await EnvironmentCredentialsProvider().get()
    assert (credentials.ak, credentials.security_token) == ("OSENVAK", None)


async def test_environment_source_errors() -> None:
    with pytest.raises(CredentialsUnavailable, match="neither HUAWEICLOUD_SDK_AK"):
        await EnvironmentCredentialsProvider({"HUAWEICLOUD_SDK_AK": "  "}).get()
    with pytest.raises(CredentialsError, match="HUAWEICLOUD_SDK_SK is missing") as caught:
        await EnvironmentCredentialsProvider({"HUAWEICLOUD_SDK_AK": "ENVAK"}).get()
    assert not isinstance(caught.value, CredentialsUnavailable)
    with pytest.raises(CredentialsError, match="HUAWEICLOUD_SDK_AK is missing") as caught:
        await EnvironmentCredentialsProvider({"HUAWEICLOUD_SDK_SK": SK_VALUE}).get()
    assert SK_VALUE not in str(caught.value)


# ---- files -------------------------------------------------------------------------------------


def write_files(directory: Path, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / name).write_text(content)
    return directory


async def test_file_source_reads_on_every_call(tmp_path: Path) -> None:
    directory = write_files(
        tmp_path / "creds",
        ak="FILEAK\n",
        sk=SK_VALUE + "\n",
        security_token=TOKEN_VALUE,
        project_id=PROJECT + "\n",
    )
    provider = FileCredentialsProvider(directory)
    first = await provider.get()
    assert (first.ak, first.sk, first.security_token, first.project_id) == (
        "FILEAK",
        SK_VALUE,
        TOKEN_VALUE,
        PROJECT,
    )
    assert first.source == f"files:{directory}"
    # A Kubernetes Secret update rewrites the files; the next call sees it.
    write_files(directory, sk="rotated-secret-key")
    (directory / "security_token").unlink()
    second = await provider.get()
    assert (second.sk, second.security_token) == ("rotated-secret-key", None)


async def test_file_source_errors(tmp_path: Path) -> None:
    with pytest.raises(CredentialsUnavailable, match="does not exist"):
        await FileCredentialsProvider(tmp_path / "absent").get()
    with pytest.raises(CredentialsUnavailable):
        await FileCredentialsProvider(write_files(tmp_path / "empty")).get()
    only_sk = write_files(tmp_path / "only-sk", sk=SK_VALUE)
    with pytest.raises(CredentialsError, match="file 'ak' is missing") as caught:
        await FileCredentialsProvider(only_sk).get()
    assert SK_VALUE not in str(caught.value)
    broken = write_files(tmp_path / "broken", ak="FILEAK")
    (broken / "sk").mkdir()
    with pytest.raises(CredentialsError, match=r"cannot read credential file .*sk"):
        await FileCredentialsProvider(broken).get()


# ---- nodePublishSecretRef ----------------------------------------------------------------------


def test_node_publish_secrets() -> None:
    credentials = credentials_from_node_publish_secrets(
        {
            "ak": "VOLAK",
            "sk": SK_VALUE,
            "security_token": TOKEN_VALUE,
            "project_id": PROJECT,
            "unrelated": "ignored",
        }
    )
    assert (credentials.ak, credentials.sk, credentials.security_token) == (
        "VOLAK",
        SK_VALUE,
        TOKEN_VALUE,
    )
    assert (credentials.project_id, credentials.source) == (PROJECT, "nodePublishSecretRef")
    minimal = credentials_from_node_publish_secrets({"ak": "VOLAK", "sk": SK_VALUE})
    assert (minimal.security_token, minimal.project_id) == (None, None)


@pytest.mark.parametrize(
    ("secrets", "missing"),
    [
        ({"ak": "VOLAK"}, "'sk'"),
        ({"sk": SK_VALUE, "security_token": TOKEN_VALUE}, "'ak'"),
        ({"ak": "VOLAK", "sk": "   "}, "'sk'"),
        ({}, "'ak' and 'sk'"),
        ({"AK": "VOLAK", "SK": SK_VALUE}, "'ak' and 'sk'"),
    ],
)
def test_node_publish_secrets_errors_name_keys_not_values(
    secrets: dict[str, str], missing: str
) -> None:
    with pytest.raises(CredentialsError) as caught:
        credentials_from_node_publish_secrets(secrets, source="nodePublishSecretRef default/dew")
    message = str(caught.value)
    assert f"missing key {missing}" in message
    assert "nodePublishSecretRef default/dew" in message
    for value in secrets.values():
        if value.strip() and value not in ("VOLAK",):
            assert value not in message


# ---- ECS metadata ------------------------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def csms(clock: FakeClock) -> Iterator[CsmsEmulatorThread]:
    with CsmsEmulatorThread(project_id=PROJECT, ak="PERMANENTAK", sk="permanent", clock=clock) as t:
        t.emulator.set_secret_versions("app", ["from csms"])
        yield t


@pytest.fixture
def metadata(clock: FakeClock, csms: CsmsEmulatorThread) -> Iterator[MetadataEmulatorThread]:
    with MetadataEmulatorThread(
        project_id=PROJECT,
        credential_lifetime=timedelta(minutes=60),
        rotate_before_expiry=timedelta(minutes=20),
        on_issue=csms.emulator.add_temporary_credentials,
        clock=clock,
    ) as thread:
        yield thread


@pytest.fixture
async def provider(
    clock: FakeClock, metadata: MetadataEmulatorThread
) -> AsyncIterator[MetadataCredentialsProvider]:
    provider = MetadataCredentialsProvider(
        base_url=metadata.url, refresh_margin=timedelta(minutes=10), clock=clock
    )
    yield provider
    await provider.aclose()


async def test_metadata_credentials_refresh_before_expiry(
    clock: FakeClock,
    csms: CsmsEmulatorThread,
    metadata: MetadataEmulatorThread,
    provider: MetadataCredentialsProvider,
) -> None:
    requests = metadata.emulator.requests
    first = await provider.get()
    assert first.is_temporary
    assert first.project_id == PROJECT  # from meta_data.json
    assert first.expires_at == clock.now + timedelta(minutes=60)
    assert first.ak == metadata.emulator.issued[0].ak
    assert (requests["token"], requests["securitykey"]) == (1, 1)

    config = CsmsClientConfig(endpoint=csms.url, retry=RetryPolicy(max_attempts=1))
    async with CsmsClient(provider, config, clock=clock) as client:
        assert (await client.get_secret_version("app")).secret_string == "from csms"

        clock.advance(minutes=45)  # 15 minutes left: outside the 10-minute margin
        assert await provider.get() is first
        assert requests["securitykey"] == 1

        clock.advance(minutes=7)  # 8 minutes left: refreshed before it expires
        second = await provider.get()
        assert second.ak != first.ak
        assert second.expires_at == clock.now + timedelta(minutes=60)
        assert requests["securitykey"] == 2
        assert provider.refresh_count == 2

        clock.advance(minutes=10)  # the first credential has expired now
        assert (await client.get_secret_version("app")).secret_string == "from csms"
        # The CSMS emulator itself refuses the expired one.
        async with CsmsClient(first, config, clock=clock) as stale:
            with pytest.raises(AuthenticationFailed, match="expired"):
                await stale.get_secret_version("app")
    assert csms.emulator.calls("show_secret_version", "app") == 3


async def test_metadata_is_not_asked_again_and_again_when_not_rotated(
    clock: FakeClock, metadata: MetadataEmulatorThread
) -> None:
    provider = MetadataCredentialsProvider(
        base_url=metadata.url,
        refresh_margin=timedelta(minutes=30),  # wider than the service's 20-minute rotation
        min_refresh_interval=timedelta(seconds=60),
        clock=clock,
    )
    try:
        first = await provider.get()
        clock.advance(minutes=35)  # 25 minutes left: we want a new one, the service has none
        assert (await provider.get()).ak == first.ak
        assert metadata.emulator.requests["securitykey"] == 2
        clock.advance(seconds=30)
        await provider.get()
        assert metadata.emulator.requests["securitykey"] == 2
        clock.advance(minutes=6)  # 19 minutes left: the service rotates
        assert (await provider.get()).ak != first.ak
        assert metadata.emulator.requests["securitykey"] == 3
    finally:
        await provider.aclose()


async def test_metadata_session_token_is_renewed(
    clock: FakeClock, metadata: MetadataEmulatorThread, provider: MetadataCredentialsProvider
) -> None:
    await provider.get()
    clock.advance(hours=7)  # the 6-hour session token and the credential have both expired
    await provider.get()
    assert metadata.emulator.requests["token"] == 2
    assert metadata.emulator.requests["securitykey"] == 3  # one 401, then the retry


async def test_metadata_without_session_tokens(clock: FakeClock) -> None:
    with MetadataEmulatorThread(session_tokens=False, clock=clock) as metadata:
        provider = MetadataCredentialsProvider(base_url=metadata.url, clock=clock)
        try:
            credentials = await provider.get()
        finally:
            await provider.aclose()
    assert credentials.ak == metadata.emulator.issued[0].ak
    assert credentials.project_id is None  # the emulator was given none


async def test_concurrent_callers_share_one_refresh(
    metadata: MetadataEmulatorThread, provider: MetadataCredentialsProvider
) -> None:
    results = await asyncio.gather(*(provider.get() for _ in range(20)))
    assert len({c.ak for c in results}) == 1
    assert metadata.emulator.requests["securitykey"] == 1


async def test_metadata_without_agency_is_a_clear_error(
    clock: FakeClock, metadata: MetadataEmulatorThread, provider: MetadataCredentialsProvider
) -> None:
    metadata.emulator.agency_configured = False
    with pytest.raises(CredentialsError, match="no agency") as caught:
        await provider.get()
    assert not isinstance(caught.value, CredentialsUnavailable)


async def test_failed_refresh_keeps_valid_credentials_until_expiry(
    clock: FakeClock,
    metadata: MetadataEmulatorThread,
    provider: MetadataCredentialsProvider,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = await provider.get()
    metadata.emulator.agency_configured = False
    clock.advance(minutes=55)
    assert await provider.get() is first
    assert "keeping the current ones" in caplog.text
    clock.advance(minutes=6)
    with pytest.raises(CredentialsError, match="no agency"):
        await provider.get()


async def test_unreachable_metadata_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = MetadataCredentialsProvider(base_url=f"http://127.0.0.1:{port}", timeout=1.0)
    try:
        with pytest.raises(CredentialsUnavailable, match="not reachable"):
            await provider.get()
    finally:
        await provider.aclose()


async def test_malformed_metadata_document_does_not_echo_keys() -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(200, text="session")
        body = {"credential": {"access": "AK", "secret": SK_VALUE, "expires_at": "soon"}}
        return httpx.Response(200, text=json.dumps(body))

    provider = MetadataCredentialsProvider(
        base_url="http://metadata.test", transport=httpx.MockTransport(answer)
    )
    try:
        with pytest.raises(CredentialsError, match="unusable credential document") as caught:
            await provider.get()
    finally:
        await provider.aclose()
    assert SK_VALUE not in str(caught.value)
    assert SK_VALUE not in repr(caught.value)


# ---- the chain ---------------------------------------------------------------------------------


async def test_chain_order_and_fallthrough(
    tmp_path: Path, metadata: MetadataEmulatorThread, clock: FakeClock
) -> None:
    directory = write_files(tmp_path / "creds", ak="FILEAK", sk=SK_VALUE)
    environment = EnvironmentCredentialsProvider({})
    files = FileCredentialsProvider(directory)
    ecs = MetadataCredentialsProvider(base_url=metadata.url, clock=clock)
    chain = CredentialsChain([environment, files, ecs])
    try:
        assert (await chain.get()).ak == "FILEAK"
        assert chain.chosen is files
        # The chosen source stops being configured: the chain looks again, from the start.
        for child in directory.iterdir():
            child.unlink()
        directory.rmdir()
        assert (await chain.get()).source == "ECS metadata"
        assert chain.chosen is ecs
    finally:
        await chain.aclose()

    with_env = CredentialsChain(
        [
            EnvironmentCredentialsProvider(
                {"HUAWEICLOUD_SDK_AK": "ENVAK", "HUAWEICLOUD_SDK_SK": SK_VALUE}
            ),
            StaticCredentialsProvider(Credentials(ak="LATER", sk="x")),
        ]
    )
    assert (await with_env.get()).ak == "ENVAK"


async def test_chain_does_not_skip_a_broken_source() -> None:
    chain = CredentialsChain(
        [
            EnvironmentCredentialsProvider({"HUAWEICLOUD_SDK_AK": "ENVAK"}),
            StaticCredentialsProvider(Credentials(ak="FALLBACK", sk="x")),
        ]
    )
    with pytest.raises(CredentialsError, match="HUAWEICLOUD_SDK_SK is missing"):
        await chain.get()


async def test_chain_with_nothing_configured_lists_every_source(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    chain = CredentialsChain(
        [
            EnvironmentCredentialsProvider({}),
            FileCredentialsProvider(tmp_path / "nothing"),
            MetadataCredentialsProvider(base_url=f"http://127.0.0.1:{port}", timeout=1.0),
        ]
    )
    try:
        with pytest.raises(CredentialsUnavailable) as caught:
            await chain.get()
    finally:
        await chain.aclose()
    message = str(caught.value)
    assert message.startswith("no CSMS credentials found")
    for part in ("HUAWEICLOUD_SDK_AK", "nothing", "not reachable"):
        assert part in message


async def test_default_chain_prefers_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("HUAWEICLOUD_SDK_AK", "DEFAULTAK")
    monkeypatch.setenv("HUAWEICLOUD_SDK_SK", SK_VALUE)
    chain = default_chain(credentials_dir=tmp_path, metadata_url=None, project_id=PROJECT)
    try:
        assert (await chain.get()).ak == "DEFAULTAK"
    finally:
        await chain.aclose()
    assert "DEFAULTAK" in caplog.text
    assert SK_VALUE not in caplog.text
