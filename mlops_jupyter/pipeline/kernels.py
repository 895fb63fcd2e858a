"""Step kernels for ``mlops pipeline run``: forked from a template process that has imported ipykernel
and the notebook's ``imports`` cell (see ``forkserver``), where the kernel spec and the OS allow it;
otherwise (or with ``MLOPS_PIPELINE_FORK=0``) started the usual way. Either way a step gets a kernel
process of its own, managed by jupyter_client, that papermill drives like any other.
"""

from __future__ import annotations

import ast
import json
import logging
import os
import select
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path
from string import Template

from .. import config
from . import analysis
from .forkserver import EXIT

FORK_ENV = "MLOPS_PIPELINE_FORK"
# the libraries ``serializers.load`` imports for each hand-off format
FORMAT_LIBS = {"parquet": "import pandas, pyarrow.parquet", "joblib": "import joblib", "npy": "import numpy",
               "pickle": "import cloudpickle", "torch": "import torch"}
SETUP = "from mlops_jupyter.pipeline import serializers"
READY_S = 120.0  # how long a step's kernel may take to answer, unless papermill says
LAST_WORDS = 8  # lines of a dead kernel's own output that its step's error quotes
EXIT_WAIT_S = 1.0  # how long a dead forked kernel's log may wait for the fork server's line on how it ended
START_TRIES = 3  # kernels started for one step while each dies before it answers (one of its ports taken)


def cell_sources(notebook: Path, prefixes: tuple) -> list:
    """Sources of a step notebook's code cells whose ids start with one of ``prefixes``, in order."""
    nb = json.loads(notebook.read_text())
    return ["".join(c["source"]) if isinstance(c["source"], list) else c["source"] for c in nb["cells"]
            if c.get("cell_type") == "code" and str(c.get("id", "")).startswith(prefixes)]


def import_statements(sources: list, root: Path) -> list:
    """The top-level ``import`` statements of ``sources``, leaving out the notebook's local modules (a step
    imports those itself, so an edited helper is read as it is now) and relative imports."""
    out = []
    for src in sources:
        try:
            tree = ast.parse(analysis.python_source(src))
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods = [node.module]
            else:
                continue
            if not analysis.local_modules({m.split(".")[0] for m in mods}, root):
                out.append(ast.unparse(node))
    return out


def preload_of(notebook: Path, step: str, root: Path) -> list:
    """What a fork server for ``step``'s kernels imports first: our loader and the step's ``imports`` cell."""
    try:
        sources = cell_sources(notebook, (f"{step}-imports-",))
    except (OSError, ValueError, KeyError):
        sources = []
    return [SETUP] + import_statements(sources, root)


def execute(src: str, out: str, params: dict, kernel: str, km, cwd: str | None = None) -> None:
    """papermill on step notebook ``src`` into ``out`` in the started kernel ``km``, written once at the end
    (not at each cell: less time in the runner's GIL); also when the kernel dies mid-step, so that the outputs of
    the cells that ran are kept (papermill itself writes nothing then). A cell that raised raises papermill's
    PapermillExecutionError."""
    import papermill as pm
    from papermill.engines import papermill_engines

    if "StepEngine" not in _CLASSES:
        _CLASSES["StepEngine"] = _step_engine()
        papermill_engines.register("mlops-step", _CLASSES["StepEngine"])
        # nbclient says so on papermill's logger (the terminal, a Ray worker's log) before raising the error
        # the step reports, which says the same and why
        logging.getLogger("papermill").addFilter(lambda r: r.getMessage() != "Kernel died while waiting for execute "
                                                                            "reply.")
    pm.execute_notebook(src, out, parameters=params, kernel_name=kernel, km=km, cwd=cwd, progress_bar=False,
                        log_output=False, request_save_on_cell_execute=False, start_timeout=120,
                        engine_name="mlops-step", step_out=out)


def _step_engine():
    from papermill.engines import NBClientEngine

    class StepEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, step_out=None, **kwargs):
            try:
                return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)
            except Exception:
                nb_man.output_path = step_out  # the engine's notebook_complete writes it on the way out
                raise

    return StepEngine


