"""Driver side of a sweep: reach Ray, check resources, run the trials (through Ray Tune, or as plain Ray tasks
when no scheduler needs Tune: ``_Pool``), stream them back to the cell."""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import ship
from .space import SweepError, variants

NODE_RETRIES = 3  # a lost worker or node: Tune runs the trial again elsewhere (--retries is for the body's errors)
STOP_WAIT_S = 30.0  # after an interrupt, how long the running trials get to be stopped by Tune
_QUIET = ("ray", "ray.tune", "ray.train", "ray.air")


@dataclass
class SweepSpec:
    body: str
    space: dict  # name -> Term
    metric: str
    mode: str = "max"
    samples: int | None = None  # None: 1 for a grid, else 10
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    concurrency: int | None = None
    scheduler: str | None = None
    address: str | None = None
    retries: int = 0

    @property
    def num_samples(self) -> int:
        if self.samples is not None:
            return self.samples
        return 1 if any(t.is_grid for t in self.space.values()) else 10


@dataclass
class TrialState:
    number: int
    trial_id: str
    params: dict
    status: str = "RUNNING"
    metrics: dict = field(default_factory=dict)
    start: float = 0.0
    end: float | None = None
    node: str = ""
    gpu_ids: str = ""
    error: str = ""
    output: str = ""
    attempts: int = 1
    restarts: int = 0  # Tune's retries after a lost worker or node
    reported: int = 0  # results received (report() calls plus the final one)
    ran: tuple = ()  # (start, end) of the body, by its worker's clock: a trial can wait for a free CPU
    final: str = ""  # FINISHED / FAILED from the body's last result; empty while it runs
    stopped_early: bool = False  # ended by the scheduler (ASHA) before the body finished


@dataclass
class Plan:
    spec: SweepSpec
    shipment: ship.Shipment
    nodes: list
    remote: bool  # Ray Client: the Tuner runs on the cluster

    @property
    def total(self) -> int:
        """Trials Tune will run: every grid combination, --samples times."""
        n = self.spec.num_samples
        for t in self.spec.space.values():
            if t.is_grid:
                n *= len(t.args[0]["grid_search"]) if t.fn == "tune" else len(t.args)
        return n


@dataclass
class SweepResult:
    spec: SweepSpec
    trials: list
    nodes: list
    seconds: float = 0.0
    interrupted: bool = False

    def counts(self) -> dict:
        out = {"FINISHED": 0, "FAILED": 0, "KILLED": 0, "RUNNING": 0}
        for t in self.trials:
            out[t.status] = out.get(t.status, 0) + 1
        return out

    @property
    def best(self) -> TrialState | None:
        ok = [t for t in self.trials if t.status == "FINISHED" and _finite(t.metrics.get(self.spec.metric))]
        if not ok:
            return None
        pick = max if self.spec.mode == "max" else min
        return pick(ok, key=lambda t: t.metrics[self.spec.metric])


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# ---- Ray --------------------------------------------------------------------------------------
_connected: str | None = None  # the address this kernel connected to (None: Ray started here)
CLIENT_ATTEMPTS = 3  # Ray Client connections whose server the head failed to start
_starting = threading.Lock()  # held while this kernel starts or reaches Ray: a sweep waits for a prestart
_prestarted: threading.Thread | None = None
prestarted = threading.Event()  # set once a prestart has finished (Ray up, then Tune unless a sweep began; or failed)
_local_up = threading.Event()  # this kernel has started a Ray on this machine
_sweeping = threading.Event()  # a sweep has begun: a prestart leaves it the cores rather than import Tune


