"""Tagged notebook -> pipeline: export, incremental runs with real kernels (papermill), MLflow, DVC."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from harness import TakenPorts, all_runs, niceness, notebook, recorder_pids

from mlops_jupyter import pipeline
from mlops_jupyter.pipeline import analysis, serializers, tags
from mlops_jupyter.errors import InvalidInput
from mlops_jupyter.pipeline.tags import PipelineError

IMPORTS = ("import pandas as pd\nfrom sklearn.datasets import load_iris\nfrom sklearn.linear_model import "
           "LogisticRegression\nfrom sklearn.tree import DecisionTreeClassifier", ["imports"])


def fan_notebook(root: Path, max_iter: int = 500) -> Path:
    (root / "helpers.py").write_text("def tree_depth(depth):\n    return depth\n")
    return notebook(root / "fan.ipynb", [
        IMPORTS,
        ("C = 1.0\ndepth = 2\nname = 'iris'", ["parameters"]),
        ("df = load_iris(as_frame=True).frame", ["step:load"]),
        "df = df.sample(frac=1.0, random_state=0)\nX, y = df.drop(columns=['target']), df['target']",
        (f"lr = LogisticRegression(C=C, max_iter={max_iter})\nlr.fit(X, y)", ["step:model_a", "after:load"]),
        ("import helpers\ntree = DecisionTreeClassifier(max_depth=helpers.tree_depth(depth), random_state=0)\n"
         "tree.fit(X, y)", ["step:model_b", "after:load"]),
        ("acc_lr = lr.score(X, y)\nacc_tree = tree.score(X, y)\nprint(name, acc_lr, acc_tree)",
         ["step:compare", "after:model_a", "after:model_b"]),
        ("acc_lr, acc_tree", ["metrics"]),
    ])


def drawn(folder: Path) -> tuple[dict, dict, str]:
    """pipeline.svg as (step -> state, (from, to) -> edge label, all its text); parsing it proves it valid SVG."""
    from xml.etree import ElementTree as ET

    ns = {"svg": "http://www.w3.org/2000/svg"}
    root = ET.parse(folder / "pipeline.svg").getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    steps = {g.get("data-step"): g.get("data-state") for g in root.iterfind(".//svg:g[@class='step']", ns)}
    edges = {(g.get("data-from"), g.get("data-to")): "".join(t.text for t in g.iterfind("svg:text", ns))
             for g in root.iterfind(".//svg:g[@class='edge']", ns)}
    return steps, edges, " ".join(t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}text"))


def ran(result) -> set:
    return {s.name for s in result.steps if s.status == "ran"}


def metrics(folder: Path, step: str) -> dict:
    return json.loads((folder / "metrics" / f"{step}.json").read_text())


def test_fan_out_fan_in_runs_incrementally(project):
    nb = fan_notebook(project)
    pipe = pipeline.export(nb, "pipe")
    folder = project / "pipe"
    spec = {s["name"]: s for s in pipe.steps}
    assert spec["model_a"]["inputs"] == {"X": "load", "y": "load"}
    assert spec["compare"]["inputs"] == {"lr": "model_a", "X": "load", "y": "load", "tree": "model_b"}
    assert spec["model_b"]["modules"] == ["helpers.py"] and spec["model_a"]["modules"] == []
    assert yaml.safe_load((folder / "params.yaml").read_text()) == {"C": 1.0, "depth": 2, "name": "iris"}
    dvc = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]
    assert "../helpers.py" in dvc["model_b"]["deps"] and dvc["model_b"]["params"] == ["depth"]
    assert (folder / ".github" / "workflows" / "pipeline-fan.yml").is_file() and (folder / "README.md").is_file()
    states, edges, _ = drawn(folder)
    assert states == dict.fromkeys(spec, "never run")
    assert edges[("load", "model_a")] == "X, y" and edges[("model_a", "compare")] == "lr"
    assert edges[("model_b", "compare")] == "tree" and edges[("load", "compare")] == "X, y"  # skips a layer

    lines = []
    first = pipeline.run(folder, echo=lines.append)
    assert first.ok and ran(first) == {"load", "model_a", "model_b", "compare"}, "\n".join(lines)
    assert drawn(folder)[0] == dict.fromkeys(spec, "fresh")
    base = metrics(folder, "compare")
    assert set(base) == {"acc_lr", "acc_tree"}
    assert (folder / "artifacts" / "load" / "X.parquet").is_file()
    assert (folder / "artifacts" / "model_a" / "lr.joblib").is_file()
    for step in spec:
        assert (Path(first.runs_dir) / f"{step}.ipynb").is_file()
    runs = all_runs(project)
    parent = [r for r in runs if r.info.run_id == first.mlflow_run][0]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert {c.info.run_name for c in children} == set(spec)
    cmp_run = [c for c in children if c.info.run_name == "compare"][0]
    assert cmp_run.data.metrics["acc_lr"] == pytest.approx(base["acc_lr"])
    assert [r for r in runs if r.info.run_name == "model_a"][0].data.params == {"C": "1.0"}

    # unchanged: nothing runs, no kernel, neither papermill nor mlflow imported (a fresh process)
    code = ("import sys, time; from mlops_jupyter import pipeline; t = time.time(); r = pipeline.run('pipe', "
            "echo=lambda s: None); assert r.ok and r.count('skipped') == 4, r; "
            "assert 'papermill' not in sys.modules and 'mlflow' not in sys.modules and "
            "'jupyter_client' not in sys.modules; print(time.time() - t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=project)
    assert out.returncode == 0, out.stderr
    assert all(st == "fresh" for _, st, _ in pipeline.status(folder))

    # a parameter override re-runs the steps reading it, and changes the result
    over = pipeline.run(folder, params=["C=0.01"], echo=lines.append)
    assert ran(over) == {"model_a", "compare"}
    assert metrics(folder, "compare")["acc_lr"] < base["acc_lr"]
    assert metrics(folder, "compare")["acc_tree"] == base["acc_tree"]
    status = dict((n, (st, why)) for n, st, why in pipeline.status(folder))
    assert status["model_a"][0] == "stale" and "param C changed" in status["model_a"][1]
    assert status["load"][0] == "fresh" and status["model_b"][0] == "fresh"

    # a local module changed: the steps importing it (and what depends on them) are stale
    (project / "helpers.py").write_text("def tree_depth(depth):\n    return depth + 1\n")
    status = dict((n, (st, why)) for n, st, why in pipeline.status(folder))
    assert status["model_b"] == ("stale", "module helpers.py changed")
    mod = pipeline.run(folder, echo=lines.append)
    assert ran(mod) == {"model_a", "model_b", "compare"}  # model_a: back to C=1.0 from params.yaml
    assert metrics(folder, "compare")["acc_tree"] > base["acc_tree"]

    # editing one step of the notebook re-runs only it and its descendants
    fan_notebook(project, max_iter=400)
    (project / "helpers.py").write_text("def tree_depth(depth):\n    return depth + 1\n")
    pipeline.export(nb, "pipe")
    edit = pipeline.run(folder, echo=lines.append)
    assert ran(edit) == {"model_a", "compare"}
    assert {s.name for s in edit.steps if s.status == "skipped"} == {"load", "model_b"}


def test_failure_stops_descendants_and_resume_reruns_only_the_rest(project):
    cells = [("n = 3", ["parameters"]),
             ("a = list(range(n))", ["step:first"]),
             ("b = [x * 2 for x in a]\nraise ValueError('broken step')", ["step:second"]),
             ("total = sum(b)", ["step:third"]),
             ("total", ["metrics"])]
    nb = notebook(project / "lin.ipynb", cells)
    pipeline.export(nb, "pipe")
    cli = [sys.executable, "-m", "mlops_jupyter.cli"]
    out = subprocess.run(cli + ["pipeline", "run", "pipe"], capture_output=True, text=True, cwd=project)
    assert out.returncode == 1
    assert "second" in out.stdout and "ValueError: broken step" in out.stdout
    assert "cell 2 of lin.ipynb `b = [x * 2 for x in a]`" in out.stdout
    executed = project / "pipe" / "runs"
    assert any(str(p) in out.stdout for p in executed.rglob("second.ipynb"))
    assert "third" in out.stdout and "not run: second did not finish" in out.stdout
    assert "1 ran, 1 failed, 1 not run" in out.stdout
    status = subprocess.run(cli + ["pipeline", "status", "pipe"], capture_output=True, text=True, cwd=project)
    assert status.returncode == 1 and "failed" in status.stdout and "broken step" in status.stdout
    assert drawn(project / "pipe")[0] == {"first": "fresh", "second": "failed", "third": "never run"}

    cells[2] = ("b = [x * 2 for x in a]", ["step:second"])
    notebook(nb, cells)
    pipeline.export(nb, "pipe")
    lines = []
    again = pipeline.run(project / "pipe", echo=lines.append)
    assert again.ok and ran(again) == {"second", "third"}
    assert [s.name for s in again.steps if s.status == "skipped"] == ["first"]
    assert metrics(project / "pipe", "third") == {"total": 6}
    assert set(drawn(project / "pipe")[0].values()) == {"fresh"}


def test_an_unpicklable_variable_is_a_clear_error(project):
    nb = notebook(project / "gen.ipynb", [
        ("import threading\nguard = threading.Lock()\nitems = [1, 2]", ["step:make"]),
        ("with guard:\n    n = len(items)", ["step:use"]),
    ])
    pipeline.export(nb, "pipe")
    lines = []
    result = pipeline.run(project / "pipe", echo=lines.append)
    failed = result.steps[0]
    assert failed.status == "failed" and result.steps[1].status == "blocked"
    assert "HandoffError" in failed.error and "'guard'" in failed.error and "step 'make'" in failed.error
    assert "_thread.lock" in failed.error


def test_a_notebook_without_tags_is_one_step(project):
    nb = notebook(project / "plain.ipynb", ["x = 21", "y = x * 2\nprint(y)"])
    pipe = pipeline.export(nb, "pipe")
    assert [s["name"] for s in pipe.steps] == ["main"]
    result = pipeline.run(project / "pipe", echo=lambda s: None)
    assert result.ok and ran(result) == {"main"}
    assert "42" in (Path(result.runs_dir) / "main.ipynb").read_text()


def test_kale_aliases_export_like_our_tags(project):
    ours = notebook(project / "ours.ipynb", [
        ("import math", ["imports"]), ("def f(v):\n    return v + 1", ["functions"]),
        ("k = 2\nrate = 0.5\nlabel = 'a'\nflag = True\nsizes = [1, 2]\ncfg = {'a': 1}", ["parameters"]),
        ("a = f(k)", ["step:one"]), ("scratch = 1", ["skip"]), ("b = a * rate", ["step:two", "after:one"]),
        ("b", ["metrics"])])
    kale = notebook(project / "kale.ipynb", [
        ("import math", ["imports"]), ("def f(v):\n    return v + 1", ["functions"]),
        ("k = 2\nrate = 0.5\nlabel = 'a'\nflag = True\nsizes = [1, 2]\ncfg = {'a': 1}", ["pipeline-parameters"]),
        ("a = f(k)", ["block:one"]), ("scratch = 1", ["skip"]), ("b = a * rate", ["block:two", "prev:one"]),
        ("b", ["pipeline-metrics"])])
    p1, p2 = pipeline.export(ours, "p1"), pipeline.export(kale, "p2")
    assert p1.steps == p2.steps
    assert p1.steps[1]["inputs"] == {"a": "one"} and p1.steps[1]["metrics"] == ["b"]
    assert p1.steps[1]["params"] == ["rate"] and p1.steps[0]["params"] == ["k"]
    params = yaml.safe_load((project / "p2" / "params.yaml").read_text())
    assert params == {"k": 2, "rate": 0.5, "label": "a", "flag": True, "sizes": [1, 2], "cfg": {"a": 1}}
    assert "scratch" not in (project / "p2" / "steps" / "one.ipynb").read_text()
    with pytest.raises(InvalidInput, match="rate holds a number") as err:
        pipeline.run(project / "p2", params=["rate=fast"])
    assert err.value.param == "rate"
    with pytest.raises(InvalidInput, match="no parameter 'nope'"):
        pipeline.run(project / "p2", params=["nope=1"])


@pytest.mark.parametrize("cells, message", [
    ([("a = 1", ["step:one"]), ("b = 2", ["step:two", "after:ghost"])], r"cell 1 \('b = 2'\) says after:ghost"),
    ([("a = 1", ["step:one", "after:two"]), ("b = 2", ["step:two", "after:one"])], r"cycle"),
    ([("a = 1", ["parameters"]), ("a = 2", ["parameters"])], r"parameter 'a' is defined twice.*cell 1"),
    ([("a = f()", ["parameters"])], r"not a literal"),
])
def test_export_errors_name_the_cell(project, cells, message):
    nb = notebook(project / "bad.ipynb", cells)
    with pytest.raises(PipelineError, match=message) as err:
        pipeline.export(nb, "pipe")
    # the fields point at the cell: its index in the notebook and its id
    index = err.value.cell_index
    assert err.value.notebook == str(nb) and index in (0, 1)
    assert err.value.cell_id == json.loads(nb.read_text())["cells"][index]["id"]
    out = subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", "export", "bad.ipynb", "--out", "pipe"],
                         capture_output=True, text=True, cwd=project)
    assert out.returncode == 2 and "mlops export:" in out.stderr and "Traceback" not in out.stderr


def test_a_mutating_step_hands_its_version_on_and_data_adds_order(project):
    nb = notebook(project / "m.ipynb", [
        ("df = {'a': 1}\nrows = []", ["step:load"]),
        ("df['b'] = 2\nrows.append(1)\nmodel = object()", ["step:clean"]),
        ("print(df)", ["step:report", "after:load"]),
        ("n = len(rows)\nmodel", ["step:use", "after:load"]),
    ])
    parsed = tags.parse(__import__("nbformat").read(nb, as_version=4))
    fl = analysis.flow(parsed, project)
    assert fl.inputs["clean"] == {"df": "load", "rows": "load"}
    assert fl.inputs["report"] == {"df": "load"}           # its ancestor's version: clean is not upstream
    assert fl.inputs["use"] == {"rows": "clean", "model": "clean"} and "clean" in fl.deps["use"]


def test_magic_exports_a_notebook(ip, project, monkeypatch):
    from IPython.core.error import UsageError

    notebook(project / "nb.ipynb", [("a = 1", ["step:one"]), ("b = a", ["step:two", "resources:gpu=1,memory=8G"])])
    picture = ip.run_line_magic("mlops", "export nb.ipynb --out pipe")
    assert (project / "pipe" / "steps" / "two.ipynb").is_file()
    # the picture inline: every step, the variable handed over, the resources tagged
    svg = picture._repr_svg_()
    assert svg == (project / "pipe" / "pipeline.svg").read_text() and str(project / "pipe") in repr(picture)
    states, edges, text = drawn(project / "pipe")
    assert states == {"one": "never run", "two": "never run"} and edges == {("one", "two"): "a"}
    assert "gpu 1 · mem 8G" in text
    monkeypatch.setenv("MLOPS_NOTEBOOK", str(project / "nb.ipynb"))  # what JupyterLab's session name tells
    ip.run_line_magic("mlops", "export --out current")
    assert json.loads((project / "current" / "pipeline.json").read_text())["notebook"] == "../nb.ipynb"
    notebook(project / "bad.ipynb", [("a = 1", ["step:one", "after:zzz"])])
    with pytest.raises(UsageError, match="after:zzz"):
        ip.run_line_magic("mlops", "export bad.ipynb --out pipe2")


def test_magic_runs_a_pipeline_with_a_step_widget(ip, project):
    from IPython.utils.capture import capture_output

    notebook(project / "nb.ipynb", [("a = 1", ["step:one"]), ("b = a + 1", ["step:two"]),
                                    ("raise ValueError('no three')", ["step:three"])])
    ip.run_line_magic("mlops", "export nb.ipynb --out pipe")
    with capture_output() as cap:
        ip.run_line_magic("mlops", "pipeline run pipe")
    first, *updates = cap.outputs
    assert "application/vnd.jupyter.widget-view+json" in first.data
    final = updates[-1].data  # the same widget, its text and HTML as the run left it
    assert final["application/vnd.jupyter.widget-view+json"] == first.data["application/vnd.jupyter.widget-view+json"]
    assert "ValueError: no three" in final["text/plain"] and "two" in final["text/plain"]
    assert 'data-step="two" data-state="fresh"' in final["text/html"]
    assert 'data-step="three" data-state="failed"' in final["text/html"]
    assert "mlops: pipeline nb: 2 ran, 1 failed" in cap.stdout
    status = repr(ip.run_line_magic("mlops", "pipeline status pipe"))
    assert "fresh" in status and "failed" in status and "no three" in status


def test_dvc_repro_runs_the_exported_pipeline(project):
    """dvc.yaml holds the steps, their params, the data they read and the files they write: `dvc repro`
    re-runs the same steps as `mlops pipeline run` and reaches the same metrics."""
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    (project / "offset.txt").write_text("0\n")
    nb = notebook(project / "d.ipynb", [
        ("import numpy as np", ["imports"]), ("count = 4", ["parameters"]),
        ("arr = np.arange(count)\nnp.savetxt('doubled.txt', arr * 2)", ["step:make"]),
        ("total = int(np.loadtxt('doubled.txt').sum()) // 2 + int(np.loadtxt('offset.txt'))\nsize = len(arr)",
         ["step:sum"]),
        ("total", ["metrics"])])
    pipeline.export(nb, "pipe")
    folder = project / "pipe"
    stages = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]
    assert "../offset.txt" in stages["sum"]["deps"] and "../doubled.txt" in stages["sum"]["deps"]
    assert {"../doubled.txt": {"cache": False, "persist": True}} in stages["make"]["outs"]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def repro() -> str:
        out = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=folder, capture_output=True, text=True,
                             env=env)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout

    repro()
    assert metrics(folder, "sum") == {"total": 6}
    assert (folder / "artifacts" / "make" / "arr.npy").is_file()
    (folder / "params.yaml").write_text("count: 5\n")
    repro()
    assert metrics(folder, "sum") == {"total": 10}
    assert pipeline.run(folder, echo=lambda s: None).ok and metrics(folder, "sum") == {"total": 10}

    # a data file changed: both re-run only the step reading it, to the same result
    (project / "offset.txt").write_text("100\n")
    out = repro()
    assert "Running stage 'sum'" in out and "Running stage 'make'" not in out, out
    assert metrics(folder, "sum") == {"total": 110}
    assert "Running stage" not in repro()
    again = pipeline.run(folder, echo=lambda s: None)
    assert ran(again) == {"sum"} and metrics(folder, "sum") == {"total": 110}


def test_a_new_default_only_touches_the_steps_reading_it(project):
    from mlops_jupyter.pipeline import state
    from mlops_jupyter.pipeline.emit import load_pipeline

    cells = [("k = 1\nrate = 0.5", ["parameters"]), ("a = k", ["step:one"]), ("b = a * rate", ["step:two"])]
    nb = notebook(project / "p.ipynb", cells)
    pipeline.export(nb, "pipe")
    pipe = load_pipeline(project / "pipe")
    before = {s["name"]: state.code_hash(pipe, s) for s in pipe.steps}
    cells[0] = ("k = 1\nrate = 0.75", ["parameters"])
    pipeline.export(notebook(nb, cells), "pipe")
    after = {s["name"]: state.code_hash(pipe, s) for s in pipe.steps}
    assert before == after  # only params.yaml changed: step two is stale through its param, step one stays fresh
    assert yaml.safe_load((project / "pipe" / "params.yaml").read_text())["rate"] == 0.75


def test_step_kernels_are_fresh_processes_that_share_nothing(project, monkeypatch):
    """Kernels forked from the template (or started plainly with MLOPS_PIPELINE_FORK=0) start empty: no
    variable, module attribute or random state of another step; plots still show inline."""
    import psutil

    nb = notebook(project / "iso.ipynb", [
        ("import json\nimport os\nimport numpy as np\nimport matplotlib.pyplot as plt", ["imports"]),
        ("runner = 0", ["parameters"]),
        ("json.leak = 1\nsecret = 2\nr1 = float(np.random.rand())\npid1 = os.getpid()\nplt.plot([1, 2])",
         ["step:one"]),
        ("leaked = int(hasattr(json, 'leak') or 'secret' in globals())\nsame_rng = int(r1 == float(np.random.rand()))\n"
         "same_pid = int(os.getpid() == pid1)\nforked = int(os.getppid() != runner)", ["step:two"]),
        ("leaked, same_rng, same_pid, forked", ["metrics"]),
    ])
    pipeline.export(nb, "pipe")
    folder = project / "pipe"
    for fork, force in (("1", False), ("0", True)):
        monkeypatch.setenv("MLOPS_PIPELINE_FORK", fork)
        result = pipeline.run(folder, params=[f"runner={os.getpid()}"], force=force, echo=lambda s: None)
        assert result.ok and ran(result) == {"one", "two"}
        assert metrics(folder, "two") == {"leaked": 0, "same_rng": 0, "same_pid": 0, "forked": int(fork)}
        assert "image/png" in (Path(result.runs_dir) / "one.ipynb").read_text()  # pyplot's inline hooks work
        # no kernel, fork server or MLflow process outlives the run
        assert not psutil.pid_exists(serializers.load(str(folder / "artifacts" / "one"), "pid1", "two", "one"))
        def running_cmdline(proc):  # an exited child not yet reaped (a zombie) has outlived nothing
            try:
                return "" if proc.status() == psutil.STATUS_ZOMBIE else " ".join(proc.cmdline())
            except psutil.Error:
                return ""

        mine = psutil.Process().children(recursive=True)
        assert not [p for p in mine if "mlops_jupyter.pipeline" in running_cmdline(p)], mine


# a native library says why on the kernel's stderr, and the process dies (a CUDA error, a failed check in C++)
DIES = ("import os, time\nos.write(2, b'native: CUDA error 700: an illegal memory access\\n')\n"
        "time.sleep(0.5)\nos.abort()")


@pytest.mark.parametrize("fork", ["1", "0"])
def test_a_step_whose_kernel_dies_quotes_what_the_kernel_said_last(project, monkeypatch, fork):
    """Nothing a dying kernel's process writes reaches its notebook, or the terminal: the step's error quotes
    the end of it, from a forked kernel or one started the usual way; the executed notebook keeps what the
    cells before the crash printed."""
    monkeypatch.setenv("MLOPS_PIPELINE_FORK", fork)
    pipeline.export(notebook(project / "dies.ipynb", [("x = 1", ["step:first"]),
                                                      ("print('before the crash')", ["step:second"]), DIES]), "pipe")
    cli = [sys.executable, "-m", "mlops_jupyter.cli", "pipeline"]
    out = subprocess.run(cli + ["run", "pipe"], capture_output=True, text=True, cwd=project, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    (line,) = [ln for ln in out.stdout.splitlines() if "✗ second" in ln] or [out.stdout + out.stderr]
    assert "Kernel died; its process was killed by SIGABRT; the kernel's last output: native: CUDA error 700: " \
           "an illegal" in line, line
    assert "Kernel died while waiting" not in out.stderr, out.stderr  # nbclient's log line says it twice
    (executed,) = (project / "pipe" / "runs").rglob("second.ipynb")
    assert f"executed notebook: {executed}" in out.stdout and "before the crash" in executed.read_text()
    status = subprocess.run(cli + ["status", "pipe"], capture_output=True, text=True, cwd=project)
    assert "CUDA error 700" in status.stdout, status.stdout  # kept with the step's failure


@pytest.mark.parametrize("fork", ["1", "0"])
def test_a_step_whose_kernel_is_killed_or_exits_says_how_it_ended(project, monkeypatch, fork):
    """The out-of-memory killer's SIGKILL leaves no output to quote: the step's error names the signal and what
    it likely means; a kernel that exits names its status. The run's own stop of a kernel says nothing of it."""
    monkeypatch.setenv("MLOPS_PIPELINE_FORK", fork)
    pipeline.export(notebook(project / "killed.ipynb", [
        ("import os, signal", ["imports"]),
        ("x = 1", ["step:start"]),
        ("os.kill(os.getpid(), signal.SIGKILL)", ["step:killed", "after:start"]),
        ("os._exit(3)", ["step:exits", "after:start"]),
    ]), "pipe")
    result = pipeline.run(project / "pipe", echo=lambda s: None)
    killed, exits = (next(s for s in result.steps if s.name == n) for n in ("killed", "exits"))
    assert killed.status == "failed" and killed.error.endswith(
        "Kernel died; its process was killed by SIGKILL (the out-of-memory killer's signal: the step may have run "
        "out of memory)"), killed.error
    assert exits.status == "failed" and exits.error.endswith("Kernel died; its process exited with status 3"), exits


