"""``mlops report``: what a change did to a pipeline's (or a run's) results, against a baseline.

The target is a pipeline folder (its newest run, with its steps) or a run. The baseline is a git branch (the run
of the same pipeline, or of the same cell, at the newest commit of that branch that has one, found through the
runs' commit tags), a registered model's alias holder (``NAME@ALIAS``: the run that made that version), or a run.
The report holds the metrics with their deltas, the params and data versions (snapshot md5s) that changed, the
promotion gates the target's model versions met, and plots: the metrics side by side, a curve per metric logged
at several steps, and the confusion matrices or residual plots the runs logged as images. Markdown for a pull
request (the plots as PNG files beside it), HTML for a notebook (the plots inline).
"""

from __future__ import annotations

import base64
import html
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidInput, NotFound

DEFAULT_BRANCHES = ("main", "master")
SEARCH_COMMITS = 200  # how far back a branch is searched for a commit with a run
PIPELINE_DEFINITION = "pipeline.json"


@dataclass
class Side:
    """One side of the comparison: a run, with its steps' runs for a pipeline."""
    run: object
    steps: dict = field(default_factory=dict)  # step name -> Run
    how: str = ""  # how it was found (a baseline: "branch main at 1a2b3c4")

    @property
    def run_id(self) -> str:
        return self.run.info.run_id

    @property
    def commit(self) -> str | None:
        return self.run.data.tags.get("mlops.git.commit")

    def runs(self) -> list:
        return [self.run, *self.steps.values()]

    def metrics(self) -> dict:
        out = dict(self.run.data.metrics)
        for name, run in self.steps.items():
            out.update({f"{name}.{k}": v for k, v in run.data.metrics.items()})
        return out

    def params(self) -> dict:
        out = dict(self.run.data.params)
        for name, run in self.steps.items():
            out.update({f"{name}.{k}": v for k, v in run.data.params.items() if k not in self.run.data.params})
        return out

    def data(self) -> dict:
        return {k[len("mlops.data."):]: v for k, v in self.run.data.tags.items() if k.startswith("mlops.data.")}


