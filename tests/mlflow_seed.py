"""Seed a real MLflow SQLite store the way tracked cells leave it (shared by server and UI tests)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

STORE_VARS = ("MLFLOW_TRACKING_URI", "MLOPS_TRACKING_URI", "MLOPS_EXPERIMENT", "MLOPS_ARTIFACT_LOCATION")


def make_project(root: Path) -> Path:
    """A project root: the pyproject.toml makes config.resolve() put the store in root/.mlops."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n')
    return root


def write_notebook(path: Path) -> Path:
    import nbformat

    path.parent.mkdir(parents=True, exist_ok=True)
    nb = nbformat.v4.new_notebook()
    nb.cells.append(nbformat.v4.new_code_cell("%%mlops run --name fit\nacc = 0.9"))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def seed_runs(root: Path, notebook: Path, runs: list[dict]) -> list[str]:
    """Create finished runs tagged with ``notebook``'s absolute path; each dict gives
    name, start (ms), params, metrics and optionally status and tags. Returns the run ids in order."""
    from mlflow import MlflowClient

    state = root / ".mlops"
    state.mkdir(exist_ok=True)
    client = MlflowClient(tracking_uri="sqlite:///" + (state / "mlflow.db").as_posix())
    exp = client.get_experiment_by_name("Default") or client.get_experiment_by_name("demo")
    exp_id = exp.experiment_id if exp else client.create_experiment(
        "demo", artifact_location=(state / "artifacts").as_uri())
    ids = []
    for i, spec in enumerate(runs, start=1):
        run = client.create_run(exp_id, run_name=spec["name"], start_time=spec["start"], tags={
            "mlops.notebook": str(notebook.resolve()),
            "mlops.record": f"rec-{spec['name']}",
            "mlops.cell_id": f"cell-{i}",
            "mlops.execution_count": str(i),
            **spec.get("tags", {}),
        })
        for key, value in spec.get("params", {}).items():
            client.log_param(run.info.run_id, key, value)
        for key, value in spec.get("metrics", {}).items():
            client.log_metric(run.info.run_id, key, value, timestamp=spec["start"])
        client.set_terminated(run.info.run_id, status=spec.get("status", "FINISHED"), end_time=spec["start"] + 500)
        ids.append(run.info.run_id)
    return ids


