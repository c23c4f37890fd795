"""The request path compiled to C by mypyc, and how to tell whether it is.

The modules below are plain typed Python (mypy --strict clean). setup.py compiles them
with mypyc (a C extension module beside each .py, and one shared library,
warmgw/_native__mypyc*.so) unless WARMGW_BUILD_NATIVE=0; Python imports the extension
before the .py. Compiled, a proxied request costs about a third fewer instructions (see
docs/benchmarks.md); the behaviour is the same, with one difference: compiled code checks
the declared types of what it is given (a TypeError instead of a wrong value later).

An extension older than its source is the one that runs: `stale()` names them, the
gateway warns of them at start, and the tests refuse to run on them (`make native`
builds them again; WARMGW_BUILD_NATIVE=0 `make native` removes them).

Stdlib only, and no warmgw import: setup.py reads MODULES from this file as it builds.
"""

from __future__ import annotations

import importlib
import importlib.machinery
from pathlib import Path

# the HTTP/1.1 layer, the proxy and its streams, the user listener and the routing core
MODULES = (
    "warmgw.h1.client", "warmgw.h1.cycle", "warmgw.h1.failures", "warmgw.h1.pool",
    "warmgw.h1.protocol", "warmgw.h1.server", "warmgw.proxy", "warmgw.stream",
    "warmgw.listener",
    "warmgw.core.affinity", "warmgw.core.bluegreen", "warmgw.core.clock",
    "warmgw.core.events", "warmgw.core.facts", "warmgw.core.keep", "warmgw.core.lifecycle",
    "warmgw.core.model", "warmgw.core.picker", "warmgw.core.policy", "warmgw.core.prefix",
    "warmgw.core.profile", "warmgw.core.ramp", "warmgw.core.registry",
    "warmgw.core.routable", "warmgw.core.routing", "warmgw.core.shapes",
    "warmgw.core.spread", "warmgw.core.stats", "warmgw.core.telemetry", "warmgw.core.warm",
)
GROUP = "warmgw._native"  # the shared library's module: warmgw/_native__mypyc*.so
ROOT = Path(__file__).resolve().parent.parent  # where "warmgw/..." paths start


def source(module: str, root: Path = ROOT) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def extension(module: str, root: Path = ROOT) -> Path | None:
    """The module's compiled extension beside its source, if there is one."""
    src = source(module, root)
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        p = src.with_suffix(suffix)
        if p.exists():
            return p
    return None


def compiled() -> list[str]:
    """The MODULES that run compiled in this process (imports them)."""
    out = []
    for name in MODULES:
        f = getattr(importlib.import_module(name), "__file__", None) or ""
        if not f.endswith(".py"):
            out.append(name)
    return out


def stale(root: Path = ROOT) -> list[str]:
    """The MODULES whose extension is older than their source: the old code would run."""
    out = []
    for name in MODULES:
        ext = extension(name, root)
        if ext is not None and ext.stat().st_mtime < source(name, root).stat().st_mtime:
            out.append(name)
    return out


def describe() -> str:
    """One line for the log: what runs compiled."""
    n = len(compiled())
    if n == len(MODULES):
        return f"request path compiled (mypyc, {n} modules)"
    if n == 0:
        return ("request path interpreted (not compiled: built with WARMGW_BUILD_NATIVE=0 "
                "or without a C compiler; about a third more CPU a request)")
    return f"request path partly compiled ({n} of {len(MODULES)} modules)"