def test_a_run_leaves_no_event_loop_open(project):
    """jupyter_client's calls leave an asyncio loop in each thread that makes them; one left to the garbage
    collector can be finalized after its own socket and print a traceback as the process exits (a CLI run that
    was interrupted did, now and then). The runner's threads close theirs: collecting them finds none open."""
    import gc
    import warnings

    pipeline.export(notebook(project / "loops.ipynb", [("x = 1", ["step:one"]), ("y = x", ["step:two"]),
                                                       ("z = 1", ["step:three", "after:one"])]), "pipe")
    gc.collect()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        result = pipeline.run(project / "pipe", echo=lambda s: None)
        gc.collect()
    assert result.ok and ran(result) == {"one", "two", "three"}, result
    assert not [str(w.message) for w in seen if "unclosed event loop" in str(w.message)]


def test_a_forked_kernel_that_dies_at_start_up_is_replaced_by_a_usual_one(project, monkeypatch, tmp_path):
    """Something the template imported left it unsafe to fork (here every forked child exits at once): each
    step still runs, in a kernel started the usual way."""
    libs = tmp_path / "libs"
    libs.mkdir()
    (libs / "unsafe_to_fork.py").write_text("import os\nos.register_at_fork(after_in_child=lambda: os._exit(3))\n")
    monkeypatch.setenv("PYTHONPATH", str(libs))
    nb = notebook(project / "dies.ipynb", [
        ("import os\nimport unsafe_to_fork", ["imports"]),
        ("runner = 0", ["parameters"]),
        ("plain_one = int(os.getppid() == runner)", ["step:one"]),
        ("plain = plain_one + int(os.getppid() == runner)", ["step:two"]),
        ("plain", ["metrics"]),
    ])
    pipeline.export(nb, "pipe")
    result = pipeline.run(project / "pipe", params=[f"runner={os.getpid()}"], echo=lambda s: None)
    assert result.ok and ran(result) == {"one", "two"}, result
    assert metrics(project / "pipe", "two") == {"plain": 2}


