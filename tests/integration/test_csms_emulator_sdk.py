"""The official `huaweicloudsdkcsms` client against the CSMS emulator, over real HTTP.

This is what makes the emulator trustworthy: the SDK signs, serialises and parses exactly as it
does against Huawei Cloud (pointed at `http://127.0.0.1:PORT` with an explicit project id, as in
reference csms-api.md §5). The SDK writes `~/.huaweicloud/application_id` on import, so it is
imported with HOME set to a temporary directory.
"""

from __future__ import annotations

import base64
import importlib
import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from dew_csi.csms.emulator import (
    CsmsEmulator,
    CsmsEmulatorThread,
    FaultRule,
    Limits,
    TemporaryCredentials,
    is_loopback,
)

PROJECT = "0123456789abcdef0123456789abcdef"
AK = "EMULATORAK0000000001"
SK = "emulator-secret-key-0000000000000000000001"
TMP_AK = "TMPAK000000000000001"
TMP_SK = "temporary-secret-key-00000000000000000001"
TOKEN = "security-token-" + "x" * 64


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp_path_factory.mktemp("sdk-home")))
        csms = importlib.import_module("huaweicloudsdkcsms.v1")
        credentials = importlib.import_module("huaweicloudsdkcore.auth.credentials")
        exceptions = importlib.import_module("huaweicloudsdkcore.exceptions.exceptions")
    return SimpleNamespace(
        v1=csms,
        BasicCredentials=credentials.BasicCredentials,
        ClientRequestException=exceptions.ClientRequestException,
        ServerResponseException=exceptions.ServerResponseException,
    )


@pytest.fixture
def csms() -> Iterator[CsmsEmulatorThread]:
    temporary = TemporaryCredentials(
        TMP_AK, TMP_SK, TOKEN, expires_at=datetime.now(UTC) + timedelta(hours=1)
    )
    with CsmsEmulatorThread(
        project_id=PROJECT, ak=AK, sk=SK, temporary_credentials=[temporary]
    ) as thread:
        yield thread


ClientFactory = Callable[..., Any]


@pytest.fixture
def make_client(sdk: SimpleNamespace, csms: CsmsEmulatorThread) -> ClientFactory:
    def build(
        ak: str = AK,
        sk: str = SK,
        project_id: str = PROJECT,
        token: str | None = None,
        url: str | None = None,
    ) -> Any:
        credentials = sdk.BasicCredentials(ak, sk, project_id)
        if token is not None:
            credentials = credentials.with_security_token(token)
        return (
            sdk.v1.CsmsClient.new_builder()
            .with_credentials(credentials)
            .with_endpoints([url or csms.url])
            .build()
        )

    return build


@pytest.fixture
def client(make_client: ClientFactory) -> Any:
    return make_client()


def create(sdk: SimpleNamespace, client: Any, name: str, value: str, **extra: Any) -> Any:
    body = sdk.v1.CreateSecretRequestBody(name=name, secret_string=value, **extra)
    return client.create_secret(sdk.v1.CreateSecretRequest(body=body))


def add_version(sdk: SimpleNamespace, client: Any, name: str, **body: Any) -> Any:
    request = sdk.v1.CreateSecretVersionRequest(
        secret_name=name, body=sdk.v1.CreateSecretVersionRequestBody(**body)
    )
    return client.create_secret_version(request)


def show_version(sdk: SimpleNamespace, client: Any, name: str, version_id: str) -> Any:
    request = sdk.v1.ShowSecretVersionRequest(secret_name=name, version_id=version_id)
    return client.show_secret_version(request).version


def expect_error(sdk: SimpleNamespace, call: Callable[[], Any]) -> Any:
    with pytest.raises((sdk.ClientRequestException, sdk.ServerResponseException)) as caught:
        call()
    return caught.value


