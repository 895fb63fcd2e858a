"""Every code block in the README works as pasted.

The README's ```python blocks are cells of one notebook, run in README order in a real kernel the way JupyterLab
runs them (the kernel knows its notebook, cells carry their ids); its ```bash blocks run line by line in a
shell in the same project. The context the text states is filled in: the iris data as ``X_train, y_train,
X_test, y_test``, ``data/train.csv``, and ``train.ipynb`` with a ``parameters`` cell. The run ids the README
shows (3f2a9c81, ...) stand for the runs the blocks made, by name; port 8080 becomes a free port. The quick
start's ``make demo`` runs for real; ``make test`` (this suite) is checked with ``make -n``.
A README change that breaks a snippet fails here.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from harness import Kernel, all_runs, free_port, git, http_ok, notebook, stop_group, text_of, wait_for

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
BIN = Path(sys.executable).parent
PRELUDE = ("from sklearn.datasets import load_iris\nfrom sklearn.model_selection import train_test_split\n"
           "X_train, X_test, y_train, y_test = train_test_split(*load_iris(return_X_y=True, as_frame=True), "
           "random_state=0)")
# run ids the README shows -> the name of the run (made by the blocks above them) they stand for
RUN_IDS = {"3f2a9c81": "forest", "81be07aa": "forest-200", "5d1e7a02": "on-data"}
SERVERS = ("serve run",)  # commands that serve until stopped: started in the background, stopped at the end


def blocks() -> list[tuple[str, str, int]]:
    """(language, code, line) of each fenced block, in order."""
    text = README.read_text()
    return [(m.group(1), m.group(2), text[:m.start()].count("\n") + 1)
            for m in re.finditer(r"^```(\w+)\n(.*?)^```", text, flags=re.S | re.M)]


def test_the_readme_has_only_blocks_this_test_runs():
    assert {lang for lang, _, _ in blocks()} <= {"python", "bash"}


@pytest.fixture
def readme_project(project):
    (project / "data").mkdir()
    subprocess.run([sys.executable, "-c", "from sklearn.datasets import load_iris; "
                    "load_iris(as_frame=True).frame.to_csv('data/train.csv', index=False)"], cwd=project, check=True)
    notebook(project / "train.ipynb", [
        ("n_estimators = 100", ["parameters"]), PRELUDE, "%load_ext mlops_jupyter",
        "%%mlops run --name from-papermill --metrics accuracy\nfrom sklearn.ensemble import RandomForestClassifier\n"
        "accuracy = RandomForestClassifier(n_estimators=n_estimators).fit(X_train, y_train).score(X_test, y_test)"])
    return project


class Runner:
    """Runs the README's blocks in order: python as notebook cells, bash in a shell."""

    def __init__(self, project: Path):
        self.project = project
        self.port = free_port()
        self.servers: list = []
        self.env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        cells = [PRELUDE] + [code for lang, code, _ in blocks() if lang == "python"]
        self.nb = project / "readme.ipynb"
        nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells],
                                                metadata={"kernelspec": {"name": "python3",
                                                                         "display_name": "Python 3",
                                                                         "language": "python"}}), self.nb)
        self.ids = [c.id for c in nbformat.read(self.nb, as_version=4).cells]
        git(project, "add", "readme.ipynb", "train.ipynb")  # the data is the snapshot's to version
        git(project, "commit", "-qm", "the README's notebook")
        self.kernel = Kernel(project, env={"JPY_SESSION_NAME": str(self.nb)})
        self.cell = 0
        self.python(PRELUDE, 0)

    def fill(self, code: str) -> str:
        for placeholder, name in RUN_IDS.items():
            if placeholder in code:
                runs = wait_for(lambda: [r for r in all_runs(self.project) if r.info.run_name == name],
                                timeout=120, what=f"run {name!r}, which the README names {placeholder}, made above it")
                code = code.replace(placeholder, runs[-1].info.run_id[:8])
        return code.replace("8080", str(self.port))

    def python(self, code: str, line: int) -> None:
        reply, msgs = self.kernel.run(self.fill(code), cell_id=self.ids[self.cell], timeout=900)
        self.cell += 1
        shown = text_of(msgs)
        assert reply["status"] == "ok", f"README line {line}: the cell failed:\n{code}\n---\n{shown}"
        assert "Traceback" not in shown and "UsageError" not in shown, f"README line {line}:\n{shown}"

    def bash(self, code: str, line: int) -> None:
        for cmd in [ln for ln in code.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]:
            cmd = self.fill(cmd)
            if cmd.split("#")[0].strip() == "make test":  # this very suite: check what it would run
                cmd = "make -n test"
            if any(s in cmd for s in SERVERS):
                self.serve(cmd, line)
                continue
            cwd = REPO if cmd.startswith("make ") else self.project
            out = subprocess.run(cmd, shell=True, cwd=cwd, capture_output=True, text=True, env=self.env,
                                 timeout=1800)
            assert out.returncode == 0, f"README line {line}: `{cmd}` failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
            assert "Traceback" not in out.stdout + out.stderr, f"README line {line}: `{cmd}`:\n{out.stderr}"

    def serve(self, cmd: str, line: int) -> None:
        proc = subprocess.Popen(cmd, shell=True, cwd=self.project, env=self.env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.servers.append(proc)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{self.port}/ready") or proc.poll() is not None, timeout=120,
                 interval=0.3, what=f"README line {line}: `{cmd}` to answer")
        assert proc.poll() is None, f"README line {line}: `{cmd}` exited with {proc.returncode}"

    def close(self) -> None:
        for proc in self.servers:
            stop_group(proc)
        self.kernel.shutdown()


def test_every_readme_block_works_as_pasted(readme_project):
    runner = Runner(readme_project)
    try:
        for lang, code, line in blocks():
            getattr(runner, lang)(code, line)
    finally:
        runner.close()
    runs = {r.info.run_name: r for r in all_runs(readme_project)}
    # what the text says the blocks do
    assert {"accuracy", "f1"} <= set(runs["forest"].data.metrics)
    assert runs["from-papermill"].data.params["n_estimators"] == "50"  # papermill's -p reached the parameters cell
    assert any(r.data.tags.get("mlops.reproduces") for r in all_runs(readme_project))


def test_a_command_line_in_the_readme_is_not_pseudo_syntax():
    """`[--flag]` and `(a | b)` are for reading, not for pasting: the README writes real commands."""
    for lang, code, line in blocks():
        for cmd in code.splitlines():
            body = shlex.split(cmd, comments=True) if lang == "bash" else []
            assert not any(w.startswith("[") or w in ("|", "(") for w in body), f"README line {line}: {cmd}"
