"""The front doors' shared half: one argument spec per verb, and one table of hints for typed errors.

``%mlops VERB`` (magics.py) and ``mlops VERB`` (cli.py) build their parsers from the same specs, so both
accept the same flags and print the same help; a verb that makes sense in one door only (the cell magics,
``mlops serve run``, ``mlops pipeline ...``) is declared here the same way, with that door alone. The core
raises typed errors that never name a door; ``explain`` adds the door's own hint from the error's type and
fields. Imported by the doors only, and cheap: argparse and shlex, no engine.
"""

from __future__ import annotations

import argparse
import os
import shlex
import string
from dataclasses import dataclass
from typing import Callable

from . import errors as E


@dataclass(frozen=True)
class Door:
    name: str    # "magic" | "cli"
    prefix: str  # how a command starts in this door: "%mlops" | "mlops"


MAGIC = Door("magic", "%mlops")
CLI = Door("cli", "mlops")
BOTH = (MAGIC.name, CLI.name)


class UsageProblem(Exception):
    """Arguments that do not fit the verb's spec: one line naming the argument and the right form."""


class HelpShown(Exception):
    """``--help`` printed the help: nothing else to do."""


class Parser(argparse.ArgumentParser):
    """argparse whose mistakes become one ``UsageProblem`` line, and whose ``--help`` ends the command
    without exiting the process (a kernel must live on)."""

    def error(self, message):
        usage = " ".join(self.format_usage().split()[1:])  # one line, however argparse wrapped it
        raise UsageProblem(f"{self.prog}: {message}. Right form: {usage}")

    def exit(self, status=0, message=None):
        if message:
            raise UsageProblem(message.strip())
        raise HelpShown()


# ---- argument types -----------------------------------------------------------------------------
def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. team=vision)")
    return key.strip(), value.strip()


def names(text: str) -> list[str]:
    found = [n.strip() for n in text.split(",") if n.strip()]
    if not found or any(not n.isidentifier() for n in found):
        raise argparse.ArgumentTypeError(f"{text!r} must be comma-separated variable names, e.g. acc,loss")
    return found