@pytest.mark.parametrize("fork", ["1", "0"])
def test_a_kernel_whose_port_was_taken_as_it_started_is_started_again(project, monkeypatch, fork):
    """A kernel that dies as it starts, another process having taken one of its ports: its step runs all the same,
    in a kernel started again with new ports; a forked one is forked again (the template is not to blame), so the
    run's other steps keep their forked kernels."""
    ports = TakenPorts(monkeypatch, {0})  # the first kernel's shell port
    monkeypatch.setenv("MLOPS_PIPELINE_FORK", fork)
    pipeline.export(notebook(project / "ports.ipynb", [
        ("import os", ["imports"]),
        ("runner = 0", ["parameters"]),
        ("forked_one = int(os.getppid() != runner)", ["step:one"]),
        ("forked = forked_one + int(os.getppid() != runner)", ["step:two"]),
        ("forked", ["metrics"])]), "pipe")
    lines = []
    with ports.server:
        result = pipeline.run(project / "pipe", params=[f"runner={os.getpid()}"], echo=lines.append)
    assert result.ok and ran(result) == {"one", "two"}, "\n".join(lines)
    assert metrics(project / "pipe", "two") == {"forked": 2 * int(fork)}
    assert len(ports.picks) == 15  # 5 ports for each of 3 kernels: the one given the taken port was replaced


