"""Configuration mistakes through the real `dew-csi` executable: one line, exit 2, no traceback.

Every subcommand that reads a Kubernetes configuration is run without one (no --kubeconfig, no
KUBECONFIG, an empty HOME, not in a pod), with a malformed one, with one it cannot read, and with
a bad flag value; each must print exactly one stderr line that starts with `dew-csi <command>:`,
names the problem and says what to do, and exit 2. Unknown flags get argparse's usage error from
the subcommand's own parser, naming the flag. `csms get` ends with a newline on a terminal only.
"""

from __future__ import annotations

import os
import pty
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from dew_csi.csms.emulator import CsmsEmulatorThread
from tests.integration.test_webhook import Tls, make_certificate

TOKEN_IN_KUBECONFIG = "TOKEN-IN-KUBECONFIG-9c1e"
NO_KUBECONFIG = (
    "no Kubernetes configuration: not running in a pod (KUBERNETES_SERVICE_HOST is not set), "
    "KUBECONFIG is not set and {home}/.kube/config does not exist; pass --kubeconfig FILE or set "
    "KUBECONFIG"
)
FIX = "pass --kubeconfig FILE or set KUBECONFIG to a valid kubeconfig"


def dew_csi() -> list[str]:
    installed = Path(sys.executable).parent / "dew-csi"
    return [str(installed)] if installed.exists() else [sys.executable, "-m", "dew_csi"]


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Setting:
    """A clean environment: no kubeconfig anywhere, not in a pod, no CSMS settings."""

    home: Path
    work: Path
    tls: Tls

    def environ(self, **extra: str) -> dict[str, str]:
        drop = ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "CSMS_ENDPOINT")
        clean = {
            k: v
            for k, v in os.environ.items()
            if k not in drop and not k.startswith("HUAWEICLOUD_")
        }
        return {**clean, "HOME": str(self.home), "PYTHONIOENCODING": "utf-8", **extra}

    def run(
        self, *args: str, prefix: Sequence[str] = (), timeout: float = 30, **environ: str
    ) -> Run:
        done = subprocess.run(
            [*prefix, *dew_csi(), *args],
            capture_output=True,
            text=True,
            env=self.environ(**environ),
            cwd=self.work,
            timeout=timeout,
            check=False,
        )
        return Run(done.returncode, done.stdout, done.stderr)


@pytest.fixture(scope="module")
def setting(tmp_path_factory: pytest.TempPathFactory) -> Setting:
    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed: the webhook's certificate is made with it")
    home = tmp_path_factory.mktemp("home")
    work = tmp_path_factory.mktemp("work")
    return Setting(home, work, make_certificate(tmp_path_factory.mktemp("tls"), "webhook"))


def commands(setting: Setting) -> dict[str, list[str]]:
    """Each command that reads a Kubernetes configuration, with everything else valid (so the
    configuration is the first thing that can go wrong)."""
    work = setting.work
    return {
        "driver": [
            "driver",
            "--node-id=node-1",
            f"--kubelet-root={work}",
            "--mounter=dir",
            f"--endpoint=unix://{work}/driver/csi.sock",
        ],
        "provider": ["provider", "--region=cn-north-4", f"--socket-dir={work}/provider"],
        "webhook": [
            "webhook",
            "--listen=127.0.0.1:0",
            f"--tls-cert={setting.tls.cert}",
            f"--tls-key={setting.tls.key}",
        ],
        "check": ["check", "pod", "nginx-spc-1"],
        "sandbox kubelet": [
            "sandbox",
            "kubelet",
            f"--csi-endpoint=unix://{work}/kubelet/csi.sock",
            f"--root={work}/kubelet",
        ],
        "sandbox controllers": ["sandbox", "controllers"],
    }


KUBE_COMMANDS = ["driver", "provider", "webhook", "check", "sandbox kubelet", "sandbox controllers"]


def assert_one_line(result: Run, command: str) -> str:
    """Exit 2, one stderr line starting with `dew-csi COMMAND: `, no traceback; the line."""
    assert result.code == 2, result.err
    assert "Traceback" not in result.out + result.err
    lines = result.err.splitlines()
    assert len(lines) == 1, result.err
    assert lines[0].startswith(f"dew-csi {command}: "), lines[0]
    return lines[0].removeprefix(f"dew-csi {command}: ")


