"""``mlops reproduce RUN_ID``: re-execute a tracked run from its recorded state and compare.

The run's code state (git commit + the dirty diff it recorded) is checked out into a scratch git
worktree, its data snapshots are restored from their project's DVC cache or remote, and its notebook
is executed with papermill up to the run's cell with the run's parameters. The new run lands in the
same store, tagged ``mlops.reproduces``.

A run may use two projects: a notebook that changes into another git/DVC project for its data
(``%cd``) records both in ``mlops.projects``. Data of the notebook's own project is restored in its
worktree. Data the run read from another project is restored where the notebook reads it, in that
project (its code stays as it is, since the notebook only reads data there), and put back afterwards;
a path there with changes that are in no snapshot is never overwritten. Whatever cannot be restored is
said in one line, and nothing is executed then.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Settings, ensure_state_dir
from ..errors import MlopsError
from . import tags as T
from .capture import literal_assignments
from .query import get_runs

PARAM_TAGS = {"parameters", "pipeline-parameters"}


@dataclass
class Reproduction:
    original: str
    new: str | None
    metrics: dict = field(default_factory=dict)  # name -> (original, new)
    verdict: str = ""
    notebook: str = ""  # the executed notebook, kept for inspection
    notes: list = field(default_factory=list)


def _git(root: Path, *args: str) -> str:
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise MlopsError(f"git {args[0]} failed while preparing the reproduction: {out.stderr.strip()}")
    return out.stdout


def _value(text: str):
    """A logged param back to the Python value the notebook had (params are stored as text)."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError, TypeError):
            continue
    return text


def _truncated_notebook(src: Path, dest: Path, cell_id: str | None, source: str | None) -> set:
    """Copy the notebook up to the run's cell; returns the names its parameters cell defines."""
    import nbformat

    nb = nbformat.read(src, as_version=4)
    end = next((i for i, c in enumerate(nb.cells) if cell_id and c.get("id") == cell_id), None)
    if end is None and source:
        end = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and source.strip()
                    in c.source), None)
    if end is None:
        raise MlopsError(f"the run's cell is no longer in {src.name} at the run's commit; cannot tell where "
                         "to stop executing.")
    nb.cells = nb.cells[: end + 1]
    names = set()
    for cell in nb.cells:
        if PARAM_TAGS & set(cell.metadata.get("tags", [])):
            names |= set(literal_assignments(cell.source))
    nbformat.write(nb, dest)
    return names


def reproduce(settings: Settings, run_id: str, timeout: float = 1800) -> Reproduction:
    (run,) = get_runs(settings, [run_id])
    tags, rid = run.data.tags, run.info.run_id
    notebook = tags.get(T.NOTEBOOK)
    if not notebook:
        raise MlopsError(f"run {rid} has no notebook path (it ran outside a saved notebook), so there is "
                         "nothing to re-execute; reproduce runs tracked from a notebook in JupyterLab or papermill.")
    projects = _projects(tags, settings.project_root)
    code = projects[0]
    root, commit = Path(code["root"]), code.get("commit")
    if not commit:
        raise MlopsError(f"run {rid} recorded no git commit (its project {root} was not a git repository), so its "
                         "code state cannot be checked out.")
    try:
        nb_rel = Path(notebook).resolve().relative_to(root)
    except ValueError:
        raise MlopsError(f"run {rid}'s notebook {notebook} is outside this project {root}; run reproduce "
                         "from the project it belongs to.") from None
    _check_commit(rid, "code", root, commit)
    sources = _data_sources(rid, tags, projects)  # before anything is checked out: what cannot be restored
    result = Reproduction(original=rid, new=None)
    scratch = Path(tempfile.mkdtemp(prefix=f"mlops-reproduce-{rid[:8]}-"))
    worktree = scratch / "tree"
    put_back: list = []
    _git(root, "worktree", "add", "--detach", "-q", str(worktree), commit)
    try:
        if code.get("dirty"):
            result.notes.append(_apply_recorded_diff(settings, rid, worktree))
        result.notes += _restore_data(rid, sources, root, worktree, _reads(tags), put_back)
        wt_nb = worktree / nb_rel
        if not wt_nb.exists():
            raise MlopsError(f"{nb_rel} is not in commit {commit[:8]}: was the notebook committed before the run?")
        source = _cell_source(settings, rid)
        names = _truncated_notebook(wt_nb, wt_nb, tags.get(T.CELL_ID), source)
        params = {k: _value(v) for k, v in run.data.params.items() if k in names}
        out_nb = ensure_state_dir(root) / "reproduce" / f"{rid}.ipynb"
        out_nb.parent.mkdir(exist_ok=True)
        token = uuid.uuid4().hex
        # the new run names the original notebook (not the scratch copy) and the run it reproduces
        run_tags = {"mlops.reproduces": rid, "mlops.reproduction": token, T.NOTEBOOK: notebook,
                    "mlflow.source.name": notebook}
        hidden = _hidden_state(tags, rid)
        try:
            _execute(wt_nb, out_nb, params, settings, timeout, run_tags)
        except MlopsError as exc:
            raise MlopsError(f"{exc}{' ' + hidden if hidden else ''}") from None
        result.notebook = str(out_nb)
        new = _new_run(settings, token, worktree)
        result.new = new.info.run_id
        result.metrics = {k: (v, new.data.metrics.get(k)) for k, v in sorted(run.data.metrics.items())}
        result.verdict = verdict(result.metrics)
        _record(settings, rid, result.new, out_nb, result.verdict)
        if hidden and result.verdict != "match":
            result.notes.append(hidden)
    finally:
        result.notes += _put_back(put_back)
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(worktree)], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    return result


