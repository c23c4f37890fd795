"""The parameters of the discovery sources (config sections discovery.kubernetes and
discovery.dns), read and checked by warmgw.config."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class KubeParams:
    namespace: str | None = None  # None: the gateway pod's own (in-cluster), else default
    label_selector: str = "app=vllm"
    pool_label: str = "warmgw.io/pool"
    port: int = 8000
    model: str | None = None  # None: learn it from /v1/models
    kubeconfig: str | None = None  # None: in-cluster service account
    readiness_gate: bool = True
    lease_duration: int = 15
    watch_timeout: int = 300
    policy_configmap: str = "warmgw-policy"
    identity: str | None = None  # None: $POD_NAME, or the host name
    # pods: the pods label_selector picks; endpointslices: the endpoints of the slices of
    # `service` and/or `slice_selector` (then label_selector picks the pods watched for
    # the readiness gate), on the slice port named port_name (None: the first)
    source: str = "pods"
    service: str | None = None
    slice_selector: str | None = None
    port_name: str | None = None
    # an InferencePool's name: its selector and target port replace label_selector and port
    inference_pool: str | None = None
    # an HTTPRoute whose backendRefs weigh InferencePools: the admin API's /route switch
    http_route: str | None = None

    @property
    def slice_labels(self) -> str:
        named = f"kubernetes.io/service-name={self.service}" if self.service else None
        return ",".join(s for s in (named, self.slice_selector) if s)


@dataclass(frozen=True, slots=True)
class DnsParams:
    """discovery.dns: the A, AAAA or SRV records of `name`, resolved every interval s."""

    name: str | None = None
    type: str = "A"
    port: int = 8000  # for A/AAAA; SRV records carry their own
    interval: float = 5.0
    timeout: float = 2.0  # s per lookup
    pool: str = "default"
    model: str | None = None
    nameserver: str | None = None  # "ip" or "ip:port"; None: the system's (resolv.conf)