def _number(cast, ok, what: str):
    """An argparse type: ``cast`` the text and check it with ``ok``, else say what was expected."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value
    return parse


positive = _number(int, lambda v: v >= 1, "a positive whole number")
amount = _number(float, lambda v: v >= 0, "a number >= 0 (fractions such as 0.5 are allowed)")
port = _number(int, lambda v: 0 <= v <= 65535, "a port number (0-65535)")
count = _number(int, lambda v: v >= 0, "a whole number >= 0")


def identifier(text: str) -> str:
    if not text.isidentifier():
        raise argparse.ArgumentTypeError(f"{text!r} is not a variable name")
    return text


# ---- the specs ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verb:
    name: str                      # "runs", or "serve generate" for an action of a verb
    summary: str                   # one line: the help list and `%mlops?`
    add: Callable                  # add(parser, door): the verb's arguments
    doors: tuple = BOTH
    cell: bool = False             # the magic's cell form: %%mlops VERB


VERBS: list[Verb] = []
GROUPS = {"serve": "an MLflow model as a FastAPI serving package",
          "pipeline": "run an exported pipeline, or show which steps are fresh"}


def verb(name: str, summary: str, doors: tuple = BOTH, cell: bool = False):
    def register(add):
        VERBS.append(Verb(name, summary, add, doors, cell))
        return add
    return register


@verb("init", "point this notebook's tracking at an experiment and a store", doors=(MAGIC.name,))
def _init(p, door):
    p.add_argument("--experiment", metavar="NAME", help="MLflow experiment (default: the notebook's name)")
    p.add_argument("--tracking-uri", metavar="URI", help="tracking store, e.g. http://127.0.0.1:5000")


@verb("run", "this cell is one MLflow run: params, metrics, outputs, code and data state", doors=(MAGIC.name,),
      cell=True)
def _run(p, door):
    p.add_argument("--name", metavar="N", help="the run's name")
    p.add_argument("--metrics", type=names, default=[], metavar="acc,loss", help="variables logged as metrics")
    p.add_argument("--tag", type=key_value, action="append", default=[], metavar="k=v", help="a tag (repeatable)")
    p.add_argument("--param", type=key_value, action="append", default=[], metavar="k=v",
                   help="a param (repeatable)")
    p.add_argument("--model", type=identifier, action="append", default=[], metavar="NAME",
                   help="log the fitted model in variable NAME (fit in this cell) in the run (repeatable)")


@verb("autotrack", "every code cell you run becomes a run (on), or not (off)", doors=(MAGIC.name,))
def _autotrack(p, door):
    p.add_argument("state", choices=["on", "off"])


KINDS = ("cell", "sweep", "pipeline", "retrain")


def _where(p, door):
    """--notebook / --all / --project: which runs a listing starts from."""
    scope = p.add_mutually_exclusive_group()
    scope.add_argument("--notebook", metavar="PATH", help="only this notebook's runs"
                       + (" (default: this notebook)" if door == MAGIC.name else ""))
    scope.add_argument("--all", action="store_true", help="every tracked run of the project"
                       + ("" if door == MAGIC.name else " (the default)"))
    p.add_argument("--project", metavar="DIR", help="the project whose store to read (default: "
                   + ("this notebook's)" if door == MAGIC.name else "the working directory's)"))


@verb("runs", "tracked runs, newest first: cells, sweeps with their trials, pipelines with their steps")
def _runs(p, door):
    p.add_argument("--last", type=positive, metavar="N", help="only the N newest runs")
    _where(p, door)
    p.add_argument("--kind", choices=KINDS, help="only runs of this kind")
    p.add_argument("--json", action="store_true", help="the runs as JSON data instead of a table")


@verb("compare", "params and metrics of runs side by side, differences marked")
def _compare(p, door):
    p.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="run ids, their 8-character prefixes, or run names")
    p.add_argument("--last", type=positive, metavar="N", help="the N newest runs (of the notebook, or --all)")
    _where(p, door)


@verb("snapshot", "version a data file or folder with DVC (a git commit of its own)")
def _snapshot(p, door):
    p.add_argument("path", metavar="PATH")
    p.add_argument("-m", "--message", metavar="MSG", help="the commit message")
    p.add_argument("--push", action="store_true", help="push the data to the default DVC remote")


@verb("snapshots", "versions of a snapshotted path (or of every one) and the runs that read them")
def _snapshots(p, door):
    p.add_argument("path", nargs="?", metavar="PATH")


@verb("restore", "put back the data a run used (--run) or a git revision recorded (--rev)")
def _restore(p, door):
    p.add_argument("path", metavar="PATH")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", metavar="RUN_ID", help="the data this run used")
    which.add_argument("--rev", metavar="REV", help="the data this git revision recorded")
    p.add_argument("--force", action="store_true", help="overwrite changes that are in no snapshot")


@verb("reproduce", "re-execute a run from its recorded code, data and params; compare its metrics")
def _reproduce(p, door):
    p.add_argument("run_id", metavar="RUN_ID")
    p.add_argument("--project", metavar="DIR", help="the project whose store holds the run")
    p.add_argument("--clean", action="store_true",
                   help="replay the notebook top to bottom in a fresh kernel, not the kernel's own history (what "
                        "reproduce always does; named for scripts that want to say so)")


@verb("sweep", "this cell as a hyperparameter sweep on Ray (Tune for --scheduler), one child run per trial",
      doors=(MAGIC.name,), cell=True)
def _sweep(p, door):
    space = p.add_mutually_exclusive_group(required=True)
    space.add_argument("--space", metavar='"lr=loguniform(1e-4,1e-1); depth=choice(3,5,8)"',
                       help="the search space")
    space.add_argument("--space-from", type=identifier, metavar="VAR", help="a dict variable holding the space")
    p.add_argument("--metric", type=identifier, required=True, metavar="NAME", help="the variable the cell computes")
    p.add_argument("--mode", choices=["max", "min"], required=True)
    p.add_argument("--samples", type=positive, metavar="N", help="trials (grid: repeats of the grid)")
    p.add_argument("--cpus-per-trial", type=amount, default=1.0, metavar="C")
    p.add_argument("--gpus-per-trial", type=amount, default=0.0, metavar="G")
    p.add_argument("--concurrency", type=positive, metavar="K", help="trials at once (default: as many as fit)")
    p.add_argument("--scheduler", choices=["asha"], help="stop weak trials early (needs mlops_jupyter.report)")
    p.add_argument("--address", metavar="ray://host:10001", help="a Ray cluster (default: RAY_ADDRESS, else local)")
    p.add_argument("--retries", type=int, choices=range(0, 11), default=0, metavar="N",
                   help="re-run a trial whose cell raised, up to N times")
    p.add_argument("--name", metavar="N", help="the sweep run's name")


@verb("export", "a tagged notebook -> a parameterized, incremental pipeline folder")
def _export(p, door):
    p.add_argument("notebook", nargs="?", metavar="NOTEBOOK",
                   help="the tagged notebook" + (" (default: this notebook)" if door == MAGIC.name else ""))
    p.add_argument("--out", metavar="DIR", help="the pipeline folder (default: NOTEBOOK-pipeline beside it)")
    p.add_argument("--check", action="store_true", help="only check the tags and the steps; write nothing")
    p.add_argument("--target", choices=("local", "kfp"), default="local",
                   help="kfp: also compile a Kubeflow Pipelines v2 pipeline (DIR/kfp-pipeline.yaml) with the KFP SDK")
    p.add_argument("--image", metavar="IMG", help="with --target kfp: the image the steps run in (it holds the "
                   "project at its working directory and mlops-jupyter[pipeline])")


@verb("serve generate", "write a self-contained FastAPI serving package for a model")
def _serve_generate(p, door):
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("model_uri", nargs="?", metavar="MODEL_URI", help="runs:/RUN_ID/PATH, models:/NAME/VERSION, "
                       "models:/NAME@ALIAS or a local model folder")
    which.add_argument("--run", metavar="RUN", help="the model a run logged (when it logged exactly one)")
    p.add_argument("--out", required=True, metavar="DIR", help="a new (or empty) folder")
    p.add_argument("--name", metavar="NAME", help="package name (default: the registered model's name)")
    p.add_argument("--project", metavar="DIR", help="the project whose store resolves the model")
    _env_option(p, "the environment whose registry resolves models:/NAME@ALIAS (e.g. prod)")


@verb("serve run", "serve a generated package with uvicorn (blocks until stopped)", doors=(CLI.name,))
def _serve_run(p, door):
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=port, default=8000)
    p.add_argument("--workers", type=positive, default=1, metavar="N")


@verb("serve build", "run a package's tests, then build its OCI image (docker, podman or buildah)", doors=(CLI.name,))
def _serve_build(p, door):
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--tag", metavar="T", help="image reference (default NAME:VERSION from the package)")
    p.add_argument("--base", metavar="IMAGE", help="base image with python3 (default: the official python image of "
                   "the model's Python)")
    p.add_argument("--push", metavar="REGISTRY", help="push the image to this registry after the build")
    p.add_argument("--engine", choices=("docker", "podman", "buildah"), help="default: the first one installed")
    p.add_argument("--pip-index", metavar="URL", help="package index for pip inside the build")


@verb("serve manifests", "Kubernetes manifests: Deployment, Service, autoscaler, disruption budget", doors=(CLI.name,))
def _serve_manifests(p, door):
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--image", required=True, metavar="IMAGE", help="the image the pods run")
    p.add_argument("--replicas", type=positive, default=2, metavar="N", help="pods (the autoscaler's minimum)")
    p.add_argument("--out", metavar="DIR", help="where the manifests go (default DIR/k8s)")


@verb("pipeline run", "run the steps that changed (and what depends on them) with papermill")
def _pipeline_run(p, door):
    p.add_argument("dir", metavar="DIR")
    p.add_argument("-p", "--param", action="append", default=[], metavar="key=value",
                   help="override a parameter of params.yaml for this run")
    p.add_argument("--from", dest="from_step", metavar="STEP", help="re-run STEP and every step after it")
    p.add_argument("--force", action="store_true", help="re-run every step")
    p.add_argument("--address", metavar="ray://head:10001|host:6379|auto", help="run the steps as Ray tasks on "
                   "this cluster (default: RAY_ADDRESS, else [tool.mlops] ray-address, else on this machine)")
    p.add_argument("--storage", metavar="PATH_OR_FSSPEC_URI", help="with a cluster: where steps hand data to each "
                   "other, reached by every node (default: the pipeline folder)")
    p.add_argument("--max-retries", type=count, default=2, metavar="N",
                   help="with a cluster: run a step again up to N times when its node dies (default 2)")
    p.add_argument("--register", action="store_true", help="register each model a step fitted anew (model:NAME) "
                   "as a new version of the registered model NAME")
    _env_option(p, "with --register: the environment whose registry gets the versions")


@verb("pipeline status", "each step: fresh, stale (and why) or failed; and whether the export is outdated")
def _pipeline_status(p, door):
    p.add_argument("dir", metavar="DIR")


def _env_option(p, what: str) -> None:
    p.add_argument("--env", metavar="ENV", help=f"{what} (default: MLOPS_ENV, else dev)")


@verb("register", "register a run's model as a new version in an environment's model registry")
def _register(p, door):
    p.add_argument("run", metavar="RUN", help="run id, unique prefix or run name")
    p.add_argument("--model", required=True, metavar="NAME", help="registered model name")
    _env_option(p, "the environment whose registry gets the version")


GATES = ("signature", "metric", "tests", "lineage")  # registry.gates.NAMES, named here so the doors import no engine


@verb("promote", "move an environment's alias to a model version, after the gates")
def _promote(p, door):
    p.add_argument("ref", metavar="NAME/VERSION|NAME@ALIAS", help="e.g. iris/3, or iris@staging (then the version "
                   "staging holds)")
    p.add_argument("--to", required=True, metavar="ENV", help="the environment whose alias moves")
    p.add_argument("--force", action="append", default=[], metavar="GATE", help=f"skip a gate ({', '.join(GATES)}); "
                   "needs --reason, recorded with the promotion")
    p.add_argument("--reason", metavar="TEXT", help="why the forced gates are skipped")
    _env_option(p, "where NAME/VERSION is looked up")


@verb("rollback", "return an environment's alias to the version that held it before")
def _rollback(p, door):
    p.add_argument("name", metavar="NAME")
    p.add_argument("--env", required=True, metavar="ENV", help="the environment whose alias goes back")


@verb("models", "registered models, their versions and each environment's alias; `history NAME` for the audit")
def _models(p, door):
    p.add_argument("history", nargs="?", choices=["history"], help="the audit records of NAME")
    p.add_argument("name", nargs="?", metavar="NAME")
    p.add_argument("--env", metavar="ENV", help="only this environment's records")
    p.add_argument("--at", metavar="TIME", help="what each alias pointed at then (ISO 8601, UTC by default)")


@verb("report", "a pipeline's (or a run's) results against a baseline: Markdown for a pull request, HTML here")
def _report(p, door):
    p.add_argument("target", nargs="?", metavar="PIPELINE_DIR|RUN", help="a pipeline folder (its newest run) or a "
                   "run; default: the pipeline in the working directory")
    p.add_argument("--baseline", metavar="BRANCH|NAME@ALIAS|RUN|none", help="the run at the newest commit of BRANCH "
                   "that has one, the run behind a model version, or a run; default: the pull request's base branch "
                   "in CI, else main or master; none: this run alone")
    p.add_argument("--out", metavar="report.md", help="write the Markdown there, its plots in <stem>_files/ beside it")
    _env_option(p, "the environment whose registry NAME@ALIAS and the promotions are read from")
    p.add_argument("--log", metavar="SOURCE", help="a serving package (or its prediction log) whose traffic's drift "
                   "the report adds")
    p.add_argument("--comment", action="store_true", help="post the report on the pull request as one comment, "
                   "updated on later runs (needs the gh CLI and GH_TOKEN)")
    p.add_argument("--dry-run", action="store_true", help="with --comment: write the comment's body to a file "
                   "beside --out instead of posting it")


@verb("retrain", "new data -> the pipeline's stale steps -> a challenger -> the gates against the champion")
def _retrain(p, door):
    p.add_argument("dir", metavar="PIPELINE_DIR", help="an exported pipeline folder whose steps fit a model (model:NAME)")
    p.add_argument("--data", action="append", default=[], metavar="PATH", help="data to snapshot first (repeatable; "
                   "default: the DVC-tracked files the steps read)")
    p.add_argument("--promote-to", metavar="ENV", help="the environment whose alias the challenger aims at (default: "
                   "the one after the registry's, e.g. staging)")
    p.add_argument("--if-drift", metavar="NAME@ALIAS", help="only when `monitor` finds drift in the traffic this "
                   "version served (else one line, and nothing runs)")
    p.add_argument("--log", metavar="SOURCE", help="with --if-drift: its serving package or prediction log (default: "
                   "log in the alias environment's [tool.mlops.environments.ENV.serving] table)")
    _env_option(p, "the environment whose registry gets the challenger (default dev)")


@verb("monitor", "a serving package's logged predictions against its model's training data: drift, errors, "
                 "accuracy; exits 1 on drift")
def _monitor(p, door):
    p.add_argument("source", metavar="SOURCE|reference|rules", help="a serving package's folder or its prediction "
                   "log's folder; `reference RUN` builds a model's reference profile; `rules` writes Prometheus "
                   "alert rules for the drift gauges")
    p.add_argument("target", nargs="?", metavar="RUN", help="with reference: the run that logged the model")
    p.add_argument("--model", metavar="NAME@ALIAS", help="the registered version whose reference the log is checked "
                   "against (with reference: the model's name in the run)")
    p.add_argument("--run", metavar="RUN", help="the run whose model served the predictions")
    p.add_argument("--since", default="24h", metavar="24h", help="how far back to read the log (s, m, h, d)")
    p.add_argument("--window", default="1h", metavar="1h", help="the step of the drift-over-time series")
    p.add_argument("--stattest", metavar="TEST", help="one test for every column (psi, ks, wasserstein, "
                   "jensenshannon, chisquare, z) instead of each column's default")
    p.add_argument("--report", metavar="PATH", help="write an HTML report with plots there")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--data", metavar="PATH", help="with reference: the training data (CSV or Parquet; default: the "
                   "snapshot the run read)")
    p.add_argument("--out", metavar="rules.yml", help="with rules: where to write them (default: print)")
    p.add_argument("--for", dest="hold", default="10m", metavar="10m", help="with rules: how long drift must last "
                   "before an alert fires")
    _env_option(p, "the environment whose registry NAME@ALIAS is read from")


def monitor_mode(ns) -> str:
    """Which of monitor's three forms the arguments ask for: "check", "reference" or "rules"."""
    if ns.source == "reference" and not os.path.isdir(ns.source):
        if not ns.target:
            raise UsageProblem("monitor reference needs the run that logged the model: monitor reference RUN "
                               "[--model NAME] [--data PATH]")
        return "reference"
    if ns.source == "rules" and not os.path.isdir(ns.source):
        return "rules"
    if ns.target:
        raise UsageProblem(f"monitor takes one SOURCE folder; {ns.target!r} is one too many")
    return "check"


