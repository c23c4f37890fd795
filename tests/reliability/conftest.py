"""The `gateway` marker: extra config sections for a test's gateway (see quick_config)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "gateway(**sections): config sections merged into the test's gateway config"
    )
