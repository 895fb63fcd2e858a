"""HTTP handlers for ``{base_url}mlops/...`` (described in openapi.yaml next to this file)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from .. import config
from ..errors import MlopsError, StoreError
from ..tracking import query

NAMESPACE = "mlops"


class HTTPProblem(Exception):
    """A refusal with a status code and a message for the user (bad parameter, path outside root)."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def error_body(exc: BaseException) -> dict:
    """The one mapping from an exception to ``{code, message}``: user mistakes are 4xx, the rest 500."""
    if isinstance(exc, HTTPProblem):
        return {"code": exc.code, "message": str(exc)}
    if isinstance(exc, StoreError):  # the store is down: not the client's mistake
        return {"code": 503, "message": str(exc)}
    if isinstance(exc, MlopsError):  # ConfigError included
        return {"code": 400, "message": str(exc)}
    if isinstance(exc, tornado.web.HTTPError):
        return {"code": exc.status_code, "message": exc.log_message or exc.reason or "HTTP error"}
    return {"code": 500, "message": f"{type(exc).__name__}: {exc}"}


class MlopsHandler(APIHandler):
    """Base class: JSON replies, errors as ``{code, message}`` (never an HTML traceback page)."""

    def reply(self, body: dict, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(body))

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

    def notebook_path(self) -> Path:
        """The ``path`` query argument resolved inside the server root; refused outside it."""
        rel = self.get_query_argument("path", "").strip()
        if not rel:
            raise HTTPProblem(400, "query parameter `path` is required: the notebook path relative to the "
                                   "server root, e.g. ?path=analysis/train.ipynb")
        root = Path(self.settings["server_root_dir"]).expanduser().resolve()
        target = (root / rel).resolve()
        if not target.is_relative_to(root):
            raise HTTPProblem(403, f"path {rel!r} is outside the server root; give a path inside it.")
        return target

    def positive_int(self, name: str) -> int | None:
        raw = self.get_query_argument(name, "").strip()
        if not raw:
            return None
        if not raw.isdigit() or int(raw) < 1:
            raise HTTPProblem(400, f"query parameter `{name}` must be a positive whole number, got {raw!r}.")
        return int(raw)


class RunsHandler(MlopsHandler):
    """GET the tracked runs of one notebook, newest first."""

    @tornado.web.authenticated
    async def get(self):
        try:
            nb = self.notebook_path()
            last = self.positive_int("last")
            settings = config.resolve(start=nb.parent)
            # MLflow calls block (SQLite, HTTP): keep them off the server's event loop
            runs = await asyncio.to_thread(query.list_runs, settings, notebook=str(nb), last=last)
        except Exception as exc:
            return self.fail(exc)
        self.reply({"notebook": str(nb), "tracking_uri": settings.tracking_uri,
                    "ui": settings.where_to_look(), "runs": runs})


ROUTES = [("runs", RunsHandler)]


def setup_handlers(web_app) -> None:
    base_url = web_app.settings["base_url"]
    web_app.add_handlers(".*$", [(url_path_join(base_url, NAMESPACE, endpoint), handler)
                                 for endpoint, handler in ROUTES])
