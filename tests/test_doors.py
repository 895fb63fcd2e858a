"""The three front doors over one core: one argument spec per verb for `%mlops` and `mlops`, comments on
magic lines, typed errors worded by each door, and every CLI verb's error paths ending in one line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
from harness import CLEAN_VARS, all_runs, notebook
from IPython.core.error import UsageError

from mlops_jupyter import commands
from mlops_jupyter import errors as E
from mlops_jupyter.commands import CLI, MAGIC

PY = sys.executable


def mlops(cwd, *args, env: dict | None = None, timeout: float = 300):
    base = {k: v for k, v in os.environ.items() if k not in CLEAN_VARS}
    return subprocess.run([PY, "-m", "mlops_jupyter.cli", *args], cwd=cwd, capture_output=True, text=True,
                          env={**base, **(env or {})}, timeout=timeout)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed once the block ends: nothing listens there


def flush(ip):
    assert ip._mlops_magics.tracker.flush(timeout=60) == 0


# ---- one spec per verb ---------------------------------------------------------------------------
def sub(parser, name: str):
    """The sub-parser of ``name`` ("runs", "serve generate") under a door's root parser."""
    for word in name.split():
        (choices,) = [a.choices for a in parser._actions if getattr(a, "choices", None) and isinstance(a.choices,
                                                                                                     dict)]
        parser = choices[word]
    return parser


def flags(parser) -> set:
    return {s for a in parser._actions for s in (a.option_strings or [a.dest])}


SHARED = [v.name for v in commands.VERBS if set(v.doors) == {"magic", "cli"}]


def test_both_doors_accept_the_same_flags_for_every_shared_verb():
    assert set(SHARED) == {"runs", "compare", "snapshot", "snapshots", "restore", "reproduce", "export",
                           "serve generate", "pipeline run", "pipeline status", "register", "promote", "rollback",
                           "models", "report", "retrain", "monitor"}
    magic, cli = commands.parser(MAGIC), commands.parser(CLI)
    for name in SHARED:
        assert flags(sub(magic, name)) == flags(sub(cli, name)), name
    # the flags that used to exist in one door only
    assert {"--last", "--all", "--notebook", "--project", "--json", "--kind"} <= flags(sub(magic, "runs"))
    assert {"--last", "--all", "--notebook", "--project"} <= flags(sub(cli, "compare"))
    assert {"--project"} <= flags(sub(magic, "reproduce")) & flags(sub(magic, "serve generate"))
    assert {"--check", "--out"} <= flags(sub(cli, "export")) and {"--run"} <= flags(sub(cli, "serve generate"))
    # door-only verbs are declared the same way, in their door alone
    with pytest.raises(KeyError):
        sub(magic, "serve run")
    assert flags(sub(cli, "serve run")) >= {"--host", "--port", "--workers"}


@pytest.mark.parametrize("verb", ["snapshot", "restore", "reproduce", "serve generate", "promote"])
def test_help_is_the_same_text_in_both_doors(ip, project, capsys, verb):
    ip.run_line_magic("mlops", f"{verb} --help")
    magic = capsys.readouterr().out
    proc = mlops(project, *verb.split(), "--help")
    assert proc.returncode == 0 and proc.stderr == ""
    assert "usage: %mlops " + verb in magic and "usage: mlops " + verb in proc.stdout
    norm = lambda text: " ".join(text.replace("%mlops", "mlops").split())  # noqa: E731 - argparse wraps by width
    assert norm(magic) == norm(proc.stdout)


def test_magic_help_and_the_verb_list(ip, capsys):
    doc = ip.find_magic("mlops").__doc__
    for v in commands.verbs(MAGIC):
        assert f"{commands.command(MAGIC, v)} " in doc and v.summary in doc
    assert "%%mlops run" in doc and "%%mlops sweep" in doc and "README" not in doc
    ip.run_line_magic("mlops", "runs --help")  # no "unrecognized arguments: --help"
    out = capsys.readouterr().out
    assert "usage: %mlops runs" in out and "--kind {cell,sweep,pipeline,retrain}" in out
    # a cell verb's help from a line, and from the cell itself (its body does not run)
    ip.run_line_magic("mlops", "sweep --help")
    assert "usage: %%mlops sweep" in capsys.readouterr().out
    result = ip.run_cell("%%mlops run --help\nnot_run = 1")
    assert result.success and "not_run" not in ip.user_ns and "usage: %%mlops run" in capsys.readouterr().out
    ip.run_line_magic("mlops", "--help")
    assert "%mlops export" in capsys.readouterr().out


