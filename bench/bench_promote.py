"""Promotion with every gate on a 50-tree forest, against the same done by hand with MLflow; and rollback.

Goal: `registry.promote` (signature, metric, tests and lineage gates: both models re-scored on the evaluation data,
the candidate's serving package generated and put through its own tests, the
version copied into the staging registry, the alias moved, the audit record written through the journal) <= 1.5x
the hand-made equivalent: the candidate's files downloaded from dev and logged into a staging run, a model version
made from them, both models loaded and scored on the same evaluation data, the alias set. Both in this process,
interleaved, each on versions of its own (a version is copied once). Rollback: < 2 s.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import CLEAN_VARS  # noqa: E402
from mlflow_seed import seed_models  # noqa: E402

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "4"))
FOREST = "RandomForestClassifier(n_estimators=50, random_state={seed})"
PROMOTION = '\n[tool.mlops.promotion]\nmetric = "accuracy"\nevaluation-data = "eval.csv"\n'


def by_hand(dev: str, staging: str, name: str, version: str, holder: str | None, X, y) -> str:
    """What a promotion between two registries takes with MLflow alone."""
    import mlflow.pyfunc
    from mlflow import MlflowClient
    from mlflow.artifacts import download_artifacts
    from sklearn.metrics import accuracy_score

    src, dst = MlflowClient(dev, dev), MlflowClient(staging, staging)
    with tempfile.TemporaryDirectory() as tmp:
        folder = download_artifacts(src.get_model_version_download_uri(name, version), dst_path=tmp,
                                    tracking_uri=dev)
        exp = dst.get_experiment_by_name("by-hand") or dst.get_experiment(dst.create_experiment("by-hand"))
        run = dst.create_run(exp.experiment_id)
        dst.log_artifacts(run.info.run_id, folder, "model")
        dst.set_terminated(run.info.run_id)
    try:
        dst.create_registered_model(f"{name}-hand")
    except Exception:  # noqa: BLE001 - it exists after the first round
        pass
    mv = dst.create_model_version(f"{name}-hand", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    new = accuracy_score(y, mlflow.pyfunc.load_model(src.get_model_version_download_uri(name, version)).predict(X))
    if holder is not None:
        old = accuracy_score(y, mlflow.pyfunc.load_model(dst.get_model_version_download_uri(f"{name}-hand", holder))
                             .predict(X))
        assert new >= old - 1.0
    dst.set_registered_model_alias(f"{name}-hand", "staging", str(mv.version))
    return str(mv.version)


def main() -> None:
    import pandas as pd

    from mlops_jupyter import config, registry

    for var in CLEAN_VARS:
        os.environ.pop(var, None)
    with tempfile.TemporaryDirectory() as tmp:
        models = {f"forest-{i}": FOREST.format(seed=i) for i in range(2 * ROUNDS + 1)}  # not hex: no id prefix
        root = seed_models(Path(tmp) / "proj", models, PROMOTION)
        os.chdir(root)
        settings = config.resolve(root)
        dev, staging = settings.tracking_uri, f"sqlite:///{root / 'staging.db'}"
        frame = pd.read_csv(root / "eval.csv")
        X, y = frame.drop(columns=["target"]), frame["target"]
        registry.promote(settings, "iris/1", "staging")  # a holder to beat (and the store made) before timing
        hand_holder = by_hand(dev, staging, "iris", "1", None, X, y)
        ours, hand = [], []
        for r in range(ROUNDS):
            mine, theirs = str(2 + 2 * r), str(3 + 2 * r)
            t = time.perf_counter()
            moved = registry.promote(settings, f"iris/{mine}", "staging")
            ours.append(time.perf_counter() - t)
            assert all(g["status"] == "passed" for g in moved.gates) and len(moved.gates) == 4, moved.gates
            t = time.perf_counter()
            hand_holder = by_hand(dev, staging, "iris", theirs, hand_holder, X, y)
            hand.append(time.perf_counter() - t)
        t = time.perf_counter()
        registry.rollback(settings, "iris", "staging")
        rollback = time.perf_counter() - t
    ours_s, hand_s = statistics.median(ours), statistics.median(hand)
    print(f"promote with every gate (50-tree forest, both re-scored, copied to staging), median of {ROUNDS}: "
          f"{ours_s:.2f} s; by hand with MLflow: {hand_s:.2f} s; ratio {ours_s / hand_s:.2f}x (goal <= 1.5x): "
          f"{'PASS' if ours_s / hand_s <= 1.5 else 'MISS'}")
    print(f"rollback: {rollback:.2f} s (goal < 2 s): {'PASS' if rollback < 2 else 'MISS'}")


if __name__ == "__main__":
    main()
