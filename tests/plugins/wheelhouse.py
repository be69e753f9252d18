"""Install the built ark-obs wheel into a clean venv without the network.

The wheel itself is what ``python -m build`` made. Its dependencies come from a wheelhouse repacked from the
distributions installed in the test venv (their files as recorded in RECORD, under their own wheel tags), so
``pip install --no-index --find-links`` resolves the wheel's declared requirements for real, offline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]


def _requirements(dist: metadata.Distribution, extras: frozenset[str]) -> list[Requirement]:
    out = []
    for text in dist.requires or ():
        req = Requirement(text)
        if req.marker is None:
            out.append(req)
            continue
        for extra in extras or {""}:
            if req.marker.evaluate({**default_environment(), "extra": extra}):
                out.append(req)
                break
    return out


def runtime_closure(name: str) -> list[metadata.Distribution]:
    """``name``'s installed distribution's runtime dependencies, recursively (not ``name`` itself)."""
    seen: dict[str, metadata.Distribution] = {}
    todo: list[tuple[str, frozenset[str]]] = [
        (r.name, frozenset(r.extras)) for r in _requirements(metadata.distribution(name), frozenset())
    ]
    done: set[tuple[str, frozenset[str]]] = set()
    while todo:
        dep, extras = todo.pop()
        key = (canonicalize_name(dep), extras)
        if key in done:
            continue
        done.add(key)
        dist = metadata.distribution(dep)
        seen[canonicalize_name(dep)] = dist
        todo.extend((r.name, frozenset(r.extras)) for r in _requirements(dist, extras))
    return list(seen.values())


def repack(dist: metadata.Distribution, outdir: Path) -> Path:
    """A wheel of the installed ``dist`` (its site-packages files and dist-info; scripts and caches left out)."""
    wheel_meta = dist.read_text("WHEEL") or ""
    tag = next(line.split(":", 1)[1].strip() for line in wheel_meta.splitlines() if line.startswith("Tag:"))
    name = canonicalize_name(dist.metadata["Name"]).replace("-", "_")
    target = outdir / f"{name}-{dist.version}-{tag}.whl"
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as whl:
        for file in dist.files or ():
            text = str(file)
            if text.startswith("..") or "__pycache__" in text or text.endswith(".pyc"):
                continue
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                whl.write(path, text)
    return target


def wheelhouse(outdir: Path) -> Path:
    """A directory of wheels holding every runtime dependency of ark-obs, as installed here."""
    outdir.mkdir(parents=True, exist_ok=True)
    for dist in runtime_closure("ark-obs"):
        repack(dist, outdir)
    return outdir


def build_dists(outdir: Path) -> tuple[Path, Path]:
    """``python -m build`` (wheel and sdist) on a copy of the working tree's files; (wheel, sdist).

    ``--no-isolation`` uses this venv's setuptools and build (dev dependencies), so no network is needed;
    the copy keeps build/ and egg-info out of the worktree.
    """
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT, check=True, capture_output=True,
    ).stdout.decode().split("\0")  # fmt: skip
    tree = outdir / "tree"
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            dst = tree / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_bytes(src.read_bytes())
    dist = outdir / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(tree)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    (wheel,) = dist.glob("*.whl")
    (sdist,) = dist.glob("*.tar.gz")
    return wheel, sdist


def clean_venv(where: Path, wheel: Path, house: Path) -> Path:
    """A new venv (no system site-packages, nothing of the source tree) with ``wheel`` installed; its bin/."""
    venv.EnvBuilder(with_pip=True, clear=True).create(where)
    bindir = where / "bin"
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "PIP_CONSTRAINT", "VIRTUAL_ENV"}}
    subprocess.run(
        [str(bindir / "python"), "-m", "pip", "install", "--quiet", "--no-index", "--isolated",
         "--find-links", str(house), str(wheel)],
        check=True, capture_output=True, text=True, env=env, cwd=where, timeout=180,
    )  # fmt: skip
    return bindir