def test_forking_given_up_leaves_the_kernels_it_forked_running(project, monkeypatch):
    """Two forked kernels in a row that die as they start make the runner start its later kernels the usual way;
    a kernel forked before, running another step, goes on."""
    from jupyter_core.utils import run_sync

    from mlops_jupyter.pipeline import kernels

    ports = TakenPorts(monkeypatch, {5, 10})  # the second and third kernels' shell ports
    ks, started = kernels.Kernels("python3", project), []
    ks.start_fork_server([kernels.SETUP], [])
    try:
        with ports.server:
            for _ in range(2):
                started.append(ks.start(str(project)))
        running, usual = started
        assert ks.is_forked(running) and not ks.is_forked(usual)
        assert run_sync(running.is_alive)(), "giving up forking killed the kernel forked before"
        for km in started:
            kc = km.client()
            kc.start_channels()
            run_sync(kc.wait_for_ready)(timeout=60)
            assert run_sync(kc.execute_interactive)("x = 1", timeout=60)["content"]["status"] == "ok"
        assert len(ports.picks) == 20
    finally:
        for km in started:
            kernels.Kernels.stop(km)
        ks.close()


def test_a_step_kernel_is_ready_without_a_quiet_period_and_loses_no_output(project):
    """A step's kernel counts as ready once its kernel_info request's idle status reaches IOPub (jupyter_client
    waits for 0.2 s of silence there besides): a cell run at once, in a kernel just forked or one started
    without waiting (the Ray workers' parked kernel), still gets every line it prints."""
    import subprocess as sp

    from jupyter_core.utils import run_sync

    from mlops_jupyter.pipeline import kernels

    ks = kernels.Kernels("python3", project)
    ks.start_fork_server([kernels.SETUP], [])
    try:
        for i in range(4):
            if i % 2:
                km = ks.start(str(project))
            else:  # as a Ray worker parks one: started, and asked at once
                km = ks.manager()
                run_sync(km.start_kernel)(cwd=str(project), stderr=sp.DEVNULL)
            assert ks.is_forked(km)
            kc = km.client()
            kc.start_channels()
            run_sync(kc.wait_for_ready)(timeout=60)
            out = []
            reply = run_sync(kc.execute_interactive)(f"for j in range(3):\n    print({i}, j)", output_hook=out.append,
                                                     timeout=60)
            assert reply["content"]["status"] == "ok"
            assert "".join(m["content"]["text"] for m in out if m["msg_type"] == "stream") == "".join(
                f"{i} {j}\n" for j in range(3))
            kernels.Kernels.stop(km)
    finally:
        ks.close()


