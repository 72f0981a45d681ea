"""deploy/: the Dockerfile and the Kubernetes manifests agree with the CLI they start: the container's
arguments parse as `lmserve serve api_server` arguments, and every port (EXPOSE, health check,
containerPort, probes, Service, Prometheus annotation) is the server's port, which is the CLI default."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")

from lmserve.cli.main import build_parser   # noqa: E402

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def dockerfile() -> dict[str, str]:
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return {ln.split(None, 1)[0]: ln.split(None, 1)[1] for ln in lines}


def manifests() -> dict[str, dict]:
    docs = [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    return {d["kind"]: d for d in docs}


def server_args(args: list[str]):
    return build_parser().parse_args(["serve", "api_server", *args])   # exits (SystemExit) if the CLI refuses them


def test_dockerfile_runs_the_api_server_on_the_cli_port_with_a_health_check():
    d = dockerfile()
    default_port = server_args([]).server_port
    assert d["FROM"].startswith("nvidia/cuda:")
    assert json.loads(d["ENTRYPOINT"]) == ["lmserve", "serve", "api_server"]
    args = server_args(json.loads(d["CMD"]))
    assert args.server_port == default_port == int(d["EXPOSE"])
    assert f"http://127.0.0.1:{default_port}/health" in shlex.split(d["HEALTHCHECK"])


def test_deployment_probes_ports_and_gpus_agree_with_the_cli():
    k8s = manifests()
    deployment, service = k8s["Deployment"], k8s["Service"]
    pod = deployment["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert "command" not in container        # the image's entry point: lmserve serve api_server
    args = server_args(container["args"])
    assert args.server_port == server_args([]).server_port
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == args.server_port
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/health" and ports.get(get["port"], get["port"]) == args.server_port
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) == args.tp
    for annotations in (pod["metadata"]["annotations"], service["metadata"]["annotations"]):
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == args.server_port
    (svc_port,) = service["spec"]["ports"]
    assert svc_port["targetPort"] == "http" and svc_port["port"] == args.server_port
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_probed_paths_exist_in_the_server():
    from lmserve.serve.misc import open_router
    paths = {route.path for route in open_router.routes}
    assert {"/health", "/metrics"} <= paths
