"""Every `dew-csi sandbox` command agrees on one default directory ($DEW_CSI_SANDBOX_DIR, else the
XDG state directory), and `dew-csi sandbox logs` prints a component's log."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dew_csi.cli import main
from dew_csi.sandbox.cluster import COMPONENTS, DIRECTORY_ENV, Sandbox, default_directory


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.delenv(DIRECTORY_ENV, raising=False)
    return home


def test_the_default_is_the_xdg_state_directory(home: Path) -> None:
    assert default_directory() == str(home / ".local" / "state" / "dew-csi" / "sandbox")


def test_xdg_state_home_moves_it(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert default_directory() == str(tmp_path / "state" / "dew-csi" / "sandbox")
    # The XDG rules: a relative path is invalid and ignored.
    monkeypatch.setenv("XDG_STATE_HOME", "relative/state")
    assert default_directory() == str(home / ".local" / "state" / "dew-csi" / "sandbox")


def test_the_environment_variable_overrides_it(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    monkeypatch.setenv(DIRECTORY_ENV, str(tmp_path / "mine"))
    assert default_directory() == str(tmp_path / "mine")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(DIRECTORY_ENV, "relative")
    assert default_directory() == str(tmp_path / "relative")


def test_the_test_suite_never_uses_the_users_own_directory() -> None:
    # tests/conftest.py points every `sandbox` command run without --dir elsewhere.
    assert default_directory() != str(Path.home() / ".local" / "state" / "dew-csi" / "sandbox")


@pytest.mark.parametrize(
    "command",
    [["cat", "pod-1", "/mnt/secrets-store/"], ["env", "pod-1"]],
    ids=["cat", "env"],
)
def test_without_dir_the_commands_look_in_the_default_and_say_so(
    home: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    where = home / ".local" / "state" / "dew-csi" / "sandbox"
    assert main(["sandbox", *command]) == 1
    err = capsys.readouterr().err
    # Start *the* sandbox (no --dir: the same default), not a second one elsewhere.
    assert f"no sandbox is running in {where}: start one with `dew-csi sandbox up`, " in err
    assert "--dir or $DEW_CSI_SANDBOX_DIR" in err


def test_another_directory_is_named_in_the_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other dir"
    assert main(["sandbox", "env", "pod-1", "--dir", str(other)]) == 1
    assert f"start one with `dew-csi sandbox up --dir '{other}'`" in capsys.readouterr().err


def test_down_without_dir_stops_the_default(home: Path) -> None:
    down = subprocess.run(
        [sys.executable, "-m", "dew_csi", "sandbox", "down"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    where = home / ".local" / "state" / "dew-csi" / "sandbox"
    assert down.stdout == f"no sandbox was running in {where}\n"


def test_logs_prints_a_components_log_and_lists_them(
    home: Path, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    sandbox = Sandbox(default_directory())
    sandbox.logs.mkdir(parents=True)
    sandbox.log_file("driver").write_bytes(b"=== dew-csi sandbox: starting driver ===\nI0101 ok\n")
    sandbox.log_file("apiserver").write_bytes(b"listening\n")

    assert main(["sandbox", "logs", "driver"]) == 0
    assert capsysbinary.readouterr().out == b"=== dew-csi sandbox: starting driver ===\nI0101 ok\n"

    assert main(["sandbox", "logs"]) == 0
    assert capsysbinary.readouterr().out.decode().splitlines() == [
        f"apiserver  {sandbox.log_file('apiserver')}",
        f"driver  {sandbox.log_file('driver')}",
    ]

    assert main(["sandbox", "logs", "kubelet"]) == 1
    assert b"no kubelet log in" in capsysbinary.readouterr().err

    assert main(["sandbox", "logs", "bogus"]) == 2
    err = capsysbinary.readouterr().err.decode()
    assert "unknown component 'bogus'" in err
    assert ", ".join(COMPONENTS) in err


def test_logs_of_a_directory_without_a_sandbox(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["sandbox", "logs", "--dir", str(tmp_path)]) == 1
    assert capsys.readouterr().err == f"dew-csi sandbox logs: no logs in {tmp_path / 'logs'}\n"
