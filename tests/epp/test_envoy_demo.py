"""`make envoy-demo` runs to its end and says OK (loadtest/envoy_demo.py)."""

from __future__ import annotations

import pytest

from loadtest import envoy_demo


@pytest.mark.timeout(90)
async def test_envoy_demo_runs_and_says_ok(capsys: pytest.CaptureFixture[str]) -> None:
    assert await envoy_demo.main(requests=8, serve=0) == 0
    out = capsys.readouterr().out
    assert "OK: no request failed, none reached blue after the cutover" in out
