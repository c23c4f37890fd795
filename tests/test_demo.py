"""`warmgw demo` end to end, as a newcomer runs it: in a subprocess, short traffic phase."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(90)
def test_demo_tells_the_story_and_no_user_hits_a_cold_replica() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "warmgw", "demo", "--seconds", "12"],
        cwd=ROOT, capture_output=True, text=True, timeout=80, check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{proc.stderr}"
    for name in ("blue-1", "blue-2", "blue-3", "green-1", "green-2"):
        assert name in out, f"{name} not named\n{out}"
    assert "warming -> ramping" in out
    assert "a new replica joins: blue-3" in out
    assert re.search(r"green-1 +\w+ -> ejected", out), out  # its restart was noticed
    assert "user requests that reached a cold replica: 0" in out
    assert "errors: 0" in out
    assert "Traceback" not in proc.stderr, proc.stderr
