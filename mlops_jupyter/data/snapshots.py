"""Snapshot, list and restore data with DVC's Python API (``dvc.repo.Repo``).

A snapshot makes a path a DVC-tracked version and commits its .dvc file (and .gitignore entry) in a
commit of its own: ``git commit --only`` takes exactly those files, so the user's other staged work
stays staged and out of it. Every failure puts the working tree back as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import STATE_DIR, ensure_state_dir, find_project_root
from ..errors import Conflict, InvalidInput, MlopsError, NotFound, StoreError, UnsnapshottedChanges
from .scope import in_scope, read_dvc_file, read_key, tag_key

LOCAL_REMOTE = "mlops-local"
CACHE_TYPES = "reflink,copy"
FALLBACK_IDENTITY = {"GIT_AUTHOR_NAME": "mlops-jupyter", "GIT_AUTHOR_EMAIL": "mlops-jupyter@localhost",
                     "GIT_COMMITTER_NAME": "mlops-jupyter", "GIT_COMMITTER_EMAIL": "mlops-jupyter@localhost"}


@dataclass
class Snapshot:
    path: str  # relative to the project root, posix
    md5: str
    size: int | None = None
    nfiles: int | None = None
    rev: str | None = None  # the git commit holding this version's .dvc file
    message: str = ""
    time_ms: int | None = None
    unchanged: bool = False
    notes: list = field(default_factory=list)  # set-up done on the way (git init, dvc init)
    pushed_to: str | None = None
    runs: list = field(default_factory=list)  # runs that read (or made) this version
    root: str = ""  # the project (git repo) holding it
    current: bool = False  # the version the workspace's .dvc file records now (set by list_snapshots)

    @property
    def id(self) -> str:
        return f"{(self.rev or 'uncommitted')[:8]}-{self.md5[:8]}"


# ---- git ---------------------------------------------------------------------------------
def _git(root: Path, *args: str, check: bool = True) -> str:
    env = dict(os.environ)
    if args[0] == "commit" and not _has_identity(root):  # only a commit needs one: no extra git call otherwise
        env.update(FALLBACK_IDENTITY)
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, env=env, timeout=300)
    except FileNotFoundError:
        raise MlopsError("git is not installed, and snapshots are versioned in git; install it "
                         "(e.g. `apt-get install git`) and try again.") from None
    if check and out.returncode != 0:
        raise MlopsError(f"git {' '.join(args[:2])} failed in {root}: {out.stderr.strip() or out.stdout.strip()}")
    return out.stdout


def _has_identity(root: Path) -> bool:
    out = subprocess.run(["git", "-C", str(root), "config", "user.email"], capture_output=True, text=True)
    return bool(out.stdout.strip())


def _tracked_by_git(root: Path, rel: str) -> bool:
    return bool(_git(root, "ls-files", "--", rel).strip())


# ---- DVC ---------------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet():
    """DVC talks to the terminal ("To track the changes with git, run: ..."): we say it ourselves.
    Its console is switched off rather than stdout redirected, so our own progress line still shows."""
    from dvc.ui import ui

    logger = logging.getLogger("dvc")
    level, enabled = logger.level, ui._enabled
    logger.setLevel(logging.ERROR)
    ui._enabled = False
    try:
        yield
    finally:
        logger.setLevel(level)
        ui._enabled = enabled


def open_repo(root: Path, create: bool = False):
    """The project's DVC repo; with ``create``, set one up (and git, if absent) the first time."""
    notes = []
    if shutil.which("git") is None:
        raise MlopsError("git is not installed, and snapshots are versioned in git; install it "
                         "(e.g. `apt-get install git`) and try again.")
    if not (root / ".git").exists():
        if not create:
            raise NotFound(f"{root} is not a git repository, so it holds no snapshots yet.", what="snapshots",
                           project=str(root))
        _git(root, "init", "-q")
        notes.append(f"initialised a git repository in {root} (there was none)")
    from dvc.repo import Repo

    if not (root / ".dvc").is_dir():
        if not create:
            raise NotFound(f"{root} has no DVC repository, so it holds no snapshots yet.", what="snapshots",
                           project=str(root))
        with _quiet():
            repo = Repo.init(str(root))
            with repo.config.edit("repo") as conf:
                # said outright (it is DVC's default too): a copy-on-write clone where the filesystem can, so a
                # snapshot costs one read of the data there; a project that set its own cache.type keeps it
                conf["cache"]["type"] = CACHE_TYPES
        files = [f for f in (".dvc/config", ".dvc/.gitignore", ".dvcignore") if (root / f).exists()]
        _git(root, "add", "--", *files)
        _git(root, "commit", "-q", "--only", "-m", "mlops: initialise DVC", "--", *files)
        notes.append("initialised DVC in the project")
    else:
        repo = Repo(str(root))
    if LOCAL_REMOTE not in repo.config["remote"]:
        # the embedded default; an absolute path is this machine's business, so config.local, never git.
        # It is not made the default: a remote the user sets with `dvc remote add -d` wins.
        url = root / STATE_DIR / "dvc-remote"
        with repo.config.edit("local") as conf:
            conf["remote"][LOCAL_REMOTE] = {"url": str(url)}
        if not repo.config["core"].get("remote"):
            notes.append(f"set up a local DVC remote at {url}")
    return repo, notes


