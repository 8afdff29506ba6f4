"""The Helm chart, rendered by the real helm and checked like an API server would.

Every values file in charts/forgetless/ci/ is linted (`helm lint --strict`) and rendered; every
rendered object of a built-in kind passes `kubernetes-validate` (strict, Kubernetes 1.35); objects of
CRD-based kinds (ServiceMonitor, PodMonitor, PrometheusRule, KopfPeering) are checked field by field
here. RBAC must equal operator/forgetless_operator/rbac.py exactly, and the operator's own argument
parser must accept the arguments the Deployment passes.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO_ROOT, tool_or_skip

sys.path.insert(0, str(REPO_ROOT / "charts" / "forgetless" / "hack"))
import chart_sync  # noqa: E402  (charts/forgetless/hack/chart_sync.py: render + derived files)

CHART = REPO_ROOT / "charts" / "forgetless"
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
KUBERNETES_VERSION = "1.35"
RELEASE_NAMESPACE = "forgetless-system"
CRD_GROUPS = {"monitoring.coreos.com", "kopf.dev"}


CHART_META = yaml.safe_load((CHART / "Chart.yaml").read_text())
APP_VERSION = CHART_META["appVersion"]


@pytest.fixture(scope="module")
def helm() -> str:
    return tool_or_skip("helm")


@functools.lru_cache(maxsize=None)
def _render_cached(helm: str, values: tuple[str, ...], set_args: tuple[str, ...]) -> str:
    return json.dumps(chart_sync.helm_template(helm, values=values, set_args=set_args, namespace=RELEASE_NAMESPACE))


def render(helm: str, *values: Path | str, set_args: tuple[str, ...] = ()) -> list[dict[str, Any]]:
    """Rendered objects (a fresh copy per call: tests may mutate them)."""
    return json.loads(_render_cached(helm, tuple(str(v) for v in values), tuple(set_args)))


def kinds(objects: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for obj in objects:
        out.setdefault(obj["kind"], []).append(obj)
    return out


def one(objects: list[dict], kind: str) -> dict:
    found = kinds(objects).get(kind, [])
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def ci(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


# --------------------------------------------------------------------------- lint + schema validation


def test_ci_values_files_cover_the_feature_matrix() -> None:
    names = {p.name for p in CI_VALUES}
    assert {"default-values.yaml", "all-features-values.yaml", "namespaced-values.yaml"} <= names


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_helm_lint_strict(helm: str, values: Path) -> None:
    proc = subprocess.run([helm, "lint", "--strict", str(CHART), "--values", str(values)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def check_monitoring_shape(obj: dict) -> None:
    """The fields of the Prometheus Operator / kopf kinds we render (no schema for them in kubernetes-validate)."""
    kind, spec = obj["kind"], obj.get("spec", {})
    meta = obj["metadata"]
    assert meta["name"] and len(meta["name"]) <= 63
    if kind == "ServiceMonitor":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert spec["selector"]["matchLabels"]
        assert spec["namespaceSelector"]["matchNames"] == [meta["namespace"]]
        (endpoint,) = spec["endpoints"]
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics" and endpoint["honorLabels"] is True
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "honorLabels"}
    elif kind == "PodMonitor":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert spec["selector"] == {"matchLabels": {"forgetless.dev/stage": "train"}}
        selector = spec["namespaceSelector"]
        assert selector == {"any": True} or (set(selector) == {"matchNames"} and selector["matchNames"])
        (endpoint,) = spec["podMetricsEndpoints"]
        assert endpoint["port"] == "metrics" and endpoint["path"] == "/metrics"
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "honorLabels"}
    elif kind == "PrometheusRule":
        assert obj["apiVersion"] == "monitoring.coreos.com/v1"
        assert set(spec) == {"groups"}
        for group in spec["groups"]:
            assert set(group) <= {"name", "interval", "rules"} and group["rules"]
            for rule in group["rules"]:
                assert set(rule) <= {"alert", "record", "expr", "for", "labels", "annotations", "keep_firing_for"}
                assert isinstance(rule["expr"], str) and rule["alert"]
                assert all(isinstance(v, str) for v in {**rule.get("labels", {}), **rule.get("annotations", {})}.values())
    elif kind in ("ClusterKopfPeering", "KopfPeering"):
        assert obj["apiVersion"] == "kopf.dev/v1"
        assert (kind == "KopfPeering") == ("namespace" in meta)
    else:
        raise AssertionError(f"unexpected CRD-based kind {kind}")
    for field in ("labels", "annotations"):
        assert all(isinstance(v, str) for v in meta.get(field, {}).values()), f"{kind} {field} must be strings"


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_rendered_objects_are_valid(helm: str, values: Path) -> None:
    objects = render(helm, values)
    assert objects
    for obj in objects:
        group = obj["apiVersion"].split("/")[0] if "/" in obj["apiVersion"] else ""
        if group in CRD_GROUPS:
            check_monitoring_shape(obj)
        else:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    names = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), "two rendered objects share kind/namespace/name"


@pytest.mark.parametrize("name", ["finetunejobs.forgetless.dev.yaml", "finetunesweeps.forgetless.dev.yaml"])
def test_crds_in_the_chart_equal_the_generated_ones(name: str) -> None:
    assert (CHART / "crds" / name).read_bytes() == (REPO_ROOT / "crds" / name).read_bytes(), (
        "charts/forgetless/crds is stale: run forgetless crd --write"
    )


def test_chart_crds_are_valid_crds() -> None:
    seen = set()
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
            seen.add(doc["metadata"]["name"])
    assert {"finetunejobs.forgetless.dev", "finetunesweeps.forgetless.dev", "kopfpeerings.kopf.dev",
            "clusterkopfpeerings.kopf.dev"} <= seen


# --------------------------------------------------------------------------- RBAC = rbac.py


def test_rbac_rules_file_is_generated_from_rbac_py() -> None:
    assert (CHART / "files" / "rbac-rules.yaml").read_text() == chart_sync.rbac_rules_yaml(), (
        "files/rbac-rules.yaml is stale: run python charts/forgetless/hack/chart_sync.py"
    )


def test_cluster_role_equals_operator_rules(helm: str) -> None:
    from forgetless_operator.rbac import RULES

    objects = render(helm, ci("default"))
    assert one(objects, "ClusterRole")["rules"] == RULES
    assert "Role" not in kinds(objects)
    binding = one(objects, "ClusterRoleBinding")
    role = one(objects, "ClusterRole")
    sa = one(objects, "ServiceAccount")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": RELEASE_NAMESPACE}]
    assert one(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]


def test_inferenceservice_rights_only_when_the_kserve_hand_off_is_enabled(helm: str) -> None:
    from forgetless_operator.rbac import HAND_OFF_RULES, NAMESPACED_RULES, RULES

    enabled = ("handOff.kserve.enabled=true",)
    assert one(render(helm, ci("default"), set_args=enabled), "ClusterRole")["rules"] == RULES + HAND_OFF_RULES
    for role in kinds(render(helm, ci("namespaced"), set_args=enabled))["Role"]:
        assert role["rules"] == NAMESPACED_RULES + HAND_OFF_RULES
    default = one(render(helm, ci("default")), "ClusterRole")["rules"]
    assert not any("inferenceservices" in rule["resources"] for rule in default)


def test_namespaced_watch_gets_a_role_per_namespace(helm: str) -> None:
    from forgetless_operator.rbac import NAMESPACED_RULES

    objects = render(helm, ci("namespaced"))
    by_kind = kinds(objects)
    assert "ClusterRole" not in by_kind and "ClusterRoleBinding" not in by_kind
    watched = yaml.safe_load(ci("namespaced").read_text())["operator"]["watch"]["namespaces"]
    roles = {r["metadata"]["namespace"]: r for r in by_kind["Role"]}
    bindings = {b["metadata"]["namespace"]: b for b in by_kind["RoleBinding"]}
    assert sorted(roles) == sorted(bindings) == sorted(watched)
    sa = one(objects, "ServiceAccount")["metadata"]
    for namespace in watched:
        assert roles[namespace]["rules"] == NAMESPACED_RULES
        assert bindings[namespace]["roleRef"]["kind"] == "Role"
        assert bindings[namespace]["roleRef"]["name"] == roles[namespace]["metadata"]["name"]
        assert bindings[namespace]["subjects"] == [
            {"kind": "ServiceAccount", "name": sa["name"], "namespace": sa["namespace"]}
        ]
    args = operator_container(objects)["args"]
    assert "--all-namespaces" not in args
    assert [args[i + 1] for i, a in enumerate(args) if a == "--namespace"] == watched
    pod_monitor = one(objects, "PodMonitor")
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": watched}
    peerings = by_kind["KopfPeering"]
    assert sorted(p["metadata"]["namespace"] for p in peerings) == sorted(watched)


def test_rbac_can_be_left_to_the_cluster_admin(helm: str) -> None:
    objects = render(helm, set_args=("rbac.create=false",))
    assert not {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"} & set(kinds(objects))


# --------------------------------------------------------------------------- the operator Deployment


def operator_container(objects: list[dict]) -> dict:
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def restricted_violations(pod_spec: dict) -> list[str]:
    """Pod Security Standard "restricted" (v1.35) checks for one pod spec."""
    problems = []
    pod_sc = pod_spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            problems.append(f"{flag} is set")
    allowed_volumes = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
    for volume in pod_spec.get("volumes", []):
        kind = (set(volume) - {"name"}).pop()
        if kind not in allowed_volumes:
            problems.append(f"volume {volume['name']} of type {kind}")
    for container in pod_spec["containers"] + pod_spec.get("initContainers", []):
        sc = container.get("securityContext", {})
        name = container["name"]
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            problems.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: adds capabilities {caps['add']}")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot must be true")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if container.get("ports") and any(p.get("hostPort") for p in container["ports"]):
            problems.append(f"{name}: hostPort")
    return problems


def test_restricted_check_catches_violations() -> None:
    pod = {"containers": [{"name": "c", "securityContext": {"privileged": True}}], "hostNetwork": True,
           "volumes": [{"name": "h", "hostPath": {"path": "/"}}]}
    problems = restricted_violations(pod)
    assert len(problems) == 7, problems


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_operator_pod_is_restricted(helm: str, values: Path) -> None:
    pod_spec = one(render(helm, values), "Deployment")["spec"]["template"]["spec"]
    assert restricted_violations(pod_spec) == []
    assert pod_spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True


def test_deployment_defaults(helm: str) -> None:
    objects = render(helm, ci("default"))
    deployment = one(objects, "Deployment")
    container = operator_container(objects)
    assert container["image"] == f"ghcr.io/forgetless/operator:{APP_VERSION}"
    assert env_of(container)["FORGETLESS_TRAINER_IMAGE"] == f"ghcr.io/forgetless/trainer:{APP_VERSION}"
    assert container["command"] == ["forgetless"]
    assert container["args"] == ["operator", "--all-namespaces", "--metrics-port", "8080", "--progress-seconds", "15",
                                 "--standalone"]
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # a standalone operator never overlaps itself
    assert container["ports"] == [{"name": "metrics", "containerPort": 8080, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert "app.kubernetes.io/version" not in selector  # immutable selector survives upgrades


def test_long_names_stay_within_kubernetes_limits(helm: str) -> None:
    """Names the API server checks beyond the OpenAPI schema: DNS labels (Service) and label values."""
    objects = chart_sync.helm_template(helm, values=(ci("all-features"),), release="r" * 53,
                                       set_args=("fullnameOverride=" + "f" * 63,))
    dns_label = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 253 and re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name), name
        if obj["kind"] in ("Service", "Deployment"):
            assert len(name) <= 63 and dns_label.match(name), f"{obj['kind']} name {name!r} is not a DNS label"
        labels = {**obj["metadata"].get("labels", {})}
        if obj["kind"] == "Deployment":
            labels.update(obj["spec"]["template"]["metadata"]["labels"])
        for key, value in labels.items():
            assert len(value) <= 63 and re.fullmatch(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?", value), (key, value)


def test_metrics_port_follows_values(helm: str) -> None:
    objects = render(helm, set_args=("operator.metricsPort=9090",))
    container = operator_container(objects)
    assert container["ports"][0]["containerPort"] == 9090
    args = container["args"]
    assert args[args.index("--metrics-port") + 1] == "9090"
    service = one(objects, "Service")
    assert service["spec"]["ports"][0]["targetPort"] == "metrics"


def test_pinned_images_and_existing_service_account(helm: str) -> None:
    objects = render(helm, ci("pinned-images"))
    values = yaml.safe_load(ci("pinned-images").read_text())
    container = operator_container(objects)
    op = values["image"]["operator"]
    assert container["image"] == f"{op['repository']}@{op['digest']}"
    assert container["imagePullPolicy"] == "Always"
    tr = values["image"]["trainer"]
    assert env_of(container)["FORGETLESS_TRAINER_IMAGE"] == f"{tr['repository']}:{tr['tag']}"
    pod_spec = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod_spec["serviceAccountName"] == "existing-operator-sa"
    assert pod_spec["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert "ServiceAccount" not in kinds(objects)
    assert one(objects, "ClusterRoleBinding")["subjects"][0]["name"] == "existing-operator-sa"
    assert {"ConfigMap", "Service"}.isdisjoint(kinds(objects))


def test_ha_peering(helm: str) -> None:
    objects = render(helm, ci("ha-peering"))
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    # peering keeps only one replica active during the overlap of a rolling update
    assert deployment["spec"]["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    args = operator_container(objects)["args"]
    assert args[args.index("--peering") + 1] == "forgetless-ha" and "--standalone" not in args
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == "forgetless-ha"


def _operator_parser() -> argparse.ArgumentParser:
    command = pytest.importorskip("forgetless_cli.commands.operator")
    parser = argparse.ArgumentParser(prog="forgetless operator")
    command.configure(parser)
    return parser


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.stem)
def test_operator_cli_accepts_the_rendered_arguments(helm: str, values: Path) -> None:
    objects = render(helm, values)
    container = operator_container(objects)
    args = container["args"]
    assert args[0] == "operator"
    parsed = _operator_parser().parse_args(args[1:])
    chart_values = yaml.safe_load(values.read_text()) or {}
    watch = chart_values.get("operator", {}).get("watch", {})
    if watch.get("allNamespaces", True):
        assert parsed.all_namespaces and not parsed.namespace
    else:
        assert parsed.namespace == watch["namespaces"]
    assert parsed.metrics_port == container["ports"][0]["containerPort"]
    peering = chart_values.get("operator", {}).get("peering", {})
    if peering.get("enabled"):
        assert parsed.peering == peering["name"] and not parsed.standalone
    else:
        assert parsed.standalone and parsed.peering is None


def test_trainer_pods_match_the_pod_monitor(helm: str, manifest) -> None:
    """The PodMonitor selects the train pods the operator really builds, on their `metrics` port."""
    children = pytest.importorskip("forgetless_operator.finetunejob.children")
    from forgetless.api.schema import parse_job

    job = manifest(metadata={"name": "support", "namespace": "ml", "uid": "u-1", "generation": 1},
                   spec={"output": {"pvc": {"claimName": "work", "readOnly": False}}})
    spec = parse_job(job).spec
    train = children.stage_job(job, spec, "train", children.OperatorConfig())
    pod = train["spec"]["template"]
    pod_monitor = one(render(helm, ci("all-features")), "PodMonitor")
    assert pod_monitor["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
    baseline = children.stage_job(job, spec, "baseline", children.OperatorConfig())
    assert not pod_monitor["spec"]["selector"]["matchLabels"].items() <= baseline["spec"]["template"]["metadata"]["labels"].items()


def test_service_and_service_monitor_select_the_operator(helm: str) -> None:
    objects = render(helm, ci("all-features"))
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    service = one(objects, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    monitor = one(objects, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboard_configmap_embeds_the_dashboard(helm: str) -> None:
    objects = render(helm, ci("all-features"))
    configmap = next(o for o in kinds(objects)["ConfigMap"] if "forgetless.json" in o["data"])
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert configmap["metadata"]["namespace"] == "monitoring"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "forgetless"}
    source = (CHART / "dashboards" / "forgetless.json").read_text()
    assert json.loads(configmap["data"]["forgetless.json"]) == json.loads(source)


def test_notes_render(helm: str) -> None:
    proc = subprocess.run([helm, "install", "demo", str(CHART), "--dry-run", "--namespace", RELEASE_NAMESPACE,
                           "--values", str(ci("namespaced"))], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    notes = proc.stdout.split("NOTES:", 1)[1]
    assert "team-a, team-b" in notes and "kubectl get ftj" in notes


# --------------------------------------------------------------------------- bad values fail clearly


@pytest.mark.parametrize(
    "set_args, expected",
    [
        (("operator.replicas=2",), "operator.replicas > 1 needs operator.peering.enabled"),
        (("operator.watch.allNamespaces=false",), "operator.watch.namespaces is empty"),
        (("operator.watch.namespaces={a}",), "set either allNamespaces: true or a list of namespaces"),
        (("operator.watch.allNamespaces=false", "operator.watch.namespaces={Team_A}"), "/operator/watch/namespaces/0"),
        (("operator.replica=1",), "additional properties 'replica' not allowed"),
        (("prometheusRule.alerts.reconcileErrors.window=5 minutes",), "/prometheusRule/alerts/reconcileErrors/window"),
        (("prometheusRule.alerts.forgetting.maxCategoryDrop=5",), "/prometheusRule/alerts/forgetting/maxCategoryDrop"),
        (("metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"), "needs metrics.service.enabled"),
        (("serviceAccount.create=false",), "serviceAccount.name is required"),
        (("image.operator.digest=latest",), "/image/operator/digest"),
    ],
)
def test_bad_values_are_rejected_with_a_clear_message(helm: str, set_args: tuple[str, ...], expected: str) -> None:
    with pytest.raises(RuntimeError) as excinfo:
        chart_sync.helm_template(helm, set_args=set_args)
    assert expected in str(excinfo.value)


# --------------------------------------------------------------------------- docs/kubernetes.md


def test_the_documented_job_and_volume_are_valid() -> None:
    """The manifests docs/kubernetes.md tells users to apply are accepted (and the job has its work volume)."""
    from forgetless.api.schema import parse_job

    docs = (REPO_ROOT / "docs" / "kubernetes.md").read_text()
    blocks = {m.group(1): yaml.safe_load(m.group(2)) for m in re.finditer(r"```yaml\n# (\S+)\n(.*?)```", docs, re.S)}
    volume, job = blocks["work-volume.yaml"], blocks["job.yaml"]
    kubernetes_validate.validate(volume, KUBERNETES_VERSION, strict=True)
    spec = parse_job(job).spec
    assert spec.output.pvc is not None and spec.output.pvc.claim_name == volume["metadata"]["name"]
    assert not spec.output.pvc.read_only


def test_packaged_chart_renders_the_same(helm: str, tmp_path: Path) -> None:
    """`helm package` (which applies .helmignore) keeps everything the templates read."""
    proc = subprocess.run([helm, "package", str(CHART), "--destination", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    (package,) = tmp_path.glob("forgetless-*.tgz")
    out = subprocess.run([helm, "template", "forgetless", str(package), "--namespace", RELEASE_NAMESPACE,
                          "--values", str(ci("all-features")), "--include-crds"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    packaged = [d for d in yaml.safe_load_all(out.stdout) if d]
    from_dir = render(helm, ci("all-features"))
    assert [d for d in packaged if d["kind"] != "CustomResourceDefinition"] == from_dir
    assert {d["metadata"]["name"] for d in packaged if d["kind"] == "CustomResourceDefinition"} == {
        "finetunejobs.forgetless.dev", "finetunesweeps.forgetless.dev", "kopfpeerings.kopf.dev",
        "clusterkopfpeerings.kopf.dev"}
