"""The Python side of the galata suite: seeds MLflow stores, notebooks and DVC snapshots with the
helpers the pytest suite uses (tests/mlflow_seed.py). Called by the Playwright config before the lab
starts (``project``) and by the specs (the other verbs); prints JSON where a spec needs an answer.

    python seed.py project ROOT          # ROOT/demo.ipynb with 2 runs; ROOT/perf gets 1,000 runs meanwhile
    python seed.py many ROOT             # (started by ``project``) the 1,000 runs, then ROOT/perf/.seeded
    python seed.py runs ROOT NOTEBOOK    # runs given as JSON on stdin (mlflow_seed.seed_runs)
    python seed.py notebook PATH         # cells as JSON on stdin: a source, or [source, tags]; prints cell ids
    python seed.py snapshots ROOT        # data/train.csv snapshotted twice with the real core
    python seed.py routes                # the mlops/ routes the server extension registers
    python seed.py package ROOT OUT      # a serving package at ROOT/OUT, and the base image builds use here
    python seed.py models ROOT           # ROOT/registered: registered model iris (2 versions), staging, prod
    python seed.py retrain ROOT          # ROOT/retraining: a pipeline fitting a model, a staging store, eval data
    python seed.py monitor ROOT          # ROOT/watching: a notebook beside a serving package whose log drifted lately
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from mlflow_seed import (drift_frame, make_project, retrain_project, seed_many, seed_models, seed_runs,  # noqa: E402
                         served_package, write_notebook)

UI_URL = "http://mlflow.example.test:5000"  # the perf project names the MLflow UI that serves its runs
MANY, CELLS = 1000, 20
SEEDED = ".seeded"  # written into ROOT/perf when the 1,000 runs are in; .seed-error if seeding failed


def project(root: Path) -> None:
    make_project(root)
    nb = write_notebook(root / "demo.ipynb")
    seed_runs(root, nb, [
        {"name": "baseline", "start": 1_700_000_000_000, "params": {"lr": "0.1"}, "metrics": {"acc": 0.81}},
        {"name": "tuned", "start": 1_700_000_060_000, "params": {"lr": "0.01"},
         "metrics": {"acc": 0.93, "loss": 0.21}},
    ])
    perf = make_project(root / "perf")
    # the sidebar links to this UI instead of printing the `mlflow ui` command
    with (perf / "pyproject.toml").open("a") as toml:
        toml.write(f'[tool.mlops]\nui-url = "{UI_URL}"\n')
    write_notebook(perf / "many.ipynb")
    # 1,000 runs take a while: seeded while the lab starts and the other tests run
    with (root / "seed-many.log").open("w") as log:
        subprocess.Popen([sys.executable, __file__, "many", str(root)], stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)


def many(root: Path) -> None:
    perf = root / "perf"
    try:
        seed_many(perf, perf / "many.ipynb", MANY, CELLS)
    except Exception:
        (perf / ".seed-error").write_text(traceback.format_exc())
        raise
    (perf / SEEDED).write_text(str(MANY))


def notebook(path: Path, cells: list) -> list[str]:
    """A notebook of code cells (the python3 kernel); returns the cell ids."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    for cell in cells:
        source, tags = (cell, None) if isinstance(cell, str) else cell
        nb.cells.append(nbformat.v4.new_code_cell(source))
        if tags:
            nb.cells[-1].metadata["tags"] = tags
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return [c.id for c in nb.cells]


def snapshots(root: Path) -> dict:
    from mlops_jupyter.data import snapshot

    data = root / "data" / "train.csv"
    data.parent.mkdir(exist_ok=True)
    data.write_text("x,y\n1,0\n")
    first = snapshot(data, message="first rows", root=root)
    data.write_text("x,y\n1,0\n2,1\n")
    second = snapshot(data, message="more rows", root=root)
    return {"data": str(data), "first": str(first), "second": str(second)}


def package(root: Path, out: str) -> dict:
    """A serving package at ROOT/OUT of a small iris model saved to disk (no store touched), and the base image
    this machine builds on (tests/image_base.py: made once, then cached)."""
    import tempfile

    import mlflow.sklearn
    from image_base import ensure_base
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    from mlops_jupyter.serving import generate_package

    X, y = load_iris(return_X_y=True, as_frame=True)
    model = LogisticRegression(max_iter=300).fit(X, y)
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.sklearn.save_model(model, f"{tmp}/model", signature=infer_signature(X, model.predict(X)),
                                  input_example=X.head(3), pip_requirements=["scikit-learn"])
        generate_package(f"{tmp}/model", root / out, name="iris")
    return {"folder": out, "base": ensure_base()[0]}


def monitor(root: Path) -> dict:
    """ROOT/watching/served.ipynb beside ROOT/watching/pkg: three hours of logged traffic, the last hour with x0
    shifted and a new city (no store: the package holds its reference)."""
    import numpy as np

    from mlops_jupyter.monitor import drift

    rng = np.random.default_rng(0)
    folder = root / "watching"
    folder.mkdir(parents=True)
    reference = drift.profile(drift_frame(rng, 5000), model={"run_id": "c" * 32, "name": "model"})
    parts = [drift_frame(rng, 600), drift_frame(rng, 600), drift_frame(rng, 600, shift=1.0, new_category=True)]
    current = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    # 5.9 s apart, each hour's 600 rows a minute clear of its older edge: the panel asks for the last hour seconds
    # after this, and the hour's oldest row must still be in it
    agos = [(3 - h) * 3600 - 60 - i * 5.9 for h in range(3) for i in range(600)]
    served_package(folder, reference, current, agos)
    write_notebook(folder / "served.ipynb")
    return {"notebook": "watching/served.ipynb"}


def routes() -> list[str]:
    from mlops_jupyter.server.handlers import ROUTES

    return sorted(endpoint for endpoint, _ in ROUTES)


def main(argv: list[str]) -> None:
    verb, args = argv[0], argv[1:]
    if verb == "project":
        project(Path(args[0]))
    elif verb == "many":
        many(Path(args[0]))
    elif verb == "runs":
        print(json.dumps(seed_runs(Path(args[0]), Path(args[1]), json.load(sys.stdin))))
    elif verb == "notebook":
        print(json.dumps(notebook(Path(args[0]), json.load(sys.stdin))))
    elif verb == "snapshots":
        print(json.dumps(snapshots(Path(args[0]))))
    elif verb == "routes":
        print(json.dumps(routes()))
    elif verb == "package":
        print(json.dumps(package(Path(args[0]), args[1])))
    elif verb == "models":
        seed_models(Path(args[0]) / "registered")  # not "models...": galata names each test's folder so
        print(json.dumps({"notebook": "registered/models.ipynb"}))
    elif verb == "retrain":
        retrain_project(Path(args[0]) / "retraining")
        print(json.dumps({"notebook": "retraining/fit.ipynb", "out": "retraining/pipe"}))
    elif verb == "monitor":
        print(json.dumps(monitor(Path(args[0]))))
    else:
        sys.exit(f"unknown verb {verb!r}: project, many, runs, notebook, snapshots, routes, package, models, "
                 "retrain or monitor")


if __name__ == "__main__":
    main(sys.argv[1:])
