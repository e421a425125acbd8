"""The Kubernetes example in deploy/kubernetes: every manifest parses, the pieces are wired to
each other, the sidecar is started with arguments and `SD_*` variables the real CLI accepts,
probes are native gRPC probes on the served port, and the ConfigMap's rules are the shipped
rules byte for byte and load."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

import pytest
import yaml
from smart_dispatch.cli import build_parser
from smart_dispatch.config import _ENV, Settings, settings_from_env
from smart_dispatch.rules.loader import content_version, parse_ruleset, read_sources

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
RULES = ROOT / "rules"
GRPC_PORT = 50051
RULES_MOUNT = "/etc/smart-dispatch/rules"
SIDECAR = "smart-dispatch"
SERVICE = "smartdispatch.v1.SmartDispatchService"


def _documents(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    assert docs, f"{path.name} holds no document"
    return docs


@pytest.fixture(scope="module")
def manifests() -> dict[str, list[dict[str, Any]]]:
    """`{file name: [documents]}` for every manifest (the kustomization excluded)."""
    return {p.name: _documents(p) for p in sorted(KUBE.glob("*.yaml")) if p.name != "kustomization.yaml"}


@pytest.fixture(scope="module")
def by_kind(manifests: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for docs in manifests.values():
        for doc in docs:
            assert doc["kind"] not in found, f"two {doc['kind']} objects"
            found[doc["kind"]] = doc
    return found


@pytest.fixture(scope="module")
def pod(by_kind: dict[str, dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = by_kind["Deployment"]["spec"]["template"]["spec"]
    return spec


@pytest.fixture(scope="module")
def sidecar(pod: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod["containers"] if c["name"] == SIDECAR]
    return container


def _configmap_rules(by_kind: dict[str, dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = by_kind["ConfigMap"]["data"]
    return data


def test_every_manifest_parses_with_the_expected_kinds(manifests: dict[str, list[dict[str, Any]]]) -> None:
    kinds = {name: [(d["apiVersion"], d["kind"]) for d in docs] for name, docs in manifests.items()}

    assert kinds == {
        "configmap-rules.yaml": [("v1", "ConfigMap")],
        "deployment.yaml": [("apps/v1", "Deployment")],
        "secret-redis.yaml": [("v1", "Secret")],
    }
    for docs in manifests.values():
        for doc in docs:
            assert doc["metadata"]["name"], f"{doc['kind']} without a name"


def test_kustomization_lists_every_manifest() -> None:
    (kustomization,) = _documents(KUBE / "kustomization.yaml")

    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert sorted(listed) == sorted(p.name for p in KUBE.glob("*.yaml") if p.name != "kustomization.yaml")
    assert all((KUBE / name).is_file() for name in listed)


def test_the_pod_runs_the_app_next_to_the_sidecar(
    by_kind: dict[str, dict[str, Any]], pod: dict[str, Any]
) -> None:
    deployment = by_kind["Deployment"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    assert [c["name"] for c in pod["containers"]] == ["app", SIDECAR]
    assert selector.items() <= labels.items()
    assert pod["terminationGracePeriodSeconds"] > 0


def test_sidecar_probes_are_grpc_health_on_the_served_port(sidecar: dict[str, Any]) -> None:
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = sidecar[probe]
        assert set(spec) & {"grpc", "httpGet", "tcpSocket", "exec"} == {"grpc"}, probe
        assert spec["grpc"]["port"] == GRPC_PORT, probe
    # Readiness follows the decision service itself; liveness only the server as a whole.
    assert sidecar["readinessProbe"]["grpc"]["service"] == SERVICE
    assert sidecar["livenessProbe"]["grpc"].get("service", "") == ""
    assert [p["containerPort"] for p in sidecar["ports"]] == [GRPC_PORT]


def _sidecar_settings(sidecar: dict[str, Any], by_kind: dict[str, dict[str, Any]]) -> Settings:
    """The Settings the sidecar would start with: its env (Secret refs resolved) and args,
    through the real CLI parser and config loader."""
    secret = by_kind["Secret"]
    env: dict[str, str] = {}
    for var in sidecar["env"]:
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == secret["metadata"]["name"], var["name"]
            env[var["name"]] = secret["stringData"][ref["key"]]
        else:
            env[var["name"]] = var["value"]
    unknown = set(env) - set(_ENV.values())
    assert not unknown, f"the sidecar does not read {sorted(unknown)}"
    try:
        args = build_parser().parse_args(sidecar["args"])
    except SystemExit:
        pytest.fail(f"`smart-dispatch {' '.join(sidecar['args'])}` is rejected by the CLI (see stderr)")
    assert args.command == "serve"
    return settings_from_env(env).with_overrides(host=args.host, port=args.port, rules_dir=args.rules_dir)


def test_sidecar_arguments_and_env_are_ones_the_cli_accepts(
    sidecar: dict[str, Any], by_kind: dict[str, dict[str, Any]], pod: dict[str, Any]
) -> None:
    settings = _sidecar_settings(sidecar, by_kind)

    assert settings.host == "0.0.0.0"  # the kubelet probes the pod IP, not loopback
    assert settings.port == GRPC_PORT
    assert str(settings.rules_dir) == RULES_MOUNT
    assert settings.store_url == by_kind["Secret"]["stringData"]["url"]
    assert settings.store_url.startswith("redis://")
    assert settings.shutdown_grace_s < pod["terminationGracePeriodSeconds"]
    assert settings.watch_rules  # hot reload stays on


def test_rules_come_from_the_configmap_as_a_whole_directory(
    sidecar: dict[str, Any], by_kind: dict[str, dict[str, Any]], pod: dict[str, Any]
) -> None:
    (mount,) = [m for m in sidecar["volumeMounts"] if m["mountPath"] == RULES_MOUNT]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]

    assert volume["configMap"]["name"] == by_kind["ConfigMap"]["metadata"]["name"]
    # A subPath mount never receives ConfigMap updates: hot reload would silently stop.
    assert "subPath" not in mount and "subPathExpr" not in mount
    assert mount.get("readOnly") is True
    assert "items" not in volume["configMap"], "every key of the ConfigMap is a rule file"


def test_containers_run_non_root_with_a_read_only_root_filesystem(pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001  # the Dockerfile's user
    for container in pod["containers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True, container["name"]
        assert context["allowPrivilegeEscalation"] is False, container["name"]
        assert context["capabilities"]["drop"] == ["ALL"], container["name"]
        assert container["resources"]["requests"] and container["resources"]["limits"], container["name"]


def test_configmap_rules_are_the_shipped_rules_byte_for_byte(by_kind: dict[str, dict[str, Any]]) -> None:
    embedded = _configmap_rules(by_kind)
    shipped = {Path(path).name: text for path, text in read_sources(RULES).items()}

    assert sorted(embedded) == sorted(shipped), "the ConfigMap must hold exactly the files of rules/"
    for name, text in shipped.items():
        if embedded[name] != text:
            diff = "".join(
                difflib.unified_diff(
                    text.splitlines(keepends=True),
                    embedded[name].splitlines(keepends=True),
                    f"rules/{name}",
                    f"configmap-rules.yaml data[{name}]",
                )
            )
            pytest.fail(f"deploy/kubernetes/configmap-rules.yaml drifted from rules/{name}:\n{diff}")
    assert (RULES / "default.yaml").read_bytes() == embedded["default.yaml"].encode("utf-8")


def test_configmap_rules_pass_the_loader(by_kind: dict[str, dict[str, Any]]) -> None:
    embedded = _configmap_rules(by_kind)
    ruleset = parse_ruleset({f"{RULES_MOUNT}/{name}": text for name, text in sorted(embedded.items())})

    assert {rule.name for rule in ruleset.rules} >= {"otp_sms_now", "marketing_caps_and_quiet_hours"}
    assert {cap.name for cap in ruleset.caps.values()} == {"marketing_hourly", "marketing_daily"}
    # Same files, same version: a pod reports the ruleset_version of the shipped rules.
    assert ruleset.version == content_version(read_sources(RULES))