def prestart() -> bool:
    """Start this machine's Ray in the background (a notebook holding sweep cells, as the extension loads), then
    import Tune unless a sweep began meanwhile, so that the first sweep finds them ready instead of paying
    seconds for them; False when there is nothing to do (started already, or RAY_ADDRESS names a cluster). A
    sweep that comes first waits for Ray; a failure is left for the sweep to report."""
    global _prestarted
    if _prestarted is not None or os.environ.get("RAY_ADDRESS"):
        return False

    def run() -> None:
        try:
            connect(None)
            if not _sweeping.is_set():  # idle time: a sweep with a scheduler needs Tune (most of a second)
                from ray import tune  # noqa: F401

                from . import _tune  # noqa: F401
        except Exception:  # noqa: BLE001 - the sweep itself says what is wrong
            pass
        finally:
            prestarted.set()
        # Ray's processes die with the thread that started them (Linux's parent-death signal follows the
        # thread, not the process): this one stays, idle, for the kernel's life
        threading.Event().wait()

    _prestarted = threading.Thread(target=run, name="mlops-ray-prestart", daemon=True)
    _prestarted.start()
    return True


def settle() -> bool:
    """From the main thread, once a prestart's thread has started Ray: what ``connect`` does there after it
    starts Ray (a thread cannot, see ``_quiet_exit``). True once done, or when the prestart failed."""
    if _local_up.is_set():
        _quiet_exit()
        return True
    return prestarted.is_set()


def connect(address: str | None) -> None:
    """Reuse this kernel's Ray; else start a local one, or connect to ``address`` / RAY_ADDRESS."""
    with _starting:
        _connect(address)
    settle()


def _connect(address: str | None) -> None:
    global _connected
    import ray

    address = address or os.environ.get("RAY_ADDRESS") or None
    if ray.is_initialized():
        if address is None or address == _connected or (
                not address.startswith("ray://") and ray.get_runtime_context().gcs_address == address):
            return
        ray.shutdown()
    reason = init_ray(address)
    if reason:
        where = f"the Ray cluster at {address}" if address else "a local Ray instance"
        raise SweepError(f"could not reach {where}: {reason}. A cluster's address is ray://head:10001 for Ray "
                         "Client, or host:6379 for a cluster this machine belongs to.", what="address",
                         address=address or "", reason=reason)
    _connected = address
    if address is None:
        _local_up.set()  # under _starting: a sweep that waited for a prestart settles right after
        _quiet_exit()


def init_ray(address: str | None) -> str | None:
    """``ray.init`` for ``address`` (None: a Ray instance on this machine; ray://: Ray Client, which ships this
    package to the cluster's workers); returns None, or one line saying why Ray could not be reached."""
    for attempt in range(CLIENT_ATTEMPTS):
        reason = _init_ray_once(address)
        # the head can fail to bring up the server it starts for each Ray Client connection: in time (Ray's
        # proxier gives it 30 s), or at all (the proxier forks it with gRPC busy; see no_grpc_fork_handlers).
        # That is worth another try, a wrong address or a refusal is not
        if not (reason and address and address.startswith("ray://") and any(
                cue in reason for cue in ("Starting Ray client server failed", "Proxy failed to Connect"))):
            return reason
        import ray

        ray.shutdown()
        time.sleep(1 + attempt)
    return reason


def _init_ray_once(address: str | None) -> str | None:
    import ray

    no_grpc_fork_handlers()
    kwargs = {"log_to_driver": False, "logging_level": logging.ERROR}
    _fresh_token()
    try:
        if address is None:
            ray.init(include_dashboard=False, **kwargs)
        elif address.startswith("ray://"):
            import mlops_jupyter  # the cluster's workers get this package with the job

            ray.init(address=address, runtime_env={"py_modules": [str(Path(mlops_jupyter.__file__).parent)],
                                                    "excludes": ["__pycache__", "labextension"]}, **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure to start or reach Ray is the user's to fix
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]
        # Ray Client's errors open with a header line ("... from server:") and end with the cause
        reason = lines[0] if len(lines) == 1 or not lines[0].endswith(":") else f"{lines[0]} {lines[-1]}"
        if "connection timeout" in reason:
            # a refused token looks the same to Ray Client as a head that does not answer
            reason += (" (or the cluster refused this machine's token: a cluster with token auth needs "
                       "RAY_AUTH_MODE=token and the head's own RAY_AUTH_TOKEN here)")
        return reason
    return None


