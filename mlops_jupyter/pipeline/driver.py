"""A kept Ray driver for ``mlops pipeline run --address``: with ``MLOPS_RAY_DRIVER_S=N``, the CLI hands its run
to a driver process that stays connected to the cluster for N s after its last run.

Each CLI run is otherwise a new Ray job: it connects, its job gets new worker processes on every node, and
each worker starts a fork server that imports ipykernel and the run's imports before the first step's kernel
exists (about 1 s before the first step runs, on a small machine). A kept driver's job keeps its workers, so
a later run's first step takes the kernel a worker parked, forked from the fork server it kept (``cluster``:
used again while what it loaded is unchanged on disk). It is one per user, Python, package version, cluster
address and MLOPS_* / MLFLOW_* / RAY_* / PATH environment: a run with other settings gets a driver of its
own. It serves several runs at once, and leaves once idle for N s, or as soon as its cluster is gone.

The run itself is the CLI's: same steps, state, records and output (streamed back line by line), Ctrl-C
cancels it (as does the CLI going away), and its errors are the CLI's errors. Linux only (an abstract
socket, its peer checked to be the same user); elsewhere, or with the variable unset, the CLI runs as ever.

Protocol, one JSON object per line on the socket: the driver says ``{"hello": pid}``, the client sends its
run's arguments, then ``{"stop": true}`` for Ctrl-C; the driver sends ``{"echo": line}`` per output line and
ends with ``{"result": ...}``, ``{"error": {"type", "message", "fields"}}`` or ``{"interrupted": true}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

from .. import errors

ENV = "MLOPS_RAY_DRIVER_S"
START_S = 60.0  # how long a client waits for a driver it started to listen
POLL_S = 2.0  # how often a connected driver looks whether its cluster still answers
ENV_PREFIXES = ("MLOPS_", "MLFLOW_", "RAY_", "PATH", "PYTHON", "VIRTUAL_ENV")


def keep_s() -> float:
    """How long a kept driver stays after its last run (``MLOPS_RAY_DRIVER_S``; 0, the default: none)."""
    from .cluster import _seconds

    return _seconds(ENV, 0.0, "how long a kept Ray driver stays connected after its last run (0: no kept driver)")


def _name(address: str) -> str:
    """The driver's abstract socket name: who may share it (see the module's docstring)."""
    import mlops_jupyter

    package = Path(mlops_jupyter.__file__).parent
    stamp = max(p.stat().st_mtime_ns for p in package.rglob("*.py"))  # an edited or upgraded package: a new one
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(ENV_PREFIXES))
    who = json.dumps([os.getuid(), sys.executable, str(package), stamp, address, env])
    return f"mlops-ray-driver-{hashlib.sha256(who.encode()).hexdigest()[:24]}"


def _send(conn: socket.socket, obj: dict) -> None:
    conn.sendall((json.dumps(obj, default=str) + "\n").encode())


# ---- the client: the CLI ---------------------------------------------------------------------------
def through_driver(folder, *, params, from_step, force, wait_records, address, storage, max_retries, echo):
    """Run the pipeline in ``folder`` through the kept driver for its cluster, starting one when none listens;
    None when no driver is kept (MLOPS_RAY_DRIVER_S unset or 0, no cluster address, not Linux)."""
    keep = keep_s()
    if not keep or not sys.platform.startswith("linux"):
        return None
    from .cluster import resolve_address
    from .emit import load_pipeline

    pipe = load_pipeline(folder)
    address = resolve_address(address, (pipe.folder / pipe.root).resolve())
    if not address:
        return None
    if storage and storage.strip() and "://" not in storage:
        storage = str(Path(storage).resolve())  # the driver's working directory is not this one
    request = {"folder": str(pipe.folder.resolve()), "params": list(params or []), "from_step": from_step,
               "force": force, "wait_records": wait_records, "address": address, "storage": storage,
               "max_retries": max_retries}
    name = _name(address)
    for _ in range(3):  # a driver that was leaving as we came: start another
        conn = _dial(name) or _start(name, keep)
        reader = conn.makefile("rb")
        if reader.readline():  # its hello
            return _follow(conn, reader, request, echo)
        conn.close()
    raise errors.PipelineError("the kept Ray driver hung up before it ran anything, three times; see its log "
                               f"{_log(name)}, or unset {ENV} to run without one.", what="driver")


def _dial(name: str, wait_s: float = 0.0) -> socket.socket | None:
    deadline = time.monotonic() + wait_s
    while True:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(f"\0{name}")
            return conn
        except OSError:
            conn.close()
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.05)


def _log(name: str) -> Path:
    return Path(tempfile.gettempdir()) / f"{name}.log"


def _start(name: str, keep: float) -> socket.socket:
    """Start a driver (it leaves this process's session: Ctrl-C here is the client's to pass on) and connect."""
    with open(_log(name), "ab") as log:  # (a driver started beside this one may write there: it empties it)
        proc = subprocess.Popen([sys.executable, "-m", "mlops_jupyter.pipeline.driver", name, str(keep)],
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, start_new_session=True)
    with proc.stdout:
        said = proc.stdout.readline().decode().strip()  # "ready", or "taken": another client's driver listens
    conn = _dial(name, wait_s=START_S if said else 0)
    if conn is None:
        tail = _log(name).read_text(errors="replace").strip().splitlines()[-3:]
        raise errors.PipelineError(f"the kept Ray driver did not start ({' / '.join(tail) or 'it said nothing'}; "
                                   f"its log: {_log(name)}); unset {ENV} to run without one.", what="driver")
    return conn


def _follow(conn: socket.socket, reader, request: dict, echo):
    """Send the run, echo its lines, return its RunResult or raise its error; Ctrl-C asks the driver to
    stop the run (and a second one leaves without waiting)."""
    from .execute import RunResult, StepResult

    _send(conn, request)
    stopping = False
    try:
        while True:
            try:
                msg = _next(reader, request)
                if "echo" in msg:
                    echo(msg["echo"])
                    continue
            except KeyboardInterrupt:
                if stopping:
                    raise
                stopping = True
                try:
                    _send(conn, {"stop": True})
                except OSError:
                    raise KeyboardInterrupt from None
                continue
            if "result" in msg:
                res = msg["result"]
                return RunResult(**{**res, "steps": [StepResult(**s) for s in res["steps"]]})
            if "error" in msg:
                raise _error(msg["error"])
            raise KeyboardInterrupt  # {"interrupted": true}: the run stopped as asked
    finally:
        _hang_up(conn)


def _next(reader, request: dict) -> dict:
    line = reader.readline()
    if not line:
        raise errors.PipelineError(f"the kept Ray driver ended in the middle of the run (see its log "
                                   f"{_log(_name(request['address']))}); finished steps are kept: run it again to go "
                                   "on from there.", what="driver")
    return json.loads(line)


def _hang_up(conn: socket.socket) -> None:
    """Close ``conn`` now, though a file made from it is open (its reader then sees the end)."""
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    conn.close()


def _error(info: dict) -> errors.MlopsError:
    """The driver's error as the same type, message and fields (what the CLI words its hint from)."""
    cls = getattr(errors, info.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, errors.MlopsError)):
        cls = errors.PipelineError
    exc = cls.__new__(cls)
    Exception.__init__(exc, info.get("message", ""))
    exc.fields = info.get("fields") or {}
    for key, value in exc.fields.items():
        setattr(exc, key, value)
    return exc


