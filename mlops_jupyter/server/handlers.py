"""HTTP handlers for ``{base_url}mlops/...`` (described in openapi.yaml next to this file).

Thin by design: each handler checks its input, resolves paths inside the server root, and calls
one core function off the event loop (``asyncio.to_thread``); a pipeline run is a subprocess.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import tomllib
from pathlib import Path

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from .. import config
from ..errors import GateFailed, MlopsError, UnsnapshottedChanges
from ..tracking import query
from .runs import Jobs, build_command, pipeline_command, retrain_command

NAMESPACE = "mlops"
# capability -> the module whose presence means its engine is installed (looked up, never imported)
ENGINES = {"tracking": "mlflow", "data": "dvc", "sweep": "ray", "pipeline": "papermill", "serving": "fastapi"}


class HTTPProblem(Exception):
    """A refusal with a status code and a message for the user (bad parameter, path outside root)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


# this door's hint for a typed error, by type (the magics and the CLI have theirs in commands.HINTS)
HINTS = {UnsnapshottedChanges: "restore with force to overwrite them, or snapshot them first"}


def error_body(exc: BaseException) -> dict:
    """The one mapping from an exception to ``{code, message}``: a typed error's status and stable name come
    from its type (``http_status``, ``code`` as ``error``), never from its text; anything else is a 500."""
    if isinstance(exc, HTTPProblem):
        return {"code": exc.code, "message": str(exc)}
    if isinstance(exc, MlopsError):
        hint = next((text for kind, text in HINTS.items() if isinstance(exc, kind)), "")
        message = f"{str(exc).rstrip('.')}; {hint}." if hint else str(exc)
        body = {"code": exc.http_status, "message": message, "error": exc.code}
        if isinstance(exc, GateFailed):  # every gate's result, for the panel to show beside the refusal
            body["gates"] = exc.fields.get("gates", [])
        return body
    if isinstance(exc, tornado.web.HTTPError):
        return {"code": exc.status_code, "message": exc.log_message or exc.reason or "HTTP error"}
    return {"code": 500, "message": f"{type(exc).__name__}: {exc}"}


class MlopsHandler(APIHandler):
    """Base class: JSON replies, errors as ``{code, message}`` (never an HTML traceback page),
    request paths confined to the server root."""

    def reply(self, body: dict, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body, default=str))

    def write_error(self, status_code: int, **kwargs) -> None:
        # refusals raised by tornado itself (no login: 403, unknown method: 405) get the same body shape
        exc = kwargs.get("exc_info", (None, None))[1]
        message = error_body(exc)["message"] if exc is not None else self._reason
        self.reply({"code": status_code, "message": message}, status_code)

    def fail(self, exc: BaseException) -> None:
        body = error_body(exc)
        if body["code"] >= 500:
            # the path, not the URI: a query string may carry the token
            self.log.error("mlops_jupyter: %s %s failed", self.request.method, self.request.path, exc_info=exc)
        self.reply(body, body["code"])

    # ---- input ---------------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return Path(self.settings["server_root_dir"]).expanduser().resolve()

    def inside(self, rel, name: str = "path") -> Path:
        """``rel`` (relative to the server root) resolved, symlinks included; refused outside the root."""
        if not isinstance(rel, str) or not rel.strip():
            raise HTTPProblem(400, f"`{name}` is required: a path relative to the server root, e.g. "
                                   f"{'analysis/train.ipynb' if name == 'path' else 'data/train.csv'}.")
        target = (self.root / rel.strip()).resolve()
        if not target.is_relative_to(self.root):
            raise HTTPProblem(403, f"{name} {rel!r} is outside the server root; give a path inside it.")
        return target

    def rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def notebook_path(self, rel=None) -> Path:
        """The notebook (``path`` query argument, or ``rel`` from a body) inside the server root."""
        if rel is None:
            rel = self.get_query_argument("path", "")
        return self.inside(rel, "path")

    def positive_int(self, name: str) -> int | None:
        raw = self.get_query_argument(name, "").strip()
        if not raw:
            return None
        if not raw.isdigit() or int(raw) < 1:
            raise HTTPProblem(400, f"query parameter `{name}` must be a positive whole number, got {raw!r}.")
        return int(raw)

    def body(self, **fields) -> dict:
        """The JSON object body, with each of ``fields`` (name -> type or tuple of types) checked if present."""
        try:
            data = json.loads(self.request.body or b"{}")
        except ValueError as exc:
            raise HTTPProblem(400, f"the request body is not valid JSON ({exc}); send a JSON object.") from None
        if not isinstance(data, dict):
            raise HTTPProblem(400, f"the request body must be a JSON object, got {type(data).__name__}.")
        for name, kind in fields.items():
            if data.get(name) is not None and not isinstance(data[name], kind):
                names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
                raise HTTPProblem(400, f"`{name}` must be a {names.replace('str', 'string')}, "
                                       f"got {json.dumps(data[name])[:80]}.")
        return data

    @staticmethod
    def required(data: dict, **examples) -> dict:
        """``data`` when each of ``examples``' fields is a non-empty string; else a 400 naming one with its example."""
        for name, example in examples.items():
            if not (data.get(name) or "").strip():
                raise HTTPProblem(400, f"`{name}` is required, e.g. \"{example}\".")
        return data

    def project(self, nb: Path) -> config.Settings:
        return config.resolve(start=nb.parent)


