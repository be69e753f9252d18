"""The package as a user installs it: ``python -m build`` makes a wheel and an sdist, and the wheel alone, in a
clean venv (nothing of this source tree on its path), serves every page and knows its version.

Offline: the wheel's dependencies come from a wheelhouse repacked from this venv (tests/plugins/wheelhouse.py).
About 25-40 s on the shared 2-core machine, most of it creating the venv and installing.
"""

from __future__ import annotations

import re
import subprocess
import tarfile
import tomllib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from plugins.serve import Server
from plugins.wheelhouse import build_dists, clean_venv, wheelhouse

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "ark_obs"


def package_data() -> set[str]:
    """Every file of the ark_obs package that is not Python source, as a path inside the wheel."""
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "src/ark_obs"],
        cwd=ROOT, check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    return {
        str(Path(rel).relative_to("src"))
        for rel in tracked
        if not rel.endswith((".py", ".pyc")) and (ROOT / rel).is_file()
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_dists(tmp_path_factory.mktemp("build"))


@pytest.fixture(scope="module")
def installed(built: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a clean venv holding the built wheel (and its dependencies, nothing else)."""
    house = wheelhouse(tmp_path_factory.mktemp("wheelhouse"))
    return clean_venv(tmp_path_factory.mktemp("venv") / "venv", built[0], house)


@pytest.fixture
def served(installed: Path, tmp_path: Path) -> Iterator[Server]:
    server = Server(tmp_path, {}, binary=installed / "ark-obs")
    try:
        server.wait_healthy()
        yield server
    finally:
        server.terminate()


def project_version() -> str:
    """The one version: pyproject.toml takes it from ``ark_obs.__version__``."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["dynamic"] == ["version"] and "version" not in project
    match = re.search(r'^__version__ = "([^"]+)"$', (PACKAGE / "__init__.py").read_text(), re.M)
    assert match
    return match.group(1)


def test_build_makes_a_wheel_and_an_sdist_with_every_data_file(built: tuple[Path, Path]) -> None:
    wheel, sdist = built
    version = project_version()
    assert wheel.name == f"ark_obs-{version}-py3-none-any.whl"
    assert sdist.name == f"ark_obs-{version}.tar.gz"
    names = set(zipfile.ZipFile(wheel).namelist())
    data = package_data()
    assert "ark_obs/py.typed" in data  # type information ships
    missing = data - names
    assert not missing, f"package data left out of the wheel (pyproject [tool.setuptools.package-data]): {missing}"
    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    for must in (
        "pyproject.toml",
        "README.md",
        "CHANGELOG.md",
        "src/ark_obs/py.typed",
        "deploy/systemd/ark-obs.service",
    ):
        assert must in members, must


def test_installed_wheel_is_not_the_source_tree(installed: Path) -> None:
    where = subprocess.run(
        [str(installed / "python"), "-c", "import ark_obs; print(ark_obs.__file__)"],
        check=True, capture_output=True, text=True, cwd=installed,
    ).stdout.strip()  # fmt: skip
    assert where.startswith(str(installed.parent)), where
    assert str(ROOT) not in where


def test_version_matches_the_package(installed: Path) -> None:
    out = subprocess.run([str(installed / "ark-obs"), "--version"], check=True, capture_output=True, text=True)
    meta = subprocess.run(
        [str(installed / "python"), "-c", "from importlib.metadata import version; print(version('ark-obs'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    assert meta == project_version()
    assert out.stdout.strip() == f"ark-obs {meta}"


def test_installed_service_serves_metrics_pages_docs_and_slos(served: Server) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert "ark_slo_met" in metrics.text or "ark_slo_" in metrics.text
        page = client.get("/")
        assert page.status_code == 200 and "<html" in page.text.lower()  # static/status.html
        docs = client.get("/docs")
        assert docs.status_code == 200
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):  # fastapi-offline's vendored files
            assert asset in docs.text
            assert client.get(f"/docs/assets/{asset}").status_code == 200, asset
        slos = client.get("/slos").json()  # slo/defaults.toml
        assert {s["name"] for s in slos["slos"]} >= {"availability", "decision_latency_p95"}
        assert client.get("/openapi.json").status_code == 200