@dataclass
class Report:
    title: str
    target: Side
    baseline: Side | None
    metrics: list = field(default_factory=list)  # (name, baseline, current)
    params: list = field(default_factory=list)  # changed only: (name, baseline, current)
    data: list = field(default_factory=list)  # changed only: (path, baseline md5, current md5)
    gates: list = field(default_factory=list)  # {model, version, environment, gates: [{gate, passed, detail}]}
    plots: list = field(default_factory=list)  # (title, path)
    problems: list = field(default_factory=list)  # plots that could not be made, each one line
    folder: Path | None = None  # where the plots are
    drift: dict | None = None  # a serving log's drift check: {source, summary, drifted: [(column, test, stat, limit)]}

    # ---- text -----------------------------------------------------------------------------------------------
    def markdown(self, images: str | None = None, embed_plots: bool = True) -> str:
        """The report as Markdown; ``images``: the plots' folder as the Markdown file refers to it. Without
        ``embed_plots`` (a pull-request comment) the plots are named, with where the files are."""
        t, b = self.target, self.baseline
        lines = [f"## {self.title}", "",
                 f"Run `{t.run.info.run_name}` ({t.run_id[:8]}, {t.run.info.status.lower()}"
                 f"{', commit ' + t.commit[:7] if t.commit else ''})"
                 + (f" against `{b.run.info.run_name}` ({b.run_id[:8]}): {b.how}." if b else ", no baseline."), ""]
        lines += ["### Metrics", ""] + (_table(["metric", "baseline", "this run", "change"],
                                               [(f"`{n}`", _num(old), _num(new), _delta(old, new))
                                                for n, old, new in self.metrics]) if self.metrics
                                        else ["No metrics were logged."])
        unchanged = "None." if self.baseline else "No baseline to compare with."
        lines += ["", "### Params changed", ""] + (
            _table(["param", "baseline", "this run"], [(f"`{n}`", _val(o), _val(c)) for n, o, c in self.params])
            if self.params else [unchanged])
        lines += ["", "### Data changed", ""] + (
            _table(["file", "baseline md5", "this run md5"], [(f"`{p}`", _md5(o), _md5(c)) for p, o, c in self.data])
            if self.data else ["None: the same snapshots." if self.baseline else unchanged])
        if self.gates:
            lines += ["", "### Promotion gates", ""]
            for g in self.gates:
                said = "; ".join(_gate(x) for x in g["gates"])
                lines.append(f"- `{g['model']}` v{g['version']} to {g['environment']}: {said or 'no gates recorded'}")
        if self.drift:
            lines += ["", "### Drift of the served traffic", "", f"`{self.drift['source']}`: {self.drift['summary']}."]
            if self.drift["drifted"]:
                lines += [""] + _table(["column", "test", "statistic", "threshold"],
                                       [(f"`{c}`", t, _num(x), _num(limit)) for c, t, x, limit in self.drift["drifted"]])
        if self.plots or self.problems:
            lines += ["", "### Plots", ""]
            for title, path in self.plots:
                where = f"{images.rstrip('/')}/{Path(path).name}" if images is not None else str(path)
                lines.append(f"![{title}]({where})" if embed_plots else f"- {title}: `{Path(path).name}`")
            if self.plots and not embed_plots:
                lines.append(f"\nThe plots are PNG files in `{self.folder.name if self.folder else ''}/` beside "
                             "the report (in CI: the workflow run's artifacts).")
            lines += [f"- plot not made: {p}" for p in self.problems]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        """The report as one HTML fragment (a notebook's output): tables, and the plots inline."""
        t, b = self.target, self.baseline
        parts = [f"<h3>{html.escape(self.title)}</h3><p>Run <code>{html.escape(t.run.info.run_name or '')}</code> "
                 f"({t.run_id[:8]}) " + (f"against <code>{html.escape(b.run.info.run_name or '')}</code> "
                                         f"({b.run_id[:8]}): {html.escape(b.how)}" if b else "with no baseline")
                 + ".</p>"]

        def table(title, header, rows, empty):
            parts.append(f"<h4>{title}</h4>")
            if not rows:
                parts.append(f"<p>{empty}</p>")
                return
            head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

        table("Metrics", ["metric", "baseline", "this run", "change"],
              [(n, _num(o), _num(c), _delta(o, c)) for n, o, c in self.metrics], "No metrics were logged.")
        table("Params changed", ["param", "baseline", "this run"], [(n, _val(o), _val(c)) for n, o, c in self.params],
              "None.")
        table("Data changed", ["file", "baseline md5", "this run md5"],
              [(p, _md5(o), _md5(c)) for p, o, c in self.data], "None.")
        if self.gates:
            table("Promotion gates", ["model", "version", "environment", "gates"],
                  [(g["model"], g["version"], g["environment"],
                    "; ".join(_gate(x) for x in g["gates"]))
                   for g in self.gates], "")
        if self.drift:
            table(f"Drift of the served traffic ({html.escape(self.drift['summary'])})",
                  ["column", "test", "statistic", "threshold"],
                  [(c, t, _num(x), _num(limit)) for c, t, x, limit in self.drift["drifted"]], "None.")
        for title, path in self.plots:
            data = base64.b64encode(Path(path).read_bytes()).decode()
            parts.append(f'<figure><img alt="{html.escape(title)}" src="data:image/png;base64,{data}"/>'
                         f"<figcaption>{html.escape(title)}</figcaption></figure>")
        parts += [f"<p>plot not made: {html.escape(p)}</p>" for p in self.problems]
        return "".join(parts)


def _gate(result: dict) -> str:
    return f"{result.get('gate')} {result.get('status')}" + (f" ({result['detail']})" if result.get("detail") else "")


