"""The deployable artifacts, checked offline: the Dockerfile (hadolint, and what it must be),
the Kubernetes manifests (the Kubernetes JSON schemas, strict), their references to each other
and to the gateway, the config they carry, and the commands docs/deployment.md prints."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from doc_blocks import take
from shipyard.config import parse_config
from shipyard.config.engines import RayConfig
from shipyard.observe.metrics import Metrics

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "deploy" / "kubernetes"
K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests promise to work on
BIN = Path(sys.executable).parent


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _manifests() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in _docs(path):
            found[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return found


def test_dockerfile_passes_hadolint_and_is_multi_stage_non_root_with_a_health_check() -> None:
    result = subprocess.run([str(BIN / "hadolint"), "--failure-threshold", "warning",
                             "Dockerfile"], cwd=REPO, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO / "Dockerfile").read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)", text, re.MULTILINE)
    assert stages == ["build", "runtime"]
    runtime = text.split("AS runtime", 1)[1]
    assert "COPY --from=build /opt/shipyard /opt/shipyard" in runtime
    assert "pip install" not in runtime  # build tools and caches stay in the build stage
    user = re.search(r"^USER (\d+):(\d+)$", runtime, re.MULTILINE)
    assert user is not None and int(user.group(1)) > 0
    assert re.search(r"^HEALTHCHECK .*/livez", runtime, re.MULTILINE | re.DOTALL)
    assert 'ARG EXTRAS=' in text and '".[${EXTRAS}]"' in text
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".venv", ".git", "tests", "bench"} <= set(ignored)


@pytest.mark.parametrize("path", sorted(p.name for p in K8S.glob("*.yaml")
                                        if p.name != "kustomization.yaml"))
def test_manifests_validate_against_the_kubernetes_schemas(path: str) -> None:
    for doc in _docs(K8S / path):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_kustomization_renders_and_the_result_validates() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:  # kustomize is built into kubectl; the files are validated one by one
        pytest.skip("kubectl is not installed (apt-get install kubectl) to render kustomize")
    rendered = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True,
                              text=True, timeout=60, check=True).stdout
    docs = [d for d in yaml.safe_load_all(rendered) if d]
    assert len(docs) == len(_manifests())
    for doc in docs:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "shipyard"
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files


def test_the_manifests_fit_together_and_fit_the_gateway(tmp_path: Path) -> None:
    found = _manifests()
    deployment = found["Deployment/shipyard-gateway"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    container = pod["spec"]["containers"][0]
    port = container["ports"][0]
    assert port["containerPort"] == 8000 and "--port" in container["args"]
    assert container["args"][container["args"].index("--port") + 1] == "8000"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert container["startupProbe"]["httpGet"]["path"] == "/livez"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {"/etc/shipyard", "/var/lib/shipyard", "/tmp"} <= mounts
    service = found["Service/shipyard-gateway"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    hpa = found["HorizontalPodAutoscaler/shipyard-gateway"]
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    metric = hpa["spec"]["metrics"][0]["pods"]["metric"]["name"]
    exposition = Metrics().exposition().decode()
    assert f"# TYPE {metric} gauge" in exposition  # the gateway really exports it
    adapter = found["ConfigMap/shipyard-prometheus-adapter-rules"]
    assert metric in adapter["data"]["config.yaml"]
    pdb = found["PodDisruptionBudget/shipyard-gateway"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # The config the pods mount is a valid Shipyard config once its secrets resolve...
    secret = found["Secret/shipyard"]["stringData"]
    text = found["ConfigMap/shipyard-config"]["data"]["shipyard.yaml"]
    config = parse_config(text, environ=dict(secret))
    assert config.state.backend == "redis" and config.store.url.startswith("postgresql")
    drain = config.server.drain_timeout_s
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain
    # ...and every variable it references comes from the Secret the Deployment mounts.
    referenced = set(re.findall(r"\$env: (\w+)", text))
    assert referenced <= set(secret)
    assert container["envFrom"][0]["secretRef"]["name"] == "shipyard"


def test_the_rayservice_template() -> None:
    (service,) = _docs(K8S / "ray" / "rayservice.yaml")
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    spec = service["spec"]
    serve = yaml.safe_load(spec["serveConfigV2"])
    (application,) = serve["applications"]
    assert re.fullmatch(r"[\w.]+:\w+", application["import_path"])
    for deployment in application["deployments"]:
        bounds = deployment["autoscaling_config"]
        assert 1 <= bounds["min_replicas"] <= bounds["max_replicas"]
        assert deployment["max_ongoing_requests"] > 0  # bounded queues
    cluster = spec["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:  # every pod template is a valid Kubernetes pod template
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "ray"},
             "template": group["template"]}, K8S_VERSION, strict=True)
    for group in cluster["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]


def test_the_raycluster_template_runs_the_shipyard_image_and_fits_the_ray_config() -> None:
    (cluster,) = _docs(K8S / "ray" / "raycluster.yaml")
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    spec = cluster["spec"]
    gateway = _docs(K8S / "deployment.yaml")[0]["spec"]["template"]["spec"]["containers"][0]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        kubernetes_validate.validate(
            {"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "ray"},
             "template": group["template"]}, K8S_VERSION, strict=True)
        # Replicas import Shipyard and the user's code: the gateway's own image.
        (container,) = group["template"]["spec"]["containers"]
        assert container["image"] == gateway["image"]
    for group in spec["workerGroupSpecs"]:
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    # The address docs/ray.md tells the gateway to use is KubeRay's head service.
    address = f"{cluster['metadata']['name']}-head-svc:6379"
    assert f'address: "{address}"' in (REPO / "docs" / "ray.md").read_text()
    RayConfig(address=address)


def _blocks(doc: str) -> list[tuple[str | None, str]]:
    """(marker, commands) for every ```bash block; the marker is the `<!-- not run here:
    ... -->` comment right before it, if any."""
    pattern = re.compile(r"(?:<!-- (not run here: [^>]+) -->\n)?```bash\n(.*?)```", re.DOTALL)
    return [(m.group(1), m.group(2)) for m in pattern.finditer(doc)]


# The block the next test runs (the Docker and Kubernetes ones: test_docs_coverage.NOT_RUN).
DEPLOY_RUN = take("docs/deployment.md", lang="bash", containing="hadolint")


def test_the_commands_in_the_deployment_guide_run_as_printed(tmp_path: Path) -> None:
    doc = (REPO / "docs" / "deployment.md").read_text()
    blocks = _blocks(doc)
    skipped = {marker for marker, _ in blocks if marker}
    # Only what this machine cannot have is skipped, and each says why.
    assert skipped == {"not run here: needs a Docker engine",
                       "not run here: needs a Kubernetes cluster"}
    checkout = tmp_path / "checkout"  # a directory outside the repo with the files it names
    checkout.mkdir()
    shutil.copy(REPO / "Dockerfile", checkout)
    shutil.copytree(REPO / "deploy", checkout / "deploy")
    ran = 0
    for marker, commands in blocks:
        if marker:
            continue
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", commands], cwd=checkout,
                                env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"},
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, (commands, result.stdout, result.stderr)
        ran += 1
    assert ran >= 1


def test_no_docker_engine_here_is_said_in_the_guide() -> None:
    doc = (REPO / "docs" / "deployment.md").read_text()
    assert "no Docker\nengine" in doc or "no Docker engine" in doc
