"""`mlops serve manifests` and `mlops serve build`: manifests checked against Kubernetes' own schemas, and
the package's real image built with buildah on a cached Debian base, then run and asked over loopback."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml
from harness import CLEAN_VARS, stop_group, wait_for
from image_base import buildah, ensure_base, storage_env
from test_serving import IRIS_COLUMNS, SAMPLES, free_port, records

from mlops_jupyter import cli

PY = sys.executable
# the model as a notebook saves it, into a plain folder (no tracking store needed to package a folder)
SAVE_MODEL = r"""
import json, sys
import mlflow.sklearn
import pandas as pd
from mlflow.models import infer_signature
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier

X, y = load_iris(return_X_y=True, as_frame=True)
model = RandomForestClassifier(n_estimators=20, random_state=0).fit(X, y)
mlflow.sklearn.save_model(model, sys.argv[1], signature=infer_signature(X, model.predict(X)), input_example=X.head(3),
                          pip_requirements=["scikit-learn"], skops_trusted_types=["sklearn.tree._tree.Tree"])
print(json.dumps(model.predict(pd.DataFrame(json.loads(sys.argv[2]), columns=X.columns)).tolist()))
"""
# the oldest Kubernetes minor still supported upstream when this was written, and the newest schema known
K8S_VERSIONS = ("1.31.0", kubernetes_validate.latest_version())


def clean_env() -> dict:
    return {k: v for k, v in os.environ.items() if k not in CLEAN_VARS}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A serving package of a 20-tree iris forest, and the model's answers for SAMPLES."""
    root = tmp_path_factory.mktemp("deploy")
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n')
    out = subprocess.run([PY, "-c", SAVE_MODEL, str(root / "model"), json.dumps(SAMPLES)], capture_output=True,
                         text=True, env=clean_env())
    assert out.returncode == 0, out.stderr
    assert cli.main(["serve", "generate", str(root / "model"), "--out", str(root / "pkg"), "--name", "iris",
                     "--project", str(root)]) == 0
    return root / "pkg", json.loads(out.stdout.strip().splitlines()[-1])


def one_line_error(capsys, code: int, words: str, streamed: bool = False) -> None:
    """Exit status 2 and one line saying why (after the output of the step that failed, when ``streamed``)."""
    err = capsys.readouterr().err
    line = err.splitlines()[-1] if streamed else err.rstrip("\n")
    assert code == 2 and words in line and line.startswith("mlops serve ") and "\n" not in line, err


# ---- manifests ----------------------------------------------------------------------------------
def test_manifests_are_valid_kubernetes_objects(package, capsys):
    pkg, _ = package
    image = "registry.example.com:5000/ml/iris-serving:1"
    assert cli.main(["serve", "manifests", str(pkg), "--image", image, "--replicas", "3"]) == 0
    assert "kubectl apply -f" in capsys.readouterr().out
    docs = {p.name: yaml.safe_load(p.read_text()) for p in sorted((pkg / "k8s").iterdir())}
    assert set(docs) == {"deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"}
    for version in K8S_VERSIONS:  # strict: an unknown or misspelt field fails too
        for name, doc in docs.items():
            kubernetes_validate.validate(doc, version, strict=True)

    deployment, service, hpa, pdb = (docs[n] for n in ("deployment.yaml", "service.yaml", "hpa.yaml", "pdb.yaml"))
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == image and deployment["spec"]["replicas"] == 3
    assert container["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 60  # time to load the model
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["selector"] == selector and pdb["spec"]["selector"]["matchLabels"] == selector
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] == 3 and hpa["spec"]["maxReplicas"] > 3
    assert pdb["apiVersion"] == "policy/v1"

    # written again for a new image: replaced whole
    assert cli.main(["serve", "manifests", str(pkg), "--image", "iris-serving:2"]) == 0
    again = yaml.safe_load((pkg / "k8s" / "deployment.yaml").read_text())
    assert again["spec"]["template"]["spec"]["containers"][0]["image"] == "iris-serving:2"
    assert again["spec"]["replicas"] == 2


def test_a_schema_violation_would_be_caught(package):
    """The validator is no rubber stamp: a misspelt probe field fails it."""
    pkg, _ = package
    assert cli.main(["serve", "manifests", str(pkg), "--image", "iris-serving:1"]) == 0
    doc = yaml.safe_load((pkg / "k8s" / "deployment.yaml").read_text())
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/ready"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, K8S_VERSIONS[-1], strict=True)


def test_manifests_refuse_bad_input_and_write_nothing(package, tmp_path, capsys):
    pkg, _ = package
    one_line_error(capsys, cli.main(["serve", "manifests", str(pkg), "--image", "Iris Serving"]), "not an image reference")
    one_line_error(capsys, cli.main(["serve", "manifests", str(tmp_path), "--image", "x:1"]),
                   "not a generated serving package")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    one_line_error(capsys, cli.main(["serve", "manifests", str(pkg), "--image", "x:1", "--out", str(busy)]),
                   "holds files other than manifests")
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    assert cli.main(["serve", "manifests", str(pkg), "--image", "x:1", "--replicas", "0"]) == 2
    assert "positive whole number" in capsys.readouterr().err


# ---- build ---------------------------------------------------------------------------------------
def test_build_refuses_bad_input_before_doing_anything(package, tmp_path, capsys, monkeypatch):
    pkg, _ = package
    one_line_error(capsys, cli.main(["serve", "build", str(pkg), "--tag", "Iris:1"]), "not an image reference")
    one_line_error(capsys, cli.main(["serve", "build", str(pkg), "--base", "two words"]), "not an image reference")
    one_line_error(capsys, cli.main(["serve", "build", str(pkg), "--push", "not a registry"]), "is not a registry")
    one_line_error(capsys, cli.main(["serve", "build", str(tmp_path)]), "not a generated serving package")
    monkeypatch.setenv("PATH", str(tmp_path))  # no engine anywhere
    one_line_error(capsys, cli.main(["serve", "build", str(pkg)]), "no container engine found")
    assert not (pkg / "build.json").exists()


