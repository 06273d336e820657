"""dew-csi as someone who installs it instead of cloning it: build the wheel, install it into a
fresh virtual environment outside the checkout, and run the commands from another directory.

The fresh environment gets dew-csi from the wheel alone; its dependencies come from this
project's .venv through a .pth file (installing them from PyPI would take a minute and the
network; they are not what this test is about). Nothing puts the checkout on its path.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import dew_csi
from tests.conftest import CRD_DIR, EXAMPLES, REPO

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

PACKAGE_DATA = {"dew_csi/_data/crds": CRD_DIR, "dew_csi/_data/examples": EXAMPLES}


def run(
    command: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (
        f"{' '.join(map(str, result.args))} exited {result.returncode}:\n"
        f"{result.stdout}\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def workdir() -> Iterator[Path]:
    # Short: the sandbox's unix sockets lie below it (at most 107 bytes per socket path).
    path = Path(tempfile.mkdtemp(prefix="dew-whl-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def wheel(workdir: Path) -> Path:
    """`pip wheel` of the checkout (hatchling from the dev extra: no download, no isolation)."""
    out = workdir / "dist"
    ok(
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--quiet",
                "--wheel-dir",
                str(out),
                str(REPO),
            ],
            cwd=workdir,
        )
    )
    (built,) = out.glob("dew_csi-*.whl")
    assert built.name == f"dew_csi-{dew_csi.__version__}-py3-none-any.whl"
    return built


@pytest.fixture(scope="module")
def installed(workdir: Path, wheel: Path) -> dict[str, str]:
    """A fresh venv with the wheel installed; the environment to run its commands in."""
    venv = workdir / "venv"
    ok(run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=workdir))
    python = venv / "bin" / "python"
    purelib = Path(
        ok(
            run(
                [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                cwd=workdir,
            )
        ).strip()
    )
    # The dependencies: this project's site-packages, after the venv's own (a path line in a
    # .pth file adds the directory only; that directory's own .pth files, among them the
    # editable install's pointer to src/, are not read).
    (purelib / "zz-dew-csi-test-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    ok(
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "--python",
                str(python),
                "install",
                "--quiet",
                "--no-deps",
                "--no-index",
                str(wheel),
            ],
            cwd=workdir,
        )
    )
    home = workdir / "home"
    home.mkdir()
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "VIRTUAL_ENV", "KUBECONFIG", "XDG_STATE_HOME")
        and not k.startswith("HUAWEICLOUD_SDK_")
    }
    environment.update(
        PATH=f"{venv / 'bin'}:{environment.get('PATH', '')}",
        HOME=str(home),
        DEW_CSI_SANDBOX_DIR=str(workdir / "sb"),
    )
    return environment


def digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_the_wheel_ships_the_repositorys_crds_and_examples_unchanged(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        for prefix, source in PACKAGE_DATA.items():
            shipped = {
                name.removeprefix(prefix + "/"): hashlib.sha256(archive.read(name)).hexdigest()
                for name in archive.namelist()
                if name.startswith(prefix + "/")
            }
            assert shipped == digests(source), prefix


def test_the_installed_wheel_works_from_any_directory(
    workdir: Path, installed: dict[str, str]
) -> None:
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    venv_bin = workdir / "venv" / "bin"
    started = time.monotonic()

    # It is the wheel's dew_csi that runs, and the checkout is nowhere on its path.
    where = ok(
        run(
            ["python", "-c", "import dew_csi, sys; print(dew_csi.__file__); print(sys.path)"],
            cwd=elsewhere,
            env=installed,
        )
    )
    assert where.startswith(str(workdir / "venv" / "lib"))
    assert str(REPO / "src") not in where

    version = f"dew-csi {dew_csi.__version__}\n"
    assert ok(run(["dew-csi", "--version"], cwd=elsewhere, env=installed)) == version
    assert (
        ok(run(["python", "-m", "dew_csi", "--version"], cwd=elsewhere, env=installed)) == version
    )
    for command in ("driver", "provider", "webhook", "check", "csms-emulator"):
        help_text = ok(run(["dew-csi", command, "--help"], cwd=elsewhere, env=installed))
        assert help_text.startswith(f"usage: dew-csi {command} ")

    # The sandbox, in its default directory ($DEW_CSI_SANDBOX_DIR here): the CRDs come from the
    # wheel; driver, provider and webhook run as the wheel's processes.
    sandbox_dir = workdir / "sb"
    up = ok(run(["dew-csi", "sandbox", "up", "--mounter", "dir"], cwd=elsewhere, env=installed))
    try:
        assert f"dew-csi sandbox is up in {sandbox_dir} " in up
        assert "Stop:       dew-csi sandbox down\n" in up
        state = json.loads((sandbox_dir / "sandbox.json").read_text())
        for component in ("driver", "provider", "webhook"):
            pid = state["components"][component]["pid"]
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert str(venv_bin / "python").encode() in argv, (component, argv)
        log = ok(run(["dew-csi", "sandbox", "logs", "driver"], cwd=elsewhere, env=installed))
        assert "dew-csi driver listening on " in log
        check = run(
            [
                "dew-csi",
                "check",
                "spc",
                "spc-test",
                "--kubeconfig",
                str(sandbox_dir / "kubeconfig"),
                "--env-file",
                str(sandbox_dir / "csms.env"),
                "--plain",
            ],
            cwd=elsewhere,
            env=installed,
        )
        assert check.returncode == 1, f"{check.stdout}\n{check.stderr}"
        assert 'SecretProviderClass "spc-test" not found' in check.stdout + check.stderr
    finally:
        down = ok(run(["dew-csi", "sandbox", "down"], cwd=elsewhere, env=installed))
    assert "stopped apiserver" in down

    # The guide's walkthrough, with the guide's files from the wheel.
    demo = run(["dew-csi", "demo"], cwd=elsewhere, env=installed, timeout=180)
    assert demo.returncode == 0, f"{demo.stdout}\n{demo.stderr}"
    assert f"  examples   {workdir / 'venv' / 'lib'}" in demo.stdout
    assert "/dew_csi/_data/examples\n" in demo.stdout
    assert "===== Summary: every step matched the guide =====" in demo.stdout
    assert list(elsewhere.iterdir()) == []  # nothing written to the working directory
    print(f"installed-wheel commands took {time.monotonic() - started:.1f}s")
