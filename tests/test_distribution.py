"""Issue 24, item 5: the sdist and the wheel build, pass ``twine check --strict``, and hold what an install needs
(every module of ``lenvm_rl``, the shipped LenVMs, the metadata an index shows) and nothing of the repository's
benchmarks, results, recipes or tests.

Built offline without build isolation (a few seconds) from a copy of the checkout's files (``git ls-files``: the
tracked ones and the new ones not ignored) into which a ``bench/results`` file is planted. Skipped where ``build``
or ``twine`` is missing; both are in the ``test`` extra, so CI runs it.
"""

from __future__ import annotations

import email
import importlib.util
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("build", "twine")),
    reason="needs build and twine (pip install -e '.[test]')")


def checkout_files() -> list[str]:
    """The checkout's files as a clone (and the files not yet committed) would have them."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout, to copy its files without the ignored ones")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode()
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    """(source copy, sdist member names, wheel member names, the wheel's METADATA)."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("dist")
    for name in checkout_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    (source / "bench" / "results" / "grpo").mkdir(parents=True, exist_ok=True)
    (source / "bench" / "results" / "grpo" / "planted.json").write_text("{}")  # what a benchmark leaves behind
    build = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    check = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", str(sdist), str(wheel)],
                           capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    with tarfile.open(sdist) as archive:
        sdist_names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    with zipfile.ZipFile(wheel) as archive:
        wheel_names = set(archive.namelist())
        metadata = archive.read(next(n for n in wheel_names if n.endswith(".dist-info/METADATA"))).decode()
        entry_points = archive.read(next(n for n in wheel_names if n.endswith(".dist-info/entry_points.txt")))
    return source, sdist_names, wheel_names, email.message_from_string(metadata), entry_points.decode()


def package_files(source: Path) -> set[str]:
    """Every module of the package and every shipped LenVM file, as paths inside an archive."""
    modules = {p for p in source.glob("lenvm_rl/**/*.py") if "__pycache__" not in p.parts}
    return {p.relative_to(source).as_posix() for p in modules | set(source.glob("lenvm_rl/pretrained/*/*"))}


def test_the_wheel_holds_the_package_and_nothing_else(dist):
    source, _, wheel_names, _, entry_points = dist
    needed = package_files(source)
    assert any(name.endswith(".safetensors") for name in needed) and "lenvm_rl/__init__.py" in needed
    assert needed <= wheel_names, sorted(needed - wheel_names)
    assert {name.split("/")[0] for name in wheel_names} == {"lenvm_rl", "lenvm_rl-0.1.0.dist-info"}
    assert "lenvm-rl = lenvm_rl.cli:main" in entry_points


def test_the_sdist_holds_the_package_readme_and_build_settings_only(dist):
    source, sdist_names, _, _, _ = dist
    needed = package_files(source) | {"pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "PKG-INFO"}
    assert needed <= sdist_names, sorted(needed - sdist_names)
    assert {name.split("/")[0] for name in sdist_names} <= {"lenvm_rl", "lenvm_rl.egg-info", "pyproject.toml",
                                                          "README.md", "LICENSE", "MANIFEST.in", "PKG-INFO",
                                                          "setup.cfg"}
    assert not [name for name in sdist_names if "results" in name or name.startswith(("tests", "bench"))]


def test_the_metadata_renders_the_readme_with_urls_and_classifiers(dist):
    source, _, _, metadata, _ = dist
    assert metadata["Name"] == "lenvm-rl" and metadata["License-Expression"] == "Apache-2.0"
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload().strip() == (source / "README.md").read_text().strip()
    urls = dict(url.split(", ", 1) for url in metadata.get_all("Project-URL"))
    assert {"Homepage", "Documentation", "Source", "Issues"} <= urls.keys()
    assert all(url.startswith("https://") for url in urls.values())
    classifiers = metadata.get_all("Classifier")
    assert "Topic :: Scientific/Engineering :: Artificial Intelligence" in classifiers
    assert "GRPO" in metadata["Keywords"]