def test_create_show_and_versions(sdk: SimpleNamespace, client: Any) -> None:
    before = int(datetime.now(UTC).timestamp() * 1000)
    created = create(sdk, client, "app-db", '{"user":"u","pass":"p"}', description="demo")
    secret = created.secret
    assert (secret.name, secret.state, secret.secret_type) == ("app-db", "ENABLED", "COMMON")
    assert secret.description == "demo"
    assert secret.create_time >= before  # epoch milliseconds
    assert secret.id
    assert secret.kms_key_id

    v2 = add_version(sdk, client, "app-db", secret_string="second").version_metadata
    v3 = add_version(sdk, client, "app-db", secret_string="third").version_metadata
    assert (v2.id, v3.id) == ("v2", "v3")
    assert v3.version_stages == ["SYSCURRENT"]

    first = show_version(sdk, client, "app-db", "v1")
    assert first.secret_string == '{"user":"u","pass":"p"}'
    assert first.secret_binary is None
    assert first.version_metadata.version_stages == []
    assert show_version(sdk, client, "app-db", "v2").version_metadata.version_stages == [
        "SYSPREVIOUS"
    ]
    latest = show_version(sdk, client, "app-db", "latest")
    assert (latest.version_metadata.id, latest.secret_string) == ("v3", "third")
    assert latest.version_metadata.secret_name == "app-db"

    shown = client.show_secret(sdk.v1.ShowSecretRequest(secret_name="app-db")).secret
    assert shown.id == secret.id
    assert shown.update_time >= shown.create_time


def test_binary_secret(sdk: SimpleNamespace, client: Any) -> None:
    raw = bytes(range(256))
    encoded = base64.b64encode(raw).decode()
    body = sdk.v1.CreateSecretRequestBody(name="tls-key", secret_binary=encoded)
    client.create_secret(sdk.v1.CreateSecretRequest(body=body))
    version = show_version(sdk, client, "tls-key", "latest")
    assert version.secret_string is None
    assert base64.b64decode(version.secret_binary) == raw


def test_stages_move_and_protect_system_stages(sdk: SimpleNamespace, client: Any) -> None:
    v1 = sdk.v1
    create(sdk, client, "rotating", "one")
    add_version(sdk, client, "rotating", secret_string="two")
    add_version(sdk, client, "rotating", secret_string="three", version_stages=["blue"])

    def stage(name: str) -> Any:
        request = v1.ShowSecretStageRequest(secret_name="rotating", stage_name=name)
        return client.show_secret_stage(request).stage

    # Explicit stages override the default: v3 is "blue" only, SYSCURRENT stays on v2.
    assert stage("SYSCURRENT").version_id == "v2"
    assert stage("SYSPREVIOUS").version_id == "v1"
    assert stage("blue").version_id == "v3"
    assert stage("blue").secret_name == "rotating"

    moved = client.update_secret_stage(
        v1.UpdateSecretStageRequest(
            secret_name="rotating",
            stage_name="SYSCURRENT",
            body=v1.UpdateSecretStageRequestBody(version_id="v3"),
        )
    ).stage
    assert (moved.name, moved.version_id) == ("SYSCURRENT", "v3")
    assert stage("SYSPREVIOUS").version_id == "v2"
    assert show_version(sdk, client, "rotating", "v3").version_metadata.version_stages == [
        "SYSCURRENT",
        "blue",
    ]

    client.delete_secret_stage(
        v1.DeleteSecretStageRequest(secret_name="rotating", stage_name="blue")
    )
    missing = expect_error(sdk, lambda: stage("blue"))
    assert (missing.status_code, missing.error_code) == (400, "CSMS.0005")

    refused = expect_error(
        sdk,
        lambda: client.delete_secret_stage(
            v1.DeleteSecretStageRequest(secret_name="rotating", stage_name="SYSCURRENT")
        ),
    )
    assert (refused.status_code, refused.error_code) == (400, "CSMS.0105")


