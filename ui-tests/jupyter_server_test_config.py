"""The JupyterLab server the galata suite drives: galata's settings, plus what this machine and the
suite need. The Playwright config seeds ``$MLOPS_UI_STATE/project`` first and serves it."""

import atexit
import json
import os
import shutil
import sys
from pathlib import Path

from jupyterlab.galata import configure_jupyter_server

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from image_base import storage_env  # noqa: E402
from mlflow_seed import STORE_VARS  # noqa: E402

configure_jupyter_server(c)  # noqa: F821 (c is the config object jupyter passes in)

state = Path(os.environ["MLOPS_UI_STATE"])
# the project's embedded store, never the developer's tracking server; kernels inherit this environment
for var in STORE_VARS:
    os.environ.pop(var, None)
# image builds the sidebar starts use the test suite's image storage, where the cached base image lives
os.environ.update(storage_env())

c.ServerApp.root_dir = str(state / "project")  # noqa: F821
c.ServerApp.ip = "127.0.0.1"  # noqa: F821
c.ServerApp.port = int(os.environ.get("MLOPS_UI_PORT", "8888"))  # noqa: F821
c.ServerApp.allow_root = True  # noqa: F821 (the test machines run as root)
c.LabApp.extension_manager = "readonly"  # noqa: F821 (no PyPI lookups)
c.LanguageServerManager.autodetect = False  # noqa: F821
c.LabApp.workspaces_dir = str(state / "workspaces")  # noqa: F821
# no news feed or update check: the tests must not reach the network, and no toast covers the page
settings = state / "settings"
(settings / "@jupyterlab" / "apputils-extension").mkdir(parents=True, exist_ok=True)
(settings / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings").write_text(
    json.dumps({"fetchNews": "false", "checkForUpdates": False}))
c.LabApp.user_settings_dir = str(settings)  # noqa: F821

# the run's state (stores, DVC cache) goes with the server, once it has shut its kernels down
if state.name.startswith("mlops-ui-"):  # only the temporary folder the Playwright config made
    atexit.register(shutil.rmtree, state, ignore_errors=True)