def _hidden_state(tags: dict, run_id: str) -> str:
    """Where a difference comes from when the original run read hidden state ('' when it did not)."""
    said = tags.get(T.HIDDEN_STATE)
    if not said:
        return ""
    return (f"The original run {said} (what its kernel ran before it: runs:/{run_id}/cell/execution_order.json); "
            "this replay ran the notebook top to bottom in a fresh kernel, so the difference comes from there.")


def verdict(metrics: dict) -> str:
    if not metrics:
        return "no metrics to compare"
    missing = [k for k, (_, new) in metrics.items() if new is None]
    if missing:
        return f"differ: the new run has no {', '.join(missing)}"
    diffs = {k: abs(new - old) for k, (old, new) in metrics.items()}
    worst = max(diffs, key=diffs.get)
    old, new = metrics[worst]
    if diffs[worst] <= 1e-9 * max(1.0, abs(old)):
        return "match"
    rel = diffs[worst] / abs(old) if old else float("inf")
    return f"differ: {worst} by {diffs[worst]:.6g} ({rel:.2%})"


def _cell_source(settings: Settings, run_id: str) -> str | None:
    from mlflow import MlflowClient

    try:
        return Path(MlflowClient(settings.tracking_uri).download_artifacts(run_id, "cell/source.py")).read_text()
    except Exception:  # noqa: BLE001 - the cell id usually suffices
        return None


def _apply_recorded_diff(settings: Settings, run_id: str, worktree: Path) -> str:
    from mlflow import MlflowClient

    try:
        patch = MlflowClient(settings.tracking_uri).download_artifacts(run_id, "git/diff.patch")
    except Exception:  # noqa: BLE001
        return "the run's code had uncommitted changes but no diff was recorded: reproducing the commit as is"
    if Path(patch).stat().st_size:
        _git(worktree, "apply", "--whitespace=nowarn", patch)
    return "applied the run's uncommitted changes (git/diff.patch) on top of its commit"


def _projects(tags: dict, here: Path) -> list[dict]:
    """[{root, commit, dirty, paths?}] of the projects the run used, its notebook's first. A run recorded
    before runs named their projects used this one (``here``) for both code and data."""
    try:
        found = json.loads(tags.get(T.PROJECTS) or "null")
    except ValueError:
        found = None
    if not found:
        return [{"root": str(here), "commit": tags.get(T.GIT_COMMIT), "dirty": tags.get(T.GIT_DIRTY) == "true"}]
    if not Path(found[0]["root"]).is_dir() and Path(here).is_dir():  # the project moved (or a clone): use this one
        found[0] = {**found[0], "root": str(here)}
    return found


