"""The generated serving package against `mlflow models serve`, both started in this run on loopback.

Same model (a 50-tree RandomForest on iris), same worker count (1), 4-row requests from 8 concurrent
keep-alive connections. Goals: requests/s >= 4x `mlflow models serve` and a lower p99 (the moonshot:
>= 8x with p99 < 40 ms); the Open Inference Protocol's /v2/.../infer >= 0.9x the requests/s of /predict;
the prediction log (on by default) against the same server with it off: >= 0.97x the requests/s, p99 <= 1.1x
(timed turn by turn, see `paired`);
the package's OCI image (built here with buildah on the tests' cached Debian base, run with `buildah run`)
within 10% of the same package run natively. `--no-image` skips the image (a build takes minutes).
`--sweep` also times the generated server at several SERVE_MAX_WAIT_MS values (how the default was chosen).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from harness import stop_group  # noqa: E402
from image_base import buildah, ensure_base, storage_env  # noqa: E402

CONNECTIONS, ROWS, WORKERS = 8, 4, 1
WARMUP_S, MEASURE_S, ROUNDS, MAX_REQUESTS = 1.5, 8.0, 4, 40_000  # each load phase is bounded in time and count
PAIR_ROUNDS, PAIR_S = 20, 1.5  # the prediction log's cost: on against off, turn by turn
IMAGE_TAG = f"localhost/iris-serving:bench-{os.getpid()}"


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


def load(port: int, path: str, body: bytes, seconds: float, warmup: float) -> dict:
    """CONNECTIONS closed-loop keep-alive clients for ``warmup`` + ``seconds`` (at most MAX_REQUESTS);
    the latencies of the requests sent after the warm-up."""
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    latencies, errors, lock = [], [], threading.Lock()
    t0 = time.monotonic()
    measure_from, end = t0 + warmup, t0 + warmup + seconds

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
    return {"latencies": latencies, "seconds": max(0.0, min(time.monotonic(), end) - measure_from),
            "errors": len(errors)}


def interleaved(targets: dict[str, tuple[int, str, bytes]]) -> dict[str, dict]:
    """Each target warmed up, then timed for MEASURE_S in ROUNDS turns taken in order: whatever else the
    machine does meanwhile falls on every target alike, so their ratios hold even when it is busy."""
    for port, path, body in targets.values():
        load(port, path, body, 0, WARMUP_S)
    runs = {name: [] for name in targets}
    for _ in range(ROUNDS):
        for name, (port, path, body) in targets.items():
            runs[name].append(load(port, path, body, MEASURE_S / ROUNDS, 0.2))
    out = {}
    for name, parts in runs.items():
        latencies = sorted(x for part in parts for x in part["latencies"])
        q = statistics.quantiles(latencies, n=100, method="inclusive")
        out[name] = {"rps": len(latencies) / sum(part["seconds"] for part in parts), "p50_ms": q[49] * 1e3,
                     "p99_ms": q[98] * 1e3, "requests": len(latencies), "errors": sum(p["errors"] for p in parts)}
    return out


def paired(on: tuple[int, str, bytes], off: tuple[int, str, bytes], rounds: int = PAIR_ROUNDS) -> dict:
    """The same load on two servers that differ in one setting, in adjacent turns whose order alternates
    (on-off, off-on, ...): a few percent, the effect sought, is less than this machine's drift over the
    interleaved run, so each turn is compared with its neighbour and the median of those ratios counts.
    p99s come from each side's pooled latencies."""
    ratios, lat = [], {"on": [], "off": []}
    for i in range(rounds):
        order = [("on", on), ("off", off)] if i % 2 == 0 else [("off", off), ("on", on)]
        got = {name: load(*target, PAIR_S, 0.2) for name, target in order}
        ratios.append((len(got["on"]["latencies"]) / got["on"]["seconds"])
                      / (len(got["off"]["latencies"]) / got["off"]["seconds"]))
        for name in lat:
            lat[name] += got[name]["latencies"]
    p99 = {name: statistics.quantiles(v, n=100, method="inclusive")[98] for name, v in lat.items()}
    return {"rps": statistics.median(ratios), "p99": p99["on"] / p99["off"], "rounds": rounds,
            "spread": (min(ratios), max(ratios))}


