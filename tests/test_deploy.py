"""deploy/: the Kubernetes manifests, the Dockerfile and the Grafana dashboard.

No cluster and no kubectl are needed: a small loader renders each kustomization (it
follows `resources:` and nothing else, and refuses a kustomization that uses more), and
every object is parsed with the official client's models, strictly (a field the model
does not know, e.g. a typo, fails). Then the invariants that make the pieces fit: RBAC,
probes, labels and selectors, the gateway's own config, shutdown timing, the dashboard's
metric names. Last, the real gateway runs with the shipped config.yaml against the fake
API server (tests/k8s), on pods built from the shipped vLLM templates, and every request
it makes is checked against the shipped Role, as the API server's RBAC authorizer would.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from kubernetes import client

from tests.helpers import FAST_WARMUP, wait_for
from tests.k8s.fake_apiserver import (
    CONFIGMAPS,
    HTTPROUTES,
    INFERENCEPOOLS,
    LEASES,
    FakeApiServer,
)
from tests.k8s.fake_cluster import normalize
from tests.k8s.fake_pods import make_pod
from warmgw import metrics
from warmgw.app import Gateway
from warmgw.config import Config, parse
from warmgw.core.lifecycle import State
from warmgw.policy.codec import decode
from warmgw.policy.configmap import KEY
from warmgw.sim import SimConfig, SimFleet

JSON = dict[str, Any]
ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
GATEWAY = DEPLOY / "gateway"
VLLM = DEPLOY / "vllm"
EPP = DEPLOY / "epp"
DASHBOARD = DEPLOY / "grafana" / "warmgw-dashboard.json"
EXAMPLES = {GATEWAY / "admin-secret.example.yaml"}  # parsed, deliberately not applied
GATE = "warmgw.io/warmed"

# The Role, rule by rule: (apiGroup, resource, verbs, resourceNames). Exactly this.
EXPECTED_RULES = {
    ("", "pods", ("get", "list", "watch"), ()),
    ("", "pods/status", ("patch",), ()),
    ("coordination.k8s.io", "leases", ("create", "get", "update"), ()),
    ("", "configmaps", ("get", "list", "update", "watch"), ("warmgw-policy",)),
}
CUSTOM = {"InferencePool": INFERENCEPOOLS, "HTTPRoute": HTTPROUTES}
# Granted but not called by the gateway today (list/watch expose the same pods).
GRANTED_UNUSED = {("", "pods", "get")}


# -- rendering ---------------------------------------------------------------------------


def render(directory: Path) -> list[JSON]:
    """What `kubectl apply -k directory` would send, for kustomizations that only list
    resources (files or directories holding a kustomization)."""
    kfile = directory / "kustomization.yaml"
    k = yaml.safe_load(kfile.read_text())
    unsupported = set(k) - {"apiVersion", "kind", "resources"}
    assert not unsupported, f"{kfile}: the test's loader does not implement {unsupported}"
    assert k["kind"] == "Kustomization"
    objects: list[JSON] = []
    for entry in k.get("resources") or []:
        target = (directory / entry).resolve()
        assert target.is_relative_to(DEPLOY) and target.exists(), f"{kfile}: {entry}"
        if target.is_dir():
            objects += render(target)
        else:
            objects += [d for d in yaml.safe_load_all(target.read_text()) if d is not None]
    ids = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(ids) == len(set(ids)), f"{kfile}: an object is listed twice: {ids}"
    return objects


def manifest_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*.yaml") if p.name != "kustomization.yaml")


def load_file(path: Path) -> list[JSON]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def find(objects: list[JSON], kind: str, name: str | None = None) -> list[JSON]:
    return [o for o in objects
            if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[JSON], kind: str, name: str | None = None) -> JSON:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


API = client.ApiClient()


def model_class(obj: JSON) -> str:
    version = obj["apiVersion"].split("/")[-1]
    return version[0].upper() + version[1:] + obj["kind"]


def differences(a: Any, b: Any, where: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = [f"{where}.{k}: not a field of the model" for k in a if k not in b]
        out += [f"{where}.{k}: added" for k in b if k not in a]
        for k in a.keys() & b.keys():
            out += differences(a[k], b[k], f"{where}.{k}")
        return out
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True))
                for d in differences(x, y, f"{where}[{i}]")]
    if a != b or type(a) is not type(b):
        return [f"{where}: {a!r} reads back as {b!r}"]
    return []


def parse_strictly(obj: JSON) -> Any:
    """The official client's model of obj; it must read back unchanged, so no field was
    unknown (the models drop those silently) and no value had the wrong type."""
    cls = model_class(obj)
    assert hasattr(client, cls), f"no model {cls} for {obj['apiVersion']} {obj['kind']}"
    model = API.deserialize(json.dumps(obj), cls, "application/json")
    back = API.sanitize_for_serialization(model)
    bad = differences(obj, back, f"{obj['kind']}/{obj['metadata']['name']}")
    assert not bad, bad
    return model


# -- small Kubernetes semantics ------------------------------------------------------------


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """A label selector string (=, ==, !=, key, !key; set-based ones are refused)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        assert " in " not in term and "notin" not in term, f"not implemented: {term}"
        if "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            ok = labels.get(key) != value
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            ok = labels.get(key) == value
        elif term.startswith("!"):
            ok = term[1:] not in labels
        else:
            ok = term in labels
        if not ok:
            return False
    return True