# ---- comments on magic lines (issue 19) ----------------------------------------------------------
def test_split_reads_comments_as_a_shell_does():
    assert commands.split("runs --last 10  # this notebook's runs") == ["runs", "--last", "10"]
    assert commands.split('run --tag "note=a # b" --tag k=x#y # done') == ["run", "--tag", "note=a # b", "--tag",
                                                                          "k=x#y"]
    assert commands.split("restore d.csv --run X  # (or --rev REV)") == ["restore", "d.csv", "--run", "X"]
    assert commands.split("# only a comment") == [] and commands.split("a 'it''s' \\# b") == ["a", "its", "#", "b"]
    with pytest.raises(commands.UsageProblem, match="quotes"):
        commands.split("init --experiment 'unclosed  # comment")


def test_readme_lines_with_comments_paste_as_they_are(ip, project):
    for lr in (0.1, 0.2):
        cell = f"%%mlops run --name lr{lr} --metrics acc  # one run per rate\nlr = {lr}\nacc = 1 - lr"
        assert ip.run_cell(cell).success
    flush(ip)
    assert repr(ip.run_line_magic("mlops", "runs --last 10  # this notebook's runs")).count("FINISHED") == 2
    a, b = (r.info.run_id for r in all_runs(project))
    table = ip.run_line_magic("mlops", f"compare {a[:8]} {b[:8]}   # params and metrics side by side (or: --last 2)")
    assert repr(table) == repr(ip.run_line_magic("mlops", "compare --last 2  # the two newest"))
    assert {r.info.run_name for r in all_runs(project)} == {"lr0.1", "lr0.2"}
    # a '#' inside quotes or inside a word is the value's own
    assert ip.run_cell('%%mlops run --name tagged --tag "note=a # b" --tag k=x#y  # header comment\nz = 1').success
    flush(ip)
    (run,) = [r for r in all_runs(project) if r.info.run_name == "tagged"]
    assert run.data.tags["note"] == "a # b" and run.data.tags["k"] == "x#y"


def test_a_sweep_line_takes_a_comment_too(ip, project):
    result = ip.run_cell('%%mlops sweep --space "x=choice(1, 2)" --metric acc --mode max  # tune x\nscore = x')
    assert isinstance(result.error_in_exec, UsageError)
    message = str(result.error_in_exec)
    assert "never assigns `acc`" in message and "--metric acc" in message and "unrecognized" not in message


# ---- typed errors, worded by each door -----------------------------------------------------------
DOOR_WORDS = ("%mlops", "mlops ", "--force", "--out", "--push")
ERRORS = [
    (E.UnsnapshottedChanges("data/x.csv has changes that are not in any snapshot.", path="data/x.csv"),
     "snapshot them first (`{p} snapshot data/x.csv`), or restore with --force"),
    (E.RunNotFound(run="0123abcd", uri="sqlite:///s.db"), "`{p} runs --all` lists the run ids"),
    (E.NotFound("data/x.csv has no snapshots.", what="snapshots", path="data/x.csv"),
     "`{p} snapshot data/x.csv` makes the first one"),
    (E.NotFound("/p has no DVC repository.", what="snapshots", project="/p"), "`{p} snapshot PATH` makes the first"),
    (E.NotFound("/p/pipe is not an exported pipeline.", what="pipeline", folder="/p/pipe"),
     "`{p} export NOTEBOOK --out /p/pipe`"),
    (E.InvalidInput("run r logged 2 models (runs:/r/a, runs:/r/b).", what="models", example="runs:/r/a"),
     "`{p} serve generate runs:/r/a --out DIR`"),
]


@pytest.mark.parametrize("exc, words", ERRORS, ids=[type(e).__name__ + str(i) for i, (e, _) in enumerate(ERRORS)])
def test_each_door_adds_its_own_hint_to_a_core_message(exc, words):
    assert not any(w in str(exc) for w in DOOR_WORDS), str(exc)  # the core names no door
    for door in (MAGIC, CLI):
        text = commands.explain(exc, door)
        assert text.startswith(str(exc).rstrip(".")) and words.format(p=door.prefix) in text
        assert "\n" not in text  # one paragraph
    assert "%mlops" not in commands.explain(exc, CLI)


def test_every_hint_formats_in_both_doors():
    for kind, when, text in commands.HINTS:
        fields = {**when, **{n: "x" for _, n, _, _ in commands._FORMAT.parse(text) if n and n != "p"}}
        exc = kind.__new__(kind)
        E.MlopsError.__init__(exc, "a core message.", **fields)
        for door in (MAGIC, CLI):
            assert commands.hint(exc, door), (kind, when)


