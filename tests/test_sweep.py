"""%%mlops sweep on a real local Ray (2 CPUs, 2 logical GPUs, shared by this module) and the real store."""

import psutil
import pytest
from harness import all_runs, read_artifact, wait_for
from IPython.core.error import UsageError

from mlops_jupyter.sweep import SweepError, parse
from mlops_jupyter.sweep.space import from_mapping, variants


def flush(ip):
    assert ip._mlops_magics.tracker.flush(timeout=60) == 0


def ray_processes(session_dir: str) -> list:
    """Ray's own processes (gcs_server, raylet, workers...) of one Ray session."""
    name = session_dir.rstrip("/").rsplit("/", 1)[-1]
    found = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            if any(name in part for part in p.info["cmdline"] or []):
                found.append(p.info["pid"])
        except (psutil.Error, TypeError):
            pass
    return found


def shutdown_and_check(ray_module) -> None:
    session = ray_module._private.worker._global_node.get_session_dir_path()
    ray_module.shutdown()
    wait_for(lambda: not ray_processes(session), timeout=30, what="Ray processes to exit")


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=200 << 20)
    yield ray
    shutdown_and_check(ray)


def sweep(ip, line, body):
    result = ip.run_cell(f"%%mlops sweep {line}\n{body}")
    return result


