"""The Helm chart with the real helm binary: lint, render, strict Kubernetes schemas, the properties ops rely on."""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from modelroll.settings import Settings
from tests import helm_tools

CHART = Path(__file__).resolve().parents[2] / "helm" / "modelroll"
VALUE_SETS = ("default", "external-databases", "dependencies", "monitoring")
NEWEST_KUBERNETES = kubernetes_validate.utils.latest_version()
# Kinds kubernetes-validate has no schema for (CRDs); checked by their own tests below.
CUSTOM_KINDS = {"ServiceMonitor"}
PROBES = {  # container -> (port number, liveness path, readiness path): the services' real endpoints
    "router": (8080, "/v2/health/live", "/v2/health/ready"),
    "controller": (8081, "/healthz", "/readyz"),
    "worker": (8082, "/metrics", "/metrics"),
}


@pytest.fixture(scope="module")
def helm() -> Path:
    try:
        return helm_tools.helm_binary()
    except helm_tools.ToolUnavailable as exc:
        pytest.skip(str(exc))


def values_args(name: str) -> list[str]:
    return [] if name == "default" else ["-f", str(CHART / "ci" / f"{name}-values.yaml")]


@functools.cache
def _rendered(helm: Path, name: str, upgrade: bool) -> list[dict[str, Any]]:
    return helm_tools.render(helm, CHART, *values_args(name), *(["--is-upgrade"] if upgrade else []))


def manifests(helm: Path, name: str, upgrade: bool = False) -> list[dict[str, Any]]:
    return copy.deepcopy(_rendered(helm, name, upgrade))


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def workload(docs: list[dict[str, Any]], component: str) -> dict[str, Any]:
    [found] = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "Job")
               and d["metadata"]["labels"].get("app.kubernetes.io/component") == component]
    return found


def pods(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield d["metadata"]["name"], d["spec"]["template"]


def containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


def merged(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Values as helm coalesces them: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        out[key] = merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def kube_floor() -> str:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return re.search(r"(\d+\.\d+\.\d+)", chart["kubeVersion"]).group(1)  # type: ignore[union-attr]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_chart_lints_clean(helm: Path, name: str) -> None:
    result = helm_tools.run_helm(helm, "lint", "--strict", "--kube-version", kube_floor(), str(CHART),
                                 *values_args(name))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("subchart", ["postgresql", "redis"])
def test_in_chart_database_charts_lint_clean_on_their_own(helm: Path, subchart: str) -> None:
    result = helm_tools.run_helm(helm, "lint", "--strict", str(CHART / "charts" / subchart))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("upgrade", [False, True], ids=["install", "upgrade"])
@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_manifest_passes_strict_kubernetes_schemas(helm: Path, name: str, upgrade: bool) -> None:
    docs = manifests(helm, name, upgrade)
    checked = 0
    for doc in docs:
        if doc["kind"] in CUSTOM_KINDS:
            continue
        for version in (kube_floor(), NEWEST_KUBERNETES):
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{doc['kind']}/{doc['metadata']['name']} on Kubernetes {version}: {exc.message} "
                            f"at {'/'.join(map(str, exc.path))}")
        checked += 1
    # Deployments x3, Services x3, ConfigMap, Job at least, whatever the value set.
    assert checked >= 8


def test_strict_validation_refuses_a_misspelt_field(helm: Path) -> None:
    """The validator really is strict: the same check fails on a typo a helm render would let through."""
    deployment = workload(manifests(helm, "default"), "router")
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {"path": "/"}
    with pytest.raises(kubernetes_validate.ValidationError, match="httpGett"):
        kubernetes_validate.validate(deployment, NEWEST_KUBERNETES, strict=True)


BAD_VALUES = [
    ({"controller": {"replicas": "two"}}, "/controller/replicas"),
    ({"controller": {"replicas": 0}}, "/controller/replicas"),
    ({"router": {"autoscaling": {"targetCPUUtilizationPercentage": 150}}},
     "/router/autoscaling/targetCPUUtilizationPercentage"),
    ({"config": {"logLevel": "LOUD"}}, "/config/logLevel"),
    ({"config": {"publicUrl": "modelroll.example.com"}}, "/config/publicUrl"),
    ({"config": {"retentionDays": -1}}, "/config/retentionDays"),
    ({"config": {"extra": {"ROUTER_THREADS": "2"}}}, "'ROUTER_THREADS' does not match pattern"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"routr": {"replicas": 3}}, "'routr'"),
    ({"externalDatabase": {"url": "mysql://db/modelroll"}}, "/externalDatabase/url"),
    ({"router": {"ingress": {"enabled": True, "hosts": []}}}, "/router/ingress/hosts"),
    ({"postgresql": {"auth": {"password": "p@ss/word"}}}, "/auth/password"),
    ({"redis": {"persistance": {"size": "1Gi"}}}, "'persistance'"),
]


