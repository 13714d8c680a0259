"""The data files maspo ships with its code: the sweep specs, the dashboard definition and the data fixtures.

Their source lives in the repository, ``sweeps/*.yaml``, ``dashboards/maspo.yaml`` and ``tests/fixtures/data/``
(a few rows of each data source with its hub column layout: what ``maspo data prepare --fixtures`` converts for
a rehearsal). The wheel carries them inside the package, at ``orchestrator/_data/sweeps/``,
``orchestrator/_data/dashboards/`` and ``orchestrator/_data/fixtures/`` (pyproject.toml,
``[tool.hatch.build.targets.wheel.force-include]``), and this module reads them from there with
:mod:`importlib.resources`: that is what a cluster node runs after ``pip install maspo[gpu]``.

An editable install (``make install``: ``pip install -e``) and a plain checkout (pytest's ``pythonpath``)
import the package straight from the source tree, which has no ``_data``: hatchling's editable wheel puts the
checkout on ``sys.path`` (its copies of the mapped files land in ``site-packages/orchestrator/_data``, a
directory the checkout's package never looks in). There, and only there, the top-level directories are read
instead, so an edited spec takes effect at once; "a checkout" means the directory above the package holds
maspo's ``pyproject.toml``. An install that has neither raises :class:`ResourceError` naming both places.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from orchestrator.errors import UserError

if TYPE_CHECKING:  # importlib.resources.abc is 3.11+; at run time only the methods below are used
    from importlib.resources.abc import Traversable

Kind = Literal["sweeps", "dashboards", "fixtures"]
# where each kind lives in a source checkout
CHECKOUT_PATHS = {"sweeps": "sweeps", "dashboards": "dashboards", "fixtures": "tests/fixtures/data"}
PACKAGED = "_data"  # orchestrator/_data/<kind>/ inside the wheel
DASHBOARD_DEFINITION = "maspo.yaml"


class ResourceError(UserError):
    """maspo's own data files are missing from this install (a wheel built without them)."""


def _checkout_dir(kind: Kind) -> Path | None:
    """``<checkout>/<kind>`` when the package is imported from a maspo source checkout, else None."""
    root = Path(__file__).resolve().parents[1]
    pyproject = root / "pyproject.toml"
    if not (root / CHECKOUT_PATHS[kind]).is_dir() or not pyproject.is_file():
        return None
    try:
        head = pyproject.read_text(errors="replace")
    except OSError:
        return None
    return root / CHECKOUT_PATHS[kind] if 'name = "maspo"' in head else None


def data_dir(kind: Kind) -> Traversable:
    """The directory holding the ``kind`` files: the package's copy, or a checkout's top-level directory."""
    packaged = files("orchestrator").joinpath(PACKAGED).joinpath(kind)  # one name per call (3.10)
    if packaged.is_dir():
        return packaged
    checkout = _checkout_dir(kind)
    if checkout is not None:
        return checkout
    raise ResourceError(f"maspo's {kind}/ files are missing from this install: neither {packaged} (a wheel) "
                        f"nor a source checkout's {CHECKOUT_PATHS[kind]}/ exists; reinstall maspo from a wheel or "
                        f"a checkout")


def spec_files() -> dict[str, Traversable]:
    """The shipped specs by name (``alpha-beta`` -> its ``alpha-beta.yaml``), sorted."""
    found = {f.name.rsplit(".", 1)[0]: f for f in data_dir("sweeps").iterdir()
             if f.is_file() and f.name.endswith((".yaml", ".yml"))}
    return dict(sorted(found.items()))


def spec_file(name: str) -> Traversable:
    """The shipped spec ``name`` (it may not exist: check ``is_file()``)."""
    return data_dir("sweeps").joinpath(f"{name}.yaml")


def spec_text(name: str) -> str:
    return spec_file(name).read_text(encoding="utf-8")


def paper_file(name: str) -> Traversable:
    """One of the paper's tables, ``orchestrator/paper/<name>`` (plain package data, in every install)."""
    return files("orchestrator").joinpath("paper").joinpath(name)


def dashboard_definition() -> Traversable:
    return data_dir("dashboards").joinpath(DASHBOARD_DEFINITION)


def dashboard_definition_text() -> str:
    return dashboard_definition().read_text(encoding="utf-8")


def fixture_file(name: str) -> Traversable:
    """The data fixture of source ``name`` (``<name>.jsonl``: rows with the hub's column layout)."""
    return data_dir("fixtures").joinpath(f"{name}.jsonl")