class Route(MlopsHandler):
    """One route: ``read()`` checks the request on the event loop (cheap, no engine), ``work(**read())``
    does the blocking core call in a worker thread and returns the JSON body."""

    status = 200

    async def serve(self) -> None:
        try:
            args = self.read()
            body = await asyncio.to_thread(self.work, **args)
        except Exception as exc:  # noqa: BLE001 - mapped to {code, message} in one place
            return self.fail(exc)
        self.reply(body, self.status)


class GetRoute(Route):
    @tornado.web.authenticated
    async def get(self):
        await self.serve()


class PostRoute(Route):
    @tornado.web.authenticated
    async def post(self):
        await self.serve()


def _ui(settings: config.Settings) -> dict:
    return {"tracking_uri": settings.tracking_uri, "ui": settings.where_to_look(), "ui_url": settings.ui_base()}


def _models(steps: list) -> list[dict]:
    """Cells tagged model:NAME, by step."""
    return [{"name": m, "step": s["name"]} for s in steps for m in s.get("models", [])]


# ---- tracking ------------------------------------------------------------------------------------
class StatusHandler(GetRoute):
    """GET where the notebook's project and store are, and which capabilities are installed."""

    def read(self):
        return {"settings": self.project(self.notebook_path())}

    def work(self, settings):
        caps = {name: importlib.util.find_spec(module) is not None for name, module in ENGINES.items()}
        return {"project": str(settings.project_root), **_ui(settings), "capabilities": caps}


class RunsHandler(GetRoute):
    """GET the tracked runs of one notebook, newest first (ETag / 304 by tornado: a poll that finds
    nothing new costs no body)."""

    def read(self):
        nb = self.notebook_path()
        return {"nb": nb, "last": self.positive_int("last"), "settings": self.project(nb)}

    def work(self, nb, last, settings):
        return {"notebook": str(nb), **_ui(settings), "runs": query.list_runs(settings, notebook=str(nb), last=last)}


class CompareHandler(GetRoute):
    """GET several runs side by side, with the history of metrics logged at more than one step."""

    def read(self):
        settings = self.project(self.notebook_path())
        ids = [i.strip() for i in self.get_query_argument("ids", "").split(",") if i.strip()]
        if len(ids) < 2:
            raise HTTPProblem(400, "`ids` must name two or more runs, comma-separated (full run ids or the "
                                   "8-character prefixes the runs list shows), e.g. ?ids=3f2a9c81,81be07aa.")
        return {"settings": settings, "ids": ids}

    def work(self, settings, ids):
        cmp = query.compare_runs(settings, ids)
        cmp["history"] = query.metric_history(settings, [r["run_id"] for r in cmp["runs"]], list(cmp["metrics"]))
        return cmp


# ---- data ----------------------------------------------------------------------------------------
class SnapshotsHandler(GetRoute):
    """GET every snapshotted path of the notebook's project with its versions, newest first."""

    def read(self):
        return {"settings": self.project(self.notebook_path())}

    def work(self, settings):
        root = settings.project_root
        if importlib.util.find_spec("dvc") is None or not (root / ".dvc").is_dir():
            return {"project": str(root), "paths": []}
        from .. import data

        paths: dict[str, list] = {}
        for s in data.list_snapshots(None, root=root, settings=settings):
            paths.setdefault(s.path, []).append({
                "rev": s.rev, "md5": s.md5, "size": s.size, "nfiles": s.nfiles, "message": s.message,
                "time": s.time_ms, "current": s.current,
                "runs": [{"run_id": r["run_id"], "run_name": r["run_name"]} for r in s.runs]})
        return {"project": str(root), "paths": [{"path": p, "versions": v} for p, v in sorted(paths.items())]}


