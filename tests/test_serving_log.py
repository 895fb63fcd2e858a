"""The generated package's prediction log: every answer with its inputs in Parquet, off the request path;
labels through /feedback; sampling, ECS lines, a disk cap and a bounded queue, each drop counted."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pandas as pd
import pytest
from harness import git, stop_group, wait_for
from test_serving import IRIS_COLUMNS, PY, SAMPLES, free_port, metric, package, records, start_server, store  # noqa: F401


def serve(package: Path, tmp_path: Path, **env) -> tuple[str, object, Path]:
    port = free_port()
    log = tmp_path / "server.log"
    settings = {"SERVE_LOG_DIR": str(tmp_path / "predictions"), "SERVE_LOG_FLUSH_S": "0.2", "SERVE_LOG_GROUP_S": "0.1",
                **env}
    proc = start_server([PY, "-m", "mlops_jupyter.cli", "serve", "run", str(package), "--port", str(port)], port, log,
                        env=settings)
    return f"http://127.0.0.1:{port}", proc, log


def logged(folder: Path, kind: str = "predictions") -> pd.DataFrame:
    files = sorted(folder.glob(f"{kind}-*.parquet"))
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True) if files else pd.DataFrame()


def test_every_answer_is_logged_with_its_inputs_and_labels_join_on_request_id(package, tmp_path):
    url, proc, _ = serve(package, tmp_path)
    folder = tmp_path / "predictions"
    try:
        one = httpx.post(f"{url}/predict", json={"rows": records(SAMPLES[:3])})
        two = httpx.post(f"{url}/invocations", json={"dataframe_split": {"columns": IRIS_COLUMNS,
                                                                          "data": SAMPLES[3:]}},
                         headers={"X-Request-ID": "gateway-trace-7"})
        bad = httpx.post(f"{url}/predict", json={"rows": [{"sepal length (cm)": "wide"}]})
        assert (one.status_code, two.status_code, bad.status_code) == (200, 200, 422)
        assert two.headers["x-request-id"] == "gateway-trace-7"  # a caller's trace id is kept
        rid = one.headers["x-request-id"]
        wait_for(lambda: len(logged(folder)) == 5, timeout=30, what="5 logged rows")
        rows = logged(folder)
        mine = rows[rows.request_id == rid].sort_values("row")
        assert mine["row"].tolist() == [0, 1, 2] and set(mine.endpoint) == {"/predict"} and set(mine.status) == {200}
        assert mine[IRIS_COLUMNS].values.tolist() == SAMPLES[:3]
        assert mine.prediction.tolist() == one.json()["predictions"]
        assert (mine.latency_ms > 0).all() and set(mine.model_name) == {"iris"}
        assert rows[rows.request_id == "gateway-trace-7"].prediction.tolist() == two.json()["predictions"]
        refused = rows[rows.status == 422]
        assert len(refused) == 1 and refused[IRIS_COLUMNS].isna().all(axis=None) and refused.prediction.isna().all()
        assert str(rows.timestamp.dtype).startswith("datetime64") and str(rows.timestamp.dt.tz) == "UTC"
        assert not list(folder.glob(".*"))  # no half-written file left beside them
        assert metric(httpx.get(f"{url}/metrics").text, "serving_log_rows_total") == 5

        # labels arrive later, one or many, and join the predictions on request id and row
        assert httpx.post(f"{url}/feedback", json={"request_id": rid, "label": 0}).status_code == 202
        many = {"labels": [{"request_id": rid, "row": 1, "label": 1}, {"request_id": rid, "row": 2, "label": 2}]}
        assert httpx.post(f"{url}/feedback", json=many).json() == {"accepted": 2}
        for body in ({"request_id": rid}, {"label": 1}, {"labels": []}, {"request_id": rid, "label": 1, "row": -1},
                     {"request_id": "", "label": 1}):
            answer = httpx.post(f"{url}/feedback", json=body)
            assert answer.status_code == 422 and answer.json()["errors"], (body, answer.text)
        wait_for(lambda: len(logged(folder, "labels")) == 3, timeout=30, what="3 labels")
        labels = logged(folder, "labels")
        joined = mine.merge(labels.assign(label=labels.label.map(json.loads)), on=["request_id", "row"])
        assert joined[["row", "label"]].values.tolist() == [[0, 0], [1, 1], [2, 2]]
    finally:
        stop_group(proc)


def test_sampled_requests_also_go_to_stdout_as_ecs_json_lines(package, tmp_path):
    url, proc, log = serve(package, tmp_path, SERVE_LOG_SAMPLE="0.5", SERVE_LOG_STDOUT="ecs")
    try:
        ids = [httpx.post(f"{url}/predict", json={"rows": records(SAMPLES[:1])}).headers["x-request-id"]
               for _ in range(100)]
        stop_group(proc)  # a clean stop writes what is queued
        rows = logged(tmp_path / "predictions")
        assert 0 < len(rows) < 100 and set(rows.request_id) <= set(ids)
        lines = [json.loads(ln) for ln in log.read_text().splitlines() if ln.startswith('{"@timestamp"')]
        assert sorted(e["event"]["id"] for e in lines) == sorted(rows.request_id)
        event = lines[0]
        assert event["url"]["path"] == "/predict" and event["http"]["response"]["status_code"] == 200
        assert event["service"]["name"] == "iris" and set(event["mlops"]["features"]) == set(IRIS_COLUMNS)
        assert event["@timestamp"].endswith("Z") and event["event"]["duration"] > 0
    finally:
        stop_group(proc)


def test_a_full_queue_drops_rows_and_counts_them_without_slowing_a_request(package, tmp_path):
    url, proc, _ = serve(package, tmp_path, SERVE_LOG_QUEUE_ROWS="2")
    try:
        answers = [httpx.post(f"{url}/predict", json={"rows": records(SAMPLES[:3])}) for _ in range(10)]
        assert {a.status_code for a in answers} == {200}  # 3 rows never fit a queue of 2: every one dropped
        text = httpx.get(f"{url}/metrics").text
        assert metric(text, "serving_log_dropped_rows_total", reason="queue_full") == 30
        assert metric(text, "serving_log_rows_total") == 0
    finally:
        stop_group(proc)


def test_past_the_disk_cap_the_oldest_files_go_and_are_counted(package, tmp_path):
    url, proc, _ = serve(package, tmp_path, SERVE_LOG_MAX_MB="0.02", SERVE_LOG_FLUSH_S="0.05", SERVE_LOG_GROUP_S="0.02")
    folder = tmp_path / "predictions"
    try:
        for i in range(1, 13):  # a file each, several KB
            httpx.post(f"{url}/predict", json={"rows": records(SAMPLES * 25)})
            wait_for(lambda: metric(httpx.get(f"{url}/metrics").text, "serving_log_rows_total") == 100 * i,
                     timeout=30, what="the file closed")
        text = httpx.get(f"{url}/metrics").text
        written = metric(text, "serving_log_rows_total")
        dropped = metric(text, "serving_log_dropped_rows_total", reason="disk_cap")
        files = metric(text, "serving_log_dropped_files_total")
        assert written == 1200 and dropped > 0 and files > 0
        assert sum(p.stat().st_size for p in folder.glob("*.parquet")) <= 0.02 * 2**20
        assert len(logged(folder)) == written - dropped  # what is left is exactly what was not dropped
    finally:
        stop_group(proc)


@pytest.mark.parametrize("env, why", [({"SERVE_LOG_DIR": "/proc/no-such-folder"}, "is not writable"),
                                      ({"SERVE_LOG_SAMPLE": "0"}, None)])
def test_with_the_log_off_the_server_still_serves_and_feedback_says_why(package, tmp_path, env, why):
    url, proc, log = serve(package, tmp_path, **env)
    try:
        assert httpx.post(f"{url}/predict", json={"rows": records(SAMPLES)}).status_code == 200
        answer = httpx.post(f"{url}/feedback", json={"request_id": "x", "label": 1})
        assert answer.status_code == 503 and "prediction log is off" in answer.json()["message"]
        if why:
            assert why in log.read_text() and "SERVE_LOG_DIR" in log.read_text()
        assert not list((tmp_path / "predictions").glob("*.parquet"))
    finally:
        stop_group(proc)


def test_by_default_the_log_goes_beside_the_package_and_git_ignores_it(package, tmp_path):
    port = free_port()
    proc = start_server([PY, "-m", "mlops_jupyter.cli", "serve", "run", str(package), "--port", str(port)], port,
                        tmp_path / "server.log", env={"SERVE_LOG_FLUSH_S": "0.1", "SERVE_LOG_GROUP_S": "0.05"})
    try:
        httpx.post(f"http://127.0.0.1:{port}/predict", json={"rows": records(SAMPLES)})
        wait_for(lambda: len(logged(package / "prediction-log")) >= 4, timeout=30, what="rows beside the package")
    finally:
        stop_group(proc)
    one = next((package / "prediction-log").glob("*.parquet"))
    assert git(package, "check-ignore", str(one)).strip()  # the project's git status stays clean
    assert "prediction-log/" in (package / ".dockerignore").read_text()  # and no image carries it


def test_a_server_killed_mid_file_leaves_no_visible_half_file(package, tmp_path):
    import os
    import signal

    folder = tmp_path / "predictions"
    url, proc, _ = serve(package, tmp_path, SERVE_LOG_FLUSH_S="600")  # row groups go out, the file stays open
    try:
        httpx.post(f"{url}/predict", json={"rows": records(SAMPLES)})
        wait_for(lambda: list(folder.glob(".predictions-*.partial")), timeout=30, what="an open file")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not list(folder.glob("*.parquet"))  # a reader never sees it
    url, proc, _ = serve(package, tmp_path)
    try:
        wait_for(lambda: not list(folder.glob(".*.partial")), timeout=30,
                 what="the next server to clear what the killed one left")
    finally:
        stop_group(proc)