def fmt(name: str, r: dict) -> str:
    return (f"{name:34s} {r['rps']:8.1f} req/s   p50 {r['p50_ms']:7.1f} ms   p99 {r['p99_ms']:7.1f} ms"
            f"   ({r['requests']} requests, {r['errors']} errors)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sweep", action="store_true", help="also time SERVE_MAX_WAIT_MS = 0, 1, 2, 5, 10")
    ap.add_argument("--no-image", action="store_true", help="skip building and timing the OCI image")
    args = ap.parse_args()
    from mlops_jupyter import config
    from mlops_jupyter.serving import generate_package

    bin_dir = Path(sys.executable).parent
    procs, image = [], None
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp_s:
        tmp = Path(tmp_s)
        (tmp / "pyproject.toml").write_text('[project]\nname = "bench"\nversion = "0"\n')
        settings = config.resolve(tmp, env={})
        uri = log_model(settings)
        pkg = generate_package(uri, tmp / "pkg", name="iris", settings=settings)
        rows = [{"sepal length (cm)": 5.1 + i / 10, "sepal width (cm)": 3.5, "petal length (cm)": 1.4 + i,
                 "petal width (cm)": 0.2 + i / 2} for i in range(ROWS)]
        bodies = {"/predict": {"rows": rows},
                  "/invocations": {"dataframe_split": {"columns": list(rows[0]),
                                                       "data": [list(r.values()) for r in rows]}},
                  "/v2/models/iris/infer": {"inputs": [{"name": c, "datatype": "FP64", "shape": [ROWS],
                                                        "data": [r[c] for r in rows]} for c in rows[0]]}}
        bodies = {path: json.dumps(body).encode() for path, body in bodies.items()}
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "MLOPS_"))}
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"  # mlflow models serve execs `uvicorn`
        mlflow_env = {**env, "MLFLOW_TRACKING_URI": settings.tracking_uri, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
                      "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}  # MLflow 3.17 refuses to load it otherwise

        image_note = None
        if args.sweep or args.no_image:
            image_note = "image not timed (--no-image or --sweep)"
        elif not shutil.which("buildah"):
            image_note = "image not timed: no buildah on this machine (make test installs it)"
        else:  # built first: the build's minutes of CPU must not fall on the timings
            image, image_note = build(pkg)
        try:
            targets = {}
            port = free_port()
            procs.append(start([str(bin_dir / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local",
                                "-p", str(port), "-h", "127.0.0.1", "--workers", str(WORKERS)], port, mlflow_env, tmp,
                               tmp / "mlflow-serve.log"))
            targets["mlflow models serve /invocations"] = (port, "/invocations", bodies["/invocations"])
            for wait in ["0", "1", "2", "5", "10"] if args.sweep else [None]:
                port = free_port()
                # the package's own launcher, as its image starts it
                procs.append(start([sys.executable, "-m", "iris_serving", "--port", str(port), "--workers",
                                    str(WORKERS), "--log-level", "warning"], port,
                                   {**env, "PYTHONPATH": str(pkg), **({"SERVE_MAX_WAIT_MS": wait} if wait else {})},
                                   tmp, tmp / f"ours-{wait}.log"))
                if wait:
                    targets[f"generated /predict wait={wait}ms"] = (port, "/predict", bodies["/predict"])
                else:
                    targets.update({f"generated {path}": (port, path, body) for path, body in bodies.items()})
            if not args.sweep:  # the anchor of the prediction log's cost: the same server, logging nothing
                port = free_port()
                procs.append(start([sys.executable, "-m", "iris_serving", "--port", str(port), "--workers",
                                    str(WORKERS), "--log-level", "warning"], port,
                                   {**env, "PYTHONPATH": str(pkg), "SERVE_LOG_SAMPLE": "0"}, tmp, tmp / "nolog.log"))
                targets["unlogged /predict (SERVE_LOG_SAMPLE=0)"] = (port, "/predict", bodies["/predict"])
            if image:
                port = free_port()
                procs.append(start(["buildah", "run", "--isolation", "chroot", "--network", "host", image, "--",
                                    "python", "-m", "iris_serving", "--host", "127.0.0.1", "--port", str(port),
                                    "--log-level", "warning"], port, {**os.environ, **storage_env()}, tmp,
                                   tmp / "image.log"))
                targets["image /predict (buildah run)"] = (port, "/predict", bodies["/predict"])
            results = interleaved(targets)
            log_cost = None if args.sweep else paired(targets["generated /predict"],
                                                      targets["unlogged /predict (SERVE_LOG_SAMPLE=0)"])
            if image:  # the same package on two interpreters: say which, a ratio far from 1 is theirs
                inside = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/version"))["python"]
                built = "PGO/LTO" if "--enable-optimizations" in (sysconfig.get_config_var("CONFIG_ARGS") or "") \
                    else "no --enable-optimizations"
                interpreters = (f"native: Python {platform.python_version()} at {sys.prefix} ({built}); "
                                f"image: Debian's Python {inside}")
        finally:
            for proc in procs:
                stop_group(proc)
            if image:
                buildah("rm", image, check=False)
                buildah("rmi", IMAGE_TAG, check=False)

    print(f"50-tree RandomForest on iris · {ROWS}-row requests · {CONNECTIONS} connections · {WORKERS} worker · "
          f"{MEASURE_S:.0f} s each in {ROUNDS} turns after {WARMUP_S} s warm-up")
    for name, r in results.items():
        print(fmt(name, r))
    base = results["mlflow models serve /invocations"]
    ok = True
    for name, r in results.items():
        if name.startswith("generated"):
            ratio = r["rps"] / base["rps"]
            p99_ok = r["p99_ms"] < base["p99_ms"]
            ok &= ratio >= 4 and p99_ok
            moon = "moonshot met" if ratio >= 8 and r["p99_ms"] < 40 else "moonshot (>= 8x, p99 < 40 ms) not met"
            print(f"{name:34s} {ratio:5.1f}x the requests/s of mlflow models serve (goal >= 4x) · "
                  f"p99 {r['p99_ms'] / base['p99_ms']:.2f}x ({'lower' if p99_ok else 'NOT lower'}) · {moon}")
    predict = results.get("generated /predict")
    if log_cost:
        ok &= log_cost["rps"] >= 0.97 and log_cost["p99"] <= 1.1
        low, high = log_cost["spread"]
        print(f"{'prediction log on vs off':34s} {log_cost['rps']:5.2f}x the requests/s (goal >= 0.97x) · p99 "
              f"{log_cost['p99']:.2f}x (goal <= 1.1x) · median of {log_cost['rounds']} adjacent turns, "
              f"{low:.2f}x-{high:.2f}x")
    if "generated /v2/models/iris/infer" in results:
        ratio = results["generated /v2/models/iris/infer"]["rps"] / predict["rps"]
        ok &= ratio >= 0.9
        print(f"{'/v2/.../infer vs /predict':34s} {ratio:5.2f}x the requests/s (goal >= 0.9x)")
    if "image /predict (buildah run)" in results:
        ratio = results["image /predict (buildah run)"]["rps"] / predict["rps"]
        ok &= ratio >= 0.9  # the container costs nothing measurable; a faster interpreter in it may win
        print(f"{'image vs native /predict':34s} {ratio:5.2f}x the requests/s (goal: no more than 10% slower) · "
              f"{image_note} · {interpreters}")
    else:
        print(image_note)
    print("goals met" if ok else "goals NOT met")
    return 0


def build(pkg: Path) -> tuple[str, str]:
    """The package's image, built with buildah on the tests' cached Debian base, as a container ready to
    `buildah run` (host network: loopback, like the native server); and a line about how it went."""
    from mlops_jupyter.serving import build_image

    base, how = ensure_base()
    os.environ.update(storage_env())
    image = build_image(pkg, tag=IMAGE_TAG, base=base, engine="buildah", test=False)
    container = buildah("from", IMAGE_TAG).stdout.strip()
    return container, f"base {how}, image built in {image.build_seconds:.0f} s, {image.size_bytes / 1e6:.0f} MB"


if __name__ == "__main__":
    sys.exit(main())
