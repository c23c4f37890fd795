"""warmgw.native: which extensions are stale, and how a benchmark names a tree's build."""

from __future__ import annotations

import importlib.machinery
import os
import shutil
from pathlib import Path

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
