"""Pipeline steps as Ray tasks, against anchors timed in the same run (a temp project, real kernels, a real
2-node ray.cluster_utils.Cluster with 1 CPU per node, timed once the cluster is up):

- 4 independent steps of 2 s each (time.sleep; each after a no-op first step, since a step tagged without
  after: follows the one above it) with `mlops pipeline run --address --force`: the wall against the ideal
  for 2 slots (4 s) as a ratio, and the local runner's wall on the same pipeline beside it;
- the same through a kept driver (MLOPS_RAY_DRIVER_S: the CLI hands its run to a driver that stays connected,
  whose workers keep their fork servers and parked kernels), once it has served a run, its runs one after
  another (as a user's are): a Ray job run in between on the same nodes makes Ray retire the kept job's idle
  workers beyond one per CPU, and the next kept run starts new ones (printed too);
- an unchanged re-run with --address (goal <= 2 s, and the cluster not contacted: no step runs), plain and
  through the kept driver;
- plain Ray's floor for the same shape: a new driver process (as each CLI run is a new Ray job) that connects,
  runs a no-op task and then 4 tasks of a 2 s sleep, 1 CPU each, and exits. No runner whose run is a new Ray job
  can beat it on this machine; the gap between it and our run is ours (kernels, papermill, the records). A kept
  driver's run is not a new job.

Beside each timed run: how busy the machine's cores were until the first 2 s step began (the CLI's start, Ray's
connection, the no-op step, each node's first worker and kernel), from /proc/stat. Both nodes share this
machine's cores, where a real cluster's would each have their own.
"""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import nbformat
from bench_pipeline import timed  # bench/ is on sys.path: this file runs as a script from there

BIN = Path(sys.executable).parent
REPEAT = 2
STEPS, SLEEP_S, SLOTS = 4, 2.0, 2
IDEAL = STEPS / SLOTS * SLEEP_S
PLAIN_RAY = f"""
import logging, os, sys, time
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # as our runner does before gRPC loads
import ray
ray.init(address=sys.argv[1], log_to_driver=False, logging_level=logging.ERROR)
@ray.remote(num_cpus=1)
def step(after, seconds):
    time.sleep(seconds)
start = step.remote(None, 0)
ray.get([step.remote(start, {SLEEP_S}) for _ in range({STEPS})])
ray.shutdown()
"""