# ---- the driver ------------------------------------------------------------------------------------
class Driver:
    def __init__(self, name: str, sock: socket.socket, keep: float):
        self.name, self.sock, self.keep = name, sock, keep
        self.lock = threading.Lock()
        self.active, self.last = 0, time.monotonic()

    def serve(self) -> None:
        self.sock.settimeout(POLL_S)
        lost, looked = 0, time.monotonic()
        while True:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                conn = None
            if conn is not None:
                conn.settimeout(None)
                if not self._same_user(conn):
                    conn.close()
                    continue
                with self.lock:
                    self.active += 1
                threading.Thread(target=self.session, args=(conn,), daemon=True, name="mlops-driver-run").start()
            if time.monotonic() - looked >= POLL_S:
                looked = time.monotonic()
                lost = lost + 1 if self._cluster_gone() else 0
            with self.lock:
                idle = not self.active and time.monotonic() - self.last >= self.keep
            if idle or lost >= 2:
                break
        self.sock.close()  # no new run comes in; runs in flight (their cluster gone) end as they fail
        with self.lock:
            busy = self.active
        if not busy:
            self._disconnect()
            _log(self.name).unlink(missing_ok=True)  # nothing went wrong: nothing to read there
        os._exit(0)

    @staticmethod
    def _same_user(conn: socket.socket) -> bool:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        return struct.unpack("3i", creds)[1] == os.getuid()

    @staticmethod
    def _cluster_gone() -> bool:
        from . import cluster

        if not cluster._connected or "ray" not in sys.modules:
            return False
        import ray

        if not ray.is_initialized():
            return False
        address = cluster._connected[0]
        if address == "auto":
            try:
                address = ray.get_runtime_context().gcs_address
            except Exception:  # noqa: BLE001 - no longer connected
                return True
        return cluster._probe(address, timeout=POLL_S) is not None

    @staticmethod
    def _disconnect() -> None:
        if "ray" in sys.modules:
            import ray

            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001 - leaving anyway
                pass

    def session(self, conn: socket.socket) -> None:
        from .execute import run_pipeline

        cancel, lock = threading.Event(), threading.Lock()

        def send(obj: dict) -> None:
            with lock:
                try:
                    _send(conn, obj)
                except OSError:
                    cancel.set()  # the client has gone: as Ctrl-C

        def listen(reader) -> None:
            try:
                for line in reader:
                    if json.loads(line).get("stop"):
                        break
            except (OSError, ValueError):
                pass
            cancel.set()

        try:
            send({"hello": os.getpid()})
            reader = conn.makefile("rb")
            line = reader.readline()
            if not line:
                return
            request = json.loads(line)
            threading.Thread(target=listen, args=(reader,), daemon=True, name="mlops-driver-listen").start()
            try:
                result = run_pipeline(request.pop("folder"), **request, cancel=cancel,
                                      echo=lambda text: send({"echo": text}))
                send({"result": asdict(result)})
            except KeyboardInterrupt:
                send({"interrupted": True})
            except errors.MlopsError as exc:
                send({"error": {"type": type(exc).__name__, "message": str(exc), "fields": exc.fields}})
            except Exception as exc:  # noqa: BLE001 - the client says what it was; the driver serves on
                send({"error": {"type": "PipelineError", "message": f"the kept Ray driver failed: "
                                f"{type(exc).__name__}: {exc}", "fields": {"what": "driver"}}})
        finally:
            _hang_up(conn)
            with self.lock:
                self.active -= 1
                self.last = time.monotonic()


def main(argv: list) -> None:
    name, keep = argv[0], float(argv[1])
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(f"\0{name}")
        sock.listen(64)
    except OSError:
        print("taken", flush=True)  # another client's driver won: its client and this one both use it
        return
    try:
        os.ftruncate(2, 0)  # its log (opened to append) holds this driver's lines only
    except OSError:
        pass  # not a file
    from . import cluster

    cluster.KEEP_CONNECTED = True
    # the workers keep their fork servers and parked kernels as long as this driver stays
    os.environ.setdefault(cluster.IDLE_ENV, f"{max(cluster.IDLE_S, keep):g}")
    print("ready", flush=True)
    os.chdir("/")  # its runs use absolute paths: it holds no project's folder
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # the client has stopped reading: any later print goes nowhere
    os.close(null)
    Driver(name, sock, keep).serve()


if __name__ == "__main__":
    main(sys.argv[1:])
