"""The MLOps sidebar in a real JupyterLab, driven by headless Chromium (Python Playwright)."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mlflow_seed import STORE_VARS, make_project, seed_runs, write_notebook

CHROMIUM = Path("/usr/bin/chromium")
# Playwright's own browser download fails on this network; Debian's chromium needs these flags as root
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--disable-quic"]
ARTIFACTS = Path(__file__).parent / "artifacts"
TOKEN = "mlops-ui-test-token"

pytestmark = [pytest.mark.ui, pytest.mark.timeout(300)]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_server(proc, url: str, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={TOKEN}", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"jupyter lab did not answer within {timeout} s:\n{log.read_text()[-4000:]}")


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


@pytest.fixture
def lab(tmp_path):
    """A JupyterLab server on a seeded project; yields (base url, project root, notebook path)."""
    root = make_project(tmp_path / "project")
    nb = write_notebook(root / "demo.ipynb")
    seed_runs(root, nb, [
        {"name": "baseline", "start": 1_700_000_000_000, "params": {"lr": "0.1"}, "metrics": {"acc": 0.81}},
        {"name": "tuned", "start": 1_700_000_060_000, "params": {"lr": "0.01"},
         "metrics": {"acc": 0.93, "loss": 0.21}},
    ])
    env = {k: v for k, v in os.environ.items() if k not in STORE_VARS}
    # keep the developer's Jupyter config and saved workspaces out of the test
    env.update(JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"))
    # no news feed or update check: the test must not reach the network, and no toast covers the page
    settings = tmp_path / "settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "lab.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", f"--ServerApp.root_dir={root}",
             "--ServerApp.allow_root=True", "--LabApp.extension_manager=readonly",
             "--LanguageServerManager.autodetect=False", f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}",
             f"--LabApp.user_settings_dir={tmp_path / 'settings'}"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_server(proc, url, log)
        yield url, root, nb
    finally:
        stop_server(proc, url)


def test_sidebar_lists_the_notebooks_runs(lab):
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs it (apt-get install -y chromium).")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: `make test` installs it (pip install -e '.[dev]').")
    url, root, nb = lab
    # the server side must be there too, else the panel can only show an error
    with urllib.request.urlopen(f"{url}/mlops/runs?path=demo.ipynb&token={TOKEN}", timeout=30) as resp:
        assert [r["run_name"] for r in json.load(resp)["runs"]] == ["tuned", "baseline"]

    ARTIFACTS.mkdir(exist_ok=True)
    errors = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 850})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.goto(f"{url}/lab/tree/demo.ipynb?token={TOKEN}", timeout=60_000)
            expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=60_000)

            tab = page.locator('.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="mlops-jupyter:sidebar"]')
            expect(tab).to_be_visible(timeout=30_000)
            tab.click()
            panel = page.get_by_test_id("mlops-sidebar")
            rows = panel.locator(".mlops-run-row")
            try:
                expect(rows).to_have_count(2, timeout=20_000)
                expect(rows.nth(0)).to_contain_text("tuned")
                expect(rows.nth(0)).to_contain_text("acc=0.93")
                expect(rows.nth(0).locator(".mlops-status")).to_have_text("FINISHED")
                expect(rows.nth(1)).to_contain_text("baseline")
                expect(rows.nth(1)).to_contain_text("acc=0.81")
                expect(panel.locator(".mlops-footer")).to_contain_text("mlflow ui --backend-store-uri sqlite:///")

                # a run finished while the panel is open shows up with the next poll (every 3 s)
                seed_runs(root, nb, [{"name": "live", "start": 1_700_000_120_000, "metrics": {"acc": 0.95}}])
                expect(rows).to_have_count(3, timeout=15_000)
                expect(rows.nth(0)).to_contain_text("live")
            finally:
                page.screenshot(path=str(ARTIFACTS / "lab_sidebar.png"))
        except AssertionError as err:
            raise AssertionError(f"{err}\nbrowser console errors: {errors}") from None
        finally:
            browser.close()


def test_a_cell_run_in_lab_is_tracked_with_its_notebook_and_cell(lab):
    """End to end: JupyterLab starts the kernel (JPY_SESSION_NAME), sends the cell id, the run shows up."""
    from playwright.sync_api import expect, sync_playwright

    import nbformat

    url, root, _ = lab
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("%load_ext mlops_jupyter"),
                nbformat.v4.new_code_cell("%%mlops run --name in-lab --metrics acc\nacc = 0.77")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, root / "live.ipynb")
    cell_id = nb.cells[1].id
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 850})
            page.goto(f"{url}/lab/tree/live.ipynb?token={TOKEN}", timeout=60_000)
            expect(page.locator(".jp-NotebookPanel")).to_be_visible(timeout=60_000)
            expect(page.locator(".jp-Notebook-ExecutionIndicator[data-status='idle']")).to_have_count(
                1, timeout=60_000)
            prompts = page.locator(".jp-CodeCell .jp-InputPrompt")
            for i in range(2):  # Shift+Enter runs the selected cell and selects the next one
                for _ in range(3):  # a keypress can land before Lab has focused the notebook
                    if i == 0:
                        page.locator(".jp-CodeCell .jp-InputPrompt").first.click()
                    page.keyboard.press("Shift+Enter")
                    try:
                        expect(prompts.nth(i)).to_contain_text(re.compile(r"\[\d+\]"), timeout=15_000)
                        break
                    except AssertionError:
                        continue
            line = page.locator(".mlops-run-line")
            expect(line).to_contain_text("FINISHED", timeout=60_000)
            expect(line).to_contain_text("artifacts", timeout=60_000)  # completed in place by the recorder
            page.locator('.jp-SideBar.jp-mod-left .lm-TabBar-tab[data-id="mlops-jupyter:sidebar"]').click()
            rows = page.get_by_test_id("mlops-sidebar").locator(".mlops-run-row")
            expect(rows).to_have_count(1, timeout=20_000)
            expect(rows.nth(0)).to_contain_text("in-lab")
            expect(rows.nth(0)).to_contain_text("acc=0.77")
        finally:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "lab_tracked_cell.png"))
            browser.close()
    with urllib.request.urlopen(f"{url}/mlops/runs?path=live.ipynb&token={TOKEN}", timeout=30) as resp:
        (run,) = json.load(resp)["runs"]
    assert run["notebook"] == str(root / "live.ipynb") and run["cell_id"] == cell_id
