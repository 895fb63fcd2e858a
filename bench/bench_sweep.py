"""%%mlops sweep speed: 20 trials of a 0.5 s body on 2 CPUs, against the ideal and plain Ray Tune.

Prints, timed in this run:
- the first sweep of a session, Ray's start included, against ideal + 5 s: each in a new process, its notebook
  holding the sweep cell (so the extension starts Ray in the background as it loads), the sweep cell run right
  after the extension loads and after GAP_S of earlier cells (time.sleep standing in for imports and loading
  data); and with that background start turned off (MLOPS_RAY_PRESTART=0), as before it existed;
- a sweep with Ray already up against 1.3x the ideal (5 s): with no scheduler its trials run as plain Ray tasks;
- the same sweep through Tune (the path of --scheduler asha, or of a body that calls report(): here it reports
  its metric once);
- plain Ray Tune with its defaults (a worker process per trial, file loggers) on the same body: the
  anchor. It is slow, so it runs 4 trials and is scaled to 20 (said in its line);
- plain Ray Tune at its fastest (reuse_actors, no file loggers), 20 trials on the same Ray:
  the floor of any sweep that runs its trials through Tune;
- a 2-node ray.cluster_utils.Cluster: trials per node;
- plain Ray's floor for a first sweep: a new process that imports Ray, starts it on this machine as we do, and
  runs the 20 trials' bodies as plain tasks (timed from before its import of Ray). No first sweep that has to
  start Ray can beat it: a sweep run the moment the extension loads has nothing to hide Ray's start behind.
"""

import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

TRIALS, BODY_S, CPUS = 20, 0.5, 2
GAP_S = 5.0
IDEAL = TRIALS * BODY_S / CPUS
ANCHOR_TRIALS = 4
CELL = (f'%%mlops sweep --space "x=uniform(0, 1)" --samples {TRIALS} --metric acc --mode max{{extra}}\n'
        f"import time\ntime.sleep({BODY_S})\nacc = x\n{{tail}}")
PLAIN_FIRST = f"""
import logging, os, time
started = time.perf_counter()
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")  # as our kernel does before gRPC loads
import ray
ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
@ray.remote(num_cpus=1)
def body(x):
    time.sleep({BODY_S})
    return x
ray.get([body.remote(i) for i in range({TRIALS})])
print(time.perf_counter() - started)
"""
TUNE_TAIL = "import mlops_jupyter\nmlops_jupyter.report(acc=acc)\n"  # report(): the sweep goes through Tune


def plain_tune(n: int, fastest: bool = False) -> float:
    from ray import tune

    def body(config):
        time.sleep(BODY_S)
        tune.report({"acc": config["x"]})

    # Tune reads this as a run starts; the sweeps before set it in this process, and the anchor needs its default
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1" if fastest else "0"
    started = time.perf_counter()
    tune.Tuner(body, param_space={"x": tune.uniform(0, 1)},
               tune_config=tune.TuneConfig(num_samples=n, metric="acc", mode="max", reuse_actors=fastest),
               run_config=tune.RunConfig(storage_path=tempfile.mkdtemp(), verbose=0)).fit()
    return time.perf_counter() - started


def session(gap: float | None = None):
    """A new project and an IPython shell with the extension loaded, its notebook holding the sweep cell;
    ``gap``: seconds of earlier cells before the first sweep (None: this is not a first-sweep run)."""
    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    (root / "pyproject.toml").write_text('[project]\nname = "bench"\nversion = "0"\n')
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    os.chdir(root)
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import time"), nbformat.v4.new_code_cell(CELL.format(extra="", tail=""))]
    nbformat.write(nb, root / "sweep.ipynb")
    os.environ["MLOPS_NOTEBOOK"] = str(root / "sweep.ipynb")
    from IPython.testing.globalipapp import start_ipython
    from IPython.utils.io import capture_output

    ip = start_ipython()
    loaded = time.perf_counter()
    ip.run_line_magic("load_ext", "mlops_jupyter")
    ip.run_line_magic("mlops", "init")
    if gap:
        ip.run_cell(f"import time\ntime.sleep({max(0.0, gap - (time.perf_counter() - loaded))})")

    def sweep(extra: str = "", tail: str = "") -> float:
        started = time.perf_counter()
        with capture_output():
            result = ip.run_cell(CELL.format(extra=extra, tail=tail))
        if not result.success:
            raise SystemExit(f"sweep failed: {result.error_in_exec}")
        return time.perf_counter() - started

    return ip, sweep