def match_labels(selector: JSON, labels: dict[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"only matchLabels is checked here: {selector}"
    want = selector["matchLabels"]
    return bool(want) and all(labels.get(k) == v for k, v in want.items())


def container(deployment: JSON) -> JSON:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def port_number(c: JSON, port: int | str) -> int:
    """A probe's or Service's target port, by name or number, as the container declares it."""
    for p in c.get("ports", []):
        if port in (p["containerPort"], p.get("name")):
            return int(p["containerPort"])
    raise AssertionError(f"container {c['name']} declares no port {port!r}")


def env_of(c: JSON) -> dict[str, JSON]:
    return {e["name"]: e for e in c.get("env", [])}


def prestop_sleep(c: JSON) -> int:
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    return int(command[1])


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gateway_objects() -> list[JSON]:
    return render(GATEWAY)


@pytest.fixture(scope="module")
def vllm_objects() -> list[JSON]:
    return render(VLLM)


@pytest.fixture(scope="module")
def config_text(gateway_objects: list[JSON]) -> str:
    return str(one(gateway_objects, "ConfigMap", "warmgw-config")["data"]["config.yaml"])


@pytest.fixture(scope="module")
def cfg(config_text: str) -> Config:
    return parse(yaml.safe_load(config_text), source="deploy/gateway/config.yaml")


@pytest.fixture(scope="module")
def gateway(gateway_objects: list[JSON]) -> JSON:
    return one(gateway_objects, "Deployment", "warmgw")


# -- every manifest -------------------------------------------------------------------------


def test_every_manifest_is_rendered_or_a_declared_example() -> None:
    rendered = {json.dumps(o, sort_keys=True)
                for o in render(GATEWAY) + render(VLLM) + render(EPP)}
    for path in manifest_files():
        for obj in load_file(path):
            applied = json.dumps(obj, sort_keys=True) in rendered
            assert applied != (path in EXAMPLES), f"{path}: applied={applied}"
    for sub in ("blue", "green"):
        assert render(VLLM / sub) == find(render(VLLM), "Deployment", f"vllm-{sub}")


@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_manifest_parses_with_the_official_models(path: Path) -> None:
    objects = load_file(path)
    assert objects
    for obj in objects:
        if obj["kind"] in CUSTOM:  # no client model: the CRD's schema, as the fake checks it
            kind = CUSTOM[obj["kind"]]
            assert obj["apiVersion"] == kind.api_version
            normalize(kind, json.loads(json.dumps({k: v for k, v in obj.items()
                                                   if k not in ("apiVersion", "kind")})))
        else:
            parse_strictly(obj)
        assert "namespace" not in obj["metadata"], "the manifests are namespace-agnostic"


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
@pytest.mark.parametrize("directory", [GATEWAY, VLLM, VLLM / "blue", VLLM / "green", EPP],
                         ids=lambda p: str(p.relative_to(DEPLOY)))
def test_loader_agrees_with_kubectl_kustomize(directory: Path) -> None:
    try:
        out = subprocess.run(["kubectl", "kustomize", str(directory)], capture_output=True,
                             text=True, timeout=60, check=True).stdout
    except (subprocess.SubprocessError, OSError) as e:
        pytest.skip(f"kubectl kustomize unusable here: {e}")
    theirs = sorted(json.dumps(d, sort_keys=True) for d in yaml.safe_load_all(out) if d)
    assert theirs == sorted(json.dumps(d, sort_keys=True) for d in render(directory))


# -- RBAC -----------------------------------------------------------------------------------


def test_role_grants_exactly_what_the_gateway_needs(gateway_objects: list[JSON],
                                                    cfg: Config) -> None:
    role = one(gateway_objects, "Role", "warmgw")
    rules = set()
    for r in role["rules"]:
        assert set(r) <= {"apiGroups", "resources", "verbs", "resourceNames"}, r
        for group in r["apiGroups"]:
            for resource in r["resources"]:
                rules.add((group, resource, tuple(sorted(r["verbs"])),
                           tuple(r.get("resourceNames", ()))))
    assert rules == EXPECTED_RULES
    flat = json.dumps(role["rules"])
    assert "*" not in flat and "endpointslices" not in flat and "secrets" not in flat
    for _group, resource, verbs, names in rules:
        if resource == "configmaps":
            assert names == (cfg.kubernetes.policy_configmap,), "restricted by resourceNames"
            assert "create" not in verbs, "create cannot be restricted by name: not granted"
    assert not find(gateway_objects, "ClusterRole") and not find(gateway_objects,
                                                                 "ClusterRoleBinding")


def test_role_is_bound_to_the_gateways_service_account(gateway_objects: list[JSON],
                                                       gateway: JSON) -> None:
    binding = one(gateway_objects, "RoleBinding", "warmgw")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": "warmgw"}
    account = gateway["spec"]["template"]["spec"]["serviceAccountName"]
    one(gateway_objects, "ServiceAccount", account)
    # no namespace: in a RoleBinding that means the binding's own namespace
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account}]