def report_args(ns) -> None:
    """``report``'s flags hang together: --dry-run only with --comment, --comment only with --out."""
    if ns.dry_run and not ns.comment:
        raise UsageProblem("--dry-run goes with --comment (it writes the comment instead of posting it)")
    if ns.comment and not ns.out:
        raise UsageProblem("--comment needs --out FILE.md: the plots and the comment's body are written beside it")


def forced(ns) -> dict:
    """``--force GATE ... --reason TEXT`` as {gate: reason}; a reason without a gate, or a gate without a
    reason, is a usage mistake."""
    if ns.force and not (ns.reason or "").strip():
        raise UsageProblem(f"--force {ns.force[0]} needs --reason TEXT: the reason is recorded with the promotion")
    if ns.reason and not ns.force:
        raise UsageProblem("--reason goes with --force GATE (the gate to skip); without --force no gate is skipped")
    return {gate: ns.reason for gate in ns.force}


def history_args(ns) -> None:
    """``models history NAME``'s arguments hang together: NAME is given, --env/--at only with history."""
    if ns.history and not ns.name:
        raise UsageProblem("models history needs the model's NAME, e.g. models history iris --env prod")
    if not ns.history and (ns.name or ns.env or ns.at):
        raise UsageProblem("NAME, --env and --at go with history: models history NAME [--env ENV] [--at TIME]")


