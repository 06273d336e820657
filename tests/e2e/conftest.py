"""Fixtures for end-to-end tests that drive the real `kubectl` against the API emulator."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ApiServerProcess, start_apiserver_process


@dataclass
class Kubectl:
    """The real kubectl, pointed at one emulator. Every call gets its own --cache-dir, so no
    discovery or OpenAPI cache is shared between calls, and HOME is private to the tests."""

    binary: str
    kubeconfig: Path
    workdir: Path

    def __post_init__(self) -> None:
        self._calls = itertools.count()

    def command(self, *args: str) -> tuple[list[str], dict[str, str]]:
        cache = self.workdir / f"cache-{next(self._calls)}"
        command = [self.binary, "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(cache)]
        env = {**os.environ, "HOME": str(self.workdir), "KUBECONFIG": str(self.kubeconfig)}
        return [*command, *args], env

    def run(
        self, *args: str, check: bool = True, timeout: float = 30
    ) -> subprocess.CompletedProcess[str]:
        command, env = self.command(*args)
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"kubectl {' '.join(args)} exited {result.returncode}:\n{result.stderr}"
            )
        return result

    def popen(self, *args: str) -> subprocess.Popen[str]:
        command, env = self.command(*args)
        return subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )


@pytest.fixture(scope="session")
def kubectl_binary() -> str:
    found = shutil.which("kubectl")
    if found is None:
        pytest.skip("kubectl not installed: the guide's commands need the real kubectl binary")
    return found


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServerProcess]:
    """One `dew-csi sandbox apiserver` process for a test module, with a kubeconfig."""
    workdir = tmp_path_factory.mktemp("emulator")
    child = start_apiserver_process(kubeconfig=workdir / "kubeconfig")
    yield child
    assert child.stop() == 0


@pytest.fixture(scope="module")
def kubectl(
    kubectl_binary: str, emulator: ApiServerProcess, tmp_path_factory: pytest.TempPathFactory
) -> Kubectl:
    assert emulator.kubeconfig is not None
    return Kubectl(kubectl_binary, emulator.kubeconfig, tmp_path_factory.mktemp("kubectl"))
