from __future__ import annotations

import pytest

from tests.epp.envoy import find_envoy

ENVOY = find_envoy()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if ENVOY is not None:
        return
    skip = pytest.mark.skip(reason="no envoy binary: run scripts/install-envoy.sh (CI does), "
                                   "or set WARMGW_ENVOY")
    for item in items:
        if "tests/epp/" in str(item.fspath):
            item.add_marker(skip)