def verbs(door: Door) -> list[Verb]:
    return [v for v in VERBS if door.name in v.doors]


def command(door: Door, v: Verb) -> str:
    """How ``v`` is written in ``door``: ``%%mlops run`` for a cell magic."""
    return f"%{door.prefix} {v.name}" if v.cell else f"{door.prefix} {v.name}"


def parser(door: Door) -> Parser:
    """The door's parser: a sub-parser per verb (``serve`` and ``pipeline`` have actions); each parsed
    namespace carries its ``spec`` (the Verb)."""
    root = Parser(prog=door.prefix, usage="%(prog)s VERB ...", description=overview(door),
                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = root.add_subparsers(dest="verb", required=True, metavar="VERB", help=argparse.SUPPRESS)
    groups: dict = {}
    for v in verbs(door):
        head, _, action = v.name.partition(" ")
        if action:
            if head not in groups:
                group = sub.add_parser(head, help=GROUPS[head], description=GROUPS[head], prog=f"{door.prefix} {head}")
                groups[head] = group.add_subparsers(dest="action", required=True, metavar="ACTION")
            p = groups[head].add_parser(action, help=v.summary, description=v.summary, prog=command(door, v))
        else:
            p = sub.add_parser(v.name, help=v.summary, description=v.summary, prog=command(door, v))
        v.add(p, door.name)
        p.set_defaults(spec=v)
    return root


def overview(door: Door) -> str:
    """Every verb of ``door`` with its one line (the magic's docstring, shown by ``%mlops?``)."""
    rows = [(command(door, v), v.summary) for v in verbs(door)]
    width = max(len(c) for c, _ in rows)
    lines = [f"  {c.ljust(width)}  {s}" for c, s in rows]
    return "\n".join([f"{door.prefix} VERB ...: the MLOps operations; `{door.prefix} VERB --help` shows a verb's "
                      "arguments.", "", *lines])


def split(line: str) -> list[str]:
    """A command line's words as a shell reads them: quotes group, and ``#`` at the start of a word begins
    a comment to the end of the line (``#`` inside a word or inside quotes is kept)."""
    quote, escaped = None, False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            line = line[:i]
            break
    try:
        return shlex.split(line)
    except ValueError as exc:
        raise UsageProblem(f"cannot read the arguments ({exc}); check the quotes in: {line.strip()}") from None


# ---- what both doors say the same way ------------------------------------------------------------
def project_settings(project: str | None):
    """The settings of --project DIR (None: the working directory's project); a folder that does not
    exist is refused rather than read as an empty project."""
    from . import config

    if project and not os.path.isdir(project):
        raise UsageProblem(f"--project {project}: no such folder; give the project's folder (or leave it out "
                           "for the working directory's project)")
    return config.resolve(project)


def compared(ns, settings, notebook: str | None) -> list[str]:
    """The runs ``compare`` compares: the ids given, or with --last N the N newest runs of ``notebook``
    (every run when None), oldest first."""
    if ns.last and ns.run_ids:
        raise UsageProblem("give run ids or --last N, not both")
    if not ns.last:
        return ns.run_ids
    from .tracking import list_runs

    return [r["run_id"] for r in list_runs(settings, notebook, last=ns.last)][::-1]


def _steps(pipe) -> str:
    return f"{len(pipe.steps)} steps ({', '.join(s['name'] for s in pipe.steps)})"


def exported(pipe) -> str:
    return f"pipeline {pipe.name}: {_steps(pipe)} in {pipe.folder}{pipe.serving_note()}"


def checked(pipe) -> str:
    models = [f"{m} (step {s['name']})" for s in pipe.steps for m in s.get("models", [])]
    return (f"the tags of {pipe.name} are fine: it exports as {_steps(pipe)}"
            + (f", serving model {', '.join(models)}" if models else "") + "; nothing was written")


# ---- hints: each door's next step for a typed error -----------------------------------------------
# (error type, fields that must equal the given values, hint). In a hint, {p} is the door's prefix
# ("%mlops" / "mlops") and other names are the error's fields; an entry whose fields the error lacks
# is skipped. The first match wins, so specific entries come first.
HINTS = [
    (E.UnknownEnvironment, {}, "pick one with --env (or MLOPS_ENV), or add a [tool.mlops.environments.{environment}] "
                               "table with its tracking-uri"),
    (E.GateFailed, {}, "fix what failed, or skip one gate with `{p} promote {model}/{version} --to {environment} "
                       "--force GATE --reason TEXT`"),
    (E.ModelNotFound, {}, "`{p} models` lists the registered models and their versions"),
    (E.UnsnapshottedChanges, {}, "snapshot them first (`{p} snapshot {path}`), or restore with --force to "
                                 "overwrite them"),
    (E.RunNotFound, {}, "`{p} runs --all` lists the run ids"),
    (E.NoReference, {"what": "reference data"}, "e.g. `{p} monitor reference {run} --data train.csv`"),
    (E.NoReference, {}, "build it: `{p} monitor reference {run}`"),
    (E.NotFound, {"what": "snapshots"}, "`{p} snapshot {path}` makes the first one"),
    (E.NotFound, {"what": "snapshots"}, "`{p} snapshot PATH` makes the first one"),
    (E.NotFound, {"what": "revision"}, "`{p} snapshots {path}` lists the revisions that hold one"),
    (E.NotFound, {"what": "pipeline"}, "export one first: `{p} export NOTEBOOK --out {folder}`"),
    (E.NotFound, {"what": "serving package"}, "generate one first: `{p} serve generate MODEL_URI --out {path}`"),
    (E.NotFound, {"what": "model"}, "or give the model's URI: `{p} serve generate MODEL_URI --out DIR`"),
    (E.NotFound, {"what": "launcher"}, "`{p} serve generate MODEL_URI --out DIR` writes one with it"),
    (E.NotFound, {"what": "container engine"}, "or name one with --engine"),
    (E.InvalidInput, {"what": "models"}, "say which: `{p} serve generate {example} --out DIR`"),
    (E.InvalidInput, {"what": "compare"}, "e.g. `{p} compare 3f2a9c81 81be07aa`, or `{p} compare --last 2`"),
    (E.InvalidInput, {"what": "ambiguous run"}, "give a longer prefix of the run id"),
    (E.InvalidInput, {"what": "export folder"}, "e.g. --out pipeline"),
    (E.InvalidInput, {"what": "param"}, "e.g. -p {example}"),
    (E.Conflict, {"what": "package folder"}, "give --out a new folder"),
    (E.Conflict, {"what": "address"}, "pick another with --port or --host"),
    (E.StoreError, {"what": "dvc remote"}, "push again with `{p} snapshot {path} --push`"),
    (E.PipelineError, {"what": "address"}, "check --address, RAY_ADDRESS or [tool.mlops] ray-address (e.g. "
                                           "ray://head:10001, host:6379 or auto); leave them all unset to run the "
                                           "steps on this machine"),
    (E.PipelineError, {"what": "resources"}, "point --address at one (e.g. ray://head:10001)"),
    (E.InvalidInput, {"what": "storage"}, "--storage goes with --address (e.g. --address auto --storage "
                                          "s3://bucket/handoff)"),
    (E.SweepError, {"what": "address"}, "check --address / RAY_ADDRESS (e.g. ray://head:10001 for Ray Client); "
                                        "leave both unset to run on this machine"),
    (E.SweepError, {"what": "resources"}, "ask for less with --cpus-per-trial / --gpus-per-trial, or connect to a "
                                          "cluster that has them with --address ray://head:10001"),
    (E.SweepError, {"what": "metric"}, "--metric {metric} names the variable the cell computes"),
    (E.SweepError, {"what": "term"}, 'e.g. --space "lr=loguniform(1e-4, 1e-1); depth=choice(3, 5, 8)"'),
    (E.SweepError, {"what": "space"}, 'e.g. --space "lr=loguniform(1e-4, 1e-1); depth=choice(3, 5, 8)", or '
                                      "--space-from VAR"),
    (E.SweepError, {"what": "space from"}, "--space-from {var} reads that dict from the notebook"),
]
_FORMAT = string.Formatter()


def hint(exc: BaseException, door: Door) -> str:
    """The door's hint for a typed error ('' when none fits)."""
    fields = getattr(exc, "fields", None)
    if fields is None:
        return ""
    for kind, when, text in HINTS:
        if not isinstance(exc, kind) or any(fields.get(k) != v for k, v in when.items()):
            continue
        wanted = {name for _, name, _, _ in _FORMAT.parse(text) if name and name != "p"}
        if all(fields.get(name) not in (None, "") for name in wanted):
            return text.format(p=door.prefix, **{name: fields[name] for name in wanted})
    return ""


def explain(exc: BaseException, door: Door) -> str:
    """A typed error's message with the door's hint, as one paragraph."""
    text = str(exc).rstrip()
    extra = hint(exc, door)
    if not extra:
        return text
    return f"{text.rstrip('.')}; {extra}."
