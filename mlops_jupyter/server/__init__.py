"""jupyter_server extension: the REST routes the MLOps sidebar calls.

A thin front door onto the core (config, tracking, data, sweep, pipeline, serving); importing it
imports no engine (mlflow, dvc, ray, papermill), so a server with the extension enabled starts as fast as
one without, and each route imports what it calls only when it is called.
"""

from .handlers import setup_handlers


def _load_jupyter_server_extension(serverapp):
    setup_handlers(serverapp.web_app)
    serverapp.log.info("mlops_jupyter: registered %smlops/ routes", serverapp.web_app.settings["base_url"])


# the name older jupyter_server / notebook releases looked up
load_jupyter_server_extension = _load_jupyter_server_extension