def children(project, parent):
    return [r for r in all_runs(project) if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


# ---- the search-space grammar (no Ray) -----------------------------------------------------
def test_space_grammar_reads_every_form():
    space = parse("lr=loguniform(1e-4, 1e-1); depth=choice(3, 5, 8); drop=uniform(0, 0.5); n=randint(1, 10);"
                  " q=quniform(0, 1, 0.25); opt=grid('adam', 'sgd;x'); seed=7; tag='a'")
    assert {k: t.fn for k, t in space.items()} == {"lr": "loguniform", "depth": "choice", "drop": "uniform",
                                                  "n": "randint", "q": "quniform", "opt": "grid", "seed": None,
                                                  "tag": None}
    assert space["opt"].args == ("adam", "sgd;x") and space["seed"].args == (7,)
    assert space["lr"].describe() == "loguniform(0.0001, 0.1)"
    mapped = from_mapping({"lr": "loguniform(1e-3, 1e-1)", "depth": [3, 5], "opt": "adam", "k": 2}, "grid")
    assert mapped["lr"].fn == "loguniform" and mapped["depth"].args == (3, 5)
    assert mapped["opt"].args == ("adam",) and mapped["k"].args == (2,)


def test_trials_are_drawn_as_ray_tune_draws_them_without_importing_it():
    """A sweep without a scheduler draws its trials itself (a first sweep saves Tune's import): the same grid
    order and count as Tune's variant generator, each value within its term, constants as given."""
    import random

    from ray.tune.search.variant_generator import generate_variants

    space = parse("lr=loguniform(1e-4, 1e-1); depth=grid(1, 2, 3); opt=grid('adam', 'sgd'); q=quniform(0, 1, 0.25);"
                  " n=randint(2, 5); act=choice('relu', 'tanh'); drop=uniform(0, 0.5); kind='tree'")
    drawn = variants(space, 2, random.Random(7))
    tune = [cfg for _ in range(2) for _, cfg in generate_variants({k: t.to_tune() for k, t in space.items()})]
    assert [(c["depth"], c["opt"]) for c in drawn] == [(c["depth"], c["opt"]) for c in tune]
    assert len(drawn) == 12 and all(list(c) == list(space) for c in drawn)
    for c in variants(space, 300, random.Random(1)):
        assert 1e-4 <= c["lr"] <= 1e-1 and 0 <= c["drop"] <= 0.5 and c["kind"] == "tree"
        assert c["q"] in (0.0, 0.25, 0.5, 0.75, 1.0) and isinstance(c["q"], float)
        assert c["n"] in (2, 3, 4) and c["act"] in ("relu", "tanh")
    seen = variants(parse("n=randint(2, 5); act=choice('relu', 'tanh')"), 300, random.Random(2))
    assert {c["n"] for c in seen} == {2, 3, 4} and {c["act"] for c in seen} == {"relu", "tanh"}
    assert variants(parse("x=choice(1, 2)"), 10) and len(variants(parse("x=grid(1, 2)"), 1)) == 2
    # a Ray Tune object given as is (a sample_from may read other values): Tune draws it
    assert variants(from_mapping({"x": {"grid_search": [1, 2]}}, "space"), 1) is None


@pytest.mark.parametrize("text, quoted, why", [
    ("lr=logunform(1e-4, 1e-1)", "lr=logunform(1e-4, 1e-1)", "unknown function 'logunform'"),
    ("lr=loguniform(0, 1)", "lr=loguniform(0, 1)", "low > 0"),
    ("x=uniform(1)", "x=uniform(1)", "takes 2 numbers"),
    ("x=uniform(2, 1)", "x=uniform(2, 1)", "must be below high"),
    ("n=randint(1.5, 4)", "n=randint(1.5, 4)", "whole numbers"),
    ("q=quniform(0, 1, 0)", "q=quniform(0, 1, 0)", "q must be > 0"),
    ("q=quniform(0.1, 1, 0.25)", "q=quniform(0.1, 1, 0.25)", "bounds must be multiples of its step q (0.25)"),
    ("d=choice()", "d=choice()", "at least one value"),
    ("d=choice(a, b)", "d=choice(a, b)", "literal values"),
    ("d=choice(low=1)", "d=choice(low=1)", "not keywords"),
    ("lr", "lr", "not name=value"),
    ("a.b=1", "a.b=1", "not name=value"),
    ("x=foo", "x=foo", "neither a search function nor a literal"),
    ("x=1; x=2", "x=2", "given twice"),
    ("acc=choice(1, 2)", "acc=choice(1, 2)", "the sweep's metric"),
])
def test_each_bad_space_term_is_quoted_with_the_valid_forms(text, quoted, why):
    with pytest.raises(SweepError) as err:
        parse(text, metric="acc")
    msg = str(err.value)
    assert repr(quoted) in msg and why in msg
    for form in ("choice(a, b, ...)", "uniform(low, high)", "loguniform(low, high)", "randint(low, high)",
                 "quniform(low, high, q)", "grid(a, b, ...)", "literal"):
        assert form in msg


# ---- magic arguments ------------------------------------------------------------------------
@pytest.mark.parametrize("line, names", [
    ('--space "x=choice(1)" --mode max', "--metric"),
    ('--space "x=choice(1)" --metric acc --mode best', "--mode"),
    ('--space "x=choice(1)" --metric acc --mode max --gpus-per-trial -1', "--gpus-per-trial"),
    ('--space "x=choice(1)" --metric acc --mode max --samples 0', "--samples"),
    ('--metric acc --mode max', "--space"),
    ('--space "x=choice(1)" --metric acc --mode max --scheduler hyperband', "--scheduler"),
    ('--space "x=logunform(1, 2)" --metric acc --mode max', "'x=logunform(1, 2)'"),
    ('--space-from nothing_here --metric acc --mode max', "--space-from nothing_here"),
])
def test_bad_sweep_arguments_are_usage_errors_naming_them(ip, project, line, names):
    result = sweep(ip, line, "acc = 1")
    assert isinstance(result.error_in_exec, UsageError), result.error_in_exec
    assert names in str(result.error_in_exec)
    assert all_runs(project) == []
    assert "ray" not in str(type(result.error_in_exec).__module__)


def test_sweep_as_a_line_magic_says_it_is_a_cell_magic(ip, project):
    with pytest.raises(UsageError, match="cell magic"):
        ip.run_line_magic("mlops", 'sweep --space "x=choice(1)" --metric acc --mode max')


def test_a_metric_the_cell_never_assigns_fails_before_any_trial(ip, project, local_ray):
    result = sweep(ip, '--space "x=choice(1, 2)" --metric acc --mode max', "score = x * 2")
    assert isinstance(result.error_in_exec, UsageError)
    assert "never assigns `acc`" in str(result.error_in_exec)
    assert all_runs(project) == []


# ---- sweeps on the local Ray ----------------------------------------------------------------
def test_sweep_records_parent_and_children_with_notebook_globals(ip, project, local_ray):
    ip.run_cell("import numpy as np\nimport mlops_jupyter\nweights = np.linspace(0, 1, 1000)\n"
                "offset = 0.5\n"
                "def score(depth):\n    return float(weights.mean()) * depth + offset + lr\n")
    result = sweep(ip, '--space "lr=loguniform(1e-4, 1e-1); depth=grid(1, 2, 3); kind=\'tree\'" --samples 2 '
                       '--metric acc --mode max --scheduler asha --name tune-it',
                   "for epoch in range(3):\n    mlops_jupyter.report(acc=score(depth) * (epoch + 1) / 3, epoch=epoch)\n"
                   "print('trained', kind, np.__name__)\nacc = score(depth)\n")
    assert result.success, result.error_in_exec
    df, best = ip.user_ns["sweep"], ip.user_ns["best_params"]
    assert len(df) == 6 and set(df["status"]) == {"FINISHED"}
    assert best["depth"] == 3 and best["kind"] == "tree"
    # functions defined in the notebook read the trial's sampled `lr`, as they would in the notebook
    expected = 0.5 * 3 + 0.5 + best["lr"]
    assert df["acc"].max() == pytest.approx(expected)
    flush(ip)
    (parent,) = [r for r in all_runs(project) if r.info.run_name == "tune-it"]
    assert parent.info.status == "FINISHED"
    p = parent.data.params
    assert p["space.lr"] == "loguniform(0.0001, 0.1)" and p["space.depth"] == "grid(1, 2, 3)"
    assert p["samples"] == "2" and p["metric"] == "acc" and p["mode"] == "max" and p["scheduler"] == "asha"
    assert p["best.depth"] == "3" and float(p["best.lr"]) == pytest.approx(best["lr"])
    assert parent.data.metrics["best_acc"] == pytest.approx(expected)
    kids = children(project, parent)
    assert len(kids) == 6 and {k.info.status for k in kids} == {"FINISHED"}
    for kid in kids:
        assert set(kid.data.params) == {"lr", "depth", "kind"}
        assert "acc" in kid.data.metrics and "epoch" in kid.data.metrics
        assert kid.data.tags["mlops.node"] == local_ray.get_runtime_context().get_node_id()
        if kid.data.tags["mlops.stopped_early"] == "False":  # ASHA may stop weak trials after a report()
            assert "trained tree numpy" in read_artifact(project, kid.info.run_id, "trial/output.txt")


def test_grid_times_samples_and_report_calls_without_a_scheduler(ip, project, local_ray):
    """Without a scheduler: a grid repeated --samples times with a random term, as Tune would draw it (trials
    run as plain Ray tasks); and a body that calls report() (through Tune) keeps every reported metric."""
    result = sweep(ip, '--space "depth=grid(1, 2, 3); lr=uniform(0, 1)" --samples 2 --metric acc --mode max',
                   "acc = depth + lr")
    assert result.success, result.error_in_exec
    df = ip.user_ns["sweep"]
    assert len(df) == 6 and set(df["status"]) == {"FINISHED"} and sorted(df["depth"]) == [1, 1, 2, 2, 3, 3]
    assert df["lr"].nunique() == 6 and df["acc"].max() == pytest.approx(3 + df[df["depth"] == 3]["lr"].max())
    result = sweep(ip, '--space "x=grid(1, 2)" --metric acc --mode max',
                   "import mlops_jupyter\nfor epoch in range(2):\n"
                   "    mlops_jupyter.report(acc=x * epoch, epoch=epoch)\nacc = x * 10")
    assert result.success, result.error_in_exec
    assert ip.user_ns["best_params"] == {"x": 2}
    flush(ip)
    parent = [r for r in all_runs(project) if r.data.tags.get("mlops.kind") == "sweep"]
    kids = children(project, max(parent, key=lambda r: r.info.start_time))
    assert sorted(k.data.metrics["acc"] for k in kids) == [10, 20] and {k.data.metrics["epoch"] for k in kids} == {1}


def test_trials_get_distinct_gpus_from_ray(ip, project, local_ray):
    result = sweep(ip, '--space "i=grid(1, 2, 3, 4)" --gpus-per-trial 1 --metric acc --mode max',
                   "import os, time\ntime.sleep(1.0)\ngpu = os.environ['CUDA_VISIBLE_DEVICES']\nacc = i")
    assert result.success, result.error_in_exec
    flush(ip)
    kids = [r for r in all_runs(project) if "mlflow.parentRunId" in r.data.tags]
    assert {k.data.tags["mlops.gpu_ids"] for k in kids} == {"0", "1"}
    for a in kids:
        for b in kids:
            overlap = a.info.start_time < b.info.end_time and b.info.start_time < a.info.end_time
            if a is not b and overlap:
                assert a.data.tags["mlops.gpu_ids"] != b.data.tags["mlops.gpu_ids"]


def test_trials_waiting_for_a_cpu_are_recorded_from_when_they_ran(ip, project, local_ray):
    # 4 trials at once on 2 CPUs: Ray holds two of them until a CPU frees; their runs (and the trial table's
    # seconds) must not count that wait, or the record shows 4 trials running at once on 2 CPUs
    result = sweep(ip, '--space "i=grid(1, 2, 3, 4)" --concurrency 4 --metric acc --mode max',
                   "import time\ntime.sleep(1.0)\nacc = i")
    assert result.success, result.error_in_exec
    flush(ip)
    parent = max((r for r in all_runs(project) if r.data.tags.get("mlops.kind") == "sweep"),
                 key=lambda r: r.info.start_time)
    kids = children(project, parent)
    assert len(kids) == 4
    at_once = max(sum(k.info.start_time <= t.info.start_time < k.info.end_time for k in kids) for t in kids)
    assert at_once <= 2, [(k.info.start_time, k.info.end_time) for k in kids]  # the CPUs, not the trials
    assert all(s >= 1.0 for s in ip.user_ns["sweep"]["seconds"])  # each still holds its whole body


def test_failing_trial_is_failed_with_traceback_and_retries_apply(ip, project, local_ray, tmp_path):
    marker = tmp_path / "flaky"
    ip.user_ns["marker"] = str(marker)
    result = sweep(ip, '--space "case=grid(\'ok\', \'bad\', \'flaky\')" --retries 1 --metric acc --mode max',
                   "import os\n"
                   "if case == 'bad':\n    raise ValueError('boom 42')\n"
                   "if case == 'flaky' and not os.path.exists(marker):\n"
                   "    open(marker, 'w').close()\n    raise RuntimeError('first attempt fails')\n"
                   "acc = 1.0\n")
    assert result.success, result.error_in_exec  # a failing trial does not fail the sweep
    flush(ip)
    runs = all_runs(project)
    (parent,) = [r for r in runs if r.data.tags.get("mlops.kind") == "sweep"]
    kids = {k.data.params["case"]: k for k in children(project, parent)}
    assert parent.info.status == "FINISHED"
    assert kids["bad"].info.status == "FAILED" and kids["bad"].data.tags["mlops.attempts"] == "2"
    tb = read_artifact(project, kids["bad"].info.run_id, "trial/traceback.txt")
    assert "ValueError: boom 42" in tb and "<sweep cell>" in tb and "trial.py" not in tb
    assert kids["flaky"].info.status == "FINISHED" and kids["flaky"].data.tags["mlops.attempts"] == "2"
    assert kids["ok"].info.status == "FINISHED" and kids["ok"].data.tags["mlops.attempts"] == "1"
    assert ip.user_ns["sweep"].set_index("case").loc["bad", "error"] == "ValueError: boom 42"


def test_a_metric_missing_at_run_time_fails_that_trial_only(ip, project, local_ray):
    result = sweep(ip, '--space "x=grid(1, 2)" --metric acc --mode min', "if x == 1:\n    acc = 0.5\n")
    assert result.success, result.error_in_exec
    df = ip.user_ns["sweep"].set_index("x")
    assert df.loc[1, "status"] == "FINISHED" and df.loc[2, "status"] == "FAILED"
    assert "did not assign the sweep's metric variable `acc`" in df.loc[2, "error"]
    assert ip.user_ns["best_params"] == {"x": 1}


def test_globals_that_cannot_travel_are_named_when_a_trial_needs_them(ip, project, local_ray):
    ip.run_cell("import threading\nlock = threading.Lock()")
    result = sweep(ip, '--space "x=choice(1)" --samples 1 --metric acc --mode max', "with lock:\n    acc = x\n")
    assert result.success
    (row,) = ip.user_ns["sweep"].to_dict("records")
    assert row["status"] == "FAILED"
    assert "`lock` exists in the notebook but could not be sent to Ray workers" in row["error"]


def test_more_gpus_than_any_node_has_fail_at_once_listing_the_cluster(ip, project, local_ray):
    result = sweep(ip, '--space "x=choice(1)" --gpus-per-trial 4 --metric acc --mode max', "acc = x")
    assert isinstance(result.error_in_exec, UsageError)
    msg = str(result.error_in_exec)
    assert "4 GPU" in msg and "2 CPU, 2 GPU" in msg and "The cluster has" in msg
    assert all_runs(project) == []
