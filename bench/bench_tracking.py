"""Cost of tracking a trivial cell, against the hand-written MLflow equivalent (the anchor).

Both are timed in this run, on the same machine and the same kind of SQLite store:
- tracked vs untracked trivial cell, wall time from execute_request to execute_reply in a real
  ipykernel (interleaved pairs, median difference). Goal: < 5 ms added.
- anchor: start_run + 10 params + 5 metrics + 3 tags + the source as text + end_run through the
  MLflow fluent API on a SQLite store (about 65 ms on the reference machine).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import Kernel, make_git_project  # noqa: E402

PAIRS = int(os.environ.get("BENCH_PAIRS", "150"))
ANCHOR_RUNS = int(os.environ.get("BENCH_ANCHOR_RUNS", "30"))
SOURCE = "x = 1"


def timed(kernel: Kernel, code: str) -> float:
    t = time.perf_counter()
    reply, _ = kernel.run(code)
    assert reply["status"] == "ok", reply
    return time.perf_counter() - t


def cell_overhead(root: Path) -> tuple[float, float, float]:
    k = Kernel(root)
    try:
        timed(k, "%load_ext mlops_jupyter\n%mlops init")
        for _ in range(10):  # warm-up: recorder start, store creation, first runs
            timed(k, f"%%mlops run\n{SOURCE}")
            timed(k, SOURCE)
        timed(k, "assert get_ipython()._mlops_magics.tracker.flush(120) == 0")
        plain, tracked = [], []
        for _ in range(PAIRS):
            plain.append(timed(k, SOURCE))
            tracked.append(timed(k, f"%%mlops run\n{SOURCE}"))
            time.sleep(0.005)  # a notebook user never runs cells back to back faster than this
        timed(k, "assert get_ipython()._mlops_magics.tracker.flush(300) == 0")
    finally:
        k.shutdown()
    return statistics.median(plain), statistics.median(tracked), statistics.median(
        t - p for p, t in zip(plain, tracked))


def anchor(root: Path) -> float:
    import mlflow

    mlflow.set_tracking_uri("sqlite:///" + (root / "anchor.db").as_posix())
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("anchor", (root / "anchor-art").as_uri()))
    times = []
    for i in range(ANCHOR_RUNS + 3):
        t = time.perf_counter()
        mlflow.start_run()
        mlflow.log_params({f"p{j}": j * i for j in range(10)})
        for j in range(5):
            mlflow.log_metric(f"m{j}", j * 0.5)
        mlflow.set_tags({"a": "1", "b": "2", "c": "3"})
        mlflow.log_text(SOURCE, "cell/source.py")
        mlflow.end_run()
        times.append(time.perf_counter() - t)
    return statistics.median(times[3:])


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = make_git_project(Path(tmp) / "proj")
        for var in ("MLFLOW_TRACKING_URI", "MLOPS_TRACKING_URI", "JPY_SESSION_NAME"):
            os.environ.pop(var, None)
        plain, tracked, added = cell_overhead(root)
        hand = anchor(root)
    print(f"trivial cell, real kernel, {PAIRS} interleaved pairs: untracked {plain * 1e3:.2f} ms, "
          f"tracked {tracked * 1e3:.2f} ms median")
    print(f"tracking adds {added * 1e3:.2f} ms median per cell (goal < 5 ms): "
          f"{'PASS' if added < 0.005 else 'MISS'}")
    print(f"anchor, hand-written MLflow run on SQLite (start_run, 10 params, 5 metrics, 3 tags, source, end_run): "
          f"{hand * 1e3:.1f} ms median")
    print(f"ratio added/anchor = {added / hand:.3f} (tracking costs the cell {hand / max(added, 1e-6):.0f}x "
          f"less than writing the run inline)")


if __name__ == "__main__":
    main()
