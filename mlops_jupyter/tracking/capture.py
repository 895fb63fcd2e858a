"""What a tracked run records beyond the kernel's own observations: parameters parsed from cell
sources, git state, the Python environment. Runs in the recorder process, off the notebook's path."""

from __future__ import annotations

import ast
import hashlib
import json
import platform
import re
import subprocess
import sys
from importlib import metadata

MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def to_python(source: str) -> str:
    """IPython cell syntax (magics, shell escapes) -> plain Python, for parsing."""
    from IPython.core.inputtransformer2 import TransformerManager

    return TransformerManager().transform_cell(source)


def literal_assignments(source: str) -> dict:
    """Top-level ``name = <literal>`` assignments of a cell, in order (later ones win)."""
    try:
        tree = ast.parse(to_python(source))
    except SyntaxError:
        return {}
    found = {}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        try:
            literal = ast.literal_eval(value)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            continue
        for target in targets:
            if isinstance(target, ast.Name):
                found[target.id] = literal
            elif isinstance(target, (ast.Tuple, ast.List)) and isinstance(literal, (tuple, list)) \
                    and len(target.elts) == len(literal):
                found.update({t.id: v for t, v in zip(target.elts, literal) if isinstance(t, ast.Name)})
    return found


def param_value(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict, bool)) \
        or value is None else repr(value)
    return text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode("utf-8")).hexdigest()


def _git(root: str, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state(root: str) -> dict:
    """{"commit", "dirty", "diff"} of the project's git repo; {} when it is not one."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {}
    status = _git(root, "status", "--porcelain", "--untracked-files=no") or ""
    dirty = bool(status.strip())
    return {"commit": commit.strip(), "dirty": dirty, "diff": _git(root, "diff", "HEAD") if dirty else None}


MAX_TAG_CHARS = 8000  # MLflow's limit on a tag value


def projects(root: str, git: dict, snapshots: list[dict]) -> str:
    """The code state of every project a run used, as the JSON of its ``mlops.projects`` tag: the notebook's
    project first, then each other project its snapshots came from (a notebook may ``%cd`` into another
    one for its data), with its git commit (absent when it is not a repository) and its snapshotted paths."""
    paths: dict[str, list] = {root: []}
    for snap in snapshots:
        paths.setdefault(snap.get("root") or root, []).append(snap["path"])
    found = []
    for project, rels in paths.items():
        state = git if project == root else git_state(project)
        found.append({"root": project, "commit": state.get("commit"), "dirty": state.get("dirty", False),
                      "paths": sorted(rels)})
    text = json.dumps(found)
    if len(text) > MAX_TAG_CHARS:  # many snapshotted paths: the paths go (reproduce looks for each in every project)
        text = json.dumps([{k: v for k, v in f.items() if k != "paths"} for f in found])
    return text


def add_project(text: str | None, root: str, path: str) -> str:
    """``mlops.projects`` with ``path`` of project ``root`` added (a snapshot taken while the run ran)."""
    found = json.loads(text) if text else []
    entry = next((f for f in found if f["root"] == root), None)
    if entry is None:
        state = git_state(root)
        entry = {"root": root, "commit": state.get("commit"), "dirty": state.get("dirty", False), "paths": []}
        found.append(entry)
    if "paths" in entry and path not in entry["paths"]:
        entry["paths"] = sorted([*entry["paths"], path])
    return json.dumps(found)


_HEADER = re.compile(r"^(Name|Version): *(.+?) *$", re.MULTILINE)


def _requirement(dist) -> str | None:
    """``name==version`` from a distribution's metadata headers (read directly: the email parser behind
    ``dist.metadata`` took a third of a second for a few hundred distributions)."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    found = dict(_HEADER.findall(text.split("\n\n", 1)[0]))
    return f"{found['Name']}=={found['Version']}" if "Name" in found and "Version" in found else None


def environment() -> dict:
    """Python version and installed distributions (the equivalent of ``pip freeze``)."""
    dists = sorted(filter(None, map(_requirement, metadata.distributions())), key=str.lower)
    return {
        "python": {"version": platform.python_version(), "implementation": platform.python_implementation(),
                   "executable": sys.executable, "platform": platform.platform()},
        "requirements": "\n".join(dists) + "\n",
    }
