"""jupyter_server extension: the REST routes the MLOps sidebar calls.

A thin front door onto the core (``mlops_jupyter.config``, ``mlops_jupyter.tracking``); importing it
imports no mlflow, so a server with the extension enabled starts as fast as one without.
"""

from .handlers import setup_handlers


def _load_jupyter_server_extension(serverapp):
    setup_handlers(serverapp.web_app)
    serverapp.log.info("mlops_jupyter: registered %smlops/ routes", serverapp.web_app.settings["base_url"])


# the name older jupyter_server / notebook releases looked up
load_jupyter_server_extension = _load_jupyter_server_extension
