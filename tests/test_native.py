"""warmgw.native and setup.py: which extensions are stale, how a benchmark names a tree's
build, and the build without a C compiler."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest import overhead_meta
from warmgw import native

SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]


def tree(root: Path) -> Path:
    """A copy of the package's sources (no extensions) under root."""
    for m in native.MODULES:
        dst = native.source(m, root)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(native.source(m), dst)
    shutil.copy(native.source("warmgw.native"), native.source("warmgw.native", root))
    return root


def built(root: Path, module: str, age: float) -> Path:
    """An extension for module, `age` s older than its source (negative: newer)."""
    ext = native.source(module, root).with_suffix(SUFFIX)
    ext.write_bytes(b"")
    t = native.source(module, root).stat().st_mtime - age
    os.utime(ext, (t, t))
    return ext


def test_an_extension_older_than_its_source_is_stale(tmp_path: Path) -> None:
    root = tree(tmp_path)
    assert native.stale(root) == []  # nothing built: the sources run
    built(root, "warmgw.proxy", age=-5.0)
    assert native.extension("warmgw.proxy", root) is not None
    assert native.stale(root) == []
    built(root, "warmgw.h1.client", age=5.0)  # the source was edited after the build
    assert native.stale(root) == ["warmgw.h1.client"]


def test_the_benchmark_names_the_build_of_each_tree(tmp_path: Path) -> None:
    root = tree(tmp_path)
    t = overhead_meta.tree(root)
    assert overhead_meta.build_label(t) == "interpreted"
    assert overhead_meta.stale_trees(t) is None
    for m in native.MODULES:
        built(root, m, age=-1.0)
    assert overhead_meta.build_label(overhead_meta.tree(root)) == "compiled (mypyc)"
    built(root, "warmgw.proxy", age=1.0)
    why = overhead_meta.stale_trees(None, overhead_meta.tree(root))
    assert why is not None and "warmgw.proxy" in why


def test_a_tree_from_before_the_compiled_request_path_is_interpreted(tmp_path: Path) -> None:
    (tmp_path / "warmgw").mkdir()
    t = overhead_meta.tree(tmp_path)
    assert overhead_meta.build_label(t) == "interpreted" and t["stale"] == []


def _build(tree: Path, mode: str) -> subprocess.CompletedProcess[str]:
    """setup.py build_ext --inplace in a copy of the project, with a C compiler that fails."""
    env = {**os.environ, "CC": "/bin/false", "WARMGW_BUILD_NATIVE": mode}
    return subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.timeout(300)
def test_without_a_compiler_the_build_falls_back_to_the_sources_unless_told_not_to(
        tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    for name in ("setup.py", "pyproject.toml", "README.md"):
        shutil.copy(repo / name, tmp_path / name)
    shutil.copytree(repo / "warmgw", tmp_path / "warmgw",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    auto = _build(tmp_path, "auto")
    assert auto.returncode == 0, auto.stderr[-2000:]
    assert "building the pure-Python package" in auto.stderr
    assert not list((tmp_path / "warmgw").rglob("*.so"))  # nothing half built is left
    strict = _build(tmp_path, "1")
    assert strict.returncode != 0
    assert not list((tmp_path / "warmgw").rglob("*.so"))
