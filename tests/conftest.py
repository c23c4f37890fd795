"""The tests run on uvloop, as the gateway does in production (`warmgw serve`): its
transports differ from asyncio's in ways a protocol can trip over."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest
import uvloop


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item
                                  ) -> Mapping[str, Any]:
    return {"uvloop": uvloop.new_event_loop}
