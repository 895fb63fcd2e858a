"""Real engines for tests: temp projects with git, real kernels (jupyter_client), the real store."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import nbformat

CLEAN_VARS = ("MLFLOW_TRACKING_URI", "MLOPS_TRACKING_URI", "MLOPS_EXPERIMENT", "MLOPS_ARTIFACT_LOCATION",
              "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "JPY_SESSION_NAME", "MLOPS_NOTEBOOK")


def stop_group(proc: subprocess.Popen) -> None:
    """Stop a server started in its own process group: politely, then for sure."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True, text=True,
                          env=env).stdout


def make_git_project(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pyproject.toml").write_text('[project]\nname = "demo"\nversion = "0"\n')
    git(root, "init", "-q")
    git(root, "add", "pyproject.toml")
    git(root, "commit", "-q", "-m", "init")
    return root


def store_uri(root: Path) -> str:
    return "sqlite:///" + (root / ".mlops" / "mlflow.db").as_posix()


def client(root: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store_uri(root))


def all_runs(root: Path, uri: str | None = None):
    from mlflow import MlflowClient

    from mlops_jupyter.tracking.query import store_ready

    if not store_ready(uri or store_uri(root)):
        return []  # never race the recorder's schema creation
    c = MlflowClient(tracking_uri=uri or store_uri(root))
    ids = [e.experiment_id for e in c.search_experiments()]
    return c.search_runs(ids, order_by=["attributes.start_time ASC"]) if ids else []


def artifacts(root: Path, run_id: str, path: str | None = None, uri: str | None = None) -> list[str]:
    from mlflow import MlflowClient

    c = MlflowClient(tracking_uri=uri or store_uri(root))
    out = []
    for item in c.list_artifacts(run_id, path):
        out.extend(artifacts(root, run_id, item.path, uri) if item.is_dir else [item.path])
    return out


def read_artifact(root: Path, run_id: str, path: str) -> str:
    return Path(client(root).download_artifacts(run_id, path)).read_text()


def wait_for(predicate, timeout: float = 30.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


# ipykernel's own shutdown race (ipython/ipykernel#1518): its control thread flushes stderr after the
# shutdown reply while the exiting main thread closes the IO thread's pipes. Only this exact traceback is
# dropped from a kernel's stderr before a test looks for errors of ours.
_SHUTDOWN_RACE = re.compile(r"Traceback \(most recent call last\):\n(?:[ \t].*\n)*?"
                            r"[ \t].*ipykernel/kernelbase\.py\", line \d+, in process_control\n(?:[ \t].*\n)*?"
                            r"zmq\.error\.ZMQError: Socket operation on non-socket\n?")


def kernel_stderr(text: str) -> str:
    return _SHUTDOWN_RACE.sub("", text)


def notebook(path: Path, cells: list, kernel: str = "python3") -> Path:
    """cells: source strings, or (source, tags) pairs."""
    nb = nbformat.v4.new_notebook()
    for cell in cells:
        src, tags = (cell, []) if isinstance(cell, str) else cell
        c = nbformat.v4.new_code_cell(src)
        if tags:
            c.metadata["tags"] = list(tags)
        nb.cells.append(c)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def recorder_pids(journal_dir_hint: str = "") -> list[int]:
    import psutil

    pids = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "mlops_jupyter.tracking.recorder" in cmd and journal_dir_hint in cmd:
            pids.append(p.info["pid"])
    return pids


def niceness(pid: int) -> set:
    """A process's niceness and, where Linux groups processes by session for scheduling (autogroup), its
    session group's: a recorder runs in a session of its own, where its niceness alone ranks it only within it."""
    group = Path(f"/proc/{pid}/autogroup")
    return {os.getpriority(os.PRIO_PROCESS, pid), *([int(group.read_text().split()[-1])] if group.exists() else [])}


class Kernel:
    """A real ipykernel through jupyter_client; ``run`` returns (reply content, iopub messages)."""

    def __init__(self, cwd: Path, env: dict | None = None):
        from jupyter_client import KernelManager

        base = {k: v for k, v in os.environ.items() if k not in CLEAN_VARS}
        for tries_left in reversed(range(3)):
            self.km = KernelManager(kernel_name="python3")
            self.km.start_kernel(cwd=str(cwd), env={**base, **(env or {})})
            self.kc = self.km.client()
            self.kc.start_channels()
            try:
                self.kc.wait_for_ready(timeout=60)
                return
            except RuntimeError:
                # jupyter_client picks the kernel's ports free and the kernel binds them a moment later: another
                # test's process may take one in between, and the kernel dies as it starts; a new one gets new ports
                self.kc.stop_channels()
                if not tries_left or self.km.is_alive():
                    raise
                self.km.cleanup_resources()

    @property
    def pid(self) -> int:
        return self.km.provisioner.process.pid

    def run(self, code: str, cell_id: str | None = None, timeout: float = 60, wait: bool = True):
        msg_id = self._execute(code, metadata={"cellId": cell_id} if cell_id else {})
        if not wait:
            return msg_id
        return self.collect(msg_id, timeout)

    def ask(self, expression: str, timeout: float = 60) -> dict:
        """The kernel's answer to a user expression in a silent request, as a frontend asks (nothing runs, is
        printed or numbered): {"status": "ok", "data": {"text/plain": repr}} or the error."""
        reply, _ = self.collect(self._execute("", silent=True, user_expressions={"x": expression}), timeout)
        return reply["user_expressions"]["x"]

    def _execute(self, code: str, silent: bool = False, user_expressions: dict | None = None,
                 metadata: dict | None = None) -> str:
        msg = self.kc.session.msg("execute_request", {
            "code": code, "silent": silent, "store_history": not silent, "user_expressions": user_expressions or {},
            "allow_stdin": False, "stop_on_error": True}, metadata=metadata or {})
        self.kc.shell_channel.send(msg)
        return msg["header"]["msg_id"]

    def collect(self, msg_id: str, timeout: float = 60):
        outputs, deadline = [], time.monotonic() + timeout
        while True:
            try:
                m = self.kc.get_iopub_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"kernel gave no idle status within {timeout}s") from None
            if m["parent_header"].get("msg_id") != msg_id:
                outputs.append(m)  # e.g. display updates sent from the recorder-events thread
                continue
            if m["msg_type"] == "status" and m["content"]["execution_state"] == "idle":
                break
            outputs.append(m)
        # the reply to this request: a slow kernel's start leaves wait_for_ready's extra kernel_info replies
        # queued on the shell channel ahead of it
        while True:
            try:
                reply = self.kc.get_shell_msg(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"kernel sent no reply within {timeout}s") from None
            if reply["parent_header"].get("msg_id") == msg_id:
                return reply["content"], outputs

    def drain_iopub(self, seconds: float) -> list:
        msgs, deadline = [], time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                msgs.append(self.kc.get_iopub_msg(timeout=0.1))
            except queue.Empty:
                pass
        return msgs

    def shutdown(self) -> None:
        try:
            self.kc.stop_channels()
        finally:
            if self.km.is_alive():
                self.km.shutdown_kernel(now=False)


@contextmanager
def kernel(cwd: Path, env: dict | None = None):
    k = Kernel(cwd, env)
    try:
        yield k
    finally:
        k.shutdown()


def text_of(msgs: list) -> str:
    """All text a cell showed: streams, plain-text displays and errors."""
    parts = []
    for m in msgs:
        c = m["content"]
        if m["msg_type"] == "stream":
            parts.append(c["text"])
        elif m["msg_type"] in ("display_data", "execute_result", "update_display_data"):
            parts.append(c["data"].get("text/plain", ""))
        elif m["msg_type"] == "error":
            parts.append(f"{c['ename']}: {c['evalue']}")
    return "\n".join(parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def finished_runs(root: Path, n: int, uri: str | None = None, timeout: float = 60):
    """At least ``n`` runs in the store, none RUNNING (waits for the recorders)."""
    def ready():
        runs = all_runs(root, uri)
        return runs if len(runs) >= n and all(r.info.status != "RUNNING" for r in runs) else None
    return wait_for(ready, timeout=timeout, what=f"{n} finished runs")


def http_ok(url: str) -> bool:
    import urllib.request

    try:
        return urllib.request.urlopen(url, timeout=2).status == 200
    except OSError:
        return False


SERVERS: dict = {}  # uri -> the process of a running mlflow_server, for a test that kills one
AUTH_ADMIN = ("admin", "admin-pass-1234")  # the basic-auth server's first user (MLflow ships no default password)


def password_of(user: str) -> str:
    """The password the tests give ``user`` on a basic-auth server."""
    return f"{user}-pass-1234"


@contextmanager
def mlflow_server(folder: Path, port: int | None = None, users: list | None = None):
    """A real ``mlflow server`` on loopback (its own SQLite store and artifact folder under ``folder``), in a
    process group of its own, stopped with it. Yields its URI. With ``users``, it runs MLflow's basic-auth app
    (``--app-name basic-auth``, permissions in its own SQLite file, READ by default) and each user is created
    through its REST API with ``password_of(user)``."""
    import sys

    port = port or free_port()
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"http://127.0.0.1:{port}"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    args = []
    if users is not None:
        (folder / "auth.ini").write_text(
            f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{folder}/auth.db\n"
            f"admin_username = {AUTH_ADMIN[0]}\nadmin_password = {AUTH_ADMIN[1]}\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        env.update(MLFLOW_AUTH_CONFIG_PATH=str(folder / "auth.ini"), MLFLOW_FLASK_SERVER_SECRET_KEY="tests-only")
        args = ["--app-name", "basic-auth"]
    log = open(folder / "server.log", "ab")
    proc = subprocess.Popen(
        # one worker, not uvicorn's default four: each imports mlflow (11-15 s of CPU a server on a 2-core machine)
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1", *args,
         "--backend-store-uri", f"sqlite:///{folder}/server.db", "--artifacts-destination", str(folder / "art")],
        env=env, start_new_session=True, stdout=log, stderr=log)
    try:
        wait_for(lambda: http_ok(f"{uri}/health"), timeout=120, interval=0.3, what="mlflow server")
        SERVERS[uri] = proc
        for user in users or []:
            import httpx

            made = httpx.post(f"{uri}/api/2.0/mlflow/users/create", auth=AUTH_ADMIN, timeout=30,
                              json={"username": user, "password": password_of(user)})
            assert made.status_code == 200, made.text
        yield uri
    finally:
        SERVERS.pop(uri, None)
        stop_group(proc)
        log.close()


async def call(jp_fetch, endpoint: str, body: dict | None = None, headers: dict | None = None, **params):
    """A route of the server extension: (status, JSON body); a body makes it a POST."""
    import json

    from tornado.httpclient import HTTPClientError

    kwargs = {"params": params, "headers": headers or {}}
    if body is not None:
        kwargs.update(method="POST", body=json.dumps(body))
    try:
        resp = await jp_fetch("mlops", *endpoint.split("/"), **kwargs)
    except HTTPClientError as err:
        return err.code, json.loads(err.response.body)
    return resp.code, json.loads(resp.body) if resp.body else None


class TakenPorts:
    """jupyter_client's port picker, but the picks numbered in ``taken`` get a port another program listens on: the
    race papermill knows (jupyter_client picks a kernel's ports free and closes them, the kernel binds them a moment
    later, and another process may take one in between), made to happen where a test wants it."""

    def __init__(self, monkeypatch, taken: set):
        from jupyter_client.connect import LocalPortCache

        self.server = socket.create_server(("127.0.0.1", 0))
        self.taken, self.picks, pick = taken, [], LocalPortCache.find_available_port

        def picker(cache, ip):
            self.picks.append(self.server.getsockname()[1] if len(self.picks) in self.taken else pick(cache, ip))
            return self.picks[-1]

        monkeypatch.setattr(LocalPortCache, "find_available_port", picker)