def _remote(repo) -> str:
    """The user's default DVC remote if they set one, else the embedded local one."""
    return repo.config["core"].get("remote") or LOCAL_REMOTE


def _remote_url(repo) -> str | None:
    return repo.config["remote"].get(_remote(repo), {}).get("url")


# ---- paths and the stat index (unchanged data is never hashed twice) -------------------------
def _resolve(root: Path, path: str | os.PathLike) -> tuple[Path, str]:
    target = Path(path)
    if not target.is_absolute():  # relative to where the user is, when that is inside the project
        target = (Path.cwd() if Path.cwd().resolve().is_relative_to(root) else root) / target
    target = target.resolve()
    if not target.is_relative_to(root):
        raise InvalidInput(f"{path} is outside the project {root}; snapshot paths inside it "
                           "(the project root is the nearest folder with pyproject.toml or .git).", path=str(path),
                           project=str(root))
    rel = target.relative_to(root).as_posix()
    if rel == "." or rel.split("/")[0] in (".git", ".dvc", STATE_DIR):
        raise InvalidInput(f"{path} is the project itself or its own state; snapshot a data file or folder in it.",
                           path=str(path), project=str(root))
    return target, rel


def _root_of(path: str | os.PathLike) -> Path:
    """Data belongs to the project we work in (the nearest folder upward from here with
    pyproject.toml or .git, else this folder), or to another existing project that holds it.
    Never a folder nobody made a project: a snapshot there would start a git repo in it."""
    target, here = Path(path).resolve(), find_project_root(Path.cwd())
    if target.is_relative_to(here):
        return here
    root = find_project_root(target.parent)
    if (root / "pyproject.toml").is_file() or (root / ".git").exists():
        return root
    raise InvalidInput(f"{path} is outside the project {here}; snapshot paths inside it (the project root is "
                       "the nearest folder with pyproject.toml or .git, else the folder you work in).", path=str(path),
                       project=str(here))


def _signature(target: Path) -> str:
    """Size, mtime and inode of every file: equal signatures mean unchanged data (no re-hash)."""
    stats = []
    files = [target] if target.is_file() else sorted(p for p in target.rglob("*") if p.is_file())
    for f in files:
        st = f.stat()
        stats.append((f.relative_to(target.parent).as_posix(), st.st_size, st.st_mtime_ns, st.st_ino))
    return hashlib.sha1(json.dumps(stats).encode()).hexdigest()


def _index_path(root: Path) -> Path:
    return root / STATE_DIR / "data-index.json"


def _index(root: Path) -> dict:
    try:
        return json.loads(_index_path(root).read_text())
    except (OSError, ValueError):
        return {}