class RestoreHandler(PostRoute):
    """POST put a snapshotted path back to the bytes a run used, or a git revision recorded."""

    def read(self):
        body = self.body(path=str, target=str, run_id=str, rev=str, force=bool)
        settings = self.project(self.notebook_path(body.get("path")))
        target = self.inside(body.get("target"), "target")
        if not target.is_relative_to(settings.project_root):
            raise HTTPProblem(403, f"target {body['target']!r} is outside the notebook's project "
                                   f"{settings.project_root}; give a snapshotted path inside it.")
        if bool(body.get("run_id")) == bool(body.get("rev")):
            raise HTTPProblem(400, "give exactly one of `run_id` (the data a run used) or `rev` (the data a "
                                   "git revision recorded).")
        return {"settings": settings, "target": target, "body": body}

    def work(self, settings, target, body):
        from .. import data

        # unsnapshotted work in the way is a 409: the sidebar offers "discard and restore" (force)
        snap = data.restore(target, run_id=body.get("run_id"), rev=body.get("rev"), force=bool(body.get("force")),
                            root=settings.project_root, settings=settings)
        return {"target": snap.path, "rev": snap.rev, "md5": snap.md5,
                "message": f"restored {snap.path} to {snap.rev[:8]} (md5 {snap.md5})"}


# ---- sweeps --------------------------------------------------------------------------------------
class SweepsHandler(GetRoute):
    """GET the notebook's sweeps, newest first: a running one's live trial table, ended ones from MLflow."""

    def read(self):
        nb = self.notebook_path()
        return {"nb": nb, "last": self.positive_int("last"), "settings": self.project(nb)}

    def work(self, nb, last, settings):
        from ..sweep import live

        return {"sweeps": live.list_sweeps(settings, str(nb), last=last)}


# ---- pipelines -----------------------------------------------------------------------------------
class PipelineMixin:
    def folder(self, nb: Path, out) -> Path:
        from .. import pipeline

        return pipeline.default_folder(nb) if out is None or out == "" else self.inside(out, "out")


def _ran_on(last: dict) -> dict | None:
    """The Ray node a step's latest run went to (a failed run's first); None when it ran on this machine."""
    entry = last.get("failed") or last.get("success") or {}
    return entry.get("node")


class PipelineHandler(PipelineMixin, GetRoute):
    """GET the notebook's pipeline: exported or not, each step fresh / stale / failed / never, the run."""

    def read(self):
        nb = self.notebook_path()
        return {"nb": nb, "folder": self.folder(nb, self.get_query_argument("out", None))}

    def work(self, nb, folder):
        from .. import pipeline
        from ..errors import NotFound

        jobs: Jobs = self.settings["mlops_jobs"]
        out = {"folder": self.rel(folder), "exported": False, "outdated": False, "steps": [], "models": [],
               "run": jobs.state("pipeline", folder)}
        try:
            pipe = pipeline.load(folder)
        except NotFound:
            return out
        out["exported"] = True
        out["outdated"] = pipeline.outdated(folder) is not None
        from ..pipeline.state import State

        known = State(folder).steps
        asks = {s["name"]: s.get("resources") or {} for s in pipe.steps}
        out["steps"] = [{"name": name, "state": "never" if why == "never run" else state, "reason": why,
                         "notebook": self._executed(known.get(name, {})), "node": _ran_on(known.get(name, {})),
                         "resources": asks.get(name, {})}
                        for name, state, why in pipeline.status(folder)]
        out["models"] = _models(pipe.steps)
        if out["models"]:
            from ..retrain import last_decision

            out["retrain"] = jobs.state("retrain", folder)
            out["last_retrain"] = last_decision(self.project(nb), pipe.name)
        drawn = folder / pipeline.PICTURE  # the DAG, coloured live while a run goes (the runner redraws it)
        out["picture"] = drawn.read_text() if drawn.is_file() else None
        return out

    def _executed(self, last: dict) -> str | None:
        """A step's latest executed notebook (a failed run's first), relative to the server root; None if none."""
        for entry in (last.get("failed"), last.get("success")):
            if entry and entry.get("notebook"):
                try:
                    return self.rel(Path(entry["notebook"]).resolve())
                except ValueError:  # executed outside the server root: nothing the sidebar can open
                    return None
        return None


