"""Data inputs of pipeline steps: files a step names (or a deps:PATH tag names) are part of its fingerprint, so
a changed or restored data file re-runs its readers and only them; what a step writes is its output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from harness import notebook

from mlops_jupyter import pipeline
from mlops_jupyter.pipeline.state import State
from mlops_jupyter.pipeline.tags import PipelineError

PY = sys.executable


def ran(result) -> set:
    return {s.name for s in result.steps if s.status == "ran"}


def reasons(result) -> dict:
    return {s.name: s.why for s in result.steps if s.status == "ran"}


def status(folder: Path) -> dict:
    return {name: (state, why) for name, state, why in pipeline.status(folder)}


def metrics(folder: Path, step: str) -> dict:
    return json.loads((folder / "metrics" / f"{step}.json").read_text())


def write_csv(path: Path, rows: list) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("x,y\n" + "".join(f"{x},{y}\n" for x, y in rows))


def data_notebook(project: Path) -> Path:
    write_csv(project / "data" / "train.csv", [(1, 2), (3, 4)])
    write_csv(project / "data" / "extra.csv", [(10, 20)])
    return notebook(project / "d.ipynb", [
        ("import pandas as pd\nfrom pathlib import Path", ["imports"]),
        ("scale = 1", ["parameters"]),
        ("train = pd.read_csv('data/train.csv')", ["step:load"]),
        ("extra = pd.read_csv(Path('data') / 'extra.csv')", ["step:side", "after:load"]),
        # reads and appends to its own log: an output, never an input (else it would be stale after every run)
        ("log = Path('steps.log')\nseen = log.read_text() if log.exists() else ''\n"
         "with open('steps.log', 'a') as fh:\n    fh.write('summed\\n')\n"
         "total = int(train['x'].sum()) * scale\npd.DataFrame({'total': [total]}).to_csv('summary.csv')",
         ["step:sum", "after:load"]),
        ("summary = pd.read_csv('summary.csv')\nreport = int(summary['total'][0]) + len(extra)",
         ["step:report", "after:side"]),
        ("print(total)\nprint(report)", ["pipeline-metrics"]),
    ])


def test_editing_a_data_file_reruns_only_its_readers(project):
    nb = data_notebook(project)
    pipe = pipeline.export(nb, "pipe")
    folder = project / "pipe"
    spec = {s["name"]: s for s in pipe.steps}
    assert spec["load"]["data"] == ["data/train.csv"] and spec["side"]["data"] == ["data/extra.csv"]
    assert spec["sum"]["data"] == [] and spec["sum"]["writes"] == ["steps.log", "summary.csv"]
    # report reads the file sum writes: an input, and it runs after sum (its after: tag named only side)
    assert spec["report"]["data"] == ["summary.csv"] and "sum" in spec["report"]["deps"]
    stages = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]
    assert "../data/train.csv" in stages["load"]["deps"] and "../summary.csv" in stages["report"]["deps"]
    assert {"../summary.csv": {"cache": False, "persist": True}} in stages["sum"]["outs"]
    assert "data/train.csv" in (folder / "README.md").read_text()

    first = pipeline.run(folder, echo=lambda s: None)
    assert first.ok and ran(first) == {"load", "side", "sum", "report"}
    assert metrics(folder, "report")["report"] == 5
    assert pipeline.run(folder, echo=lambda s: None).count("skipped") == 4  # its own log is no input of sum
    assert pipeline.export(nb, "pipe").step("sum")["data"] == []  # nor once the log exists

    write_csv(project / "data" / "train.csv", [(1, 2), (3, 4), (5, 6)])
    now = status(folder)
    assert now["load"] == ("stale", "data/train.csv changed")
    assert now["side"][0] == now["sum"][0] == "stale" and "upstream load" in now["sum"][1]
    lines = []
    again = pipeline.run(folder, echo=lines.append)
    assert again.ok and ran(again) == {"load", "sum", "report"}, "\n".join(lines)
    assert reasons(again)["load"] == ["data/train.csv changed"]
    assert any("load" in ln and "running (data/train.csv changed)" in ln for ln in lines), lines
    assert "summary.csv changed" in reasons(again)["report"]
    assert [s.status for s in again.steps if s.name == "side"] == ["skipped"]  # its input from load is unchanged
    assert metrics(folder, "report")["report"] == 10

    write_csv(project / "data" / "extra.csv", [(10, 20), (30, 40)])
    side = pipeline.run(folder, echo=lambda s: None)
    assert ran(side) == {"side", "report"} and metrics(folder, "report")["report"] == 11

    (project / "data" / "extra.csv").unlink()
    assert status(folder)["side"] == ("stale", "data/extra.csv is missing")


def test_a_restored_snapshot_makes_its_reader_stale_again(project):
    from mlops_jupyter.data import restore, snapshot

    write_csv(project / "data" / "train.csv", [(1, 1)])
    first = snapshot("data/train.csv", message="v1")
    nb = notebook(project / "s.ipynb", [
        ("import pandas as pd", ["imports"]),
        ("n = len(pd.read_csv('data/train.csv'))", ["step:count"]),
        ("n", ["metrics"]),
    ])
    write_csv(project / "data" / "train.csv", [(1, 1), (2, 2), (3, 3)])
    snapshot("data/train.csv", message="v2")
    (project / "data" / "train.csv").unlink()  # a DVC-tracked path is an input even while it is not checked out
    missing = pipeline.export(nb, "pipe")
    assert missing.step("count")["data"] == ["data/train.csv"]
    restore("data/train.csv", rev="HEAD")
    folder = project / "pipe"
    assert pipeline.run(folder, echo=lambda s: None).ok and metrics(folder, "count") == {"n": 3}

    restore("data/train.csv", rev=first.rev)
    assert status(folder)["count"] == ("stale", "data/train.csv changed")
    back = pipeline.run(folder, echo=lambda s: None)
    assert ran(back) == {"count"} and reasons(back)["count"] == ["data/train.csv changed"]
    assert metrics(folder, "count") == {"n": 1}
    assert pipeline.run(folder, echo=lambda s: None).count("skipped") == 1


def test_deps_tags_and_path_parameters_are_inputs(project):
    raw = project / "raw"
    raw.mkdir()
    (raw / "a.txt").write_text("1\n")
    (project / "alt.txt").write_text("5\n")
    (project / "main.txt").write_text("7\n")
    nb = notebook(project / "g.ipynb", [
        ("import glob", ["imports"]),
        ("source = 'main.txt'", ["parameters"]),
        # the folder's name is built at run time: export cannot see it, the deps: tag says it
        ("parts = ['r', 'aw']\nfiles = sorted(glob.glob(''.join(parts) + '/*.txt'))\n"
         "total = sum(int(open(f).read()) for f in files)", ["step:collect", "deps:raw"]),
        ("total", ["metrics"]),
        ("base = int(open(source).read())", ["step:base", "deps:not/there.csv"]),
        ("base", ["metrics"]),
    ])
    pipe = pipeline.export(nb, "pipe")
    assert pipe.step("collect")["data"] == ["raw"]
    assert pipe.step("base")["data_params"] == ["source"]
    assert any("deps:not/there.csv" in w and "cell 4" in w for w in pipe.warnings), pipe.warnings
    folder = project / "pipe"
    assert pipeline.run(folder, echo=lambda s: None).ok

    (raw / "b.txt").write_text("2\n")
    assert status(folder)["collect"] == ("stale", "raw changed")
    assert ran(pipeline.run(folder, echo=lambda s: None)) == {"collect"} and metrics(folder, "collect")["total"] == 3

    # a path parameter: the file it names now is the input, with this run's value
    over = pipeline.run(folder, params=["source=alt.txt"], echo=lambda s: None)
    assert ran(over) == {"base"} and "alt.txt changed" in reasons(over)["base"]
    assert metrics(folder, "base")["base"] == 5
    (project / "alt.txt").write_text("6\n")
    assert ran(pipeline.run(folder, params=["source=alt.txt"], echo=lambda s: None)) == {"base"}
    assert pipeline.run(folder, echo=lambda s: None).count("ran") == 1  # back to main.txt

    for tags, words in [(["imports", "deps:raw"], "tagged imports and deps:raw"), (["step:x", "deps:"], "no path")]:
        bad = notebook(project / "bad.ipynb", [("import glob", tags)])
        with pytest.raises(PipelineError, match=words):
            pipeline.export(bad, "badpipe")


def test_hashes_are_kept_by_size_mtime_and_inode(project):
    """An unchanged file is read once; a file replaced by another of the same size and mtime (what a checkout
    from a cache may do) is read again, because its inode differs."""
    folder = project / "pipe"
    data = project / "big.bin"
    data.write_bytes(b"a" * 4096)
    old = time.time() - 3600
    os.utime(data, (old, old))
    state = State(folder)
    first = state.path_hash(data)
    state.save_cache()
    cached = json.loads((folder / ".mlops-pipeline" / "hashes.json").read_text())[str(data)]
    assert cached[3] == first and cached[2] == data.stat().st_ino
    assert State(folder).path_hash(data) == first

    other = project / "other.bin"
    other.write_bytes(b"b" * 4096)
    os.utime(other, (old, old))
    os.replace(other, data)
    assert data.stat().st_size == cached[0] and data.stat().st_mtime_ns == cached[1]
    assert State(folder).path_hash(data) != first

    # a file written a moment ago may change again within the same mtime: hashed, but not cached yet
    fresh = project / "fresh.bin"
    fresh.write_bytes(b"c")
    state = State(folder)
    state.path_hash(fresh)
    state.save_cache()
    assert str(fresh) not in json.loads((folder / ".mlops-pipeline" / "hashes.json").read_text())
