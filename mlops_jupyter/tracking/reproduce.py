"""``mlops reproduce RUN_ID``: re-execute a tracked run from its recorded state and compare.

The run's code state (git commit + the dirty diff it recorded) is checked out into a scratch git
worktree, its data snapshots are restored there from the project's DVC cache or remote, and its
notebook is executed with papermill up to the run's cell with the run's parameters. The new run
lands in the same store, tagged ``mlops.reproduces``.
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
    commit = tags.get(T.GIT_COMMIT)
    root = settings.project_root
    if not commit:
        raise MlopsError(f"run {rid} recorded no git commit (its project was not a git repository), so its "
                         "code state cannot be checked out.")
    try:
        nb_rel = Path(notebook).resolve().relative_to(root)
    except ValueError:
        raise MlopsError(f"run {rid}'s notebook {notebook} is outside this project {root}; run reproduce "
                         "from the project it belongs to.") from None
    result = Reproduction(original=rid, new=None)
    scratch = Path(tempfile.mkdtemp(prefix=f"mlops-reproduce-{rid[:8]}-"))
    worktree = scratch / "tree"
    _git(root, "worktree", "add", "--detach", "-q", str(worktree), commit)
    try:
        if tags.get(T.GIT_DIRTY) == "true":
            result.notes.append(_apply_recorded_diff(settings, rid, worktree))
        result.notes += _restore_data(root, worktree, tags)
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
        _keep_executed(settings, new.info.run_id, out_nb)
        result.new = new.info.run_id
        result.metrics = {k: (v, new.data.metrics.get(k)) for k, v in sorted(run.data.metrics.items())}
        result.verdict = verdict(result.metrics)
        if hidden and result.verdict != "match":
            result.notes.append(hidden)
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(worktree)],
                       capture_output=True)
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


def _restore_data(root: Path, worktree: Path, tags: dict) -> list[str]:
    """Each snapshot the run recorded, checked out in the worktree from the project's cache/remote."""
    from ..data import restore, tag_key

    paths = [k[len(tag_key("")):] for k in tags if k.startswith(tag_key(""))]
    if not paths:
        return []
    if (root / ".dvc" / "config.local").exists():
        shutil.copy(root / ".dvc" / "config.local", worktree / ".dvc" / "config.local")
    from dvc.repo import Repo

    repo = Repo(str(worktree))
    with repo.config.edit("local") as conf:
        conf["cache"]["dir"] = str(root / ".dvc" / "cache")  # share the project's cache: no copy of the data
    repo.close()
    notes = []
    for path in paths:
        md5 = tags[tag_key(path)]
        rev = _commit_with_md5(worktree, f"{path}.dvc", md5)
        restore(path, rev=rev, force=True, root=worktree)
        notes.append(f"restored {path} (md5 {md5[:8]})")
    return notes


def _commit_with_md5(root: Path, dvc_rel: str, md5: str) -> str:
    for rev in _git(root, "log", "--all", "--format=%H", "--", dvc_rel).split():
        if md5 in subprocess.run(["git", "-C", str(root), "show", f"{rev}:{dvc_rel}"], capture_output=True,
                                 text=True).stdout:
            return rev
    raise MlopsError(f"no commit holds the snapshot of {dvc_rel[:-4]} with md5 {md5}; it cannot be restored.")


def _execute(nb: Path, out: Path, params: dict, settings: Settings, timeout: float, run_tags: dict) -> None:
    import papermill

    from ..quiet import kernel_manager_class

    env = {"MLOPS_TRACKING_URI": settings.tracking_uri, "MLOPS_NOTEBOOK": str(nb),
           "MLOPS_RUN_TAGS": json.dumps(run_tags)}
    if settings.artifact_location:
        env["MLOPS_ARTIFACT_LOCATION"] = settings.artifact_location
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits them: its runs land in the original store
    try:
        papermill.execute_notebook(str(nb), str(out), parameters=params, cwd=str(nb.parent),
                                   progress_bar=False, execution_timeout=timeout,
                                   kernel_manager_class=kernel_manager_class())
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


def _keep_executed(settings: Settings, run_id: str, executed: Path) -> None:
    """The executed copy of the notebook, as an artifact of the reproduction's run (through the journal)."""
    from .records import Recording

    rec = Recording(settings)
    rec.files(None, [(executed, "reproduction")], run_id=run_id)
    rec.close(timeout=60)