@pytest.mark.parametrize(("values", "where"), BAD_VALUES, ids=[w for _, w in BAD_VALUES])
def test_schema_refuses_bad_values_and_names_the_field(helm: Path, tmp_path: Path, values: dict[str, Any],
                                                       where: str) -> None:
    bad = tmp_path / "bad-values.yaml"
    bad.write_text(yaml.safe_dump(values))
    result = helm_tools.run_helm(helm, "lint", "--strict", str(CHART), "-f", str(bad))
    assert result.returncode != 0
    assert where in result.stdout + result.stderr, result.stdout + result.stderr


@pytest.mark.parametrize(("flags", "message"), [
    (["--set", "postgresql.enabled=false"], "externalDatabase.url="),
    (["--set", "redis.enabled=false"], "externalRedis.url="),
    (["--set", "router.autoscaling.minReplicas=5", "--set", "router.autoscaling.maxReplicas=3"],
     "must not exceed router.autoscaling.maxReplicas"),
    (["--set", "controller.replicas=1"], "controller.pdb.minAvailable (1) leaves no controller pod to evict"),
    (["--set", "router.autoscaling.enabled=false", "--set", "router.replicas=1"],
     "router.pdb.minAvailable (1) leaves no router pod to evict"),
])
def test_unworkable_values_fail_with_the_values_to_set(helm: Path, flags: list[str], message: str) -> None:
    result = helm_tools.run_helm(helm, "template", "mr", str(CHART), *flags)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize("name", VALUE_SETS)
