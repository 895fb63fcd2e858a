"""Monitoring: a model logged from a cell gets a reference profile of its training data; its generated package
logs every prediction; `mlops monitor` compares the log with the reference (drift, errors, accuracy) and exits 1
on drift; /metrics exports drift gauges that a real Prometheus turns into a firing alert with the rules
`mlops monitor rules` writes. The drift statistics themselves are checked on numbers alone at the end."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from harness import finished_runs, notebook, stop_group, store_uri, wait_for
from mlflow_seed import drift_frame as frame
from mlflow_seed import served_package as fake_package
from test_cell_models import papermill
from test_serving import free_port, start_server

from mlops_jupyter.monitor import drift

PY = sys.executable
DATA = ("from sklearn.datasets import load_iris\n"
        "X, y = load_iris(return_X_y=True, as_frame=True)\nX_train, y_train = X.iloc[::2], y.iloc[::2]\n"
        "X_train.to_csv('train.csv', index=False)")
FOREST = ("from sklearn.ensemble import RandomForestClassifier\n"
          "forest = RandomForestClassifier(n_estimators=20, random_state=0).fit(X_train, y_train)")
TREE = "from sklearn.tree import DecisionTreeClassifier\ntree = DecisionTreeClassifier(max_depth=2).fit(X_train, y_train)"


def mlops(project, *args, timeout=300):
    return subprocess.run([PY, "-m", "mlops_jupyter.cli", *args], cwd=project, capture_output=True, text=True,
                          timeout=timeout)


def logged_rows(folder) -> int:
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(f).metadata.num_rows for f in folder.glob("predictions-*.parquet"))


def send(port, frame, shift: dict | None = None, batch: int = 10) -> list[str]:
    """POST the rows of ``frame`` (a column shifted by ``shift``) in batches; the request ids."""
    rows = frame.assign(**{c: frame[c] + d for c, d in (shift or {}).items()}).to_dict(orient="records")
    ids = []
    with httpx.Client(timeout=30) as client:
        for i in range(0, len(rows), batch):
            reply = client.post(f"http://127.0.0.1:{port}/predict", json={"rows": rows[i:i + batch]})
            assert reply.status_code == 200, reply.text
            ids.append(reply.headers["x-request-id"])
    return ids


PROMETHEUS = """global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [{rules}]
scrape_configs: [{{job_name: iris, static_configs: [{{targets: ['127.0.0.1:{port}']}}]}}]
"""


def test_drift_from_a_cell_to_an_alert(project, tmp_path):
    from sklearn.datasets import load_iris

    cells = ["%load_ext mlops_jupyter", DATA, f"%%mlops run --name train --model forest\n{FOREST}",
             f"%%mlops run --name other --model tree\n{TREE}", "%%mlops run --name plain\nscore = 1"]
    papermill(project, notebook(project / "m.ipynb", cells))
    runs = {r.info.run_name: r.info.run_id for r in finished_runs(project, 3)}
    from mlflow.tracking import MlflowClient

    def stored(run):
        return [a.path for a in MlflowClient(store_uri(project)).list_artifacts(run, "reference")]
    wait_for(lambda: stored(runs["train"]), timeout=60, what="the reference artifact")
    assert stored(runs["train"]) == ["reference/forest.json"]  # profiled from X_train when the model was logged

    out = mlops(project, "serve", "generate", f"runs:/{runs['train']}/forest", "--out", "pkg")
    assert out.returncode == 0, out.stderr
    module = next((project / "pkg").glob("*_serving"))
    assert {"reference.json", "drift.py", "logs.py", "monitoring.py"} <= {p.name for p in module.iterdir()}

    port = free_port()
    env = {"SERVE_LOG_FLUSH_S": "0.3", "SERVE_LOG_GROUP_S": "0.1", "SERVE_DRIFT_EVERY_S": "1"}
    proc = start_server([PY, "-m", "mlops_jupyter.cli", "serve", "run", "pkg", "--port", str(port)], port,
                        project / "serve.log", env)
    prom = None
    try:
        X = load_iris(as_frame=True).frame.drop(columns="target")
        unseen = X.iloc[1::2].reset_index(drop=True)  # the rows the model was not fit on
        ids = send(port, unseen)
        log = project / "pkg" / "prediction-log"
        wait_for(lambda: logged_rows(log) >= len(unseen), timeout=30, what="the unchanged rows in the log")
        truth = load_iris().target[1::2]
        reply = httpx.post(f"http://127.0.0.1:{port}/feedback", timeout=10, json={"labels": [
            {"request_id": rid, "row": r, "label": int(truth[i * 10 + r])} for i, rid in enumerate(ids)
            for r in range(min(10, len(truth) - i * 10))]})
        assert reply.status_code == 202, reply.text

        # unchanged traffic: no drift, exit 0; the service and the labels' accuracy reported
        wait_for(lambda: list(log.glob("labels-*.parquet")), timeout=30, what="the labels file")
        out = mlops(project, "monitor", "pkg", "--json")
        assert out.returncode == 0, out.stdout + out.stderr
        result = json.loads(out.stdout)
        assert not result["drift"] and result["rows"] == len(unseen)
        assert {c["column"] for c in result["columns"]} == {*X.columns, "prediction"}
        assert result["accuracy"]["labels"] == len(unseen) and result["accuracy"]["accuracy"] > 0.85
        assert result["service"]["requests"] == len(ids) and result["service"]["error_share"] == 0
        assert result["reference"]["run_id"] == runs["train"]

        # the live gauges, from the package's own log
        def gauges():
            text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            return [ln for ln in text.splitlines() if ln.startswith("serving_drift_score{")]
        wait_for(lambda: len(gauges()) == len(X.columns) + 1, timeout=30, what="drift gauges on /metrics")

        # a real Prometheus with the generated rules: the alert fires once shifted traffic arrives
        rules = tmp_path / "rules.yml"
        out = mlops(project, "monitor", "rules", "--for", "0s", "--out", str(rules))
        assert out.returncode == 0, out.stderr
        check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        prom_port = free_port()
        (tmp_path / "prom.yml").write_text(PROMETHEUS.format(rules=rules, port=port))
        prom = subprocess.Popen(["prometheus", f"--config.file={tmp_path / 'prom.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=(tmp_path / "prom.log").open("w"), stderr=subprocess.STDOUT,
                                start_new_session=True)

        def firing():
            try:
                alerts = httpx.get(f"http://127.0.0.1:{prom_port}/api/v1/alerts", timeout=5).json()["data"]["alerts"]
            except (httpx.HTTPError, ValueError):
                return []
            return sorted({a["labels"]["column"] for a in alerts if a["state"] == "firing"
                           and a["labels"]["alertname"] == "ServingFeatureDrift"})
        time.sleep(3)
        assert firing() == []  # scraped, evaluated, and quiet on unchanged data
        send(port, unseen, {"petal length (cm)": 3.0})
        wait_for(lambda: logged_rows(log) >= 2 * len(unseen), timeout=30, what="the shifted rows in the log")
        wait_for(lambda: "petal length (cm)" in firing(), timeout=60, what="the drift alert to fire in Prometheus")

        # shifted traffic: exit 1, the drifted feature named, an HTML report with plots
        out = mlops(project, "monitor", "pkg", "--since", "1h", "--window", "5m", "--report", "drift.html")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "DRIFT" in out.stdout and "petal length (cm)" in out.stdout.splitlines()[0]
        page = (project / "drift.html").read_text()
        assert page.count("<svg") >= 2 and "petal length (cm)" in page

        # a server killed mid-write leaves a truncated file: skipped, and said
        good = sorted(log.glob("predictions-*.parquet"))[0]
        cut = log / "predictions-99990101T000000000000-1-1.parquet"
        cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
        out = mlops(project, "monitor", "pkg")
        assert out.returncode == 1 and f"skipped {cut.name}" in out.stdout, out.stdout + out.stderr
        cut.unlink()
    finally:
        if prom is not None:
            stop_group(prom)
        stop_group(proc)

    # another model's reference: refused, the versions named
    out = mlops(project, "monitor", "pkg", "--run", runs["other"])
    assert out.returncode == 2 and f"runs:/{runs['train']}/forest" in out.stderr, out.stderr
    # a run with no reference: one line with the fix
    out = mlops(project, "monitor", "pkg", "--run", runs["plain"])
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "no reference" in out.stderr and f"mlops monitor reference {runs['plain']}" in out.stderr
    # a model logged before references existed gets one from its training data
    out = mlops(project, "monitor", "reference", runs["other"])
    assert out.returncode == 2 and "--data" in out.stderr, out.stderr  # the run read no snapshot
    out = mlops(project, "monitor", "reference", runs["other"], "--data", "train.csv")
    assert out.returncode == 0 and "5 columns profiled from 75 rows of train.csv" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("args, says", [
    (["pkg", "--since", "yesterday"], "is not a span of time"),
    (["pkg", "--stattest", "magic"], "is not a drift test"),
    (["nowhere"], "is not a folder"),
    (["rules", "--for", "soon"], "is not a Prometheus duration"),
    (["reference"], "needs the run that logged the model"),
])
def test_bad_monitor_arguments(project, args, says):
    (project / "pkg").mkdir()
    (project / "pkg" / "predictions-x.parquet").write_bytes(b"")
    out = mlops(project, "monitor", *args)
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


# ---- the statistics, on numbers alone ----------------------------------------------------------------------
@pytest.mark.parametrize("rows", [200, 1000, 5000])
def test_false_alarms_on_unchanged_data_stay_under_one_percent(rows):
    rng = np.random.default_rng(7)
    ref = drift.profile(frame(rng, 20_000))
    alarms = sum(any(c["drift"] for c in drift.compare(ref, frame(rng, rows))) for _ in range(200))
    psi = sum(any(c["drift"] for c in drift.compare(ref, frame(rng, rows), stattest="psi")) for _ in range(50))
    assert alarms <= 2, f"{alarms} of 200 unchanged batches of {rows} rows alarmed"
    assert psi <= 1  # PSI's thresholds are calibrated too (a fixed PSI > 0.1 alarms on most of these)


def test_each_kind_of_drift_is_found_and_named():
    rng = np.random.default_rng(3)
    ref = drift.profile(frame(rng, 20_000))

    def drifted(**change):
        return {c["column"] for c in drift.compare(ref, frame(rng, 2000, **change)) if c["drift"]}
    assert drifted() == set()
    assert drifted(shift=0.5) == {"x0"}
    assert drifted(new_category=True) == {"city"}
    assert drifted(flip=0.2) == {"prediction"}
    rows = drift.compare(ref, frame(rng, 2000, new_category=True))
    (city,) = [c for c in rows if c["column"] == "city"]
    assert city["unseen"] == ["tokyo"] and city["test"] == "jensenshannon"


def test_small_references_keep_their_values_and_use_p_values():
    rng = np.random.default_rng(5)
    ref = drift.profile(frame(rng, 500))
    tests = {name: col["test"] for name, col in ref["columns"].items()}
    assert tests["x1"] == "ks" and tests["city"] == "chisquare" and tests["prediction"] == "z"
    assert "values" in ref["columns"]["x1"] and "quantiles" not in ref["columns"]["x1"]
    json.dumps(ref)  # stored as a JSON artifact
    big = drift.profile(frame(rng, 20_000))
    assert "quantiles" in big["columns"]["x1"] and len(json.dumps(big)) < 300_000  # binned: no training rows


# ---- agreement with Evidently (its own venv: make test builds .venv-evidently) ------------------------------
EVIDENTLY = Path(__file__).resolve().parents[1] / ".venv-evidently" / "bin" / "python"


def evidently_verdicts(folder: Path, reference: dict, cases: dict) -> dict:
    import pandas as pd

    assert EVIDENTLY.exists(), "Evidently's venv is missing: `make .venv-evidently/.installed` (make test builds it)"
    pd.DataFrame(reference).to_parquet(folder / "reference.parquet")
    for name, cols in cases.items():
        pd.DataFrame(cols).to_parquet(folder / f"{name}.parquet")
    (folder / "meta.json").write_text(json.dumps({"numerical": [c for c in reference if c.startswith("x")],
                                                  "categorical": ["city"]}))
    out = subprocess.run([str(EVIDENTLY), str(Path(__file__).parent / "evidently_verdicts.py"), str(folder)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout)


@pytest.mark.parametrize("reference_rows", [20_000, 800])
def test_verdicts_match_evidentlys(tmp_path, reference_rows):
    """The same columns drift, by the same test, as Evidently's DataDriftPreset says, on its four kinds of case."""
    rng = np.random.default_rng(11)
    reference = frame(rng, reference_rows)
    cases = {"unchanged": frame(rng, 3000), "shifted": frame(rng, 3000, shift=0.5),
             "new_category": frame(rng, 3000, new_category=True), "prediction": frame(rng, 3000, flip=0.2)}
    if reference_rows <= drift.SMALL:
        del cases["unchanged"]  # per-column p < 0.05 alarms on 1 in 20 unchanged columns: ours are corrected
    theirs = evidently_verdicts(tmp_path, reference, cases)
    ref = drift.profile(reference)
    names = {"K-S p_value": "ks", "chi-square p_value": "chisquare", "Z-test p_value": "z",
             "Wasserstein distance (normed)": "wasserstein", "Jensen-Shannon distance": "jensenshannon"}
    for case, cols in cases.items():
        ours = {c["column"]: c for c in drift.compare(ref, cols)}
        for column, verdict in theirs[case]["columns"].items():
            assert ours[column]["test"] == names[verdict["test"]], (case, column, verdict)
            assert ours[column]["drift"] == verdict["drift"], (case, column, ours[column], verdict)
            if not drift.TESTS[ours[column]["test"]].pvalue:  # the same statistic, computed from the profile
                assert ours[column]["statistic"] == pytest.approx(verdict["score"], rel=0.05, abs=0.005)


