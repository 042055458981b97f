"""deploy/k8s: every manifest is valid Kubernetes (kubernetes-validate's bundled schemas: no cluster, no
network) and fits the image the Dockerfile builds and the service it runs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

kubernetes_validate = pytest.importorskip("kubernetes_validate")
yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"  # the oldest version still in upstream support when this was written
NOT_KUBERNETES = {"Kustomization"}  # kustomize's own file: no API-server schema


def manifests() -> dict[str, dict[str, Any]]:
    """kind -> the resource, for every YAML document under deploy/k8s."""
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            found[document["kind"]] = document
    return found


def dockerfile(pattern: str) -> str:
    match = re.search(pattern, (ROOT / "Dockerfile").read_text(encoding="utf-8"), re.MULTILINE)
    assert match, pattern
    return match.group(1)


def container(resources: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (only,) = resources["Deployment"]["spec"]["template"]["spec"]["containers"]
    return only


def test_every_manifest_is_valid_kubernetes() -> None:
    resources = manifests()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler"} <= set(resources)
    for kind, resource in resources.items():
        if kind not in NOT_KUBERNETES:
            kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)
    listed = set(resources["Kustomization"]["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_an_invalid_manifest_is_caught() -> None:
    broken = manifests()
    container(broken)["ports"][0]["containerPort"] = "eight thousand"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken["Deployment"], KUBERNETES_VERSION, strict=True)


def test_the_deployment_runs_the_image_as_the_dockerfile_builds_it() -> None:
    resources = manifests()
    pod = resources["Deployment"]["spec"]["template"]["spec"]
    main = container(resources)
    port = int(dockerfile(r"^EXPOSE (\d+)"))
    assert main["ports"][0]["containerPort"] == port
    assert main["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert main["livenessProbe"]["httpGet"]["path"] == "/healthz"
    uid, gid = dockerfile(r"^USER (\d+:\d+)").split(":")
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(uid), int(gid))
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    assert main["securityContext"]["allowPrivilegeEscalation"] is False
    tmp = next(m for m in main["volumeMounts"] if m["mountPath"] == "/tmp")
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == tmp["name"])
    env = {e["name"]: e["value"] for e in main["env"]}
    assert env["POCKETBERT_CACHE_DIR"].startswith("/tmp/")  # the only writable place
    assert set(main["resources"]["requests"]) == set(main["resources"]["limits"]) == {"cpu", "memory"}
    assert main["image"].split(":")[0] == "pocketbert"  # README: docker build -t pocketbert .


def test_service_and_autoscaler_point_at_the_deployment() -> None:
    resources = manifests()
    deployment, service, hpa = (resources[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler"))
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["ports"][0]["targetPort"] in {p["name"] for p in container(resources)["ports"]}
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