def cpu_times() -> tuple[float, float] | None:
    """(busy, all) time of all cores so far, from /proc/stat; None where there is none."""
    try:
        ticks = [float(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    return sum(ticks) - ticks[3] - ticks[4], sum(ticks)  # idle and iowait are not busy


def traced(cmd: list, cwd: Path, env: dict) -> tuple[float, str, float]:
    """``timed``, and how busy the cores were from the start until the first 2 s step began (its line)."""
    first = cpu_times()
    at: dict = {}
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    err = threading.Thread(target=lambda: at.update(err=proc.stderr.read()), daemon=True)
    err.start()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "busy" not in at and re.search(r"▶ s\d", line):
            at["busy"] = cpu_times()
    proc.wait()
    took = time.perf_counter() - t
    err.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{''.join(lines)}\n{at.get('err', '')}")
    busy = float("nan")
    if first and at.get("busy") and at["busy"][1] > first[1]:
        busy = (at["busy"][0] - first[0]) / (at["busy"][1] - first[1])
    return took, "".join(lines), busy


def main() -> None:
    import ray
    from ray.cluster_utils import Cluster

    load = os.getloadavg()[0]  # other work on the machine skews the ratio: say how much there was
    root = Path(tempfile.mkdtemp(prefix="bench-pipeline-ray-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_", "RAY_ADDRESS"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    t = time.perf_counter()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 80 << 20})
    cluster.add_node(num_cpus=1, object_store_memory=80 << 20)
    cluster.wait_for_nodes()
    up = time.perf_counter() - t
    try:
        (root / "pyproject.toml").write_text('[project]\nname = "bench"\nversion = "0"\n')
        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.cells.append(nbformat.v4.new_code_cell("import time", metadata={"tags": ["imports"]}))
        nb.cells.append(nbformat.v4.new_code_cell("start = 0", metadata={"tags": ["step:start"]}))
        for i in range(STEPS):
            nb.cells.append(nbformat.v4.new_code_cell(f"time.sleep({SLEEP_S})\nv{i} = {i}",
                                                      metadata={"tags": [f"step:s{i}", "after:start"]}))
        nbformat.write(nb, root / "fan.ipynb")
        mlops = [str(BIN / "mlops")]
        timed(mlops + ["export", "fan.ipynb", "--out", "pipe"], root, env)
        on_ray = mlops + ["pipeline", "run", "pipe", "--address", cluster.address]
        kept = {**env, "MLOPS_RAY_DRIVER_S": "300"}
        # warm-up: the MLflow store's tables, the workers' first imports of papermill; the kept driver started
        timed(mlops + ["pipeline", "run", "pipe"], root, env)
        timed(on_ray + ["--force"], root, env)
        timed(on_ray + ["--force"], root, kept)
        local, remote, plain, through, mixed, busy = [], [], [], [], [], {"local": [], "ray": [], "kept": []}
        for _ in range(REPEAT):
            plain.append(timed([sys.executable, "-c", PLAIN_RAY, cluster.address], root, env)[0])
            took, _, share = traced(mlops + ["pipeline", "run", "pipe", "--force"], root, env)
            local.append(took)
            busy["local"].append(share)
            took, _, share = traced(on_ray + ["--force"], root, env)
            remote.append(took)
            busy["ray"].append(share)
            mixed.append(traced(on_ray + ["--force"], root, kept)[0])  # after another job's run
        for _ in range(REPEAT):
            took, _, share = traced(on_ray + ["--force"], root, kept)
            through.append(took)
            busy["kept"].append(share)
        again, again_kept, out, out_kept = [], [], "", ""
        for _ in range(REPEAT):
            took, out = timed(on_ray, root, env)
            again.append(took)
            took, out_kept = timed(on_ray, root, kept)
            again_kept.append(took)
        l, r, u = statistics.median(local), statistics.median(remote), statistics.median(again)
        p, k, uk = statistics.median(plain), statistics.median(through), statistics.median(again_kept)
        print(f"machine load (1-minute average) at the start / end: {load:.2f} / {os.getloadavg()[0]:.2f} "
              f"on {os.cpu_count()} cores; the 2-node cluster came up in {up:.1f}s; each run: local "
              f"{' '.join(f'{x:.2f}' for x in local)} · ray {' '.join(f'{x:.2f}' for x in remote)} · kept driver "
              f"{' '.join(f'{x:.2f}' for x in through)} (after another job's run: "
              f"{' '.join(f'{x:.2f}' for x in mixed)}) · plain ray {' '.join(f'{x:.2f}' for x in plain)}")
        print(f"{STEPS} independent steps of {SLEEP_S:g}s on {SLOTS} 1-CPU nodes, --force: {r:.2f}s = "
              f"{r / IDEAL:.2f}x the ideal {IDEAL:g}s; the local runner on the same pipeline: {l:.2f}s = "
              f"{l / IDEAL:.2f}x (median of {REPEAT})")
        m = statistics.median(mixed)
        print(f"through a kept driver (MLOPS_RAY_DRIVER_S), --force, one run after another: {k:.2f}s = "
              f"{k / IDEAL:.2f}x the ideal (goal <= 1.3x: {'ok' if k / IDEAL <= 1.3 else 'MISSED'}); right after "
              f"another Ray job's run on the nodes: {m:.2f}s = {m / IDEAL:.2f}x")
        print(f"plain Ray's floor, a new driver running the same shape of tasks: {p:.2f}s = {p / IDEAL:.2f}x the "
              f"ideal; ours over it: {r - p:+.2f}s")
        print("until the first 2 s step began, the cores were busy: "
              + " · ".join(f"{k} {' '.join(f'{x:.0%}' for x in v)}" for k, v in busy.items())
              + f" (both nodes on these {os.cpu_count()} cores)")
        for what, secs, said in (("", u, out), (" through the kept driver", uk, out_kept)):
            print(f"unchanged re-run with --address{what}: {secs:.2f}s (goal <= 2 s: "
                  f"{'ok' if secs <= 2 else 'MISSED'}; nothing run: "
                  f"{'yes' if f'{STEPS + 1} skipped' in said else 'NO'})")
    finally:
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