def first_sweep(gap: float, prestart: bool) -> float:
    """The first sweep of a new process (its seconds on stdout's last line)."""
    env = {**os.environ, "MLOPS_RAY_PRESTART": "1" if prestart else "0"}
    done = subprocess.run([sys.executable, __file__, "--first", str(gap)], env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"first sweep failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.split()[-1])


def main() -> None:
    if sys.argv[1:2] == ["--first"]:
        ip, sweep = session(float(sys.argv[2]))
        took = sweep()
        ip._mlops_magics.tracker.flush(60)
        print(f"{took:.3f}")
        return
    firsts = {(gap, on): first_sweep(gap, on) for gap, on in ((0.0, True), (GAP_S, True), (0.0, False))}
    plain_first = min(float(subprocess.run([sys.executable, "-c", PLAIN_FIRST], capture_output=True, text=True,
                                           check=True).stdout.split()[-1]) for _ in range(2))
    ip, sweep = session()
    sweep()
    warm = min(sweep() for _ in range(2))
    sweep(tail=TUNE_TAIL)
    through_tune = min(sweep(tail=TUNE_TAIL) for _ in range(2))
    floor = min(plain_tune(TRIALS, fastest=True) for _ in range(2))
    anchor = plain_tune(ANCHOR_TRIALS) * TRIALS / ANCHOR_TRIALS
    for (gap, on), took in firsts.items():
        how = (f"Ray started as the extension loaded, the sweep {gap:g} s later" if on
               else "no background start (MLOPS_RAY_PRESTART=0)")
        print(f"first sweep, {how}: {took:.1f} s = ideal {IDEAL:.0f} s + {took - IDEAL:.1f} s "
              f"(goal: + 5 s or less) {'OK' if took <= IDEAL + 5 else 'SLOW'}")
    print(f"plain Ray's floor for a first sweep (a new process: import Ray, start it, the {TRIALS} bodies as tasks): "
          f"{plain_first:.1f} s = ideal + {plain_first - IDEAL:.1f} s")
    print(f"sweep, Ray up: {warm:.1f} s = {warm / IDEAL:.2f}x ideal {IDEAL:.0f} s (goal <= 1.3x) "
          f"{'OK' if warm <= 1.3 * IDEAL else 'SLOW'}")
    print(f"the same sweep through Tune (the body calls report()), Ray up: {through_tune:.1f} s = "
          f"{through_tune / IDEAL:.2f}x ideal")
    print(f"plain Ray Tune at its fastest (reuse_actors, no file loggers): {floor:.1f} s = {floor / IDEAL:.2f}x ideal: "
          f"the floor of a sweep run through Tune; through Tune %%mlops sweep adds "
          f"{(through_tune - floor) / floor:+.0%}, as Ray tasks it takes {warm / floor:.2f}x Tune's floor")
    print(f"plain Ray Tune, defaults: ~{anchor:.0f} s ({ANCHOR_TRIALS} trials timed, scaled to {TRIALS}) "
          f"-> %%mlops sweep is {anchor / warm:.1f}x faster")

    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": 100 << 20})
    cluster.add_node(num_cpus=1, object_store_memory=100 << 20)
    cluster.wait_for_nodes()
    try:
        took = sweep(f" --address {cluster.address}")
        per_node = Counter(ip.user_ns["sweep"]["node"])
        print(f"2-node cluster (1 CPU each): {took:.1f} s; trials per node: "
              + ", ".join(f"{node} {n}" for node, n in sorted(per_node.items()))
              + (" OK" if len(per_node) == 2 else " (only one node used)"))
    finally:
        ip._mlops_magics.tracker.flush(60)
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