# -- the gateway's config and the objects it uses --------------------------------------------


def test_gateway_config_is_valid_for_the_real_gateway(cfg: Config) -> None:
    kube = cfg.kubernetes
    assert kube is not None
    assert kube.kubeconfig is None, "in-cluster auth"
    assert kube.identity is None, "the identity comes from $POD_NAME"
    assert cfg.admin.token is None, "the token comes from the Secret, not the ConfigMap"
    assert kube.namespace == "default", "change README and test together with it"
    assert (kube.label_selector, kube.pool_label, kube.port) == ("app=vllm", "warmgw.io/pool",
                                                                 8000)
    assert kube.readiness_gate
    assert cfg.active_pool == "blue"
    assert cfg.listen.host == "0.0.0.0" and cfg.admin.host == "0.0.0.0"
    assert (cfg.listen.port, cfg.admin.port) == (8000, 8001)


def test_policy_configmap_is_shipped_without_a_policy(gateway_objects: list[JSON],
                                                      cfg: Config) -> None:
    assert cfg.kubernetes is not None
    name = cfg.kubernetes.policy_configmap
    cm = one(gateway_objects, "ConfigMap", name)
    # the labels the gateway itself writes (policy.configmap.ConfigMapStore.save)
    assert cm["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "warmgw",
                                        "warmgw.io/policy": name}
    # no policy.json: a later `kubectl apply -k` must never overwrite a cutover
    assert KEY not in (cm.get("data") or {})