def test_list_secrets_and_versions_paginate(sdk: SimpleNamespace, client: Any) -> None:
    v1 = sdk.v1
    names = [f"secret-{index}" for index in range(5)]
    for name in names:
        create(sdk, client, name, "value")
    seen: list[str] = []
    marker = None
    pages = 0
    while True:
        response = client.list_secrets(v1.ListSecretsRequest(limit="2", marker=marker))
        pages += 1
        seen.extend(secret.name for secret in response.secrets)
        assert response.page_info.current_count == len(response.secrets)
        marker = response.page_info.next_marker
        if not marker:
            break
    assert (seen, pages) == (names, 3)

    for index in range(4):
        add_version(sdk, client, "secret-0", secret_string=f"value {index}")
    ids: list[str] = []
    marker = None
    while True:
        response = client.list_secret_versions(
            v1.ListSecretVersionsRequest(secret_name="secret-0", limit=2, marker=marker)
        )
        ids.extend(metadata.id for metadata in response.version_metadatas)
        marker = response.page_info.next_marker
        if not marker:
            break
    assert ids == ["v1", "v2", "v3", "v4", "v5"]

    bad = expect_error(sdk, lambda: client.list_secrets(v1.ListSecretsRequest(limit="1001")))
    assert (bad.status_code, bad.error_code) == (400, "CSMS.0002")


def test_update_secret_and_version(sdk: SimpleNamespace, client: Any) -> None:
    v1 = sdk.v1
    create(sdk, client, "app", "value")
    updated = client.update_secret(
        v1.UpdateSecretRequest(
            secret_name="app", body=v1.UpdateSecretRequestBody(description="new words")
        )
    ).secret
    assert updated.description == "new words"
    metadata = client.update_version(
        v1.UpdateVersionRequest(
            secret_name="app",
            version_id="v1",
            body=v1.UpdateVersionRequestBody(expire_time=1900000000000),
        )
    ).version_metadata
    assert (metadata.id, metadata.expire_time) == ("v1", 1900000000000)


def test_delete_then_missing_secret_and_version(sdk: SimpleNamespace, client: Any) -> None:
    v1 = sdk.v1
    create(sdk, client, "short-lived", "value")
    missing_version = expect_error(sdk, lambda: show_version(sdk, client, "short-lived", "v9"))
    assert (missing_version.status_code, missing_version.error_code) == (400, "CSMS.0005")
    assert missing_version.request_id  # from X-Request-Id

    client.delete_secret(v1.DeleteSecretRequest(secret_name="short-lived"))
    gone = expect_error(sdk, lambda: show_version(sdk, client, "short-lived", "latest"))
    assert (gone.status_code, gone.error_code) == (400, "CSMS.0106")
    gone_too = expect_error(
        sdk, lambda: client.show_secret(v1.ShowSecretRequest(secret_name="short-lived"))
    )
    assert gone_too.error_code == "CSMS.0106"


def test_validation_errors(sdk: SimpleNamespace, client: Any) -> None:
    bad_name = expect_error(sdk, lambda: create(sdk, client, "bad name/..!", "value"))
    assert (bad_name.status_code, bad_name.error_code) == (400, "CSMS.0002")
    too_big = expect_error(sdk, lambda: create(sdk, client, "big", "x" * 32769))
    assert too_big.error_code == "CSMS.0002"
    create(sdk, client, "exact", "x" * 32768)
    duplicate = expect_error(sdk, lambda: create(sdk, client, "exact", "again"))
    assert duplicate.error_code == "CSMS.0002"
    no_value = expect_error(sdk, lambda: add_version(sdk, client, "exact"))
    assert no_value.error_code == "CSMS.0002"


def test_version_limit_drops_oldest_unstaged_versions(
    sdk: SimpleNamespace, make_client: ClientFactory
) -> None:
    with CsmsEmulatorThread(
        project_id=PROJECT, ak=AK, sk=SK, limits=Limits(max_versions=3)
    ) as small:
        client = make_client(url=small.url)
        create(sdk, client, "app", "v1 value")
        for index in range(2, 6):
            add_version(sdk, client, "app", secret_string=f"v{index} value")
        versions = client.list_secret_versions(
            sdk.v1.ListSecretVersionsRequest(secret_name="app")
        ).version_metadatas
        assert [v.id for v in versions] == ["v3", "v4", "v5"]
        evicted = expect_error(sdk, lambda: show_version(sdk, client, "app", "v1"))
        assert evicted.error_code == "CSMS.0005"


def test_wrong_secret_key_is_refused(sdk: SimpleNamespace, make_client: ClientFactory) -> None:
    client = make_client(sk=SK + "-wrong")
    error = expect_error(sdk, lambda: show_version(sdk, client, "anything", "latest"))
    assert (error.status_code, error.error_code) == (401, "APIG.0301")
    assert "verify aksk signature fail" in error.error_msg