def _table(header: list, rows: list) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + [
        "| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _num(value) -> str:
    return "-" if value is None else f"{value:.6g}"


def _val(value) -> str:
    return "-" if value is None else f"`{value}`"


def _md5(value) -> str:
    return "-" if value is None else value[:12]


def _delta(old, new) -> str:
    if old is None or new is None:
        return "new" if old is None and new is not None else "gone" if new is None and old is not None else ""
    diff = new - old
    if diff == 0:
        return "="
    rel = f" ({diff / abs(old):+.1%})" if old else ""
    return f"{'▲' if diff > 0 else '▼'} {diff:+.4g}{rel}"


# ---- finding the two sides -----------------------------------------------------------------------------------
def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _side(settings, run) -> Side:
    """A run, with its steps' runs when it is a pipeline run."""
    from .. import tracking

    side = Side(run)
    if run.data.tags.get("mlops.kind") == "pipeline":
        steps = tracking.child_runs(settings, run.info.run_id, run.info.experiment_id)
        found = tracking.get_runs(settings, [s["run_id"] for s in steps]) if steps else []
        side.steps = {r.data.tags.get("mlops.step", r.info.run_name): r for r in found}
    return side


def _target(settings, target: str | None) -> tuple[Side, dict, str]:
    """(the target's side, the tags that find the same kind of run elsewhere, a title)."""
    from .. import pipeline, tracking

    folder = Path(target or ".")
    if (folder / PIPELINE_DEFINITION).is_file():
        pipe = pipeline.load(folder)
        runs = tracking.runs_tagged(settings, "mlops.pipeline.folder", str(pipe.folder))
        if not runs:
            raise NotFound(f"pipeline {pipe.name!r} in {folder} has not been run yet; run it with `mlops pipeline "
                           "run`, then report on it.", what="pipeline run", pipeline=pipe.name, folder=str(folder))
        finished = [r for r in runs if r["status"] == "FINISHED"] or runs
        (run,) = tracking.get_runs(settings, [finished[0]["run_id"]])
        return _side(settings, run), {"mlops.kind": "pipeline", "mlops.pipeline": pipe.name}, f"Pipeline `{pipe.name}`"
    if target is None:
        raise InvalidInput(f"{Path.cwd()} holds no exported pipeline ({PIPELINE_DEFINITION}); give a pipeline folder "
                           "or a run id.", what="report target")
    (run,) = tracking.get_runs(settings, [target])
    tags = run.data.tags
    if tags.get("mlops.kind") == "pipeline":
        same = {"mlops.kind": "pipeline", "mlops.pipeline": tags.get("mlops.pipeline", "")}
        title = f"Pipeline `{tags.get('mlops.pipeline')}`"
    elif tags.get("mlops.cell_key"):
        same, title = {"mlops.cell_key": tags["mlops.cell_key"]}, f"Run `{run.info.run_name}`"
    else:
        same, title = {"mlflow.runName": run.info.run_name}, f"Run `{run.info.run_name}`"
    return _side(settings, run), same, title


def _baseline(settings, spec: str | None, same: dict, target: Side, env: str | None) -> Side:
    from .. import tracking

    root = Path(settings.project_root)
    if spec and "@" in spec:
        from ..registry.lookup import run_of

        run_id, where = run_of(settings, spec, env=env)
        (run,) = tracking.get_runs(settings, [run_id])
        return Side(run, _side(settings, run).steps, where)
    branches = [spec] if spec else _default_branches(root)
    for branch in branches:
        if _git(root, "rev-parse", "--verify", "--quiet", f"{branch}^{{commit}}") is None:
            continue
        return _on_branch(settings, root, branch, same, target)
    if spec:
        from ..errors import RunNotFound

        try:
            (run,) = tracking.get_runs(settings, [spec])
        except RunNotFound:
            raise NotFound(f"--baseline {spec!r} is neither a branch of {root} nor a run in "
                           f"{settings.tracking_uri}; give BRANCH, NAME@ALIAS or RUN (an id, a unique prefix or a run "
                           "name).", what="baseline", baseline=spec) from None
        return Side(run, _side(settings, run).steps, f"run {run.info.run_id[:8]}")
    raise NotFound(f"no baseline found: {root} has none of the branches {', '.join(DEFAULT_BRANCHES)} (and no "
                   "GITHUB_BASE_REF); name one with --baseline BRANCH, NAME@ALIAS or RUN.", what="baseline")


def _default_branches(root: Path) -> list[str]:
    """A pull request's base branch in CI (GitHub sets GITHUB_BASE_REF), else main or master."""
    base = os.environ.get("GITHUB_BASE_REF")
    return ([f"origin/{base}", base] if base else []) + list(DEFAULT_BRANCHES)


def _on_branch(settings, root: Path, branch: str, same: dict, target: Side) -> Side:
    """The newest run like the target's at the newest commit of ``branch`` that has one (the target excluded)."""
    from .. import tracking

    commits = (_git(root, "rev-list", "--first-parent", f"--max-count={SEARCH_COMMITS}", branch) or "").split()
    key, value = next(iter(same.items()))
    candidates = [r for r in tracking.runs_tagged(settings, key, value) if r["run_id"] != target.run_id]
    if candidates:
        full = {r.info.run_id: r for r in tracking.get_runs(settings, [r["run_id"] for r in candidates])}
        at: dict = {}
        for summary in candidates:  # newest first: the first run seen at a commit is its newest
            run = full[summary["run_id"]]
            if all(run.data.tags.get(k) == v for k, v in same.items()) and run.info.status == "FINISHED":
                at.setdefault(run.data.tags.get("mlops.git.commit"), run)
        for back, sha in enumerate(commits):
            if sha in at:
                how = f"branch {branch} at {sha[:7]}" + (f" ({back} commits back)" if back else "")
                return Side(at[sha], _side(settings, at[sha]).steps, how)
    what = ", ".join(f"{k}={v}" for k, v in same.items())
    raise NotFound(f"no baseline found: none of the last {len(commits)} commits of branch {branch} has a finished run "
                   f"with {what} (searched through the runs' mlops.git.commit tags); run it on that branch first, or "
                   "name a baseline with --baseline NAME@ALIAS or RUN.", what="baseline", branch=branch)


# ---- building ----------------------------------------------------------------------------------------------
def build(settings, target: str | None = None, baseline: str | None = None, out: os.PathLike | None = None,
          env: str | None = None, plots: bool = True, log: str | None = None) -> Report:
    """The report of ``target`` (a pipeline folder or a run; default: the pipeline in the working directory)
    against ``baseline``, with the drift of a serving package's traffic when ``log`` names one. With ``out`` (a .md
    path) it is written there, its plots in ``<stem>_files/`` beside it."""
    side, same, title = _target(settings, target)
    base = None if baseline == "none" else _baseline(settings, baseline, same, side, env)
    report = Report(title, side, base)
    old, new = base.metrics() if base else {}, side.metrics()
    report.metrics = [(k, old.get(k), new.get(k)) for k in sorted(set(old) | set(new))]
    old_p, new_p = base.params() if base else {}, side.params()
    report.params = [(k, old_p.get(k), new_p.get(k)) for k in sorted(set(old_p) | set(new_p))
                     if old_p.get(k) != new_p.get(k)] if base else []
    old_d, new_d = base.data() if base else {}, side.data()
    report.data = [(k, old_d.get(k), new_d.get(k)) for k in sorted(set(old_d) | set(new_d))
                   if old_d.get(k) != new_d.get(k)] if base else []
    report.gates = _gates(settings, side, env)
    if log:
        from .. import monitor

        found = monitor.check(settings, log)
        report.drift = {"source": log, "summary": found.summary(),
                        "drifted": [(c["column"], c["test"], c["statistic"], c["threshold"]) for c in found.columns
                                    if c["drift"]]}
    if out is not None:
        out = Path(out)
        report.folder = out.with_name(out.stem + "_files")
    if plots:
        from . import plots as P

        folder = report.folder
        if folder is None:
            import tempfile

            folder = Path(tempfile.mkdtemp(prefix="mlops-report-"))
        P.make(settings, report, folder)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(report.markdown(images=report.folder.name if report.plots else None))
    return report


def _gates(settings, side: Side, env: str | None) -> list[dict]:
    """The promotions of the model versions the target's runs made, with each gate's result."""
    from ..registry.lookup import promotions_of_runs

    return [{"model": p["model"], "version": p["version"], "environment": p["to"], "gates": p["gates"]}
            for p in promotions_of_runs(settings, {r.info.run_id for r in side.runs()}, env=env)]


def comment(report: Report, out: os.PathLike, dry_run: bool = False) -> str:
    """Post the report on the pull request as one comment (updated by later runs); ``dry_run`` writes its body
    beside ``out`` instead. Returns what it did, in a few words."""
    from .comment import post

    return post(report, out, dry_run=dry_run)