def no_grpc_fork_handlers() -> None:
    """Ray starts its processes (GCS, raylet, agents) with a ``preexec_fn``, so Python forks them rather than
    spawning them. Where this process has gRPC busy (Ray Client loads it, and so may the notebook's own code),
    grpcio's fork handlers (on by default) restart its poller in the child, which crashes there now and then
    before it execs (grpcio 1.85: 2-10 forks in 100 while a channel is busy): Ray then waits 30 s for a GCS
    that never started, and fails. Ray's children exec at once and never use gRPC, so they need no fork
    support. gRPC reads this once, as it loads; a value the user set is kept."""
    os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def _fresh_token() -> None:
    """Ray reads its auth mode (RAY_AUTH_MODE) and token (RAY_AUTH_TOKEN, ~/.ray/auth_token) once per process
    and keeps them: a token set in the notebook after an earlier Ray call (``%env RAY_AUTH_TOKEN=...``), or a
    token cluster reached after a Ray without auth, would otherwise get the old ones, and Ray Client reports
    the refusal as a connection timeout. Called only while this process holds no Ray connection."""
    try:
        from ray._raylet import AuthenticationTokenLoader, Config
    except ImportError:  # a Ray without token auth
        return
    Config.initialize("")  # as Ray does when it turns token auth on for a process
    AuthenticationTokenLoader.instance().reset_cache()


def _quiet_exit() -> None:
    """Ray's driver answers SIGTERM with a stack dump on stderr; a kernel that swept gets one whenever its
    client ends it while Ray still shuts down (papermill gives a kernel 5 s to exit). Ray's own processes
    end with the kernel either way (they share its fate), so SIGTERM ends the kernel quietly again."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def cluster_nodes() -> list[dict]:
    import ray

    return [{"id": n["NodeID"], "ip": n["NodeManagerAddress"], "cpu": n["Resources"].get("CPU", 0.0),
             "gpu": n["Resources"].get("GPU", 0.0)} for n in ray.nodes() if n.get("Alive")]


def describe_nodes(nodes: list[dict]) -> str:
    return "; ".join(f"node {n['ip']} ({n['id'][:8]}): {n['cpu']:g} CPU, {n['gpu']:g} GPU" for n in nodes)


def check_resources(spec: SweepSpec, nodes: list[dict]) -> None:
    """A trial must fit on one node; otherwise Tune would wait forever, so fail now and say why."""
    c, g = spec.cpus_per_trial, spec.gpus_per_trial
    if g > 1 and g != int(g):
        raise SweepError(f"{g:g} GPUs per trial: above 1, GPUs per trial must be a whole number "
                         "(fractions such as 0.5 share one GPU between trials).", what="gpus", gpus_per_trial=g)
    if not any(n["cpu"] >= c and n["gpu"] >= g for n in nodes):
        raise SweepError(f"each trial asks for {c:g} CPU and {g:g} GPU, but no node of the Ray cluster has that "
                         f"much. The cluster has: {describe_nodes(nodes)}.", what="resources", cpus_per_trial=c,
                         gpus_per_trial=g, nodes=nodes)


# ---- a sweep ----------------------------------------------------------------------------------
def prepare(spec: SweepSpec, user_ns: dict, hidden: dict) -> Plan:
    """Everything that can be wrong before a trial runs: the body, the metric, the globals, Ray, the
    resources. Raises SweepError; nothing is recorded yet."""
    tree = ship.parse_body(spec.body)
    if not ship.assigns(tree, spec.metric) and "report" not in spec.body and spec.metric not in user_ns:
        raise SweepError(f"the cell never assigns `{spec.metric}`, the sweep's metric, so no trial would have a "
                         f"result. End the cell with e.g. `{spec.metric} = model.score(X_test, y_test)`, or call "
                         f"mlops_jupyter.report({spec.metric}=...).", what="metric", metric=spec.metric)
    shipment = ship.collect(tree, user_ns, hidden, exclude=set(spec.space))
    _sweeping.set()
    connect(spec.address)
    nodes = cluster_nodes()
    check_resources(spec, nodes)
    from ray.util.client import ray as client

    return Plan(spec, shipment, nodes, remote=client.is_connected())


def _shipped(plan: Plan, put):
    """``put(job)`` (one ray.put for the whole sweep) of what every trial needs: the body, the metric and the
    notebook's globals, less those that cannot be pickled (a trial that needs one says so)."""
    spec, shipped = plan.spec, plan.shipment
    job = {"body": spec.body, "metric": spec.metric, "mode": spec.mode, "retries": spec.retries,
           "modules": shipped.modules, "submodules": shipped.submodules, "skipped": shipped.skipped,
           "values": shipped.values}
    try:
        return put(job)
    except Exception:  # noqa: BLE001 - some global cannot be pickled: leave it (and say so if a trial needs it)
        problems = ship.pickle_problems(shipped.values)
        if not problems:
            raise
        shipped.skipped.update(problems)
        job["values"] = {k: v for k, v in shipped.values.items() if k not in problems}
        return put(job)