class PipelineExportHandler(PipelineMixin, PostRoute):
    """POST export the tagged notebook into its pipeline folder."""

    def read(self):
        body = self.body(path=str, out=str)
        nb = self.notebook_path(body.get("path"))
        return {"nb": nb, "folder": self.folder(nb, body.get("out"))}

    def work(self, nb, folder):
        from .. import pipeline

        pipe = pipeline.export(nb, folder)
        return {"folder": self.rel(folder), "steps": [s["name"] for s in pipe.steps], "models": _models(pipe.steps),
                "warnings": pipe.warnings}


class PipelineRunHandler(PipelineMixin, PostRoute):
    """POST start `mlops pipeline run` on the exported folder; progress through GET pipeline."""

    status = 202

    def read(self):
        body = self.body(path=str, out=str, params=dict, force=bool, address=str, **{"from": str})
        nb = self.notebook_path(body.get("path"))
        for key, value in (body.get("params") or {}).items():
            if not re.fullmatch(r"[A-Za-z_]\w*", key) or not isinstance(value, (str, int, float, bool)):
                raise HTTPProblem(400, f"`params` maps parameter names to plain values (string, number, "
                                       f"boolean), e.g. {{\"C\": 0.5}}; got {key!r}: {json.dumps(value)[:60]}.")
        return {"nb": nb, "folder": self.folder(nb, body.get("out")), "body": body}

    def work(self, nb, folder, body):
        from .. import pipeline

        jobs: Jobs = self.settings["mlops_jobs"]
        pipeline.load(folder)  # not exported: a clear 404
        pairs = [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in (body.get("params") or {}).items()]
        cmd = pipeline_command(folder, pairs, bool(body.get("force")), body.get("from"),
                               (body.get("address") or "").strip() or None)
        # the folder's own lock covers runs started from a terminal too
        started = None if pipeline.running(folder) else jobs.start("pipeline", folder, cmd, self.project(nb))
        if started is None:
            raise HTTPProblem(409, f"a pipeline run is already going on {self.rel(folder)}; wait for it to "
                                   "finish (GET pipeline shows its progress).")
        return {"folder": self.rel(folder), "started": started}


class PipelineRetrainHandler(PipelineMixin, PostRoute):
    """POST start `mlops retrain` on the exported folder (new data -> stale steps -> challenger -> gates); its
    progress and the decision through GET pipeline."""

    status = 202

    def read(self):
        body = self.body(path=str, out=str, promote_to=str)
        nb = self.notebook_path(body.get("path"))
        return {"nb": nb, "folder": self.folder(nb, body.get("out")), "promote_to": (body.get("promote_to") or "").strip()}

    def work(self, nb, folder, promote_to):
        from .. import pipeline

        jobs: Jobs = self.settings["mlops_jobs"]
        pipe = pipeline.load(folder)  # not exported: a clear 404
        if not _models(pipe.steps):
            raise HTTPProblem(400, f"pipeline {pipe.name} fits no model (no cell is tagged model:NAME), so there is "
                                   "nothing to retrain; tag the cell that fits the model `model:NAME` and export again.")
        if promote_to:
            config.environment(self.project(nb), promote_to)  # an unknown environment: 400 naming the known ones
        started = None if pipeline.running(folder) else jobs.start("retrain", folder,
                                                                    retrain_command(folder, promote_to or None),
                                                                    self.project(nb))
        if started is None:
            raise HTTPProblem(409, f"a pipeline run or retrain is already going on {self.rel(folder)}; wait for it "
                                   "to finish (GET pipeline shows its progress).")
        return {"folder": self.rel(folder), "started": started}


class PipelineReportHandler(PipelineMixin, PostRoute):
    """POST write `mlops report` of the pipeline's newest run into its folder (report/report.md, plots beside it)
    against ``baseline`` (default: the base branch's run; none found: the run alone, said in ``note``)."""

    def read(self):
        body = self.body(path=str, out=str, baseline=str)
        nb = self.notebook_path(body.get("path"))
        return {"nb": nb, "folder": self.folder(nb, body.get("out")), "baseline": (body.get("baseline") or "").strip()}

    def work(self, nb, folder, baseline):
        from .. import reports
        from ..errors import NotFound

        settings, out, note = self.project(nb), folder / "report" / "report.md", None
        try:
            made = reports.build(settings, str(folder), baseline or None, out)
        except NotFound as exc:
            if baseline or exc.fields.get("what") != "baseline":
                raise
            note = f"{exc} The report shows this run alone."
            made = reports.build(settings, str(folder), "none", out)
        return {"report": self.rel(out), "plots": len(made.plots), "problems": made.problems, "note": note,
                "baseline": made.baseline.how if made.baseline else None}


