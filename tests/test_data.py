"""Data snapshots on a real git + DVC repo, linked to runs in the real MLflow store."""

import os
import subprocess
import sys

import pytest
from harness import all_runs, git
from IPython.core.error import UsageError


def flush(ip):
    assert ip._mlops_magics.tracker.flush(timeout=60) == 0


def commits(root):
    return git(root, "rev-list", "--count", "HEAD").strip()


def test_snapshot_change_snapshot_restore_by_run_is_byte_identical_and_linked(ip, project, capsys):
    data = project / "data"
    data.mkdir()
    (data / "train.csv").write_bytes(b"x,y\n1,2\n")
    (project / "notes.txt").write_text("my staged work")
    git(project, "add", "notes.txt")
    ip.run_line_magic("mlops", "snapshot data/train.csv -m 'first version'")
    out = capsys.readouterr().out
    assert "initialised DVC" in out and "snapshot " in out and "the next tracked run records it" in out
    assert git(project, "diff", "--cached", "--name-only").split() == ["notes.txt"]  # still staged, not swept in
    assert git(project, "log", "-1", "--format=%s").strip() == "first version"
    assert ip.run_cell("%%mlops run --name v1\nrows = open('data/train.csv').read().count('\\n')").success

    (data / "train.csv").write_bytes(b"x,y\n1,2\n3,4\n")
    assert ip.run_cell("%%mlops run --name v2\n%mlops snapshot data/train.csv\nrows = 3").success
    assert "linked to this cell's run" in capsys.readouterr().out
    flush(ip)
    runs = {r.info.run_name: r for r in all_runs(project)}
    key = "mlops.data.data/train.csv"
    v1_md5, v2_md5 = runs["v1"].data.tags[key], runs["v2"].data.tags[key]
    assert v1_md5 != v2_md5
    from mlflow import MlflowClient

    run = MlflowClient(os.environ["MLFLOW_TRACKING_URI"]).get_run(runs["v1"].info.run_id)
    assert [(d.dataset.name, d.dataset.digest) for d in run.inputs.dataset_inputs] == [("data/train.csv", v1_md5)]

    table = repr(ip.run_line_magic("mlops", "snapshots data/train.csv"))  # the link seen from the data side
    lines = [line for line in table.splitlines() if v1_md5 in line or v2_md5 in line]
    assert len(lines) == 2 and "2 snapshots of data/train.csv" in table
    assert runs["v1"].info.run_id[:8] in next(line for line in lines if v1_md5 in line)
    assert runs["v2"].info.run_id[:8] in next(line for line in lines if v2_md5 in line)

    ip.run_line_magic("mlops", f"restore data/train.csv --run {runs['v1'].info.run_id[:8]}")
    assert (data / "train.csv").read_bytes() == b"x,y\n1,2\n"
    ip.run_line_magic("mlops", f"restore data/train.csv --run {runs['v2'].info.run_id}")
    assert (data / "train.csv").read_bytes() == b"x,y\n1,2\n3,4\n"


def test_folder_snapshot_restore_by_rev_and_refusal_of_unsnapshotted_changes(ip, project):
    folder = project / "images"
    folder.mkdir()
    (folder / "a.txt").write_text("A")
    (folder / "b.txt").write_text("B")
    ip.run_line_magic("mlops", "snapshot images")
    first = git(project, "rev-parse", "HEAD").strip()
    (folder / "b.txt").write_text("B2")
    (folder / "c.txt").write_text("C")
    ip.run_line_magic("mlops", "snapshot images")
    (folder / "a.txt").write_text("edited, never snapshotted")
    with pytest.raises(UsageError, match="not in any snapshot.*--force"):
        ip.run_line_magic("mlops", f"restore images --rev {first}")
    assert (folder / "a.txt").read_text() == "edited, never snapshotted"  # untouched
    ip.run_line_magic("mlops", f"restore images --rev {first} --force")
    assert sorted(p.name for p in folder.iterdir()) == ["a.txt", "b.txt"]
    assert (folder / "a.txt").read_text() == "A" and (folder / "b.txt").read_text() == "B"


def test_unchanged_data_is_not_snapshotted_twice(ip, project, capsys):
    (project / "d.bin").write_bytes(b"1" * 1000)
    ip.run_line_magic("mlops", "snapshot d.bin")
    n = commits(project)
    ip.run_line_magic("mlops", "snapshot d.bin")
    assert "unchanged since the last snapshot" in capsys.readouterr().out
    assert commits(project) == n


