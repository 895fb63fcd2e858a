"""`mlops retrain` with nothing new (no new data, no stale step): goal <= 3 s, a cold CLI as cron or CI runs it.

Anchor, timed in the same run: `mlops pipeline run` of the same pipeline with nothing stale (what retrain cannot
do with less: it also re-checks every input's snapshot and records the loop's decision). Before timing, one retrain
registers and promotes the first model (that one is printed too: a whole loop, with a pipeline run, a registration,
the gates with both models re-scored, and a copy into the staging registry).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import CLEAN_VARS  # noqa: E402
from mlflow_seed import retrain_project  # noqa: E402

BIN = Path(sys.executable).parent
REPEAT = int(os.environ.get("BENCH_REPEAT", "7"))


def timed(cmd: list, cwd: Path) -> tuple[float, str]:
    t = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return time.perf_counter() - t, out.stdout


def main() -> None:
    for var in CLEAN_VARS:
        os.environ.pop(var, None)
    with tempfile.TemporaryDirectory() as tmp:
        root = retrain_project(Path(tmp) / "proj", model="RandomForestClassifier(n_estimators=50, random_state=0)")
        os.chdir(root)
        whole, said = timed([str(BIN / "mlops"), "retrain", "pipe"], root)
        assert "promoted" in said, said
        idle = [timed([str(BIN / "mlops"), "retrain", "pipe"], root)[0] for _ in range(REPEAT)]
        anchor = [timed([str(BIN / "mlops"), "pipeline", "run", "pipe"], root)[0] for _ in range(REPEAT)]
    idle_s, anchor_s = statistics.median(idle), statistics.median(anchor)
    print(f"mlops retrain with nothing new, cold CLI, median of {REPEAT}: {idle_s:.2f} s (goal <= 3 s): "
          f"{'PASS' if idle_s <= 3 else 'MISS'}")
    print(f"  anchor: mlops pipeline run with nothing stale: {anchor_s:.2f} s; ratio {idle_s / anchor_s:.2f}x")
    print(f"  the first retrain (pipeline run, register, gates re-scoring a 50-tree forest, copy to staging): "
          f"{whole:.1f} s")


if __name__ == "__main__":
    main()
