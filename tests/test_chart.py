"""The Helm chart without a cluster: lint, render, the values schema, defaults equal to the code's, RBAC
equal to manifests/rbac/, the CRD copy, the dashboard's series, and the rendered args parsed by the CLI.

Needs the `helm` the e2e cluster build makes (e2e/helm.py builds it when missing); no API server.
"""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from controller import defaults
from controller.cli import build_parser
from controller.crd import CRD_PATH, crd_yaml
from controller.daemon.cli import settings_from_args
from controller.daemon.poolmetrics import POOL_SERIES
from controller.demand import series
from e2e.helm import CHART, ROOT, HelmError, helm, render
from gateway.cli import _settings as gateway_settings
from gateway.config import GatewaySettings

VALUES = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
CI_VALUES = sorted((CHART / "ci").glob("*.yaml"))
RBAC = ROOT / "manifests" / "rbac"


def _by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def _containers(objects: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for name, deployment in _by_kind(objects, "Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        for container in pod["containers"]:
            yield name, pod, container


# -- lint and render -----------------------------------------------------------------------------------


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: "defaults" if v is None else v.name)
def test_helm_lint_is_clean(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    out = helm(*args)
    assert "0 chart(s) failed" in out
    assert "[WARNING]" not in out and "[ERROR]" not in out


def test_default_render_has_every_part() -> None:
    objects = render()
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects)
    assert kinds == sorted(
        [
            "ClusterRole/ebbtide-controller",
            "ClusterRole/ebbtide-controller-secrets",
            "ClusterRole/ebbtide-gateway",
            "ClusterRole/ebbtide-gateway-secrets",
            "ClusterRoleBinding/ebbtide-controller",
            "ClusterRoleBinding/ebbtide-gateway",
            "ConfigMap/ebbtide-dashboard",
            "Deployment/ebbtide-controller",
            "Deployment/ebbtide-gateway",
            "PodDisruptionBudget/ebbtide-gateway",
            "Role/ebbtide-controller-leader-election",
            "RoleBinding/ebbtide-controller-leader-election",
            "Service/ebbtide-controller-metrics",
            "Service/ebbtide-gateway",
            "ServiceAccount/ebbtide-controller",
            "ServiceAccount/ebbtide-gateway",
        ]
    )
    controller = _by_kind(objects, "Deployment")["ebbtide-controller"]
    assert controller["spec"]["replicas"] == 2
    assert "--leader-elect" in controller["spec"]["template"]["spec"]["containers"][0]["args"]
    pdb = _by_kind(objects, "PodDisruptionBudget")["ebbtide-gateway"]
    gateway = _by_kind(objects, "Deployment")["ebbtide-gateway"]
    assert pdb["spec"]["selector"]["matchLabels"] == gateway["spec"]["selector"]["matchLabels"]
    service = _by_kind(objects, "Service")["ebbtide-gateway"]
    assert service["spec"]["selector"] == gateway["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: "defaults" if v is None else v.name)
def test_every_container_is_locked_down_with_probes_and_resources(values: Path | None) -> None:
    objects = render(values=[values] if values else [])
    seen = 0
    for name, pod, container in _containers(objects):
        seen += 1
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True, name
        assert sc["allowPrivilegeEscalation"] is False, name
        assert sc["capabilities"]["drop"] == ["ALL"], name
        assert "add" not in sc["capabilities"], name
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz", name
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz", name
        assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"], name
        # A read-only root filesystem needs a writable /tmp for Python's tempfile users.
        assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"], name
    assert seen >= 1


def test_names_follow_the_release_and_the_overrides() -> None:
    names = {o["metadata"]["name"] for o in render(release="prod")}
    assert "prod-ebbtide-controller" in names and "prod-ebbtide-gateway" in names
    names = {o["metadata"]["name"] for o in render(release="prod", sets=["fullnameOverride=tide"])}
    assert "tide-controller" in names and "tide-gateway-secrets" in names


def test_leader_election_off_with_two_replicas_is_refused() -> None:
    with pytest.raises(HelmError, match=r"controller.leaderElection: false with controller.replicas > 1"):
        render(sets=["controller.leaderElection=false"])


def test_dry_run_values_give_one_controller_that_never_scales() -> None:
    objects = render(values=[CHART / "ci" / "dry-run-values.yaml"])
    deployments = _by_kind(objects, "Deployment")
    assert list(deployments) == ["ebbtide-controller"]
    args = deployments["ebbtide-controller"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--dry-run" in args and "--no-leader-elect" in args
    assert not any(a.startswith("--gateway-") for a in args)
    assert "Role" not in {o["kind"] for o in objects}  # no Lease, no leader-election Role


# -- the rendered args are what the CLIs accept, with the code's defaults --------------------------------


def _args(objects: list[dict[str, Any]], deployment: str) -> list[str]:
    container = _by_kind(objects, "Deployment")[deployment]["spec"]["template"]["spec"]["containers"][0]
    # Kubernetes expands $(POD_NAME) from the env; stand in a pod name for the parser.
    args: list[str] = [a.replace("$(POD_NAME)", "ebbtide-controller-abc12") for a in container["args"]]
    return args


def test_defaults_mirror_the_code() -> None:
    controller, gateway = VALUES["controller"], VALUES["gateway"]
    assert float(controller["tick"]) == defaults.TICK_SECONDS
    assert controller["logFormat"] == defaults.LOG_FORMAT
    assert controller["leaseName"] == defaults.LEASE_NAME
    assert controller["metricsPort"] == int(defaults.CONTROLLER_METRICS_ADDR.rsplit(":", 1)[1])
    assert gateway["port"] == int(defaults.GATEWAY_LISTEN.rsplit(":", 1)[1])
    code = GatewaySettings()
    assert gateway["maxHeld"] == code.max_held
    assert float(gateway["maxHoldSeconds"]) == code.max_hold_seconds
    assert float(gateway["scrapeInterval"]) == code.scrape_interval_seconds
    assert gateway["maxBodyBytes"] == code.max_body_bytes
    assert gateway["accessLog"] is code.access_log
    assert float(gateway["shutdownGrace"]) == code.shutdown_grace_seconds
    assert gateway["logFormat"] == defaults.LOG_FORMAT
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert chart["appVersion"] == project["version"]


def test_rendered_controller_args_parse_into_the_daemons_settings() -> None:
    objects = render()
    args = build_parser().parse_args(_args(objects, "ebbtide-controller"))
    settings = settings_from_args(args)
    assert settings.tick_seconds == defaults.TICK_SECONDS
    assert settings.log_format == defaults.LOG_FORMAT
    assert settings.metrics_addr == ("0.0.0.0", 8081)
    assert settings.leader_elect is True
    assert settings.lease_name == defaults.LEASE_NAME
    assert settings.lease_namespace == "ebbtide-system"
    assert settings.identity == "ebbtide-controller-abc12"
    assert settings.gateway_namespace == "ebbtide-system"
    assert settings.gateway_port == VALUES["gateway"]["port"]
    gateway_labels = _by_kind(objects, "Deployment")["ebbtide-gateway"]["spec"]["template"]["metadata"]["labels"]
    for pair in settings.gateway_selector.split(","):
        key, value = pair.split("=")
        assert gateway_labels[key] == value
    assert settings.dry_run is False and settings.namespace is None


def test_rendered_gateway_args_parse_into_the_gateways_settings() -> None:
    args = build_parser().parse_args(_args(render(), "ebbtide-gateway"))
    assert args.in_cluster is True and args.namespace is None
    settings = gateway_settings(args)
    code = GatewaySettings()
    assert (settings.host, settings.port) == ("0.0.0.0", 8080)
    assert (settings.max_held, settings.max_hold_seconds) == (code.max_held, code.max_hold_seconds)
    assert (settings.scrape_interval_seconds, settings.max_body_bytes) == (
        code.scrape_interval_seconds,
        code.max_body_bytes,
    )
    assert settings.shutdown_grace_seconds == code.shutdown_grace_seconds
    assert settings.access_log is code.access_log
    assert args.log_format == defaults.LOG_FORMAT


def test_production_values_reach_both_commands() -> None:
    objects = render(values=[CHART / "ci" / "production-values.yaml"])
    controller = build_parser().parse_args(_args(objects, "ebbtide-controller"))
    assert isinstance(controller, argparse.Namespace)
    assert controller.namespace == "inference" and controller.tick == 2.5 and controller.log_level == "debug"
    assert controller.gateway_url == ["http://gateway.example.internal:8080"]
    gateway = build_parser().parse_args(_args(objects, "ebbtide-gateway"))
    assert gateway.namespace == "inference"
    assert gateway.api_keys_file == "/etc/ebbtide/client-keys/keys"
    assert gateway.access_log is True
    pod = _by_kind(objects, "Deployment")["ebbtide-gateway"]["spec"]["template"]["spec"]
    assert {
        "name": "client-keys",
        "secret": {"secretName": "ebbtide-client-keys", "items": [{"key": "keys", "path": "keys"}]},
    } in pod["volumes"]


def test_decimals_given_with_set_are_accepted() -> None:
    # helm --set passes 2.5 as the string "2.5": the schema takes a decimal string where it takes a number.
    objects = render(sets=["controller.tick=2.5", "gateway.scrapeInterval=0.5", "gateway.maxHoldSeconds=1.5"])
    assert "--tick=2.5" in _args(objects, "ebbtide-controller")
    gateway = _args(objects, "ebbtide-gateway")
    assert "--scrape-interval=0.5" in gateway and "--max-hold-seconds=1.5" in gateway


# -- the values schema ---------------------------------------------------------------------------------

BAD_VALUES = [
    ("controller.replicas=two", "at '/controller/replicas': got string, want integer"),
    ("controller.replicas=0", "at '/controller/replicas'"),
    ("controller.tick=0", "at '/controller/tick'"),
    ("controller.tick=0.0", "at '/controller/tick'"),
    ("controller.tick=soon", "at '/controller/tick'"),
    ("controller.logFormat=xml", "at '/controller/logFormat'"),
    ("controller.metricsPort=70000", "at '/controller/metricsPort'"),
    ("controller.leaderElection=maybe", "at '/controller/leaderElection': got string, want boolean"),
    ("gateway.port=-1", "at '/gateway/port'"),
    ("gateway.service.type=Ingress", "at '/gateway/service/type'"),
    ("gateway.podDisruptionBudget.maxUnavailable=half", "at '/gateway/podDisruptionBudget/maxUnavailable'"),
    ("gateway.maxBodyBytes=10", "at '/gateway/maxBodyBytes'"),
    ("gateway.logFormat=yaml", "at '/gateway/logFormat'"),
    ("gateway.shutdownGrace=-5", "at '/gateway/shutdownGrace'"),
    ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
    ("watchNamespace=Not_A_Namespace", "at '/watchNamespace'"),
    ("metrics.serviceMonitor.interval=soon", "at '/metrics/serviceMonitor/interval'"),
    ("controller.secretNamespaces[0]=BAD", "at '/controller/secretNamespaces/0'"),
    ("replicaCount=3", "additional properties 'replicaCount' not allowed"),
    ("controller.replica=3", "at '/controller': additional properties 'replica' not allowed"),
    ("gateway.service.nodePort=30080", "at '/gateway/service': additional properties 'nodePort' not allowed"),
    ("dashboard.enable=true", "at '/dashboard': additional properties 'enable' not allowed"),
]


@pytest.mark.parametrize(("setting", "message"), BAD_VALUES, ids=[s for s, _ in BAD_VALUES])
def test_schema_rejects_bad_values_naming_the_field(setting: str, message: str) -> None:
    with pytest.raises(HelmError) as caught:
        render(sets=[setting])
    assert "values don't meet the specifications of the schema" in str(caught.value)
    assert message in str(caught.value)


def _leaves(node: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        for key, value in node.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path


def test_every_value_is_described_in_the_schema_and_commented_in_values_yaml() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text(encoding="utf-8"))
    free_form = {"podSecurityContext", "securityContext", "resources", "nodeSelector", "affinity", "labels"}
    for path in _leaves(VALUES):
        node = schema
        for key in path:
            if node.get("type") == "object" and "properties" not in node:
                break  # a free-form Kubernetes object (resources, affinity, labels)
            assert key in node["properties"], f"values.yaml {'.'.join(path)} is not in values.schema.json"
            node = node["properties"][key]
            assert node.get("description"), f"values.schema.json {'.'.join(path)} has no description"
            if key in free_form:
                break
    # Each key of values.yaml (inside Kubernetes objects such as securityContext or resources excepted)
    # has a comment line right above it, or follows a sibling key that one comment introduces with it.
    lines = (CHART / "values.yaml").read_text(encoding="utf-8").splitlines()
    previous, parents = "", [""]
    for number, line in enumerate(lines, 1):
        key = re.match(r"^( *)([A-Za-z]+):", line)
        if key:
            depth = len(key.group(1)) // 2
            parents = [*parents[:depth], key.group(2)]
            inside_object = any(p in free_form for p in parents[:-1])
            if not inside_object and not previous.lstrip().startswith("#"):
                sibling = re.match(rf"^{key.group(1)}[A-Za-z]+:", previous)
                assert sibling, f"values.yaml:{number}: {key.group(2)} has no comment"
        if line.strip():
            previous = line


# -- RBAC: the chart grants what manifests/rbac/ grants, no more ----------------------------------------


def _rules(rule_list: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
    out = set()
    for rule in rule_list:
        for group in rule.get("apiGroups", []):
            for resource in rule.get("resources", []):
                for verb in rule["verbs"]:
                    out.add((group, resource, verb, tuple(sorted(rule.get("resourceNames", [])))))
    return out


def _manifest_objects() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(RBAC.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return docs


@pytest.mark.parametrize("kind", ["ClusterRole", "Role"])
def test_rbac_rules_equal_manifests_rbac(kind: str) -> None:
    chart = {name: _rules(o["rules"]) for name, o in _by_kind(render(), kind).items()}
    manifests = {name: _rules(o["rules"]) for name, o in _by_kind(_manifest_objects(), kind).items()}
    assert chart == manifests


def test_rbac_bindings_equal_manifests_rbac() -> None:
    def bindings(objects: list[dict[str, Any]]) -> set[tuple[str, str, str, tuple[tuple[str, str, str], ...]]]:
        return {
            (
                o["kind"],
                o["metadata"]["name"],
                o["roleRef"]["name"],
                tuple(sorted((s["kind"], s["name"], s["namespace"]) for s in o["subjects"])),
            )
            for o in objects
            if o["kind"] in {"ClusterRoleBinding", "RoleBinding"}
        }

    assert bindings(render()) == bindings(_manifest_objects())


def test_secret_access_is_granted_only_in_the_named_namespaces() -> None:
    objects = render(sets=["controller.secretNamespaces={inference}", "gateway.secretNamespaces={inference,chat}"])
    grants = sorted(
        (o["metadata"]["namespace"], o["subjects"][0]["name"])
        for o in objects
        if o["kind"] == "RoleBinding" and o["roleRef"]["name"].endswith("-secrets")
    )
    assert grants == [
        ("chat", "ebbtide-gateway"),
        ("inference", "ebbtide-controller"),
        ("inference", "ebbtide-gateway"),
    ]
    assert not any(o["kind"] == "ClusterRoleBinding" and o["roleRef"]["name"].endswith("-secrets") for o in objects)


def test_one_watched_namespace_binds_with_rolebindings_only() -> None:
    objects = render(sets=["watchNamespace=inference"])
    assert not _by_kind(objects, "ClusterRoleBinding")
    bound = sorted(
        (o["metadata"]["namespace"], o["roleRef"]["kind"], o["roleRef"]["name"])
        for o in objects
        if o["kind"] == "RoleBinding"
    )
    assert bound == [
        ("ebbtide-system", "ClusterRole", "ebbtide-controller"),  # the gateway's pods, for their counters
        ("ebbtide-system", "Role", "ebbtide-controller-leader-election"),
        ("inference", "ClusterRole", "ebbtide-controller"),
        ("inference", "ClusterRole", "ebbtide-gateway"),
    ]


def test_the_lease_role_names_the_configured_lease() -> None:
    role = _by_kind(render(sets=["controller.leaseName=tide-leader"]), "Role")["ebbtide-controller-leader-election"]
    assert {"tide-leader"} == {n for r in role["rules"] for n in r.get("resourceNames", [])}


# -- the CRD and the dashboard ---------------------------------------------------------------------------


def test_chart_crd_is_the_generated_crd() -> None:
    copy = (CHART / "crds" / CRD_PATH.name).read_text(encoding="utf-8")
    assert copy == crd_yaml(), (
        "charts/ebbtide/crds is stale: run `ebbtide crd --output charts/ebbtide/crds/gpupools.ebbtide.dev.yaml`"
    )
    assert (ROOT / CRD_PATH).read_text(encoding="utf-8") == copy


def dashboard_expressions() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target in the dashboard."""
    dashboard = json.loads((CHART / "dashboards" / "ebbtide.json").read_text(encoding="utf-8"))
    return [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p["targets"]]


def test_dashboard_queries_only_series_the_code_exports() -> None:
    exported = set(POOL_SERIES) | {
        value
        for name, value in vars(series).items()
        if name.isupper() and isinstance(value, str) and value.startswith("ebbtide_")
    }
    exported |= {"ebbtide_controller_leader", "ebbtide_controller_tick_seconds"}
    used: set[str] = set()
    for title, expr in dashboard_expressions():
        names = set(re.findall(r"\b(ebbtide_[a-z_]+)", expr))
        assert names, f"{title}: {expr} reads no ebbtide series"
        for name in names:
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            assert base in exported, f"{title}: {name} is exported by neither the controller nor the gateway"
        used |= {re.sub(r"_(bucket|sum|count)$", "", n) for n in names}
    titles = " | ".join(t for t, _ in dashboard_expressions())
    for topic in (
        "Demand vs desired and ready",
        "Windows",
        "GPU-hours",
        "Fallback spend",
        "Overflow ratio",
        "Decisions by reason",
    ):
        assert topic in titles
    assert {"ebbtide_pool_demand_replicas", "ebbtide_pool_desired_replicas", "ebbtide_pool_ready_replicas"} <= used


def test_dashboard_configmap_holds_the_dashboard_file() -> None:
    configmap = _by_kind(render(), "ConfigMap")["ebbtide-dashboard"]
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "ebbtide.json").read_text(encoding="utf-8"))
    assert json.loads(configmap["data"]["ebbtide.json"]) == shipped