def test_gateway_deployment(gateway: JSON, gateway_objects: list[JSON], cfg: Config) -> None:
    spec = gateway["spec"]
    pod = spec["template"]["spec"]
    labels = spec["template"]["metadata"]["labels"]
    assert match_labels(spec["selector"], labels)
    assert spec["replicas"] == 2
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    c = container(gateway)
    assert c["image"] == "warmgw:latest"
    assert "command" not in c and "args" not in c, "the image's ENTRYPOINT and CMD run"
    assert port_number(c, "http") == cfg.listen.port
    assert port_number(c, "admin") == cfg.admin.port

    probes = {k: c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")}
    assert {k: p["httpGet"]["path"] for k, p in probes.items()} == {
        "startupProbe": "/healthz", "readinessProbe": "/readyz", "livenessProbe": "/healthz"}
    for p in probes.values():
        assert port_number(c, p["httpGet"]["port"]) == cfg.listen.port
    assert probes["livenessProbe"]["initialDelaySeconds"] >= 30

    annotations = spec["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == cfg.listen.port
    assert annotations["prometheus.io/path"] == "/metrics"

    grace = pod["terminationGracePeriodSeconds"]
    assert grace > prestop_sleep(c) + cfg.listen.shutdown_timeout

    env = env_of(c)
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    ref = env["WARMGW_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert not ref.get("optional"), "no token, no start: never an open admin API"
    (secret,) = load_file(GATEWAY / "admin-secret.example.yaml")
    assert secret["metadata"]["name"] == ref["name"] and ref["key"] in secret["stringData"]
    assert "REPLACE" in secret["stringData"][ref["key"]]
    assert not find(gateway_objects, "Secret"), "the placeholder Secret is never applied"

    volumes = {v["name"]: v for v in pod["volumes"]}
    (mount,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/etc/warmgw"]
    config_map = volumes[mount["name"]]["configMap"]["name"]
    assert "config.yaml" in one(gateway_objects, "ConfigMap", config_map)["data"]

    requests, limits = c["resources"]["requests"], c["resources"]["limits"]
    assert {"cpu", "memory"} <= set(requests) and {"cpu", "memory"} <= set(limits)

    sc, psc = c["securityContext"], pod["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]

    terms = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    (term,) = terms
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert match_labels(term["podAffinityTerm"]["labelSelector"], labels)


def test_services_and_pdb_select_the_gateway_pods(gateway: JSON, gateway_objects: list[JSON],
                                                  cfg: Config) -> None:
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    c = container(gateway)
    proxy, admin = one(gateway_objects, "Service", "warmgw"), one(gateway_objects, "Service",
                                                                  "warmgw-admin")
    for svc in (proxy, admin):
        selector = svc["spec"]["selector"]
        assert selector and all(labels.get(k) == v for k, v in selector.items())
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP"
    (p,) = proxy["spec"]["ports"]
    assert p["port"] == 80 and port_number(c, p["targetPort"]) == cfg.listen.port
    (a,) = admin["spec"]["ports"]
    assert port_number(c, a["targetPort"]) == cfg.admin.port == a["port"]
    pdb = one(gateway_objects, "PodDisruptionBudget", "warmgw")
    assert pdb["spec"]["minAvailable"] == 1
    assert match_labels(pdb["spec"]["selector"], labels)


def test_the_gateway_does_not_discover_itself(gateway: JSON, cfg: Config) -> None:
    assert cfg.kubernetes is not None
    labels = gateway["spec"]["template"]["metadata"]["labels"]
    assert not selector_matches(cfg.kubernetes.label_selector, labels)


def test_dockerfile_runs_the_config_the_deployment_mounts(gateway: JSON) -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    directives = {}
    for line in re.sub(r"\\\n", " ", text).splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            directives.setdefault(word.upper(), []).append(rest.strip())
    assert json.loads(directives["ENTRYPOINT"][-1]) == ["warmgw"]
    cmd = json.loads(directives["CMD"][-1])
    assert cmd[:2] == ["serve", "--config"]
    c = container(gateway)
    mounted = {m["mountPath"] + "/config.yaml" for m in c["volumeMounts"]}
    assert cmd[2] in mounted
    user = directives["USER"][-1].split(":")[0]
    uid = gateway["spec"]["template"]["spec"]["securityContext"]["runAsUser"]
    assert user.isdigit() and int(user) == uid != 0
    assert any("pip install" in r for r in directives["RUN"])


# -- the vLLM pools --------------------------------------------------------------------------


def test_vllm_pods_are_what_the_gateway_discovers(vllm_objects: list[JSON], cfg: Config) -> None:
    kube = cfg.kubernetes
    assert kube is not None
    deployments = find(vllm_objects, "Deployment")
    pools = {}
    for d in deployments:
        labels = d["spec"]["template"]["metadata"]["labels"]
        assert match_labels(d["spec"]["selector"], labels), d["metadata"]["name"]
        assert selector_matches(kube.label_selector, labels), d["metadata"]["name"]
        pools[labels[kube.pool_label]] = d
        c = container(d)
        assert port_number(c, "http") == kube.port
    assert set(pools) == {"blue", "green"} and cfg.active_pool in pools
    assert {p: d["metadata"]["name"] for p, d in pools.items()} == {
        "blue": "vllm-blue", "green": "vllm-green"}


@pytest.mark.parametrize("pool", ["blue", "green"])
def test_vllm_deployment(vllm_objects: list[JSON], cfg: Config, pool: str) -> None:
    assert cfg.kubernetes is not None
    d = one(vllm_objects, "Deployment", f"vllm-{pool}")
    spec = d["spec"]
    pod = spec["template"]["spec"]
    assert {"conditionType": GATE} in pod["readinessGates"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
    assert spec["replicas"] == 2
    c = container(d)
    assert c["image"].startswith("vllm/vllm-openai:")
    assert any(a.startswith("--model") for a in c["args"])
    for kind in ("startupProbe", "readinessProbe"):
        probe = c[kind]
        assert probe["httpGet"]["path"] == "/health"
        assert port_number(c, probe["httpGet"]["port"]) == cfg.kubernetes.port
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "model load time"
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"

    volumes = {v["name"]: v for v in pod["volumes"]}
    env = env_of(c)
    for var in ("CUDA_CACHE_PATH", "VLLM_CACHE_ROOT"):
        path = env[var]["value"]
        (mount,) = [m for m in c["volumeMounts"]
                    if path == m["mountPath"] or path.startswith(m["mountPath"] + "/")]
        host = volumes[mount["name"]]["hostPath"]
        assert host["type"] == "DirectoryOrCreate", f"{var} must survive pod restarts"
    assert env["CUDA_CACHE_PATH"]["value"] == "/cache/cuda"
    assert pod["terminationGracePeriodSeconds"] > prestop_sleep(c)


def test_green_is_blue_in_another_colour(vllm_objects: list[JSON]) -> None:
    blue = one(vllm_objects, "Deployment", "vllm-blue")
    green = one(vllm_objects, "Deployment", "vllm-green")
    recoloured = json.loads(json.dumps(blue).replace("blue", "green"))
    for d in (recoloured, green):  # what a rollout changes: the version it serves
        c = container(d)
        c.pop("image")
        c.pop("args")
    assert recoloured == green


# -- the Grafana dashboard ---------------------------------------------------------------------

FAMILY_CALLS = {"CounterMetricFamily": "counter", "GaugeMetricFamily": "gauge",
                "HistogramMetricFamily": "histogram", "_histogram": "histogram",
                "_counter": "counter"}
SCRAPE_LABELS = {"instance", "job", "namespace", "pod"}
LOOP_STEP_FAMILIES = {"warmgw_loop_step_max_cpu_seconds", "warmgw_loop_steps"}


def metric_families() -> dict[str, tuple[str, set[str]]]:
    """Every family warmgw/metrics.py exposes: name -> (type, labels), read from its source."""
    tree = ast.parse(Path(metrics.__file__).read_text())
    out: dict[str, tuple[str, set[str]]] = {}
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        fn = node.func.id if isinstance(node.func, ast.Name) else getattr(node.func, "attr", "")
        if fn not in FAMILY_CALLS or not node.args:
            continue
        first = node.args[0]
        if not (isinstance(first, ast.Constant) and str(first.value).startswith("warmgw_")):
            continue
        labels_node = next((k.value for k in node.keywords if k.arg == "labels"), None)
        if fn in ("_histogram", "_counter"):  # metrics.py's helpers: labels third
            labels_node = node.args[2]
        labels = set(ast.literal_eval(labels_node)) if labels_node is not None else set()
        out[first.value] = (FAMILY_CALLS[fn], labels)
    return out


def exposed_series() -> dict[str, tuple[str, set[str]]]:
    """Series names as Prometheus stores them -> (family, labels)."""
    out = {}
    for name, (kind, labels) in metric_families().items():
        if kind == "counter":
            out[name + "_total"] = (name, labels)
        elif kind == "gauge":
            out[name] = (name, labels)
        else:
            out[name + "_bucket"] = (name, labels | {"le"})
            out[name + "_sum"] = (name, labels)
            out[name + "_count"] = (name, labels)
    return out


def dashboard_queries(dash: JSON) -> Iterator[tuple[str, str, str]]:
    """(where, expr, legend) for every PromQL the dashboard runs."""
    def panels(items: list[JSON]) -> Iterator[JSON]:
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash["panels"]):
        for t in p.get("targets", []):
            yield p["title"], t["expr"], t.get("legendFormat", "")
    for a in dash["annotations"]["list"]:
        if "expr" in a:
            yield f"annotation {a['name']}", a["expr"], a.get("titleFormat", "")
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            yield f"variable {v['name']}", v["query"]["query"], ""


def test_dashboard_is_valid_grafana_json() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert 36 <= dash["schemaVersion"] <= 41
    assert dash["uid"] and dash["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = []
    for p in dash["panels"]:
        ids.append(p["id"])
        assert {"x", "y", "w", "h"} <= set(p["gridPos"]) and p["gridPos"]["x"] + \
            p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"], p["title"]
    assert len(ids) == len(set(ids))
    assert any(a.get("name") == "Cutovers" and "warmgw_cutovers_total" in a["expr"]
               for a in dash["annotations"]["list"])


def test_dashboard_uses_only_metrics_the_gateway_exports() -> None:
    dash = json.loads(DASHBOARD.read_text())
    series = exposed_series()
    used_families = set()
    for where, expr, legend in dashboard_queries(dash):
        names = set(re.findall(r"\bwarmgw_[a-z_]+", expr))
        assert names, f"{where}: {expr}"
        unknown = names - set(series)
        assert not unknown, f"{where}: {sorted(unknown)} are not exported by warmgw/metrics.py"
        labels = set().union(*(series[n][1] for n in names)) | SCRAPE_LABELS
        for name, body in re.findall(r"\b(warmgw_[a-z_]+)\{([^}]*)\}", expr):
            for label in re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", body):
                assert label in series[name][1], f"{where}: {name} has no label {label}"
        for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
            for label in filter(None, (s.strip() for s in group.split(","))):
                assert label in labels, f"{where}: no label {label} in {expr}"
        for label in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
            assert label in labels, f"{where}: legend {{{{{label}}}}} is no label of {names}"
        used_families |= {series[n][0] for n in names}
    assert used_families == set(metric_families()), "every exported family has a panel"


def test_metric_families_read_from_the_source_are_complete() -> None:
    families = metric_families()
    assert {"warmgw_requests", "warmgw_request_ttfb_seconds", "warmgw_replica_state",
            "warmgw_pool_share", "warmgw_cutover_in_progress"} <= set(families)
    assert families["warmgw_requests"] == ("counter", {"pool", "replica", "route", "code"})
    assert families["warmgw_warmup_duration_seconds"] == ("histogram", set())


# -- the real gateway, the shipped config and Role, against the fake API server -----------------


def request_attributes(method: str, path: str, query: dict[str, str]) -> tuple[str, ...]:
    """(apiGroup, resource[/subresource], verb, name) as the API server's RequestInfo
    resolver derives them; list and watch take the name from fieldSelector=metadata.name."""
    parts = path.strip("/").split("/")
    if parts[0] == "api":
        group, rest = "", parts[2:]
    elif parts[0] == "apis":
        group, rest = parts[1], parts[3:]
    else:
        return ("", path, "non-resource", "")
    if rest[:1] == ["namespaces"] and len(rest) >= 3:
        rest = rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    name = rest[1] if len(rest) > 1 else ""
    watch = str(query.get("watch", "")).lower() in ("true", "1")
    verb = {"POST": "create", "PUT": "update", "PATCH": "patch",
            "DELETE": "delete" if name else "deletecollection"}.get(method, "")
    if method == "GET":
        verb = "get" if name else ("watch" if watch else "list")
    if verb in ("list", "watch"):
        selector = query.get("fieldSelector", "").replace("==", "=")
        if selector.startswith("metadata.name=") and "," not in selector:
            name = selector.split("=", 1)[1]
    return (group, resource, verb, name)


def allowed(rules: list[JSON], group: str, resource: str, verb: str, name: str) -> bool:
    return any(group in r["apiGroups"] and resource in r["resources"] and verb in r["verbs"]
               and (not r.get("resourceNames") or name in r["resourceNames"]) for r in rules)


def pod_from_template(deployment: JSON, suffix: str, host: str, port: int,
                      namespace: str) -> JSON:
    template = deployment["spec"]["template"]
    gates = [g["conditionType"] for g in template["spec"].get("readinessGates", [])]
    return make_pod(f"{deployment['metadata']['name']}-{suffix}", template["metadata"]["labels"],
                    host, port, namespace=namespace, containers_ready=True,
                    readiness_gates=gates)


def condition(server: FakeApiServer, ns: str, name: str, type_: str) -> str | None:
    pod = server.get("pods", ns, name) or {}
    return next((c["status"] for c in pod.get("status", {}).get("conditions", [])
                 if c["type"] == type_), None)


async def test_the_gateway_needs_no_more_than_the_role_grants(
        tmp_path: Path, config_text: str, gateway_objects: list[JSON],
        vllm_objects: list[JSON]) -> None:
    raw = yaml.safe_load(config_text)
    kube = raw["discovery"]["kubernetes"]
    ns, policy_name = kube["namespace"], kube["policy_configmap"]
    role = one(gateway_objects, "Role", "warmgw")
    policy_cm = one(gateway_objects, "ConfigMap", policy_name)
    token = "admin-token"
    sim = SimConfig(ttft_base=0.003, itl=0.001, cold_shape_penalty=0.05)
    async with FakeApiServer() as server, SimFleet(sim, replicas=2, distinct_hosts=True,
                                                   host="127.0.0.31") as fleet:
        port = fleet.replicas[0].port
        server.cluster.create(CONFIGMAPS, ns, json.loads(json.dumps(policy_cm)))
        pods = {}
        for pool, sim_replica in zip(("blue", "green"), fleet.replicas, strict=True):
            pod = pod_from_template(one(vllm_objects, "Deployment", f"vllm-{pool}"),
                                    "7d4b9c6f5-x2k4p", sim_replica.host, port, ns)
            server.add_pod(pod)
            pods[pool] = pod["metadata"]["name"]
        # a warmup Lease left by a gateway pod that is gone: taken over with an update
        server.cluster.create(LEASES, ns, {
            "metadata": {"name": f"warmgw-warm-{pods['green']}"},
            "spec": {"holderIdentity": "warmgw-gone", "leaseDurationSeconds": 15,
                     "acquireTime": "2020-01-01T00:00:00.000000Z",
                     "renewTime": "2020-01-01T00:00:00.000000Z", "leaseTransitions": 0}})
        server.clear_requests()

        kube.update(kubeconfig=str(server.write_kubeconfig(tmp_path / "kubeconfig")),
                    port=port, identity="warmgw-test-0", watch_timeout=5, lease_duration=3)
        raw["listen"].update(host="127.0.0.1", port=0)
        raw["admin"].update(host="127.0.0.1", port=0, token=token)
        raw.update(warmup=FAST_WARMUP, health={"interval": 0.2, "timeout": 1.0},
                   ramp={"doubling_time": 0.2, "initial_weight": 0.2})
        async with Gateway(parse(raw)) as gw:
            def routable() -> bool:
                eps = gw.registry.endpoints
                return all(n in eps and eps[n].state in (State.RAMPING, State.READY)
                           for n in pods.values())

            await wait_for(routable, 30, "both pods warmed")
            for name in pods.values():  # the readiness gate, declared by the templates
                await wait_for(lambda n=name: condition(server, ns, n, "Ready") == "True", 10,
                               f"{name} Ready through {GATE}")
            async with aiohttp.ClientSession() as s:
                for path in ("/healthz", "/readyz", "/metrics"):  # the probes, the scrape
                    async with s.get(gw.url + path) as r:
                        assert r.status == 200, path
                        if path == "/metrics":
                            exposition = await r.text()
                async with s.post(gw.admin_url + "/admin/v1/cutover",
                                  json={"to": "green", "force": True},
                                  headers={"Authorization": f"Bearer {token}"}) as r:
                    assert r.status == 200, await r.text()

            def stored() -> str | None:
                cm = server.get("configmaps", ns, policy_name) or {}
                return (cm.get("data") or {}).get(KEY)

            await wait_for(lambda: stored() is not None, 10, "the policy stored")
            text = stored()
            assert text is not None and decode(text, "test").active == "green"
            await wait_for(lambda: any(c.method == "PUT" and "/leases/" in c.path
                                       for c in server.requests), 10, "a Lease update")

    # None: a watch still open when the server stopped
    assert all(c.status is None or c.status < 500 for c in server.requests)
    puts = [c for c in server.requests if c.method == "PUT" and "/configmaps/" in c.path]
    assert puts and all(c.body["metadata"]["labels"] == policy_cm["metadata"]["labels"]
                        for c in puts)
    used, denied = set(), []
    for c in server.requests:
        group, resource, verb, name = request_attributes(c.method, c.path, c.query)
        if not allowed(role["rules"], group, resource, verb, name):
            denied.append((c.method, c.path, c.query))
        used.add((group, resource, verb))
    assert not denied, f"the shipped Role would refuse: {denied}"
    granted = {(g, res, v) for r in role["rules"] for g in r["apiGroups"]
               for res in r["resources"] for v in r["verbs"]}
    assert granted - used == GRANTED_UNUSED, f"granted but never used: {granted - used}"

    # the families read from metrics.py's source are the ones a live gateway exports
    # (but the event-loop step families, exported only with WARMGW_LOOP_STEPS=1)
    exported = set(re.findall(r"^# TYPE (warmgw_\w+) ", exposition, re.MULTILINE))
    assert exported == {name + "_total" if kind == "counter" else name
                        for name, (kind, _) in metric_families().items()
                        if name not in LOOP_STEP_FAMILIES}
