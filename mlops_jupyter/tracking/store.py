"""Opening the tracking store: every process of ours gets its MlflowClient here.

MLflow creates a new SQLite store's tables, and migrates an old one, inside whichever process opens it
first, with no lock: four kernels starting together on a new project left a store half-migrated for
good. Here a local SQLite store is created or migrated exactly once, under an OS lock on a file beside
it, and every other opener waits on that lock, then uses the finished store:

- new store: created under the lock; an interruption (a killed process) is detected by the marker
  file left beside it, and a store that holds nothing yet is moved aside and made anew;
- older schema (after an MLflow upgrade): a backup copy first, then ``mlflow db upgrade``, once;
  an interrupted upgrade is detected by its marker and retried from the backup;
- left half-migrated by anything else: moved aside and made anew when it holds no runs, experiments or
  models, else refused with ``StoreBroken`` naming the exact fix. Never a store that stays dead silently.

Any other store (a tracking server, a database server) is opened as MLflow opens it.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import StoreBroken, StoreError, StoreUnavailable
from .sqlite_reader import path_of

BUSY_S = 5.0  # how long a look at the store waits for another process's lock before calling it busy
_ready: dict = {}  # tracking URI -> MlflowClient, once the store was checked in this process
_guard = threading.Lock()
# tables that hold something a user would miss; a store with none of them filled can be made anew
_VALUABLE = ("runs", "registered_models", "model_versions", "logged_models", "datasets")


def exists(uri: str) -> bool:
    """False for a local SQLite store that was never created (reading it must not create it)."""
    path = path_of(uri)
    return path is None or (os.path.isfile(path) and os.path.getsize(path) > 0)


def client(uri: str):
    """An ``MlflowClient`` on ``uri``; a local SQLite store is created or migrated first, once, under an OS
    lock (see the module doc). Raises ``StoreBroken`` for a damaged store it must not touch."""
    with _guard:
        found = _ready.get(uri)
    if found is not None:
        return found
    MlflowClient = _import_mlflow()  # seconds of import: never while holding the lock others wait on
    path = path_of(uri)
    if path is None or (not _marker(path).exists() and inspect(path)["state"] == "current"):
        made = MlflowClient(tracking_uri=uri)
    else:
        with locked(path):
            made = None
            if _prepare(uri, path):
                made = MlflowClient(tracking_uri=uri)  # MLflow creates a new store's tables here: under the lock
                _marker(path).unlink(missing_ok=True)
        made = made or MlflowClient(tracking_uri=uri)
    with _guard:
        _ready[uri] = made
    return made


def _import_mlflow():
    import logging
    import warnings

    with warnings.catch_warnings():  # mlflow's import of tqdm.auto warns in kernels without ipywidgets
        warnings.simplefilter("ignore")
        from mlflow.tracking import MlflowClient
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)  # "Creating initial ... tables"
    logging.getLogger("alembic").setLevel(logging.WARNING)
    return MlflowClient


def answers(uri: str, wait: float = BUSY_S) -> bool:
    """Whether the store at ``uri`` answers within ``wait`` seconds: a local SQLite store lets a writer in (its
    write lock, taken and given back at once), a tracking server answers an HTTP request (with any status). A
    store of another kind cannot be asked as cheaply: False. Asked when a write is slow, to tell a busy machine
    from a store that is locked, hung or down."""
    path = path_of(uri)
    if path is not None:
        ask = functools.partial(_sqlite_answers, path, wait)
    elif uri.startswith(("http://", "https://")):
        ask = functools.partial(_server_answers, uri, wait)
    else:
        return False
    said: list = []
    probe = threading.Thread(target=lambda: said.append(ask()), daemon=True)  # a hung file system never returns
    probe.start()
    probe.join(wait + 1)
    return bool(said and said[0])


def _sqlite_answers(path: str, wait: float) -> bool:
    try:
        con = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=wait, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
        finally:
            con.close()
    except sqlite3.Error:
        return False
    return True


def _server_answers(uri: str, wait: float) -> bool:
    import urllib.error
    import urllib.request

    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=wait).close()
    except urllib.error.HTTPError as exc:  # an answer all the same (a proxy's 404, a login page's 401)
        exc.close()
    except (OSError, ValueError):
        return False
    return True


def looks_sound(uri: str) -> bool:
    """A cheap check (plain SQL, no MLflow import) for readers that read a local SQLite store directly:
    False when the store is being made or migrated, or damaged; the reader then goes through ``client``,
    which waits for it, repairs it or raises StoreBroken with the fix. Checked once per file per process."""
    path = path_of(uri)
    try:
        ident = (uri, os.stat(path).st_ino)
    except (TypeError, OSError):
        return True
    if ident in _sound:
        return True
    if _marker(path).exists():
        return False
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_S) as con:
            tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    except sqlite3.DatabaseError:  # busy, or damaged: ``client`` tells which
        return False
    if "alembic_version" not in tables or any(t.startswith("_alembic_tmp_") for t in tables):
        return False
    _sound.add(ident)
    return True


_sound: set = set()


@contextmanager
def locked(path: str):
    """The OS lock beside store ``path`` (``<path>.lock``), held while the store is created or migrated."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path + ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _marker(path: str) -> Path:
    return Path(path + ".migrating")


