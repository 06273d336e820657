"""Where the files dew-csi ships besides its code are: the add-on's CRDs and the guide's YAML.

The repository keeps one copy of each, in `deploy/crds/` and `examples/`. The wheel carries them
as package data (`dew_csi/_data/crds`, `dew_csi/_data/examples`, mapped by
`[tool.hatch.build.targets.wheel.force-include]` in pyproject.toml), so an installed dew-csi works
from any directory. A source checkout (an editable install, or `PYTHONPATH=src`) has no
`_data` directory: there the files are found in the checkout itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

PACKAGE_DATA: Final = Path(__file__).resolve().parent / "_data"
"""Where an installed wheel keeps the files."""
CHECKOUT: Final = Path(__file__).resolve().parents[2]
"""The repository root when this module runs from a source checkout (`src/dew_csi/...`)."""


class ResourceMissing(Exception):
    """A shipped file set is in neither place; the message names both and what to do."""


def _locate(what: str, packaged: str, in_checkout: str, marker: str) -> Path:
    candidates = (PACKAGE_DATA / packaged, CHECKOUT / in_checkout)
    for candidate in candidates:
        if (candidate / marker).is_file():
            return candidate
    raise ResourceMissing(
        f"cannot find {what}: neither in the installed package ({candidates[0]}) nor in a "
        f"source checkout ({candidates[1]}); this dew-csi installation is incomplete: "
        "reinstall it (pip install --force-reinstall dew-csi)"
    )


def crd_dir() -> Path:
    """The directory of the add-on's CustomResourceDefinitions (`*.yaml`)."""
    return _locate("dew-csi's CRDs", "crds", "deploy/crds", "secretproviderclass.yaml")


def examples_dir() -> Path:
    """The directory of the guide's YAML files."""
    return _locate("the guide's example files", "examples", "examples", "serviceaccount.yaml")