def _remember(root: Path, rel: str, signature: str, md5: str) -> None:
    index = _index(root)
    index[rel] = {"signature": signature, "md5": md5}
    path = _index_path(root)
    ensure_state_dir(root)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, path)


def _last_commit(root: Path, dvcfile: str) -> str | None:
    rev = _git(root, "log", "-1", "--format=%H", "--", dvcfile, check=False).strip()
    return rev or None


def _committed(root: Path, dvcfile: str) -> bool:
    """The working-tree .dvc file equals the committed one."""
    return not _git(root, "status", "--porcelain", "--", dvcfile).strip()


def _size(target: Path) -> int:
    return target.stat().st_size if target.is_file() else sum(p.stat().st_size for p in target.rglob("*")
                                                              if p.is_file())


# ---- snapshot ----------------------------------------------------------------------------
def snapshot(path: str | os.PathLike, message: str | None = None, push: bool = False,
             root: str | os.PathLike | None = None, progress=None) -> Snapshot:
    """Make ``path`` a DVC-tracked version committed to git; returns the snapshot.

    ``progress(done_bytes, total_bytes)``, if given, is called from a worker thread while DVC
    hashes and copies large data."""
    root = Path(root).resolve() if root else _root_of(path)
    target, rel = _resolve(root, path)
    if not target.exists():
        raise NotFound(f"{path} does not exist; give a file or folder inside the project {root}.", what="path",
                       path=str(path))
    if (root / ".git").exists() and shutil.which("git") and _tracked_by_git(root, rel):
        raise Conflict(f"{rel} is tracked by git itself; DVC versions it instead. Stop tracking it in git "
                       f"first: `git rm -r --cached {rel} && git commit -m 'move {rel} to DVC'`, then snapshot.",
                       what="tracked by git", path=rel)
    ensure_state_dir(root)  # before DVC: its local remote lives in .mlops/ too
    repo, notes = open_repo(root, create=True)
    dvcfile, ignore = root / f"{rel}.dvc", target.parent / ".gitignore"
    before = {p: (p.read_text() if p.exists() else None) for p in (dvcfile, ignore)}
    dvc_rel, ignore_rel = f"{rel}.dvc", ignore.relative_to(root).as_posix()
    signature = _signature(target)  # taken before hashing: a change meanwhile makes the next snapshot hash again
    known = _index(root).get(rel)
    prev = read_dvc_file(before[dvcfile]) if before[dvcfile] else None
    try:
        if prev and known and known["signature"] == signature and known["md5"] == prev["md5"] \
                and _committed(root, dvc_rel):
            snap = Snapshot(rel, prev["md5"], prev["size"], prev["nfiles"], _last_commit(root, dvc_rel),
                            unchanged=True)
        else:
            if target.is_file():
                _cache_in_one_pass(repo, target, progress)
            with _quiet(), _progress(None if target.is_file() else progress, _size(target)):
                repo.add([str(target)], relink=False)  # a file cached above: DVC only writes the .dvc file
            info = read_dvc_file(dvcfile.read_text())
            if prev and prev["md5"] == info["md5"] and _committed(root, dvc_rel):
                snap = Snapshot(rel, info["md5"], info["size"], info["nfiles"], _last_commit(root, dvc_rel),
                                unchanged=True)
            else:
                msg = message or f"mlops: snapshot {rel}"
                files = [f for f in (dvc_rel, ignore_rel) if (root / f).exists()]
                _git(root, "add", "--", *files)
                _git(root, "commit", "-q", "--only", "-m", msg, "-m", f"mlops-snapshot: {rel} {info['md5']}",
                     "--", *files)
                snap = Snapshot(rel, info["md5"], info["size"], info["nfiles"], _last_commit(root, dvc_rel), msg)
    except BaseException as exc:
        _put_back(root, before, [dvc_rel, ignore_rel])
        _raise_clearly(exc, f"DVC could not snapshot {rel}", "nothing was changed")
    finally:
        repo.close()
    _remember(root, rel, signature, snap.md5)
    snap.notes, snap.time_ms, snap.root = notes, int(time.time() * 1000), str(root)
    if push:
        snap.pushed_to = push_snapshot(root, rel)
    return snap