def test_the_fork_server_refuses_to_fork_a_threaded_template(project):
    """A preload that starts a thread makes the template unsafe to fork: the server says so (the runner then
    starts kernels the usual way) and exits once told to."""
    from mlops_jupyter.pipeline import kernels

    spec, python, _ = kernels._fork_spec("python3")
    starts_thread = "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()"
    server = kernels.ForkServer(spec, python, project, [starts_thread], [])
    try:
        with pytest.raises(RuntimeError, match="cannot fork: a preloaded module started a thread"):
            server.fork(["-f", str(project / "kernel.json")], dict(os.environ), str(project))
    finally:
        server.close()
    assert server.proc.returncode == 0


def test_the_fork_server_says_whether_what_it_loaded_changed_on_disk(project, tmp_path, monkeypatch):
    """A driver that stays connected keeps a fork server for its next runs only while it is fresh: every module
    file it has loaded is unchanged since it started. A file rewritten (a package upgraded, a module edited) or
    gone makes it stale, and the worker starts another."""
    from mlops_jupyter.pipeline import kernels

    lib = tmp_path / "lib"
    lib.mkdir()
    helper = lib / "helper_mod.py"
    helper.write_text("VALUE = 1\n")
    monkeypatch.setenv("PYTHONPATH", str(lib))
    for change in (lambda: helper.write_text("VALUE = 22\n"), helper.unlink):
        ks = kernels.Kernels("python3", project)
        ks.start_fork_server([kernels.SETUP, "import helper_mod"], ["import decimal"])
        try:
            assert ks.fresh() and ks.fresh()
            change()
            assert not ks.fresh()
        finally:
            ks.close()
        assert not ks.fresh()  # nor is a server closed
        helper.write_text("VALUE = 1\n")