def _trainable(plan: Plan):
    from ray import tune

    from . import trial

    fn = _shipped(plan, lambda job: tune.with_parameters(trial.run, job=job))
    return tune.with_resources(fn, {"cpu": plan.spec.cpus_per_trial, "gpu": plan.spec.gpus_per_trial})


def pooled(spec: SweepSpec) -> bool:
    """Whether the sweep runs as plain Ray tasks (``_Pool``) rather than through Tune's controller: when no
    scheduler compares trials as they go and the body streams no results (``report()`` calls)."""
    return spec.scheduler is None and "report" not in spec.body


def _slots(spec: SweepSpec, nodes: list) -> int:
    """How many trials the cluster's nodes can run at once (or --concurrency): at least one."""
    if spec.concurrency:
        return spec.concurrency
    fit = 0
    for n in nodes:
        per = [math.floor(have / want + 1e-9) for have, want in ((n["cpu"], spec.cpus_per_trial),
                                                                  (n["gpu"], spec.gpus_per_trial)) if want]
        fit += min(per) if per else 1 << 20
    return max(1, fit)


class _Pool:
    """A sweep without a scheduler, as plain Ray tasks: trial ``i`` is ``trial.run_task`` with the i-th config
    drawn from the space (grid x --samples, as Tune would, without importing Tune), as many at once as the
    cluster fits. Tune runs each trial in an actor, and Ray starts a new worker process for every actor, each
    sweep; tasks run on the worker processes Ray keeps between tasks, so a sweep with Ray up starts no process.
    Measured on 2 CPUs (bench_sweep): Tune at its fastest took 1.33-1.39x the ideal, a sweep as tasks 1.03x.
    The events are Tune's (start, result, complete, recover, error), so ``_Tracker`` folds both alike. A trial
    whose worker or node dies runs again (up to NODE_RETRIES times, a ``recover``); a stop request (Ctrl-C)
    kills the running tasks at once, as a blocking call in the body would not see a gentler cancel."""

    def __init__(self, plan: Plan, channel):
        self.plan, self.channel = plan, channel
        self.running: dict = {}  # task -> (trial id, config, restarts)

    def fit(self) -> None:
        import uuid

        import ray

        from . import trial

        spec = self.plan.spec
        configs = variants(spec.space, spec.num_samples)
        if configs is None:  # a Ray Tune object in the space: Tune draws it (the user imported Tune already)
            from ray.tune.search.variant_generator import generate_variants

            space = {name: term.to_tune() for name, term in spec.space.items()}
            configs = [cfg for _ in range(spec.num_samples) for _, cfg in generate_variants(space)]
        prefix = uuid.uuid4().hex[:5]
        todo = [(f"{prefix}_{i:05d}", cfg) for i, cfg in reversed(list(enumerate(configs)))]
        job = _shipped(self.plan, ray.put)
        task = ray.remote(trial.run_task).options(num_cpus=spec.cpus_per_trial, num_gpus=spec.gpus_per_trial,
                                                  max_retries=0, name="mlops sweep trial")
        slots, looked = _slots(spec, self.plan.nodes), time.monotonic()
        try:
            while todo or self.running:
                if self.channel.stopped():
                    return
                if todo and len(self.running) >= slots and time.monotonic() - looked > 2.0:
                    slots, looked = _slots(spec, cluster_nodes()), time.monotonic()  # a node came or went
                while todo and len(self.running) < slots:
                    trial_id, cfg = todo.pop()
                    self.running[task.remote(cfg, job)] = (trial_id, cfg, 0)
                    self.channel.put(("start", trial_id, dict(cfg), time.time()))
                done, _ = ray.wait(list(self.running), num_returns=1, timeout=0.1)
                for ref in done:
                    self._ended(ref, task, job)
        finally:
            for ref in self.running:  # stopped (or failed): nothing keeps running on the cluster
                ray.cancel(ref, force=True)

    def _ended(self, ref, task, job) -> None:
        import ray

        trial_id, cfg, restarts = self.running.pop(ref)
        try:
            results = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # the body left through BaseException (SystemExit, ...)
            self.channel.put(("error", trial_id, str(exc), time.time()))
            return
        except ray.exceptions.RayError as exc:  # its worker or node died: run it again elsewhere
            if restarts >= NODE_RETRIES:
                self.channel.put(("error", trial_id, f"its Ray worker failed {restarts + 1} times: "
                                                     f"{str(exc).strip().splitlines()[0]}", time.time()))
                return
            self.running[task.remote(cfg, job)] = (trial_id, cfg, restarts + 1)
            self.channel.put(("recover", trial_id, str(exc), time.time()))
            return
        for result in results:
            self.channel.put(("result", trial_id, result, time.time()))
        self.channel.put(("complete", trial_id, None, time.time()))


