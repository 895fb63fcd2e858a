"""`mlops report` for a 10-step pipeline with 5 plots, against `dvc metrics diff --md` on the same pipeline.

Goal: the report (a cold `mlops report RUN --baseline master --out report.md`, as CI runs it) <= 5 s. The anchor
is DVC's own Markdown diff of the same ten steps' metrics between the two commits, timed in the same run. Both
pipeline runs (on master and on a branch) are recorded through the product's one writer: ten step runs each,
with two metrics; four steps log their loss at 20 steps, so the report draws the metrics' bars and four curves.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import CLEAN_VARS, git, make_git_project  # noqa: E402

BIN = Path(sys.executable).parent
STEPS, CURVES, REPEAT = 10, 4, int(os.environ.get("BENCH_REPEAT", "5"))


def record(root: Path, scale: float) -> str:
    """One pipeline run of the current commit, as `mlops pipeline run` records it; returns the parent's key."""
    from mlops_jupyter import config
    from mlops_jupyter.tracking.records import Recording

    rec = Recording(config.resolve(root), "pipeline-bench")
    parent = rec.start_run("pipeline bench", params={"scale": scale}, code=root,
                           tags={"mlops.kind": "pipeline", "mlops.pipeline": "bench"})
    for i in range(STEPS):
        step = rec.start_run(f"s{i}", parent=parent, tags={"mlops.kind": "pipeline-step", "mlops.pipeline": "bench",
                                                           "mlops.step": f"s{i}"})
        for k in range(20 if i < CURVES else 1):
            rec.log(step, metrics={"loss": scale / (k + 1)}, step=k)
        rec.log(step, metrics={"acc": 0.5 + scale * i / 100})
        rec.end_run(step)
    rec.end_run(parent)
    assert not rec.close(timeout=120).waiting
    return parent


def metrics_files(root: Path, scale: float) -> None:
    for i in range(STEPS):
        (root / "metrics" / f"s{i}.json").write_text(json.dumps({"acc": 0.5 + scale * i / 100, "loss": scale / 20}))


def timed(cmd: list, cwd: Path) -> float:
    times = []
    for _ in range(REPEAT):
        t = time.perf_counter()
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        assert out.returncode == 0, out.stderr[-2000:]
    return statistics.median(times)


def main() -> None:
    for var in CLEAN_VARS:
        os.environ.pop(var, None)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_git_project(Path(tmp) / "proj")
        os.chdir(root)
        subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True)
        (root / "metrics").mkdir()
        stages = {f"s{i}": {"cmd": "true", "metrics": [{f"metrics/s{i}.json": {"cache": False}}]} for i in range(STEPS)}
        import yaml

        (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
        metrics_files(root, 1.0)
        git(root, "add", "-A")
        git(root, "commit", "-qm", "pipeline")
        record(root, 1.0)
        git(root, "checkout", "-qb", "feature")
        metrics_files(root, 2.0)
        git(root, "commit", "-qam", "scale 2")
        record(root, 2.0)
        from mlops_jupyter import config
        from mlops_jupyter.tracking import runs_tagged

        (target,) = [r["run_id"] for r in runs_tagged(config.resolve(root), "mlops.kind", "pipeline")][:1]
        report = timed([str(BIN / "mlops"), "report", target, "--baseline", "master", "--out", "report/report.md"],
                       root)
        made = (root / "report" / "report.md").read_text()
        plots = made.count("![")
        anchor = timed([str(BIN / "dvc"), "metrics", "diff", "master", "--md"], root)
    print(f"mlops report, {STEPS}-step pipeline vs branch master, {plots} plots, cold CLI, median of {REPEAT}: "
          f"{report:.2f} s (goal <= 5 s): {'PASS' if report <= 5 else 'MISS'}")
    print(f"  anchor: dvc metrics diff master --md on the same {STEPS} steps' metrics: {anchor:.2f} s; "
          f"ratio {report / anchor:.2f}x (the report also draws {plots} plots and reads both runs from MLflow)")


if __name__ == "__main__":
    main()
