"""Drift check speed: `mlops monitor` on 1,000,000 logged rows x 100 columns against a stored reference
(goal <= 60 s on 2 cores; its peak memory printed), beside Evidently's DataDriftPreset on a 100,000 x 20 subset
timed in the same run, compared per row-column (Evidently users report 23 minutes for 356k x 100).

The log is written as a serving package writes it (Parquet files of 100,000 rows, the log's own columns first);
the reference is profiled from 100,000 training rows, as a logged model's is. The current data has two shifted
features, so the check does the work of a drift it finds (and exits 1).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mlops_jupyter.monitor import drift

ROOT = Path(__file__).resolve().parents[1]
ROWS, NUMERIC, CATEGORICAL = 1_000_000, 90, 10
CITIES = np.array([f"city-{i}" for i in range(30)], dtype=object)
RUN = "0" * 32


def columns(rng, n: int, shift: float = 0.0) -> dict:
    cols = {f"x{i}": rng.normal(size=n) + (shift if i < 2 else 0.0) for i in range(NUMERIC)}
    cols.update({f"c{i}": rng.choice(CITIES, size=n) for i in range(CATEGORICAL)})
    cols["prediction"] = (rng.random(n) < 0.3).astype(np.int64)
    return cols


def write_log(folder: Path, rng) -> None:
    folder.mkdir(parents=True)
    now = datetime.now(timezone.utc)
    for part in range(ROWS // 100_000):
        n = 100_000
        cols = columns(rng, n, shift=0.3)
        stamps = pd.date_range(now - timedelta(minutes=50 - part * 5), periods=n, freq="3ms", tz="UTC")
        table = pa.table({"timestamp": pa.array(stamps), "request_id": pa.array([f"r{part}"] * n),
                          "row": pa.array(np.arange(n) % 32), "endpoint": pa.array(["predict"] * n),
                          "status": pa.array(np.full(n, 200)), "latency_ms": pa.array(rng.gamma(2.0, 3.0, n)),
                          "model_name": pa.array(["bench"] * n), "model_version": pa.array(["1"] * n),
                          "model_uri": pa.array([f"runs:/{RUN}/model"] * n),
                          "prediction": pa.array(cols.pop("prediction")), **{k: pa.array(v) for k, v in cols.items()}})
        pq.write_table(table, folder / f"predictions-{part:04d}.parquet")


def evidently(tmp: Path, rng) -> float:
    """Seconds Evidently's DataDriftPreset takes on 100,000 x 20 (16 numeric, 4 categorical)."""
    folder = tmp / "evidently"
    folder.mkdir()
    pick = [f"x{i}" for i in range(16)] + [f"c{i}" for i in range(4)]
    pd.DataFrame({k: v for k, v in columns(rng, 100_000).items() if k in pick}).to_parquet(folder / "reference.parquet")
    pd.DataFrame({k: v for k, v in columns(rng, 100_000, 0.3).items() if k in pick}).to_parquet(
        folder / "current.parquet")
    (folder / "meta.json").write_text(json.dumps({"numerical": pick[:16], "categorical": pick[16:]}))
    out = subprocess.run([str(ROOT / ".venv-evidently" / "bin" / "python"), str(ROOT / "tests" / "evidently_verdicts.py"),
                          str(folder)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["current"]["seconds"]


def main() -> int:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        reference = drift.profile(columns(rng, 100_000), model={"run_id": RUN, "name": "model"})
        built = time.perf_counter() - start
        package = tmp / "pkg"
        (package / "bench_serving").mkdir(parents=True)
        (package / "bench_serving" / "serving.json").write_text(json.dumps({"model_uri": f"runs:/{RUN}/model",
                                                                             "run_id": RUN}))
        (package / "bench_serving" / "reference.json").write_text(json.dumps(reference))
        write_log(package / "prediction-log", rng)

        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", "monitor", str(package), "--json"],
                             capture_output=True, text=True, cwd=tmp)
        ours = time.perf_counter() - start
        peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        result = json.loads(out.stdout)
        assert out.returncode == 1 and result["rows"] == ROWS, out.stderr[-2000:]
        theirs = evidently(tmp, rng)

    cells_ours, cells_theirs = ROWS * (NUMERIC + CATEGORICAL), 100_000 * 20
    print(f"reference: 100,000 rows x {NUMERIC + CATEGORICAL + 1} columns profiled and calibrated in {built:.1f} s, "
          f"{len(json.dumps(reference)) / 1e6:.1f} MB stored")
    print(f"mlops monitor: {ROWS:,} rows x {NUMERIC + CATEGORICAL} columns in {ours:.1f} s (goal <= 60 s), "
          f"peak memory {peak_mb:.0f} MB; drifted: {', '.join(result['drifted'])}")
    print(f"Evidently DataDriftPreset: 100,000 x 20 in {theirs:.1f} s")
    print(f"per row-column: ours {ours / cells_ours * 1e9:.0f} ns, Evidently {theirs / cells_theirs * 1e9:.0f} ns: "
          f"{(theirs / cells_theirs) / (ours / cells_ours):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
