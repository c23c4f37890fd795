"""The Kubernetes API client, made on start() (loading a kubeconfig is asynchronous) and
shared by every Kubernetes part: pod and EndpointSlice discovery, the warmup Leases and
readiness gate, the policy's ConfigMap store."""

from __future__ import annotations

import os
import socket
import uuid

from kubernetes.aio import client, config

SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def own_namespace() -> str:
    """The namespace of the gateway's own pod (in-cluster), else "default"."""
    try:
        with open(SA_NAMESPACE) as f:
            return f.read().strip() or "default"
    except OSError:
        return "default"


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"


class KubeApi:
    """The API client, made on start() from a kubeconfig or in-cluster, closed on close()."""

    def __init__(self, kubeconfig: str | None) -> None:
        self.kubeconfig = kubeconfig
        self._client: client.ApiClient | None = None

    async def start(self) -> None:
        if self._client is None:
            self._client = await api_client(self.kubeconfig)

    def __call__(self) -> client.ApiClient:
        if self._client is None:
            raise RuntimeError("the Kubernetes client is used before KubeApi.start()")
        return self._client

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()  # type: ignore[no-untyped-call]
            self._client = None


async def api_client(kubeconfig: str | None) -> client.ApiClient:
    """From a kubeconfig file, or in-cluster (service account) when none is given."""
    cfg = client.Configuration()
    if kubeconfig:
        await config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=cfg
        )
    else:
        config.load_incluster_config(client_configuration=cfg)  # type: ignore[no-untyped-call]
    return client.ApiClient(cfg)