CHUNK = 4 << 20


def _cache_in_one_pass(repo, target: Path, progress=None) -> str:
    """Put a file in DVC's cache reading it once. Where the project's cache.type allows a reflink and the
    filesystem makes one, the cache object is a copy-on-write clone (no bytes copied). Otherwise the
    kernel's own copy (shutil.copyfile -> sendfile) runs beside the hashing instead of after it (DVC on its
    own hashes, then copies) when a core is free for it; where every core is busy the two threads only slow
    each other, so it runs after, and not at all when the cache already holds the object. DVC's state then
    learns the hash, so its own ``add`` finds the object cached and the file already hashed. The file
    itself is hashed, not the clone: its pages are the ones likely in memory (a clone is a new inode, read
    from disk); a change to it meanwhile is caught by its size and mtime."""
    import threading
    import uuid

    from dvc_data.hashfile.hash_info import HashInfo
    from dvc_objects.fs.system import reflink

    cache = Path(repo.cache.local.path)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".mlops-{uuid.uuid4().hex}.tmp"
    before = target.stat()
    total, done, md5, failed, copier, cloned = before.st_size, 0, hashlib.md5(), [], None, False
    if repo.cache.local.cache_types[:1] == ["reflink"]:
        try:
            reflink(target, tmp)
            cloned = True
        except OSError:
            pass  # no reflinks on this filesystem (or across two): copy

    def copy():
        try:
            shutil.copyfile(target, tmp)
        except OSError as exc:
            failed.append(exc)

    if not cloned and _spare_core():
        copier = threading.Thread(target=copy, daemon=True)
        copier.start()
    try:
        buf = bytearray(CHUNK)  # one buffer reused: no fresh memory (and page faults) per chunk
        view = memoryview(buf)
        with open(target, "rb", buffering=0) as src:
            while n := src.readinto(buf):
                md5.update(view[:n])  # releases the GIL
                done += n
                if progress:
                    progress(done, total)
    finally:
        if copier is not None:
            copier.join()
    oid = md5.hexdigest()
    dest = Path(repo.cache.local.oid_to_path(oid))
    if not cloned and copier is None and not dest.exists():
        copy()
    after = target.stat()
    if failed or (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
        tmp.unlink(missing_ok=True)
        if failed:
            raise failed[0]
        raise Conflict(f"{target.name} changed while it was being snapshotted; snapshot it again when "
                       "whatever writes it has finished.", what="changing", path=str(target))
    if dest.exists():
        tmp.unlink(missing_ok=True)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(tmp, 0o444)  # DVC keeps cache objects read-only
        os.replace(tmp, dest)
    repo.state.save(str(target), repo.fs, HashInfo("md5", oid), repo.fs.info(str(target)))
    return oid


def _spare_core() -> bool:
    """A core is idle enough to copy while another hashes (the load average says how busy they are)."""
    try:
        cores, load = len(os.sched_getaffinity(0)), os.getloadavg()[0]
    except (AttributeError, OSError):
        cores, load = os.cpu_count() or 1, 0.0
    return cores - load >= 1.5


def _raise_clearly(exc: BaseException, what: str, state: str):
    """Our own errors and interrupts pass as they are; DVC's become one sentence."""
    from dvc.exceptions import DvcException

    if isinstance(exc, DvcException):
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise MlopsError(f"{what}: {first}; {state}.") from None
    raise exc


def _put_back(root: Path, before: dict, rels: list[str]) -> None:
    """Undo a failed snapshot: the .dvc file and .gitignore as they were, nothing left staged."""
    _git(root, "reset", "-q", "--", *[r for r in rels if (root / r).exists()], check=False)
    for path, text in before.items():
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text)


