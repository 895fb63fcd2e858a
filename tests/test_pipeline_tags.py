"""Kale-tagged notebooks as Kale writes them (print-style metrics cells, untagged cells after the parameters),
every unknown tag warned about, per-step resources from tags, and the local runner's GPU check."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mlops_jupyter.errors import InvalidInput
import yaml
from harness import notebook

from mlops_jupyter import pipeline
from mlops_jupyter.pipeline.tags import PipelineError

CLI = [sys.executable, "-m", "mlops_jupyter.cli"]


def export_cli(project: Path, nb: str, out: str = "pipe") -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["export", nb, "--out", out], capture_output=True, text=True, cwd=project)


def kale_notebook(project: Path, metrics_cell: str = "print(precision)\nprint(recall)") -> Path:
    path = notebook(project / "kale.ipynb", [
        ("import math", ["imports"]),
        ("a = 3", ["pipeline-parameters"]),
        "b = 4",  # untagged, right after the parameters: a parameter too, as in Kale
        ("precision = a / (a + 1)\nrecall = b / (b + 1)", ["block:score"]),
        (metrics_cell, ["pipeline-metrics"]),
    ])
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(2, nbformat.v4.new_markdown_cell("Markdown between them does not end the parameters."))
    nbformat.write(nb, path)
    return path


def test_kale_metrics_and_parameters_cells_as_kale_writes_them(project):
    nb = kale_notebook(project)
    pipe = pipeline.export(nb, "pipe")
    assert pipe.warnings == []
    assert pipe.step("score")["metrics"] == ["precision", "recall"]
    assert yaml.safe_load((project / "pipe" / "params.yaml").read_text()) == {"a": 3, "b": 4}
    result = pipeline.run(project / "pipe", params=["b=9"], echo=lambda s: None)
    assert result.ok and result.steps[0].metrics == {"precision": 0.75, "recall": 0.9}

    bare = kale_notebook(project, "precision, recall")
    assert pipeline.export(bare, "bare").step("score")["metrics"] == ["precision", "recall"]

    # our own `parameters` tag keeps the rule it always had: an untagged cell after it is step code
    ours = notebook(project / "ours.ipynb", [("a = 3", ["parameters"]), "b = a + 1", ("c = b", ["step:use"])])
    pipeline.export(ours, "o")
    assert "b = a + 1" in (project / "o" / "steps" / "use.ipynb").read_text()
    with pytest.raises(InvalidInput, match="no parameter 'b'"):
        pipeline.run(project / "o", params=["b=1"])

    code = notebook(project / "code.ipynb", [("a = 3", ["pipeline-parameters"]), "b = a * 2", ("c = b", ["block:x"])])
    with pytest.raises(PipelineError, match=r"cell 1 \('b = a \* 2'\) \(it has no tags and follows a "
                                            r"pipeline-parameters cell.*tag it step:NAME"):
        pipeline.export(code, "code")


def test_a_metrics_cell_that_names_nothing_and_unknown_tags_are_warned_about(project):
    kale_notebook(project, "print('done')")
    out = export_cli(project, "kale.ipynb")
    assert out.returncode == 0, out.stderr
    assert "mlops export: warning: the metrics cell 5 (\"print('done')\") names no variable to report" in out.stderr
    assert json.loads((project / "pipe" / "pipeline.json").read_text())["steps"][0]["metrics"] == []

    notebook(project / "tags.ipynb", [
        ("x = 1", ["step:one", "hide-input", "annotation:team:ml"]),
        ("y = x", ["step", "skip:yes"]),
    ])
    out = export_cli(project, "tags.ipynb", "t")
    assert out.returncode == 0, out.stderr
    warned = [ln for ln in out.stderr.splitlines() if ln.startswith("mlops export: warning:")]
    assert len(warned) == 4, out.stderr
    assert "cell 0 ('x = 1') has the tag 'hide-input', which export does not use" in warned[0]
    assert "'annotation:team:ml'" in warned[1] and "the pipeline tags are" in warned[1]
    assert "cell 1 ('y = x') has the tag 'step'" in warned[2] and "step takes an argument" in warned[2]
    assert "'skip:yes'" in warned[3] and "skip takes no argument" in warned[3]


def test_resources_tags_are_parsed_into_each_step(project):
    nb = notebook(project / "r.ipynb", [
        ("a = 1", ["block:prep", "limit:cpu:500m", "limit:memory:4Gi"]),
        ("b = a", ["block:train", "limit:nvidia.com/gpu:1", "limit:cpu:2"]),
        ("c = b", ["step:report", "resources:gpu=0;cpu=4,memory=8G"]),  # ";" and an older notebook's ","
        "d = c",
    ])
    pipeline.export(nb, "pipe")
    steps = json.loads((project / "pipe" / "pipeline.json").read_text())["steps"]
    assert {s["name"]: s["resources"] for s in steps} == {
        "prep": {"cpu": 0.5, "memory": 4 * 2**30},
        "train": {"gpu": 1, "cpu": 2},
        "report": {"gpu": 0, "cpu": 4, "memory": 8 * 10**9},
    }


@pytest.mark.parametrize("tags, words", [
    (["step:a", "resources:gpu=two"], r"cell 0 \('x = 1'\): gpu 'two' is not a number of gpus"),
    (["step:a", "resources:gpu"], r"resources:gpu is not a list of key=value"),
    (["step:a", "resources:tpu=1"], r"asks for 'tpu'; the resources a step can ask for are gpu"),
    (["step:a", "limit:memory:lots"], r"memory 'lots' is not a size"),
    (["step:a", "limit:gpu"], r"limit:gpu is not limit:KEY:VALUE"),
    (["step:a", "resources:gpu=1", "limit:nvidia.com/gpu:2"], r"asks for gpu 1, and limit:nvidia.com/gpu:2 asks"),
    (["imports", "limit:cpu:2"], r"is tagged imports and limit:cpu:2; an imports cell runs in every step"),
])
def test_bad_resources_tags_name_the_cell(project, tags, words):
    nb = notebook(project / "bad.ipynb", [("x = 1", tags)])
    with pytest.raises(PipelineError, match=words) as err:
        pipeline.export(nb, "pipe")
    assert err.value.cell_index == 0


def test_two_cells_of_a_step_asking_for_different_resources_is_an_error(project):
    nb = notebook(project / "two.ipynb", [("x = 1", ["step:a", "limit:cpu:2"]), ("y = 2", ["resources:cpu=4"])])
    with pytest.raises(PipelineError, match=r"cell 0 \('x = 1'\) asks for cpu 2, and cell 1 \('y = 2'\) asks for "
                                            r"cpu 4, both for step 'a'") as err:
        pipeline.export(nb, "pipe")
    assert err.value.cell_index == 1


def test_a_step_asking_for_gpus_the_machine_lacks_fails_before_anything_runs(project, monkeypatch):
    nb = notebook(project / "g.ipynb", [
        ("n = 2", ["parameters"]),
        ("a = n", ["step:prep"]),
        ("b = a * 2", ["step:train", "limit:nvidia.com/gpu:1"]),
    ])
    pipeline.export(nb, "pipe")
    folder = project / "pipe"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = subprocess.run(CLI + ["pipeline", "run", "pipe"], capture_output=True, text=True, cwd=project)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert ("step 'train' asks for 1 GPU, and this machine has none (CUDA_VISIBLE_DEVICES=''); nothing was run"
            in out.stderr), out.stderr
    assert not [p for p in (folder / "runs").iterdir() if p.is_dir()]  # no step ran, not even prep
    assert all(state == "stale" for _, state, _ in pipeline.status(folder))

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # one GPU visible: the check passes
    assert pipeline.run(folder, echo=lambda s: None).ok
    with pytest.raises(PipelineError, match=r"asks for 1 GPU"):  # forced: it would run, so it is checked
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
        pipeline.run(folder, force=True, echo=lambda s: None)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert pipeline.run(folder, echo=lambda s: None).count("skipped") == 2  # nothing to run: no GPU needed

    # without CUDA_VISIBLE_DEVICES the machine's own list (nvidia-smi -L) is what exists
    notebook(nb, [("a = 1", ["step:prep", "resources:gpu=64"])])
    pipeline.export(nb, "pipe")
    with pytest.raises(PipelineError, match=r"step 'prep' asks for 64 GPUs, and this machine has .*nothing was run"):
        pipeline.run(folder, echo=lambda s: None)