def test_ctrl_c_stops_a_pipeline_run_in_one_line_and_the_next_run_goes_on(project):
    import signal
    import time

    nb = notebook(project / "slow.ipynb", [
        ("import time", ["imports"]),
        ("wait = 120", ["parameters"]),
        ("n = 1", ["step:quick"]),
        ("time.sleep(wait)\nm = n", ["step:slow", "after:quick"]),
    ])
    pipeline.export(nb, "pipe")
    run = subprocess.Popen([sys.executable, "-m", "mlops_jupyter.cli", "pipeline", "run", "pipe"], cwd=project,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = []
    for line in run.stdout:  # until the slow step runs
        seen.append(line)
        if "slow" in line and "running" in line:
            break
    assert run.poll() is None, seen
    time.sleep(1)
    recorders = recorder_pids(str(project))  # niced, as beside any run's kernels
    assert recorders
    run.send_signal(signal.SIGINT)
    out, err = run.communicate(timeout=60)
    assert run.returncode == 130, (out, err)
    assert "Traceback" not in err and "interrupted; finished steps are kept" in err, err
    # the interrupted run's last records are written at normal priority: niced, they could wait behind whatever
    # keeps the machine busy, for as long as that lasts
    for pid in recorders:
        try:
            assert niceness(pid) == {0}
        except (FileNotFoundError, ProcessLookupError):
            pass  # written and gone already
    result = pipeline.run(project / "pipe", echo=lambda s: None, params=["wait=0"])
    assert result.ok and ran(result) == {"slow"}  # what finished before Ctrl-C is not redone
