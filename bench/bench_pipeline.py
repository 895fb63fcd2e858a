"""Pipeline speed, against anchors timed in the same run (a temp project, real kernels):

- first run of an exported 4-step linear pipeline (`mlops pipeline run --force`) against one papermill run of
  the original notebook (goal <= 1.0x, with the pipeline's MLflow records going through the journal);
- an unchanged re-run (goal <= 2 s, and no kernel started).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

BIN = Path(sys.executable).parent
REPEAT = 3
CELLS = [
    ("import numpy as np\nfrom sklearn.datasets import make_classification\nfrom sklearn.ensemble import "
     "RandomForestClassifier\nfrom sklearn.preprocessing import StandardScaler", ["imports"]),
    ("rows = 20000\ntrees = 40\nseed = 0", ["parameters"]),
    ("X, y = make_classification(n_samples=rows, n_features=20, random_state=seed)", ["step:load"]),
    ("X = StandardScaler().fit_transform(X)", ["step:scale"]),
    ("model = RandomForestClassifier(n_estimators=trees, max_depth=8, random_state=seed, n_jobs=1)\n"
     "model.fit(X, y)", ["step:train"]),
    ("accuracy = model.score(X, y)\nprint(accuracy)", ["step:evaluate"]),
    ("accuracy", ["metrics"]),
]


def timed(cmd: list, cwd: Path, env: dict) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    took = time.perf_counter() - t
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return took, out.stdout


def main() -> None:
    load = os.getloadavg()[0]  # other work on the machine skews the ratio: say how much there was
    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    try:
        (root / "pyproject.toml").write_text('[project]\nname = "bench"\nversion = "0"\n')
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        for src, tags in CELLS:
            cell = nbformat.v4.new_code_cell(src)
            cell.metadata["tags"] = tags
            nb.cells.append(cell)
        nbformat.write(nb, root / "linear.ipynb")
        mlops, papermill = [str(BIN / "mlops")], [str(BIN / "papermill")]
        timed(mlops + ["export", "linear.ipynb", "--out", "pipe"], root, env)
        # warm-up: the disk cache, the MLflow store's tables, papermill's first import
        timed(papermill + ["linear.ipynb", "out.ipynb", "--log-level", "WARNING"], root, env)
        timed(mlops + ["pipeline", "run", "pipe"], root, env)
        anchor, first = [], []
        for _ in range(REPEAT):
            anchor.append(timed(papermill + ["linear.ipynb", "out.ipynb", "--log-level", "WARNING"], root, env)[0])
            first.append(timed(mlops + ["pipeline", "run", "pipe", "--force"], root, env)[0])
        runs_before = len(list((root / "pipe" / "runs").iterdir()))
        again, out = [], ""
        for _ in range(REPEAT):
            took, out = timed(mlops + ["pipeline", "run", "pipe"], root, env)
            again.append(took)
        no_kernel = len(list((root / "pipe" / "runs").iterdir())) == runs_before and "4 skipped" in out
        a, f, u = statistics.median(anchor), statistics.median(first), statistics.median(again)
        print(f"machine load (1-minute average) at the start / end: {load:.2f} / {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} cores; each run: anchor {' '.join(f'{t:.2f}' for t in anchor)} · "
              f"pipeline {' '.join(f'{t:.2f}' for t in first)}")
        print(f"papermill of the original notebook (anchor): {a:.2f}s (median of {REPEAT})")
        print(f"4-step linear pipeline, first run (--force): {f:.2f}s = {f / a:.2f}x the anchor "
              f"(goal <= 1.0x: {'ok' if f / a <= 1.0 else 'MISSED'})")
        print(f"unchanged re-run: {u:.2f}s = {u / a:.2f}x the anchor (goal <= 2 s: {'ok' if u <= 2 else 'MISSED'}; "
              f"no kernel started: {'yes' if no_kernel else 'NO'})")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
