"""export --target kfp: the compiled Kubeflow Pipelines v2 YAML loads back with the KFP SDK with one component
per step, the parameters and the GPU limits of the tags; each component's entry point, run here as KFP would
run it (its producers' artifacts in, papermill on the step notebook, its hand-off out), computes the step."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from harness import notebook
from kfp import components

from mlops_jupyter import pipeline
from mlops_jupyter.errors import InvalidInput, PipelineError
from mlops_jupyter.pipeline import kubeflow, serializers

CLI = [sys.executable, "-m", "mlops_jupyter.cli"]


def fan_out(project, params="n = 3\nrate = 0.5\nlabel = 'x'"):
    return notebook(project / "fan.ipynb", [
        (params, ["parameters"]),
        ("data = list(range(n))", ["step:prep"]),
        ("total = sum(data) * rate", ["step:train", "after:prep", "limit:nvidia.com/gpu:1",
                                      "limit:cpu:500m",
                                      "limit:memory:1Gi"]),
        ("size = len(data)", ["step:count", "after:prep"]),
    ])


def test_the_compiled_pipeline_loads_back_with_components_parameters_and_gpu_limits(project, tmp_path):
    done = subprocess.run(CLI + ["export", "fan.ipynb", "--out", "pipe", "--target", "kfp", "--image", "img:1"],
                          capture_output=True, text=True, cwd=fan_out(project).parent)
    assert done.returncode == 0, done.stderr
    path = project / "pipe" / kubeflow.FILE
    assert f"Kubeflow: {path}" in done.stdout

    spec = components.load_component_from_file(str(path)).pipeline_spec
    assert dict(spec.root.input_definitions.parameters)["n"].default_value.number_value == 3
    assert set(spec.root.input_definitions.parameters) == {"n", "rate", "label"}
    tasks = spec.root.dag.tasks
    assert set(tasks) == {"prep", "train", "count"}
    assert set(tasks["train"].dependent_tasks) == {"prep"} == set(tasks["count"].dependent_tasks)
    assert set(spec.components["comp-train"].input_definitions.parameters) == {"rate"}
    assert set(spec.components["comp-train"].input_definitions.artifacts) == {"from_prep"}
    executors = {name: e["container"] for name, e in spec.deployment_spec["executors"].items()}
    train = executors["exec-train"]
    assert train["image"] == "img:1" and train["command"] == ["python", "-m", "mlops_jupyter.pipeline.kubeflow"]
    assert train["resources"]["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert train["resources"]["accelerator"]["resourceCount"] == "1"
    assert train["resources"]["resourceCpuLimit"] == "500m"
    assert train["resources"]["resourceMemoryLimit"] == str(2**30)
    assert "resources" not in executors["exec-prep"]

    # each component as KFP runs it: its producers' artifacts in, its own hand-off out
    prep, train_out = tmp_path / "prep-artifact", tmp_path / "train-artifact"
    assert kubeflow.main(["--folder", "pipe", "--step", "prep", "--handoff", str(prep), "--param", "n", "4"]) == 0
    (project / "pipe" / "artifacts").rename(tmp_path / "local")  # the next component's pod starts without them
    assert kubeflow.main(["--folder", "pipe", "--step", "train", "--handoff", str(train_out),
                          "--param", "rate", "2.0", "--input", "prep", str(prep)]) == 0
    assert (train_out / "train.ipynb").is_file()
    assert serializers.load(str(prep), "data", "train", "prep") == [0, 1, 2, 3]
    assert "rate = 2.0" in (train_out / "train.ipynb").read_text()  # typed back from KFP's string


def test_kfp_export_without_an_image_is_refused_before_writing_anything(project):
    nb = fan_out(project)
    with pytest.raises(InvalidInput, match="needs the image"):
        pipeline.export(nb, "pipe", target="kfp")
    assert not (project / "pipe").exists()
    done = subprocess.run(CLI + ["export", str(nb), "--out", "p2", "--target", "kfp"], capture_output=True, text=True)
    assert done.returncode != 0 and "needs the image" in done.stderr and "Traceback" not in done.stderr


def test_a_parameter_kfp_cannot_hold_is_named(project):
    nb = fan_out(project, "n = 3\nrate = 0.5\nlabel = None")
    with pytest.raises(PipelineError, match="parameter 'label' is None"):
        pipeline.export(nb, "pipe", target="kfp", image="img:1")


def test_an_unknown_target_is_refused(project):
    done = subprocess.run(CLI + ["export", str(fan_out(project)), "--target", "argo"], capture_output=True, text=True)
    assert done.returncode != 0 and "invalid choice: 'argo'" in done.stderr


def test_the_magic_exports_for_kubeflow_too(project, ip, capsys):
    fan_out(project)
    ip.run_line_magic("mlops", "export fan.ipynb --out pipe --target kfp --image img:1")
    assert "Kubeflow:" in capsys.readouterr().out
    assert components.load_component_from_file("pipe/" + kubeflow.FILE).pipeline_spec.root.dag.tasks
