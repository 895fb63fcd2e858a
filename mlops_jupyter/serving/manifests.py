"""``mlops serve manifests DIR --image IMAGE``: Kubernetes manifests for a generated serving package.

A Deployment (probes: startup while the model loads, readiness on /ready, which also turns false while
the server sheds load, liveness on /health; resources; non-root, read-only, no capabilities), a
Service, an autoscaling/v2 HorizontalPodAutoscaler on CPU and a PodDisruptionBudget, one file each:
``kubectl apply -f DIR/k8s``.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

from ..errors import InvalidInput
from .build import check_reference
from .run import app_of

PORT = 8080
UID = 10001  # the image's USER (Dockerfile.tmpl)
FILES = ("deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml")
MAX_REPLICAS_FACTOR = 4  # the autoscaler may grow to this many times the replicas asked for
LOAD_SECONDS = 120  # how long the startup probe gives the model to load before the pod is restarted


def _k8s_name(text: str) -> str:
    """A DNS-1123 label: lower case, digits and dashes, at most 63 characters."""
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:63].rstrip("-") or "model-serving"


def _memory(model_dir: Path) -> tuple[str, str]:
    """Memory request and limit: room for the Python stack plus a few copies of the model's files."""
    size = sum(f.stat().st_size for f in model_dir.rglob("*") if f.is_file())
    request = max(512, 64 * math.ceil((256 + 4 * size / 2**20) / 64))
    return f"{request}Mi", f"{2 * request}Mi"


def manifests(folder: str | Path, image: str, replicas: int = 2) -> dict[str, dict]:
    """The manifests for the package in ``folder`` running ``image`` with ``replicas`` pods, by file name."""
    folder = Path(folder).resolve()
    module = app_of(folder).split(".")[0]
    check_reference(image, "image")
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 1:
        raise InvalidInput(f"replicas must be a whole number >= 1, not {replicas!r}.", field="replicas", value=replicas)
    spec = json.loads((folder / module / "serving.json").read_text())
    name = _k8s_name(f"{spec['name']}-serving")
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/component": "model-server",
              "app.kubernetes.io/version": _k8s_name(str(spec["version"])),
              "app.kubernetes.io/managed-by": "mlops-jupyter"}
    selector = {"app.kubernetes.io/name": name}
    request, limit = _memory(folder / module / "mlflow_model")
    probe = lambda path, period, failures: {  # noqa: E731
        "httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "timeoutSeconds": 2,
        "failureThreshold": failures}
    container = {
        "name": "server", "image": image, "imagePullPolicy": "IfNotPresent",
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        # one worker per pod: the autoscaler adds pods, and a pod's CPU request stays one process's
        "env": [{"name": "PORT", "value": str(PORT)}, {"name": "WEB_CONCURRENCY", "value": "1"},
                {"name": "SERVE_MAX_LATENCY_MS", "value": "1000"},
                # a pod's disk is not kept: the prediction log goes to stdout too, for the cluster's log shipper
                {"name": "SERVE_LOG_DIR", "value": "/var/log/serving"}, {"name": "SERVE_LOG_MAX_MB", "value": "512"},
                {"name": "SERVE_LOG_STDOUT", "value": "ecs"}],
        "resources": {"requests": {"cpu": "500m", "memory": request}, "limits": {"memory": limit}},
        # uvicorn answers nothing until the model is loaded: /health passing means loaded
        "startupProbe": probe("/health", 2, LOAD_SECONDS // 2),
        "readinessProbe": probe("/ready", 5, 2),
        "livenessProbe": probe("/health", 10, 3),
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"},
                         {"name": "prediction-log", "mountPath": "/var/log/serving"}],
    }
    deployment = {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "labels": labels, "annotations": {"mlops-jupyter/model-uri": spec["model_uri"]}},
        "spec": {
            "replicas": replicas, "revisionHistoryLimit": 5, "selector": {"matchLabels": selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": {
                "metadata": {"labels": labels, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": str(PORT), "prometheus.io/path": "/metrics"}},
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
                                        "seccompProfile": {"type": "RuntimeDefault"}},
                    "terminationGracePeriodSeconds": 30,
                    "containers": [container],
                    # the root filesystem is read-only; /tmp holds the metrics files of several workers
                    "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                                {"name": "prediction-log", "emptyDir": {"sizeLimit": "1Gi"}}],
                }}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "labels": labels},
               "spec": {"type": "ClusterIP", "selector": selector,
                        "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]}}
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": name, "labels": labels},
           "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                    "minReplicas": replicas, "maxReplicas": MAX_REPLICAS_FACTOR * replicas,
                    "metrics": [{"type": "Resource", "resource": {
                        "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}}],
                    "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}}}
    # one pod at a time may be evicted (a drain goes on even with one replica; rolling updates surge first)
    pdb = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": name, "labels": labels},
           "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector}}}
    return dict(zip(FILES, (deployment, service, hpa, pdb)))


def write_manifests(folder: str | Path, image: str, replicas: int = 2, out: str | Path | None = None) -> Path:
    """Write the manifests into ``out`` (default DIR/k8s) and return it. Files of an earlier run there are
    replaced whole; a folder holding anything else is refused."""
    import yaml

    class Plain(yaml.SafeDumper):  # labels appear several times: write them out, not as YAML anchors
        def ignore_aliases(self, data):
            return True

    docs = manifests(folder, image, replicas)
    out = Path(out).resolve() if out else Path(folder).resolve() / "k8s"
    if out.exists() and (not out.is_dir() or any(p.name not in FILES for p in out.iterdir())):
        raise InvalidInput(f"{out} holds files other than manifests written here; give the manifests a new or "
                           "empty folder (nothing is overwritten but earlier manifests).", field="out", value=str(out))
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:  # written whole next to the target, then swapped in: never half a set
        for file, doc in docs.items():
            (staging / file).write_text(yaml.dump(doc, Dumper=Plain, sort_keys=False))
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