def seed_many(root: Path, notebook: Path, count: int, cells: int = 20) -> None:
    """``count`` finished runs of ``notebook`` spread over ``cells`` cells, one batch call each."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    state = root / ".mlops"
    state.mkdir(exist_ok=True)
    client = MlflowClient(tracking_uri="sqlite:///" + (state / "mlflow.db").as_posix())
    exp_id = client.create_experiment("many", artifact_location=(state / "artifacts").as_uri())
    t0 = 1_700_000_000_000
    for i in range(count):
        run = client.create_run(exp_id, run_name=f"run-{i}", start_time=t0 + i * 1000, tags={
            "mlops.notebook": str(notebook.resolve()), "mlops.record": f"rec-{i}",
            "mlops.cell_id": f"cell-{i % cells}", "mlops.execution_count": str(i + 1)})
        client.log_batch(run.info.run_id, metrics=[Metric("acc", (i % 97) / 100, t0, 0),
                                                   Metric("loss", 1 - (i % 89) / 100, t0, 0)],
                         params=[Param("lr", str(0.001 * (i % 13 + 1))), Param("depth", str(i % 7))])
        client.set_terminated(run.info.run_id, status="FINISHED", end_time=t0 + i * 1000 + 500)


def seed_models(root: Path, models: dict | None = None, promotion: str = "") -> Path:
    """A git project whose dev store holds registered model ``iris`` with a version per entry of ``models`` (run
    name -> a scikit-learn estimator expression; default two trees, ``shallow`` and ``deep``), each from a tracked
    run of a committed notebook logging ``forest`` from a clean tree, with a ``staging`` environment (a SQLite
    store of its own), a ``prod`` one only ``nobody`` may promote to, and ``promotion`` appended to pyproject.toml.
    Real kernels (papermill), real registry writes (``mlops register``)."""
    import sys

    import nbformat

    make_project(root)
    with (root / "pyproject.toml").open("a") as toml:
        toml.write(f'\n[tool.mlops.environments.staging]\ntracking-uri = "sqlite:///{root / "staging.db"}"\n\n'
                   f'[tool.mlops.environments.prod]\ntracking-uri = "sqlite:///{root / "prod.db"}"\n'
                   'promoters = ["nobody"]\n' + promotion)
    models = models or {"shallow": "DecisionTreeClassifier(max_depth=1, random_state=0)",
                        "deep": "DecisionTreeClassifier(max_depth=3, random_state=0)"}
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(c) for c in (
        "%load_ext mlops_jupyter", "from sklearn.datasets import load_iris\nfrom sklearn.tree import "
        "DecisionTreeClassifier\nfrom sklearn.ensemble import RandomForestClassifier\n"
        "X, y = load_iris(return_X_y=True, as_frame=True)\nX.assign(target=y).to_csv('eval.csv', index=False)",
        *(f"%%mlops run --name {name} --model forest\nforest = {fit}.fit(X, y)" for name, fit in models.items()))]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "models.ipynb")
    for args in (["init", "-q"], ["add", "-A"], ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "models"]):
        subprocess.run(["git", *args], cwd=root, check=True)
    out = root / "models-out.ipynb"
    subprocess.run([sys.executable, "-m", "papermill", "--log-level", "ERROR", str(root / "models.ipynb"), str(out)],
                   cwd=root, check=True, capture_output=True)
    out.unlink()
    subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", "runs"], cwd=root, check=True, capture_output=True)
    for name in models:
        subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", "register", name, "--model", "iris"], cwd=root,
                       check=True, capture_output=True, timeout=300)
    return root


SPLIT = ("from sklearn.datasets import load_iris\nX, y = load_iris(return_X_y=True, as_frame=True)\n"
         "X.assign(target=y).iloc[1::2].to_csv('eval.csv', index=False)\n"
         "X.assign(target=y).iloc[::2].to_csv('data/train.csv', index=False)")
TREE = "DecisionTreeClassifier(max_depth=3, random_state=0)"


def retrain_project(root: Path, model: str = TREE) -> Path:
    """A committed git project whose pipeline (`pipe`, from fit.ipynb) fits ``clf`` (``model``, an sklearn.tree
    or sklearn.ensemble classifier) on the DVC-tracked data/train.csv, with a staging store of its own and the
    accuracy on eval.csv as the promotion metric."""
    import sys

    from mlops_jupyter import pipeline
    from mlops_jupyter.data import snapshot

    make_project(root)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "init"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True)
    with (root / "pyproject.toml").open("a") as toml:
        toml.write(f'\n[tool.mlops.environments.staging]\ntracking-uri = "sqlite:///{root / "staging.db"}"\n\n'
                   '[tool.mlops.promotion]\nmetric = "accuracy"\nevaluation-data = "eval.csv"\n')
    (root / "data").mkdir()
    subprocess.run([sys.executable, "-c", SPLIT], cwd=root, check=True)
    snapshot(root / "data" / "train.csv", message="first data", root=root)
    import nbformat

    nb = nbformat.v4.new_notebook()
    for source, tags in [
            ("import pandas as pd\nfrom sklearn.tree import DecisionTreeClassifier\n"
             "from sklearn.ensemble import RandomForestClassifier", ["imports"]),
            ("df = pd.read_csv('data/train.csv')", ["step:load"]),
            (f"X, y = df.drop(columns=['target']), df['target']\nclf = {model}.fit(X, y)\nacc = clf.score(X, y)",
             ["step:fit", "after:load", "model:clf"]),
            ("acc", ["metrics"])]:
        nb.cells.append(nbformat.v4.new_code_cell(source, metadata={"tags": tags}))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "fit.ipynb")
    pipeline.export(root / "fit.ipynb", root / "pipe")
    (root / ".gitignore").write_text("*.db\n/pipe/serving/\n/pipe/metrics/\n/pipe/report/\n")
    for args in (["add", "-A"], ["commit", "-qm", "pipeline"]):
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=root, check=True)
    return root


# ---- monitoring: a package's log against its reference, with no store and no server -----------------
def drift_frame(rng, n: int, shift: float = 0.0, new_category: bool = False, flip: float = 0.0) -> dict:
    """Columns x0..x7 (normal; x0 shifted by ``shift``), city (4 cities; a fifth of them tokyo with
    ``new_category``) and a 0/1 prediction (30% ones, ``flip`` more): drift of each kind on demand."""
    import numpy as np

    cols = {f"x{i}": rng.normal(size=n) for i in range(8)}
    cols["x0"] = cols["x0"] + shift
    cols["city"] = rng.choice(np.array(["paris", "lyon", "nice", "brest"], dtype=object), size=n,
                              p=[.4, .3, .2, .1])
    if new_category:
        cols["city"][: n // 5] = "tokyo"
    cols["prediction"] = (rng.random(n) < 0.3 + flip).astype(int)
    return cols


def served_package(root: Path, reference: dict, current: dict, ago: float | list = 60.0) -> Path:
    """ROOT/pkg as `mlops monitor` reads a serving package: serving.json, reference.json, and a log file of
    ``current`` (columns) logged ``ago`` seconds before now (a list: one time per row)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    run = reference["model"]["run_id"]
    (root / "pkg" / "m_serving").mkdir(parents=True)
    (root / "pkg" / "m_serving" / "serving.json").write_text(json.dumps({"model_uri": f"runs:/{run}/model",
                                                                          "run_id": run}))
    (root / "pkg" / "m_serving" / "reference.json").write_text(json.dumps(reference))
    (root / "pkg" / "prediction-log").mkdir()
    n = len(current["x0"])
    from datetime import datetime, timedelta, timezone

    now = datetime.now(timezone.utc)
    agos = ago if isinstance(ago, list) else [ago] * n
    stamps = pa.array([now - timedelta(seconds=a) for a in agos], pa.timestamp("us", "UTC"))
    meta = {"timestamp": stamps, "request_id": [f"r{i}" for i in range(n)], "row": [0] * n, "endpoint": ["predict"] * n,
            "status": [200] * n, "latency_ms": [3.0] * n, "model_name": ["m"] * n, "model_version": ["1"] * n,
            "model_uri": [f"runs:/{run}/model"] * n}
    pq.write_table(pa.table({**meta, **current}), root / "pkg" / "prediction-log" / "predictions-1.parquet")
    return root / "pkg"
