"""The tests run on uvloop, as the gateway does in production (`warmgw serve`): its
transports differ from asyncio's in ways a protocol can trip over."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import uvloop

from warmgw import native


def pytest_configure(config: pytest.Config) -> None:
    stale = native.stale()
    if stale:  # the tests would run the old code
        pytest.exit(f"compiled modules are older than their source ({', '.join(stale)}): "
                    "`make native` builds them again (WARMGW_BUILD_NATIVE=0 make native: "
                    "none)", returncode=2)


def pytest_report_header(config: pytest.Config) -> str:
    return f"warmgw: {native.describe()}"


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> Mapping[str, Any]:
    return {"uvloop": uvloop.new_event_loop}