def test_large_file_with_progress_and_exact_restore(ip, project, capsys):
    big = project / "big.bin"
    chunk = os.urandom(1 << 20)
    with big.open("wb") as fh:
        for _ in range(200):
            fh.write(chunk)
    ip.run_line_magic("mlops", "snapshot big.bin")
    assert "%" in capsys.readouterr().out  # a progress bar for data over 100 MB
    first = git(project, "rev-parse", "HEAD").strip()
    with big.open("r+b") as fh:
        fh.write(b"changed")
    ip.run_line_magic("mlops", "snapshot big.bin")
    ip.run_line_magic("mlops", f"restore big.bin --rev {first}")
    with big.open("rb") as fh:
        assert fh.read(len(chunk)) == chunk
    assert big.stat().st_size == 200 << 20


@pytest.mark.parametrize("args, names", [
    ("snapshot /etc/hostname", "outside the project"),
    ("snapshot nothing-here.csv", "does not exist"),
    ("snapshot pyproject.toml", "tracked by git"),
    ("snapshot .mlops", "own state"),
    ("restore x.csv", "--run"),
    ("snapshot", "PATH"),
])
def test_bad_snapshot_arguments(ip, project, args, names):
    with pytest.raises(UsageError, match=names):
        ip.run_line_magic("mlops", args)
    assert not list(project.rglob("*.dvc"))


def test_restore_to_a_run_that_used_no_snapshot_of_the_path(ip, project):
    (project / "a.csv").write_text("a")
    (project / "b.csv").write_text("b")
    ip.run_line_magic("mlops", "snapshot a.csv")
    ip.run_cell("%%mlops run --name uses-a\nx = 1")
    flush(ip)
    (run,) = all_runs(project)
    with pytest.raises(UsageError, match="used no snapshot of b.csv; it used: a.csv"):
        ip.run_line_magic("mlops", f"restore b.csv --run {run.info.run_id}")


def test_failed_snapshot_leaves_nothing_half_written(ip, project):
    (project / ".dvcignore").write_text("ignored.csv\n")
    (project / "ignored.csv").write_text("x")
    (project / "ok.csv").write_text("ok")
    ip.run_line_magic("mlops", "snapshot ok.csv")
    n, status = commits(project), git(project, "status", "--porcelain")
    with pytest.raises(UsageError):
        ip.run_line_magic("mlops", "snapshot ignored.csv")
    assert not (project / "ignored.csv.dvc").exists()
    assert not (project / ".gitignore").exists() or "ignored.csv" not in (project / ".gitignore").read_text()
    assert commits(project) == n and git(project, "status", "--porcelain") == status


def test_unreachable_remote_on_push_says_the_snapshot_is_safe(ip, project):
    (project / "blocker").write_text("a file where the remote folder would go")
    (project / "d.csv").write_text("d")
    ip.run_line_magic("mlops", "snapshot d.csv")
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-f", "-d", "broken", str(project / "blocker" / "r")],
                   cwd=project, check=True, capture_output=True)
    (project / "d.csv").write_text("d2")
    with pytest.raises(UsageError, match="committed locally, but pushing it to the DVC remote"):
        ip.run_line_magic("mlops", "snapshot d.csv --push")
    assert "d.csv.dvc" in git(project, "show", "--name-only", "--format=", "HEAD")


def test_no_git_repo_is_initialised_and_said_so(tmp_path, monkeypatch):
    root = tmp_path / "plain"
    root.mkdir()
    (root / "pyproject.toml").write_text("[project]\nname='p'\n")
    (root / "d.csv").write_text("d")
    out = subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", "snapshot", "d.csv"], cwd=root,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "initialised a git repository" in out.stdout and (root / "d.csv.dvc").exists()


def test_git_unavailable_is_a_clear_error(tmp_path):
    root = tmp_path / "nogit"
    root.mkdir()
    (root / "d.csv").write_text("d")
    env = {**os.environ, "PATH": str(tmp_path / "empty-bin")}
    out = subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", "snapshot", "d.csv"], cwd=root,
                         capture_output=True, text=True, env=env)
    assert out.returncode == 2 and "git is not installed" in out.stderr and "Traceback" not in out.stderr
    assert not (root / "d.csv.dvc").exists() and not (root / ".dvc").exists()