@contextlib.contextmanager
def _progress(callback, total: int):
    """Report DVC's progress from the bytes this process reads (it gives no callback of its own;
    it reads the data twice: to hash it, then to copy it into its cache)."""
    if callback is None or not os.path.exists("/proc/self/io"):
        yield
        return
    import threading

    def read_bytes() -> int:
        with open("/proc/self/io") as fh:
            return int(next(line for line in fh if line.startswith("rchar:")).split()[1])

    start, stop = read_bytes(), threading.Event()

    def watch():
        while not stop.wait(0.25):
            callback(min(total, (read_bytes() - start) // 2), total)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        callback(total, total)


def push_snapshot(root: Path, rel: str) -> str:
    repo, _ = open_repo(root)
    url = _remote_url(repo)
    try:
        with _quiet():
            repo.push(targets=[str(root / f"{rel}.dvc")], remote=_remote(repo))
    except Exception as exc:  # noqa: BLE001 - DVC raises many kinds; the user needs one sentence
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise StoreError(f"the snapshot of {rel} is committed locally, but pushing it to the DVC remote "
                         f"{url} failed ({first}). Check the remote (`dvc remote list`) and push again.",
                         what="dvc remote", path=rel, remote=url) from None
    finally:
        repo.close()
    return url


# ---- history -----------------------------------------------------------------------------
def list_snapshots(path: str | os.PathLike | None = None, root: str | os.PathLike | None = None,
                   settings=None) -> list[Snapshot]:
    """Every committed version of ``path`` (or of every snapshotted path), newest first, with the
    runs that used each (when ``settings`` names a tracking store)."""
    root = Path(root).resolve() if root else _root_of(path or ".")
    if path is None:
        rels = [s["path"] for s in in_scope(root)]
    else:
        _, rel = _resolve(root, path)
        if not (root / f"{rel}.dvc").exists() and not _last_commit(root, f"{rel}.dvc"):
            raise NotFound(f"{rel} has no snapshots.", what="snapshots", path=rel)
        rels = [rel]
    snaps = []
    for rel in rels:
        log = _git(root, "log", "--format=%H%x00%ct%x00%s", "--", f"{rel}.dvc", check=False)
        for line in log.splitlines():
            rev, ts, subject = line.split("\x00")
            info = read_dvc_file(_git(root, "show", f"{rev}:{rel}.dvc", check=False))
            if info:
                snaps.append(Snapshot(rel, info["md5"], info["size"], info["nfiles"], rev, subject, int(ts) * 1000))
    now = {s["path"]: s["md5"] for s in in_scope(root)}
    for rel in rels:  # the newest commit of what the workspace records (an older one may record it too)
        first = next((s for s in snaps if s.path == rel and s.md5 == now.get(rel)), None)
        if first is not None:
            first.current = True
    if settings is not None and snaps:
        from ..tracking import runs_with_tags

        # the runs that read each version (or made it), not every run that merely had it in its project
        used = runs_with_tags(settings, sorted({read_key(s.path) for s in snaps}))
        for s in snaps:
            s.runs = [r for r in used if r["tags"].get(read_key(s.path)) == s.md5]
    return snaps


# ---- restore -----------------------------------------------------------------------------
def restore(path: str | os.PathLike, run_id: str | None = None, rev: str | None = None, force: bool = False,
            root: str | os.PathLike | None = None, settings=None) -> Snapshot:
    """Put back the exact bytes of ``path`` that run ``run_id`` used, or that git ``rev`` recorded."""
    if (run_id is None) == (rev is None):
        raise InvalidInput("restore needs exactly one of a run (the data it used) or a git revision (the data it "
                           "recorded).", path=str(path))
    root = Path(root).resolve() if root else _root_of(path)
    target, rel = _resolve(root, path)
    dvc_rel = f"{rel}.dvc"
    if run_id is not None:
        from ..tracking import get_runs

        (run,) = get_runs(settings, [run_id])
        md5 = run.data.tags.get(tag_key(rel))
        if md5 is None:
            used = sorted(k[len(tag_key("")):] for k in run.data.tags if k.startswith(tag_key("")))
            raise NotFound(f"run {run.info.run_id} used no snapshot of {rel}; "
                           + (f"it used: {', '.join(used)}." if used else "it used no snapshots at all."),
                           what="snapshot of run", run=run.info.run_id, path=rel, used=used)
        rev = _commit_with(root, dvc_rel, md5)
    text = _git(root, "show", f"{rev}:{dvc_rel}", check=False)
    wanted = read_dvc_file(text) if text else None
    if wanted is None:
        raise NotFound(f"git revision {rev} holds no snapshot of {rel}.", what="revision", rev=rev, path=rel)
    repo, _ = open_repo(root)
    dvcfile = root / dvc_rel
    before = dvcfile.read_text() if dvcfile.exists() else None
    try:
        if not force:
            _refuse_uncommitted(repo, root, target, rel, before)
        dvcfile.write_text(text)
        with _quiet():
            try:
                # objects missing from the local cache come from the remote
                repo.fetch(targets=[str(dvcfile)], remote=_remote(repo))
            except Exception:  # noqa: BLE001 - an unreachable remote is fine when the cache has it
                pass
            missing = repo.status(targets=[str(dvcfile)], cloud=False)
        if any("not in cache" in str(v) for v in missing.values()):
            raise NotFound(f"the data of {rel} at {rev[:8]} is neither in the local DVC cache nor on the "
                           f"remote {_remote_url(repo)}; nothing was changed.", what="data", path=rel, rev=rev)
        with _quiet():
            repo.checkout(targets=[str(dvcfile)], force=True)
    except BaseException as exc:
        if before is None:
            dvcfile.unlink(missing_ok=True)
        else:
            dvcfile.write_text(before)
        _raise_clearly(exc, f"DVC could not restore {rel}", f"{dvc_rel} is as it was")
    finally:
        repo.close()
    _remember(root, rel, _signature(target), wanted["md5"])
    return Snapshot(rel, wanted["md5"], wanted["size"], wanted["nfiles"], rev)


def _leaves(obj):
    """The states in DVC's nested status report ({file: [{"changed outs": {path: state}}]})."""
    if isinstance(obj, dict):
        for value in obj.values():
            yield from _leaves(value)
    elif isinstance(obj, list):
        for value in obj:
            yield from _leaves(value)
    elif isinstance(obj, str):
        yield obj


def _commit_with(root: Path, dvc_rel: str, md5: str) -> str:
    """The newest commit whose .dvc file records ``md5``."""
    for rev in _git(root, "log", "--format=%H", "--", dvc_rel, check=False).split():
        info = read_dvc_file(_git(root, "show", f"{rev}:{dvc_rel}", check=False))
        if info and info["md5"] == md5:
            return rev
    raise NotFound(f"no commit of {dvc_rel} records md5 {md5}: the snapshot that run used is not in this "
                   "repository's history (was it made on another branch or clone?).", what="commit", path=dvc_rel[:-4],
                   md5=md5)


def _refuse_uncommitted(repo, root: Path, target: Path, rel: str, dvc_text: str | None) -> None:
    if not target.exists():
        return
    if dvc_text is None:
        raise UnsnapshottedChanges(f"{rel} holds data that was never snapshotted; restoring would overwrite it.",
                                   path=rel)
    known = _index(root).get(rel)
    current = read_dvc_file(dvc_text)
    if known and current and known["md5"] == current["md5"] and known["signature"] == _signature(target):
        return  # unchanged since its snapshot: no need to hash
    with _quiet():
        status = repo.status(targets=[str(root / f"{rel}.dvc")])
    # "not in cache" only means the cache lost the object; "modified" means unsaved work
    if {"modified", "new", "deleted"} & set(_leaves(status)):
        raise UnsnapshottedChanges(f"{rel} has changes that are not in any snapshot; restoring would overwrite "
                                   "them.", path=rel)
