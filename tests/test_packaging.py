"""What `pip install` and an sdist carry: the wheel holds every module and built-in config the
package reads at run time; the sdist holds the whole test suite and what it reads, so it runs there."""

import importlib.metadata
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

from repo_scripts import ROOT

# build outputs and local state, which a build from a clean tree never sees (without git to ask)
SKIP = {".git", ".venv", "build", "dist", "runs", "reports", ".data", ".whl", ".pytest_cache", ".hypothesis",
        "__pycache__"}


def source_files():
    """The checkout's files (git's tracked and not-ignored ones; else a walk that skips SKIP), relative."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        return sorted(f for f in out.split("\0") if f and (ROOT / f).is_file())
    except (OSError, subprocess.CalledProcessError):  # no git, or an unpacked sdist
        return sorted(p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*") if p.is_file()
                      and not SKIP & set(p.relative_to(ROOT).parts)
                      and not any(part.endswith(".egg-info") for part in p.parts) and p.suffix != ".pyc")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The checkout's files, and the sdist's and the wheel's that setuptools builds from a copy of them."""
    try:  # the build runs in a subprocess: setuptools is not imported here
        major = int(importlib.metadata.version("setuptools").split(".")[0])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        major = 0
    if major < 77:
        pytest.skip("needs setuptools >= 77 (pyproject.toml's build-system floor) in this environment")
    files = source_files()
    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("dist")
    for f in files:
        (tree / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, tree / f)
    # (the folder is read once: build_meta rewrites sys.argv)
    code = "import sys; from setuptools import build_meta as b; d = sys.argv[1]; b.build_sdist(d); b.build_wheel(d)"
    build = subprocess.run([sys.executable, "-c", code, str(out)], cwd=tree, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    with tarfile.open(sdist) as tar:
        sdist_files = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    with zipfile.ZipFile(wheel) as zf:
        wheel_files = set(zf.namelist())
    return files, sdist_files, wheel_files, build.stderr


def test_the_wheel_holds_every_module_and_builtin_config(built):
    files, _, wheel, _ = built
    wanted = [f[len("src/"):] for f in files if f.startswith("src/btkd/") and f.endswith((".py", ".yaml"))]
    assert any(f.startswith("btkd/configs/") for f in wanted)
    assert sorted(set(wanted) - wheel) == []


def test_the_sdist_holds_the_test_suite_and_what_it_reads(built):
    files, sdist, _, _ = built
    # the suite's helpers and fixtures (tests/test*.py alone cannot even be collected), the docs it
    # checks against the code, the scripts and benchmark code it imports, the README it runs
    wanted = [f for f in files if f.startswith(("tests/", "docs/", "scripts/", "benchmarks/cifar100/"))] + [
        "benchmarks/results/cifar100/README.md", "README.md", "LICENSE", "Makefile"]
    assert "tests/conftest.py" in wanted
    assert sorted(set(wanted) - sdist) == []


def test_the_build_uses_no_metadata_that_setuptools_deprecates(built):
    # a deprecated form (the license as a table) is one that a later setuptools refuses: `pip install`,
    # which builds with the newest, would then fail
    *_, log = built
    assert "SetuptoolsDeprecationWarning" not in log