def test_unknown_access_key_and_wrong_project_are_refused(
    sdk: SimpleNamespace, make_client: ClientFactory
) -> None:
    error = expect_error(sdk, lambda: show_version(sdk, make_client(ak="UNKNOWNAK"), "x", "latest"))
    assert (error.status_code, error.error_code) == (401, "APIG.0301")
    assert "ak not exist" in error.error_msg
    other = make_client(project_id="f" * 32)
    error = expect_error(sdk, lambda: show_version(sdk, other, "x", "latest"))
    assert (error.status_code, error.error_code) == (401, "APIG.0301")


def test_temporary_credentials_with_security_token(
    sdk: SimpleNamespace, client: Any, make_client: ClientFactory
) -> None:
    create(sdk, client, "app", "value")
    temporary = make_client(ak=TMP_AK, sk=TMP_SK, token=TOKEN)
    assert show_version(sdk, temporary, "app", "latest").secret_string == "value"

    without_token = make_client(ak=TMP_AK, sk=TMP_SK)
    error = expect_error(sdk, lambda: show_version(sdk, without_token, "app", "latest"))
    assert error.status_code == 401
    assert "X-Security-Token" in error.error_msg

    wrong_token = make_client(ak=TMP_AK, sk=TMP_SK, token=TOKEN + "tampered")
    error = expect_error(sdk, lambda: show_version(sdk, wrong_token, "app", "latest"))
    assert error.status_code == 401


def test_expired_temporary_credentials_are_refused(
    sdk: SimpleNamespace, csms: CsmsEmulatorThread, make_client: ClientFactory
) -> None:
    csms.emulator.add_temporary_credentials(
        TemporaryCredentials(
            "TMPEXPIRED", "expired-sk", "expired-token", datetime.now(UTC) - timedelta(seconds=1)
        )
    )
    expired = make_client(ak="TMPEXPIRED", sk="expired-sk", token="expired-token")
    error = expect_error(sdk, lambda: show_version(sdk, expired, "app", "latest"))
    assert error.status_code == 401
    assert "expired" in error.error_msg


def test_clock_skew_over_15_minutes_is_refused(
    sdk: SimpleNamespace, make_client: ClientFactory
) -> None:
    def server_clock() -> datetime:
        return datetime.now(UTC) + timedelta(minutes=16)

    with CsmsEmulatorThread(project_id=PROJECT, ak=AK, sk=SK, clock=server_clock) as skewed:
        error = expect_error(
            sdk, lambda: show_version(sdk, make_client(url=skewed.url), "x", "latest")
        )
    assert (error.status_code, error.error_code) == (401, "APIG.0301")
    assert "15 minutes" in error.error_msg


def test_injected_faults_reach_the_sdk(
    sdk: SimpleNamespace, csms: CsmsEmulatorThread, client: Any
) -> None:
    create(sdk, client, "app", "value")
    csms.emulator.set_fault(FaultRule(fail_next=1, error_status=503), secret="app")
    error = expect_error(sdk, lambda: show_version(sdk, client, "app", "latest"))
    assert isinstance(error, sdk.ServerResponseException)
    assert (error.status_code, error.error_code) == (503, "APIG.0202")
    assert show_version(sdk, client, "app", "latest").secret_string == "value"

    # A 429 on POST keeps its body in the SDK (for GET urllib3 swallows it, reference §3.1).
    csms.emulator.set_fault(FaultRule(fail_next=1, error_status=429))
    throttled = expect_error(sdk, lambda: add_version(sdk, client, "app", secret_string="x"))
    assert (throttled.status_code, throttled.error_code) == (429, "APIG.0308")
    assert csms.emulator.calls("show_secret_version", "app") == 2
    assert csms.emulator.calls("create_secret_version", "app") == 1


# ---- the emulator's own features, still checked through the SDK --------------------------------


