"""The image and the Kubernetes example cannot drift apart.

The runtime stage of the Dockerfile is read as an image config (ENTRYPOINT, CMD, EXPOSE, USER,
ENV, HEALTHCHECK), and the sidecar of deploy/kubernetes is rendered the way the kubelet starts
it from that image: `command` or else the ENTRYPOINT, `args` or else the CMD, the image's ENV
under the container's `env`. The command line goes through the real CLI parser and the settings
through the real config loader; then its ports, probes, user and rules directory must be the
image's.

The same tests run against the config of the image really built when SD_IMAGE_INSPECT names the
JSON of `podman image inspect` (scripts/image_smoke.sh sets it after its build); without it that
half skips, and the rest runs in the normal suite without podman.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from smart_dispatch.cli import build_parser
from smart_dispatch.config import Settings, settings_from_env

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DEPLOYMENT = ROOT / "deploy" / "kubernetes" / "deployment.yaml"
SECRET = ROOT / "deploy" / "kubernetes" / "secret-redis.yaml"
SIDECAR = "smart-dispatch"
CONSOLE_SCRIPT = "smart-dispatch"
INSPECT_ENV = "SD_IMAGE_INSPECT"


@dataclass
class ImageConfig:
    """What a container started from the image gets: the parts a runtime reads."""

    entrypoint: list[str]
    cmd: list[str]
    exposed: set[int]
    user: str
    env: dict[str, str]
    healthcheck: list[str]  # Docker's `Test`: ["CMD", argv...]
    healthcheck_timeout_s: float = 0.0
    copied: dict[str, str] = field(default_factory=dict)  # Dockerfile only: COPY source -> destination


def _instructions(text: str) -> list[tuple[str, str]]:
    """(KEYWORD, rest) per instruction: continuation lines joined, comment lines dropped (also
    inside a continuation, as Docker does)."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        keyword, _, rest = (pending + line).partition(" ")
        out.append((keyword.upper(), rest.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continuation line"
    return out


def _exec_form(value: str, what: str) -> list[str]:
    """A JSON array (exec form): PID 1 is the program itself and gets SIGTERM, not a shell."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        pytest.fail(f"{what} is not in exec form (a JSON array): {value!r}")
    assert isinstance(parsed, list) and all(isinstance(p, str) for p in parsed), what
    return parsed


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)", duration)
    assert match, f"unknown duration {duration!r}"
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match[2]]


def from_dockerfile(path: Path) -> ImageConfig:
    """The config of the Dockerfile's last stage (the runtime)."""
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in _instructions(path.read_text(encoding="utf-8")):
        if keyword == "FROM":
            stages.append([])
        elif stages:
            stages[-1].append((keyword, rest))
    assert stages, "no FROM in the Dockerfile"
    config = ImageConfig(entrypoint=[], cmd=[], exposed=set(), user="", env={}, healthcheck=[])
    for keyword, rest in stages[-1]:
        if keyword == "ENTRYPOINT":
            config.entrypoint = _exec_form(rest, "ENTRYPOINT")
            config.cmd = []  # Docker resets an inherited CMD when ENTRYPOINT is set
        elif keyword == "CMD":
            config.cmd = _exec_form(rest, "CMD")
        elif keyword == "EXPOSE":
            config.exposed |= {int(port.split("/")[0]) for port in rest.split()}
        elif keyword == "USER":
            config.user = rest
        elif keyword == "ENV":
            tokens = shlex.split(rest)
            if tokens and "=" not in tokens[0]:  # legacy `ENV KEY value`
                config.env[tokens[0]] = " ".join(tokens[1:])
            else:
                config.env.update(token.split("=", 1) for token in tokens)  # type: ignore[misc]
        elif keyword == "HEALTHCHECK":
            options, _, command = rest.partition("CMD ")
            config.healthcheck = ["CMD", *_exec_form(command, "HEALTHCHECK CMD")]
            for option in options.split():
                name, _, value = option.removeprefix("--").partition("=")
                if name == "timeout":
                    config.healthcheck_timeout_s = _seconds(value)
        elif keyword == "COPY":
            *sources, destination = [p for p in rest.split() if not p.startswith("--")]
            for source in sources:
                config.copied[source.rstrip("/")] = destination.rstrip("/")
    return config


def from_inspect(path: Path) -> ImageConfig:
    """The config of a built image from `podman image inspect` (or `docker image inspect`)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    image = data[0] if isinstance(data, list) else data
    raw = image["Config"]
    # Docker keeps it in Config; podman at the top level (4.3: Healthcheck, later HealthCheck).
    health = raw.get("Healthcheck") or image.get("Healthcheck") or image.get("HealthCheck") or {}
    return ImageConfig(
        entrypoint=list(raw.get("Entrypoint") or []),
        cmd=list(raw.get("Cmd") or []),
        exposed={int(port.split("/")[0]) for port in raw.get("ExposedPorts") or {}},
        user=raw.get("User", ""),
        env=dict(item.split("=", 1) for item in raw.get("Env") or []),
        healthcheck=list(health.get("Test") or []),
        healthcheck_timeout_s=(health.get("Timeout") or 0) / 1e9,
    )


@pytest.fixture(scope="module")
def dockerfile() -> ImageConfig:
    return from_dockerfile(DOCKERFILE)


@pytest.fixture(scope="module", params=["Dockerfile", "built image"])
def image(request: pytest.FixtureRequest, dockerfile: ImageConfig) -> ImageConfig:
    if request.param == "Dockerfile":
        return dockerfile
    inspect = os.environ.get(INSPECT_ENV, "")
    if not inspect:
        pytest.skip(f"no built image: {INSPECT_ENV} is unset (scripts/image_smoke.sh sets it)")
    return from_inspect(Path(inspect))


@pytest.fixture(scope="module")
def sidecar() -> dict[str, Any]:
    deployment = yaml.safe_load(DEPLOYMENT.read_text(encoding="utf-8"))
    pod = deployment["spec"]["template"]["spec"]
    (container,) = [c for c in pod["containers"] if c["name"] == SIDECAR]
    container["_pod"] = pod
    return dict(container)


@dataclass
class Rendered:
    """The sidecar as the kubelet would start it from the image."""

    argv: list[str]
    env: dict[str, str]
    settings: Settings


def render(image: ImageConfig, container: dict[str, Any]) -> Rendered:
    # Kubernetes: `command` replaces the ENTRYPOINT (and then the CMD is not used); `args`
    # replace the CMD.
    if "command" in container:
        argv = [*container["command"], *container.get("args", [])]
    else:
        argv = [*image.entrypoint, *container.get("args", image.cmd)]
    secret = yaml.safe_load(SECRET.read_text(encoding="utf-8"))
    env = dict(image.env)
    for var in container.get("env", []):
        if "valueFrom" in var:
            env[var["name"]] = secret["stringData"][var["valueFrom"]["secretKeyRef"]["key"]]
        else:
            env[var["name"]] = str(var["value"])
    assert argv and argv[0] == CONSOLE_SCRIPT, f"the sidecar does not run {CONSOLE_SCRIPT}: {argv}"
    return Rendered(argv, env, _serve_settings(argv[1:], env))


def _serve_settings(args: list[str], env: dict[str, str]) -> Settings:
    try:
        parsed = build_parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"`{CONSOLE_SCRIPT} {shlex.join(args)}` is rejected by the CLI (see stderr)")
    assert parsed.command == "serve", args
    options = {k: v for k, v in vars(parsed).items() if k != "command"}
    known = {f for f in Settings.__dataclass_fields__}
    return settings_from_env(env).with_overrides(**{k: v for k, v in options.items() if k in known})


def _uid_gid(user: str) -> tuple[int, int]:
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and gid.isdigit(), f"USER {user!r}: a numeric uid:gid (runAsNonRoot can check it)"
    return int(uid), int(gid)


def test_the_entrypoint_is_the_packages_console_script(image: ImageConfig) -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]

    assert image.entrypoint == [CONSOLE_SCRIPT]
    assert scripts[CONSOLE_SCRIPT] == "smart_dispatch.cli:main"


def test_the_default_command_serves_on_the_exposed_ports(image: ImageConfig, dockerfile: ImageConfig) -> None:
    settings = _serve_settings(image.cmd, image.env)

    assert settings.host == "0.0.0.0"  # reachable through a published port
    assert settings.port in image.exposed
    assert settings.health_port in image.exposed  # SD_HEALTH_PORT, set by the image
    assert image.exposed == {settings.port, settings.health_port}
    assert str(settings.rules_dir) == dockerfile.copied["rules"]  # the shipped rules
    assert str(settings.templates_dir) == dockerfile.copied["templates"]  # SD_TEMPLATES


def test_the_healthcheck_probes_the_plaintext_health_port_also_with_tls_on(image: ImageConfig) -> None:
    kind, *argv = image.healthcheck
    assert kind == "CMD" and argv[0] == CONSOLE_SCRIPT, image.healthcheck
    health = build_parser().parse_args(argv[1:])
    assert health.command == "health"
    tls_on = settings_from_env({**image.env, "SD_TLS_CERT": "/tls/cert.pem", "SD_TLS_KEY": "/tls/key.pem"})

    # `smart-dispatch health` without --target probes 127.0.0.1:SD_HEALTH_PORT when it is set
    # (cli._health); it is, so the HEALTHCHECK never needs the TLS port.
    assert health.target is None
    assert tls_on.health_port and tls_on.health_port in image.exposed
    assert health.timeout < image.healthcheck_timeout_s  # its own deadline, inside Docker's


def test_the_user_is_numeric_non_root_and_the_pods(image: ImageConfig, sidecar: dict[str, Any]) -> None:
    uid, gid = _uid_gid(image.user)
    pod_context = sidecar["_pod"]["securityContext"]

    assert uid != 0 and gid != 0
    assert (pod_context["runAsUser"], pod_context["runAsGroup"]) == (uid, gid)
    assert pod_context.get("fsGroup", gid) == gid


def test_the_sidecar_rendered_from_the_image_serves_what_the_manifest_expects(
    image: ImageConfig, sidecar: dict[str, Any], dockerfile: ImageConfig
) -> None:
    rendered = render(image, sidecar)
    settings = rendered.settings
    default = _serve_settings(image.cmd, image.env)
    container_ports = {p["containerPort"] for p in sidecar["ports"]}

    # The manifest keeps the image's serving flags (it may add others).
    for name in ("host", "port", "rules_dir"):
        assert getattr(settings, name) == getattr(default, name), name
    assert settings.port in container_ports
    assert container_ports <= image.exposed
    mounts = {m["mountPath"] for m in sidecar.get("volumeMounts", [])}
    assert str(settings.rules_dir) in mounts  # the ConfigMap replaces the shipped rules
    assert str(settings.rules_dir) == dockerfile.copied["rules"]
    grace = sidecar["_pod"]["terminationGracePeriodSeconds"]
    assert settings.shutdown_grace_s < grace


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_every_probe_reaches_a_port_the_rendered_sidecar_serves_health_on(
    image: ImageConfig, sidecar: dict[str, Any], probe: str
) -> None:
    settings = render(image, sidecar).settings
    port = sidecar[probe]["grpc"]["port"]
    health_ports = {settings.health_port} if settings.tls_cert else {settings.port, settings.health_port}

    assert port in health_ports - {0}, f"{probe} probes {port}; health is served on {health_ports}"
    assert port in image.exposed


def test_with_tls_on_the_sidecar_still_serves_plaintext_health_on_an_exposed_port(
    image: ImageConfig, sidecar: dict[str, Any]
) -> None:
    """Kubernetes' grpc probes cannot speak TLS: the same sidecar with --tls-cert serves its
    plaintext health on the image's SD_HEALTH_PORT, which the probes then use (deploy/README.md)."""
    args = [*sidecar.get("args", image.cmd), "--tls-cert", "/tls/tls.crt", "--tls-key", "/tls/tls.key"]
    settings = render(image, {**sidecar, "args": args}).settings

    assert settings.tls_cert is not None
    assert settings.health_port in image.exposed
    assert settings.health_port != settings.port


def test_the_built_image_has_the_dockerfiles_config(dockerfile: ImageConfig) -> None:
    """Only after a build (scripts/image_smoke.sh): what the parse above reads is what the image
    builder made of the Dockerfile: `--format docker` kept the HEALTHCHECK, nothing got lost."""
    inspect = os.environ.get(INSPECT_ENV, "")
    if not inspect:
        pytest.skip(f"no built image: {INSPECT_ENV} is unset (scripts/image_smoke.sh sets it)")
    built = from_inspect(Path(inspect))

    assert built.healthcheck, "the built image has no HEALTHCHECK (built in OCI format?)"
    assert built.healthcheck == dockerfile.healthcheck
    assert built.healthcheck_timeout_s == dockerfile.healthcheck_timeout_s
    assert (built.entrypoint, built.cmd, built.exposed, built.user) == (
        dockerfile.entrypoint,
        dockerfile.cmd,
        dockerfile.exposed,
        dockerfile.user,
    )
    assert dockerfile.env.items() <= built.env.items()