# --------------------------------------------------------------------------- the kubeconfig


@pytest.mark.parametrize("command", KUBE_COMMANDS)
def test_no_kubeconfig_and_not_in_a_pod(setting: Setting, command: str) -> None:
    result = setting.run(*commands(setting)[command])
    assert assert_one_line(result, command) == NO_KUBECONFIG.format(home=setting.home)


@pytest.fixture(scope="module")
def broken_kubeconfig(setting: Setting) -> Path:
    path = setting.work / "broken-kubeconfig"
    path.write_text(
        f'apiVersion: v1\nusers:\n- name: admin\n  user: {{token: "{TOKEN_IN_KUBECONFIG}\n'
    )
    return path


@pytest.mark.parametrize("command", KUBE_COMMANDS)
def test_malformed_kubeconfig_by_flag(
    setting: Setting, broken_kubeconfig: Path, command: str
) -> None:
    result = setting.run(*commands(setting)[command], f"--kubeconfig={broken_kubeconfig}")
    message = assert_one_line(result, command)
    assert message.startswith(
        f"the kubeconfig {broken_kubeconfig} (--kubeconfig) is not valid YAML: "
    )
    assert "(line " in message
    assert message.endswith(f"; {FIX}")
    assert TOKEN_IN_KUBECONFIG not in result.err  # the file's text is never quoted


@pytest.mark.parametrize("command", ["driver", "check"])
def test_malformed_kubeconfig_by_environment(
    setting: Setting, broken_kubeconfig: Path, command: str
) -> None:
    result = setting.run(*commands(setting)[command], KUBECONFIG=str(broken_kubeconfig))
    message = assert_one_line(result, command)
    assert message.startswith(f"the kubeconfig {broken_kubeconfig} (KUBECONFIG) is not valid YAML")
    assert TOKEN_IN_KUBECONFIG not in result.err


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "is not a kubeconfig: expected a YAML mapping with clusters, contexts and users"),
        ("kind: Config\n", "is not a usable kubeconfig: it has no 'clusters'"),
        (
            "clusters: []\ncontexts: []\ncurrent-context: gone\n",
            "cannot be used: Context 'gone' not found",
        ),
        (
            "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"
            "contexts: [{name: c, context: {cluster: c}}]\ncurrent-context: c\n",
            "cannot be used: Missing user (its context names no user; without authentication "
            "give it a user entry with `user: {}`)",
        ),
        (
            "clusters: [{name: c, cluster: {server: 'https://127.0.0.1:1', "
            "certificate-authority: /nonexistent/ca.crt}}]\n"
            "users: [{name: u, user: {}}]\n"
            "contexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n",
            "cannot be used: cannot read /nonexistent/ca.crt: No such file or directory",
        ),
    ],
    ids=["empty", "no-clusters", "no-context", "no-user", "missing-ca"],
)
def test_kubeconfig_that_is_yaml_but_not_usable(
    setting: Setting, tmp_path: Path, content: str, problem: str
) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(content)
    result = setting.run(*commands(setting)["driver"], f"--kubeconfig={path}")
    message = assert_one_line(result, "driver")
    assert problem in message
    assert message.endswith(f"; {FIX}")


def test_kubeconfig_that_does_not_exist_or_is_a_directory(setting: Setting) -> None:
    missing = setting.work / "no-such-kubeconfig"
    result = setting.run(*commands(setting)["provider"], f"--kubeconfig={missing}")
    assert assert_one_line(result, "provider") == (
        f"the kubeconfig {missing} (--kubeconfig) does not exist; {FIX}"
    )
    result = setting.run(*commands(setting)["sandbox controllers"], KUBECONFIG=str(setting.work))
    assert assert_one_line(result, "sandbox controllers") == (
        f"the kubeconfig {setting.work} (KUBECONFIG) is a directory, not a file; {FIX}"
    )


def test_kubeconfig_listing_several_files(setting: Setting) -> None:
    result = setting.run(*commands(setting)["check"], KUBECONFIG="/a/config:/b/config")
    assert assert_one_line(result, "check") == (
        "KUBECONFIG lists several files (/a/config:/b/config); dew-csi reads one: pass "
        "--kubeconfig FILE or set KUBECONFIG to one file"
    )


