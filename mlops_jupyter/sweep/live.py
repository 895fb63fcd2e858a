"""A running sweep's live trial table, for the sidebar; and every sweep of a notebook, live or done.

While ``%%mlops sweep`` runs, the kernel writes its trials (status, params, metrics, best so far) to
``.mlops/sweeps/<record>.json``: replaced atomically, at most every ``MIN_INTERVAL_S``, and marked
finished at the end. The kernel holds an OS lock on ``<record>.lock`` meanwhile, so a reader tells a
live sweep from one whose kernel died without a timeout: the OS drops a dead process's lock at once
(the same session liveness as the tracking journal). Finished sweeps come from MLflow: the parent run
(tag mlops.kind=sweep) and one child run per trial, which reach the store as trials end.

Stdlib only at import time: the kernel side runs inside the sweep cell.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path

from ..tracking.journal import try_lock

SWEEPS_DIR = "sweeps"
MIN_INTERVAL_S = 0.5
KEEP_S = 3600.0  # a finished (or dead) sweep's file is pruned this long after its last update


def _folder(state_dir: Path) -> Path:
    return Path(state_dir) / SWEEPS_DIR


def trial_row(t) -> dict:
    return {"number": t.number, "status": t.status, "params": dict(t.params), "metrics": dict(t.metrics),
            "node": t.node or None}


class ProgressFile:
    """Kernel side: one per running sweep."""

    def __init__(self, state_dir: Path, key: str, notebook: str | None, name: str, metric: str, mode: str,
                 samples: int):
        folder = _folder(state_dir)
        self.path, self._lock_path, self._last = folder / f"{key}.json", folder / f"{key}.lock", 0.0
        try:
            folder.mkdir(exist_ok=True)  # the tracker made .mlops/ (with its .gitignore) when it configured
            prune(folder)
            self._lock = try_lock(self._lock_path)
        except OSError:  # a read-only or full disk must not break the sweep: the sidebar shows MLflow's view
            self._lock = None
        self.head = {"key": key, "run_id": None, "run_name": name, "notebook": notebook, "metric": metric,
                     "mode": mode, "samples": samples, "start_time": int(time.time() * 1000),
                     "host": socket.gethostname(), "pid": os.getpid()}
        self._write([], None, finished=False)

    def update(self, result, run_id: str | None = None, force: bool = False) -> None:
        """Write the table now, unless the last write was under ``MIN_INTERVAL_S`` ago."""
        if self._lock is None or (not force and time.monotonic() - self._last < MIN_INTERVAL_S):
            return  # finished already, or written moments ago
        self.head["run_id"] = run_id or self.head["run_id"]
        best = result.best
        self._write([trial_row(t) for t in result.trials],
                    {"trial": best.number, "params": dict(best.params), "metrics": dict(best.metrics)}
                    if best else None, finished=False)

    def finish(self, result=None, run_id: str | None = None, status: str = "FINISHED") -> None:
        """The last table, marked finished; the lock goes with it."""
        self.head["run_id"] = run_id or self.head["run_id"]
        best = result.best if result is not None else None
        self._write([trial_row(t) for t in result.trials] if result is not None else None,
                    {"trial": best.number, "params": dict(best.params), "metrics": dict(best.metrics)}
                    if best else None, finished=True, status=status)
        if self._lock is not None:
            self._lock.close()
            self._lock = None
        self._lock_path.unlink(missing_ok=True)

    def _write(self, trials, best, finished: bool, status: str = "RUNNING") -> None:
        self._last = time.monotonic()
        if trials is None:  # the sweep failed before any result: keep what the last write said
            trials, best = self._previous()
        body = {**self.head, "status": status, "finished": finished, "updated": int(time.time() * 1000),
                "best": best, "trials": trials}
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(body, default=str))
            os.replace(tmp, self.path)  # a reader sees the old table or the new one, never half of one
        except OSError:
            pass  # a full disk must not break the sweep; the sidebar then shows MLflow's view

    def _previous(self) -> tuple[list, dict | None]:
        try:
            old = json.loads(self.path.read_text())
            return old.get("trials", []), old.get("best")
        except (OSError, ValueError):
            return [], None


def prune(folder: Path) -> None:
    """Remove progress files of sweeps that ended (or whose kernel died) over ``KEEP_S`` ago."""
    now = time.time()
    for path in folder.glob("*.json"):
        try:
            if now - path.stat().st_mtime > KEEP_S and not is_live(path):
                path.unlink(missing_ok=True)
                path.with_suffix(".lock").unlink(missing_ok=True)
        except OSError:
            continue


def is_live(path: Path, body: dict | None = None) -> bool:
    """A progress file's sweep is running now: not marked finished and its kernel holds the lock."""
    if body is not None and body.get("finished"):
        return False
    lock_path = path.with_suffix(".lock")
    if not lock_path.exists():
        return False
    held = try_lock(lock_path)
    if held is None:
        return True
    held.close()
    return False