def test_the_server_maps_by_type_never_by_text():
    from mlops_jupyter.server.handlers import error_body

    cases = [(E.RunNotFound(run="x"), 404, "run_not_found"), (E.UnsnapshottedChanges("x", path="d"), 409,
             "unsnapshotted_changes"), (E.Busy("x"), 409, "busy"), (E.StoreUnavailable(uri="http://h"), 503,
             "store_unavailable"), (E.StoreBroken(uri="sqlite:///s", fix="restore the backup"), 500, "store_broken"),
             (E.AccessDenied("x"), 403, "access_denied"), (E.PipelineError("x", cell_index=3), 400, "pipeline_error"),
             (E.MlopsError("no run here; pass --force"), 400, "bad_request")]
    for exc, status, code in cases:
        body = error_body(exc)
        assert (body["code"], body["error"]) == (status, code), exc
    assert "restore with force" in error_body(E.UnsnapshottedChanges("d changed.", path="d"))["message"]


def test_magic_errors_are_usage_errors_with_the_magic_hint(ip, project):
    with pytest.raises(UsageError) as err:
        ip.run_line_magic("mlops", "compare 0123abcd 4567ef01")
    assert "no run '0123abcd'" in str(err.value) and "`%mlops runs --all`" in str(err.value)
    with pytest.raises(UsageError, match="give run ids or --last N, not both"):
        ip.run_line_magic("mlops", "compare --last 2 0123abcd")
    with pytest.raises(UsageError, match=r"missing\.csv has no snapshots; `%mlops snapshot missing\.csv` makes the "):
        ip.run_line_magic("mlops", "snapshots missing.csv")


# ---- every CLI verb's error paths: one line, an exit status, never a traceback ---------------------------
@pytest.fixture(scope="module")
def cli_project(tmp_path_factory):
    from harness import make_git_project

    root = make_git_project(tmp_path_factory.mktemp("doors") / "proj")
    notebook(root / "good.ipynb", [("n = 2", ["parameters"]), ("x = n * 2", ["step:one"]), ("y = x + 1", ["step:two"])])
    notebook(root / "badtags.ipynb", [("a = 1", ["step:one"]), ("b = 2", ["step:two", "after:ghost"])])
    (root / "broken.ipynb").write_text("{not json")
    (root / "data.csv").write_text("a,b\n1,2\n")
    for folder in ("pipe", "badparams"):
        out = mlops(root, "export", "good.ipynb", "--out", folder)
        assert out.returncode == 0, out.stderr
    (root / "badparams" / "params.yaml").write_text("n: [")
    (root / "badpipe").mkdir()
    (root / "badpipe" / "pipeline.json").write_text("{")
    (root / "notapackage").mkdir()
    return root


CLI_ERRORS = [
    [], ["frob"], ["runs", "--last", "0"], ["runs", "--kind", "bogus"], ["runs", "--all", "--notebook", "x.ipynb"],
    ["compare"], ["compare", "onlyone"], ["compare", "0123abcd", "4567ef01"], ["compare", "--last", "2", "abc"],
    ["snapshot"], ["snapshot", "missing.csv"], ["snapshot", "/etc/passwd"], ["snapshot", "."],
    ["snapshots", "data.csv"], ["restore", "data.csv"], ["restore", "data.csv", "--run", "0123abcd"],
    ["restore", "data.csv", "--rev", "HEAD"], ["reproduce"], ["reproduce", "0123abcd"],
    ["export"], ["export", "missing.ipynb"], ["export", "broken.ipynb"], ["export", "badtags.ipynb"],
    ["export", "badtags.ipynb", "--check"], ["export", "good.ipynb", "--out", "."],
    ["serve"], ["serve", "generate", "--out", "x"], ["serve", "generate", "runs:/0123abcd/model", "--out", "x"],
    ["serve", "generate", "--run", "0123abcd", "--out", "x"], ["serve", "generate", "/nowhere/model", "--out", "x"],
    ["serve", "generate", "ftp://model", "--out", "x"],
    ["serve", "run", "nowhere"], ["serve", "run", "notapackage"], ["serve", "run", "pipe", "--port", "99999"],
    ["pipeline"], ["pipeline", "run", "nowhere"], ["pipeline", "status", "nowhere"],
    ["pipeline", "run", "pipe", "-p", "nope=1"], ["pipeline", "run", "pipe", "-p", "noequals"],
    ["pipeline", "run", "pipe", "-p", "n=many"], ["pipeline", "run", "pipe", "--from", "ghost"],
    ["pipeline", "status", "badpipe"], ["pipeline", "run", "badparams"], ["runs", "--project", "/nonexistent/dir"],
    ["reproduce", "0123abcd", "--project", "nowhere"], ["retrain", "nowhere"], ["retrain", "pipe", "--promote-to", "qa"],
    ["report", "--baseline", "nowhere"],
]
# verbs that read the store, against a tracking server that is not there
STORE_DOWN = [["runs"], ["runs", "--kind", "pipeline"], ["compare", "0123abcd", "4567ef01"], ["compare", "--last", "2"],
              ["reproduce", "0123abcd"], ["restore", "data.csv", "--run", "0123abcd"],
              ["serve", "generate", "--run", "0123abcd", "--out", "x"],
              ["serve", "generate", "runs:/0123abcd/model", "--out", "x"], ["report", "0123abcd"]]