class PipelineValidateHandler(PostRoute):
    """POST check cell tags with export's own parser: the sidebar's tag editor calls it on each edit."""

    def read(self):
        cells = self.body(cells=list).get("cells")
        if cells is None:
            raise HTTPProblem(400, "`cells` is required: [{\"id\": cell id, \"index\": position in the "
                                   "notebook, \"tags\": [\"step:train\", ...]}] for the notebook's code cells.")
        for i, c in enumerate(cells):
            if not (isinstance(c, dict) and isinstance(c.get("index"), int) and c["index"] >= 0
                    and isinstance(c.get("tags", []), list) and all(isinstance(t, str) for t in c.get("tags", []))
                    and isinstance(c.get("source", ""), str)):
                raise HTTPProblem(400, f"cells[{i}] must be {{\"id\": str, \"index\": int >= 0, \"tags\": [str], "
                                       f"\"source\": str (optional)}}; got {json.dumps(c)[:100]}.")
        if len({c["index"] for c in cells}) != len(cells):
            raise HTTPProblem(400, "two cells have the same `index`; give each cell its position in the notebook.")
        return {"cells": cells}

    def work(self, cells):
        from .. import pipeline

        return pipeline.check_cells(cells)


# ---- serving -------------------------------------------------------------------------------------
class ServingGenerateHandler(PostRoute):
    """POST generate a FastAPI serving package from a run's model (or a model URI)."""

    def read(self):
        body = self.body(path=str, run_id=str, model_uri=str, out=str, name=str)
        settings = self.project(self.notebook_path(body.get("path")))
        out = self.inside(body.get("out"), "out")
        if not (body.get("run_id") or body.get("model_uri")):
            raise HTTPProblem(400, "give `run_id` (a run that logged a model) or `model_uri` "
                                   "(runs:/RUN_ID/PATH, models:/NAME/VERSION, models:/NAME@ALIAS).")
        uri = body.get("model_uri")
        if uri and not uri.startswith(("runs:/", "models:/")):
            raise HTTPProblem(400, f"`model_uri` {uri!r} is not a runs:/ or models:/ URI; give e.g. "
                                   "runs:/RUN_ID/model (a model folder on disk: use `mlops serve generate`).")
        return {"settings": settings, "out": out, "body": body}

    def work(self, settings, out, body):
        from ..serving import generate_package, model_of_run

        model_uri = body.get("model_uri") or model_of_run(settings, body["run_id"])
        folder = generate_package(model_uri, out, name=body.get("name"), settings=settings)
        with open(folder / "pyproject.toml", "rb") as fh:
            name = tomllib.load(fh)["project"]["name"]
        return {"folder": self.rel(folder), "model_uri": model_uri, "name": name}


class ServingHandler(GetRoute):
    """GET a serving package's state: its name and version, its last image (tag, size, tests) and the build
    this server is running or ran on it."""

    def read(self):
        nb = self.notebook_path()
        out = self.get_query_argument("out", "")
        return {"folder": self.inside(out, "out") if out else nb.parent / f"{nb.stem}-serving"}

    def work(self, folder):
        from ..serving import package_state

        jobs: Jobs = self.settings["mlops_jobs"]
        return {"folder": self.rel(folder), **package_state(folder), "build": jobs.state("build", folder)}


class ServingBuildHandler(PostRoute):
    """POST start `mlops serve build` on a package (its tests, then its image); progress through GET serving."""

    status = 202

    def read(self):
        body = self.body(path=str, out=str, tag=str, base=str)
        nb = self.notebook_path(body.get("path"))
        return {"nb": nb, "folder": self.inside(body.get("out"), "out"), "tag": body.get("tag") or None,
                "base": body.get("base") or None}

    def work(self, nb, folder, tag, base):
        from ..serving import check_build_request

        jobs: Jobs = self.settings["mlops_jobs"]
        check_build_request(folder, tag, base)  # not a package, a bad tag or no engine: 4xx before anything runs
        started = jobs.start("build", folder, build_command(folder, tag, base), self.project(nb))
        if started is None:
            raise HTTPProblem(409, f"an image build is already going on {self.rel(folder)}; wait for it to "
                                   "finish (GET serving shows its progress).")
        return {"folder": self.rel(folder), "started": started}


