"""Fixtures: a started FakeApiServer, its kubeconfig, and an official ApiClient on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from kubernetes.aio import client

from .fake_apiserver import FakeApiServer
from .kube_helpers import open_api_client


@pytest.fixture
async def apiserver() -> AsyncIterator[FakeApiServer]:
    async with FakeApiServer() as server:
        yield server


@pytest.fixture
def kubeconfig(apiserver: FakeApiServer, tmp_path: Path) -> Path:
    return apiserver.write_kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
async def api(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    async with open_api_client(kubeconfig) as api_client:
        yield api_client