def _tail(fd: int, size: int = 8192) -> str:
    """The end of the file open at ``fd``."""
    end = os.fstat(fd).st_size
    return os.pread(fd, size, max(0, end - size)).decode(errors="replace")


def _ending(code: int | None) -> str:
    """How a kernel's process ended, from its exit code (-N: killed by signal N), as its step's error says it."""
    if code is None:
        return ""
    if code >= 0:
        return f"; its process exited with status {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    oom = " (the out-of-memory killer's signal: the step may have run out of memory)" if -code == signal.SIGKILL else ""
    return f"; its process was killed by {name}{oom}"


def close_loop() -> None:
    """Close this thread's asyncio loop, which jupyter_core's ``run_sync`` made and never closes (call it at the end
    of a thread of ours): a loop left to the garbage collector can be finalized after its own self-pipe socket, and
    its ``__del__`` then prints a traceback (seen as an interrupted run's process exits)."""
    import asyncio

    try:
        loop = asyncio.get_event_loop()  # not the main thread: never makes one
    except RuntimeError:
        return
    if not loop.is_running():
        loop.close()
        asyncio.set_event_loop(None)


def _run_once(fn, *args, **kwargs):
    """Run coroutine function ``fn`` to its end from synchronous code in an event loop of its own, closed after
    (``run_sync`` would leave one in this thread); in a thread whose loop runs (a server's), through ``run_sync``."""
    import asyncio

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(fn(*args, **kwargs))
        finally:
            loop.close()
    from jupyter_core.utils import run_sync

    return run_sync(fn)(*args, **kwargs)


def _unlink(path: str | None) -> None:
    try:
        os.unlink(path)
    except (OSError, TypeError):
        pass


def _fork_spec(kernel: str):
    """(kernel spec, interpreter command, index of the kernel's own arguments in its argv) when its kernels
    can be forked (an ipykernel launched the standard way, on an OS with fork and pidfd), else None."""
    if config.switched_off(FORK_ENV):
        return None
    if not (hasattr(os, "fork") and hasattr(os, "pidfd_open")):
        return None
    from jupyter_client.kernelspec import KernelSpecManager

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel)
    except Exception:  # noqa: BLE001 - no such kernel: the usual start reports it
        return None
    argv = list(spec.argv)
    at = next((i for i in range(1, len(argv) - 1) if argv[i:i + 2] == ["-m", "ipykernel_launcher"]), None)
    # interpreter flags only between the python and -m (e.g. -Xfrozen_modules=off): the server gets them too
    if at is None or not all(a.startswith("-") for a in argv[1:at]) or spec.metadata.get("kernel_provisioner") or \
            (spec.language or "").lower() != "python" or spec.interrupt_mode != "signal":
        return None
    return spec, argv[:at], at + 2