def read_progress(state_dir: Path, notebook: str | None = None) -> list[dict]:
    """The progress files of ``notebook``'s sweeps (all sweeps when None), each with ``live`` set."""
    folder = _folder(state_dir)
    out = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            body = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # removed meanwhile
        if notebook is not None and body.get("notebook") != notebook:
            continue
        body["live"] = is_live(path, body)
        if not body["live"] and not body.get("finished"):  # its kernel died mid-sweep
            body["status"] = "KILLED"
            for t in body.get("trials", []):
                t["status"] = "KILLED" if t["status"] == "RUNNING" else t["status"]
        out.append(body)
    return out


# ---- every sweep of a notebook: MLflow merged with the live files ------------------------------
def _number(name: str | None, default: int) -> int:
    m = re.fullmatch(r"trial-(\d+)", name or "")
    return int(m.group(1)) if m else default


def _best(trials: list, metric: str | None, mode: str) -> dict | None:
    done = [t for t in trials if t["status"] == "FINISHED" and isinstance(t["metrics"].get(metric), (int, float))]
    if not done:
        return None
    pick = max if mode == "max" else min
    t = pick(done, key=lambda t: t["metrics"][metric])
    return {"trial": t["number"], "params": t["params"], "metrics": t["metrics"]}


def list_sweeps(settings, notebook: str | None, last: int | None = None) -> list[dict]:
    """``notebook``'s sweeps, newest first: [{run_id, run_name, status, start_time, metric, mode,
    samples, live, best, trials: [{number, status, params, metrics, node}]}]. Trials of a running
    sweep come from its progress file (running ones included), those of an ended one from MLflow."""
    from ..tracking import child_runs, list_runs, run_for_record

    files = read_progress(settings.state_dir, notebook)
    for f in files:  # the kernel had not heard its run's id yet when it last wrote (a slow first store)
        f["run_id"] = f.get("run_id") or run_for_record(settings, f["key"])
    by_run = {f["run_id"]: f for f in files if f.get("run_id")}
    sweeps, used = [], set()
    for run in list_runs(settings, notebook=notebook):
        if run["kind"] != "sweep":
            continue
        if last and len(sweeps) >= last:
            break
        p = run["params"]
        live = by_run.get(run["run_id"])
        samples = p.get("trials") or p.get("samples") or ""  # trials: every grid point times --samples
        sweep = {"run_id": run["run_id"], "run_name": run["run_name"], "status": run["status"],
                 "start_time": run["start_time"], "metric": p.get("metric"), "mode": p.get("mode", "max"),
                 "samples": int(samples) if samples.isdigit() else None, "live": False}
        children = child_runs(settings, run["run_id"], run["experiment_id"])
        trials = [{"number": _number(c["run_name"], i), "status": c["status"], "params": c["params"],
                   "metrics": c["metrics"], "node": c["tags"].get("mlops.node") or None}
                  for i, c in enumerate(children, start=1)]
        if live is not None:
            used.add(live["key"])
            # the file is ahead of MLflow while the sweep runs and until the recorder has written every trial
            if live["live"] or len(live["trials"]) > len(trials):
                trials = live["trials"]
            sweep["live"] = live["live"]
            if live["live"]:
                sweep["status"] = "RUNNING"
        sweep["trials"] = sorted(trials, key=lambda t: t["number"])
        sweep["best"] = _best(sweep["trials"], sweep["metric"], sweep["mode"])
        sweeps.append(sweep)
    for f in files:  # running, but the store has no parent run yet (just started, or the store is down)
        if f["key"] not in used and f.get("run_id") not in {s["run_id"] for s in sweeps} and f["live"]:
            sweeps.append({"run_id": f.get("run_id"), "run_name": f.get("run_name"), "status": "RUNNING",
                           "start_time": f.get("start_time"), "metric": f.get("metric"), "mode": f.get("mode"),
                           "samples": f.get("samples"), "live": True, "best": f.get("best"),
                           "trials": f.get("trials", [])})
    sweeps.sort(key=lambda s: s["start_time"] or 0, reverse=True)
    return sweeps[:last] if last else sweeps