# ---- the magic, and the rules' own unit test ---------------------------------------------------------------
def test_the_magic_shows_the_report_inline(ip, project):
    rng = np.random.default_rng(2)
    ref = drift.profile(frame(rng, 5000), model={"run_id": "a" * 32, "name": "model"})
    fake_package(project, ref, frame(rng, 2000, shift=1.0))
    shown = ip.run_line_magic("mlops", "monitor pkg --window 30m  # the served traffic")
    page = shown._repr_html_()
    assert "DRIFT in 1 of 10 columns: x0" in page and "<svg" in page
    assert "x0" in repr(shown).splitlines()[0]
    as_json = ip.run_line_magic("mlops", "monitor pkg --json")
    assert as_json["drifted"] == ["x0"] and as_json["rows"] == 2000 and as_json["windows"]


RULE_TEST = """rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'serving_drift_score{{job="iris", instance="a:8080", column="petal", kind="feature"}}'
        values: '0.4 0.5 1.6 1.8 2.0 2.0 2.0'
      - series: 'serving_drift_score{{job="iris", instance="a:8080", column="sepal", kind="feature"}}'
        values: '0.3 0.3 0.3 0.3 0.3 0.3 0.3'
      - series: 'serving_drift_rows{{job="iris", instance="a:8080"}}'
        values: '500 500 500 500 500 500 500'
    alert_rule_test:
      - eval_time: 1m
        alertname: ServingFeatureDrift
        exp_alerts: []
      - eval_time: 6m
        alertname: ServingFeatureDrift
        exp_alerts:
          - exp_labels: {{severity: warning, job: iris, instance: "a:8080", column: petal}}
            exp_annotations:
              summary: "feature petal drifted on a:8080"
              description: "drift score 2.00 (1 = its calibrated threshold) against the model's training data; run `mlops monitor` on the package for the report"
"""


