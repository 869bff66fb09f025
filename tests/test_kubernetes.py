"""deploy/kubernetes/: valid against the Kubernetes API schemas (kubernetes-validate bundles
them: no cluster, no network), and consistent with the image and with keygate's drain — the
port and user of the Dockerfile, probes on /healthz, a grace period longer than the preStop
pause plus KEYGATE_DRAIN_S, every variable documented."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes release the manifests are held to (every field they use is in it).
K8S_VERSION = "1.29"

kv = pytest.importorskip("kubernetes_validate", reason="installed by the test extras")


def manifests() -> dict[str, dict[str, Any]]:
    """Every object of the directory by kind (one object a file)."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(MANIFESTS.glob("*.yaml")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        assert len(docs) == 1, path.name
        assert docs[0]["kind"] not in out, path.name
        out[docs[0]["kind"]] = docs[0]
    return out


def valid(obj: dict[str, Any]) -> bool:
    try:
        kv.validate(obj, K8S_VERSION, strict=True)
    except kv.ValidationError:
        return False
    return True


def test_every_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    objs = manifests()
    assert set(objs) == {
        "Deployment",
        "Service",
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
    }
    for kind, obj in objs.items():
        kv.validate(obj, K8S_VERSION, strict=True)  # raises with the path of the problem
        assert obj["metadata"]["name"] == "keygate", kind


def test_the_validator_refuses_a_broken_manifest() -> None:
    """What the check above is worth: a wrong type, a misspelt field and a missing required
    field are each refused."""
    deployment = manifests()["Deployment"]
    assert valid(deployment)
    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "http"
    misspelt = copy.deepcopy(deployment)
    misspelt["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    no_selector = copy.deepcopy(deployment)
    del no_selector["spec"]["selector"]
    for broken in (wrong_type, misspelt, no_selector):
        assert not valid(broken)


def container(objs: dict[str, dict[str, Any]]) -> dict[str, Any]:
    containers = objs["Deployment"]["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def test_the_deployment_matches_the_image_and_the_drain() -> None:
    objs = manifests()
    pod = objs["Deployment"]["spec"]["template"]["spec"]
    c = container(objs)
    dockerfile = (ROOT / "Dockerfile").read_text()
    port = int(re.search(r"^EXPOSE (\d+)$", dockerfile, re.M).group(1))
    uid = int(re.search(r"--uid (\d+)", dockerfile).group(1))
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert c["ports"][0]["containerPort"] == port == int(env["KEYGATE_PORT"])
    assert env["KEYGATE_HOST"] == "0.0.0.0"
    assert c["image"].split("/")[-1].split(":")[0] == "keygate"  # `docker build -t keygate`
    # non-root, as the image's own user
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == uid
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # readiness and liveness on /healthz, on the container's port
    for probe in ("readinessProbe", "livenessProbe"):
        check = c[probe]["httpGet"]
        assert check["path"] == "/healthz" and check["port"] in (port, c["ports"][0]["name"])
    assert c["resources"]["requests"]["cpu"] and c["resources"]["limits"]["memory"]
    # SIGTERM after the preStop pause; the grace period outlasts pause + drain
    pause = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
    drain = float(objs["ConfigMap"]["data"]["KEYGATE_DRAIN_S"])
    assert pod["terminationGracePeriodSeconds"] > pause + drain
    # a draining pod's /healthz is 503: liveness must not kill it before the drain ends
    live = c["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] > drain
    # the settings come from the ConfigMap and the Secret of this directory
    sources = {next(iter(s.values()))["name"] for s in c["envFrom"]}
    assert sources == {objs["ConfigMap"]["metadata"]["name"], objs["Secret"]["metadata"]["name"]}


def test_service_budget_and_autoscaler_select_the_deployment() -> None:
    objs = manifests()
    labels = objs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert objs["Deployment"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert objs["Service"]["spec"]["selector"].items() <= labels.items()
    assert objs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port_name = container(objs)["ports"][0]["name"]
    assert objs["Service"]["spec"]["ports"][0]["targetPort"] == port_name
    target = objs["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == (
        "Deployment",
        objs["Deployment"]["metadata"]["name"],
    )
    hpa = objs["HorizontalPodAutoscaler"]["spec"]
    assert hpa["minReplicas"] >= 2  # with the budget's minAvailable 1, a drain keeps one serving
    assert objs["PodDisruptionBudget"]["spec"]["minAvailable"] < hpa["minReplicas"]


def test_redis_and_postgres_by_url_and_every_variable_documented() -> None:
    objs = manifests()
    config = objs["ConfigMap"]["data"]
    secret = objs["Secret"]["stringData"]
    names = set(config) | set(secret) | {e["name"] for e in container(objs).get("env", [])}
    db = urlsplit(config["KEYGATE_DB"])
    assert db.scheme == "postgresql"
    assert db.password is None  # not in the ConfigMap: the Secret's PGPASSWORD
    assert secret["KEYGATE_REDIS_URL"].startswith(("redis://", "rediss://"))
    assert {"ACCESS_PASSWORD", "ADMIN_PASSWORD", "PGPASSWORD"} <= set(secret)
    # the Secret carries example values only, and says so
    text = (MANIFESTS / "secret.yaml").read_text()
    assert "EXAMPLE VALUES ONLY" in text
    for name in ("ACCESS_PASSWORD", "ADMIN_PASSWORD", "PGPASSWORD", "KEYGATE_SECRET_KEY"):
        assert secret[name].startswith("example-"), name
    reference = (ROOT / "docs" / "configuration.md").read_text()
    for name in names - {"CEREBRAS_API_KEYS"}:  # a `<NAME>_API_KEYS`
        assert f"`{name}`" in reference, name
    deploy = (ROOT / "docs" / "deploy.md").read_text()
    assert "kubectl apply -f deploy/kubernetes/" in deploy