def _tuner(plan: Plan, channel, storage: str):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    from ._tune import Events, Stop

    spec = plan.spec
    scheduler = ASHAScheduler(max_t=10**9) if spec.scheduler == "asha" else None  # no cap on report() calls
    return tune.Tuner(
        _trainable(plan),
        param_space={name: term.to_tune() for name, term in spec.space.items()},
        tune_config=tune.TuneConfig(num_samples=spec.num_samples, metric=spec.metric, mode=spec.mode,
                                    scheduler=scheduler, max_concurrent_trials=spec.concurrency,
                                    reuse_actors=True),  # one worker process per slot, not per trial
        run_config=tune.RunConfig(name="mlops-sweep", storage_path=storage, verbose=0, stop=Stop(channel),
                                  callbacks=[Events(channel)],
                                  failure_config=tune.FailureConfig(max_failures=NODE_RETRIES)))


class _Tracker:
    """Folds Tune's events into TrialStates; ``on_end`` hears each trial once, when it ends."""

    def __init__(self, spec: SweepSpec, on_end):
        self.spec, self.on_end = spec, on_end
        self.trials: dict[str, TrialState] = {}
        self.stopping = False

    def apply(self, events: list) -> bool:
        for kind, trial_id, data, at in events:
            t = self.trials.get(trial_id)
            if kind == "start":
                if t is None:
                    params = {k: v for k, v in data.items() if k in self.spec.space}
                    self.trials[trial_id] = TrialState(len(self.trials) + 1, trial_id, params, start=at)
                continue
            if t is None or t.status != "RUNNING":
                continue
            if kind == "result":
                t.reported += 1
                t.node, t.gpu_ids = data.pop("mlops_node", t.node), data.pop("mlops_gpu_ids", t.gpu_ids)
                status = data.pop("mlops_status", None)
                t.error, t.output = data.pop("mlops_error", t.error), data.pop("mlops_output", t.output)
                t.attempts = int(data.pop("mlops_attempts", t.attempts))
                t.ran = tuple(data.pop("mlops_ran", t.ran))
                t.metrics.update({k: v for k, v in data.items() if _finite(v) and not isinstance(v, bool)})
                if status == "FAILED":
                    t.metrics.pop(self.spec.metric, None)  # the stand-in worst value is not a result
                t.final = status or t.final
            elif kind == "recover":
                t.restarts += 1
            elif kind == "complete":
                t.stopped_early = not t.final and not self.stopping
                self._end(t, t.final or ("KILLED" if self.stopping else "FINISHED"), at)
            elif kind == "error":
                t.error = data or t.error
                self._end(t, "FAILED", at)
        return bool(events)

    def _end(self, t: TrialState, status: str, at: float) -> None:
        if t.ran and not t.restarts:
            # when the body ran, not when the trial was handed to Ray (it may have waited for a CPU: more
            # trials than CPUs, or a cluster shared with others), kept within what this driver saw in case
            # the worker's clock is off; a trial that lost its worker keeps its first start
            t.start = min(max(t.start, t.ran[0]), at)
            at = min(max(t.start, t.ran[1]), at)
        t.status, t.end = status, at
        if self.on_end:
            self.on_end(t)

    def kill_running(self) -> None:
        now = time.time()
        for t in self.trials.values():
            if t.status == "RUNNING":
                self._end(t, "KILLED", now)


