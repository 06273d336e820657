"""One version everywhere (`dew-csi --version`, the package, the image label, the deployed tag,
the CHANGELOG), `python -m dew_csi`, and a first `make` that shows what it is doing."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

import dew_csi
from tests.conftest import REPO
from tests.unit.test_deploy import dockerfile_instructions, final_stage

VERSION = dew_csi.__version__


def test_the_version_has_one_source() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["hatch"]["version"]["path"] == "src/dew_csi/__init__.py"
    assert re.fullmatch(r"\d+\.\d+\.\d+", VERSION)
    # The installed metadata (what pip shows) agrees; a stale install fails here.
    assert importlib.metadata.version("dew-csi") == VERSION


@pytest.mark.parametrize(
    "command",
    [["-m", "dew_csi", "--version"], ["-m", "dew_csi.cli", "--version"]],
    ids=["python-m-dew_csi", "python-m-dew_csi.cli"],
)
def test_version_flag_prints_the_package_version(command: list[str]) -> None:
    result = subprocess.run(
        [sys.executable, *command], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"dew-csi {VERSION}\n"


def test_python_m_dew_csi_is_the_dew_csi_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "dew_csi", "--help"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: dew-csi ")


def test_the_image_label_carries_the_package_version() -> None:
    instructions = dockerfile_instructions()
    first_from = next(i for i, (name, _) in enumerate(instructions) if name == "FROM")
    global_args = [args for name, args in instructions[:first_from] if name == "ARG"]
    assert global_args == [f"VERSION={VERSION}"]
    stage = final_stage()
    assert ("ARG", "VERSION") in stage
    labels = " ".join(args for name, args in stage if name == "LABEL")
    assert 'org.opencontainers.image.version="${VERSION}"' in labels
    # The build stage refuses a wheel of another version, so the label cannot lie.
    build = instructions[first_from : instructions.index(stage[0])]
    assert ("ARG", "VERSION") in build
    assert any(
        name == "RUN" and 'test -f "/wheels/dew_csi-${VERSION}-py3-none-any.whl"' in args
        for name, args in build
    )


def test_the_deployed_image_tag_is_the_package_version() -> None:
    kustomization = yaml.safe_load((REPO / "deploy" / "kustomization.yaml").read_text())
    tags = {image["name"]: image.get("newTag") for image in kustomization["images"]}
    assert tags["dew-csi"] == VERSION


def test_the_changelog_has_a_release_entry_for_this_version() -> None:
    headings = re.findall(r"^## (.+)$", (REPO / "CHANGELOG.md").read_text(), re.MULTILINE)
    assert headings[0] == "[Unreleased]"
    assert re.fullmatch(rf"\[{re.escape(VERSION)}\] - \d{{4}}-\d{{2}}-\d{{2}}", headings[1])


def test_a_first_make_says_what_it_is_doing_and_lets_pip_speak(tmp_path: Path) -> None:
    """The first `make test` on a fresh machine creates .venv and installs for about 80 s:
    one line per step, and pip's own output (no --quiet), instead of silence."""
    make = shutil.which("make")
    if make is None:
        pytest.skip("make is not installed")
    work = tmp_path / "checkout"
    work.mkdir()
    shutil.copy(REPO / "Makefile", work)
    shutil.copy(REPO / "pyproject.toml", work)
    (work / "src" / "dew_csi").mkdir(parents=True)
    shutil.copy(REPO / "src" / "dew_csi" / "__init__.py", work / "src" / "dew_csi")
    # A stand-in python: `-m venv DIR` makes DIR/bin/python (itself); anything else is echoed.
    fake = tmp_path / "python"
    fake.write_text(
        "#!/bin/sh\n"
        'if [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; cp "$0" "$3/bin/python"; exit 0; fi\n'
        'echo "python $*"\n'
    )
    fake.chmod(0o755)

    result = subprocess.run(
        [make, "--no-print-directory", f"PYTHON={fake}", ".venv/.installed-stamp"],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("MAKE")},
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    steps = [line for line in lines if line.startswith("==> ")]
    assert [s.split(":")[0] for s in steps[:3]] == [
        "==> [1/3] .venv",
        "==> [2/3] .venv",
        "==> [3/3] .venv",
    ]
    assert steps[-1] == "==> .venv is ready"
    pip_runs = [line for line in lines if line.startswith("python -m pip install")]
    assert pip_runs == [
        "python -m pip install --upgrade pip",
        "python -m pip install -e .[dev]",
    ]
    assert (work / ".venv" / ".installed-stamp").exists()
    # A version bump reinstalls (the installed metadata must follow __init__.py).
    again = subprocess.run(
        [make, "-q", f"PYTHON={fake}", ".venv/.installed-stamp"], cwd=work, check=False
    )
    assert again.returncode == 0
    # Newer than the stamp by a clear margin: "now" can equal the stamp's mtime at the
    # kernel's timestamp granularity, and make then sees nothing to do.
    stamp_time = (work / ".venv" / ".installed-stamp").stat().st_mtime
    os.utime(work / "src" / "dew_csi" / "__init__.py", (stamp_time + 10, stamp_time + 10))
    stale = subprocess.run(
        [make, "-q", f"PYTHON={fake}", ".venv/.installed-stamp"], cwd=work, check=False
    )
    assert stale.returncode == 1