def test_the_alert_rules_pass_promtools_unit_test(project):
    out = mlops(project, "monitor", "rules", "--for", "3m", "--out", "rules.yml")
    assert out.returncode == 0, out.stderr
    (project / "rules.test.yml").write_text(RULE_TEST.format(rules="rules.yml"))
    for args in (["check", "rules", "rules.yml"], ["test", "rules", "rules.test.yml"]):
        done = subprocess.run(["promtool", *args], cwd=project, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr


# ---- the route the sidebar's Monitor panel calls -------------------------------------------------------------
@pytest.fixture
def jp_root_dir(tmp_path):
    rng = np.random.default_rng(4)
    ref = drift.profile(frame(rng, 5000), model={"run_id": "b" * 32, "name": "model"})
    fake_package(tmp_path / "served", ref, frame(rng, 2000, new_category=True))
    (tmp_path / "served" / "pkg" / "m_serving" / "reference.json").rename(tmp_path / "ref.json")
    fake_package(tmp_path, ref, frame(rng, 2000, new_category=True))  # beside the notebook: found first
    (tmp_path / "nb.ipynb").write_text("{}")
    return tmp_path


@pytest.fixture
def jp_server_config():
    return {"ServerApp": {"jpserver_extensions": {"mlops_jupyter": True}}}


async def test_the_monitor_route_lists_packages_and_checks_one(jp_fetch, jp_root_dir):
    from harness import call

    code, body = await call(jp_fetch, "monitor", path="nb.ipynb", window="15m")
    assert code == 200 and body["packages"] == ["pkg", "served/pkg"] and body["source"] == "pkg", body
    check = body["check"]
    assert check["drifted"] == ["city"] and check["rows"] == 2000 and body["problem"] is None
    (city,) = [c for c in check["columns"] if c["column"] == "city"]
    assert city["unseen"] == ["tokyo"] and city["bins"]["labels"][0] and len(check["windows"]) == 1
    # a package whose reference cannot be found: the packages still listed, the problem said
    code, body = await call(jp_fetch, "monitor", path="nb.ipynb", source="served/pkg")
    assert code == 200 and body["check"] is None and f"run {'b' * 32} is not in" in body["problem"], body
    code, body = await call(jp_fetch, "monitor", path="nb.ipynb", since="lately")
    assert code == 400 and "is not a span of time" in body["message"]


def test_a_package_that_has_logged_nothing_yet(project):
    rng = np.random.default_rng(6)
    ref = drift.profile(frame(rng, 500), model={"run_id": "f" * 32, "name": "model"})
    fake_package(project, ref, frame(rng, 10))
    (project / "pkg" / "prediction-log" / "predictions-1.parquet").unlink()
    out = mlops(project, "monitor", "pkg", "--report", "r.html")
    assert out.returncode == 0 and out.stdout.startswith("no predictions logged since"), out.stdout + out.stderr
    assert json.loads(mlops(project, "monitor", "pkg", "--json").stdout)["rows"] == 0


def test_the_gauges_read_only_the_newest_rows(tmp_path):
    """Inside a busy server the drift gauges read the newest files up to a row count, not the whole window."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mlops_jupyter.monitor import logs

    for i in range(3):
        pq.write_table(pa.table({"timestamp": pa.array([i] * 10, pa.int64()).cast(pa.timestamp("us", "UTC")),
                                 "status": [200] * 10, "x": [float(i)] * 10}), tmp_path / f"predictions-{i}.parquet")
    newest = logs.read(tmp_path, newest=15, labels=False)
    assert newest.table["x"].to_pylist() == [1.0] * 10 + [2.0] * 10 and newest.labels is None
    assert logs.read(tmp_path).rows == 30