class ForkServer:
    """The runner's side of ``forkserver``: started once per run, asked for one kernel process per step."""

    def __init__(self, spec, python: list, cwd: Path, preload: list, later: list):
        env = dict(os.environ)
        # what jupyter_client gives a kernel it launches (KernelProvisionerBase.pre_launch, launcher)
        env.update({k: Template(v).safe_substitute(env) for k, v in (spec.env or {}).items()})
        env.pop("PYTHONEXECUTABLE", None)
        env["JPY_PARENT_PID"] = str(os.getpid())
        self._lock = threading.Lock()
        self._buf, self.closed = b"", False
        self.proc = subprocess.Popen([*python, "-m", "mlops_jupyter.pipeline.forkserver"], cwd=str(cwd), env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     bufsize=0)
        self._send({"preload": preload, "later": later})

    def _send(self, obj: dict) -> None:
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        self.proc.stdin.flush()

    def _ask(self, obj: dict, timeout: float) -> dict:
        """Send one request and read its answer."""
        with self._lock:
            try:
                self._send(obj)
            except (OSError, ValueError):
                raise RuntimeError("the kernel fork server exited") from None
            fd = self.proc.stdout.fileno()
            while b"\n" not in self._buf:
                if not select.select([fd], [], [], timeout)[0]:
                    self.proc.kill()
                    raise RuntimeError(f"the kernel fork server did not answer within {timeout:.0f}s")
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise RuntimeError("the kernel fork server exited")
                self._buf += chunk
            line, _, self._buf = self._buf.partition(b"\n")
        return json.loads(line)

    def fork(self, argv: list, env: dict, cwd: str, log: str | None = None, timeout: float = 120) -> int:
        """A new kernel process running ``python -m ipykernel_launcher *argv``, its stdout and stderr appended to
        ``log``; returns its pid."""
        reply = self._ask({"argv": argv, "env": env, "cwd": cwd, "log": log}, timeout)
        if "pid" not in reply:
            raise RuntimeError(f"the kernel fork server cannot fork: {reply.get('error')}")
        return int(reply["pid"])

    def fresh(self, timeout: float = 30) -> bool:
        """Whether the modules the server has loaded are unchanged on disk since it started (see ``forkserver``)."""
        try:
            return bool(self._ask({"fresh": True}, timeout).get("fresh"))
        except (RuntimeError, ValueError):
            return False

    def close(self, wait: bool = True) -> None:
        """End of stdin: the server kills the kernels it forked that still run, and exits."""
        with self._lock:
            self.closed = True
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if wait:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class _Forked:
    """A forked kernel process seen through the part of the Popen interface jupyter_client uses. The fork
    server, not this process, is its parent and reaps it: a pidfd tells when it has exited (the exit status
    is the parent's to know, so an exited kernel reports -1)."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None
        try:
            self._fd = os.pidfd_open(pid)
        except OSError:  # already gone
            self._fd, self.returncode = None, -1

    def poll(self):
        if self.returncode is None and select.select([self._fd], [], [], 0)[0]:
            self.returncode = -1
            os.close(self._fd)
            self._fd = None
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            select.select([self._fd], [], [], timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(f"kernel {self.pid}", timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)


_CLASSES: dict = {}


def _classes() -> dict:
    """jupyter_client subclasses, made on first use (an unchanged re-run never imports jupyter_client)."""
    if _CLASSES:
        return _CLASSES
    from queue import Empty

    from jupyter_client.asynchronous import AsyncKernelClient
    from jupyter_client.manager import AsyncKernelManager
    from jupyter_client.provisioning import LocalProvisioner

    class ForkProvisioner(LocalProvisioner):
        """LocalProvisioner whose kernel process comes from the fork server instead of Popen."""

        server: ForkServer | None = None
        args_at = 0  # where the kernel's own arguments start in ``cmd``

        async def launch_kernel(self, cmd, **kwargs):
            env = dict(kwargs.get("env") or os.environ)
            env["JPY_PARENT_PID"] = str(os.getpid())  # as jupyter_client's launcher sets it
            cwd = str(kwargs.get("cwd") or os.getcwd())
            self.process = _Forked(self.server.fork([os.path.expanduser(a) for a in cmd[self.args_at:]], env, cwd,
                                                    self.parent.process_log))
            self.pid = self.pgid = self.process.pid  # the fork called setsid: signals go to its group
            self.cwd = cwd
            return self.connection_info

    class StepClient(AsyncKernelClient):
        """Connected and checked once: when papermill asks again (start_channels, wait_for_ready) it is
        ready at once. The check itself skips jupyter_client's fixed 0.2 s of IOPub flushing: a kernel that
        is up answers kernel_info on shell and publishes its busy and idle status for that request on IOPub,
        and one of them arriving shows the subscription is up, so no output of the step's cells can be missed."""

        _ready = False

        def start_channels(self, *args, **kwargs):
            if not self.channels_running:
                super().start_channels(*args, **kwargs)

        async def wait_for_ready(self, timeout=None):
            limit = READY_S if timeout is None else timeout
            deadline = time.monotonic() + limit
            while not self._ready:
                if await self._answered(self.kernel_info()):
                    self._ready = True
                elif not await self._async_is_alive():
                    raise RuntimeError("Kernel died before replying to kernel_info")
                elif time.monotonic() > deadline:
                    raise RuntimeError(f"Kernel didn't respond in {limit:g} s")

        async def _answered(self, msg_id: str) -> bool:
            """Whether the kernel replied to kernel_info ``msg_id`` within a second, and a status it published for
            that request reached IOPub within 0.2 s (jupyter_client takes any IOPub message there). A kernel just
            started may publish before this client's subscription is up: the request is then sent again, as
            jupyter_client does, since waiting longer would never see it."""
            for channel, wait in ((self.shell_channel, 1.0), (self.iopub_channel, 0.2)):
                end = time.monotonic() + wait
                while True:
                    try:
                        msg = await channel.get_msg(timeout=max(0.0, end - time.monotonic()))
                    except Empty:
                        return False
                    if msg["parent_header"].get("msg_id") == msg_id:
                        break
                if channel is self.shell_channel:
                    self._handle_kernel_info_reply(msg)
            return True

    class StepKernelManager(AsyncKernelManager):
        """One step's kernel; ``client()`` always returns the same (StepClient) client."""

        _step_client = None
        process_log: str | None = None  # its process's stdout and stderr (``launch``), by name until it starts
        log_fd: int | None = None  # the same file, read by ``last_words``
        stopped = False  # by ``Kernels.stop``: its death is no news

        def client(self, **kwargs):
            if self._step_client is None:
                self.client_factory = StepClient
                self._step_client = super().client(**kwargs)
            return self._step_client

        def stop_client(self) -> None:
            if self._step_client is not None and self._step_client.channels_running:
                self._step_client.stop_channels()

    _CLASSES.update(ForkProvisioner=ForkProvisioner, StepKernelManager=StepKernelManager)
    return _CLASSES


