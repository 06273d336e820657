"""dew_csi.resources finds the CRDs and the guide's YAML in an installed wheel (package data) and
in a source checkout, and says truthfully when neither has them."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path

import pytest

from dew_csi import demo, resources
from dew_csi.cli import build_parser
from tests.conftest import CRD_DIR, EXAMPLES, REPO


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """Neither package data nor a checkout: an installation missing its data."""
    packaged, checkout = tmp_path / "site-packages" / "dew_csi" / "_data", tmp_path / "lib"
    monkeypatch.setattr(resources, "PACKAGE_DATA", packaged)
    monkeypatch.setattr(resources, "CHECKOUT", checkout)
    return packaged, checkout


def test_in_a_checkout_the_repositorys_own_files_are_used() -> None:
    # The tests (an editable install) read the one copy the repository keeps, never a stale one.
    assert resources.crd_dir() == CRD_DIR
    assert resources.examples_dir() == EXAMPLES


def test_package_data_comes_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    packaged = tmp_path / "_data"
    (packaged / "crds").mkdir(parents=True)
    (packaged / "crds" / "secretproviderclass.yaml").write_text("kind: CustomResourceDefinition\n")
    (packaged / "examples").mkdir()
    (packaged / "examples" / "serviceaccount.yaml").write_text("kind: ServiceAccount\n")
    monkeypatch.setattr(resources, "PACKAGE_DATA", packaged)

    assert resources.crd_dir() == packaged / "crds"
    assert resources.examples_dir() == packaged / "examples"


def test_missing_data_names_both_places_and_gives_true_advice(nowhere: tuple[Path, Path]) -> None:
    packaged, checkout = nowhere
    with pytest.raises(resources.ResourceMissing) as error:
        resources.crd_dir()
    message = str(error.value)
    assert str(packaged / "crds") in message
    assert str(checkout / "deploy" / "crds") in message
    assert "reinstall" in message
    # The old advice was wrong: a wheel run inside the checkout failed all the same.
    assert "run from a checkout" not in message
    with pytest.raises(resources.ResourceMissing, match="the guide's example files"):
        resources.examples_dir()


def test_the_demo_without_its_examples_says_so_and_how_to_name_them(
    nowhere: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    args: argparse.Namespace = build_parser().parse_args(["demo"])
    assert demo.run_from_args(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("dew-csi demo: cannot find the guide's example files: ")
    assert "--examples DIR" in err


def test_the_wheel_maps_exactly_the_directories_the_locator_reads() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    force_include = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    package_data = resources.PACKAGE_DATA.relative_to(Path(resources.__file__).parents[1])
    assert force_include == {
        str(CRD_DIR.relative_to(REPO)): str(package_data / "crds"),
        str(EXAMPLES.relative_to(REPO)): str(package_data / "examples"),
    }
    # The sdist carries them too, so a wheel built from it is as complete.
    sdist = pyproject["tool"]["hatch"]["build"]["targets"]["sdist"]["include"]
    assert {"deploy", "examples"} <= set(sdist)