def test_state_survives_a_restart(
    sdk: SimpleNamespace, make_client: ClientFactory, tmp_path: Path
) -> None:
    state = tmp_path / "state" / "csms.json"
    with CsmsEmulatorThread(project_id=PROJECT, ak=AK, sk=SK, state_file=state) as first:
        client = make_client(url=first.url)
        create(sdk, client, "kept", "one")
        add_version(sdk, client, "kept", secret_string="two")
        create(sdk, client, "dropped", "x")
        client.delete_secret(sdk.v1.DeleteSecretRequest(secret_name="dropped"))
        assert json.loads(state.read_text())["format"] == 1
    assert [p.name for p in state.parent.iterdir()] == ["csms.json"]  # no temp files left

    with CsmsEmulatorThread(project_id=PROJECT, ak=AK, sk=SK, state_file=state) as second:
        client = make_client(url=second.url)
        latest = show_version(sdk, client, "kept", "latest")
        assert (latest.version_metadata.id, latest.secret_string) == ("v2", "two")
        assert show_version(sdk, client, "kept", "v1").version_metadata.version_stages == [
            "SYSPREVIOUS"
        ]
        gone = expect_error(sdk, lambda: show_version(sdk, client, "dropped", "latest"))
        assert gone.error_code == "CSMS.0106"
        add_version(sdk, client, "kept", secret_string="three")
        assert add_version(sdk, client, "kept", secret_string="four").version_metadata.id == "v4"


def test_secrets_file_is_loaded_and_never_overrides_state(
    sdk: SimpleNamespace, make_client: ClientFactory, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(
        "app-db:\n"
        "  - 'plain first'\n"
        '  - secret_string: \'{"user": "u"}\'\n'
        "cert:\n"
        f"  - secret_binary: {base64.b64encode(b'binary').decode()}\n"
        "    version_stages: [SYSCURRENT, green]\n"
    )
    state = tmp_path / "state.json"
    options = {"project_id": PROJECT, "ak": AK, "sk": SK, "state_file": state}
    with CsmsEmulatorThread(secrets_file=secrets, **options) as first:
        client = make_client(url=first.url)
        assert show_version(sdk, client, "app-db", "v1").secret_string == "plain first"
        assert show_version(sdk, client, "app-db", "latest").secret_string == '{"user": "u"}'
        cert = show_version(sdk, client, "cert", "latest")
        assert base64.b64decode(cert.secret_binary) == b"binary"
        assert cert.version_metadata.version_stages == ["SYSCURRENT", "green"]
        add_version(sdk, client, "app-db", secret_string="written through the API")
    with CsmsEmulatorThread(secrets_file=secrets, **options) as second:
        latest = show_version(sdk, make_client(url=second.url), "app-db", "latest")
        assert latest.secret_string == "written through the API"


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("app: [{secret_string: 'hush-hush', secret_binary: 'AA=='}]", "secret 'app', version 1"),
        ("app: []", "secret 'app': expected a non-empty list"),
        ("app: ['ok', {secret_binary: 'not base64!!'}]", "base64"),
        ("- just a list", "expected a mapping"),
        ("app: [{value: 'hush-hush'}]", "unknown keys"),
    ],
)
def test_bad_secrets_files_are_reported_without_values(
    tmp_path: Path, content: str, expected: str
) -> None:
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text(content)
    with pytest.raises(ValueError, match=expected) as caught:
        CsmsEmulator(project_id=PROJECT, ak=AK, sk=SK, secrets_file=secrets)
    assert "hush-hush" not in str(caught.value)


def test_latest_can_follow_syscurrent(sdk: SimpleNamespace, make_client: ClientFactory) -> None:
    with CsmsEmulatorThread(project_id=PROJECT, ak=AK, sk=SK, latest="syscurrent") as thread:
        client = make_client(url=thread.url)
        create(sdk, client, "app", "one")
        add_version(sdk, client, "app", secret_string="staged", version_stages=["next"])
        assert show_version(sdk, client, "app", "latest").version_metadata.id == "v1"