def _without_file_override() -> list[str] | None:
    """A command prefix under which this process cannot read a mode-000 file: none needed
    when not root; as root, setpriv dropping the DAC override capabilities."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]


@pytest.mark.parametrize("command", ["driver", "webhook", "check"])
def test_unreadable_kubeconfig(setting: Setting, tmp_path: Path, command: str) -> None:
    prefix = _without_file_override()
    if prefix is None:
        pytest.skip("running as root without setpriv: every file is readable")
    path = tmp_path / "kubeconfig"
    path.write_text("apiVersion: v1\n")
    path.chmod(0)
    result = setting.run(*commands(setting)[command], f"--kubeconfig={path}", prefix=prefix)
    message = assert_one_line(result, command)
    assert message.startswith(f"the kubeconfig {path} (--kubeconfig) cannot be read: permission ")
    assert message.endswith(f"make it readable, or {FIX}")


def test_in_a_pod_without_its_service_account_token(setting: Setting) -> None:
    token = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
    if token.exists():
        pytest.skip(f"{token} exists here: this test needs a machine without one")
    result = setting.run(
        *commands(setting)["driver"],
        KUBERNETES_SERVICE_HOST="10.0.0.1",
        KUBERNETES_SERVICE_PORT="443",
    )
    assert assert_one_line(result, "driver") == (
        "running in a pod (KUBERNETES_SERVICE_HOST is set) but its in-cluster configuration "
        f"cannot be used: {token}: No such file or directory; mount the pod's ServiceAccount "
        "token (automountServiceAccountToken must not be false), or pass --kubeconfig FILE"
    )


# --------------------------------------------------------------------------- other settings


@pytest.fixture(scope="module")
def garbage_file(setting: Setting) -> Path:
    path = setting.work / "garbage.pem"
    path.write_text("not a certificate\n")
    return path


BAD_VALUES: list[tuple[str, list[str], str]] = [
    (
        "driver",
        ["driver", "--node-id=n", "--kubelet-root=relative"],
        "--kubelet-root must be an absolute path, not 'relative'",
    ),
    (
        "driver",
        ["driver", "--node-id=n", "--kubelet-root=/", "--rotation-poll-interval=5x"],
        "rotation_poll_interval '5x' is invalid: give whole minutes with the unit m (not min), "
        "from 1m to 1440m, for example 2m",
    ),
    (
        "driver",
        ["driver", "--node-id=n", "--kubelet-root=/", "--metrics-addr=everywhere"],
        "--metrics-addr must be HOST:PORT or :PORT, not 'everywhere'",
    ),
    (
        "provider",
        ["provider", "--region=cn-north-4", "--metrics-addr=:99999"],
        "--metrics-addr must be HOST:PORT or :PORT, not ':99999'",
    ),
    (
        "provider",
        ["provider", "--region=cn-north-4", "--ca-file=/nonexistent/ca.pem"],
        "--ca-file /nonexistent/ca.pem: cannot load the CA bundle: No such file or directory",
    ),
    (
        "provider",
        ["provider", "--region=cn-north-4", "--latest-ttl=soon"],
        "'soon' is not a duration; write a number with a unit, such as 500ms, 5s, 2m or 1h",
    ),
    (
        "webhook",
        ["webhook", "--tls-cert=/nonexistent.crt", "--tls-key=/nonexistent.key"],
        "--tls-cert /nonexistent.crt: no such file",
    ),
    (
        "check",
        ["check", "pod", "x", "--endpoint=ftp://csms.example"],
        "CSMS endpoint 'ftp://csms.example' must look like https://host[:port]",
    ),
    (
        "check",
        ["check", "spc", "x", "--env-file=/nonexistent.env"],
        "cannot read the env file /nonexistent.env: No such file or directory",
    ),
    (
        "csms",
        ["csms", "list"],
        "where is CSMS? pass --endpoint URL or --region REGION, or --env-file with CSMS_ENDPOINT "
        "(dew-csi sandbox up writes DIR/csms.env)",
    ),
    (
        "csms",
        ["csms", "--region=cn-north-4", "--project-id=p", "--ca-file=/nonexistent/ca.pem", "list"],
        "cannot load the CA bundle /nonexistent/ca.pem: [Errno 2] No such file or directory",
    ),
    (
        "demo",
        ["demo", "--rotation-poll-interval=bogus"],
        "rotation_poll_interval 'bogus' is invalid: give whole minutes with the unit m (not min), "
        "from 1m to 1440m, for example 2m; the demo also takes durations such as 3s",
    ),
]


@pytest.mark.parametrize(
    ("command", "args", "message"),
    BAD_VALUES,
    ids=[f"{c}-{i}" for i, (c, _, _) in enumerate(BAD_VALUES)],
)
def test_bad_flag_values(setting: Setting, command: str, args: list[str], message: str) -> None:
    result = setting.run(*args)
    assert assert_one_line(result, command) == message


def test_webhook_tls_files_that_cannot_be_used(setting: Setting, garbage_file: Path) -> None:
    result = setting.run("webhook", f"--tls-cert={garbage_file}", f"--tls-key={setting.tls.key}")
    assert assert_one_line(result, "webhook").startswith(
        f"cannot load the TLS certificate {garbage_file} and key {setting.tls.key}: "
    )


def test_csms_half_a_credential_pair_is_a_usage_error(setting: Setting, tmp_path: Path) -> None:
    env_file = tmp_path / "csms.env"
    env_file.write_text(
        "CSMS_ENDPOINT=http://127.0.0.1:1\nHUAWEICLOUD_SDK_PROJECT_ID=p\nHUAWEICLOUD_SDK_AK=AK1\n"
    )
    result = setting.run("csms", f"--env-file={env_file}", "list")
    assert assert_one_line(result, "csms") == (
        f"CSMS credentials: HUAWEICLOUD_SDK_AK is set (in --env-file {env_file}) but "
        f"HUAWEICLOUD_SDK_SK is missing or empty in the environment and --env-file {env_file}: "
        "set both"
    )


def test_a_driver_socket_that_cannot_be_served(setting: Setting, tmp_path: Path) -> None:
    """Past the configuration: the socket path itself. The driver has logged its start, so
    the error is the last line, and there is no traceback."""
    from dew_csi.sandbox.apiserver import ApiServerThread, write_kubeconfig

    occupied = tmp_path / "not-a-socket"
    occupied.mkdir()
    with ApiServerThread() as api:
        kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(kubeconfig, api.url)
        result = setting.run(
            "driver",
            "--node-id=n",
            f"--kubelet-root={tmp_path}",
            "--mounter=dir",
            f"--endpoint=unix://{occupied}",
            f"--kubeconfig={kubeconfig}",
        )
    assert result.code == 2, result.err
    assert "Traceback" not in result.err
    assert result.err.splitlines()[-1] == (
        f"dew-csi driver: cannot serve CSI on {occupied}: {occupied} exists and is not a socket; "
        "refusing to replace it; check --endpoint (the kubelet's plugin directory must be "
        "mounted into the container)"
    )


@pytest.fixture
def occupied_port() -> Iterator[int]:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        yield holder.getsockname()[1]


def test_provider_start_up_failures_are_one_line(
    setting: Setting, tmp_path: Path, occupied_port: int
) -> None:
    """A socket directory that cannot be made, a metrics port in use: the error is the last line
    (start-up logs come before it) and names the option; no traceback."""
    from dew_csi.sandbox.apiserver import ApiServerThread, write_kubeconfig

    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with ApiServerThread() as api:
        kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(kubeconfig, api.url)
        common = ["provider", "--region=cn-north-4", f"--kubeconfig={kubeconfig}"]
        bad_socket = setting.run(*common, f"--socket-dir={not_a_directory}/sub")
        bad_metrics = setting.run(
            *common,
            f"--socket-dir={tmp_path}/sockets",
            f"--metrics-addr=127.0.0.1:{occupied_port}",
        )
    for result in (bad_socket, bad_metrics):
        assert result.code == 2, result.err
        assert "Traceback" not in result.err
    assert bad_socket.err.splitlines()[-1] == (
        f"dew-csi provider: cannot serve on {not_a_directory}/sub/cce.sock: Not a directory "
        f"({not_a_directory}/sub); check --socket-dir"
    )
    assert bad_metrics.err.splitlines()[-1] == (
        f"dew-csi provider: cannot serve metrics on --metrics-addr 127.0.0.1:{occupied_port}: "
        "Address already in use"
    )


def test_webhook_on_a_port_in_use(setting: Setting, occupied_port: int) -> None:
    tls = setting.tls
    result = setting.run(
        "webhook",
        f"--listen=127.0.0.1:{occupied_port}",
        f"--tls-cert={tls.cert}",
        f"--tls-key={tls.key}",
        "--max-spcs=0",
    )
    message = assert_one_line(result, "webhook")
    assert message.startswith(f"cannot listen on --listen 127.0.0.1:{occupied_port}: ")
    assert "address already in use" in message.lower()


# --------------------------------------------------------------------------- unknown flags


@pytest.mark.parametrize(
    ("args", "prog"),
    [
        (["--bogus"], "dew-csi"),
        (["driver", "--bogus"], "dew-csi driver"),
        (["sandbox", "--bogus"], "dew-csi sandbox"),
        (["check", "--bogus", "pod", "x"], "dew-csi check pod"),
        (["csms", "get", "x", "--bogus"], "dew-csi csms get"),
    ],
)
def test_an_unknown_flag_is_named_by_its_commands_parser(
    setting: Setting, args: list[str], prog: str
) -> None:
    result = setting.run(*args)
    assert result.code == 2
    assert "Traceback" not in result.err
    assert result.err.startswith(f"usage: {prog} ")
    assert result.err.splitlines()[-1] == f"{prog}: error: unrecognized arguments: --bogus"


def test_a_missing_subcommand_lists_the_choices(setting: Setting) -> None:
    result = setting.run("csms")
    assert result.code == 2
    assert result.err.splitlines()[-1] == (
        "dew-csi csms: error: a command is required, one of: put, get, list"
    )


# --------------------------------------------------------------------------- csms get


@pytest.fixture
def csms_env(tmp_path: Path) -> Iterator[Path]:
    with CsmsEmulatorThread(project_id="p", ak="AK1", sk="SK1") as csms:
        csms.emulator.set_secret_versions("no_newline", ["value-without-newline"])
        env_file = tmp_path / "csms.env"
        env_file.write_text(
            f"CSMS_ENDPOINT={csms.url}\nHUAWEICLOUD_SDK_AK=AK1\nHUAWEICLOUD_SDK_SK=SK1\n"
            "HUAWEICLOUD_SDK_PROJECT_ID=p\n"
        )
        yield env_file


def test_csms_get_ends_with_a_newline_on_a_terminal_only(setting: Setting, csms_env: Path) -> None:
    piped = setting.run("csms", f"--env-file={csms_env}", "get", "no_newline")
    assert (piped.code, piped.out) == (0, "value-without-newline")

    controller, terminal = pty.openpty()
    try:
        done = subprocess.run(
            [*dew_csi(), "csms", f"--env-file={csms_env}", "get", "no_newline"],
            stdout=terminal,
            stderr=subprocess.PIPE,
            env=setting.environ(),
            timeout=30,
            check=False,
        )
        os.close(terminal)
        terminal = -1
        received = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # EIO: the terminal's other end is closed and drained
                break
            if not chunk:
                break
            received += chunk
    finally:
        if terminal != -1:
            os.close(terminal)
        os.close(controller)
    assert done.returncode == 0, done.stderr
    # The terminal shows "\n" as "\r\n".
    assert received == b"value-without-newline\r\n"


# --------------------------------------------------------------------------- sandbox and demo


@pytest.mark.parametrize(
    ("command", "args"),
    [
        ("sandbox up", ["sandbox", "up", "--dir={file}"]),
        ("demo", ["demo", "--dir={file}"]),
        ("sandbox up", ["sandbox", "up", "--dir={work}/sb", "--rotation-poll-interval=bogus"]),
        ("sandbox apiserver", ["sandbox", "apiserver", "--listen=nowhere"]),
        (
            "sandbox kubelet",
            ["sandbox", "kubelet", "--csi-endpoint=x", "--root=/", "--backoff-max=x"],
        ),
        ("sandbox controllers", ["sandbox", "controllers", "--resync=x"]),
    ],
    ids=[
        "sandbox-up-dir",
        "demo-dir",
        "sandbox-up-interval",
        "apiserver",
        "kubelet",
        "controllers",
    ],
)
def test_sandbox_and_demo_configuration_mistakes(
    setting: Setting, garbage_file: Path, command: str, args: list[str]
) -> None:
    filled = [a.format(file=garbage_file, work=setting.work) for a in args]
    assert_one_line(setting.run(*filled, timeout=60), command)
