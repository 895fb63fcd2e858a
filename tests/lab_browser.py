"""A real JupyterLab server and headless Chromium (Python Playwright) for bench/bench_sidebar.py; the browser
tests are the galata suite in ui-tests/."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from mlflow_seed import STORE_VARS

CHROMIUM = Path("/usr/bin/chromium")
# Playwright's own browser download fails on this network; Debian's chromium needs these flags as root
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic"]
TOKEN = "mlops-ui-test-token"
MEASURE_RENDER = Path(__file__).with_name("measure_render.js")  # shared with ui-tests/tests/lab.ts
SIDEBAR_TAB = '.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="mlops-jupyter:sidebar"]'


class LabError(RuntimeError):
    """The lab server did not come up; the message carries the end of its log."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(proc, url: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise LabError(f"jupyter lab did not answer within {timeout} s:\n{log.read_text()[-4000:]}")


def stop_server(proc, url: str) -> None:
    # ask politely first so kernels (in their own sessions) are shut down too, then kill the group
    try:
        req = urllib.request.Request(f"{url}/api/shutdown", method="POST",
                                     headers={"Authorization": f"token {TOKEN}"})
        urllib.request.urlopen(req, timeout=5)
        proc.wait(timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            break
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass


@contextmanager
def lab_server(root: Path, state: Path):
    """JupyterLab serving ``root``; its config, runtime, settings and log under ``state``. Yields the url."""
    env = {k: v for k, v in os.environ.items() if k not in STORE_VARS}
    # keep the developer's Jupyter config and saved workspaces out of the test
    env.update(JUPYTER_CONFIG_DIR=str(state / "config"), JUPYTER_RUNTIME_DIR=str(state / "runtime"))
    # no news feed or update check: the test must not reach the network, and no toast covers the page
    settings = state / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True, exist_ok=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = state / "lab.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
             "--ServerApp.allow_root=True", "--LabApp.extension_manager=readonly",
             "--LanguageServerManager.autodetect=False", f"--LabApp.workspaces_dir={state / 'workspaces'}",
             f"--LabApp.user_settings_dir={state / 'settings'}"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_server(proc, url, log)
        yield url
    finally:
        stop_server(proc, url)


def open_notebook(page, url: str, path: str):
    from playwright.sync_api import expect

    # reset: the server-side workspace would reopen the notebooks of earlier pages beside this one
    page.goto(f"{url}/lab/tree/{path}?reset&token={TOKEN}", timeout=60_000)
    expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=60_000)


def open_sidebar(page):
    """Click the MLOps tab in the left area (if it is not open) and return the sidebar locator."""
    from playwright.sync_api import expect

    tab = page.locator(SIDEBAR_TAB)
    expect(tab).to_be_visible(timeout=30_000)
    panel = page.get_by_test_id("mlops-sidebar")
    if not panel.is_visible():
        tab.click()
    expect(panel).to_be_visible()
    return panel


def measure_render(page, url: str, path: str) -> dict:
    """Time, in the page, a forced refresh of the runs panel (fetch -> rows in the DOM) and, as the
    anchor, the same GET runs fetched raw (JSON parsed, nothing drawn). Milliseconds.

    The click and the wait happen inside the page (measure_render.js, shared with the galata suite):
    Playwright's own polling of an attribute builds an accessibility snapshot of the whole page each
    time, on the main thread the panel renders on."""
    figures = page.evaluate(f"({MEASURE_RENDER.read_text()})()")
    figures["raw_fetch_ms"] = page.evaluate(
        """async (u) => { const t = performance.now(); const r = await fetch(u, {cache: 'no-store'});
                          await r.json();
                          return performance.now() - t; }""",
        f"{url}/mlops/runs?path={path}&token={TOKEN}")
    return figures