def _check_commit(rid: str, what: str, root: Path, commit: str) -> None:
    out = subprocess.run(["git", "-C", str(root), "cat-file", "-e", f"{commit}^{{commit}}"], capture_output=True)
    if out.returncode != 0:
        raise MlopsError(f"cannot reproduce run {rid}: the {what} commit {commit[:8]} it used is not in the history "
                         f"of {root} (rewritten, or made in another clone); nothing was executed.")


def _data_sources(rid: str, tags: dict, projects: list[dict]) -> list[tuple[str, str, dict, str]]:
    """(path, md5, project, rev) of each snapshot the run recorded: the project that holds it and the commit
    of its .dvc file at that md5. Raises, in one line, for the first one that cannot be restored."""
    from ..data import tag_key

    prefix = tag_key("")
    sources = []
    for path, md5 in sorted((k[len(prefix):], v) for k, v in tags.items() if k.startswith(prefix)):
        named = [p for p in projects if path in p.get("paths", ())]
        reasons = []
        for project in named or projects:
            root = Path(project["root"])
            if not root.is_dir():
                reasons.append(f"its project {root} no longer exists")
                continue
            rev = _commit_with_md5(root, f"{path}.dvc", md5)
            if rev is None:
                reasons.append(f"no commit of {root} records that version")
                continue
            sources.append((path, md5, project, rev))
            break
        else:
            raise MlopsError(f"cannot reproduce run {rid}: its data {path} (md5 {md5[:8]}) cannot be restored: "
                             f"{'; '.join(reasons)}; nothing was executed.")
    return sources


def _reads(tags: dict) -> set | None:
    """The snapshotted paths the run read; None for a run recorded before runs said so (all count then)."""
    from ..data import read_key

    if T.PROJECTS not in tags:
        return None
    prefix = read_key("")
    return {k[len(prefix):] for k in tags if k.startswith(prefix)}


def _restore_data(rid: str, sources: list, code_root: Path, code_tree: Path, reads: set | None,
                  put_back: list) -> list[str]:
    """Each snapshot the run recorded, restored from its project's cache/remote: in the code worktree when the
    notebook's project holds it; in its own project when the run read it from another one (``put_back``
    collects what to undo there)."""
    from ..data import restore
    from ..data.scope import read_dvc_file

    notes = []
    for path, md5, project, rev in sources:
        root = Path(project["root"])
        try:
            if root == code_root:
                if not (code_tree / ".dvc").is_dir():
                    raise MlopsError(f"its data {path} is versioned by DVC in {root}, but the commit it checked out "
                                     "has no .dvc/ folder.")
                _share_cache(root, code_tree)
                restore(path, rev=rev, force=True, root=code_tree)
                notes.append(f"restored {path} (md5 {md5[:8]})")
                continue
            if reads is not None and path not in reads:
                continue  # in that project's scope, never read: left as it is
            dvcfile = root / f"{path}.dvc"
            before = dvcfile.read_text() if dvcfile.exists() else None
            now = read_dvc_file(before) if before else None
            back = _commit_with_md5(root, f"{path}.dvc", now["md5"]) if now and now["md5"] != md5 else None
            if now and now["md5"] != md5 and back is None:
                raise MlopsError(f"{path} in {root} holds a version (md5 {now['md5'][:8]}) that no commit records, "
                                 "so it could not be put back after the run; snapshot it first.")
            restore(path, rev=rev, root=root)  # not forced: changes that are in no snapshot stop it
            if before is not None and (root / f"{path}.dvc").read_text() != before:
                put_back.append((root, path, back, before))
            if now and now["md5"] == md5:
                notes.append(f"{path} in project {root} is the version the run read (md5 {md5[:8]})")
            else:
                notes.append(f"restored {path} (md5 {md5[:8]}) in project {root}, where the run read it"
                             + (f"; it goes back to md5 {now['md5'][:8]} afterwards" if back else ""))
        except MlopsError as exc:
            raise MlopsError(f"cannot reproduce run {rid}: in project {root}, {exc} Nothing was executed.") from None
        except Exception as exc:  # noqa: BLE001 - DVC or the filesystem: one line, never its traceback
            first = (str(exc).strip().splitlines() or [""])[0]
            raise MlopsError(f"cannot reproduce run {rid}: restoring {path} from {root} failed "
                             f"({type(exc).__name__}: {first}); nothing was executed.") from None
    return notes


