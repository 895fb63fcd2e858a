"""Cost of tracking a cell, against the hand-written MLflow equivalent (the anchor).

All timed in this run, on the same machine and the same kind of SQLite store, as wall time from
execute_request to execute_reply in a real ipykernel (interleaved tracked/untracked pairs, median difference, each
pair once the recorder has written what came before; beside it, the per-cell difference back to back):
- a trivial cell (``x = 1``). Goal: < 1 ms added.
- a realistic cell: 10 params, 5 metrics, one matplotlib figure, 200 lines of stdout. Goal: < 3 ms added.
- anchors: the same content written by hand through MLflow's fluent API on a SQLite store (start_run, params,
  metrics, tags, the source, and for the realistic cell the figure and the stdout, end_run).
- the read watch (the audit hook that links a run to the snapshotted files it opens): a tracked cell that reads a
  snapshotted file and an untracked cell, each in two kernels side by side, one with the watch and one without.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import Kernel, make_git_project, text_of  # noqa: E402

PAIRS = int(os.environ.get("BENCH_PAIRS", "150"))
ANCHOR_RUNS = int(os.environ.get("BENCH_ANCHOR_RUNS", "30"))
SOURCE = "x = 1"
PARAMS = "\n".join(f"p{j} = {j * 0.1}" for j in range(10))
METRICS = ",".join(f"m{j}" for j in range(5))
REALISTIC = (PARAMS + "\n" + "\n".join(f"m{j} = p{j} * 2" for j in range(5)) + "\n"
             "fig, ax = plt.subplots(figsize=(4, 3))\nax.plot([p0, p1, p2, p3])\nplt.show()\n"
             "for i in range(200):\n    print('epoch', i, 'loss', 1 / (i + 1))")


def timed(kernel: Kernel, code: str) -> float:
    t = time.perf_counter()
    reply, _ = kernel.run(code)
    assert reply["status"] == "ok", reply
    return time.perf_counter() - t


FLUSH = "assert get_ipython()._mlops_magics.tracker.flush(120) == 0"
BLOCK = int(os.environ.get("BENCH_BLOCK", "50"))


def cell_overhead(k: Kernel, source: str, header: str) -> tuple[float, float, float, float]:
    """(untracked, tracked, added, added back to back) seconds of ``source`` run plain and under ``header``.
    Each pair starts once the recorder has written the records before it (a user's pace: its writes land
    between cells), so the pair measures the cell's own cost. ``added back to back`` is "Run All": BLOCK cells
    of each kind in a row, where the recorder writes while the next cells run, per cell."""
    for _ in range(5):  # warm-up
        timed(k, f"{header}\n{source}")
        timed(k, source)
    plain, tracked = [], []
    for _ in range(PAIRS):
        timed(k, FLUSH)
        time.sleep(0.005)
        plain.append(timed(k, source))
        tracked.append(timed(k, f"{header}\n{source}"))
    timed(k, FLUSH)
    blocks = []
    for code in (source, f"{header}\n{source}"):
        t = time.perf_counter()
        for _ in range(BLOCK):
            timed(k, code)
        blocks.append((time.perf_counter() - t) / BLOCK)
        timed(k, FLUSH)  # untimed: the tracked block's last records
    return statistics.median(plain), statistics.median(tracked), statistics.median(
        t - p for p, t in zip(plain, tracked)), blocks[1] - blocks[0]


def anchor(root: Path, realistic: bool) -> float:
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt
    import mlflow

    name = "realistic" if realistic else "trivial"
    mlflow.set_tracking_uri("sqlite:///" + (root / "anchor.db").as_posix())
    exp = mlflow.get_experiment_by_name(name)
    mlflow.set_experiment(experiment_id=exp.experiment_id if exp else
                          mlflow.create_experiment(name, (root / f"anchor-{name}").as_uri()))
    stdout = "".join(f"epoch {i} loss {1 / (i + 1)}\n" for i in range(200))
    times = []
    for i in range(ANCHOR_RUNS + 3):
        t = time.perf_counter()
        mlflow.start_run()
        mlflow.log_params({f"p{j}": j * i for j in range(10)})
        for j in range(5):
            mlflow.log_metric(f"m{j}", j * 0.5)
        mlflow.set_tags({"a": "1", "b": "2", "c": "3"})
        mlflow.log_text(REALISTIC if realistic else SOURCE, "cell/source.py")
        if realistic:
            fig, ax = plt.subplots(figsize=(4, 3))
            ax.plot([0, 0.1, 0.2, 0.3])
            mlflow.log_figure(fig, "cell/outputs/000.png")
            plt.close(fig)
            mlflow.log_text(stdout, "cell/stdout.txt")
        mlflow.end_run()
        times.append(time.perf_counter() - t)
    return statistics.median(times[3:])


READER = "with open('data/train.csv') as fh:\n    rows = fh.read().count('\\n')"


COUNT_EVENTS = """import sys, timeit
_seen = [0, False]
def _count(event, args, seen=_seen):  # bound now: it still runs while the kernel's globals are torn down
    if seen[1]:
        seen[0] += 1
