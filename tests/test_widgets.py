"""The notebook UI in real kernels: no stray warnings, the runs widget driven as a front end drives it (comm
messages), and the text a saved notebook (papermill) keeps beside the widget view."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import nbformat
import pytest
from harness import TakenPorts, kernel, notebook

SETUP = ["%load_ext mlops_jupyter", "%mlops init --experiment ui"]


def streams(msgs: list, name: str) -> str:
    return "".join(m["content"]["text"] for m in msgs if m["msg_type"] == "stream" and m["content"]["name"] == name)


def run_ok(k, code: str, timeout: float = 120):
    reply, msgs = k.run(code, timeout=timeout)
    assert reply["status"] == "ok", (code, reply)
    return msgs


def test_a_tracked_cell_shows_the_users_output_and_one_summary_line(project):
    with kernel(project) as k:
        for code in SETUP:
            run_ok(k, code)
        msgs = run_ok(k, "%%mlops run --metrics acc\nimport warnings\nimport mlflow, sklearn\n"
                         "from tqdm.auto import tqdm\nfor _ in tqdm(range(3), disable=True):\n    pass\n"
                         "mlflow.log_metric('extra', 1.0)\nwarnings.warn('my own warning')\nacc = 0.75\nprint('trained')")
        # an MLflow call that makes MLflow log an INFO line (a new experiment), outside any tracked cell
        quiet = run_ok(k, "import mlflow\nmlflow.get_experiment_by_name('ui') and mlflow.set_experiment('other-exp')")
    err = streams(msgs, "stderr")
    assert "UserWarning: my own warning" in err  # the user's own warning still shows
    assert "IProgress" not in err and "TqdmWarning" not in err and "INFO" not in err
    assert err.count("\n") <= 2, err  # the warning and its source line, nothing else
    assert streams(msgs, "stdout") == "trained\n"
    lines = [m["content"]["data"]["text/plain"] for m in msgs if m["msg_type"] == "display_data"]
    assert len(lines) == 1 and lines[0].startswith("mlops: run ") and "acc=0.75" in lines[0]
    assert streams(quiet, "stderr") == "", streams(quiet, "stderr")


class Front:
    """The part of a widget front end the tests need: the widgets' states as the kernel sends them, and
    messages the way JupyterLab's widget manager sends them back (comm_msg update / custom)."""

    def __init__(self, k):
        self.k, self.state = k, {}

    def take(self, msgs: list) -> None:
        for m in msgs:
            c = m["content"]
            if m["msg_type"] == "comm_open":
                self.state[c["comm_id"]] = dict(c["data"]["state"])
            elif m["msg_type"] == "comm_msg" and c["data"].get("method") == "update":
                self.state.setdefault(c["comm_id"], {}).update(c["data"]["state"])

    def find(self, model: str, description: str | None = None) -> str:
        (comm,) = [cid for cid, s in self.state.items() if s.get("_model_name") == model
                   and (description is None or s.get("description") == description)]
        return comm

    def send(self, comm_id: str, data: dict) -> None:
        msg = self.k.kc.session.msg("comm_msg", {"comm_id": comm_id, "data": data})
        self.k.kc.shell_channel.send(msg)
        deadline, msgs = time.monotonic() + 60, []
        while True:  # a comm_msg gets no reply: it is handled once the kernel goes idle under it
            m = self.k.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            if m["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                    break
                msgs.append(m)
        self.take(msgs)

    def set(self, comm_id: str, **state) -> None:
        self.send(comm_id, {"method": "update", "state": state, "buffer_paths": []})

    def rows(self, table: str) -> list[str]:
        return re.findall(r"data-run='([0-9a-f]+)'", self.state[table]["value"])


def test_the_runs_widget_sorts_filters_and_compares_in_a_real_kernel(project):
    with kernel(project) as k:
        for code in SETUP:
            run_ok(k, code)
        for lr, acc, status in ((0.1, 0.7, "ok"), (0.3, 0.9, "ok"), (0.2, 0.8, "ok"), (0.5, None, "boom")):
            body = f"lr = {lr}\n" + (f"acc = {acc}" if acc else "del acc\nraise ValueError('boom')")
            reply, _ = k.run(f"%%mlops run --metrics acc\n{body}", timeout=120)
            assert reply["status"] == ("ok" if acc else "error")
        msgs = run_ok(k, "%mlops runs")
        ids = json.loads(streams(run_ok(k, "import json; print(json.dumps([r['run_id'] for r in "
                                           "get_ipython().run_line_magic('mlops', 'runs --json')]))"), "stdout"))
        front = Front(k)
        front.take(msgs)
        (view,) = [m for m in msgs if m["msg_type"] == "execute_result"]
        data = view["content"]["data"]
        assert "application/vnd.jupyter.widget-view+json" in data and "<table" in data["text/html"]
        assert data["text/plain"].count("FINISHED") == 3 and "FAILED" in data["text/plain"]
        table = next(cid for cid, s in front.state.items() if "data-run=" in str(s.get("value", "")))
        assert front.rows(table) == ids  # newest first

        sort = front.find("DropdownModel", "sort by")
        front.set(sort, index=front.state[sort]["_options_labels"].index("metric acc"))
        acc_order = [ids[i] for i in (2, 1, 3)]  # acc 0.9, 0.8, 0.7 (newest first in ids: boom, 0.8, 0.9, 0.7)
        assert front.rows(table)[:3] == acc_order
        front.set(front.find("CheckboxModel", "descending"), value=False)
        assert front.rows(table)[:3] == acc_order[::-1]

        status = front.find("DropdownModel", "status")
        front.set(status, index=front.state[status]["_options_labels"].index("FAILED"))
        assert front.rows(table) == [ids[0]]
        front.set(status, index=0)
        query = front.find("TextModel", "filter")
        front.set(query, value="lr>=0.2, acc>0.75")
        assert sorted(front.rows(table)) == sorted([ids[1], ids[2]])
        front.set(query, value="nope>1")
        note = next(cid for cid, s in front.state.items() if "no param or metric is named" in str(s.get("value", "")))
        assert "'nope'" in front.state[note]["value"] and "acc" in front.state[note]["value"]
        front.set(query, value="")

        # tick two runs, press compare: the same table as `%mlops compare`
        pick = front.find("SelectMultipleModel", "compare")
        labels = front.state[pick]["_options_labels"]
        ticked = [i for i, label in enumerate(labels) if label.split()[0] in (ids[1][:8], ids[3][:8])]
        front.set(pick, index=ticked)
        front.send(front.find("ButtonModel"), {"method": "custom", "content": {"event": "click"}})
        compared = next(cid for cid, s in front.state.items() if "%mlops compare" in str(s.get("value", "")))
        shown = front.state[compared]["value"]
        chosen = " ".join(labels[i].split()[0] for i in ticked)  # in the order the list shows them
        assert f"%mlops compare {chosen}" in shown
        magic = json.loads(streams(run_ok(k, "import json; t = get_ipython().run_line_magic('mlops', "
                                             f"'compare {chosen}'); print(json.dumps(t._repr_html_()))"), "stdout"))
        assert magic in shown and "param lr" in shown

        chart = next(cid for cid, s in front.state.items() if "mlops-chart" in str(s.get("value", "")))
        assert front.state[chart]["value"].count("<rect") == 3  # one bar per run with acc


def test_papermill_keeps_the_widget_and_the_text_table_and_prints_no_noise(project):
    nb = notebook(project / "ui.ipynb", [*SETUP, "%%mlops run --metrics acc\nacc = 0.5", "%mlops runs"])
    out = subprocess.run([sys.executable, "-m", "papermill", "--engine", "mlops", "--log-level", "WARNING",
                          str(nb), str(project / "ui.out.ipynb")], capture_output=True, text=True, cwd=project)
    assert out.returncode == 0, out.stderr
    assert "without encryption" not in out.stderr and "IProgress" not in out.stderr and "INFO" not in out.stderr
    done = nbformat.read(project / "ui.out.ipynb", as_version=4)
    outputs = [o for c in done.cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("name") == "stderr"]
    (bundle,) = [o["data"] for o in done.cells[-1].outputs if o["output_type"] == "execute_result"]
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "FINISHED" in bundle["text/plain"] and "acc=0.5" in bundle["text/plain"]
    assert "<table" in bundle["text/html"]
    assert "application/vnd.jupyter.widget-state+json" in done.metadata.get("widgets", {})


def test_papermills_mlops_engine_starts_a_kernel_again_when_its_port_was_taken(project, monkeypatch, caplog):
    """``papermill --engine mlops`` (and ``mlops reproduce``, which runs it): a kernel that dies as it starts,
    another process having taken one of its ports, is started again with new ports, and the notebook runs."""
    import papermill

    ports = TakenPorts(monkeypatch, {0})  # the first kernel's shell port
    nb = notebook(project / "ports.ipynb", ["print(6 * 7)"])
    with ports.server:
        done = papermill.execute_notebook(str(nb), str(project / "ports.out.ipynb"), engine_name="mlops",
                                          progress_bar=False)
    assert done.cells[0].outputs[0]["text"] == "42\n"
    assert len(ports.picks) == 10  # 5 ports for each of 2 kernels: the one given the taken port was replaced
    assert "starting it again with new ports" in caplog.text


@pytest.mark.parametrize("text, message", [
    ("lr", "is not a condition"),
    ("lr >> 1", "is not a condition"),
    ("lr >", "is not a condition"),
    ("depth=3", "no param or metric is named 'depth'"),
])
def test_a_bad_filter_says_what_is_wrong(text, message):
    from mlops_jupyter._widgets import parse_filter

    with pytest.raises(ValueError, match=re.escape(message)):
        parse_filter(text, {"lr", "acc"})


def saved(path, cells: list) -> None:
    """The notebook as JupyterLab saves it: (cell id, source) per code cell."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src, id=cid) for cid, src in cells]
    nbformat.write(nb, path)


def test_hidden_state_a_changed_cell_and_one_run_out_of_order_are_named(project):
    from harness import finished_runs, read_artifact

    nb = project / "hidden.ipynb"
    cells = [("setup", "%load_ext mlops_jupyter\n%mlops init"), ("a", "x = 1"),
             ("b", "%%mlops run --metrics y\ny = x + z"), ("c", "z = 10")]
    saved(nb, cells)
    with kernel(project, env={"JPY_SESSION_NAME": str(nb)}) as k:
        counts = {}
        for cid in ("setup", "a", "c"):  # c, below b, runs first: out of order
            reply, _ = k.run(dict(cells)[cid], cell_id=cid)
            counts[cid] = reply["execution_count"]
        cells[1] = ("a", "x = 2")  # edited and saved, not run again
        saved(nb, cells)
        reply, msgs = k.run(dict(cells)["b"], cell_id="b")
        assert reply["status"] == "ok"
        line = [m["content"]["data"]["text/plain"] for m in msgs if m["msg_type"] == "display_data"][0]
        assert f"depends on a cell changed since it ran: [{counts['a']}]" in line, line
        assert f"depends on a cell below it, run out of order: [{counts['c']}]" in line, line
        # in order and unchanged: nothing to say
        reply, _ = k.run("x = 2", cell_id="a")
        reply, msgs = k.run("%%mlops run --metrics w\nw = x * 2", cell_id="b")
        clean = [m["content"]["data"]["text/plain"] for m in msgs if m["msg_type"] == "display_data"][0]
        assert "depends on" not in clean, clean
        k.run("get_ipython()._mlops_magics.tracker.flush(60)", timeout=90)
    first, second = finished_runs(project, 2)
    assert "changed since it ran" in first.data.tags["mlops.hidden_state"]
    assert "mlops.hidden_state" not in second.data.tags
    order = json.loads(read_artifact(project, first.info.run_id, "cell/execution_order.json"))
    assert [o["cell_id"] for o in order] == [None, "a", "c", "b"]  # the first ran before the extension loaded
    assert order[1]["count"] == counts["a"] and len(order[1]["hash"]) == 12


def test_the_summary_line_is_one_short_line_that_links_the_run():
    from mlops_jupyter.tracking import display

    run_id = "3f2a9c81" + "0" * 24
    local = display.run_line(run_id, "FINISHED · acc=0.8", "mlflow ui --backend-store-uri sqlite:///x.db",
                             {"params": 2, "metrics": 1, "artifacts": 5})
    assert repr(local) == "mlops: run 3f2a9c81 FINISHED · acc=0.8 · 5 artifacts"
    assert run_id in local._repr_html_() and "mlflow ui --backend-store-uri sqlite:///x.db" in local._repr_html_()
    url = "http://ui:5000/#/experiments/1/runs/" + run_id
    linked = display.run_line(run_id, "FINISHED", "http://ui:5000", None, url)
    assert repr(linked) == "mlops: run 3f2a9c81 FINISHED"
    assert f'<a href="{url}" target="_blank" rel="noopener">3f2a9c81</a>' in linked._repr_html_()