def inspect(path: str) -> dict:
    """What the file at ``path`` holds, read with plain SQL: {"state": "new" | "current" | "old" | "half",
    "version": alembic revision or None, "valuable": rows a user would miss, "why": for "half"}."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        return {"state": "new", "version": None, "valuable": 0}
    try:
        try:
            tables, version, valuable = _contents(path, "ro")
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc) or not os.path.exists(path + "-journal"):
                raise
            # a writer killed mid-transaction left a hot journal: only a read-write connection may roll it
            # back, which is SQLite's own recovery (any MLflow connection would do the same)
            tables, version, valuable = _contents(path, "rw")
    except sqlite3.OperationalError as exc:  # locked or busy: another process holds it; never a reason to touch it
        raise StoreUnavailable(uri=f"sqlite:///{path}", reason=f"the store file is busy ({exc})") from None
    except sqlite3.DatabaseError as exc:
        return {"state": "half", "version": None, "valuable": 0, "why": f"not a readable SQLite database ({exc})"}
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if leftovers:
        return {"state": "half", "version": version, "valuable": valuable,
                "why": f"a migration stopped midway (table {leftovers[0]} left behind)"}
    if not tables:
        return {"state": "new", "version": None, "valuable": 0}
    if version is None:
        return {"state": "half", "version": None, "valuable": valuable,
                "why": "its tables exist but its schema version was never written"}
    return {"state": "current" if version == head_revision() else "old", "version": version, "valuable": valuable}


def _contents(path: str, mode: str) -> tuple[set, str | None, int]:
    with sqlite3.connect(f"file:{path}?mode={mode}", uri=True, timeout=BUSY_S) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        version = None
        if "alembic_version" in tables:
            row = con.execute("SELECT version_num FROM alembic_version").fetchone()
            version = row[0] if row else None
        valuable = sum(con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in _VALUABLE if t in tables)
        if "experiments" in tables:  # the Default experiment (id 0) is made with every store
            valuable += con.execute("SELECT count(*) FROM experiments WHERE experiment_id != 0").fetchone()[0]
    return tables, version, valuable


def head_revision() -> str:
    """The schema revision this MLflow expects. MLflow has no public call for it: this is the one place
    that uses its private helper (a test fails loudly if MLflow moves it)."""
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def _prepare(uri: str, path: str) -> bool:
    """Under the lock: leave ``path`` a store MLflow opens without migrating, or none (True: MLflow is about
    to create it, still under the lock, and the marker beside it says so until it is done), or raise
    StoreBroken."""
    marker = _marker(path)
    if marker.exists():  # an earlier creation or upgrade was interrupted (the process was killed)
        _recover(uri, path, json.loads(marker.read_text() or "{}"))
    info = inspect(path)
    if info["state"] == "half":
        if info["valuable"]:
            raise StoreBroken(uri=uri, path=path, fix=(
                f"{info['why']}, by a program other than mlops-jupyter, and it holds {info['valuable']} runs, "
                f"experiments or models, so it was left as it is. Restore the copy you made before that migration "
                f"over {path}, or move the file aside (mv {path} {path}.broken) so that a new store is made; "
                f"its runs stay readable there with sqlite3."))
        _set_aside(path, f"it was left half-made ({info['why']}) and held no runs")
        info = {"state": "new"}
    if info["state"] == "old":
        _upgrade(uri, path, info["version"], info["valuable"])
        info = inspect(path)  # "new" when an empty store's upgrade failed and it was set aside
    if info["state"] != "new":
        return False
    marker.write_text(json.dumps({"from": None}))
    return True


def _recover(uri: str, path: str, note: dict) -> None:
    backup = note.get("backup")
    if backup and os.path.isfile(backup):
        _set_aside(path, "an upgrade of its schema was interrupted; it is put back from the backup taken before")
        _copy(backup, path)
    elif not inspect(path)["valuable"]:
        _set_aside(path, "its creation was interrupted before it held any runs")
    else:
        raise StoreBroken(uri=uri, path=path, fix=(
            f"its schema upgrade was interrupted and the backup {backup or '(none)'} is gone; restore a copy of "
            f"{path} from before the upgrade, then remove {_marker(path)}."))
    _marker(path).unlink(missing_ok=True)


def _set_aside(path: str, why: str) -> None:
    aside = f"{path}.broken-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.replace(path + suffix, aside + suffix)
    print(f"mlops: the tracking store {path} was moved to {aside} ({why}); a new one is made in its place.",
          file=sys.stderr, flush=True)


def _copy(src: str, dest: str) -> None:
    """A consistent copy of SQLite database ``src`` (SQLite's backup API: safe while others read it)."""
    s, d = sqlite3.connect(f"file:{src}?mode=ro", uri=True, timeout=30), sqlite3.connect(dest)
    try:
        s.backup(d)
    finally:
        d.close()
        s.close()


def _upgrade(uri: str, path: str, version: str, valuable: int) -> None:
    """Migrate an older schema to this MLflow's, after a backup, with MLflow's own upgrade command."""
    backup = f"{path}.backup-{version}-{time.strftime('%Y%m%d-%H%M%S')}"
    _copy(path, backup)
    _marker(path).write_text(json.dumps({"from": version, "backup": backup}))
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "mlflow", "db", "upgrade", uri], capture_output=True, text=True,
                          env=env)
    if done.returncode != 0:
        last = next((ln for ln in reversed(done.stderr.splitlines()) if ln.strip()), "no output")
        _set_aside(path, f"its schema upgrade failed ({last[:200]})")
        _marker(path).unlink(missing_ok=True)
        if not valuable:
            return  # nothing to keep: MLflow makes a new one
        _copy(backup, path)
        raise StoreError(f"the tracking store {uri} is at an older MLflow schema ({version}) and upgrading it failed "
                         f"({last[:300]}); it was put back as it was (a copy is at {backup}).", uri=uri)
    _marker(path).unlink(missing_ok=True)
    print(f"mlops: the tracking store {path} was upgraded from schema {version} to this MLflow's "
          f"(a copy from before is at {backup}).", file=sys.stderr, flush=True)