def test_admin_api_and_raw_http_answers(csms: CsmsEmulatorThread) -> None:
    admin = csms.url + "/_emulator"
    with httpx.Client() as http:
        seeded = http.put(
            f"{admin}/secrets/%E5%AF%86%E9%92%A5", json={"versions": ["a", {"secret_string": "b"}]}
        )
        assert seeded.status_code == 200
        assert seeded.json()["secret"]["name"] == "密钥"
        assert http.post(f"{admin}/faults", json={"fail_next": 1, "error_status": 429}).is_success
        assert http.get(f"{admin}/faults").json()["faults"]["*"]["fail_next"] == 1
        assert http.post(f"{admin}/faults", json={"bogus": 1}).status_code == 400
        assert http.post(f"{admin}/faults", json={"error_status": 404}).status_code == 400

        unsigned = http.get(f"{csms.url}/v1/{PROJECT}/secrets/x/versions/latest")
        assert unsigned.status_code == 429  # faults come first, like the gateway
        unsigned = http.get(f"{csms.url}/v1/{PROJECT}/secrets/x/versions/latest")
        assert unsigned.status_code == 401
        assert unsigned.json()["error_code"] == "APIG.0301"
        assert unsigned.json()["request_id"] == unsigned.headers["X-Request-Id"]
        unknown = http.get(f"{csms.url}/v2/{PROJECT}/nothing")
        assert (unknown.status_code, unknown.json()["error_code"]) == (404, "APIG.0101")

        counts = http.get(f"{admin}/requests").json()
        assert counts["by_operation_and_secret"]["show_secret_version"] == {"x": 2}
        assert counts["by_status"] == {"429": 1, "401": 1, "404": 1}
        assert http.post(f"{admin}/reset").is_success
        assert http.get(f"{admin}/requests").json()["total"] == 0
        assert http.get(f"{admin}/faults").json()["faults"] == {}
        assert http.post(
            f"{admin}/credentials", json={"ak": "NEWTMP", "sk": "s", "security_token": "t"}
        ).is_success
        assert http.get(f"{admin}/nothing").status_code == 404
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert not is_loopback("10.1.2.3")
    assert not is_loopback(None)


def test_command_line_emulator(
    sdk: SimpleNamespace, make_client: ClientFactory, tmp_path: Path
) -> None:
    secrets = tmp_path / "secrets.yaml"
    secrets.write_text("app-db: ['from the command line']\n")
    command = [
        sys.executable,
        "-m",
        "dew_csi.cli",
        "csms-emulator",
        "--listen",
        "127.0.0.1:0",
        "--project-id",
        PROJECT,
        "--ak",
        AK,
        "--sk",
        SK,
        "--secrets",
        str(secrets),
        "--state",
        str(tmp_path / "state.json"),
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    ) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.fullmatch(
                r"dew-csi csms-emulator listening on (http://127\.0\.0\.1:\d+)\n", line
            )
            assert match, line
            client = make_client(url=match.group(1))
            assert show_version(sdk, client, "app-db", "latest").secret_string == (
                "from the command line"
            )
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_stage_limit(sdk: SimpleNamespace, make_client: ClientFactory) -> None:
    with CsmsEmulatorThread(project_id=PROJECT, ak=AK, sk=SK, limits=Limits(max_stages=3)) as t:
        client = make_client(url=t.url)
        create(sdk, client, "app", "one")
        add_version(sdk, client, "app", secret_string="two")  # SYSCURRENT + SYSPREVIOUS
        add_version(sdk, client, "app", secret_string="three", version_stages=["blue"])
        full = expect_error(
            sdk, lambda: add_version(sdk, client, "app", secret_string="x", version_stages=["red"])
        )
        assert (full.status_code, full.error_code) == (400, "CSMS.0203")
        also_full = expect_error(
            sdk,
            lambda: client.update_secret_stage(
                sdk.v1.UpdateSecretStageRequest(
                    secret_name="app",
                    stage_name="red",
                    body=sdk.v1.UpdateSecretStageRequestBody(version_id="v1"),
                )
            ),
        )
        assert also_full.error_code == "CSMS.0203"
        # Moving an existing label is always allowed.
        add_version(sdk, client, "app", secret_string="four", version_stages=["blue"])


def test_random_error_rate_is_reproducible_with_a_seed() -> None:
    def pattern() -> list[int | str | None]:
        rule = FaultRule(error_rate=0.3, seed=7, error_status=500)
        return [rule.decide_failure() for _ in range(200)]

    first = pattern()
    assert first == pattern()
    assert 30 <= first.count(500) <= 90
    with pytest.raises(ValueError, match="error_status"):
        FaultRule(error_rate=0.5, error_status=404)