def test_push_then_restore_from_the_remote_when_the_cache_lost_it(ip, project):
    import shutil

    (project / "d.bin").write_bytes(b"version one")
    ip.run_line_magic("mlops", "snapshot d.bin --push")
    first = git(project, "rev-parse", "HEAD").strip()
    assert any((project / ".mlops" / "dvc-remote").rglob("*"))
    (project / "d.bin").write_bytes(b"version two")
    ip.run_line_magic("mlops", "snapshot d.bin")
    shutil.rmtree(project / ".dvc" / "cache")
    ip.run_line_magic("mlops", f"restore d.bin --rev {first}")
    assert (project / "d.bin").read_bytes() == b"version one"


def test_a_snapshot_lists_only_the_runs_that_read_it(project):
    """A real kernel: of the tracked cells run while data/train.csv and images/ are snapshotted, only those
    that opened them (or snapshotted them) are listed as their runs; a write, or a cell that never opens them,
    is not a read."""
    from harness import kernel

    (project / "data").mkdir()
    (project / "data" / "train.csv").write_text("x,y\n1,2\n3,4\n")
    (project / "images").mkdir()
    (project / "images" / "a.txt").write_text("A")
    for path in ("data/train.csv", "images"):
        out = subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", "snapshot", path], cwd=project,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    cells = {
        "reader": "import pandas as pd\nrows = len(pd.read_csv('data/train.csv'))",
        "bystander": "open('notes.txt', 'w').write('not data')\nrows = 0",
        "writer": "import os\nwith open('data/out.csv', 'w') as fh:\n    fh.write('a')\n"
                  "fd = os.open('images/a.txt', os.O_WRONLY)\nos.close(fd)",  # writes only: not a read
        "folder-reader": "import os\nrows = sum(len(open(f'images/{n}').read()) for n in os.listdir('images'))",
        "snapshotter": "%mlops snapshot data/train.csv",  # a snapshot taken in a run joins it
    }
    with kernel(project) as k:
        reply, _ = k.run("%load_ext mlops_jupyter\n%mlops init")
        assert reply["status"] == "ok", reply
        for name, body in cells.items():
            reply, _ = k.run(f"%%mlops run --name {name}\n{body}")
            assert reply["status"] == "ok", (name, reply)
        reply, _ = k.run("assert get_ipython()._mlops_magics.tracker.flush(60) == 0")
        assert reply["status"] == "ok", reply
    runs = {r.info.run_name: r for r in all_runs(project)}
    assert set(runs) == set(cells)
    md5 = runs["reader"].data.tags["mlops.data.data/train.csv"]
    assert all(r.data.tags["mlops.data.data/train.csv"] == md5 for r in runs.values())  # all had it in scope
    assert {n for n, r in runs.items() if "mlops.read.data/train.csv" in r.data.tags} == {"reader", "snapshotter"}
    assert runs["reader"].data.tags["mlops.read.data/train.csv"] == md5
    assert {n for n, r in runs.items() if "mlops.read.images" in r.data.tags} == {"folder-reader"}

    def listed(path):
        out = subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", "snapshots", path], cwd=project,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return {n for n, r in runs.items() if r.info.run_id[:8] in out.stdout}

    assert listed("data/train.csv") == {"reader", "snapshotter"}
    assert listed("images") == {"folder-reader"}


def test_our_dvc_set_up_asks_for_reflinks_and_a_users_own_is_left_alone(tmp_path):
    """`cache.type reflink,copy` where we initialise DVC; a project whose DVC the user set up keeps its config."""
    from harness import make_git_project

    ours, theirs = make_git_project(tmp_path / "ours"), make_git_project(tmp_path / "theirs")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=theirs, check=True)
    git(theirs, "commit", "-q", "-m", "dvc init")
    config = (theirs / ".dvc" / "config").read_text()
    for root in (ours, theirs):
        (root / "d.bin").write_bytes(b"data")
        out = subprocess.run([sys.executable, "-m", "mlops_jupyter.cli", "snapshot", "d.bin"], cwd=root,
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    assert "reflink,copy" in (ours / ".dvc" / "config").read_text()
    assert not git(ours, "status", "--porcelain", "--", ".dvc").strip()  # committed with the set-up
    assert (theirs / ".dvc" / "config").read_text() == config
    assert (ours / "d.bin").read_bytes() == b"data" and (theirs / "d.bin").read_bytes() == b"data"
