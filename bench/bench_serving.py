"""The generated serving package against `mlflow models serve`, both started in this run on loopback.

Same model (a 50-tree RandomForest on iris), same worker count (1), 4-row requests from 8 concurrent
keep-alive connections. Goal: requests/s >= 4x `mlflow models serve`, and a lower p99.
`--sweep` also times the generated server at several SERVE_MAX_WAIT_MS values (how the default was chosen).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import stop_group  # noqa: E402

CONNECTIONS, ROWS, WORKERS = 8, 4, 1
WARMUP_S, MEASURE_S, MAX_REQUESTS = 1.5, 8.0, 40_000  # each load phase is bounded in time and count


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_model(settings) -> str:
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    settings.state_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.create_experiment("bench-serving", artifact_location=settings.artifact_location)
    mlflow.set_experiment("bench-serving")
    X, y = load_iris(return_X_y=True, as_frame=True)
    model = RandomForestClassifier(n_estimators=50, random_state=0).fit(X, y)
    with mlflow.start_run() as run:
        mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"],
                                 signature=infer_signature(X, model.predict(X)), input_example=X.head(3),
                                 skops_trusted_types=["sklearn.tree._tree.Tree"])
    return f"runs:/{run.info.run_id}/model"


def start(cmd: list[str], port: int, env: dict, cwd: Path, log: Path) -> subprocess.Popen:
    # its own process group: mlflow models serve forks uvicorn workers, and the whole group must go
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{cmd[:4]} exited early; see {log}:\n{log.read_text()[-2000:]}")
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).status == 200:
                return proc
        except OSError:
            time.sleep(0.2)
    stop_group(proc)
    raise SystemExit(f"{cmd[:4]} did not answer /health in 90 s; see {log}")


def _exchange(sock: socket.socket, request: bytes, buf: bytearray) -> int:
    """One request on a keep-alive connection; returns the status. Raw sockets: the client must cost
    far less CPU than the servers it times (http.client's header parsing alone costs ~0.1 ms)."""
    sock.sendall(request)
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        buf += chunk
    head, _, rest = bytes(buf).partition(b"\r\n\r\n")
    length = int(next(line.split(b":", 1)[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:")))
    while len(rest) < length:
        rest += sock.recv(65536)
    buf[:] = rest[length:]
    return int(head[9:12])


def load(port: int, path: str, body: bytes) -> dict:
    """CONNECTIONS closed-loop keep-alive clients for WARMUP_S + MEASURE_S (at most MAX_REQUESTS)."""
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies, errors, lock = [], [], threading.Lock()
    t0 = time.monotonic()
    measure_from, end = t0 + WARMUP_S, t0 + WARMUP_S + MEASURE_S

    def client():
        mine, buf = [], bytearray()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            while True:
                start = time.monotonic()
                if start >= end or len(latencies) + len(mine) >= MAX_REQUESTS:
                    break
                status = _exchange(sock, request, buf)
                done = time.monotonic()
                if status != 200:
                    errors.append(status)
                elif start >= measure_from:
                    mine.append(done - start)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(CONNECTIONS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = min(time.monotonic(), end) - measure_from
    latencies.sort()
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {"rps": len(latencies) / elapsed, "p50_ms": q[49] * 1e3, "p99_ms": q[98] * 1e3,
            "requests": len(latencies), "errors": len(errors)}


def fmt(name: str, r: dict) -> str:
    return (f"{name:34s} {r['rps']:8.1f} req/s   p50 {r['p50_ms']:7.1f} ms   p99 {r['p99_ms']:7.1f} ms"
            f"   ({r['requests']} requests, {r['errors']} errors)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true", help="also time SERVE_MAX_WAIT_MS = 0, 1, 2, 5, 10")
    args = ap.parse_args()
    from mlops_jupyter import config
    from mlops_jupyter.serving import generate_package

    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "pyproject.toml").write_text('[project]\nname = "bench"\nversion = "0"\n')
        settings = config.resolve(tmp, env={})
        uri = log_model(settings)
        pkg = generate_package(uri, tmp / "pkg", name="iris", settings=settings)
        app = "iris_serving.app:app"
        rows = [{"sepal length (cm)": 5.1 + i / 10, "sepal width (cm)": 3.5, "petal length (cm)": 1.4 + i,
                 "petal width (cm)": 0.2 + i / 2} for i in range(ROWS)]
        split = {"dataframe_split": {"columns": list(rows[0]), "data": [list(r.values()) for r in rows]}}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLOPS_"))}
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"  # mlflow models serve execs `uvicorn`
        mlflow_env = {**env, "MLFLOW_TRACKING_URI": settings.tracking_uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                      "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}  # MLflow 3.17 refuses to load it otherwise

        results = {}
        port = free_port()
        proc = start([str(bin_dir / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                      "-p", str(port), "-h", "127.0.0.1", "--workers", str(WORKERS)], port, mlflow_env, tmp,
                     tmp / "mlflow-serve.log")
        try:
            results["mlflow models serve /invocations"] = load(port, "/invocations", json.dumps(split).encode())
        finally:
            stop_group(proc)

        waits = ["0", "1", "2", "5", "10"] if args.sweep else [None]
        for wait in waits:
            port = free_port()
            ours_env = dict(env, **({"SERVE_MAX_WAIT_MS": wait} if wait else {}))
            proc = start([sys.executable, "-m", "uvicorn", app, "--app-dir", str(pkg), "--port", str(port),
                          "--host", "127.0.0.1", "--workers", str(WORKERS), "--log-level", "warning"],
                         port, ours_env, tmp, tmp / "ours.log")
            try:
                tag = f" wait={wait}ms" if wait else ""
                results[f"generated /predict{tag}"] = load(port, "/predict", json.dumps({"rows": rows}).encode())
                if not args.sweep:
                    results[f"generated /invocations{tag}"] = load(port, "/invocations", json.dumps(split).encode())
            finally:
                stop_group(proc)

    print(f"50-tree RandomForest on iris · {ROWS}-row requests · {CONNECTIONS} connections · {WORKERS} worker · "
          f"{MEASURE_S:.0f} s each after {WARMUP_S} s warm-up")
    for name, r in results.items():
        print(fmt(name, r))
    base = results["mlflow models serve /invocations"]
    ok = True
    for name, r in results.items():
        if name.startswith("generated"):
            ratio = r["rps"] / base["rps"]
            p99_ok = r["p99_ms"] < base["p99_ms"]
            ok &= ratio >= 4 and p99_ok
            print(f"{name:34s} {ratio:5.1f}x the requests/s of mlflow models serve (goal >= 4x) · "
                  f"p99 {r['p99_ms'] / base['p99_ms']:.2f}x ({'lower' if p99_ok else 'NOT lower'})")
    print("goal met" if ok else "goal NOT met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
