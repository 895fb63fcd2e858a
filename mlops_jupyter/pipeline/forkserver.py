"""The template process step kernels are forked from (``python -m mlops_jupyter.pipeline.forkserver``).

It imports ipykernel and the ``import`` statements of the notebook's ``imports`` cell once; each step's
kernel is then a fresh process forked from it, so it starts with those modules loaded instead of paying
for them again (about 2 s of CPU per step for numpy + scikit-learn). The template never runs a step's
cells, the parameters or a hand-off load: a forked kernel's namespace is as empty as a new kernel's, and
nothing one step does (variables, module state) reaches another, since processes share no memory after
``fork``. Libraries that hook into IPython when imported (matplotlib's pyplot, tqdm.auto, widgets) or start
threads of their own (TensorFlow, JAX) are never preloaded: they import inside the step's kernel, where
the kernel's shell exists; a preload that starts a Python thread makes the server refuse to fork.

Protocol, one JSON object per line: stdin ``{"preload": [src...], "later": [src...]}`` once, then
``{"argv": [...], "env": {...}, "cwd": "...", "log": "..."}`` per kernel (``log``: a file its stdout and stderr
are appended to), answered on stdout with ``{"pid": N}`` (or ``{"error": ...}``: the runner then starts kernels
the usual way); ``{"fresh": true}`` is answered with ``{"fresh": bool}``: whether every module file it has
loaded is as it was when loaded (a driver that stays connected keeps a server for its next runs, unless a
package was upgraded or a file edited meanwhile). The server is the kernels' parent, the only process that
learns how one ended: it reaps each as it exits and appends ``EXIT`` and its exit code (-N: killed by signal N,
as Popen's) as the last line of its log. ``later`` statements are imported while no kernel is asked for. EOF on
stdin: the kernels still running are killed and the server exits. Stdlib only until the preload.
"""

from __future__ import annotations

import json
import os
import runpy
import select
import signal
import sys

# never preloaded, nor what imports them: their import hooks need the kernel's own IPython shell (the first
# line), or they start runtime threads when imported, which a fork would not carry over (the second)
NOT_PRELOADED = ("matplotlib", "seaborn", "plotly", "bokeh", "altair", "ipywidgets", "tqdm", "panel", "holoviews",
                 "hvplot", "tensorflow", "keras", "jax", "jaxlib")
EXIT = "[mlops] kernel process ended, exit code:"  # the line the server ends a kernel's log with


class _Refuse:
    """A meta-path finder that makes importing a module of NOT_PRELOADED fail while preloading."""

    @staticmethod
    def find_spec(name, path=None, target=None):
        if any(name == m or name.startswith(m + ".") for m in NOT_PRELOADED) and name not in sys.modules:
            raise ImportError(f"{name} is not preloaded")
        return None


def _import(src: str) -> None:
    try:
        exec(compile(src, "<mlops preload>", "exec"), {})
    except BaseException:  # noqa: BLE001 - not preloaded: the step's own import reports real errors
        pass


class _Lines:
    """Lines from stdin read straight from the descriptor: ``pending`` must see every line not handled yet."""

    def __init__(self):
        self.buf = b""

    def pending(self) -> bool:
        return b"\n" in self.buf or bool(select.select([0], [], [], 0)[0])

    def next(self) -> str:
        while b"\n" not in self.buf:
            chunk = os.read(0, 65536)
            if not chunk:
                return ""
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()


def _files() -> dict:
    """The loaded modules' files, each with its modification time and size (None: gone)."""
    found = {}
    for module in list(sys.modules.values()):
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            try:
                st = os.stat(path)
                found[path] = st.st_mtime_ns, st.st_size
            except OSError:
                found[path] = None
    return found


def _note(seen: dict, now: dict | None = None) -> dict:
    """Add the files of the modules loaded since the last call to ``seen``, as they are ``now``; returns now."""
    now = _files() if now is None else now
    for path, mtime in now.items():
        seen.setdefault(path, mtime)
    return now


