"""Interrupting a sweep in a real kernel: trials KILLED, the kernel (and its Ray) usable after, nothing left."""

import re
from pathlib import Path

from harness import all_runs, kernel, notebook, text_of, wait_for
from test_sweep import ray_processes


def test_interrupt_stops_the_sweep_cleanly_and_the_kernel_goes_on(project):
    marker = project / "trial-started"
    with kernel(project) as k:
        reply, _ = k.run("%load_ext mlops_jupyter\nimport ray\n"
                         "ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 << 20)\n"
                         "session = ray._private.worker._global_node.get_session_dir_path()")
        assert reply["status"] == "ok"
        msg_id = k.run(f'%%mlops sweep --space "i=grid(1, 2, 3, 4)" --metric acc --mode max\n'
                       f"import time\nopen({str(marker)!r}, 'w').close()\ntime.sleep(60)\nacc = i", wait=False)
        wait_for(marker.exists, timeout=120, what="a trial to start")
        k.km.interrupt_kernel()
        reply, msgs = k.collect(msg_id, timeout=90)
        assert reply["status"] == "error" and reply["ename"] == "KeyboardInterrupt", text_of(msgs)
        assert "interrupted" in text_of(msgs)
        # the same kernel and its Ray run the next sweep with no restart
        reply, msgs = k.run('%%mlops sweep --space "i=grid(1, 2)" --metric acc --mode max\nacc = i\n'
                            "_ = None", timeout=120)
        assert reply["status"] == "ok", text_of(msgs)
        # one widget updated in place (progress bar, trial table); the saved text: the final table, best marked
        (shown,) = [m for m in msgs if m["msg_type"] == "display_data"
                    and "application/vnd.jupyter.widget-view+json" in m["content"]["data"]]
        final = [m["content"]["data"] for m in msgs if m["msg_type"] == "update_display_data"
                 and m["content"]["transient"] == shown["content"]["transient"]][-1]
        assert final["application/vnd.jupyter.widget-view+json"] == shown["content"]["data"][
            "application/vnd.jupyter.widget-view+json"]
        best_line = next(ln for ln in final["text/plain"].splitlines() if ln.startswith("*"))
        assert best_line.split()[2:5] == ["FINISHED", "2", "2"], final["text/plain"]  # i=2, acc=2
        assert "background:#dcfce7" in final["text/html"]
        bars = [m["content"]["data"]["state"] for m in msgs if m["msg_type"] in ("comm_open", "comm_msg")
                and m["content"]["data"].get("state", {}).get("value") == 2]
        assert bars, "the progress bar reached 2 of 2"
        reply, msgs = k.run("import sys\nprint(best_params, 'ray.tune' in sys.modules, session)")
        assert "{'i': 2} False" in text_of(msgs)  # a sweep without a scheduler never waits for Tune's import
        session = text_of(msgs).split()[-1]
        k.run("import mlops_jupyter\nget_ipython()._mlops_magics.tracker.flush(60)", timeout=90)
    wait_for(lambda: not ray_processes(session), timeout=60, what="the kernel's Ray processes to exit")
    runs = all_runs(project)
    first, second = [r for r in runs if r.data.tags.get("mlops.kind") == "sweep"]
    assert first.info.status == "KILLED" and second.info.status == "FINISHED"
    killed = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == first.info.run_id]
    assert killed and {r.info.status for r in killed} == {"KILLED"}


def labextension_request() -> str:
    """The user expression the sidebar sends a kernel when the user writes a local sweep cell (prestart.ts)."""
    source = (Path(__file__).parents[1] / "labextension" / "src" / "prestart.ts").read_text()
    return re.search(r'^const ASK =\s*"([^"]*)";$', source, re.M).group(1)


def test_a_notebook_with_a_sweep_cell_has_ray_started_as_the_extension_loads(project):
    """Ray's start off the first sweep's path: the kernel of a notebook that holds a local sweep starts Ray (and
    imports Tune, when no sweep has begun) in the background as the extension loads, or when the sidebar sees
    the user write one; other notebooks, or MLOPS_RAY_PRESTART=0, do not."""
    sweep = '%%mlops sweep --space "i=grid(1, 2)" --metric acc --mode max\nacc = i'
    plain = notebook(project / "plain.ipynb", ["x = 1", sweep.replace("%%mlops sweep", "%%mlops sweep --address "
                                                                                      "ray://head:10001")])
    sweeps = notebook(project / "sweeps.ipynb", ["x = 1", sweep])
    ask, request = "import sys\nprint('ray' in sys.modules)", labextension_request()
    with kernel(project, env={"MLOPS_NOTEBOOK": str(sweeps), "MLOPS_RAY_PRESTART": "0"}) as k:
        k.run("%load_ext mlops_jupyter\nimport time\ntime.sleep(2)")
        assert text_of(k.run(ask)[1]).strip() == "False"
        assert k.ask(request)["data"]["text/plain"] == "'off'"
    with kernel(project, env={"MLOPS_NOTEBOOK": str(plain)}) as k:
        assert k.ask(request)["data"]["text/plain"] == "None"  # no extension yet: the sidebar asks again later
        k.run("%load_ext mlops_jupyter\nimport time\ntime.sleep(2)")
        assert text_of(k.run(ask)[1]).strip() == "False"
        # the user writes a local sweep cell: the sidebar's silent request starts Ray, once
        assert k.ask(request)["data"]["text/plain"] == "'started'"
        assert k.ask(request)["data"]["text/plain"] == "'idle'"
        reply, msgs = k.run("from mlops_jupyter.sweep import runner\nprint(runner.prestarted.wait(120))\n"
                            "import ray\nprint(ray.is_initialized())\n"
                            "print(ray._private.worker._global_node.get_session_dir_path())", timeout=150)
        assert reply["status"] == "ok" and text_of(msgs).split()[:2] == ["True", "True"], text_of(msgs)
        early = text_of(msgs).split()[2]
    wait_for(lambda: not ray_processes(early), timeout=60, what="the kernel's Ray processes to exit")
    with kernel(project, env={"MLOPS_NOTEBOOK": str(sweeps)}) as k:
        reply, msgs = k.run("%load_ext mlops_jupyter\nfrom mlops_jupyter.sweep import runner\n"
                            "print(runner.prestarted.wait(120))\nimport ray, sys\nprint(ray.is_initialized(), "
                            "'ray.tune' in sys.modules)\n"
                            "print(ray._private.worker._global_node.get_session_dir_path())", timeout=150)
        lines = text_of(msgs).split()
        assert reply["status"] == "ok" and lines[:3] == ["True", "True", "True"], text_of(msgs)
        session = lines[3]
        reply, msgs = k.run(sweep, timeout=120)  # found up: this kernel's Ray, no second start
        assert reply["status"] == "ok", text_of(msgs)
        reply, msgs = k.run("print(best_params, ray._private.worker._global_node.get_session_dir_path())")
        assert text_of(msgs).split()[-1] == session and "{'i': 2}" in text_of(msgs)
        k.run("get_ipython()._mlops_magics.tracker.flush(60)", timeout=90)
    wait_for(lambda: not ray_processes(session), timeout=60, what="the kernel's Ray processes to exit")