def _put_back(put_back: list) -> list[str]:
    """Another project's data as it was before the reproduction (its .dvc file byte for byte)."""
    from ..data import restore

    notes = []
    for root, path, rev, text in put_back:
        try:
            if rev:
                restore(path, rev=rev, force=True, root=root)
            (root / f"{path}.dvc").write_text(text)
            notes.append(f"put {path} in {root} back as it was")
        except Exception as exc:  # noqa: BLE001 - the reproduction's result stands; say what is left to do
            notes.append(f"could not put {path} in {root} back ({type(exc).__name__}: {exc}); its .dvc file "
                         "and git history say which version it held")
    return notes


def _share_cache(root: Path, tree: Path) -> None:
    """The worktree uses its project's DVC cache (and local remote): no copy of the data."""
    from dvc.repo import Repo

    if (root / ".dvc" / "config.local").exists():
        shutil.copy(root / ".dvc" / "config.local", tree / ".dvc" / "config.local")
    repo = Repo(str(tree))
    try:
        with repo.config.edit("local") as conf:
            conf["cache"]["dir"] = str(root / ".dvc" / "cache")
    finally:
        repo.close()


def _commit_with_md5(root: Path, dvc_rel: str, md5: str) -> str | None:
    out = subprocess.run(["git", "-C", str(root), "log", "--all", "--format=%H", "--", dvc_rel], capture_output=True,
                         text=True)
    for rev in out.stdout.split() if out.returncode == 0 else []:
        if md5 in subprocess.run(["git", "-C", str(root), "show", f"{rev}:{dvc_rel}"], capture_output=True,
                                 text=True).stdout:
            return rev
    return None


def _execute(nb: Path, out: Path, params: dict, settings: Settings, timeout: float, run_tags: dict) -> None:
    import papermill

    env = {"MLOPS_TRACKING_URI": settings.tracking_uri, "MLOPS_NOTEBOOK": str(nb),
           "MLOPS_RUN_TAGS": json.dumps(run_tags)}
    if settings.artifact_location:
        env["MLOPS_ARTIFACT_LOCATION"] = settings.artifact_location
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits them: its runs land in the original store
    try:
        papermill.execute_notebook(str(nb), str(out), parameters=params, cwd=str(nb.parent),
                                   progress_bar=False, execution_timeout=timeout, engine_name="mlops")
    except papermill.PapermillExecutionError as exc:
        raise MlopsError(f"re-executing the notebook failed in cell {exc.exec_count}: {exc.ename}: {exc.evalue}; "
                         f"the executed notebook is {out}.") from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _new_run(settings: Settings, token: str, worktree: Path):
    """The reproduction's run, once its recorder has written it (it finishes after the kernel exits)."""
    from .query import runs_tagged

    journal = worktree / ".mlops" / "journal"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        pending = list(journal.glob("*.jsonl")) if journal.exists() else []
        runs = runs_tagged(settings, "mlops.reproduction", token)
        if runs and not pending and all(r["status"] != "RUNNING" for r in runs):
            return get_runs(settings, [runs[0]["run_id"]])[0]
        time.sleep(0.2)
    raise MlopsError("the re-executed notebook recorded no finished run within 2 minutes; is its cell tracked "
                     "(%%mlops run)?")


def _record(settings: Settings, original: str, new: str, executed: Path, said: str) -> None:
    """Through the journal: the executed copy of the notebook, as an artifact of the reproduction's run, and
    the verdict on the original run (the sidebar's replayed badge)."""
    from .records import Recording

    rec = Recording(settings)
    rec.files(None, [(executed, "reproduction")], run_id=new)
    rec.log(run_id=original, tags={T.REPLAYED: f"{said} · replayed by run {new}"})
    rec.close(timeout=60)
