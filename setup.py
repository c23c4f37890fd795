"""The build: pyproject.toml has the metadata; this compiles the request path with mypyc.

WARMGW_BUILD_NATIVE (default "auto"):
  auto  compile warmgw.native.MODULES with mypyc; if that fails (no C compiler, no Python
        headers), say so and install the pure-Python package, which works the same at
        about a third more CPU a request;
  1     compile, and fail the build if that fails (make native, CI);
  0     do not compile: the pure-Python package.

`make native` builds the extensions in place (setup.py build_ext --inplace) for a
checkout; `pip install .` builds them into the wheel (mypy, which holds mypyc, is a
build requirement in pyproject.toml).
"""

from __future__ import annotations

import os
import runpy
import sys
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
MODE = os.environ.get("WARMGW_BUILD_NATIVE", "auto")
if MODE not in ("auto", "0", "1"):
    sys.exit(f"WARMGW_BUILD_NATIVE must be auto, 0 or 1, not {MODE!r}")
native: dict[str, Any] = runpy.run_path(str(HERE / "warmgw" / "native.py"))
PATHS = [str(Path(*m.split(".")).with_suffix(".py")) for m in native["MODULES"]]


def _extensions() -> list[Any]:
    if MODE == "0":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        if MODE == "1":
            raise
        print("warmgw: mypyc is not installed: building the pure-Python package",
              file=sys.stderr)
        return []
    os.chdir(HERE)  # mypyc takes the paths relative to the project
    try:
        return list(mypycify(PATHS, opt_level="3", group_name=native["GROUP"]))
    except (Exception, SystemExit) as e:  # mypyc exits on a type error it finds
        if MODE == "1":
            raise
        print(f"warmgw: mypyc failed ({e!r}): building the pure-Python package",
              file=sys.stderr)
        return []


def _remove_extensions() -> None:
    """The extensions in the source tree (a failed build's, or WARMGW_BUILD_NATIVE=0's)."""
    for m in [*native["MODULES"], native["GROUP"] + "__mypyc"]:
        path = HERE / Path(*m.split("."))
        for p in path.parent.glob(path.name + ".*.so"):
            p.unlink()


class BuildExt(build_ext):
    """build_ext that, in auto mode, falls back to pure Python if compiling fails (and
    leaves no half of the extensions behind), and marks every extension it put in place
    as new (an unchanged one is not copied again, and would look older than its source)."""

    def run(self) -> None:
        if MODE == "0" and self.inplace:
            _remove_extensions()  # the checkout goes back to pure Python
        try:
            super().run()
        except Exception as e:  # distutils' CompileError, LinkError, a missing compiler
            if MODE == "1":
                raise
            print(f"warmgw: compiling the request path failed ({e}): building the "
                  "pure-Python package", file=sys.stderr)
            self.extensions = []
            _remove_extensions()
            return
        if self.inplace:
            for ext in self.extensions:
                p = HERE / self.get_ext_filename(ext.name)
                if p.exists():
                    os.utime(p)


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