def test_the_engine_picked_without_engine_can_build_here():
    """docker, podman, buildah in that order, passing over a docker CLI whose daemon does not answer (as on
    machines with the client only), which would fail every build."""
    from mlops_jupyter.serving.build import ENGINES, find_engine

    engine = find_engine()
    assert engine in ENGINES
    daemon = shutil.which("docker") and subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    assert (engine == "docker") == bool(daemon), (engine, daemon)


def test_failing_package_tests_stop_the_build(package, tmp_path, capsys, monkeypatch):
    pkg, _ = package
    broken = tmp_path / "broken"
    shutil.copytree(pkg, broken)
    with (broken / "tests" / "test_app.py").open("a") as fh:
        fh.write("\n\ndef test_the_model_is_perfect():\n    assert 0.97 == 1.0\n")
    for key, value in storage_env().items():
        monkeypatch.setenv(key, value)
    code = cli.main(["serve", "build", str(broken), "--tag", "localhost/broken-serving:1", "--engine", "buildah"])
    one_line_error(capsys, code, "the package's tests failed (1 failed", streamed=True)
    assert buildah("inspect", "--type", "image", "localhost/broken-serving:1", check=False).returncode != 0


def test_the_image_builds_runs_as_non_root_and_answers(package, capsys, monkeypatch):
    """The slow one (one image build, ~1-2 min on the cached base): generated Dockerfile -> buildah ->
    the server inside the image, asked /predict, /invocations and /v2 over loopback."""
    pkg, expected = package
    timings = {}
    start = time.monotonic()
    base, how = ensure_base()
    timings["base"] = f"{how} ({time.monotonic() - start:.0f} s)"
    for key, value in storage_env().items():
        monkeypatch.setenv(key, value)
    tag = f"localhost/iris-serving:test-{os.getpid()}"
    start = time.monotonic()
    assert cli.main(["serve", "build", str(pkg), "--tag", tag, "--base", base, "--engine", "buildah"]) == 0, \
        capsys.readouterr().err[-3000:]
    timings["tests + build"] = f"{time.monotonic() - start:.0f} s"
    out = capsys.readouterr().out
    built = json.loads((pkg / "build.json").read_text())
    assert built["tag"] == tag and built["engine"] == "buildah" and "passed" in built["tests"] and tag in out
    timings["size"] = f"{built['size_bytes'] / 1e6:.0f} MB"

    config = json.loads(buildah("inspect", "--type", "image", tag).stdout)["Docker"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Healthcheck"]["Test"] == ["CMD", "python", "-m", "iris_serving", "--check"]
    assert config["Cmd"] == ["python", "-m", "iris_serving", "--host", "0.0.0.0"] and "8080/tcp" in config["ExposedPorts"]
    container = buildah("from", tag).stdout.strip()
    proc = None
    try:
        root = Path(buildah("mount", container).stdout.strip())
        host_bundle = Path("/etc/ssl/certs/ca-certificates.crt")
        # the build borrowed this machine's CA bundle as a secret: the image keeps Debian's own, not ours
        assert (root / "etc/ssl/certs/ca-certificates.crt").read_bytes() != host_bundle.read_bytes()
        assert not (root / "run/secrets/ca-bundle").exists() and (root / "opt/venv/bin/uvicorn").is_file()
        assert not (root / "src").exists()  # the build stage's sources stayed behind
        buildah("umount", container)

        port = free_port()
        start = time.monotonic()
        log = pkg.parent / "image-server.log"
        proc = subprocess.Popen(["buildah", "run", "--isolation", "chroot", "--network", "host", container, "--",
                                 "python", "-m", "iris_serving", "--host", "127.0.0.1", "--port", str(port)],
                                stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **storage_env()})
        url = f"http://127.0.0.1:{port}"

        def ready():
            assert proc.poll() is None, log.read_text()
            try:
                return httpx.get(f"{url}/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout=120, interval=0.3, what="the server in the image")
        timings["start in image"] = f"{time.monotonic() - start:.1f} s"
        assert httpx.post(f"{url}/predict", json={"rows": records(SAMPLES)}).json() == {"predictions": expected}
        split = {"dataframe_split": {"columns": IRIS_COLUMNS, "data": SAMPLES}}
        assert httpx.post(f"{url}/invocations", json=split).json() == {"predictions": expected}
        tensors = [{"name": c, "datatype": "FP64", "shape": [4], "data": [r[i] for r in SAMPLES]}
                   for i, c in enumerate(IRIS_COLUMNS)]
        v2 = httpx.post(f"{url}/v2/models/iris/infer", json={"inputs": tensors}).json()
        assert v2["outputs"][0]["data"] == expected
        version = httpx.get(f"{url}/version").json()
        assert version["python"].startswith("3.11") and version["packages"]["uvicorn"]
        # the HEALTHCHECK's own command, run in the container beside the server
        assert buildah("run", "--isolation", "chroot", "--network", "host", container, "--", "python", "-m",
                       "iris_serving", "--check", "--port", str(port), check=False).returncode == 0
    finally:
        if proc is not None:
            stop_group(proc)
        buildah("rm", container, check=False)
        buildah("rmi", tag, check=False)
        with capsys.disabled():
            print("\nimage test: " + ", ".join(f"{k} {v}" for k, v in timings.items()))