# ---- models across environments -------------------------------------------------------------------------
class ModelsHandler(GetRoute):
    """GET the registered models of every environment of the notebook's project, each environment's alias holder,
    and which aliases the user may move; with ``name``, that model's audit history too."""

    def read(self):
        name = self.get_query_argument("name", "").strip() or None
        if name is not None and not re.fullmatch(r"[\w.-]+", name):
            raise HTTPProblem(400, f"`name` must be a registered model's name (letters, digits, '.', '_', '-'), "
                                   f"got {name!r}.")
        return {"settings": self.project(self.notebook_path()), "name": name}

    def work(self, settings, name):
        from .. import registry
        from ..registry.lookup import movable

        may = movable(settings)
        body = {"environments": [{"name": env, "may_move": ok} for env, ok in may.items()],
                "models": registry.models(settings)}
        if name is not None:
            body["history"] = registry.history(settings, name)
        return body


class ModelsPromoteHandler(PostRoute):
    """POST {path, ref, to}: move ``to``'s alias to the version ``ref`` names, after the gates (409 with each gate's
    result when one fails)."""

    def read(self):
        data = self.required(self.body(ref=str, to=str, path=str), ref="iris/2", to="staging")
        return {"settings": self.project(self.notebook_path(data.get("path"))), "ref": data["ref"].strip(),
                "to": data["to"].strip()}

    def work(self, settings, ref, to):
        from .. import registry

        moved = registry.promote(settings, ref, to)
        return {"summary": moved.summary(), "version": moved.version, "env": moved.env, "gates": moved.gates}


class ModelsRollbackHandler(PostRoute):
    """POST {path, name, env}: ``env``'s alias back to its previous holder."""

    def read(self):
        data = self.required(self.body(name=str, env=str, path=str), name="iris", env="staging")
        return {"settings": self.project(self.notebook_path(data.get("path"))), "name": data["name"].strip(),
                "env": data["env"].strip()}

    def work(self, settings, name, env):
        from .. import registry

        moved = registry.rollback(settings, name, env)
        return {"summary": moved.summary(), "version": moved.version, "env": moved.env}


# ---- monitoring ---------------------------------------------------------------------------------------
class MonitorHandler(GetRoute):
    """GET the serving packages beside the notebook and the drift check of one (``source``, default the first):
    its logged predictions over ``since``, by ``window``, against its model's reference. A package the check
    cannot read (no reference, another model's log) comes back as ``problem`` with the packages still listed."""

    def read(self):
        nb = self.notebook_path()
        source = self.get_query_argument("source", "").strip()
        return {"nb": nb, "source": self.inside(source, "source") if source else None,
                "since": self.get_query_argument("since", "").strip() or "24h",
                "window": self.get_query_argument("window", "").strip() or "1h"}

    def work(self, nb, source, since, window):
        from .. import monitor
        from ..errors import InvalidInput, MlopsError

        for value, what in ((since, "since"), (window, "window")):  # a 400 before anything is read
            monitor.parse_span(value, what)
        packages = monitor.packages(nb.parent)
        target = source or (packages[0] if packages else None)
        body = {"packages": [self.rel(p) for p in packages], "source": self.rel(target) if target else None,
                "check": None, "problem": None}
        if target is not None:
            try:
                body["check"] = monitor.check(self.project(nb), str(target), since=since, window=window).as_dict()
            except InvalidInput:
                raise
            except MlopsError as exc:
                body["problem"] = str(exc)
        return body


ROUTES = [
    ("status", StatusHandler),
    ("runs", RunsHandler),
    ("compare", CompareHandler),
    ("snapshots", SnapshotsHandler),
    ("restore", RestoreHandler),
    ("sweeps", SweepsHandler),
    ("pipeline", PipelineHandler),
    ("pipeline/validate", PipelineValidateHandler),
    ("pipeline/export", PipelineExportHandler),
    ("pipeline/run", PipelineRunHandler),
    ("pipeline/retrain", PipelineRetrainHandler),
    ("pipeline/report", PipelineReportHandler),
    ("serving", ServingHandler),
    ("serving/generate", ServingGenerateHandler),
    ("serving/build", ServingBuildHandler),
    ("models", ModelsHandler),
    ("models/promote", ModelsPromoteHandler),
    ("models/rollback", ModelsRollbackHandler),
    ("monitor", MonitorHandler),
]


def setup_handlers(web_app) -> None:
    base_url = web_app.settings["base_url"]
    web_app.settings.setdefault("mlops_jobs", Jobs())
    web_app.add_handlers(".*$", [(url_path_join(base_url, NAMESPACE, endpoint), handler)
                                 for endpoint, handler in ROUTES])