def _quiet_logs() -> dict:
    levels = {name: logging.getLogger(name).level for name in _QUIET}
    for name in _QUIET:
        logging.getLogger(name).setLevel(logging.ERROR)
    return levels


def execute(plan: Plan, on_update=None, on_trial_end=None, update_s: float = 0.5) -> SweepResult:
    """Run the sweep; ``on_update(result)`` about every ``update_s`` while it runs, ``on_trial_end(trial)``
    once per trial. On KeyboardInterrupt: Tune stops the running trials (KILLED) and the result says
    ``interrupted``; the caller decides what to raise."""
    from .channel import LocalChannel

    # Tune's own file loggers: the trials go to MLflow instead
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # no experiment banner in the cell
    pool = pooled(plan.spec)
    # over Ray Client the Tuner runs on the cluster and reports through an actor; a pool is driven from here
    if plan.remote and not pool:
        from ._tune import RemoteChannel

        channel = RemoteChannel()
    else:
        channel = LocalChannel()
    storage = None if pool else tempfile.mkdtemp(prefix="mlops-sweep-")  # Tune's experiment folder
    levels = _quiet_logs()
    folded = _Tracker(plan.spec, on_trial_end)
    result = SweepResult(plan.spec, [], plan.nodes)
    box: dict = {}
    started = time.monotonic()

    def fit():
        try:
            if pool:
                _Pool(plan, channel).fit()
            else:
                _tuner(plan, channel, storage).fit()
        except BaseException as exc:  # noqa: BLE001 - handed to the cell's thread
            box["error"] = exc

    def pump() -> None:
        folded.apply(channel.drain())
        result.trials = sorted(folded.trials.values(), key=lambda t: t.number)
        result.seconds = time.monotonic() - started

    worker = threading.Thread(target=fit, name="mlops-sweep", daemon=True)
    try:
        worker.start()
        last = 0.0
        try:
            while worker.is_alive():
                worker.join(0.1)
                pump()
                if on_update and time.monotonic() - last >= update_s:
                    last = time.monotonic()
                    on_update(result)
        except KeyboardInterrupt:
            result.interrupted = folded.stopping = True
            channel.request_stop()
            deadline = time.monotonic() + STOP_WAIT_S
            try:
                while worker.is_alive() and time.monotonic() < deadline:
                    worker.join(0.1)
            except KeyboardInterrupt:
                pass  # a second interrupt: stop waiting for Tune's clean-up
        pump()
        if result.interrupted:
            folded.kill_running()
        elif "error" in box:
            exc = box["error"]
            raise SweepError(f"{'Ray' if pool else 'Ray Tune'} stopped the sweep: {type(exc).__name__}: {exc}",
                             what="tune") from exc
        result.trials = sorted(folded.trials.values(), key=lambda t: t.number)
        return result
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        channel.close()
        if storage:
            shutil.rmtree(storage, ignore_errors=True)