def test_pods_run_as_non_root_on_a_read_only_root_filesystem(helm: Path, name: str) -> None:
    for pod_name, pod in pods(manifests(helm, name)):
        spec = pod["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True, pod_name
        assert spec["securityContext"]["runAsUser"] > 0, pod_name
        assert spec["automountServiceAccountToken"] is False, pod_name
        # Service env vars (MODELROLL_ROUTER_PORT=tcp://...) would collide with modelroll's settings.
        assert spec["enableServiceLinks"] is False, pod_name
        for container in containers(pod):
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (pod_name, container["name"])
            assert context["allowPrivilegeEscalation"] is False, (pod_name, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (pod_name, container["name"])
            assert "limits" in container["resources"] and "requests" in container["resources"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_probes_hit_the_services_real_endpoints(helm: Path, name: str) -> None:
    docs = manifests(helm, name)
    for component, (port, live, ready) in PROBES.items():
        [container] = workload(docs, component)["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe, path in (("startupProbe", live), ("livenessProbe", live), ("readinessProbe", ready)):
            get = container[probe]["httpGet"]
            assert (get["path"], ports[get["port"]]) == (path, port), (component, probe)


def test_services_start_with_the_cli_verbs_and_addresses_that_kubernetes_reaches(helm: Path) -> None:
    docs = manifests(helm, "external-databases")
    router = workload(docs, "router")["spec"]["template"]["spec"]["containers"][0]
    controller = workload(docs, "controller")["spec"]["template"]["spec"]["containers"][0]
    worker = workload(docs, "worker")["spec"]["template"]["spec"]["containers"][0]
    migrations = workload(docs, "migrations")["spec"]["template"]["spec"]["containers"][0]
    assert router["args"] == ["router", "--host", "0.0.0.0", "--port", "8080", "--workers", "2"]
    assert controller["args"] == ["controller", "--host", "0.0.0.0", "--port", "8081"]
    assert worker["args"] == ["worker"]
    assert migrations["args"] == ["db", "upgrade"]
    worker_env = {e["name"]: e.get("value") for e in worker["env"]}
    assert (worker_env["MODELROLL_WORKER_HOST"], worker_env["MODELROLL_WORKER_PORT"]) == ("0.0.0.0", "8082")
    assert router["image"] == controller["image"] == ("registry.example.com/ml/modelroll@sha256:"
                                                      "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")


def test_controller_runs_a_leader_and_a_standby_spread_over_nodes(helm: Path) -> None:
    docs = manifests(helm, "default")
    controller = workload(docs, "controller")
    assert controller["spec"]["replicas"] == 2
    affinity = controller["spec"]["template"]["spec"]["affinity"]["podAntiAffinity"]
    term = affinity["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert term["labelSelector"]["matchLabels"] == controller["spec"]["selector"]["matchLabels"]
    [pdb] = [p for p in find(docs, "PodDisruptionBudget") if p["metadata"]["name"].endswith("-controller")]
    assert pdb["spec"] == {"minAvailable": 1, "selector": controller["spec"]["selector"]}


def test_routers_scale_on_cpu_and_keep_a_budget_through_drains(helm: Path) -> None:
    docs = manifests(helm, "default")
    router = workload(docs, "router")
    assert "replicas" not in router["spec"], "the HPA owns the replica count; a fixed one would fight it"
    [hpa] = find(docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": router["metadata"]["name"]}
    [metric] = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu" and metric["resource"]["target"]["type"] == "Utilization"
    assert router["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]
    [pdb] = [p for p in find(docs, "PodDisruptionBudget") if p["metadata"]["name"].endswith("-router")]
    assert pdb["spec"]["selector"] == router["spec"]["selector"]
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    fixed = manifests(helm, "external-databases")
    assert not find(fixed, "HorizontalPodAutoscaler")
    assert workload(fixed, "router")["spec"]["replicas"] == 4


def test_migrations_run_before_new_pods_against_an_external_database(helm: Path) -> None:
    docs = manifests(helm, "monitoring")
    job = workload(docs, "migrations")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    # The chart's own Secret does not exist yet at pre-install: the hook brings its own copy, created first.
    [hook_secret] = [s for s in find(docs, "Secret") if s["metadata"].get("annotations", {}).get("helm.sh/hook")]
    assert hook_secret["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert int(hook_secret["metadata"]["annotations"]["helm.sh/hook-weight"]) < int(
        job["metadata"]["annotations"]["helm.sh/hook-weight"])
    env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MODELROLL_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == hook_secret["metadata"]["name"]
    # Hooks run before the chart's ServiceAccount exists.
    assert "serviceAccountName" not in job["spec"]["template"]["spec"]
    existing = workload(manifests(helm, "external-databases"), "migrations")
    assert existing["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert existing["spec"]["template"]["spec"]["serviceAccountName"] == "modelroll-runtime"
    url = existing["spec"]["template"]["spec"]["containers"][0]["env"][-1]["valueFrom"]["secretKeyRef"]
    assert url == {"name": "modelroll-credentials", "key": "DATABASE_URL"}


def test_migrations_with_the_in_chart_database_wait_for_it_at_install_and_hook_upgrades(helm: Path) -> None:
    install = workload(manifests(helm, "default"), "migrations")
    assert "annotations" not in install["metadata"], "a pre-install hook would wait for a database not created yet"
    assert install["spec"]["template"]["spec"]["initContainers"][0]["name"] == "wait-for-postgresql"
    upgrade = workload(manifests(helm, "default", upgrade=True), "migrations")
    assert upgrade["metadata"]["annotations"]["helm.sh/hook"] == "pre-upgrade"
    assert upgrade["metadata"]["name"] != install["metadata"]["name"], "the install Job may still exist at upgrade"


@pytest.mark.parametrize("name", VALUE_SETS)
def test_references_resolve_to_rendered_or_declared_objects(helm: Path, name: str) -> None:
    docs = manifests(helm, name)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    if name != "default":
        values = merged(values, yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text()))
    secrets = {s["metadata"]["name"] for s in find(docs, "Secret")} | {values["existingSecret"]} | {
        values[db]["auth"].get("existingSecret") for db in ("postgresql", "redis")}
    config_maps = {c["metadata"]["name"] for c in find(docs, "ConfigMap")}
    claims = {c["metadata"]["name"] for c in find(docs, "PersistentVolumeClaim")} | {
        values["artifacts"]["persistence"].get("existingClaim")}
    for pod_name, pod in pods(docs):
        for container in containers(pod):
            defined: set[str] = set()
            for env in container.get("env", []):
                ref = env.get("valueFrom", {}).get("secretKeyRef")
                assert ref is None or ref["name"] in secrets, (pod_name, env)
                for var in re.findall(r"\$\((\w+)\)", env.get("value", "")):
                    assert var in defined, f"{pod_name}: {env['name']} uses $({var}) before it is defined"
                defined.add(env["name"])
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] in config_maps, pod_name
        for volume in pod["spec"].get("volumes", []):
            if "persistentVolumeClaim" in volume:
                assert volume["persistentVolumeClaim"]["claimName"] in claims, pod_name
    for service in find(docs, "Service"):
        selected = [p for _, p in pods(docs)
                    if service["spec"]["selector"].items() <= p["metadata"]["labels"].items()]
        assert selected, f"Service {service['metadata']['name']} selects no pod"
        for port in service["spec"]["ports"]:
            names = {p.get("name") for p in selected[0]["spec"]["containers"][0]["ports"]}
            assert port["targetPort"] in names, (service["metadata"]["name"], port)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_setting_the_chart_passes_is_a_real_modelroll_setting(helm: Path, name: str) -> None:
    docs = manifests(helm, name)
    [config] = [c for c in find(docs, "ConfigMap") if c["metadata"]["name"].endswith("modelroll")]
    given = {k: v for k, v in config["data"].items() if k.startswith("MODELROLL_")}
    for _, pod in pods(docs):
        for container in containers(pod):
            given.update({e["name"]: e.get("value", "") for e in container.get("env", [])
                          if e["name"].startswith("MODELROLL_")})
    fields = {f"MODELROLL_{field.upper()}" for field in Settings.model_fields}
    assert set(given) <= fields, f"not modelroll settings: {sorted(set(given) - fields)}"
    plain = {k[len("MODELROLL_"):].lower(): v for k, v in given.items() if "$(" not in v and v}
    Settings.model_validate(plain)  # the values parse as modelroll reads them
    router = workload(docs, "router")["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["mountPath"] for m in router["volumeMounts"]}
    for writable in ("MODELROLL_HOME", "MODELROLL_ARTIFACTS_DIR", "TMPDIR", "HOME"):
        assert any(config["data"][writable].startswith(m) for m in mounts), f"{writable} is on the read-only root"


@pytest.mark.parametrize(("flags", "url"), [
    ([], "http://mr-modelroll-controller:8081"),
    (["--set", "controller.ingress.enabled=true", "--set", "controller.ingress.hosts[0]=mr.example.com"],
     "http://mr.example.com"),
    (["--set", "controller.ingress.enabled=true", "--set", "controller.ingress.hosts[0]=mr.example.com",
      "--set", "controller.ingress.tls[0].hosts[0]=mr.example.com"], "https://mr.example.com"),
    (["--set", "config.publicUrl=https://ops.example.com/modelroll"], "https://ops.example.com/modelroll"),
])
def test_notification_links_point_where_people_reach_the_status_pages(helm: Path, flags: list[str],
                                                                      url: str) -> None:
    docs = helm_tools.render(helm, CHART, *flags)
    [config] = [c for c in find(docs, "ConfigMap") if c["metadata"]["name"].endswith("modelroll")]
    assert config["data"]["MODELROLL_PUBLIC_URL"] == url


def test_in_chart_databases_are_wired_to_their_own_services_and_secrets(helm: Path) -> None:
    docs = manifests(helm, "dependencies")
    services = {s["metadata"]["name"]: {p["port"] for p in s["spec"]["ports"]} for s in find(docs, "Service")}
    env = {e["name"]: e for e in workload(docs, "router")["spec"]["template"]["spec"]["containers"][0]["env"]}
    db = re.fullmatch(r"postgresql\+psycopg://rollouts:\$\(POSTGRESQL_PASSWORD\)@([\w-]+):(\d+)/rollouts",
                      env["MODELROLL_DATABASE_URL"]["value"])
    assert db and int(db.group(2)) in services[db.group(1)]
    redis = re.fullmatch(r"redis://:\$\(REDIS_PASSWORD\)@([\w-]+):(\d+)/0", env["MODELROLL_REDIS_URL"]["value"])
    assert redis and int(redis.group(2)) in services[redis.group(1)]
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "modelroll-redis-password"
    [pg_secret] = find(docs, "Secret", "mr-postgresql")
    assert pg_secret["data"]["password"] == "czNjcmV0LVBhc3N3MHJk"  # base64 of the given s3cret-Passw0rd
    assert env["POSTGRESQL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mr-postgresql"
    assert not find(docs, "Secret", "mr-redis"), "an existing Redis secret replaces the generated one"
    claims = {s["metadata"]["name"]: s["spec"]["volumeClaimTemplates"][0]["spec"] for s in find(docs, "StatefulSet")}
    assert claims["mr-postgresql"]["storageClassName"] == "fast-ssd"
    assert claims["mr-redis"]["storageClassName"] == ""
    assert "--requirepass" in workload(docs, "cache")["spec"]["template"]["spec"]["containers"][0]["args"]


def test_external_databases_render_no_database_pods_and_no_chart_secret(helm: Path) -> None:
    docs = manifests(helm, "external-databases")
    assert not find(docs, "StatefulSet")
    assert not find(docs, "Secret"), "existingSecret replaces every chart-made Secret"
    assert not find(docs, "PersistentVolumeClaim") and not find(docs, "ServiceAccount")
    env = {e["name"]: e for e in workload(docs, "controller")["spec"]["template"]["spec"]["containers"][0]["env"]}
    redis_ref = env["MODELROLL_REDIS_URL"]["valueFrom"]["secretKeyRef"]
    assert redis_ref == {"name": "modelroll-credentials", "key": "REDIS_URL"}
    assert env["MODELROLL_ADMIN_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    hosts = {i["spec"]["rules"][0]["host"] for i in find(docs, "Ingress")}
    assert hosts == {"infer.example.com", "modelroll.example.com"}


def test_service_monitor_scrapes_metrics_of_routers_controllers_and_workers(helm: Path) -> None:
    docs = manifests(helm, "monitoring")
    [monitor] = find(docs, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    selector = monitor["spec"]["selector"]["matchLabels"]
    ports = {e["port"] for e in monitor["spec"]["endpoints"]}
    assert {e["path"] for e in monitor["spec"]["endpoints"]} == {"/metrics"}
    scraped = {s["metadata"]["labels"]["app.kubernetes.io/component"] for s in find(docs, "Service")
               if selector.items() <= s["metadata"]["labels"].items()
               and {p["name"] for p in s["spec"]["ports"]} & ports}
    assert scraped == {"router", "controller", "worker"}
    assert not find(manifests(helm, "default"), "ServiceMonitor")


def test_notes_tell_how_to_reach_the_status_page_and_read_the_admin_token(helm: Path) -> None:
    result = helm_tools.run_helm(helm, "install", "mr", str(CHART), "--dry-run=client", "--namespace", "ml")
    assert result.returncode == 0, result.stderr
    notes = result.stdout.split("NOTES:", 1)[1]
    assert "port-forward svc/mr-modelroll-controller 8081:8081" in notes
    assert "get secret mr-modelroll -o jsonpath='{.data.admin-token}'" in notes