def _fresh(seen: dict) -> bool:
    """Whether every file in ``seen`` is as it was when its module was loaded (one look at each)."""
    now = _note(seen)
    return all(now.get(path) == mtime and mtime is not None for path, mtime in seen.items())


def _reap(children: dict) -> None:
    """Reap the kernels that have exited, ending each one's log with how (SIGCHLD's handler). Only the
    kernels: a process a preloaded module started is its own to wait for."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})  # no second call inside this one
    for pid in list(children):
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            done, status = pid, None
        if not done:
            continue
        log = children.pop(pid)
        if log is not None:
            if status is not None:
                os.write(log, f"\n{EXIT} {os.waitstatus_to_exitcode(status)}\n".encode())
            os.close(log)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


def _fork(req: dict, children: dict) -> int:
    sys.stdout.flush()
    try:  # opened before the fork: the runner removes its name once answered
        out = os.open(req["log"], os.O_WRONLY | os.O_APPEND) if req.get("log") else None
    except OSError:
        out = None
    # SIGCHLD waits until the kernel is listed: a kernel that dies at once is reaped all the same
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
    pid = os.fork()
    if pid:
        children[pid] = out  # kept open to say how the kernel ended
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        return pid
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    for log in children.values():  # the other kernels' logs, and the server's list: this process kills nobody
        if log is not None:
            os.close(log)
    children.clear()
    # the kernel: what `python -m ipykernel_launcher ARGS` with start_new_session would be
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    out = null if out is None else out
    for fd, to in ((0, null), (1, out), (2, out)):
        os.dup2(to, fd)
    for fd in {null, out}:
        os.close(fd)
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    if "numpy" in sys.modules:  # a new process seeds numpy's global generator from the OS: so does a fork
        sys.modules["numpy"].random.seed()
    sys.argv = ["ipykernel_launcher", *req["argv"]]
    runpy.run_module("ipykernel_launcher", run_name="__main__", alter_sys=True)
    raise SystemExit(0)


def main() -> None:
    # Ctrl-C in the terminal reaches the runner, which stops the kernels
    children: dict = {}  # pid -> its log's descriptor (or None)
    signal.signal(signal.SIGCHLD, lambda *_: _reap(children))
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # the kernel's own code (what its start-up imports, debugger included), while the runner gets going
    for module in ("ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell", "ipykernel.debugger"):
        _import(f"import {module}")
    seen: dict = {}  # the loaded modules' files as they were loaded (see _fresh)
    _note(seen)
    refuse = _Refuse()
    sys.meta_path.insert(0, refuse)
    lines = _Lines()
    try:
        head = json.loads(lines.next() or "{}")
        for src in head.get("preload", []):
            _import(src)
        _note(seen)
        later = list(head.get("later", []))
        while True:
            # import the ``later`` statements one by one while nobody waits for a kernel
            while later and not lines.pending():
                _import(later.pop(0))
                _note(seen)
            if refuse in sys.meta_path and not later:
                sys.meta_path.remove(refuse)
            line = lines.next()
            if not line:
                break
            req = json.loads(line)
            if req.get("fresh"):
                print(json.dumps({"fresh": _fresh(seen)}), flush=True)
                continue
            threads = sys.modules["threading"].active_count() if "threading" in sys.modules else 1
            if threads > 1:  # a preloaded module started a thread: a fork would copy its locks, not the thread
                print(json.dumps({"error": "a preloaded module started a thread"}), flush=True)
                continue
            if refuse in sys.meta_path:
                sys.meta_path.remove(refuse)  # never inherited by a kernel
                pid = _fork(req, children)
                sys.meta_path.insert(0, refuse)
            else:
                pid = _fork(req, children)
            print(json.dumps({"pid": pid}), flush=True)
    finally:
        for pid in list(children):  # the runner is gone: no kernel outlives it
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
    # (a kernel leaves through the SystemExit above.) The server has nothing to flush or save: skip the
    # interpreter's teardown of everything it imported, which the runner would wait for
    os._exit(0)


if __name__ == "__main__":
    main()