def test_every_cli_verb_fails_in_one_line_without_a_traceback(cli_project):
    down = {"MLOPS_TRACKING_URI": f"http://127.0.0.1:{closed_port()}"}
    failures = []
    for args, env in [(a, None) for a in CLI_ERRORS] + [(a, down) for a in STORE_DOWN]:
        out = mlops(cli_project, *args, env=env)
        err = out.stderr.strip().splitlines()
        if out.returncode != 2 or "Traceback" in out.stdout + out.stderr or len(err) != 1 or \
                not err[0].startswith("mlops") or "%mlops" in out.stderr:
            failures.append((args, bool(env), out.returncode, out.stdout[-500:], out.stderr[-1500:]))
    assert not failures, "\n\n".join(map(str, failures))
    assert not (cli_project / "x").exists()  # nothing half-written


# ---- the thin doors' new powers --------------------------------------------------------------------------
def test_export_check_writes_nothing_and_names_the_cell(cli_project, ip, monkeypatch):
    out = mlops(cli_project, "export", "good.ipynb", "--check")
    assert out.returncode == 0 and "2 steps (one, two)" in out.stdout and "nothing was written" in out.stdout
    assert not (cli_project / "good-pipeline").exists()
    out = mlops(cli_project, "export", "badtags.ipynb", "--check")
    assert out.returncode == 2 and "cell 1 ('b = 2') says after:ghost" in out.stderr
    assert not (cli_project / "badtags-pipeline").exists()
    monkeypatch.chdir(cli_project)
    monkeypatch.setenv("MLOPS_NOTEBOOK", str(cli_project / "good.ipynb"))
    ip.run_line_magic("mlops", "export --check")
    with pytest.raises(UsageError, match="says after:ghost"):
        ip.run_line_magic("mlops", "export badtags.ipynb --check")
    assert not (cli_project / "good-pipeline").exists() and not (cli_project / "badtags-pipeline").exists()


def test_pipeline_status_says_when_the_export_is_outdated(tmp_path):
    from harness import make_git_project

    root = make_git_project(tmp_path / "proj")
    nb = notebook(root / "nb.ipynb", [("x = 1", ["step:one"])])
    assert mlops(root, "export", "nb.ipynb").returncode == 0  # --out defaults to nb-pipeline beside it
    out = mlops(root, "pipeline", "status", "nb-pipeline")
    assert out.returncode == 1 and "never run" in out.stdout and "outdated" not in out.stdout
    notebook(nb, [("x = 2", ["step:one"])])
    out = mlops(root, "pipeline", "status", "nb-pipeline")
    assert out.returncode == 1 and "the export is outdated" in out.stdout and "nb.ipynb changed" in out.stdout
    assert "mlops export nb.ipynb --out nb-pipeline" in out.stdout
    assert mlops(root, "export", "nb.ipynb", "--out", "nb-pipeline").returncode == 0
    assert "outdated" not in mlops(root, "pipeline", "status", "nb-pipeline").stdout


ONE_MODEL = r"""
import json
import mlflow, mlflow.sklearn
from sklearn.linear_model import LogisticRegression
from mlops_jupyter import config
s = config.resolve()
config.ensure_state_dir(s.project_root)
mlflow.set_tracking_uri(s.tracking_uri)
mlflow.set_experiment(experiment_id=mlflow.create_experiment("one", artifact_location=s.artifact_location))
X, y = [[0.0, 1.0], [1.0, 0.0], [0.5, 0.5], [0.9, 0.1]], [0, 1, 0, 1]
import pandas as pd
X = pd.DataFrame(X, columns=["a", "b"])
model = LogisticRegression().fit(X, y)
with mlflow.start_run(run_name="one-model") as one:
    mlflow.sklearn.log_model(model, name="clf", input_example=X.head(2), pip_requirements=["scikit-learn"])
with mlflow.start_run(run_name="two-models") as two:
    for name in ("a", "b"):
        mlflow.sklearn.log_model(model, name=name, input_example=X.head(2), pip_requirements=["scikit-learn"])
with mlflow.start_run(run_name="no-model") as none:
    mlflow.log_metric("acc", 1.0)
print(json.dumps({"one": one.info.run_id, "two": two.info.run_id, "none": none.info.run_id}))
"""