class Kernels:
    """Starts the step kernels of one pipeline run."""

    def __init__(self, kernel: str, root: Path):
        self.kernel, self.root = kernel, root
        self.server: ForkServer | None = None
        self.forking = True  # False once forked kernels die as they start: the run's later kernels start the usual way
        self._args_at = 0

    def start_fork_server(self, preload: list, later: list) -> None:
        """Start the template process that imports ``preload`` (see ``preload_of``), then ``later`` while idle
        (a no-op where kernels cannot be forked)."""
        found = _fork_spec(self.kernel)
        if found is None:
            return
        spec, python, self._args_at = found
        try:
            self.server = ForkServer(spec, python, self.root, preload, [s for s in later if s not in preload])
        except OSError:
            self.server = None

    def fresh(self) -> bool:
        """Whether the fork server still runs and what it has loaded is unchanged on disk: the kernels it forks
        are as a new server's would be."""
        server = self.server
        return server is not None and not server.closed and server.proc.poll() is None and server.fresh()

    def manager(self):
        """A jupyter_client kernel manager for one step's kernel (not started yet): forked while the fork
        server works, else started the usual way."""
        classes = _classes()
        km = classes["StepKernelManager"](kernel_name=self.kernel)
        km.log_fd, km.process_log = tempfile.mkstemp(prefix="mlops-kernel-", suffix=".log")
        if self.forking and self.server is not None and not self.server.closed and self.server.proc.poll() is None:
            km.kernel_id = str(uuid.uuid4())
            km.provisioner = classes["ForkProvisioner"](kernel_id=km.kernel_id, kernel_spec=km.kernel_spec, parent=km)
            km.provisioner.server, km.provisioner.args_at = self.server, self._args_at
        return km

    @staticmethod
    def launch(km, cwd: str) -> None:
        """Start ``km``'s kernel process, its stdout and stderr into its log: ipykernel's own chatter, and what
        native code writes there, which ipykernel also passes to the notebook while it lives; a dying kernel's
        last words reach no notebook, and ``last_words`` quotes them in the step's error. The file's name is gone
        once the kernel has it open: it goes with the last process holding it (a worker killed at its job's end
        leaves none behind)."""
        from jupyter_core.utils import run_sync

        try:
            with open(km.process_log, "ab") as log:
                run_sync(km.start_kernel)(cwd=cwd, stdout=log, stderr=log)
        finally:
            _unlink(km.process_log)

    @staticmethod
    def is_forked(km) -> bool:
        return isinstance(km.provisioner, _classes()["ForkProvisioner"])

    def start(self, cwd: str):
        """A step kernel, started and answering (kernel_info): forked where it can be. A kernel that dies before it
        answers is replaced, up to ``START_TRIES`` kernels in all. jupyter_client picks a kernel's ports free and
        closes them, and the kernel binds them a moment later: another process may take one in between
        (papermill's known race, with several runs or servers at once), and a new kernel gets new ports. Two
        forked kernels in a row that die so (something the template imported left it unsafe to fork), or a fork
        server that fails, give way to kernels started the usual way, for this step and the run's later ones; the
        kernels it forked that run go on. The last kernel is returned unchecked: papermill waits for it, and the
        step's error says how it died. The wait costs a step nothing: papermill finds the client ready
        (``StepClient``) instead of waiting itself."""
        from jupyter_core.utils import run_sync

        async def ready(km):
            kc = km.client()
            kc.start_channels()
            await kc.wait_for_ready()

        dead_forks = 0
        for _ in range(START_TRIES - 1):
            km = self.manager()
            forked = self.is_forked(km)
            try:
                self.launch(km, cwd)
            except Exception:  # noqa: BLE001 - a fork server that fails: the usual way from now on
                if not forked:
                    raise  # e.g. no such kernel
                self.stop(km)
                self.forking = False
                continue
            try:
                run_sync(ready)(km)
                return km
            except Exception:  # noqa: BLE001 - dead, or slow
                if not forked and run_sync(km.is_alive)():
                    return km  # slow: papermill's own wait says so
                self.stop(km)
                dead_forks += forked
                if dead_forks == 2:
                    self.forking = False
        km = self.manager()
        self.launch(km, cwd)
        return km

    @staticmethod
    def disconnect(km) -> None:
        """Stop a step kernel's client (its channels, in the loop of the thread that connected it), quietly."""
        try:
            km.stop_client()
        except Exception:  # noqa: BLE001 - closed already
            pass

    @staticmethod
    def stop(km) -> None:
        """Stop a step kernel and its client, quietly when it is already gone; in whatever thread, leaving no
        event loop there."""
        km.stopped = True
        Kernels.disconnect(km)
        try:
            _run_once(km.shutdown_kernel, now=True)
        except Exception:  # noqa: BLE001 - already gone
            pass
        _unlink(km.process_log)
        if km.log_fd is not None:
            os.close(km.log_fd)
            km.log_fd = None

    @staticmethod
    def last_words(km) -> str:
        """For a step whose kernel has died: how its process ended, and "the kernel's last output: ..." (the end of
        what it wrote to stdout and stderr), else ''. A line written in the instant before the process died can
        be missing: ipykernel reads those descriptors through a pipe and a thread, which a crash stops."""
        from jupyter_core.utils import run_sync

        try:
            if km is None or km.log_fd is None or km.stopped or run_sync(km.is_alive)():
                return ""
            if Kernels.is_forked(km):  # its parent, the fork server, ends the log with its exit code
                deadline = time.monotonic() + EXIT_WAIT_S
                while EXIT not in (text := _tail(km.log_fd)) and time.monotonic() < deadline:
                    time.sleep(0.02)
                code = next((int(ln[len(EXIT):]) for ln in reversed(text.splitlines()) if ln.startswith(EXIT)), None)
            else:
                text, code = _tail(km.log_fd), getattr(km.provisioner.process, "returncode", None)
            lines = [ln.strip() for ln in text.splitlines()  # without ipykernel's chatter, or the server's line
                     if ln.strip() and not ln.startswith(("[IPKernelApp]", EXIT))]
        except Exception:  # noqa: BLE001 - nothing to add to the step's own error
            return ""
        words = f"; the kernel's last output: {' / '.join(lines[-LAST_WORDS:])[-1500:]}" if lines else ""
        return _ending(code) + words

    def close(self, wait: bool = True) -> None:
        """Stop the fork server (``wait=False``: let it exit on its own; call again with ``wait`` to reap it)."""
        if self.server is not None:
            self.server.close(wait)
            if wait:
                self.server = None