sys.addaudithook(_count)
_seen[1] = True
get_ipython().run_cell(READER)
_seen[1] = False
events = _seen[0]
watch = get_ipython()._mlops_magics.tracker.reads
from mlops_jupyter.tracking.reads import _hook
per_event = min(timeit.repeat(lambda: _hook('exec', (None,)), number=100_000, repeat=5)) / 100_000
def plain():
    with open('data/train.csv') as fh:
        fh.read()
def watched():
    watch.start()
    plain()
    watch.stop()
t_plain, t_watched = (min(timeit.repeat(f, number=2000, repeat=7)) / 2000 for f in (plain, watched))
"""


def read_watch_cost(root: Path) -> tuple[float, float, float, int, float]:
    """(median s of a watched tracked reader cell, s the watch adds to it by kernel pairs, s it adds to an untracked
    cell, audit events in that cell, s it adds to the tracked cell timed inside the kernel). Pairs: one kernel, the
    watch switched on and off between cells: the real path, but its noise is larger than the watch. Inside the
    kernel: start, the hook on the cell's one open of the file, stop (timeit), plus the hook's cost per event (it
    stays installed) times the other events such a cell raises; the same events make the untracked figure."""
    from mlops_jupyter import data

    (root / "data").mkdir()
    (root / "data" / "train.csv").write_text("x,y\n" + "".join(f"{i},{i * 2}\n" for i in range(100)))
    data.snapshot("data/train.csv", root=root)
    k = Kernel(root)
    try:
        timed(k, f"%load_ext mlops_jupyter\n%mlops init\nwatch = get_ipython()._mlops_magics.tracker.reads\n"
                 f"start = watch.start\nREADER = {READER!r}")
        on, off = [], []
        for _ in range(5):  # warm-up
            timed(k, f"%%mlops run\n{READER}")
        for _ in range(PAIRS):
            on.append(timed(k, f"%%mlops run\n{READER}"))
            timed(k, "watch.start = lambda: None")  # off: the next tracked cell is not watched
            off.append(timed(k, f"%%mlops run\n{READER}"))
            timed(k, "watch.start = start")
            time.sleep(0.005)
        timed(k, "assert get_ipython()._mlops_magics.tracker.flush(300) == 0")
        timed(k, "import mlflow\nassert sum(1 for r in mlflow.search_runs(search_all_experiments=True, output_format="
                 f"'list') if r.data.tags.get('mlops.read.data/train.csv')) == {PAIRS + 5}")  # the watched ones only
        timed(k, COUNT_EVENTS)
        reply, msgs = k.run("print(events, per_event, t_watched - t_plain)")
        events, per_event, direct = text_of(msgs).split()
    finally:
        k.shutdown()
    return (statistics.median(on), statistics.median(a - b for a, b in zip(on, off)), int(events) * float(per_event),
            int(events), float(direct) + int(events) * float(per_event))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = make_git_project(Path(tmp) / "proj")
        for var in ("MLFLOW_TRACKING_URI", "MLOPS_TRACKING_URI", "JPY_SESSION_NAME"):
            os.environ.pop(var, None)
        k = Kernel(root)
        try:
            timed(k, "%load_ext mlops_jupyter\n%mlops init\n%matplotlib inline\nimport matplotlib.pyplot as plt")
            trivial = cell_overhead(k, SOURCE, "%%mlops run")
            realistic = cell_overhead(k, REALISTIC, f"%%mlops run --metrics {METRICS}")
        finally:
            k.shutdown()
        hands = anchor(root, False), anchor(root, True)
        watched = read_watch_cost(make_git_project(Path(tmp) / "reads"))
    for what, (plain, tracked, added, run_all), goal, hand in (("trivial cell (x = 1)", trivial, 0.001, hands[0]),
                                                      ("realistic cell (10 params, 5 metrics, a figure, 200 lines "
                                                       "of stdout)", realistic, 0.003, hands[1])):
        print(f"{what}, real kernel, {PAIRS} interleaved pairs: untracked {plain * 1e3:.2f} ms, "
              f"tracked {tracked * 1e3:.2f} ms median")
        print(f"  tracking adds {added * 1e3:.2f} ms median per cell (goal < {goal * 1e3:.0f} ms): "
              f"{'PASS' if added < goal else 'MISS'}")
        print(f"  back to back ({BLOCK} cells of each kind in a row, as Run All does; the recorder writes while "
              f"the next cells run): {run_all * 1e3:.2f} ms per cell")
        print(f"  anchor, the same run written by hand with MLflow on SQLite: {hand * 1e3:.1f} ms median; "
              f"ratio added/anchor = {added / hand:.3f} ({hand / max(added, 1e-6):.0f}x less than writing it inline)")
    cell, added, idle, events, direct = watched
    print(f"read watch (links a run to the snapshotted files it opens): a tracked cell reading a snapshotted file, "
          f"{cell * 1e3:.2f} ms median in a real kernel; the watch adds {direct * 1e3:.4f} ms to it timed inside the "
          f"kernel ({direct / cell:.2%} of the cell; {PAIRS} kernel pairs with it on/off differ by "
          f"{added * 1e3:+.3f} ms median, within their noise); an untracked cell ({events} audit events) "
          f"{idle * 1e3:.4f} ms")


if __name__ == "__main__":
    main()