def test_serve_generate_picks_the_model_a_run_logged(ip, project, capsys):
    root = project
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_VARS}
    logged = subprocess.run([PY, "-c", ONE_MODEL], cwd=root, capture_output=True, text=True, env=env)
    assert logged.returncode == 0, logged.stderr
    ids = json.loads(logged.stdout.strip().splitlines()[-1])
    out = mlops(root, "serve", "generate", "--run", ids["one"], "--out", "pkg")
    assert out.returncode == 0, out.stderr
    assert f"runs:/{ids['one']}/clf" in out.stdout and (root / "pkg" / "Dockerfile").is_file()
    out = mlops(root, "serve", "generate", "--run", ids["two"], "--out", "pkg2")
    assert out.returncode == 2 and "logged 2 models" in out.stderr
    assert f"`mlops serve generate runs:/{ids['two']}/a --out DIR`" in out.stderr and not (root / "pkg2").exists()
    out = mlops(root, "serve", "generate", "--run", ids["none"], "--out", "pkg3")
    assert out.returncode == 2 and "logged no model" in out.stderr and "mlops serve generate MODEL_URI" in out.stderr
    ip.run_line_magic("mlops", f"serve generate --run {ids['one']} --out pkg4 --project {root}")
    assert f"runs:/{ids['one']}/clf" in capsys.readouterr().out and (root / "pkg4" / "Dockerfile").is_file()
    with pytest.raises(UsageError, match=r"`%mlops serve generate runs:/\w+/a --out DIR`"):
        ip.run_line_magic("mlops", f"serve generate --run {ids['two']} --out pkg5 --project {root}")


# ---- every kind of run in one listing ----------------------------------------------------------------------
def test_runs_list_cells_sweeps_and_pipelines_with_their_children(ip, project, monkeypatch):
    nb = notebook(project / "nb.ipynb", [("n = 2", ["parameters"]), ("x = n * 2", ["step:prep"]),
                                         ("y = x + 1", ["step:fit"])])
    monkeypatch.setenv("MLOPS_NOTEBOOK", str(nb))
    tracker = ip._mlops_magics.tracker
    ip.user_ns["tracker"] = tracker
    assert ip.run_cell("%%mlops run --name cell\nacc = 0.5").success
    trials = "for i in range(2):\n    tracker.child(rec, f'trial-{i + 1}', {'lr': i}, {'acc': i / 2})"
    assert ip.run_cell(f"%%mlops run --name search --tag mlops.kind=sweep\nrec = tracker.current\n{trials}").success
    flush(ip)
    ip.run_line_magic("mlops", "export")  # into nb-pipeline, the default folder
    out = mlops(project, "pipeline", "run", "nb-pipeline")
    assert out.returncode == 0, out.stderr
    listing = json.loads(mlops(project, "runs", "--json").stdout)
    kinds = {r["run_name"]: r["kind"] for r in listing}
    assert kinds == {"pipeline nb": "pipeline", "search": "sweep", "cell": None}
    pipe = next(r for r in listing if r["kind"] == "pipeline")
    assert [c["run_name"] for c in pipe["children"]] == ["prep", "fit"]
    sweep = next(r for r in listing if r["kind"] == "sweep")
    assert sorted(c["run_name"] for c in sweep["children"]) == ["trial-1", "trial-2"]
    only = json.loads(mlops(project, "runs", "--json", "--kind", "pipeline").stdout)
    assert [r["run_id"] for r in only] == [pipe["run_id"]]
    table = mlops(project, "runs").stdout
    assert "└ " in table and " step " in table and " trial " in table
    # the notebook's own listing holds the pipelines exported from it; --kind narrows it
    mine = repr(ip.run_line_magic("mlops", "runs"))
    assert "pipeline nb" in mine and "search" in mine and "trial-2" in mine and "prep" in mine
    assert "pipeline nb" not in repr(ip.run_line_magic("mlops", "runs --kind cell"))
    assert [r["run_name"] for r in ip.run_line_magic("mlops", "runs --kind sweep --json")] == ["search"]
    assert len(ip.run_line_magic("mlops", "runs --all --json")) == 3
